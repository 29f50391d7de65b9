"""The listener's decisions: a pure state machine, ``observe(event, now) -> actions``.

Nothing here reads a clock, talks to supervisord or sends anything. Events are plain
records (one per supervisord event, plus ``Tick`` when a timer is due and ``Reconcile``
at start-up); actions are plain records the edges carry out (``Start``/``Stop`` over
RPC, ``Alert`` through the sender threads). Unit tests replay event histories as data.

Three jobs:
- the migration gate: the web workers start only after ``<app>_migrate`` exits 0, and a
  migration that fails or runs past its timeout keeps them down and opens an incident;
- crash-loop backoff: ``restarts`` unexpected exits within ``window`` open an incident;
  from then on the process is held stopped and started again after an exponential
  delay; ``backoff_reset`` seconds of stable RUNNING close the incident;
- alerts: one when an incident opens, rate-limited reminders, one when it resolves, and
  one-off alerts for REMOTE_COMMUNICATION events other components send.
"""

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..contracts import REMOTE_TYPE  # noqa: F401
from ..spec import Backoff, CrashLoop, Spec

SPAWN_HISTORY = 3600.0  # the state file keeps one hour of spawn times per process ...
SPAWN_CAP = 1000  # ... but at most this many (supervisord alone manages ~1,500 an hour in a loop)
EVENT_DEDUPE = 60.0  # the same remote event (kind, process) alerts at most once a minute
# A signal sent within milliseconds of a spawn can hit the child between fork and exec,
# where supervisord's inherited handler swallows it: the stop is lost and the process
# runs on (measured: a TERM 3 ms after spawn was ignored until stopwaitsecs). So a process
# that must stay held is stopped this long after it started, not at once.
STOP_SETTLE = 0.3
START_RETRY = 1.0  # a retry whose start failed (RPC error) is tried again this much later


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
    # supervisord's start time of the run this event belongs to, when the edge looked it up:
    # tells a new migration run from events of a run already handled at start-up.
    run_start: Optional[float] = None

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"


@dataclass(frozen=True)
class RemoteEvent:
    """A REMOTE_COMMUNICATION event of type ``supervisor-fastapi``."""

    kind: str
    process: str = ""
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupRemoved:
    """PROCESS_GROUP_REMOVED: `supervisorctl update` (or `up`) took a group out."""

    group: str


@dataclass(frozen=True)
class StartFailed:
    """The edge could not start a process we asked for (an RPC fault or error)."""

    namespec: str
    reason: str = ""


@dataclass(frozen=True)
class Tick:
    """A timer is due (or the loop woke up); nothing happened on the wire."""


@dataclass(frozen=True)
class Reconcile:
    """Start-up: what supervisord reports now, plus the state file of the previous run."""

    infos: Sequence[Mapping[str, Any]]
    saved: Optional[Mapping[str, Any]] = None


Event = Union[ProcessState, RemoteEvent, GroupRemoved, StartFailed, Tick, Reconcile]


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    namespec: str


@dataclass(frozen=True)
class Stop:
    namespec: str


@dataclass(frozen=True)
class Alert:
    """One alert for every channel. ``log_of`` asks the sender to attach that process's exit
    status and the last lines of its log (fetched off the event loop)."""

    event: str  # "open" | "reminder" | "resolve" | "event"
    kind: str
    process: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    log_of: Optional[str] = None


Action = Union[Start, Stop, Alert]


