"""``[rpcinterface:fastapi_<app>]``: supervisor-fastapi inside supervisord.

One section per app (so several apps' conf.d fragments on one supervisord each bring
their own); its options are the app's controller settings (contracts.settings.ControlConfig),
rendered by the generator and handed to the factory by supervisord as loaded. The
factory:

- routes supervisord's socket binds through the socket holds (sockets.py), so an fcgi
  socket stays open across `restart <group>:*`, `update` and `reload`;
- registers the app's controller (controller.py): the migration gate and crash-loop
  holds, enforced at the spawn;
- returns the XML-RPC methods under ``fastapi_<app>.``: the controller's state, `resume`
  for `up`, the workers' ready files, RSS and the held sockets, for the CLI and the
  supervisorctl plugin (also against a remote supervisord).

Only the standard library, supervisor and this package's stdlib-only modules are
imported: this runs in supervisord's Python.
"""

import os
from typing import Any, Dict, List

from ..contracts.files import read_json, read_rss, read_worker_states
from ..contracts.rpc import ControlState, printable, read_log_window
from ..contracts.settings import ControlConfig
from ..layout import LISTENER_SPOOL, LISTENER_STATE, Names
from .controller import REGISTRY, AppControl
from .sockets import DEFAULT_RELEASE_AFTER, HOLDS, fcgi_urls, install_bind_hook, share_tcp_ports, subscribe

# The one side effect at import, on purpose: supervisord imports this module while it reads
# its conf, and creates (binds) its fcgi sockets before it calls any factory. A port still
# held by the workers of a supervisord killed with -9 can be bound again only if the first
# bind set SO_REUSEPORT too (sockets.py, share_tcp_ports).
share_tcp_ports()

API_VERSION = "4"  # 3: one namespace per app; getState/resume (the controller); 4: tailLog


class FastAPINamespaceRPCInterface:
    """XML-RPC methods of one app. Byte counts are KiB: XML-RPC ints stop at 2**31."""

    def __init__(self, supervisord: Any, control: AppControl, run_dir: str) -> None:
        self.supervisord, self.control, self.run_dir = supervisord, control, run_dir

    def getAPIVersion(self) -> str:
        """Version of this plugin's API."""
        return API_VERSION

    def getState(self) -> ControlState:
        """The controller's view: gate, holds, incidents and recent spawns of every process of the app."""
        return xmlrpc_safe(self.control.snapshot())

    def resume(self) -> List[str]:
        """`up`: take the settings of the last reread (a changed [crash_loop] changes no group, so no
        `update` event brings them), clear crash-loop holds and incidents (the operator fixed the
        cause); the processes released."""
        REGISTRY.refresh_configs()
        return self.control.resume()

    def expectRestart(self, name: str, cause: str) -> bool:
        """Announce that the current run of ``name`` (group:name) is about to end on purpose, for
        ``cause`` (memory, hung or rolled): its exit is counted under that cause in getState's
        restarts. False when the process is not this app's or not running."""
        group_name, _, process_name = str(name).partition(":")
        group = self.supervisord.process_groups.get(group_name)
        process = group.processes.get(process_name or group_name) if group is not None else None
        return bool(process is not None and self.control.expect_restart(process, str(cause)))

    def getSocketHolds(self) -> List[Dict[str, Any]]:
        """The sockets held open by the plugin: url, fd, unused_since (0 while in use)."""
        return HOLDS.describe()

    def getWorkerStates(self) -> Dict[str, Any]:
        """Worker ready/heartbeat files of the app's web processes: {pid, ready, beat} by name."""
        group = self.supervisord.process_groups.get(self.control.config.web)
        names = [str(p.config.name) for p in group.processes.values()] if group is not None else []
        # Only the names supervisord knows are opened: root reads no other entry of a folder the app user writes.
        return xmlrpc_safe(read_worker_states(self.control.config.state_dir, names))

    def tailLog(self, namespec: str, since: int, length: int) -> str:
        """The end of the stdout log of ``namespec`` (one of the app's processes) from byte ``since``
        on, at most ``length`` bytes, as printable text: supervisord's readProcessStdoutLog hands
        back raw bytes, which XML-RPC cannot carry (control characters) or supervisord cannot
        decode (not UTF-8)."""
        from supervisor.xmlrpc import Faults, RPCError

        group_name, _, name = str(namespec).partition(":")
        group = self.supervisord.process_groups.get(group_name)
        process = group.processes.get(name or group_name) if group is not None else None
        if process is None or not (self.control.owns_group(group_name)
                                   or group_name == Names(self.control.config.app).listener):
            raise RPCError(Faults.BAD_NAME, f"{namespec} is not a process of {self.control.config.app}")
        path = getattr(process.config, "stdout_logfile", None)
        if not isinstance(path, str):
            raise RPCError(Faults.NO_FILE, f"{namespec} has no stdout log")
        return read_log_window(path, max(0, int(since)), max(0, min(int(length), 1 << 20)))

    def getListenerState(self) -> Dict[str, Any]:
        """The event listener's state file (last alert and its results), {} when there is none yet."""
        return xmlrpc_safe(read_json(os.path.join(self.run_dir, LISTENER_STATE)) or {}) if self.run_dir else {}

    def getRSS(self) -> Dict[str, int]:
        """RSS in KiB of every running process of the app, by pid (as a string)."""
        out: Dict[str, int] = {}
        listener = Names(self.control.config.app).listener
        for group in list(self.supervisord.process_groups.values()):
            if not (self.control.owns_group(group.config.name) or group.config.name == listener):
                continue
            for process in list(group.processes.values()):
                if process.pid:
                    rss = read_rss(process.pid)
                    if rss is not None:
                        out[str(process.pid)] = rss // 1024
        return out


