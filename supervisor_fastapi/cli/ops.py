"""Operations on a running deployment: the rolling restart and the status view.

Both are written against a small ``Edges`` interface (process infos, worker state files,
listener state, RSS, stop/start, alert), so the CLI (local files + XML-RPC), the
supervisorctl plugin (XML-RPC only) and the unit tests (fakes) share one core.

- ``rolling_restart`` replaces the web workers one at a time. A worker is replaced when
  supervisord has the new process RUNNING *and* its state file names the new pid (the
  worker writes it after uvicorn has started listening); only then does the next old
  worker stop, so numprocs-1 workers serve throughout. While the migration gate is shut
  it refuses before stopping anything (a new worker could not start); a worker the
  crash-loop guard holds is skipped (the controller owns its retries). If a new worker
  does not come up, the roll stops there, the remaining old workers keep serving, and an
  alert (``rolling_restart_failed``) goes out through the listener.
- ``collect_status`` is a pure function from those inputs to rows and problems, scoped to
  exactly the app's own groups.
"""

import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..contracts.files import WorkerState, read_json, read_rss
from ..contracts.rpc import (
    FAILED_STATES,
    ControlState,
    Gate,
    Hold,
    Incident,
    ProcessControl,
    ProcessInfo,
    announce_restart,
    control_state,
    is_ready,
)
from ..contracts.sizes import format_size
from ..layout import Layout, Names

Progress = Callable[[str], None]

HOUR = 3600.0


def start_process(proxy: Any, namespec: str) -> None:
    """Ask supervisord to start ``namespec`` without waiting; already started is fine."""
    try:
        proxy.supervisor.startProcess(namespec, False)
    except xmlrpc.client.Fault as exc:
        if "ALREADY_STARTED" not in exc.faultString:
            raise


class Edges:
    """What the core needs from the outside world; subclasses talk to supervisord."""

    def infos(self) -> List[ProcessInfo]:
        raise NotImplementedError

    def worker_states(self, names: Sequence[str]) -> Dict[str, WorkerState]:
        """The ready files of the processes ``names`` (supervisord's names): never a listing."""
        raise NotImplementedError

    def listener_state(self) -> Optional[Dict[str, Any]]:
        raise NotImplementedError

    def control_state(self) -> Optional[ControlState]:
        """The controller's state (gate, holds, incidents, spawns), None without the plugin."""
        raise NotImplementedError

    def rss(self, pids: Sequence[int]) -> Dict[int, int]:
        """Bytes by pid, for those it can read."""
        raise NotImplementedError

    def stop(self, namespec: str) -> None:
        raise NotImplementedError

    def start(self, namespec: str) -> None:
        raise NotImplementedError

    def alert(self, kind: str, process: str, summary: str, details: Dict[str, Any]) -> None:
        raise NotImplementedError


class SupervisorEdges(Edges):
    """Edges over an XML-RPC proxy; state files come from ``read_states``/``read_listener``."""

    def __init__(self, proxy: Any, app: str, read_states: Callable[[Sequence[str]], Dict[str, WorkerState]],
                 read_listener: Callable[[], Optional[Dict[str, Any]]],
                 read_rss: Callable[[Sequence[int]], Dict[int, int]]) -> None:
        self.proxy, self.app = proxy, app
        self._states, self._listener, self._rss = read_states, read_listener, read_rss

    def infos(self) -> List[ProcessInfo]:
        return list(self.proxy.supervisor.getAllProcessInfo())

    def worker_states(self, names: Sequence[str]) -> Dict[str, WorkerState]:
        return self._states(names)

    def listener_state(self) -> Optional[Dict[str, Any]]:
        return self._listener()

    def control_state(self) -> Optional[ControlState]:
        return control_state(self.proxy, self.app)

    def rss(self, pids: Sequence[int]) -> Dict[int, int]:
        return self._rss(pids)

    def stop(self, namespec: str) -> None:
        # Only the rolling restart stops through the edges: its exits count as "rolled" ([metrics]).
        announce_restart(self.proxy, self.app, namespec if ":" in namespec else f"{namespec}:{namespec}", "rolled")
        try:
            self.proxy.supervisor.stopProcess(namespec, True)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString:
                raise

    def start(self, namespec: str) -> None:
        start_process(self.proxy, namespec)

    def alert(self, kind: str, process: str, summary: str, details: Dict[str, Any]) -> None:
        send_alert(self.proxy, self.app, kind, process, summary, details)