# --- configuration and records -----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    app: str
    migrate_timeout: Optional[float]  # None: no [migrate], workers autostart
    crash_loop: CrashLoop = CrashLoop()
    reminder_interval: float = 3600.0
    # The supervisor groups this spec renders (web workers, [[programs]], the watchdog);
    # None: any group named like the app. On a shared OS supervisord, other programs whose
    # names merely start with "<app>_" are not ours to hold.
    groups: Optional[Tuple[str, ...]] = None

    @classmethod
    def from_spec(cls, spec: Spec) -> "Config":
        app = spec.app.name
        groups = (app,) + tuple(f"{app}_{p.name}" for p in spec.programs) + (f"{app}_watchdog",)
        return cls(app=app, migrate_timeout=spec.migrate.timeout if spec.migrate else None,
                   crash_loop=spec.crash_loop, reminder_interval=spec.listener.reminder_interval, groups=groups)

    @property
    def migrate_name(self) -> str:
        return f"{self.app}_migrate"

    @property
    def listener_group(self) -> str:
        return f"{self.app}_listener"

    def backoff_for(self, group: str) -> Backoff:
        """The crash-loop settings of a supervisor group (``web`` or ``web_<program>``)."""
        program = group
        if group != self.app and group.startswith(self.app + "_"):
            program = group[len(self.app) + 1:]
        return self.crash_loop.for_program(program)


@dataclass
class Incident:
    kind: str  # "crash_loop" | "fatal" | "migration_failed" | "migration_timeout"
    opened: float
    summary: str
    delay: float = 0.0  # the current nominal backoff delay
    next_retry: Optional[float] = None  # when the held process is started again
    last_alert: float = 0.0
    retries: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "opened": self.opened, "next_retry": self.next_retry, "delay": self.delay,
                "summary": self.summary, "last_alert": self.last_alert, "retries": self.retries}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Incident":
        return cls(kind=str(data["kind"]), opened=float(data["opened"]), summary=str(data.get("summary", "")),
                   delay=float(data.get("delay") or 0.0),
                   next_retry=None if data.get("next_retry") is None else float(data["next_retry"]),
                   last_alert=float(data.get("last_alert") or data["opened"]), retries=int(data.get("retries", 0)))


@dataclass
class Proc:
    """What the machine knows about one supervised process."""

    name: str
    group: str
    state: str = "UNKNOWN"
    exits: List[float] = field(default_factory=list)  # unexpected exits inside the window
    spawns: List[float] = field(default_factory=list)
    running_since: Optional[float] = None
    incident: Optional[Incident] = None
    expect_stop: bool = False  # we asked for a stop and have not seen STOPPED yet
    expect_start: bool = False  # we asked for a start and have not seen STARTING yet
    stop_at: Optional[float] = None  # a held process that supervisord respawned: stop it then

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def held(self) -> bool:
        """Kept stopped until the incident's next retry."""
        return self.incident is not None and self.incident.next_retry is not None


@dataclass
class Gate:
    state: str = "none"  # "none" | "waiting" | "open" | "failed"
    detail: str = ""
    started: Optional[float] = None  # when the running migration started
    stopping: bool = False  # we stopped it for running too long
    handled_run: Optional[float] = None  # start time of the run whose outcome is decided


# --- the machine --------------------------------------------------------------------------


