"""`fos run`: build the agent from the cluster file, serve HTTP, handle signals, run until stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog
from aiohttp import web

from lease import SchemaMissing, SqlLeaseStore, StoreAuthError, StoreConfigError, StoreUnavailable
from netops import Announce, NetlinkBinder, NoneBinder, validate

from .app import Application, NoApplication, StartStopCommands, SupervisedCommand
from .clock import SystemClock
from .config import Config, ConfigError, NodeConfig
from .http import start_server
from .runner import Agent
from .timing import check


def build_app(cfg: Config, node: NodeConfig, state_dir: str) -> Application:
    a = cfg.app
    if a.command is not None:
        os.makedirs(state_dir, exist_ok=True)
        return SupervisedCommand(a.command, a.stop_timeout, os.path.join(state_dir, f"{cfg.cluster}-{node.name}.pid"))
    if a.start is not None and a.stop is not None:
        return StartStopCommands(a.start, a.stop, a.stop_timeout, a.health.start_grace)
    return NoApplication()


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def serve(cfg: Config, node: NodeConfig, state_dir: str) -> int:
    """Run the agent until SIGTERM/SIGINT. Bad input raises ConfigError before anything is started."""
    log = structlog.get_logger("fos.run").bind(node=node.name, cluster=cfg.cluster)
    check(cfg)
    if cfg.address_driver == "netlink":
        assert cfg.common_ip is not None
        # NetopsError: interface missing, down, wrong subnet. In a thread: pyroute2 runs its own event loop.
        await asyncio.to_thread(validate, node.interface, cfg.common_ip)
        binder: NetlinkBinder | NoneBinder = NetlinkBinder(
            node.interface, cfg.common_ip, Announce(cfg.announce.count, cfg.announce.interval)
        )
    else:
        binder = NoneBinder()
    store = SqlLeaseStore(cfg.database.dsn, dialect=cfg.database.dialect, call_timeout=cfg.call_timeout)
    try:
        await store.read(cfg.cluster, timeout=max(cfg.call_timeout, 2.0))
    except (SchemaMissing, StoreAuthError, StoreConfigError) as exc:
        await store.close()
        raise ConfigError(f"database: {exc}") from None
    except StoreUnavailable as exc:
        log.warning("database_unavailable_at_start", error=str(exc))
    app = build_app(cfg, node, state_dir)
    if isinstance(app, SupervisedCommand):
        await app.reap_orphan()
    agent = Agent(cfg, node, store, binder, app, SystemClock())
    runner: web.AppRunner | None = None
    if cfg.http_listen:
        try:
            runner = await start_server(agent, cfg.http_listen)
        except OSError as exc:
            await store.close()
            raise ConfigError(f"http.listen = {cfg.http_listen!r} cannot be used: {exc.strerror}") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop, signal.Signals(sig).name)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # `kill -USR2`: what every asyncio task awaits
    log.info(
        "agent_starting",
        listen=cfg.http_listen,
        common_ip=str(cfg.common_ip),
        ttl=cfg.lease.ttl,
        heartbeat=cfg.lease.heartbeat,
    )
    try:
        await agent.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()
    return 0