def send_alert(proxy: Any, app: str, kind: str, process: str, summary: str,
               details: Optional[Dict[str, Any]] = None) -> None:
    """Alert through supervisord to the app's event listener; never raises (an alert must not break an operation)."""
    from ..contracts.rpc import notify

    try:
        notify(proxy, app, kind, process, summary, details)
    except Exception:
        pass


# --- shared helpers ---------------------------------------------------------------------


def namespec(info: ProcessInfo) -> str:
    return info["name"] if info["name"] == info["group"] else f"{info['group']}:{info['name']}"


def full_name(info: ProcessInfo) -> str:
    """``group:name`` always (the controller's keys)."""
    return f"{info['group']}:{info['name']}"


def control_entry(control: Optional[ControlState], info: ProcessInfo) -> ProcessControl:
    entry = ((control or {}).get("processes") or {}).get(full_name(info))
    return entry if isinstance(entry, dict) else {}


def open_incident(control: Optional[ControlState], info: ProcessInfo) -> Optional[Incident]:
    """The crash-loop incident of a process, else its kill incident, else None."""
    entry = control_entry(control, info)
    for incident in (entry.get("incident"), entry.get("kill_incident")):
        if isinstance(incident, dict):
            return incident
    return None


def hold_of(control: Optional[ControlState], info: ProcessInfo) -> Optional[Hold]:
    held = control_entry(control, info).get("held")
    return held if isinstance(held, dict) else None


def gate_refusal(control: Optional[ControlState]) -> Optional[str]:
    """Why no worker may start now (the migration gate is shut), or None."""
    gate = (control or {}).get("gate")
    if isinstance(gate, dict) and gate.get("state") not in (None, "open"):
        return f"the migration gate is shut: {gate.get('detail') or gate.get('state')}"
    return None


# --- rolling restart --------------------------------------------------------------------


@dataclass
class RollResult:
    restarted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Optional[str] = None
    reason: str = ""
    untouched: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


def _info(edges: Edges, name: str) -> Optional[ProcessInfo]:
    return next((i for i in edges.infos() if namespec(i) == name), None)


def wait_replaced(edges: Edges, spec_name: str, old_pid: int, timeout: float, clock: Callable[[], float],
                  sleep: Callable[[float], None]) -> Optional[str]:
    """None once ``spec_name`` runs a new, ready process; else why it did not come up."""
    deadline = clock() + timeout
    while True:
        info = _info(edges, spec_name)
        if info is None:
            return "it is no longer configured in supervisord"
        state = info["statename"]
        if state == "FATAL":
            return "FATAL: " + (info.get("spawnerr") or "it exited too quickly on every start attempt")
        if state == "EXITED" and info["pid"] == 0:
            return f"it exited with status {info.get('exitstatus')}"
        if state == "BACKOFF" and hold_of(edges.control_state(), info) is not None:
            return f"it crashed and the crash-loop guard holds it: {info.get('spawnerr')}"
        if state == "STOPPED":
            return "it was stopped while starting"
        if info["pid"] and info["pid"] != old_pid and is_ready(info, edges.worker_states([info["name"]])):
            return None
        if clock() > deadline:
            detail = f" (supervisord says {state})" if state != "RUNNING" else " (RUNNING but not listening yet)"
            return f"not ready after {timeout:g} s{detail}"
        sleep(0.1)


def wait_others_settled(edges: Edges, group: str, name: str, timeout: float, clock: Callable[[], float],
                        sleep: Callable[[float], None]) -> Optional[str]:
    """Wait until no other worker of the group is starting, stopping or not yet listening
    (a watchdog recycle, say), so stopping ``name`` leaves the rest serving; None when settled."""
    deadline = clock() + timeout
    while True:
        infos = edges.infos()
        states = edges.worker_states([i["name"] for i in infos if i["group"] == group])
        busy = [namespec(i) for i in infos if i["group"] == group and namespec(i) != name
                and (i["statename"] in ("STARTING", "STOPPING") or (i["statename"] == "RUNNING"
                                                                    and not is_ready(i, states)))]
        if not busy:
            return None
        if clock() > deadline:
            return ", ".join(busy)
        sleep(0.1)


