"""Crash-loop decisions for one process: a pure machine with an injected clock and jitter.

The controller (controller.py) tells it how each run of the process ended and when it
started and became RUNNING; it answers with what supervisord must do next and which
alerts to raise. Nothing here reads a clock or touches supervisord; unit tests replay
histories as data.

The policy, capacity first:
- ``killed``: the process was serving (ready) and died of SIGKILL (the OOM killer, an
  operator). It is restarted at once, never held: holding it would turn a memory problem
  into an outage. ``restarts`` such kills within ``window`` open one ``killed`` incident
  (alerted once, "out of memory?"), resolved after ``backoff_reset`` s without a kill.
- ``crash`` (it exited or crashed by itself after it was RUNNING: an exit status,
  SIGSEGV, SIGABRT) and ``start_failure`` (it died before it was RUNNING or ready:
  import or lifespan failure, killed during start-up, exec failure) are failures. The
  first ``restarts - 1`` within ``window`` are restarted at once; the ``restarts``-th
  opens a ``crash_loop`` incident and from then on each failure holds the process for an
  exponential delay (``backoff_initial`` doubling to ``backoff_max``, jitter only
  lengthens it). With ``retry_fatal = false`` the incident gives up instead (FATAL; start
  it by hand). ``backoff_reset`` s of RUNNING close the incident.
- ``clean_exit`` (an expected exit status, e.g. uvicorn's limit_max_requests) and
  ``stopped`` (supervisord stopped it) are not failures.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Union

from ..contracts.settings import Policy

Cause = Literal["killed", "crash", "start_failure", "clean_exit", "stopped"]
CAUSES: Tuple[Cause, ...] = ("killed", "crash", "start_failure", "clean_exit", "stopped")
IncidentKind = Literal["crash_loop", "killed"]
SPAWN_HISTORY = 3600.0  # spawn times kept per process, for `status` ...
SPAWN_CAP = 1000  # ... at most this many


@dataclass(frozen=True)
class Restart:
    """Start it again at once."""


@dataclass(frozen=True)
class Hold:
    """Do not spawn it before ``until``; ``reason`` is shown in supervisorctl status."""

    until: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Leave it FATAL until an operator starts it."""

    reason: str


@dataclass(frozen=True)
class IncidentAlert:
    """A crash-loop or kill incident opened, still open (reminder) or resolved; the controller
    sends it to the listener."""

    event: Literal["open", "reminder", "resolve"]
    kind: str
    process: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    log_of: Optional[str] = None  # attach this process's exit status and log tail


Decision = Union[Restart, Hold, GiveUp]


@dataclass
class Incident:
    kind: IncidentKind
    opened: float
    summary: str
    delay: float = 0.0  # the current nominal backoff delay
    next_retry: Optional[float] = None
    retries: int = 0
    last_alert: float = 0.0
    gave_up: bool = False

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "opened": self.opened, "summary": self.summary, "delay": self.delay,
                "next_retry": self.next_retry, "retries": self.retries, "last_alert": self.last_alert,
                "gave_up": self.gave_up}


def classify(*, stopping: bool, served: bool, expected: bool, signal: Optional[int]) -> Cause:
    """How a run ended (pure). ``served``: it had started serving: for a web worker, its ready
    file named its pid *and* the controller saw that pid listen on the shared socket while it
    was alive (however soon after the spawn it died); another program reached RUNNING."""
    if stopping:
        return "stopped"
    if not served:
        return "start_failure"
    if signal == 9:
        return "killed"
    if expected and signal is None:
        return "clean_exit"
    return "crash"


def _signame(sig: Optional[int]) -> str:
    return {9: "SIGKILL", 6: "SIGABRT", 11: "SIGSEGV", 15: "SIGTERM", 7: "SIGBUS", 4: "SIGILL"}.get(
        sig or 0, f"signal {sig}")


