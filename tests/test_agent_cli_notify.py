"""`fos notify test` against a real SMTP server and webhook receiver on loopback: each path's answer printed, exit
0 when all delivered, 1 when one failed, 2 when nothing is configured; no secret in its output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.support.peers import Peers, make_cert
from tests.test_agent_notifier import free_port

TOKEN = "hook-Token-5521"


def write_config(path: Path, notify: str) -> str:
    path.write_text(
        '[cluster]\nname = "nt"\naddress_driver = "none"\n[[nodes]]\nname = "m1"\n'
        f'[database]\ndsn = "Driver=SQLite3;Database={path.parent}/x.db"\n[lease]\nttl = 4\nheartbeat = 1\n{notify}'
    )
    return str(path)


async def fos(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOOK_TOKEN": TOKEN, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_notify_test_prints_each_answer_and_exits_0_when_every_path_delivered(tmp_path: Path) -> None:
    smtp, web = free_port(), free_port()
    notify = (
        f'[notify]\nemail_to = ["ops@example.com"]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp}\n'
        f'smtp_security = "none"\nwebhooks = ["http://127.0.0.1:{web}/hook/${{HOOK_TOKEN}}"]\n'
    )
    config = write_config(tmp_path / "fos.toml", notify)
    async with Peers(str(tmp_path), "127.0.0.1", smtp, web) as peers:
        code, out, err = await fos("notify", "test", "--config", config)
        assert code == 0, err
        assert f"delivered mail to ops@example.com via 127.0.0.1:{smtp} (none): OK queued" in out
        assert f"delivered webhook http://127.0.0.1:{web}/***: HTTP 200 OK" in out
        assert [m["to"] for m in peers.mails()] == [["ops@example.com"]]
        assert peers.hooks()[0]["body"]["kind"] == "test" and peers.hooks()[0]["path"] == f"/hook/{TOKEN}"
        code, out, _ = await fos("notify", "test", "--config", config, "--to", "dba@example.com")
        assert code == 0 and "mail to dba@example.com" in out
        assert peers.mails()[-1]["to"] == ["dba@example.com"]
    assert TOKEN not in out


async def test_notify_test_exits_1_naming_the_path_that_failed(tmp_path: Path) -> None:
    smtp, web, dead = free_port(), free_port(), free_port()
    notify = (
        f'[notify]\nemail_to = "ops@example.com"\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp}\nsmtp_security = "none"\n'
        f'webhooks = ["http://127.0.0.1:{dead}/hook/${{HOOK_TOKEN}}"]\n'
    )
    config = write_config(tmp_path / "fos.toml", notify)
    async with Peers(str(tmp_path), "127.0.0.1", smtp, web):
        code, out, _ = await fos("notify", "test", "--config", config)
    assert code == 1
    assert "delivered mail to ops@example.com" in out
    assert f"FAILED    webhook http://127.0.0.1:{dead}/***: " in out and TOKEN not in out


async def test_notify_test_without_any_path_or_with_a_bad_address_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fos.toml", "")
    code, _, err = await fos("notify", "test", "--config", config)
    assert code == 2 and "notify has no email_to and no webhooks" in err
    code, _, err = await fos("notify", "test", "--config", config, "--to", "not an address")
    assert code == 2 and "--to 'not an address' is not a mail address" in err


async def test_notify_test_over_implicit_ssl_with_auth_verifies_the_certificate(tmp_path: Path) -> None:
    smtp, web = free_port(), free_port()
    cert, key = make_cert(str(tmp_path), "127.0.0.1")
    notify = (
        f'[notify]\nemail_to = "ops@example.com"\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp}\nsmtp_security = "ssl"\n'
        'smtp_user = "fos"\nsmtp_password = "${SMTP_PW}"\n'
    )
    config = write_config(tmp_path / "fos.toml", notify)
    peers = Peers(str(tmp_path), "127.0.0.1", smtp, web, tls=(cert, key), auth=("fos", "pw-9s8d7f"), implicit_tls=True)
    async with peers:
        code, out, err = await fos("notify", "test", "--config", config, env={"SMTP_PW": "pw-9s8d7f"})
        assert code == 1 and "certificate verify failed" in out.lower(), "an unknown certificate is refused"
        code, out, err = await fos(
            "notify", "test", "--config", config, env={"SMTP_PW": "pw-9s8d7f", "SSL_CERT_FILE": cert}
        )
        assert code == 0, out + err
        code2, out2, _ = await fos(
            "notify", "test", "--config", config, env={"SMTP_PW": "wrong-pw", "SSL_CERT_FILE": cert}
        )
    assert f"delivered mail to ops@example.com via 127.0.0.1:{smtp} (ssl)" in out
    [mail] = peers.mails()
    assert mail["tls"] and mail["auth"]
    assert code2 == 1 and "535" in out2 and "wrong-pw" not in out2 and "pw-9s8d7f" not in out + out2
