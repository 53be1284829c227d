"""Failover time of fos versus keepalived on the same namespace test bed.

Two nodes and a client; the lease database on PostgreSQL in its own host (fos); the demo web app on each node
answering with its node name; the client requests the common IP every 20 ms; a sampler records every 10 ms which
node has the common IP bound. Faults: kill -9 of the active agent with its app (process death), the active host's
link cut (machine death), SIGTERM (graceful), and a planned switchover: for fos the command `fos switchover --to`
(timed from its launch; "after command" is the part after it returned, having written the request), for
keepalived the graceful move of the master (SIGTERM: it resigns with a priority-0 advert). Reported per
setup and fault: median and max over the repetitions of fault -> client served by the new node, and for fos the
part of it after the lease expired; plus the number of samples in which both nodes had the common IP bound.
Each fos timing runs in each application mode of --modes: cold (the app starts on the new holder) and warm (it
runs on both nodes, only the IP moves). "acquired to IP bound" is the conflict probe and the bind (from the
promoting agent's log to the sampler's first sample of the address on it); "after expiry less probe" removes it.

    .venv/bin/python bench/failover.py [--reps 5] [--timings 3.6/0.6,4/1,10/3] [--modes cold,warm] [--with-default]
        [--no-keepalived] [--faults kill9,linkcut,sigterm,switchover] [--probe-timeout S] [--switchover-via cli|store]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save, table

from tests.support.cluster import VIP, WEBAPP, Cluster, IpSampler, Prober
from tests.support.netns import Host, Lan, wait_for

FAULTS = ["kill9", "linkcut", "sigterm", "switchover"]
MODES = ["cold", "warm"]  # application.mode
SWITCHOVER_VIA = "cli"  # or "store": --switchover-via
PROBE_TIMEOUT: float | None = None  # cluster.probe_timeout of the fos rows (--probe-timeout); None: the default
TAKEOVER = re.compile(r"expired (-?\d+) ms before the read")
APP_HEALTHY = re.compile(r"app_healthy\s+after=([0-9.]+)")


def first_log_time(text: str, event: str, after_wall: float) -> float | None:
    """Wall-clock time of the first `event` logged after `after_wall`."""
    for line in text.splitlines():
        if f" {event} " in line:
            stamp = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            if stamp >= after_wall:
                return stamp
    return None


def app_start_of(text: str, after_wall: float) -> float | None:
    """The application's own start-to-healthy time, as the promoting agent logged it (app_healthy after=...),
    for the first promotion logged after `after_wall`."""
    for line in text.splitlines():
        match = APP_HEALTHY.search(line)
        if match and datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp() >= after_wall:
            return float(match.group(1))
    return None


def log_time_of(text: str, node: str, role: str, after_wall: float) -> float | None:
    """Wall-clock time of the first `transition` to `role` logged after `after_wall`."""
    for line in text.splitlines():
        if "transition" in line and f"role={role}" in line and f"node={node}" in line:
            stamp = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            if stamp >= after_wall:
                return stamp
    return None


def inject(c: Cluster, fault: str, active: str) -> tuple[float, float | None]:
    """Inject the fault; return when it began and, for the switchover, when the command returned (monotonic)."""
    host = c.host(active)
    began = time.monotonic()
    if fault == "switchover":
        standby = "m2" if active == "m1" else "m1"
        if SWITCHOVER_VIA == "store":  # the request statement alone: the agents' part, without the command's start
            assert c.store_call("request_switchover", standby, 0, "bench@failover") is True
            return c.last_call
        out = c.fos("switchover", "--to", standby)
        assert out.returncode == 0, out.stdout + out.stderr
        return began, time.monotonic()
    if fault == "kill9":
        c.kill_agent(active, with_app=True)
    elif fault == "linkcut":
        host.cut_link()
    else:
        c.agents[active].send_signal(signal.SIGTERM)
    return began, None


def heal(c: Cluster, fault: str, failed: str) -> None:
    if fault == "switchover":
        return  # the old holder is a standby already
    if fault == "linkcut":
        c.host(failed).restore_link()
        if c.agents[failed].poll() is None:
            return
    c.agents[failed].wait(timeout=20)
    c.start(failed)


def fos_runs(lan_factory: Any, ttl: float, heartbeat: float, reps: int, mode: str = "cold") -> list[dict[str, Any]]:
    return [fos_fault(lan_factory(), ttl, heartbeat, fault, reps, mode) for fault in FAULTS]


def app_healthy(c: Cluster, node: str) -> bool:
    doc = c.status(node)
    return doc is not None and doc.get("app_healthy") is True


def fos_fault(lan: Lan, ttl: float, heartbeat: float, fault: str, reps: int, mode: str = "cold") -> dict[str, Any]:
    # Every repetition is a take-over: more than flap.max_takeovers (3) within the hour would turn failover off.
    keys = "" if PROBE_TIMEOUT is None else f"probe_timeout = {PROBE_TIMEOUT:g}"
    c = Cluster(
        lan,
        "postgresql",
        ttl=ttl,
        heartbeat=heartbeat,
        mode=mode,
        cluster_keys=keys,
        tables="[flap]\nmax_takeovers = 1000",
    )
    try:
        c.active_pair()
        results: list[dict[str, float]] = []
        for _ in range(reps):
            active = "m1" if c.role("m1") == "active" else "m2"
            standby = "m2" if active == "m1" else "m1"
            wait_for(
                lambda a=active: c.prober.first_answer_from(a, time.monotonic() - 0.5),
                20,
                0.02,
                "the client to be served",
            )
            w0 = time.time()
            t0, command_done = inject(c, fault, active)
            served = wait_for(
                lambda s=standby, t=t0: c.prober.first_answer_from(s, t), ttl * 3 + 20, 0.01, "the take-over"
            )
            acquired_wall = log_time_of(c.log_text(standby), standby, "promoting", w0)
            bound = c.sampler.first_time(standby, t0)
            # The conflict probe and the bind: from the acquisition (logged) to the first sample of the address.
            to_bound = None if acquired_wall is None or bound is None else bound - (t0 + (acquired_wall - w0))
            after_expiry = None
            events = c.client.run(
                sys.executable, "-m", "agent", "status", "--json", "--config", c.config, check=False
            ).stdout
            match = TAKEOVER.search(events) if fault not in ("sigterm", "switchover") else None
            if acquired_wall is not None and match:
                expiry_wall = acquired_wall - int(match.group(1)) / 1000.0
                after_expiry = served - (t0 + (expiry_wall - w0))
            # Warm: the new holder starts nothing (a start logged after the fault is the old node's app restarting).
            app_start = app_start_of(c.log_text(standby), w0) if mode == "cold" else None
            spawned = first_log_time(c.log_text(standby), "app_started", w0) if mode == "cold" else None
            # From the acquisition to the app's spawn: the conflict probe, the bind and the spawn itself.
            claim = None if spawned is None or acquired_wall is None else spawned - acquired_wall
            # Whether the promotion bound without a probe round of its own (a clear round ahead of the expiry).
            skipped = first_log_time(c.log_text(standby), "ip_probe_skipped", w0) is not None
            results.append(
                {
                    "served": served - t0,
                    "after_expiry": after_expiry,
                    "read_after_expiry": int(match.group(1)) / 1000.0 if match else None,
                    "after_command": None if command_done is None else served - command_done,
                    "app_start": app_start,
                    "acquired_to_app_spawned": claim,
                    "probe_skipped": skipped,
                    "after_expiry_less_app": None
                    if after_expiry is None or app_start is None
                    else after_expiry - app_start,
                    "acquired_to_bound": to_bound,
                    "after_expiry_less_probe": None
                    if after_expiry is None or to_bound is None
                    else after_expiry - to_bound,
                }
            )
            heal(c, fault, active)
            wait_for(lambda a=active: c.role(a) == "standby", 60, 0.1, "the failed node to be standby again")
            if mode == "warm":  # a warm standby competes only once its application is healthy
                wait_for(lambda a=active: app_healthy(c, a), 60, 0.1, "the failed node's application healthy")
        both = len(c.sampler.both_bound())
    except BaseException:
        for name in c.names:  # what the agents said, for a run that failed
            print(f"----- {name} agent log -----\n{c.log_text(name)[-4000:]}", file=sys.stderr)
        raise
    finally:
        c.close()
        lan.close()
    via = f" ({SWITCHOVER_VIA})" if fault == "switchover" else ""
    probe = "" if PROBE_TIMEOUT is None else f" probe {PROBE_TIMEOUT:g}"
    return summarise(f"fos {mode} ttl {ttl:g}/hb {heartbeat:g}{probe}{via}", fault, results, both)


def summarise(setup: str, fault: str, results: list[dict[str, Any]], both: int) -> dict[str, Any]:
    served = [r["served"] for r in results]
    after = [r["after_expiry"] for r in results if r.get("after_expiry") is not None]
    late = [r["read_after_expiry"] for r in results if r.get("read_after_expiry") is not None]
    after_command = [r["after_command"] for r in results if r.get("after_command") is not None]
    app = [r["app_start"] for r in results if r.get("app_start") is not None]
    fos_part = [r["after_expiry_less_app"] for r in results if r.get("after_expiry_less_app") is not None]
    claim = [r["acquired_to_app_spawned"] for r in results if r.get("acquired_to_app_spawned") is not None]
    to_bound = [r["acquired_to_bound"] for r in results if r.get("acquired_to_bound") is not None]
    less_probe = [r["after_expiry_less_probe"] for r in results if r.get("after_expiry_less_probe") is not None]
    return {
        "setup": setup,
        "fault": fault,
        "reps": len(results),
        "served_median_s": statistics.median(served),
        "served_max_s": max(served),
        "after_expiry_median_s": statistics.median(after) if after else None,
        "after_expiry_max_s": max(after) if after else None,
        "read_after_expiry_max_s": max(late) if late else None,
        "after_command_median_s": statistics.median(after_command) if after_command else None,
        "after_command_max_s": max(after_command) if after_command else None,
        "app_start_median_s": statistics.median(app) if app else None,
        "acquired_to_app_spawned_median_s": statistics.median(claim) if claim else None,
        "after_expiry_less_app_median_s": statistics.median(fos_part) if fos_part else None,
        "after_expiry_less_app_max_s": max(fos_part) if fos_part else None,
        "acquired_to_bound_median_s": statistics.median(to_bound) if to_bound else None,
        "after_expiry_less_probe_median_s": statistics.median(less_probe) if less_probe else None,
        "after_expiry_less_probe_max_s": max(less_probe) if less_probe else None,
        "both_bound_samples": both,
        "probe_skipped": probe_skipped(results),
        "raw": results,
    }


def probe_skipped(results: list[dict[str, Any]]) -> str | None:
    """How many of fos's promotions bound without a probe round after the acquisition, as "k/n"."""
    if not any("probe_skipped" in r for r in results):
        return None  # keepalived
    return f"{sum(bool(r.get('probe_skipped')) for r in results)}/{len(results)}"


