"""`fos run`: build the agent from the cluster file, serve HTTP, handle signals, run until stopped.

Start-up order matters: everything that can refuse (config, state dir lock, interface, database schema, another
live agent with our name, the HTTP port) is checked before anything is changed on this machine, so a refusal
(exit 2) leaves the node exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from lease import (
    NodeRecord,
    ProtocolViolation,
    SchemaMissing,
    SqlLeaseStore,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from lease.names import check_name
from netops import Announce, NetlinkBinder, NoneBinder, validate

from . import heap
from .app import Application, NoApplication, StartStopCommands, SupervisedCommand
from .clock import SystemClock
from .config import Config, ConfigError, NodeConfig, check_listen
from .config_notify import require_secrets
from .exits import EXIT_FAILED, EXIT_OK
from .http import start_server
from .renewal import FATAL_STORE_ERRORS
from .roles import Role, live_namesake
from .runner import Agent, AgentFailed
from .statedir import StateDir
from .stores import open_store
from .timing import NODE_ROW_HEARTBEATS, check
from .wake import WakeListener, start_listener
from .wake_send import Waker

if TYPE_CHECKING:  # imported where used: an agent without [notify] or [replication] never loads them (issue #14)
    from .notifier import Notifier
    from .replication_schedule import ReplicationSchedule


def build_app(cfg: Config, node: NodeConfig, state: StateDir) -> Application:
    a = cfg.app
    if a.command is not None:
        return SupervisedCommand(a.command, a.stop_timeout, state.pidfile, user=a.user, group=a.group)
    if a.start is not None and a.stop is not None:
        return StartStopCommands(a.start, a.stop, a.stop_timeout, a.health.start_grace, user=a.user, group=a.group)
    return NoApplication()


def build_binder(cfg: Config, node: NodeConfig) -> NetlinkBinder | NoneBinder:
    if cfg.address_driver != "netlink":
        return NoneBinder()
    assert cfg.common_ip is not None
    return NetlinkBinder(
        node.interface,
        cfg.common_ip,
        Announce(cfg.announce.count, cfg.announce.interval),
        probe_timeout=cfg.probe_timeout,
    )


class Replication:
    """Scheduled `fos mirror` while this node holds the lease, on a store (connection) of its own: a copy's
    database calls never queue in front of a renewal. Cancelling it ends a running rsync."""

    def __init__(self, schedule: ReplicationSchedule, store: SqlLeaseStore) -> None:
        self.schedule, self.store = schedule, store
        self.task = asyncio.create_task(schedule.run())

    @classmethod
    def start(cls, cfg: Config, node: NodeConfig, agent: Agent) -> Replication:
        # Here, not at the top: only an agent with replication on pays for the mirror code's imports (issue #14).
        from .replication_schedule import ReplicationSchedule

        store = open_store(cfg)
        schedule = ReplicationSchedule(
            cfg, store, node.name, lambda: agent.epoch if agent.role is Role.ACTIVE else None
        )
        agent.replication = schedule
        return cls(schedule, store)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.store.close()


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def _check_database(store: SqlLeaseStore, cfg: Config, node: NodeConfig, instance: str) -> None:
    """Schema, triggers, the cluster's row (created if missing: an INSERT, never DDL), and no other live agent
    with our name. Unreachable is not a refusal: the agent starts and waits for the database."""
    timeout = max(cfg.call_timeout, 2.0)
    log = structlog.get_logger("fos.run").bind(node=node.name, cluster=cfg.cluster)

    async def namesake_now() -> NodeRecord | None:
        rows = await store.list_nodes(cfg.cluster, timeout=timeout)
        return live_namesake(rows, node.name, instance, cfg.lease.heartbeat, cfg.call_timeout)

    try:
        await store.preflight(cfg.cluster, timeout=timeout)
        namesake = await namesake_now()
        if namesake is not None:
            # A recent row may be the last words of this machine's previous life (a fast reboot changes the
            # instance): only an agent that keeps writing its row is alive. Watch it for longer than it takes to
            # rewrite it (every NODE_ROW_HEARTBEATS heartbeats).
            seen = namesake.last_seen_age_s or 0.0
            waited = (NODE_ROW_HEARTBEATS + 0.5) * cfg.lease.heartbeat + cfg.call_timeout
            await asyncio.sleep(waited)
            again = await namesake_now()
            if again is None or (again.last_seen_age_s or 0.0) < seen + waited - cfg.call_timeout:
                namesake = again
            else:
                namesake = None
    except (SchemaMissing, StoreAuthError, StoreConfigError, ProtocolViolation) as exc:
        raise ConfigError(f"database: {exc}") from None
    except StoreUnavailable as exc:
        log.warning("database_unavailable_at_start", error=str(exc))
        return
    if namesake is not None:
        raise ConfigError(
            f"another fos agent named {node.name} is running (instance {namesake.instance or 'unknown'}, role "
            f"{namesake.role}, seen {namesake.last_seen_age_s or 0:.1f}s ago): stop it, or give this machine its "
            "own [[nodes]] entry and --node"
        )


async def _holder_in_maintenance(store: SqlLeaseStore, cfg: Config, node: NodeConfig) -> bool:
    """This node holds (or held last) the lease and maintenance mode is on: the application its predecessor left
    running (an agent stopped during maintenance) is adopted, not ended. Unreadable: False (end it, as always)."""
    try:
        state = await store.read(cfg.cluster, timeout=max(cfg.call_timeout, 2.0))
    except StoreError:
        return False
    return state.holder == node.name and state.control.maintenance


async def serve(cfg: Config, node: NodeConfig, state_dir: str) -> int:
    """Run the agent until SIGTERM/SIGINT. Bad input raises ConfigError before anything is started."""
    log = structlog.get_logger("fos.run").bind(node=node.name, cluster=cfg.cluster)
    heap.limit_arenas()  # before the database call threads start: they share the main malloc arena (agent/heap.py)
    check(cfg)
    check_listen(cfg)
    require_secrets(cfg.secrets_unset, cfg.http_listen is not None, cfg.notify.enabled, "fos run")
    with StateDir(state_dir, cfg.cluster, node.name) as state:  # refuses a second agent for this node here
        instance = state.instance_id()
        check_name("instance", instance)
        if cfg.address_driver == "netlink":
            assert cfg.common_ip is not None
            # NetopsError: interface missing, down, wrong subnet. In a thread: netlink calls block.
            await asyncio.to_thread(validate, node.interface, cfg.common_ip)
        binder = build_binder(cfg, node)
        store = open_store(cfg)
        try:
            await _check_database(store, cfg, node, instance)
            app = build_app(cfg, node, state)
            agent = Agent(
                cfg, node, store, binder, app, SystemClock(), instance=instance, unproven_mark=state.unproven_mark
            )
            replication: Replication | None = None
            notifier: Notifier | None = None
            wake: WakeListener | None = None
            trimmer: asyncio.Task[None] | None = None
            runner: web.AppRunner | None = None
            if cfg.http_listen:  # before reaping an orphan: a port in use must refuse with nothing changed
                try:
                    runner = await start_server(agent, cfg.http_listen)
                except OSError as exc:
                    raise ConfigError(f"http.listen = {cfg.http_listen!r} cannot be used: {exc.strerror}") from None
            if isinstance(app, SupervisedCommand) and not (
                await _holder_in_maintenance(store, cfg, node) and await app.adopt() is not None
            ):
                await app.reap_orphan()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, agent.request_stop, signal.Signals(sig).name)
            loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # `kill -USR2`: what every asyncio task awaits
            log.info(
                "agent_starting",
                instance=instance,
                listen=cfg.http_listen,
                common_ip=str(cfg.common_ip),
                ttl=cfg.lease.ttl,
                heartbeat=cfg.lease.heartbeat,
            )
            try:
                if cfg.replication.enabled:  # last: nothing after it can refuse the start
                    replication = Replication.start(cfg, node, agent)
                if cfg.notify.enabled:
                    # Here, not at the top: the notifier's mail and webhook code (aiosmtplib, email, tenacity's
                    # retrying) is loaded only by an agent that has [notify] configured (issue #14).
                    from .notifier import start_notifier

                    holder_epoch = lambda: agent.epoch if agent.role is Role.ACTIVE else None  # noqa: E731
                    notifier = start_notifier(cfg, node.name, holder_epoch, agent.stop_requested)
                wake = await start_listener(cfg, node.name, agent.wake, agent.metrics)  # hints: agent/wake.py
                agent.hints_heard = wake is not None  # none bound (port taken, hints off): the holder polls
                agent.waker = Waker(cfg, node.name, agent.metrics)
                agent.waker.prefetch()
                trimmer = asyncio.create_task(heap.trim_every())  # an idle agent's heap never shrinks otherwise
                await agent.run()
            except AgentFailed as exc:
                cause = exc.__cause__
                if isinstance(cause, FATAL_STORE_ERRORS):
                    raise ConfigError(f"database: {cause}") from None
                if isinstance(cause, StoreError):
                    print(f"fos: database: {cause}", file=sys.stderr)
                else:
                    print(f"fos: {exc}", file=sys.stderr)
                return EXIT_FAILED
            finally:
                if wake is not None:
                    wake.close()
                if agent.waker is not None:
                    await agent.waker.close()  # a hint of the release still being resolved goes out first
                if trimmer is not None:
                    trimmer.cancel()
                if notifier is not None:
                    await notifier.stop()
                if replication is not None:
                    await replication.stop()
                if runner is not None:
                    await runner.cleanup()
        finally:
            await store.close()
    return EXIT_OK