class Machine:
    """All decisions of the listener; feed it events, carry out the actions it returns."""

    def __init__(self, config: Config, rand: Optional[Callable[[], float]] = None) -> None:
        self.config = config
        self.rand = rand or random.random
        self.procs: Dict[str, Proc] = {}
        self.gate = Gate(state="none" if config.migrate_timeout is None else "waiting",
                         detail="" if config.migrate_timeout is None else "waiting for the migration to run")
        self.migration: Optional[Incident] = None
        self.remote_sent: Dict[Tuple[str, str], float] = {}
        self.remote_suppressed: Dict[Tuple[str, str], int] = {}

    # -- entry point --

    def observe(self, event: Event, now: float) -> List[Action]:
        """Fold one event into the state; return what must be done about it."""
        out: List[Action] = []
        if isinstance(event, ProcessState):
            if event.name == self.config.migrate_name:
                self._migration_event(event, now, out)
            elif self._watched(event.group):
                self._process_event(event, now, out)
        elif isinstance(event, RemoteEvent):
            self._remote(event, now, out)
        elif isinstance(event, Reconcile):
            self._reconcile(event, now, out)
        elif isinstance(event, StartFailed):
            group, _, name = event.namespec.partition(":")
            p = self.procs.get(name)
            if p is not None and p.incident is not None and p.incident.next_retry is None \
                    and p.state not in ("STARTING", "RUNNING"):
                p.incident.next_retry = now + START_RETRY
        elif isinstance(event, GroupRemoved):
            # Its processes are gone (a changed group comes back as new ones): so are their
            # holds; an open incident is closed, not left dangling.
            for p in [p for p in self.procs.values() if p.group == event.group]:
                if p.incident is not None:
                    self._resolve(p, now, "removed from supervisord; incident closed", out)
                del self.procs[p.name]
        self._timers(now, out)
        return out

    def next_deadline(self) -> Optional[float]:
        """When ``observe(Tick(), ...)`` next has something to do, or None."""
        times: List[float] = []
        for p in self.procs.values():
            inc = p.incident
            if inc is None:
                continue
            if p.stop_at is not None:
                times.append(p.stop_at)
            if inc.next_retry is not None and not p.expect_stop:  # a pending stop defers the retry
                times.append(inc.next_retry)
            elif p.running_since is not None and p.state == "RUNNING":
                times.append(p.running_since + self._backoff(p).backoff_reset)
            times.append(inc.last_alert + self.config.reminder_interval)
        if self.migration is not None:
            times.append(self.migration.last_alert + self.config.reminder_interval)
        if self.gate.state == "waiting" and self.gate.started is not None and self.config.migrate_timeout:
            times.append(self.gate.started + self.config.migrate_timeout)
        return min(times) if times else None

    def snapshot(self, now: float) -> Dict[str, Any]:
        """The state file body (without ``last_alert``, which the sender side knows)."""
        incidents = {name: dict(p.incident.to_json(), group=p.group) for name, p in sorted(self.procs.items())
                     if p.incident}
        if self.migration is not None:
            incidents[self.config.migrate_name] = self.migration.to_json()
        spawns = {}
        for name, p in sorted(self.procs.items()):
            recent = [t for t in p.spawns if t > now - SPAWN_HISTORY]
            if recent:
                spawns[name] = recent
        return {"version": 1, "updated": now, "gate": {"state": self.gate.state, "detail": self.gate.detail},
                "incidents": incidents, "spawns": spawns,
                "exits": {name: list(p.exits) for name, p in sorted(self.procs.items()) if p.exits}}

    # -- helpers --

    def _watched(self, group: str) -> bool:
        app = self.config.app
        if self.config.groups is not None:
            return group in self.config.groups
        return (group == app or group.startswith(app + "_")) and group not in (
            self.config.migrate_name, self.config.listener_group)

    def _backoff(self, p: Proc) -> Backoff:
        return self.config.backoff_for(p.group)

    def _proc(self, name: str, group: str) -> Proc:
        p = self.procs.get(name)
        if p is None:
            p = self.procs[name] = Proc(name=name, group=group)
        return p

    def _delay(self, nominal: float, b: Backoff) -> float:
        # Jitter only lengthens a delay: the configured delay is a floor the user can count on.
        return nominal * (1.0 + b.jitter * self.rand())

    def _hold(self, p: Proc, now: float, out: List[Action]) -> None:
        """Schedule the next retry of a process with an open incident, doubling the delay."""
        b, inc = self._backoff(p), p.incident
        assert inc is not None
        inc.delay = b.backoff_initial if inc.delay <= 0 else min(inc.delay * 2, b.backoff_max)
        inc.next_retry = now + self._delay(inc.delay, b)
        if p.state in ("STARTING", "RUNNING", "BACKOFF"):
            out.append(Stop(p.namespec))
            p.expect_stop = True

    def _resolve(self, p: Proc, now: float, why: str, out: List[Action]) -> None:
        inc = p.incident
        assert inc is not None
        out.append(Alert("resolve", inc.kind, p.name, f"{p.name}: {why}",
                         {"opened": inc.opened, "duration": round(now - inc.opened, 1), "retries": inc.retries}))
        p.incident = None
        p.exits = []

    # -- web workers and other programs --

    def _process_event(self, ev: ProcessState, now: float, out: List[Action]) -> None:
        p = self._proc(ev.name, ev.group)
        p.state = ev.state
        b = self._backoff(p)
        if ev.state == "STARTING":
            p.spawns = [t for t in p.spawns[-SPAWN_CAP + 1:] if t > now - SPAWN_HISTORY] + [now]
            p.running_since = None
            ours, p.expect_start = p.expect_start, False
            if p.held:
                if ev.from_state == "STOPPED" and not ours:
                    # Someone started it by hand while we held it: that is the retry.
                    assert p.incident is not None
                    p.incident.next_retry = None
                    p.incident.retries += 1
                else:
                    # supervisord's own autorestart after a crash: keep holding.
                    p.stop_at = now + STOP_SETTLE
        elif ev.state == "RUNNING":
            p.running_since = now
            if p.held and p.stop_at is None:  # started behind our back between STARTING and now
                p.stop_at = now + STOP_SETTLE
        elif ev.state == "EXITED":
            p.running_since = None
            p.expect_stop = False  # it ended on its own; a stop we sent found nothing to stop
            if ev.expected is False:
                p.exits = [t for t in p.exits if t > now - b.window] + [now]
                if p.incident is not None:
                    if not p.held:
                        self._hold(p, now, out)
                elif len(p.exits) >= b.restarts:
                    span = now - p.exits[0]
                    p.incident = Incident("crash_loop", now, f"{p.name} crashed {len(p.exits)} times in "
                                          f"{span:.0f} s; restarting it with backoff", last_alert=now)
                    self._hold(p, now, out)
                    assert p.incident is not None
                    out.append(Alert("open", "crash_loop", p.name, p.incident.summary,
                                     {"exits": len(p.exits), "window": b.window, "next_retry_in":
                                      round(p.incident.next_retry - now, 1) if p.incident.next_retry else None,
                                      "pid": ev.pid}, log_of=p.namespec))
        elif ev.state == "FATAL":
            p.running_since = None
            p.expect_stop = False
            if p.incident is not None:
                if not p.held and b.retry_fatal:
                    self._hold(p, now, out)
            else:
                summary = f"{p.name} could not be started (FATAL)" + (
                    "; retrying with backoff" if b.retry_fatal else "; supervisord will not retry it")
                p.incident = Incident("fatal", now, summary, last_alert=now)
                if b.retry_fatal:
                    self._hold(p, now, out)
                out.append(Alert("open", "fatal", p.name, summary, {"from_state": ev.from_state},
                                 log_of=p.namespec))
        elif ev.state in ("STOPPED",):
            p.running_since = None
            p.stop_at = None
            if p.expect_stop:
                p.expect_stop = False
            elif p.incident is not None:
                self._resolve(p, now, "stopped by hand; incident closed", out)
        elif ev.state in ("BACKOFF", "STOPPING", "UNKNOWN"):
            p.running_since = None

    # -- the migration gate --

    def _migration_event(self, ev: ProcessState, now: float, out: List[Action]) -> None:
        g = self.gate
        name = ev.name
        if ev.run_start is not None and ev.run_start == g.handled_run:
            return  # a replay of the run reconciled at start-up
        if ev.state in ("EXITED", "FATAL"):
            g.handled_run = ev.run_start
        if ev.state == "STARTING":
            g.state, g.detail, g.started, g.stopping = "waiting", "migration running", now, False
        elif ev.state == "EXITED" and ev.expected:
            self._gate_open(now, out)
        elif ev.state == "EXITED":
            status = "unknown" if ev.exitstatus is None else str(ev.exitstatus)
            if g.stopping:
                return  # the timeout incident is open already
            self._gate_fail("migration_failed", f"{name} exited with status {status}; web workers stay down",
                            now, out, {"exitstatus": ev.exitstatus})
        elif ev.state in ("FATAL", "BACKOFF") and g.state != "failed":
            self._gate_fail("migration_failed", f"{name} could not be started ({ev.state}); web workers stay down",
                            now, out, {})
        elif ev.state == "STOPPED":
            if g.stopping:
                g.stopping = False
            elif g.state == "waiting":
                g.state, g.detail, g.started = "failed", f"{name} was stopped before it finished; web workers " \
                    "stay down (run `supervisorctl start` on it or `supervisor-fastapi up`)", None

    def _gate_open(self, now: float, out: List[Action]) -> None:
        g = self.gate
        g.state, g.detail, g.started, g.stopping = "open", "migration exited 0", None, False
        if self.migration is not None:
            inc = self.migration
            out.append(Alert("resolve", inc.kind, self.config.migrate_name,
                             f"{self.config.migrate_name} succeeded; starting the web workers",
                             {"opened": inc.opened, "duration": round(now - inc.opened, 1)}))
            self.migration = None
        web = [p for p in self.procs.values() if p.group == self.config.app]
        if not web:
            out.append(Start(f"{self.config.app}:*"))
        for p in sorted(web, key=lambda p: p.name):
            if p.state not in ("STARTING", "RUNNING", "STOPPING") and not p.held:
                out.append(Start(p.namespec))
                p.expect_start = True

    def _gate_fail(self, kind: str, summary: str, now: float, out: List[Action], details: Dict[str, Any]) -> None:
        g = self.gate
        g.state, g.detail, g.started = "failed", summary, None
        self.migration = Incident(kind, now, summary, last_alert=now)
        ns = f"{self.config.migrate_name}:{self.config.migrate_name}"
        out.append(Alert("open", kind, self.config.migrate_name, summary, details, log_of=ns))

    # -- timers --

    def _timers(self, now: float, out: List[Action]) -> None:
        g, timeout = self.gate, self.config.migrate_timeout
        if g.state == "waiting" and g.started is not None and timeout and now >= g.started + timeout:
            g.stopping = True
            ns = f"{self.config.migrate_name}:{self.config.migrate_name}"
            out.append(Stop(ns))
            self._gate_fail("migration_timeout", f"{self.config.migrate_name} ran longer than its timeout "
                            f"({timeout:g} s); stopped it, web workers stay down", now, out, {"timeout": timeout})
        for p in sorted(self.procs.values(), key=lambda p: p.name):
            inc = p.incident
            if inc is None:
                continue
            if p.stop_at is not None and now >= p.stop_at:
                p.stop_at = None
                if p.held and p.state in ("STARTING", "RUNNING", "BACKOFF"):
                    out.append(Stop(p.namespec))
                    p.expect_stop = True
            # While our stop is under way a start would fail: the STOPPED event brings us back.
            if inc.next_retry is not None and now >= inc.next_retry and not p.expect_stop:
                inc.next_retry = None
                inc.retries += 1
                out.append(Start(p.namespec))
                p.expect_start = True
            elif (inc.next_retry is None and p.state == "RUNNING" and p.running_since is not None
                  and now >= p.running_since + self._backoff(p).backoff_reset):
                self._resolve(p, now, f"running for {now - p.running_since:.0f} s; recovered", out)
                continue
            if now >= inc.last_alert + self.config.reminder_interval:
                inc.last_alert = now
                out.append(Alert("reminder", inc.kind, p.name, f"still open: {inc.summary}",
                                 {"opened": inc.opened, "retries": inc.retries, "delay": inc.delay}))
        m = self.migration
        if m is not None and now >= m.last_alert + self.config.reminder_interval:
            m.last_alert = now
            out.append(Alert("reminder", m.kind, self.config.migrate_name, f"still open: {m.summary}",
                             {"opened": m.opened}))

    # -- remote events --

    def _remote(self, ev: RemoteEvent, now: float, out: List[Action]) -> None:
        key = (ev.kind, ev.process)
        if now < self.remote_sent.get(key, float("-inf")) + EVENT_DEDUPE:
            self.remote_suppressed[key] = self.remote_suppressed.get(key, 0) + 1
            return
        details = dict(ev.details)
        suppressed = self.remote_suppressed.pop(key, 0)
        if suppressed:
            details["suppressed_since_last"] = suppressed
        self.remote_sent[key] = now
        out.append(Alert("event", ev.kind, ev.process, ev.summary or ev.kind, details))

    # -- start-up --

    def _reconcile(self, ev: Reconcile, now: float, out: List[Action]) -> None:
        saved = dict(ev.saved or {})
        saved_incidents = dict(saved.get("incidents") or {})
        saved_spawns = dict(saved.get("spawns") or {})
        saved_exits = dict(saved.get("exits") or {})
        saved_gate = dict(saved.get("gate") or {})
        migrate = None
        for info in ev.infos:
            name, group, state = str(info["name"]), str(info["group"]), str(info["statename"])
            if name == self.config.migrate_name:
                migrate = info
                continue
            if not self._watched(group):
                continue
            p = self._proc(name, group)
            p.state = state
            p.spawns = [float(t) for t in saved_spawns.get(name, []) if float(t) > now - SPAWN_HISTORY]
            p.exits = [float(t) for t in saved_exits.get(name, [])]
            if state == "RUNNING":
                p.running_since = float(info.get("start") or now)
            if name in saved_incidents:
                try:
                    p.incident = Incident.from_json(saved_incidents[name])
                except (KeyError, TypeError, ValueError):
                    p.incident = None
            if p.held and state in ("STARTING", "RUNNING", "BACKOFF"):
                out.append(Stop(p.namespec))
                p.expect_stop = True
        if not ev.infos:
            # supervisord did not answer: keep what the previous run knew rather than forget it.
            for name, data in saved_incidents.items():
                group = str(data.get("group") or self.config.app) if isinstance(data, dict) else ""
                if name in self.procs or name == self.config.migrate_name or not self._watched(group):
                    continue
                p = self._proc(name, group)
                p.spawns = [float(t) for t in saved_spawns.get(name, []) if float(t) > now - SPAWN_HISTORY]
                try:
                    p.incident = Incident.from_json(data)
                except (KeyError, TypeError, ValueError):
                    p.incident = None
        if self.config.migrate_timeout is None:
            self.gate = Gate("none")
            return
        if self.config.migrate_name in saved_incidents:
            try:
                self.migration = Incident.from_json(saved_incidents[self.config.migrate_name])
            except (KeyError, TypeError, ValueError):
                self.migration = None
        g = self.gate
        if migrate is None:
            if not ev.infos and saved_gate.get("state") in ("waiting", "open", "failed"):
                g.state, g.detail = str(saved_gate["state"]), str(saved_gate.get("detail", ""))
            else:
                g.state, g.detail = "waiting", "the migration program is not loaded in supervisord"
            return
        state = str(migrate["statename"])
        if state not in ("STARTING", "RUNNING"):
            g.handled_run = float(migrate.get("start") or 0)
        if state in ("STARTING", "RUNNING"):
            g.state, g.detail, g.started = "waiting", "migration running", float(migrate.get("start") or now)
            if saved_gate.get("state") == "failed" and self.migration and self.migration.kind == "migration_timeout":
                g.stopping = True  # our stop is still under way
        elif state == "EXITED" and migrate.get("exitstatus") == 0:
            if saved_gate.get("state") == "open":
                g.state, g.detail = "open", "migration exited 0"
            else:  # it finished while no listener was watching
                self._gate_open(now, out)
        elif state == "EXITED":
            if saved_gate.get("state") == "failed" and self.migration is not None:
                g.state, g.detail = "failed", str(saved_gate.get("detail", ""))
            else:
                self._gate_fail("migration_failed", f"{self.config.migrate_name} exited with status "
                                f"{migrate.get('exitstatus')}; web workers stay down", now, out,
                                {"exitstatus": migrate.get("exitstatus")})
        elif state in ("FATAL", "BACKOFF"):
            if self.migration is None:
                self._gate_fail("migration_failed", f"{self.config.migrate_name} could not be started ({state}); "
                                "web workers stay down", now, out, {})
            else:
                g.state, g.detail = "failed", self.migration.summary
        elif state == "STOPPED" and float(migrate.get("start") or 0) > 0:
            g.state = "failed"
            g.detail = str(saved_gate.get("detail") or f"{self.config.migrate_name} was stopped before it finished")
        else:
            g.state, g.detail = "waiting", "waiting for the migration to run"