KEEPALIVED = """
global_defs {{
  enable_script_security
  script_user root
}}
vrrp_instance fos_bench {{
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority {priority}
  advert_int 1
  virtual_ipaddress {{
    {vip}/24 dev eth0
  }}
}}
"""


def start_keepalived(host: Host, work: str, priority: int) -> Any:
    conf = os.path.join(work, f"{host.name}.conf")
    with open(conf, "w") as f:
        f.write(KEEPALIVED.format(priority=priority, vip=VIP))
    argv = [
        "keepalived",
        "-n",
        "-l",
        "-P",
        "-f",
        conf,
        "-p",
        f"{work}/{host.name}.pid",
        "-r",
        f"{work}/{host.name}.vrrp.pid",
        "--no-syslog",
        "-D",
    ]
    return host.popen(
        argv,
        stdout=open(os.path.join(work, f"{host.name}.kad.log"), "ab"),
        stderr=open(os.path.join(work, f"{host.name}.kad.err"), "ab"),
    )


def keepalived_runs(lan_factory: Any, reps: int) -> list[dict[str, Any]]:
    return [keepalived_fault(lan_factory(), fault, reps) for fault in FAULTS]


def keepalived_fault(lan: Lan, fault: str, reps: int) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="fos-kad-")
    m1, m2, client = lan.add_host("m1"), lan.add_host("m2"), lan.add_host("client")
    hosts = {"m1": m1, "m2": m2}
    sampler = IpSampler([m1, m2], VIP)
    sampler.start()
    prober = Prober(client)
    try:
        apps = {n: h.popen([sys.executable, WEBAPP, "--name", n, "--port", "8080"]) for n, h in hosts.items()}
        kad = {"m1": start_keepalived(m1, work, 150), "m2": start_keepalived(m2, work, 100)}
        results = []
        for _ in range(reps):
            wait_for(lambda: len(sampler.holder_at(time.monotonic())) == 1, 30, 0.05, "one VRRP master")
            active = sampler.holder_at(time.monotonic())[0]
            standby = "m2" if active == "m1" else "m1"
            wait_for(lambda a=active: prober.first_answer_from(a, time.monotonic() - 0.5), 20, 0.02, "served")
            t0 = time.monotonic()
            if fault == "kill9":
                # The whole group: keepalived's VRRP child would otherwise notice its parent's death and resign
                # gracefully (a priority-0 advert), which is not what a dead machine does.
                os.killpg(kad[active].pid, signal.SIGKILL)
                kad[active].wait(timeout=5)
                apps[active].send_signal(signal.SIGKILL)
                # a dead machine also loses its addresses; keepalived's killed process leaves the VIP behind
                hosts[active].run("ip", "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
            elif fault == "linkcut":
                hosts[active].cut_link()
            else:  # sigterm, and the switchover: keepalived's graceful move is the master resigning
                kad[active].send_signal(signal.SIGTERM)
            served = wait_for(lambda s=standby, t=t0: prober.first_answer_from(s, t), 30, 0.01, "take-over")
            results.append({"served": served - t0})
            if fault == "linkcut":
                hosts[active].restore_link()
            else:
                kad[active].wait(timeout=10)
                if fault == "kill9":
                    apps[active] = hosts[active].popen([sys.executable, WEBAPP, "--name", active, "--port", "8080"])
                kad[active] = start_keepalived(hosts[active], work, 150 if active == "m1" else 100)
            # Let VRRP settle: the restarted higher-priority node preempts the address back.
            wait_for(lambda a=active: sampler.holder_at(time.monotonic()) == (a,), 30, 0.05, "preemption back")
            time.sleep(1.0)
        # keepalived's kill -9 leaves the address on the dead node, which this bench removes by hand at once,
        # so "both bound" for that fault only counts the instants before the removal.
        both = len(sampler.both_bound())
    finally:
        sampler.stop()
        lan.close()
        shutil.rmtree(work, ignore_errors=True)
    return summarise("keepalived advert_int 1", fault, results, both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timings", default="3.6/0.6,4/1,10/3")  # the ttl floor with G = 2 s is about 3.4 s
    parser.add_argument("--with-default", action="store_true", help="also ttl 180/heartbeat 10 (about 45 min)")
    parser.add_argument("--no-keepalived", action="store_true")
    parser.add_argument("--faults", default=",".join(FAULTS), help="subset of " + ",".join(FAULTS))
    parser.add_argument("--no-fos", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES), help="application.mode of the fos rows: cold, warm or both")
    parser.add_argument(
        "--switchover-via",
        choices=["cli", "store"],
        default="cli",
        help="the switchover request: the fos switchover command (timed from its launch), or the store's statement",
    )
    parser.add_argument("--probe-timeout", type=float, help="cluster.probe_timeout of the fos rows (default: fos's)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/failover.py needs root: it builds network namespaces")
    timings = [tuple(float(x) for x in t.split("/")) for t in args.timings.split(",")]
    if args.with_default:
        timings.append((180.0, 10.0))
    FAULTS[:] = [f for f in args.faults.split(",") if f in FAULTS]
    modes = [m for m in args.modes.split(",") if m in MODES]
    if not modes:
        sys.exit(f"--modes = {args.modes!r} names no mode: use cold, warm or cold,warm")
    global SWITCHOVER_VIA, PROBE_TIMEOUT
    SWITCHOVER_VIA = args.switchover_via
    PROBE_TIMEOUT = args.probe_timeout
    rows: list[dict[str, Any]] = []
    if not args.no_keepalived:
        rows += keepalived_runs(Lan, args.reps)
    for ttl, hb in [] if args.no_fos else timings:
        for mode in modes:  # side by side: each timing in each mode
            rows += fos_runs(Lan, ttl, hb, args.reps, mode)
            print(table(rows, COLUMNS), flush=True)
    print(table(rows, COLUMNS))
    print(f"saved {save('failover', {'args': vars(args), 'results': rows})}")


COLUMNS = [
    ("setup", "setup"),
    ("fault", "fault"),
    ("reps", "reps"),
    ("served_median_s", "served median s"),
    ("served_max_s", "served max s"),
    ("after_expiry_median_s", "after expiry median s"),
    ("after_expiry_max_s", "after expiry max s"),
    ("read_after_expiry_max_s", "standby read late max s"),
    ("after_command_median_s", "after command median s"),
    ("after_command_max_s", "after command max s"),
    ("acquired_to_app_spawned_median_s", "acquired to app spawned (probe, bind) median s"),
    ("app_start_median_s", "app start-to-healthy median s"),
    ("after_expiry_less_app_median_s", "after expiry less app median s"),
    ("after_expiry_less_app_max_s", "after expiry less app max s"),
    ("acquired_to_bound_median_s", "acquired to IP bound (probe, bind) median s"),
    ("after_expiry_less_probe_median_s", "after expiry less probe median s"),
    ("after_expiry_less_probe_max_s", "after expiry less probe max s"),
    ("both_bound_samples", "both bound"),
    ("probe_skipped", "bound without probing after the acquisition"),
]

if __name__ == "__main__":
    main()