class ProcessLoop:
    """Decisions for one supervised process."""

    def __init__(self, name: str, full_name: str, policy: Policy, reminder_interval: float = 3600.0,
                 rand: Optional[Callable[[], float]] = None) -> None:
        self.name, self.full_name, self.policy = name, full_name, policy
        self.reminder_interval = reminder_interval
        self.rand = rand or (lambda: 0.5)
        self.failures: List[float] = []
        self.kills: List[float] = []
        self.spawns: List[float] = []
        self.first_spawn: Optional[float] = None  # so `status` tells the start from restarts
        self.incident: Optional[Incident] = None
        self.kill_incident: Optional[Incident] = None
        self.running_since: Optional[float] = None
        self.last_kill: float = 0.0

    # -- what happened --

    def started(self, now: float) -> None:
        """supervisord spawned it (every spawn: ours, its own, an operator's)."""
        if self.first_spawn is None:
            self.first_spawn = now
        self.spawns = [t for t in self.spawns[-SPAWN_CAP + 1:] if t > now - SPAWN_HISTORY] + [now]
        self.running_since = None
        if self.incident is not None and self.incident.next_retry is not None:
            # The retry is under way (at the held time, or started by hand).
            self.incident.next_retry = None
            self.incident.retries += 1

    def running(self, now: float) -> None:
        """It reached RUNNING (stayed up startsecs) or became ready."""
        if self.running_since is None:
            self.running_since = now

    def exited(self, cause: Cause, now: float, detail: str = "", signal: Optional[int] = None,
               exitstatus: Optional[int] = None) -> Tuple[Decision, List[IncidentAlert]]:
        """A run ended; what supervisord must do now, and the alerts."""
        self.running_since = None
        alerts: List[IncidentAlert] = []
        if cause == "killed":
            return Restart(), self._killed(now, signal, alerts)
        if cause in ("clean_exit", "stopped"):
            return Restart(), alerts
        p = self.policy
        self.failures = [t for t in self.failures if t > now - p.window] + [now]
        what = detail or ("exited before it was serving" if cause == "start_failure" else "crashed")
        if self.incident is None:
            if len(self.failures) < p.restarts:
                return Restart(), alerts
            span = now - self.failures[0]
            self.incident = Incident("crash_loop", now, f"{self.name} failed {len(self.failures)} times in "
                                     f"{span:.0f} s (last: {what})", last_alert=now)
            decision = self._backoff(now)
            verb = "gave up; start it by hand once fixed" if isinstance(decision, GiveUp) else \
                f"retrying with backoff, next in {self.incident.delay:g} s"
            self.incident.summary += f"; {verb}"
            alerts.append(IncidentAlert("open", "crash_loop", self.name, self.incident.summary,
                                        {"failures": len(self.failures), "window": p.window, "cause": cause,
                                         "signal": signal, "exitstatus": exitstatus,
                                         "next_retry_in": round(self.incident.delay, 1)}, log_of=self.full_name))
            return decision, alerts
        return self._backoff(now), alerts

    def stopped_by_operator(self, now: float) -> List[IncidentAlert]:
        """An operator stopped it while an incident was open: the incident is closed."""
        self.running_since = None
        return self._resolve(now, "stopped by hand; incident closed")

    def close(self, now: float, why: str) -> List[IncidentAlert]:
        """Close the open incidents (the process is gone from supervisord)."""
        alerts = self._resolve(now, why)
        if self.kill_incident is not None:
            k, self.kill_incident = self.kill_incident, None
            alerts.append(IncidentAlert("resolve", k.kind, self.name, f"{self.name}: {why}", {"opened": k.opened}))
        return alerts

    def resume(self, now: float) -> List[IncidentAlert]:
        """The operator says the cause is fixed (`supervisor-fastapi up`): forget the failures."""
        alerts = self._resolve(now, "cleared by the operator (up); starting it at once")
        self.failures = []
        return alerts

    def tick(self, now: float) -> List[IncidentAlert]:
        """Timers: recovery after backoff_reset s RUNNING, the end of a kill incident, reminders."""
        out: List[IncidentAlert] = []
        p = self.policy
        inc = self.incident
        if inc is not None and inc.next_retry is None and not inc.gave_up and self.running_since is not None \
                and now >= self.running_since + p.backoff_reset:
            out += self._resolve(now, f"running for {now - self.running_since:.0f} s; recovered")
        k = self.kill_incident
        if k is not None and now >= self.last_kill + p.backoff_reset and self.running_since is not None:
            out.append(IncidentAlert("resolve", k.kind, self.name,
                                     f"{self.name}: no kill for {now - self.last_kill:.0f} s",
                                     {"opened": k.opened, "duration": round(now - k.opened, 1),
                                      "kills": len(self.kills)}))
            self.kill_incident = None
            self.kills = []
        for incident in (self.incident, self.kill_incident):
            if incident is not None and now >= incident.last_alert + self.reminder_interval:
                incident.last_alert = now
                out.append(IncidentAlert("reminder", incident.kind, self.name, f"still open: {incident.summary}",
                                         {"opened": incident.opened, "retries": incident.retries}))
        return out

    def snapshot(self, now: float) -> Dict[str, Any]:
        return {"incident": self.incident.to_json() if self.incident else None,
                "kill_incident": self.kill_incident.to_json() if self.kill_incident else None,
                "failures": [t for t in self.failures if t > now - self.policy.window],
                "kills": list(self.kills), "spawns": [t for t in self.spawns if t > now - SPAWN_HISTORY],
                "first_spawn": self.first_spawn}

    # -- helpers --

    def _killed(self, now: float, signal: Optional[int], alerts: List[IncidentAlert]) -> List[IncidentAlert]:
        p = self.policy
        self.last_kill = now
        self.kills = [t for t in self.kills if t > now - p.window] + [now]
        if self.kill_incident is None and len(self.kills) >= p.restarts:
            summary = (f"{self.name} killed by {_signame(signal)} {len(self.kills)} times in "
                       f"{now - self.kills[0]:.0f} s: out of memory? (restarted at once each time)")
            self.kill_incident = Incident("killed", now, summary, last_alert=now)
            alerts.append(IncidentAlert("open", "killed", self.name, summary,
                                        {"kills": len(self.kills), "window": p.window, "signal": signal}))
        return alerts

    def _backoff(self, now: float) -> Decision:
        inc, p = self.incident, self.policy
        assert inc is not None
        if not p.retry_fatal:
            inc.gave_up, inc.next_retry = True, None
            return GiveUp(f"crash loop ({inc.summary.split(';')[0]}); retry_fatal = false: start it by hand once fixed")
        inc.delay = p.backoff_initial if inc.delay <= 0 else min(inc.delay * 2, p.backoff_max)
        inc.next_retry = now + inc.delay * (1.0 + p.jitter * self.rand())
        return Hold(inc.next_retry, f"crash loop: retry {inc.retries + 1} after a {inc.delay:g} s backoff")

    def _resolve(self, now: float, why: str) -> List[IncidentAlert]:
        inc = self.incident
        if inc is None:
            return []
        self.incident = None
        self.failures = []
        return [IncidentAlert("resolve", inc.kind, self.name, f"{self.name}: {why}",
                              {"opened": inc.opened, "duration": round(now - inc.opened, 1), "retries": inc.retries})]
