"""A running supervisord as the rolling restart and the status view see it: the ``Edges``.

``Edges`` is a small interface (process infos, worker ready files, listener and controller
state, RSS, stop/start, alert), so the CLI (local files + XML-RPC, ``local_edges``), the
supervisorctl plugin (XML-RPC only, ``rpc_edges``) and the unit tests (fakes) drive one core:
``cli/roll.py`` and ``cli/statusview.py``. Standard library, supervisor's XML-RPC and
``contracts``/``layout`` only: the supervisorctl plugin loads this module (no click).
"""

import xmlrpc.client
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..contracts.files import WorkerState, read_json, read_rss
from ..contracts.rpc import ControlState, Hold, ProcessControl, ProcessInfo, announce_restart, control_state
from ..layout import Layout, Names


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


# --- the controller's state, per process ------------------------------------------------


def namespec(info: ProcessInfo) -> str:
    return info["name"] if info["name"] == info["group"] else f"{info['group']}:{info['name']}"


def full_name(info: ProcessInfo) -> str:
    """``group:name`` always (the controller's keys)."""
    return f"{info['group']}:{info['name']}"


def control_entry(control: Optional[ControlState], info: ProcessInfo) -> ProcessControl:
    entry = ((control or {}).get("processes") or {}).get(full_name(info))
    return entry if isinstance(entry, dict) else {}


def hold_of(control: Optional[ControlState], info: ProcessInfo) -> Optional[Hold]:
    held = control_entry(control, info).get("held")
    return held if isinstance(held, dict) else None


# --- edges for a deployment on this host, or over XML-RPC only ----------------------------


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