def rolling_restart(edges: Edges, group: str, progress: Progress, timeout: float = 60.0,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> RollResult:
    """Replace the workers of ``group`` one at a time; see the module docstring."""
    result = RollResult()
    workers = sorted((i for i in edges.infos() if i["group"] == group), key=lambda i: i["name"])
    if not workers:
        result.failed, result.reason = group, f"supervisord has no program group {group!r}"
        return result
    control = edges.control_state()
    refusal = gate_refusal(control)
    if refusal is not None:
        # Refuse before stopping anything: a stopped worker could not be started again.
        result.failed, result.reason = group, f"{refusal}; no worker was stopped"
        result.untouched = [namespec(i) for i in workers]
        return result
    names = [namespec(i) for i in workers]
    for index, name in enumerate(names):
        info = _info(edges, name)
        if info is None:
            result.skipped[name] = "no longer configured"
            continue
        held = hold_of(control, info)
        if held is not None and info["statename"] != "RUNNING":
            result.skipped[name] = f"held by the crash-loop guard ({held.get('reason')}); the controller retries it"
            progress(f"{name}: skipped, {result.skipped[name]}")
            continue
        old_pid = info["pid"] if info["statename"] in ("RUNNING", "STARTING") else 0
        busy = wait_others_settled(edges, group, name, timeout, clock, sleep) if old_pid else None
        t0 = clock()
        why: Optional[str] = None
        if busy:
            why = (f"not stopped: {busy} still starting/stopping after {timeout:g} s "
                   "(another restart or a memory recycle in progress?)")
        else:
            progress(f"{name}: stopping pid {old_pid} (draining)" if old_pid
                     else f"{name}: {info['statename']}, starting")
            try:
                if old_pid:
                    try:
                        edges.stop(name)
                    except KeyboardInterrupt:
                        # Interrupted mid-stop (Ctrl-C): never leave the worker stopped.
                        edges.start(name)
                        raise
                edges.start(name)
                why = wait_replaced(edges, name, old_pid, timeout, clock, sleep)
            except (xmlrpc.client.Fault, OSError) as exc:
                why = f"supervisord refused: {getattr(exc, 'faultString', exc)}"
        if why is not None:
            result.failed, result.reason = name, why
            result.untouched = names[index + 1:]
            summary = (f"rolling restart of {group} stopped at {name}: {why}; "
                       f"{len(result.untouched)} old worker(s) left serving")
            progress(summary)
            edges.alert("rolling_restart_failed", name, summary,
                        {"group": group, "restarted": result.restarted, "untouched": result.untouched,
                         "reason": why})
            return result
        new = _info(edges, name) or {}
        progress(f"{name}: pid {new.get('pid')} ready in {clock() - t0:.1f} s")
        result.restarted.append(name)
    if not result.restarted:
        # "restarted 0" with exit 0 read as success: nothing serves the new code.
        result.failed = group
        why = "; ".join(sorted(set(result.skipped.values())))
        result.reason = (f"no worker was restarted: every one was skipped ({why}); fix the cause, then "
                         "`supervisor-fastapi up` clears crash-loop holds and starts them")
    return result


# --- status -----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    group: str
    state: str
    pid: int
    uptime: Optional[float]
    rss: Optional[int]
    restarts_1h: Optional[int]  # None: no controller counts them
    ready: Optional[bool] = None
    beat_age: Optional[float] = None
    incident: Optional[Dict[str, Any]] = None
    held: Optional[Hold] = None
    problem: str = ""
    release: Optional[str] = None  # release mode: the release this worker was started from


@dataclass
class Status:
    rows: List[Row]
    gate: Optional[Gate]
    last_alert: Optional[Dict[str, Any]]
    listener_data: bool
    holds: Optional[List[Dict[str, Any]]] = None
    controller: bool = False
    app: str = ""
    release: Optional[str] = None  # release mode: the release `current` points at

    @property
    def down(self) -> List[str]:
        return [r.name for r in self.rows if r.problem]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.down  # none of its processes there: not deployed, not ok

    def to_json(self) -> Dict[str, Any]:
        return {"ok": self.ok, "down": self.down, "processes": [asdict(r) for r in self.rows],
                "gate": self.gate, "last_alert": self.last_alert, "listener_data": self.listener_data,
                "controller": self.controller, "socket_holds": self.holds, "release": self.release}


def _problem(info: ProcessInfo, incident: Optional[Incident], held: Optional[Hold],
             migrate: bool) -> str:
    state = info["statename"]
    if migrate:
        if state == "EXITED" and info.get("exitstatus") != 0:
            return f"migration exited with status {info.get('exitstatus')}"
        if state in ("STOPPED", "STOPPING") and info.get("start"):
            return "migration was stopped before it finished (timeout, or by hand)"
        return f"migration is {state}" if state in FAILED_STATES else ""
    if incident is not None and incident.get("kind") == "crash_loop":
        return f"open incident: {incident.get('summary') or incident.get('kind')}"
    if held is not None:
        return str(info.get("spawnerr") or held.get("reason") or "held")
    if state in FAILED_STATES or state in ("STOPPED", "EXITED"):
        return state + (f": {info['spawnerr']}" if info.get("spawnerr") else "")
    return ""


def app_groups(app: str, programs: Sequence[str] = (), control: Optional[ControlState] = None) -> List[str]:
    """Exactly the supervisor groups of ``app``: never another app's, whatever its name."""
    names = Names(app)
    groups = {names.web, names.migrate, names.listener, names.watchdog, names.metrics} | {names.program(p)
                                                                                        for p in programs}
    for ns in ((control or {}).get("processes") or {}):
        groups.add(str(ns).split(":", 1)[0])
    return sorted(groups)


def _restarts(entry: ProcessControl, now: float) -> int:
    """Restarts in the last hour: the controller keeps the last hour of spawns; its first spawn is the start."""
    recent = [t for t in entry.get("spawns") or [] if isinstance(t, (int, float)) and t > now - HOUR]
    first = entry.get("first_spawn")
    return max(0, len(recent) - (1 if isinstance(first, (int, float)) and first > now - HOUR else 0))


def _row(info: ProcessInfo, names: Names, states: Mapping[str, Mapping[str, Any]], rss: Dict[int, int], now: float,
         control: Optional[ControlState]) -> Row:
    web = info["group"] == names.web
    running = info["statename"] in ("RUNNING", "STARTING", "STOPPING") and info["pid"]
    incident = open_incident(control, info)
    held = hold_of(control, info)
    ready = is_ready(info, states) if web else None
    beat = states.get(info["name"], {}).get("beat") if web and ready else None
    return Row(
        name=namespec(info), group=info["group"], state=info["statename"], pid=info["pid"] if running else 0,
        uptime=max(0.0, info["now"] - info["start"]) if running and info.get("start") else None,
        rss=rss.get(info["pid"]) if running else None,
        restarts_1h=None if control is None else _restarts(control_entry(control, info), now),
        ready=ready, beat_age=round(max(0.0, now - beat), 1) if beat else None,
        incident={k: incident.get(k) for k in ("kind", "summary", "opened", "next_retry", "delay", "gave_up")}
        if incident else None, held=held,
        problem=_problem(info, incident, held, info["group"] == names.migrate),
        release=control_entry(control, info).get("release") if running and control is not None else None)


def collect_status(infos: Sequence[ProcessInfo], states: Mapping[str, Mapping[str, Any]],
                   listener: Optional[Dict[str, Any]], rss: Dict[int, int], now: float, app: str,
                   holds: Optional[List[Dict[str, Any]]] = None, control: Optional[ControlState] = None,
                   groups: Optional[Sequence[str]] = None) -> Status:
    """Rows for every process of deployment ``app`` (exactly its ``groups``); pure."""
    names = Names(app)
    wanted = set(groups if groups is not None else app_groups(app, control=control))
    rows = [_row(info, names, states, rss, now, control) for info in infos if info["group"] in wanted]
    gate = (control or {}).get("gate")
    return Status(rows=rows, gate=gate if isinstance(gate, dict) else None,
                  last_alert=(listener or {}).get("last_alert"), listener_data=listener is not None, holds=holds,
                  controller=control is not None, app=app, release=(control or {}).get("release"))


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{s:02d}"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return format_size(n)


def _when(epoch: Any, now: float) -> str:
    if not isinstance(epoch, (int, float)):
        return "-"
    delta = epoch - now
    stamp = time.strftime("%H:%M:%S", time.localtime(epoch))
    return f"{stamp} (in {delta:.0f} s)" if delta >= 0 else f"{stamp} ({-delta:.0f} s ago)"


def _notes(r: Row, now: float) -> str:
    notes = [f"release {r.release}"] if r.release else []
    if r.ready is False and r.state == "RUNNING":
        notes.append("not listening yet")
    if r.beat_age is not None and r.beat_age > 5:
        notes.append(f"last beat {r.beat_age:.0f} s ago")
    if r.incident:
        retry = r.incident.get("next_retry")
        # Never an open incident without what happens next (a kill incident's summary says it).
        after = ("" if r.incident.get("kind") == "killed" else f"; next retry {_when(retry, now)}" if retry
                 else "; given up: start it by hand once fixed" if r.incident.get("gave_up")
                 else "; retry under way" if r.state in ("STARTING", "RUNNING") else "; waiting for supervisord")
        notes.append(f"{r.incident.get('kind')}: {r.incident.get('summary')}{after}")
    if r.held and r.held.get("kind") == "gate":
        notes.append(f"held: {r.held.get('reason')}")
    elif r.problem and not r.incident:
        notes.append(r.problem)
    return "; ".join(notes)


def _footer(status: Status, now: float) -> List[str]:
    out = []
    if not status.controller:
        section = f"[rpcinterface:{Names(status.app).rpc_namespace}]" if status.app else "its plugin section"
        out.append(f"controller: none ({section} is not loaded in supervisord): no crash-loop holds, "
                   "no gate beyond autostart, restart counts unknown")
    if status.release:
        out.append(f"current release: {status.release}")
    if status.controller and status.gate:
        detail = status.gate.get("detail")
        out.append(f"migration gate: {status.gate.get('state')}" + (f" ({detail})" if detail else ""))
    if not status.listener_data:
        out.append("listener: no state file yet")
    alert = status.last_alert
    out.append(f"last alert: {_when(alert.get('at'), now)} {alert.get('kind')}: {alert.get('summary')}"
               if alert else "last alert: none")
    if status.holds is not None:
        out.append("socket held open by the rpcinterface plugin: "
                   + (", ".join(h["url"] for h in status.holds) or "none yet"))
    if not status.rows:
        out.append("DOWN: none of this app's programs is in that supervisord (`supervisor-fastapi up` adds them)")
    else:
        out.append("ok" if status.ok else f"DOWN: {', '.join(status.down)}")
    return out


def format_status(status: Status, now: float) -> str:
    """The human table printed by ``supervisor-fastapi status``."""
    header = ("PROCESS", "STATE", "PID", "UPTIME", "RSS", "RESTARTS/1h", "NOTE")
    lines = [header] + [(r.name, r.state, str(r.pid or "-"), _duration(r.uptime), _size(r.rss),
                         "-" if r.restarts_1h is None else str(r.restarts_1h),
                         _notes(r, now)) for r in status.rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    out = [("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + ("  " + row[-1] if row[-1] else ""))
           .rstrip() for row in lines]
    return "\n".join(out + _footer(status, now))


# --- edges for a deployment on this host ------------------------------------------------


def local_rss(pids: Sequence[int]) -> Dict[int, int]:
    out = {}
    for pid in pids:
        value = read_rss(pid)
        if value is not None:
            out[pid] = value
    return out


def local_edges(layout: Layout, app: str, serverurl: Optional[str] = None,
                timeout: Optional[float] = None) -> SupervisorEdges:
    """Edges for the deployment whose files are in ``layout``: this host, its control socket
    or ``serverurl`` (an OS-packaged supervisord running a conf.d fragment)."""
    from . import control

    wait = control.RPC_TIMEOUT if timeout is None else timeout
    proxy = control.proxy(serverurl, wait) if serverurl else control.rpc(layout, wait)
    return SupervisorEdges(proxy, app, lambda names: control.worker_states(layout, names),
                           lambda: read_json(layout.listener_state), local_rss)


def rpc_edges(proxy: Any, app: str) -> SupervisorEdges:
    """Edges over XML-RPC only, via the app's plugin methods (``fastapi_<app>.``, for supervisorctl)."""
    ns = getattr(proxy, Names(app).rpc_namespace)

    def rss(pids: Sequence[int]) -> Dict[int, int]:
        return {int(pid): int(kb) * 1024 for pid, kb in ns.getRSS().items()}

    # getWorkerStates opens only the names supervisord reports for the app's web group.
    return SupervisorEdges(proxy, app, lambda names: dict(ns.getWorkerStates()), lambda: ns.getListenerState() or None,
                           rss)


def status_of(edges: Edges, app: str, holds: Optional[List[Dict[str, Any]]] = None,
              now: Optional[float] = None, programs: Sequence[str] = ()) -> Status:
    """Gather everything ``collect_status`` needs through ``edges``."""
    infos = edges.infos()
    control = edges.control_state()
    pids = [i["pid"] for i in infos if i["pid"]]
    states = edges.worker_states([i["name"] for i in infos])
    return collect_status(infos, states, edges.listener_state(), edges.rss(pids),
                          time.time() if now is None else now, app, holds, control,
                          app_groups(app, programs, control))


def socket_holds(proxy: Any, app: str) -> Optional[List[Dict[str, Any]]]:
    """The plugin's held sockets, or None when supervisord runs without the plugin."""
    try:
        return list(getattr(proxy, Names(app).rpc_namespace).getSocketHolds())
    except (xmlrpc.client.Fault, OSError, xmlrpc.client.ProtocolError):
        return None
