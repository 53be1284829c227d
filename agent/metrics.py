"""Prometheus metrics of one agent (its own registry, so several agents can share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lease.model import SEES_DISABLED, SEES_FAILOVER_OFF, SEES_MAINTENANCE

from .roles import Role

CONTROL_STATES = (SEES_MAINTENANCE, SEES_DISABLED, SEES_FAILOVER_OFF)
_UNSET = object()  # set_holder / set_control not called yet


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.role = Gauge("fos_role", "1 for the agent's current role", ["role"], registry=r)
        self.epoch = Gauge("fos_epoch", "epoch (fencing token) of the lease this node holds, 0 if none", registry=r)
        self.lease_seconds_left = Gauge(
            "fos_lease_seconds_left", "seconds until this holder's local fence deadline, 0 if not holding", registry=r
        )
        self.renew_latency = Histogram(
            "fos_renew_latency_seconds",
            "duration of lease renewals",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.renew_failures = Counter("fos_renew_failures", "renewals that failed or timed out", registry=r)
        self.transitions = Counter("fos_transitions", "role transitions", ["to"], registry=r)
        self.app_healthy = Gauge("fos_app_healthy", "1 if the application is healthy, 0 if not", registry=r)
        self.ip_bound = Gauge("fos_ip_bound", "1 if the common IP is bound on this node", registry=r)
        self.lease_holder = Gauge(
            "fos_lease_holder", "1 for the node this agent last saw holding the lease", ["holder"], registry=r
        )
        self.control = Gauge(
            "fos_control_state",
            "1 while this control state is in force as the agent last read it (maintenance, disabled, failover_off)",
            ["state"],
            registry=r,
        )
        self.wake_hints_sent = Counter("fos_wake_hints_sent", "wake-up hints sent to other nodes", registry=r)
        self.wake_hints_received = Counter(
            "fos_wake_hints_received", "wake-up hints received from another node or a command", registry=r
        )
        self.wake_hints_ignored = Counter(
            "fos_wake_hints_ignored",
            "datagrams on the wake port ignored: malformed, of another cluster or from an unknown sender",
            registry=r,
        )
        for role in Role:
            self.role.labels(role=role.value).set(0)
        for state in CONTROL_STATES:
            self.control.labels(state=state).set(0)
        # What set_holder / set_control last showed: they run on every lease read (twice a heartbeat), and a read
        # that changes nothing need not rebuild the labelled samples (set_holder made a new one each time).
        self._holder: object = _UNSET
        self._control: object = _UNSET

    def set_control(self, states: frozenset[str]) -> None:
        if states == self._control:
            return
        self._control = states
        for state in CONTROL_STATES:
            self.control.labels(state=state).set(1 if state in states else 0)

    def set_role(self, role: Role) -> None:
        for r in Role:
            self.role.labels(role=r.value).set(1 if r is role else 0)
        self.transitions.labels(to=role.value).inc()

    def set_holder(self, holder: str | None) -> None:
        if holder == self._holder:
            return
        self._holder = holder
        self.lease_holder.clear()
        if holder is not None:
            self.lease_holder.labels(holder=holder).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
