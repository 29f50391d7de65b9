"""The listener's decisions: pure, ``observe(event, now) -> actions``.

The listener delivers alerts; it no longer decides holds or the gate (the controller
inside supervisord does, plugins/controller.py, and sends its alerts as
REMOTE_COMMUNICATION events). What is left here:

- ``Relay``: the controller's alerts (open/reminder/resolve) pass straight through; one-off
  ``event`` alerts from other components (the watchdog, a failed rolling restart) are
  de-duplicated: the same (kind, process) at most once a minute, repeats counted.
- ``Fallback``: only when supervisord runs without the plugin (a conf.d fragment rendered
  without ``--with-plugins``): start the web workers once the migration exits 0, and alert
  when the migration fails or a program goes FATAL. There are no crash-loop holds then.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..contracts.rpc import LogRef
from ..contracts.settings import ListenerConfig

EVENT_DEDUPE = 60.0
# Seconds with no web worker RUNNING before "no_worker_serving" opens: longer than a
# `restart <app>:*` or a reload with a quick migration leaves the deployment without one.
NO_WORKER_GRACE = 10.0
# A resolve the controller sends because its supervisord run ends (reload, shutdown, update
# of the group), not because the cause went away: the incident stays open across runs.
RUN_ENDED = "run_ended"
MAX_INCIDENTS = 256


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessState:
    """A PROCESS_STATE_<state> event (``exitstatus`` is added by the edge when it knows it)."""

    name: str
    group: str
    state: str
    from_state: str = ""
    expected: Optional[bool] = None
    pid: int = 0
    exitstatus: Optional[int] = None

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}"


@dataclass(frozen=True)
class RemoteEvent:
    """A REMOTE_COMMUNICATION event of type ``supervisor-fastapi``."""

    kind: str
    process: str = ""
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    app: str = ""  # "" for senders that do not say (they are this app's)
    event: str = "event"  # "open" | "reminder" | "resolve" from the controller; "event" otherwise
    log_of: Optional[LogRef] = None


@dataclass(frozen=True)
class Serving:
    """The controller's snapshot when it starts the listener on demand: the web workers RUNNING
    now (the listener missed the events that got them there while it was not running)."""

    app: str
    running: Tuple[str, ...] = ()


Event = Union[ProcessState, RemoteEvent, Serving]


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    full_name: str


@dataclass(frozen=True)
class SendAlert:
    """One alert for every channel. ``log_of`` asks the sender to attach that process's exit
    status and the last lines of its log (fetched off the event loop)."""

    event: str  # "open" | "reminder" | "resolve" | "event"
    kind: str
    process: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    log_of: Optional[LogRef] = None


Action = Union[Start, SendAlert]


# --- the relay ----------------------------------------------------------------------------


def incident_key(kind: str, process: str) -> str:
    return f"{kind}|{process}"


def restore_incidents(saved: Any) -> Dict[str, float]:
    """The open incidents a previous listener process saved (key -> opened at); odd data: none."""
    if not isinstance(saved, dict):
        return {}
    return {str(k): float(v) for k, v in list(saved.items())[:MAX_INCIDENTS]
            if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Relay:
    """Alerts sent to this app's listener: the controller's pass, one-off events are de-duplicated.

    ``incidents`` (saved in the listener's state file, so it outlives a supervisord run) makes
    one incident one OPEN and one RESOLVED: a new run's controller opening what is still open
    is not sent again, and a resolve sent only because a run ended is not sent at all."""

    def __init__(self, app: str, incidents: Optional[Dict[str, float]] = None) -> None:
        self.app = app
        self.sent: Dict[Tuple[str, str], float] = {}
        self.suppressed: Dict[Tuple[str, str], int] = {}
        self.incidents: Dict[str, float] = dict(incidents or {})
        self.resolved: Dict[str, float] = {}

    def memory(self, now: float) -> Dict[str, Any]:
        """The de-duplication a later listener process must keep (saved in the state file): a
        listener started on demand must not send again what this one sent a moment ago, nor
        lose a count of the repeats it held back."""
        recent = {k: t for k, t in self.sent.items() if now < t + EVENT_DEDUPE}
        return {"sent": [[k, p, t] for (k, p), t in sorted(recent.items())],
                "suppressed": [[k, p, n] for (k, p), n in sorted(self.suppressed.items())],
                "resolved": {k: t for k, t in sorted(self.resolved.items()) if now < t + EVENT_DEDUPE}}

    def remember(self, saved: Any) -> None:
        """Take back what ``memory`` saved; odd data: nothing."""
        if not isinstance(saved, dict):
            return
        for (kind, process), value in _triples(saved.get("sent")):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.sent[(kind, process)] = float(value)
        for (kind, process), value in _triples(saved.get("suppressed")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.suppressed[(kind, process)] = value
        resolved = saved.get("resolved")
        if isinstance(resolved, dict):
            self.resolved.update({str(k): float(v) for k, v in list(resolved.items())[:MAX_INCIDENTS]
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def observe(self, ev: RemoteEvent, now: float) -> List[Action]:
        if ev.app and ev.app != self.app:
            return []  # another app's listener on the same supervisord takes it
        if ev.event in ("open", "reminder", "resolve"):
            incident = incident_key(ev.kind, ev.process)
            if ev.event == "open":
                if incident in self.incidents:
                    return []  # still open from an earlier run (or this one): the same incident
                if len(self.incidents) < MAX_INCIDENTS:
                    self.incidents[incident] = now
            elif ev.event == "resolve":
                if ev.details.get(RUN_ENDED):
                    return []  # the run ended, the cause did not: the next run says how it is
                if self.incidents.pop(incident, None) is None and \
                        now < self.resolved.get(incident, float("-inf")) + EVENT_DEDUPE:
                    return []  # resolved a moment ago (the listener saw the migration succeed first)
                # Not known open, but not just resolved either: its OPEN was sent by a listener
                # that could not save it (a full disk), so this RESOLVED is due.
                self.resolved[incident] = now
            return [SendAlert(ev.event, ev.kind, ev.process, ev.summary, ev.details, ev.log_of)]
        key = (ev.kind, ev.process)
        if now < self.sent.get(key, float("-inf")) + EVENT_DEDUPE:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return []
        details = dict(ev.details)
        suppressed = self.suppressed.pop(key, 0)
        if suppressed:
            details["suppressed_since_last"] = suppressed
        self.sent[key] = now
        return [SendAlert("event", ev.kind, ev.process, ev.summary or ev.kind, details, ev.log_of)]


def _triples(value: Any) -> List[Tuple[Tuple[str, str], Any]]:
    """[[kind, process, value], ...] as saved by ``Relay.memory``; anything else is skipped."""
    if not isinstance(value, list):
        return []
    return [((item[0], item[1]), item[2]) for item in value[:MAX_INCIDENTS]
            if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)]


# --- does any web worker serve? ------------------------------------------------------------


class ServingWatch:
    """``no_worker_serving``: open when no web worker has been RUNNING for ``grace`` seconds,
    whatever the cause (a shut gate, crash-loop holds, `stop`), resolved when one runs again.

    Armed once a worker of this app has served (``served`` is saved across listener runs), so
    a first deploy waiting for its migration does not page; ``since`` starts at the listener's
    start, so a new supervisord run whose workers never come up does."""

    def __init__(self, web: str, now: float, served: bool = False, grace: float = NO_WORKER_GRACE) -> None:
        self.web, self.grace, self.served = web, grace, served
        self.running: Dict[str, bool] = {}
        self.zero_since: Optional[float] = now

    def observe(self, ev: ProcessState, now: float) -> None:
        if ev.group != self.web:
            return
        if ev.state == "RUNNING":
            self.running[ev.name] = True
            self.served, self.zero_since = True, None
        else:
            self.running.pop(ev.name, None)
            if not self.running and self.zero_since is None:
                self.zero_since = now

    def take(self, snapshot: Serving, now: float) -> None:
        """The controller's word on which workers run now replaces what events told before."""
        self.running = {name: True for name in snapshot.running}
        if self.running:
            self.served, self.zero_since = True, None
        elif self.zero_since is None:
            self.zero_since = now

    def watching(self) -> bool:
        """Whether the listener must stay to time or resolve ``no_worker_serving``: once a worker
        has served, for as long as none is RUNNING (the grace timer, then the open incident)."""
        return self.served and not self.running

    def tick(self, now: float, relay: Relay) -> List[Action]:
        key = incident_key("no_worker_serving", self.web)
        if self.running and key in relay.incidents:
            return relay.observe(RemoteEvent("no_worker_serving", self.web, f"{self.web}: a web worker serves again",
                                             event="resolve", app=relay.app), now)
        if (not self.running and self.served and self.zero_since is not None
                and now - self.zero_since >= self.grace and key not in relay.incidents):
            return relay.observe(RemoteEvent(
                "no_worker_serving", self.web, f"{self.web}: no web worker is serving (none RUNNING for "
                f"{now - self.zero_since:.0f} s); `supervisor-fastapi status` says why (held by the migration gate, "
                "crash-loop holds, stopped)", event="open", app=relay.app), now)
        return []


# --- without the plugin -------------------------------------------------------------------


class Fallback:
    """The little a listener can do when no controller runs inside supervisord."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.migration_failed = False
        self.fatal: Dict[str, bool] = {}

    def observe(self, ev: ProcessState, now: float) -> List[Action]:
        c = self.config
        if c.migrate and ev.name == c.migrate:
            return self._migration(ev)
        if ev.group not in c.groups and ev.group != c.web:
            return []
        if ev.state == "FATAL" and not self.fatal.get(ev.name):
            self.fatal[ev.name] = True
            return [SendAlert("open", "fatal", ev.name, f"{ev.name} could not be started (FATAL); supervisord will "
                              "not retry it (no supervisor-fastapi plugin: no crash-loop backoff)", {},
                              log_of=LogRef(ev.full_name))]
        if ev.state == "RUNNING" and self.fatal.pop(ev.name, False):
            return [SendAlert("resolve", "fatal", ev.name, f"{ev.name} is RUNNING again", {})]
        return []

    def _migration(self, ev: ProcessState) -> List[Action]:
        c = self.config
        out: List[Action] = []
        if ev.state == "EXITED" and ev.expected:
            if self.migration_failed:
                self.migration_failed = False
                out.append(SendAlert("resolve", "migration_failed", c.migrate, f"{c.migrate} succeeded; starting the "
                                     "web workers", {}))
            out.append(Start(f"{c.web}:*"))
        elif ev.state in ("EXITED", "FATAL", "BACKOFF") and not self.migration_failed:
            self.migration_failed = True
            status = "unknown" if ev.exitstatus is None else str(ev.exitstatus)
            what = f"exited with status {status}" if ev.state == "EXITED" else f"could not be started ({ev.state})"
            out.append(SendAlert("open", "migration_failed", c.migrate, f"{c.migrate} {what}; the web workers are not "
                                 "started (without the plugin, `supervisorctl start` can still start them by hand)",
                                 {"exitstatus": ev.exitstatus}, log_of=LogRef(f"{c.migrate}:{c.migrate}")))
        return out
