"""A real OpenSSH server (Debian's openssh-server) in a test host's namespace, with its own host key, port,
config and authorized_keys under a test directory; nothing of the machine's own ssh set-up is read or changed.

Test hosts share one file system, so each node's installation lives in its own directory that is bind-mounted
over the common path inside that node's commands only (`NodeFs.argv`): `ip netns exec` gives every command a
private mount namespace, so the mount is seen by that command and its children (sshd, the rsync it starts) and
by nothing else.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tests.support.netns import Host, Lan, sh, wait_for

SSHD = "/usr/sbin/sshd"


def keygen(path: str) -> str:
    """An ed25519 key pair without a passphrase at path (+ .pub); returns the public key line."""
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fos-test", "-f", path)
    with open(path + ".pub") as f:
        return f.read().strip()


@dataclass
class NodeFs:
    """`mountpoint` (the configured path) shows `own` inside every command run through argv()."""

    host: Host
    own: str
    mountpoint: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        script = f'mount --bind {shlex.quote(self.own)} {shlex.quote(self.mountpoint)} && exec "$@"'
        return self.host.argv(["sh", "-c", script, "sh", *argv])

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, env=env)


class Sshd:
    """sshd -D on host.ip:port, root may log in with a key only; stopped by stop() (and by Lan.close())."""

    def __init__(self, fs: NodeFs, workdir: str, port: int = 2222) -> None:
        self.fs, self.port, self.dir = fs, port, workdir
        os.makedirs(workdir, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.host_key_pub = keygen(os.path.join(workdir, "host_ed25519"))
        self.authorized_keys = os.path.join(workdir, "authorized_keys")
        open(self.authorized_keys, "a").close()
        self.config = os.path.join(workdir, "sshd_config")
        with open(self.config, "w") as f:
            f.write(
                f"Port {port}\nListenAddress {fs.host.ip}\nHostKey {workdir}/host_ed25519\n"
                f"PidFile {workdir}/sshd.pid\nAuthorizedKeysFile {self.authorized_keys}\nStrictModes no\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nLogLevel ERROR\n"
            )
        self.log = open(os.path.join(workdir, "sshd.log"), "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.fs.argv([SSHD, "-D", "-e", "-f", self.config]),
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        fs.host.procs.append(self.proc)  # Lan.close() kills it even when the test fails before stop()
        probe = f"exec 3<>/dev/tcp/{fs.host.ip}/{port}"
        wait_for(lambda: fs.host.run("bash", "-c", probe, check=False).returncode == 0, 15, 0.05, "sshd to listen")

    def authorize(self, public_key: str, command: str | None = None) -> None:
        """Let public_key log in; with `command`, only as that forced command (restrict: no forwarding, no pty)."""
        prefix = f'command="{command}",restrict ' if command else ""
        with open(self.authorized_keys, "a") as f:
            f.write(f"{prefix}{public_key}\n")

    def replace_keys(self, public_key: str) -> None:
        """Let only public_key log in, as a plain login without a forced command (a wrong set-up)."""
        with open(self.authorized_keys, "w") as f:
            f.write(public_key + "\n")

    def known_hosts_line(self) -> str:
        return f"[{self.fs.host.ip}]:{self.port} {' '.join(self.host_key_pub.split()[:2])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self.log.close()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ReplicationBed:
    """Nodes m1 and m2 on a Lan, each with its own sshd (port 2222) whose key login runs `fos mirror receive`
    for that node, a shared SQLite lease database, and the installation path `app` (each node's own copy is
    `m1/` and `m2/` under the work directory). write_config() writes the cluster file with [replication]."""

    def __init__(self, lan: Lan, work: str) -> None:
        self.work = work
        self.app = os.path.join(work, "app")
        self.dsn = f"Driver=SQLite3;Database={work}/lease.db;Timeout=2000"
        self.config = os.path.join(work, "fos.toml")
        os.makedirs(self.app)
        self.key = os.path.join(work, "id_ed25519")
        self.public_key = public = keygen(self.key)
        self.fs: dict[str, NodeFs] = {}
        self.sshd: dict[str, Sshd] = {}
        for name in ("m1", "m2"):
            own = os.path.join(work, name)
            os.makedirs(own)
            self.fs[name] = NodeFs(lan.add_host(name), own, self.app)
            self.sshd[name] = Sshd(self.fs[name], os.path.join(work, f"sshd-{name}"))
            receive = f"{self.fos_argv_text()} mirror receive --config {self.config} --node {name}"
            self.sshd[name].authorize(public, receive)
        self.known_hosts = os.path.join(work, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write("".join(s.known_hosts_line() + "\n" for s in self.sshd.values()))
        self.write_config()

    @staticmethod
    def fos_argv_text() -> str:
        return f"{sys.executable} -m agent"

    def write_config(self, **replication: object) -> None:
        keys: dict[str, object] = {
            "paths": [self.app],
            "ssh_user": "root",
            "ssh_key": self.key,
            "ssh_port": 2222,
            "known_hosts": self.known_hosts,
        }
        keys.update(replication)
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        nodes = "".join(
            f'[[nodes]]\nname = "{n}"\ninterface = "eth0"\nurl = "http://{fs.host.ip}:8080/"\n'
            for n, fs in self.fs.items()
        )
        with open(self.config, "w") as f:
            f.write(
                f'[cluster]\nname = "rp"\naddress_driver = "none"\n{nodes}[database]\ndsn = "{self.dsn}"\n'
                f'[lease]\nttl = 4\nheartbeat = 1\n[http]\nlisten = ""\n[replication]\n{lines}'
            )

    def fos(self, node: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`fos ARGS --config ... --node NODE` run as node (in its namespace, seeing its own installation)."""
        argv = [sys.executable, "-m", "agent", *args, "--config", self.config, "--node", node]
        return self.fs[node].run(argv, timeout=timeout)

    def tree(self, node: str) -> set[str]:
        """Every file below node's installation, as paths relative to it."""
        root = os.path.join(self.work, node)
        return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}

    def read(self, node: str, rel: str) -> str:
        with open(os.path.join(self.work, node, rel)) as f:
            return f.read()

    def put_random(self, node: str, sizes: dict[str, int]) -> None:
        for rel, size in sizes.items():
            with open(os.path.join(self.work, node, rel), "wb") as f:
                f.write(os.urandom(size))

    def walk(self, node: str) -> list[str]:
        """Everything below node's installation, rsync's temporary files included."""
        root = os.path.join(self.work, node)
        return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]

    def listing(self) -> list[str]:
        return os.listdir(self.work)

    def put(self, node: str, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = os.path.join(self.work, node, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)

    def close(self) -> None:
        for s in self.sshd.values():
            s.stop()
