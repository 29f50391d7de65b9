"""The status view: every process of one app, its state, pid, uptime, RSS, restarts,
incident and the last alert, as rows (``collect_status``, pure) and as the human table
(``format_status``).

Run by `supervisor-fastapi status` and by ``fastapi_status`` in supervisorctl
(plugins/ctl.py), over ``Edges`` (cli/edges.py): no click here. Scoped to exactly the app's
own groups (``app_groups``), never a prefix match.
"""

import time
import xmlrpc.client
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..contracts.rpc import FAILED_STATES, ControlState, Gate, Hold, Incident, ProcessControl, ProcessInfo, is_ready
from ..contracts.sizes import format_size
from ..layout import Names
from .edges import Edges, control_entry, hold_of, namespec

HOUR = 3600.0


def open_incident(control: Optional[ControlState], info: ProcessInfo) -> Optional[Incident]:
    """The crash-loop incident of a process, else its kill incident, else None."""
    entry = control_entry(control, info)
    for incident in (entry.get("incident"), entry.get("kill_incident")):
        if isinstance(incident, dict):
            return incident
    return None


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
    idle: bool = False  # the event listener, exited until an event needs it (not a problem)


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


def idle_listener(info: ProcessInfo, names: Names) -> bool:
    """The event listener after its idle exit (status 0): the plugin starts it for the next
    event that needs it (plugins/ondemand.py), so this is its state at rest, not a failure."""
    return info["group"] == names.listener and info["statename"] == "EXITED" and info.get("exitstatus") == 0


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
        problem="" if idle_listener(info, names) else _problem(info, incident, held, info["group"] == names.migrate),
        idle=idle_listener(info, names),
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
    if r.idle:
        notes.append("idle: started for the next event that needs it")
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
