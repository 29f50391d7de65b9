"""The control plane inside supervisord: crash-loop holds and the migration gate, enforced
where the spawn happens.

An event listener learns of a crash after supervisord has already acted on it (the
respawn of an autorestart process happens in the next pass of its main loop, before the
listener's answer arrives), so a listener can only stop the extra spawn afterwards, and
its holds outlive the supervisord that made them. Code loaded inside supervisord (this
module, via the ``[rpcinterface:fastapi_<app>]`` factory) sees every spawn and every exit
synchronously. Per process of an app it wraps three methods of supervisord's own process
object:

- ``spawn``: the gate. While the app's migration has not succeeded in this supervisord
  run, a web worker is not spawned, whoever asks (autostart, autorestart, `start`,
  `restart`, `update`, `reload`, a rolling restart): it is put in BACKOFF with a
  description that says why, and released when the migration exits 0.
- ``finish`` (supervisord reaped it): how the run ended (ready? killed? crashed?) goes to
  the pure crash-loop machine (crashloop.py), whose decision is applied before the next
  pass: restart at once, or hold in supervisord's own BACKOFF state with ``delay`` set to
  the retry time (one spawn per retry; `supervisorctl status` says "held by
  supervisor-fastapi until HH:MM:SS"), or give up (FATAL).
- the loop wake-up: a signal wakeup fd makes supervisord's poll return as soon as a child
  dies (it otherwise notices within its 1 s poll timeout), and a decision to restart at
  once wakes the next pass too, so a killed worker is replaced in milliseconds.

Holds, incidents and the gate live in this process's memory only: they belong to one
supervisord run. A listener restart keeps them; a new supervisord, or `reload`, starts
from nothing (every worker starts at once, the migration runs again and gates them).
Alerts go out as REMOTE_COMMUNICATION events, which supervisord buffers for the listener;
the listener runs only while it has work, and this plugin starts it for the events it needs
(ondemand.py).

Standard library and supervisor only: this runs in supervisord's Python.
"""

import json
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ..contracts.files import read_small_file, read_worker_state
from ..contracts.rpc import HELD_PREFIX, REMOTE_TYPE
from ..contracts.settings import ControlConfig
from ..layout import Names
from . import ondemand
from .crashloop import GiveUp, Hold, IncidentAlert, ProcessLoop, Restart, classify
from .gate import Gate, GateWatch, Migration, gate_of

Log = Callable[[str], None]
TICK_EVERY = 0.1  # the timers run at most this often (every loop pass asks)
FOREVER = float("inf")
# Why a process was restarted, as counted for [metrics] (supervisor_fastapi_restarts_total):
# the first three are how a run ended (crashloop.classify); the others are announced by
# whoever ends the run on purpose (expect_restart: the watchdog, the rolling restart).
RESTART_CAUSES = ("killed", "crashed", "start_failed", "memory", "hung", "rolled")
ANNOUNCED_CAUSES = ("memory", "hung", "rolled")
_CLASSIFIED = {"killed": "killed", "crash": "crashed", "start_failure": "start_failed"}


def _states() -> Any:
    from supervisor.states import ProcessStates

    return ProcessStates


def _statename(process: Any) -> str:
    from supervisor.states import getProcessStateDescription

    return str(getProcessStateDescription(process.get_state()))


def runs_in(directory: Optional[str], current: str) -> bool:
    """Whether a program whose conf says ``directory`` starts in the ``current`` link or below it."""
    if not directory:
        return False
    current = current.rstrip("/")
    return directory.rstrip("/") == current or directory.startswith(current + "/")


def full_name(process: Any) -> str:
    """``group:name`` always: the controller's keys (supervisor's own namespec drops the group
    when it equals the name; cli/edges.py has both, by these two names)."""
    group = process.group.config.name if getattr(process, "group", None) is not None else process.config.name
    return f"{group}:{process.config.name}"