def xmlrpc_safe(value: Any) -> Any:
    """JSON data XML-RPC can carry: no None (keys with null are dropped), no int beyond 32 bits, no inf,
    no control character (text may come from the app: an alert channel's output, say)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): xmlrpc_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [xmlrpc_safe(v) for v in value if v is not None]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**31:
        return float(value)
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return 0.0
    return value


def make_rpcinterface(supervisord: Any, **options: str) -> FastAPINamespaceRPCInterface:
    """The ``supervisor.rpcinterface_factory`` of ``[rpcinterface:fastapi_<app>]``.

    Options: contracts.settings.ControlConfig's (``app``, ``web``, ``state_dir``, ``migrate``, ...),
    ``run_dir`` (the listener's state file) and ``release_after`` (seconds an unused socket
    stays held, default 10). A bad option stops supervisord with the reason.
    """
    logger = getattr(getattr(supervisord, "options", None), "logger", None)
    log = logger.info if logger is not None else (lambda message: None)
    HOLDS.release_after = float(options.get("release_after", DEFAULT_RELEASE_AFTER))
    HOLDS.log_to = log
    HOLDS.floor = int(getattr(getattr(supervisord, "options", None), "minfds", 0) or 0)
    try:
        config = ControlConfig.from_options(options)
    except ValueError as exc:
        raise ValueError(f"[rpcinterface:...] of supervisor-fastapi: {exc}; re-render the conf "
                         "(supervisor-fastapi render)") from None
    REGISTRY.start_run(supervisord, log)
    control = REGISTRY.register(config)
    run_dir = options.get("run_dir", "")
    control.listener_spool = os.path.join(run_dir, LISTENER_SPOOL) if run_dir else ""
    HOLDS.wanted = REGISTRY.serves_socket
    install_bind_hook()
    subscribe(supervisord, REGISTRY.web_groups)
    HOLDS.reconcile(fcgi_urls(supervisord, REGISTRY.web_groups()))
    return FastAPINamespaceRPCInterface(supervisord, control, options.get("run_dir", ""))


make_rpcinterface.supervisor_fastapi_factory = True  # type: ignore[attr-defined]