class Waker:
    """A self-pipe in supervisord's poll set: written by the signal wakeup fd (SIGCHLD) and
    by ``poke``; its ``readable`` runs ``on_pass`` once per main-loop pass (before the poll)."""

    def __init__(self, on_pass: Callable[[], None], log: Log) -> None:
        self.on_pass, self.log = on_pass, log
        self.r, self.w = os.pipe()
        self.retired = False  # every call runs on supervisord's one thread: a flag is enough
        for fd in (self.r, self.w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self.previous_wakeup = -1
        try:
            self.previous_wakeup = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:  # not the main thread: kills are noticed at the 1 s poll
            log(f"supervisor-fastapi: no signal wakeup fd ({exc})")

    # The asyncore-dispatcher methods supervisord's loop calls.
    def readable(self) -> bool:
        try:
            self.on_pass()
        except Exception as exc:  # never break supervisord's loop
            self.log(f"supervisor-fastapi: controller error: {exc!r}")
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except OSError:
            pass

    def handle_write_event(self) -> None:
        pass

    def handle_error(self) -> None:
        pass

    def poke(self) -> None:
        if self.retired:
            # The old run's controllers still poke while a reload stops their workers; the
            # number may already be an accepted RPC client's socket, and a byte written
            # there would precede supervisord's answer to it.
            return
        try:
            os.write(self.w, b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway

    def retire(self) -> None:
        """Never write again, and leave the descriptors alone: their numbers may be reused already."""
        self.retired = True

    def close(self) -> None:
        """Called while supervisord still owns these descriptor numbers (see Registry._on_stopping)."""
        if self.retired:
            return
        self.retired = True
        try:
            if signal.set_wakeup_fd(-1) != self.w:
                signal.set_wakeup_fd(self.previous_wakeup)
        except (ValueError, OSError):
            pass
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass(frozen=True)
class Held:
    """A process the controller keeps in BACKOFF: until a time (crash loop) or the gate opens."""

    kind: str  # "crash" | "gate"
    reason: str
    until: float = FOREVER  # wall clock, for display and status
    until_mono: float = FOREVER  # what is enforced: a wall-clock jump must not shorten or stretch a hold


class AppControl:
    """The controller of one app: its processes' crash-loop machines, holds and gate."""

    def __init__(self, config: ControlConfig, supervisord: Any, emit: Callable[[Dict[str, Any]], None],
                 poke: Callable[[], None], log: Log, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.config, self.supervisord = config, supervisord
        self.emit, self.poke, self.log, self.clock, self.rand = emit, poke, log, clock, rand
        self.loops: Dict[str, ProcessLoop] = {}
        self.holds: Dict[str, Held] = {}
        self.timed_out: Dict[float, bool] = {}  # migration laststart -> stopped by us for its timeout
        self.log_starts: Dict[str, int] = {}  # full name -> its log's size when its current run was spawned
        self.restarts: Dict[str, Dict[str, int]] = {}  # full name -> cause -> count, this supervisord run
        self.announced: Dict[str, Tuple[int, str]] = {}  # full name -> (pid, cause) of an exit on purpose
        self.releases: Dict[str, str] = {}  # release mode: namespec -> the release it was spawned from
        self.listening: Dict[str, int] = {}  # full name -> the pid seen listening on the shared socket
        self.listener_spool = ""  # run/listener-spool.jsonl, set by the factory from its run_dir
        self.listener_starter = ondemand.ListenerStarter(log)
        self.gate: Gate = self._gate()
        self.gate_watch = GateWatch()
        self.gate_watch.state = self.gate.state
        self.started = self.clock()

    def reconfigure(self, config: ControlConfig) -> None:
        """New settings from the conf (after `reread`): the running machines take them too, so a
        changed [crash_loop] applies to the next failure, not to the next supervisord run."""
        self.config = config
        for ns, loop in self.loops.items():
            loop.policy = config.policy_for(ns.split(":", 1)[0])
            loop.reminder_interval = config.reminder_interval

    # -- which processes are ours --

    def owns_group(self, group: str) -> bool:
        c = self.config
        return group == c.web or group in c.groups or (bool(c.migrate) and group == c.migrate)

    def controlled(self, process: Any) -> bool:
        group = process.group.config.name if getattr(process, "group", None) is not None else ""
        return group == self.config.web or group in self.config.groups

    def loop(self, process: Any) -> ProcessLoop:
        ns = full_name(process)
        found = self.loops.get(ns)
        if found is None:
            group = ns.split(":", 1)[0]
            found = self.loops[ns] = ProcessLoop(process.config.name, ns, self.config.policy_for(group),
                                                 self.config.reminder_interval, self.rand)
        return found

    # -- hooks called from the wrapped process methods --

    def refusal(self, process: Any) -> Optional[str]:
        """Why ``process`` must not be spawned now, or None."""
        if process.group.config.name != self.config.web or not self.config.migrate:
            return None
        gate = self._gate()  # now, not as of the last pass: the migration may have just exited
        return None if gate.open else gate.detail

    def current_release(self) -> str:
        """Release mode: the release ``current`` points at now ('' otherwise)."""
        return os.path.basename(os.path.realpath(self.config.current)) if self.config.current else ""

    def spawned(self, process: Any, log_start: int = 0) -> None:
        self._unhold(process)
        self.log_starts[full_name(process)] = log_start
        if self.config.current and runs_in(getattr(process.config, "directory", None), self.config.current):
            # supervisord chdir'd the child through `current` just now: this is the release it
            # runs. Programs started elsewhere (the exporter, the watchdog) run no release.
            self.releases[full_name(process)] = self.current_release()
        if self.controlled(process):
            self.loop(process).started(self.clock())

    def spawn_failed(self, process: Any) -> None:
        """spawn() itself failed (no such command, fork failure): a start failure."""
        self._count(process, "start_failed")
        self._decide(process, "start_failure", None, detail=str(process.spawnerr or "spawn error"))

    def observe(self, process: Any) -> None:
        """Before each transition of a web worker: has its current pid been seen listening?

        The ready file is the app user's to write; what root sees in /proc is not: the pid
        supervisord spawned has the fcgi socket supervisord bound in its event loop's epoll
        set. A worker that writes its own pid into its ready file and SIGKILLs itself before
        it listens is then a start failure (backoff), not a kill after serving."""
        pid = process.pid
        if not pid or self.listening.get(full_name(process)) == pid \
                or process.group.config.name != self.config.web:
            return
        inode = _socket_inode(process)
        if inode is not None and watches_socket(pid, inode):
            self.listening[full_name(process)] = pid

    def listened(self, process: Any, pid: int) -> bool:
        """Whether ``pid`` (being reaped) was seen listening; forgets it either way."""
        return self.listening.pop(full_name(process), None) == pid

    def finished(self, process: Any, was: str, stopping: bool, sig: Optional[int], ready: bool,
                 pid: int = 0) -> None:
        if not self.controlled(process):
            if self.config.migrate and process.config.name == self.config.migrate:
                self.on_pass()
            return
        expected = process.exitstatus in getattr(process.config, "exitcodes", (0,))
        served = ready if process.group.config.name == self.config.web else was in ("RUNNING", "STOPPING")
        cause = classify(stopping=stopping, served=served, expected=expected, signal=sig)
        announced = self.announced.pop(full_name(process), None)
        if announced is not None and announced[0] == pid:
            self._count(process, announced[1])
        elif cause in _CLASSIFIED:
            self._count(process, _CLASSIFIED[cause])
        self._decide(process, cause, sig)

    def expect_restart(self, process: Any, cause: str) -> bool:
        """Whoever ends ``process``'s current run on purpose says why, just before (the watchdog:
        memory, hung; the rolling restart: rolled), so its exit is counted under that cause
        instead of how it ended (a hung worker's SIGKILL is not an operator's kill)."""
        if cause not in ANNOUNCED_CAUSES or not self.controlled(process) or not process.pid:
            return False
        self.announced[full_name(process)] = (int(process.pid), cause)
        return True

    def _count(self, process: Any, cause: str) -> None:
        counts = self.restarts.setdefault(full_name(process), {})
        counts[cause] = counts.get(cause, 0) + 1

    def _decide(self, process: Any, cause: Any, sig: Optional[int], detail: str = "") -> None:
        now = self.clock()
        if not detail:
            detail = (f"killed by signal {sig}" if sig else f"exit status {process.exitstatus}"
                      if process.exitstatus is not None else "exited before it was RUNNING")
        decision, alerts = self.loop(process).exited(cause, now, detail, sig, process.exitstatus)
        self._alert(alerts)
        S = _states()
        if isinstance(decision, Restart):
            if process.get_state() == S.BACKOFF:
                # supervisord's own BACKOFF would wait 1, 2, 3 s and then give up (FATAL).
                process.delay, process.backoff = 0, 0
            self.poke()
        elif isinstance(decision, Hold):
            self.hold(process, decision.until, "crash", decision.reason)
        elif isinstance(decision, GiveUp):
            self._unhold(process)
            if process.get_state() == S.EXITED:
                process.change_state(S.BACKOFF)
            if process.get_state() == S.BACKOFF:
                process.give_up()
            process.spawnerr = f"{HELD_PREFIX}: {decision.reason}"

    def hold(self, process: Any, until: float, kind: str, reason: str) -> None:
        """Keep ``process`` in supervisord's BACKOFF until ``until`` (wall clock) or, for the
        gate, until it opens. The wrapped ``transition`` enforces it: supervisord's own
        ``delay`` cannot, because supervisord takes a delay more than ``backoff`` seconds ahead
        for a clock that went back and pulls it in (``_check_and_adjust_for_system_clock_rollback``),
        and a ``backoff`` above ``startretries`` makes it give up (FATAL)."""
        S = _states()
        if process.get_state() in (S.EXITED, S.STOPPED, S.FATAL):
            process.change_state(S.BACKOFF)
        if process.get_state() != S.BACKOFF:
            return
        process.backoff, process.delay = 0, 0
        when = "" if until == FOREVER else " until " + time.strftime("%H:%M:%S", time.localtime(until))
        process.spawnerr = f"{HELD_PREFIX}{when}: {reason}"
        mono = FOREVER if until == FOREVER else time.monotonic() + max(0.0, until - self.clock())
        self.holds[full_name(process)] = Held(kind, reason, until, mono)
        # sockets.fcgi_urls: a worker the gate holds is not about to serve, so the shared
        # socket is let go (clients refused, not queued behind a failed migration).
        process.supervisor_fastapi_gated = kind == "gate"

    def holding(self, process: Any) -> bool:
        """Called before each ``transition`` of ``process``: True to skip it (it stays held)."""
        held = self.holds.get(full_name(process))
        if held is None:
            return False
        if process.get_state() != _states().BACKOFF:
            self._unhold(process)  # stopped or given up by hand meanwhile
            return False
        if held.kind == "gate" or time.monotonic() < held.until_mono:
            return True
        self.release(process)  # due: supervisord spawns it in this very transition
        return False

    def _unhold(self, process: Any) -> Optional[Held]:
        process.supervisor_fastapi_gated = False
        return self.holds.pop(full_name(process), None)

    def release(self, process: Any) -> None:
        """Let supervisord spawn a held process on its next transition."""
        if self._unhold(process) is not None and process.get_state() == _states().BACKOFF:
            process.delay, process.backoff, process.spawnerr = 0, 0, None
            self.poke()

    # -- per pass --

    def on_pass(self) -> None:
        now = self.clock()
        self._check_migration(now)
        before, self.gate = self.gate, self._gate()
        if before.state != self.gate.state:
            self._gate_changed()
        S = _states()
        for process in self._processes():
            ns = full_name(process)
            state = process.get_state()
            if not self.controlled(process):
                continue
            loop = self.loop(process)
            if state == S.RUNNING:
                loop.running(now)
            if ns in self.holds and state != S.BACKOFF:
                self._unhold(process)  # stopped (or given up) by hand
            if state == S.STOPPED and loop.incident is not None:
                self._alert(loop.stopped_by_operator(now))
            self._alert(loop.tick(now))

    def web_running(self) -> List[str]:
        S = _states()
        group = getattr(self.supervisord, "process_groups", {}).get(self.config.web)
        return sorted(p.config.name for p in (group.processes.values() if group is not None else ())
                      if p.get_state() == S.RUNNING)

    def wake_listener(self) -> None:
        """Start the listener if an event waits for it (ondemand.py)."""
        self.listener_starter.wake(self.supervisord, self.config, Names(self.config.app).listener, self.web_running(),
                                   self.listener_spool)

    def listener_starting(self, event: Any) -> None:
        """Whoever starts the listener: the snapshot of running workers goes behind its buffer."""
        from supervisor import events

        if not isinstance(event, events.ProcessStateStartingEvent):
            return
        pool = getattr(event.process, "group", None)
        if pool is not None and pool.config.name == Names(self.config.app).listener and ondemand.listener_process(pool):
            ondemand.snapshot(pool, self.config, self.web_running())

    def _processes(self) -> List[Any]:
        out = []
        for group in list(getattr(self.supervisord, "process_groups", {}).values()):
            if self.owns_group(group.config.name):
                out.extend(group.processes.values())
        return out

    def _migration(self) -> Optional[Any]:
        if not self.config.migrate:
            return None
        group = getattr(self.supervisord, "process_groups", {}).get(self.config.migrate)
        return next(iter(group.processes.values()), None) if group is not None else None

    def _gate(self) -> Gate:
        if not self.config.migrate:
            return Gate("open", "no migration")
        p = self._migration()
        if p is None:
            return gate_of(Migration(""), self.config.migrate, self.config.migrate_timeout)
        return gate_of(Migration(_statename(p), float(p.laststart or 0), p.exitstatus,
                                 p.exitstatus in getattr(p.config, "exitcodes", (0,)), str(p.spawnerr or ""),
                                 self.timed_out.get(float(p.laststart or 0), False)),
                       self.config.migrate, self.config.migrate_timeout)

    def _check_migration(self, now: float) -> None:
        p, timeout = self._migration(), self.config.migrate_timeout
        if p is None or not timeout:
            return
        if _statename(p) in ("STARTING", "RUNNING") and p.laststart and now > p.laststart + timeout:
            if not self.timed_out.get(float(p.laststart)):
                self.timed_out[float(p.laststart)] = True
                self.log(f"supervisor-fastapi: {self.config.migrate} ran past its timeout ({timeout:g} s); stopping it")
                p.stop()

    def _gate_changed(self) -> None:
        web = [p for p in self._processes() if p.group.config.name == self.config.web]
        S = _states()
        running = sum(1 for p in web if p.get_state() in (S.STARTING, S.RUNNING))
        held = [p for p in web if getattr(self.holds.get(full_name(p)), "kind", "") == "gate"]
        for a in self.gate_watch.observe(self.gate, self.config.migrate, running, len(held)):
            self._emit(a.event, a.kind, self.config.migrate, a.summary, a.details,
                       log_of=f"{self.config.migrate}:{self.config.migrate}" if a.event == "open" else None)
        if self.gate.open:
            for p in held:
                self.release(p)
        else:
            for p in held:  # keep the description current ("waiting" -> "failed")
                self.hold(p, FOREVER, "gate", self.gate.detail)

    def close_all(self, why: str) -> None:
        now = self.clock()
        # run_ended: the listener keeps the incident open (listener/state.py Relay); the next
        # run's controller reopens it if the cause persists, and resolves it when it goes.
        for loop in self.loops.values():
            for a in loop.close(now, why):
                self._emit(a.event, a.kind, a.process, a.summary, dict(a.details, run_ended=True), a.log_of)
        for g in self.gate_watch.close(why):
            self._emit(g.event, g.kind, self.config.migrate, g.summary, dict(g.details, run_ended=True))

    def forget_group(self, group: str) -> None:
        """`update` removed ``group`` (a changed group comes back as new processes): its
        incidents are closed, not carried over to a release that may have fixed them."""
        now = self.clock()
        for ns in [ns for ns in self.loops if ns.split(":", 1)[0] == group]:
            loop = self.loops.pop(ns)
            self.holds.pop(ns, None)
            self._alert(loop.close(now, "removed from supervisord (update); incident closed"))

    # -- operator actions --

    def resume(self) -> List[str]:
        """`up`: the operator may have fixed the cause; clear crash-loop holds and start at once."""
        now, released = self.clock(), []
        for process in self._processes():
            if not self.controlled(process):
                continue
            self._alert(self.loop(process).resume(now))
            held = self.holds.get(full_name(process))
            if held is not None and held.kind == "crash":
                self.release(process)
                released.append(full_name(process))
        return released

    def snapshot(self) -> Dict[str, Any]:
        now, gate = self.clock(), self._gate()
        procs: Dict[str, Any] = {}
        for process in self._processes():
            ns = full_name(process)
            entry: Dict[str, Any] = {"state": _statename(process)}
            if self.controlled(process):
                entry.update(self.loop(process).snapshot(now))
                entry["restarts"] = dict(self.restarts.get(ns, {}))
            if ns in self.releases and entry["state"] in ("STARTING", "RUNNING", "STOPPING"):
                entry["release"] = self.releases[ns]
            held = self.holds.get(ns)
            if held is not None:
                entry["held"] = {"until": None if held.until == FOREVER else held.until, "kind": held.kind,
                                 "reason": held.reason}
            procs[ns] = entry
        return {"app": self.config.app, "since": self.started, "now": now, "settings": dict(self.config.to_options()),
                # Now, not as of the last pass: a caller waiting for it to open must not see a stale "open".
                "gate": {"state": gate.state, "detail": gate.detail} if self.config.migrate else None,
                "release": self.current_release() or None, "processes": procs}

    # -- alerts --

    def _alert(self, alerts: List[IncidentAlert]) -> None:
        for a in alerts:
            self._emit(a.event, a.kind, a.process, a.summary, dict(a.details), a.log_of)

    def _emit(self, event: str, kind: str, process: str, summary: str, details: Dict[str, Any],
              log_of: Optional[str] = None) -> None:
        release = self.releases.get(process) or self.releases.get(log_of or "")
        if release is None and self.config.current and ":" not in process:
            release = next((r for ns, r in self.releases.items() if ns.endswith(":" + process)), None)
        if release is not None:
            details = dict(details, release=release)
        elif self.config.current:
            details = dict(details, current_release=self.current_release())
        self.log(f"supervisor-fastapi: alert {event} {kind}: {summary}")
        self.emit({"app": self.config.app, "event": event, "kind": kind, "process": process, "summary": summary,
                   "details": details, "log_of": log_of, "log_from": self.log_starts.get(log_of or "", 0)})


class Registry:
    """The controllers of one supervisord run, and the hooks into its process objects."""

    def __init__(self) -> None:
        self.supervisord: Any = None
        self.apps: Dict[str, AppControl] = {}
        self.waker: Optional[Waker] = None
        self.log: Log = lambda message: None
        self._last_pass = 0.0
        self._listener_due = False  # an event came: a listener may need starting (ondemand.py)

    def start_run(self, supervisord: Any, log: Log) -> None:
        """Called by every factory call; a new Supervisor object (start, reload) starts afresh."""
        self.log = log
        if supervisord is self.supervisord:
            return
        # Without a SupervisorStoppingEvent (never seen, but) the old numbers may be reused
        # already: forget them rather than close someone else's descriptor.
        self._drop_waker(close=False)
        self.supervisord, self.apps = supervisord, {}
        self.waker = Waker(self.on_pass, self._safe_log)
        from supervisor import events

        socket_map = supervisord.options.get_socket_map()
        socket_map[self.waker.r] = self.waker
        events.subscribe(events.ProcessGroupAddedEvent, self._on_group_event)
        events.subscribe(events.ProcessGroupRemovedEvent, self._on_group_event)
        events.subscribe(events.SupervisorStoppingEvent, self._on_stopping)
        # Subscribed after the listener pools (supervisord adds its groups first): by the time
        # the next pass looks, the event is in their buffers.
        events.subscribe(events.ProcessStateEvent, self._on_listener_event)
        events.subscribe(events.RemoteCommunicationEvent, self._on_listener_event)

    def register(self, config: ControlConfig) -> AppControl:
        existing = self.apps.get(config.app)
        if existing is not None:
            existing.reconfigure(config)
            return existing
        assert self.waker is not None
        control = AppControl(config, self.supervisord, _emit_remote, self.waker.poke, self._safe_log)
        self.apps[config.app] = control
        self._wrap_all()
        return control

    def web_groups(self) -> Set[str]:
        """The web groups of the apps with a controller in this run: the sockets the plugin holds."""
        return {control.config.web for control in self.apps.values()}

    def serves_socket(self, socket_config: Any) -> bool:
        """Whether supervisord binds ``socket_config`` for one of those web groups (the group
        configs as last read, by start or `reread`; the group may not be added yet)."""
        options = getattr(self.supervisord, "options", None)
        section = getattr(getattr(options, "configroot", None), "supervisord", None)
        configs = list(getattr(options, "process_group_configs", None) or [])
        configs += list(getattr(section, "process_group_configs", None) or [])
        webs = self.web_groups()
        return any(config.name in webs and getattr(config, "socket_config", None) == socket_config
                   for config in configs)

    def _safe_log(self, message: str) -> None:
        try:
            self.log(message)
        except Exception:
            pass

    def _on_listener_event(self, event: Any) -> None:
        for control in list(self.apps.values()):
            try:
                control.listener_starting(event)
            except Exception as exc:  # never break supervisord's loop
                self._safe_log(f"supervisor-fastapi: no serving snapshot for {control.config.app}: {exc!r}")
        if not self._listener_due:
            self._listener_due = True
            if self.waker is not None:
                self.waker.poke()

    def on_pass(self) -> None:
        if self._listener_due:
            self._listener_due = False
            for control in list(self.apps.values()):
                try:
                    control.wake_listener()
                except Exception as exc:  # never break supervisord's loop; the next event tries again
                    self._safe_log(f"supervisor-fastapi: could not start the listener of {control.config.app}: "
                                   f"{exc!r}")
        now = time.monotonic()
        if now - self._last_pass < TICK_EVERY:
            return
        self._last_pass = now
        for control in list(self.apps.values()):
            control.on_pass()

    def _on_group_event(self, event: Any) -> None:
        # An `update` after `reread`: the plugin sections may have changed with the groups.
        from supervisor import events

        self.refresh_configs()
        if isinstance(event, events.ProcessGroupRemovedEvent):
            for control in self.apps.values():
                control.forget_group(str(event.group))
        self._wrap_all()

    def _on_stopping(self, event: Any) -> None:
        # supervisord is shutting down or reloading (its ordered stop gives up BACKOFF holds
        # itself). Incidents belong to this run: close them now, while the listener (stopped
        # last) can still send the alerts. A reload closes descriptors 5..minfds and reopens
        # others under the same numbers, so the pipe is closed now, while they are ours.
        for control in self.apps.values():
            control.close_all("supervisord is stopping (shutdown or reload); incident closed, the next run "
                              "starts every worker at once")
            try:
                control.wake_listener()  # the last pass this plugin sees: alerts still buffered go to the spool
            except Exception as exc:
                self._safe_log(f"supervisor-fastapi: could not spool {control.config.app}'s alerts: {exc!r}")
        self._drop_waker(close=True)
        self.log = lambda message: None

    def _drop_waker(self, close: bool) -> None:
        waker, self.waker = self.waker, None
        if waker is None:
            return
        if self.supervisord is not None:
            self.supervisord.options.get_socket_map().pop(waker.r, None)
        if close:
            waker.close()
        else:
            waker.retire()

    def refresh_configs(self) -> None:
        """Take the plugin sections' options as supervisord last read them (start, reread).

        ``options.rpcinterface_factories`` is set once, at start (``realize``); a `reread`
        (``reloadConfig``) re-parses into ``options.configroot.supervisord`` only."""
        options = getattr(self.supervisord, "options", None)
        section = getattr(getattr(options, "configroot", None), "supervisord", None)
        factories = getattr(section, "rpcinterface_factories", None) or getattr(options, "rpcinterface_factories", None)
        for _name, factory, extras in factories or []:
            if getattr(factory, "supervisor_fastapi_factory", False) and "app" in extras:
                try:
                    config = ControlConfig.from_options(extras)
                except ValueError as exc:
                    self._safe_log(f"supervisor-fastapi: keeping the loaded settings: {exc}")
                    continue
                if config.app in self.apps:
                    self.apps[config.app].reconfigure(config)

    def _wrap_all(self) -> None:
        for group in list(getattr(self.supervisord, "process_groups", {}).values()):
            for control in self.apps.values():
                if control.owns_group(group.config.name):
                    for process in group.processes.values():
                        wrap(process, control)


REGISTRY = Registry()


def _emit_remote(body: Dict[str, Any]) -> None:
    from supervisor import events

    events.notify(events.RemoteCommunicationEvent(REMOTE_TYPE, json.dumps(body, default=str)))


def _was_ready(process: Any, pid: int, control: AppControl) -> bool:
    """Whether the web worker that was ``pid`` had started serving (its ready file names it)."""
    if process.group.config.name != control.config.web:
        return False  # programs have no ready files: finished() uses RUNNING instead
    state = read_worker_state(os.path.join(control.config.state_dir, str(process.config.name)))
    return state is not None and state.get("pid") == pid


def _socket_inode(process: Any) -> Optional[int]:
    """The inode of the socket supervisord bound for ``process``'s fcgi group, None if closed."""
    sock = getattr(getattr(getattr(process, "group", None), "socket_manager", None), "socket", None)
    try:
        return os.fstat(sock.fileno()).st_ino if sock is not None else None
    except (OSError, ValueError, AttributeError):
        return None


def epoll_targets(fdinfo: str) -> List[int]:
    """The descriptors an epoll instance watches, from its /proc/<pid>/fdinfo text (pure)."""
    out = []
    for line in fdinfo.splitlines():
        if line.startswith("tfd:"):
            try:
                out.append(int(line.split()[1]))
            except (IndexError, ValueError):
                continue
    return out


def watches_socket(pid: int, inode: int, proc: str = "/proc", max_fds: int = 256) -> bool:
    """Whether process ``pid`` has the socket ``inode`` in one of its epoll sets: an asyncio or
    uvloop server accepting on it. Read by root from /proc (never written by the process);
    bounded: at most ``max_fds`` descriptors are looked at."""
    base = os.path.join(proc, str(int(pid)))
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(os.path.join(base, "fd"))[:max_fds]
    except OSError:
        return False

    def link(fd: Any) -> str:
        try:
            return os.readlink(os.path.join(base, "fd", str(fd)))
        except OSError:
            return ""

    for fd in fds:
        if link(fd) != "anon_inode:[eventpoll]":
            continue
        data = read_small_file(os.path.join(base, "fdinfo", fd), 64 * 1024)
        if data is None:
            continue
        if any(link(t) == target for t in epoll_targets(data.decode("ascii", "replace"))[:max_fds]):
            return True
    return False


def _log_size(process: Any) -> int:
    path = getattr(process.config, "stdout_logfile", None)
    try:
        return os.stat(path).st_size if isinstance(path, str) else 0
    except OSError:
        return 0


def wrap(process: Any, control: AppControl) -> None:
    """Route ``process``'s spawn and finish through ``control`` (idempotent)."""
    if getattr(process, "_supervisor_fastapi", None) is control:
        return
    cls = type(process)
    spawn_original = cls.spawn.__get__(process, cls)
    finish_original = cls.finish.__get__(process, cls)
    transition_original = cls.transition.__get__(process, cls)

    def transition() -> None:
        try:
            control.observe(process)
            if control.holding(process):
                return
        except Exception as exc:
            control.log(f"supervisor-fastapi: controller error in transition: {exc!r}")
        process.supervisor_fastapi_autostart = True  # a spawn now is supervisord's own, not a `start`
        try:
            transition_original()
        finally:
            process.supervisor_fastapi_autostart = False

    def spawn() -> Optional[int]:
        try:
            reason = control.refusal(process)
        except Exception as exc:
            control.log(f"supervisor-fastapi: gate check failed ({exc!r}); spawning")
            reason = None
        if reason is not None:
            if getattr(process, "supervisor_fastapi_autostart", False) and process.get_state() == _states().STOPPED \
                    and getattr(process, "administrative_stop", False):
                # Stopped (by `update`'s stopProcessGroup, or by hand) before it ever ran:
                # supervisord's autostart pass spawns a STOPPED process whose laststart is 0.
                # Held, it went back to BACKOFF and removeProcessGroup refused the group
                # (STILL_RUNNING); left STOPPED it can be removed, and it starts once the gate
                # opens. An explicit `start` (startProcess) is still held until then.
                return None
            control.hold(process, FOREVER, "gate", reason)
            return None
        log_start = _log_size(process)  # before the child can write: where this run's lines begin
        pid = spawn_original()
        try:
            if pid is None and not process.pid and process.get_state() == _states().BACKOFF:
                control.spawn_failed(process)
            elif process.pid:
                control.spawned(process, log_start)
        except Exception as exc:
            control.log(f"supervisor-fastapi: controller error after spawn: {exc!r}")
        return pid

    def finish(pid: int, sts: int) -> None:
        was = _statename(process)
        stopping = bool(getattr(process, "killing", False))
        sig = os.WTERMSIG(sts) if os.WIFSIGNALED(sts) else None
        ready = False
        try:
            # Served = its ready file names it and root saw it listen (observe), never the file alone.
            ready = _was_ready(process, pid, control) and control.listened(process, pid)
        except Exception:
            pass
        finish_original(pid, sts)
        try:
            control.finished(process, was, stopping, sig, ready, pid)
        except Exception as exc:
            control.log(f"supervisor-fastapi: controller error after exit: {exc!r}")

    process.spawn = spawn
    process.finish = finish
    process.transition = transition
    process._supervisor_fastapi = control
