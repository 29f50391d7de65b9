"""Talking to a running supervisord: the RPC proxy, start/stop of the daemon, readiness.

The decisions (is every worker ready? did something fail?) are pure functions over
``getAllProcessInfo`` records and worker state files, so they are unit-tested with data.
"""

import http.client
import os
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ..contracts.files import WorkerState, pid_alive, read_worker_states
from ..contracts.rpc import (
    FAILED_STATES,
    GATE_HELD_PREFIX,
    ControlState,
    ProcessInfo,
    run_log_tail,
    scrubbing_transport,
)
from ..errors import DeployError, UserError
from ..layout import Layout, Names
from ..spec import Spec

# Seconds a call may wait for supervisord's answer. supervisord answers at once unless it is
# stopped (SIGSTOP), swapping or wedged; without a limit every command would hang with it.
RPC_TIMEOUT = 30.0
PROBE_TIMEOUT = 10.0  # is_running: a quick question


class RpcTimeout(DeployError):
    """supervisord did not answer in time: the command stops there and says so (exit 1)."""


class RpcGarbled(DeployError, ConnectionError):
    """The answer was not HTTP. A command stops with one line (exit 1); a loop that waits for
    supervisord to come or go takes it, like any connection error, as "not answering"."""


def proxy(serverurl: str, timeout: float = RPC_TIMEOUT) -> Any:
    """The one way this package builds an XML-RPC proxy to a supervisord (``unix://`` or
    ``http://``); credentials, when the server wants them, from SUPERVISOR_USERNAME/PASSWORD.
    A call that gets no answer within ``timeout`` seconds raises RpcTimeout."""
    from xml.parsers.expat import ExpatError

    base = type(scrubbing_transport("", "", serverurl))

    class Transport(base):  # type: ignore[valid-type,misc]
        def request(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().request(*args, **kwargs)
            except ExpatError as exc:
                # Scrubbed of control bytes, an answer that still does not parse is not XML-RPC.
                self.close()
                raise RpcGarbled(f"supervisord at {serverurl} gave an answer that is not XML-RPC ({exc}); "
                                 "nothing more was done: try again") from None
            except socket.timeout:
                self.close()
                raise RpcTimeout(f"supervisord at {serverurl} did not answer within {timeout:g} s (stopped, "
                                 "or overloaded?); nothing more was done: see its log, or `kill -CONT` it") from None
            except http.client.HTTPException as exc:
                if isinstance(exc, OSError):
                    raise  # RemoteDisconnected: a connection error like any other
                # Bytes that are not HTTP. The connection is dropped, so a retry starts clean.
                self.close()
                raise RpcGarbled(f"supervisord at {serverurl} did not give an HTTP answer "
                                 f"({type(exc).__name__}: {str(exc)[:60]!r}); nothing more was done: "
                                 "is it reloading? try again") from None

    transport = Transport(os.environ.get("SUPERVISOR_USERNAME", ""), os.environ.get("SUPERVISOR_PASSWORD", ""),
                          serverurl)
    make = transport._get_connection  # supervisor 4.1 to 4.3: a closure per URL scheme

    def timed_connection() -> Any:
        conn = make()
        connect = conn.connect

        def timed_connect() -> None:
            connect()  # the unix-socket connection builds its socket here, without a timeout
            conn.sock.settimeout(timeout)

        conn.connect = timed_connect
        return conn

    transport._get_connection = timed_connection
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def rpc(layout: Layout, timeout: float = RPC_TIMEOUT) -> Any:
    """An XML-RPC proxy to the supervisord whose control socket is in ``layout``."""
    return proxy(f"unix://{layout.socket}", timeout)


def rpc_timeout(spec: Spec) -> float:
    """For calls that wait for a stop (rolling restart, update, down): supervisord answers
    those only when the process is gone, up to its stopwaitsecs."""
    from ..generate.conf import STOP_MARGIN

    return spec.server.graceful_timeout + STOP_MARGIN + RPC_TIMEOUT


def answer_problem(proxy: Any) -> Optional[str]:
    """Why the supervisord behind ``proxy`` does not answer as RUNNING, or None."""
    try:
        state = proxy.supervisor.getState()["statename"]
    except (OSError, xmlrpc.client.Error) as exc:
        return str(exc) or type(exc).__name__
    return None if state == "RUNNING" else f"it is {state}"


def is_running(layout: Layout) -> bool:
    """True when a supervisord answers on this deployment's control socket."""
    return os.path.exists(layout.socket) and answer_problem(rpc(layout, PROBE_TIMEOUT)) is None


def worker_states(layout: Layout, names: Iterable[str]) -> Dict[str, WorkerState]:
    """Ready/heartbeat files of the processes ``names`` (as supervisord reports them), by name:
    ``{"pid", "ready", "beat"}``. Never a listing of the folder: the app user writes it."""
    return read_worker_states(layout.state_dir, names)


@dataclass
class Readiness:
    ready: List[str] = field(default_factory=list)
    pending: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    reasons: Dict[str, str] = field(default_factory=dict)
    migrating: Optional[str] = None  # the migration program while it runs

    @property
    def done(self) -> bool:
        return not self.pending and self.migrating is None


def _migration_readiness(info: ProcessInfo, r: Readiness) -> None:
    name, state = info["name"], info["statename"]
    reason = None
    if state == "EXITED" and info["exitstatus"] != 0:
        reason = f"migration exited with status {info['exitstatus']}"
    elif state in FAILED_STATES:
        reason = f"migration is {state}"
    elif state in ("STOPPED", "STOPPING") and info.get("start"):
        # The controller stops a migration that runs past migrate.timeout; either way the
        # workers will not start until it is run again.
        reason = "migration was stopped before it finished (it ran past migrate.timeout, or was stopped by hand)"
    elif state in ("STARTING", "RUNNING"):
        r.migrating = name
    if reason:
        r.failed.append(name)
        r.reasons[name] = reason


def readiness(spec: Spec, infos: Sequence[ProcessInfo], states: Mapping[str, Mapping[str, Any]],
              control: Optional[ControlState] = None) -> Readiness:
    """Which web workers accept connections, which are still coming, which failed.

    A worker is ready when supervisord has it RUNNING and its own state file names the
    same pid: the file is written only after uvicorn's startup (lifespan, listen) is done.
    A failed migration fails the whole deployment, since the workers will not start.
    ``control`` is the controller's state (plugins/rpc getState): a worker the gate holds
    while the migration runs is pending, not failed.
    """
    r = Readiness()
    names = Names(spec.app.name)
    processes = (control or {}).get("processes") or {}
    for info in sorted(infos, key=lambda i: i["group"] != names.migrate):  # the migration first
        name, state = info["name"], info["statename"]
        if info["group"] == names.migrate:
            _migration_readiness(info, r)
            continue
        if info["group"] != names.web:
            continue
        hold = (processes.get(f"{info['group']}:{name}") or {}).get("held") or {}
        # Held by the gate: by the controller's state, or by the description in case the two
        # answers straddle the gate opening (the hold is gone, supervisord has not spawned yet).
        gated = hold.get("kind") == "gate" or str(info.get("spawnerr") or "").startswith(GATE_HELD_PREFIX)
        if state == "BACKOFF" and gated:
            r.pending.append(name)
        elif state in FAILED_STATES:
            r.failed.append(name)
            r.reasons[name] = f"{state}" + (f": {info['spawnerr']}" if info.get("spawnerr") else "")
        elif state == "RUNNING" and states.get(name, {}).get("pid") == info["pid"]:
            r.ready.append(name)
        else:
            r.pending.append(name)
    return r


def wait_running(proxy: Any, name: str, what: str, fix: str, since: Optional[Dict[str, int]] = None,
                 timeout: float = 30.0) -> None:
    """Wait until the one-process program ``name`` is RUNNING; one that fails to start (a port in
    use, a file it cannot read) raises DeployError with its log's tail and ``fix``. ``what``
    says what it is ("Caddy", "the metrics exporter"). The workers serve meanwhile: this is
    about the program beside them, which `up` would otherwise report as up."""
    full = f"{name}:{name}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = proxy.supervisor.getProcessInfo(full)
        except xmlrpc.client.Fault as exc:
            raise DeployError(f"{full}: supervisord does not run it ({exc.faultString})") from None
        state = info["statename"]
        if state == "RUNNING":
            return
        # BACKOFF right after a spawn is a first start failing; the controller restarts it (a
        # passing cause may clear) or holds it: wait, up to ``timeout``, unless it could not even spawn.
        failed = state in ("FATAL", "EXITED") or (state == "BACKOFF" and info.get("spawnerr"))
        if failed or time.monotonic() > deadline:
            tail = log_tail(proxy, full, (since or {}).get(str(info.get("stdout_logfile")), 0))
            why = f"{state}" + (f" ({info['spawnerr']})" if info.get("spawnerr") else "")
            raise DeployError(f"{full} is not serving ({what}): {why}\n--- last lines of its log ---\n"
                              f"{tail.rstrip()}\n--- {fix}, then run `supervisor-fastapi up` again (the workers "
                              "are serving; `supervisor-fastapi down` stops everything)")
        time.sleep(0.1)


def log_tail(proxy: Any, name: str, since: int = 0, length: int = 3000, app: str = "") -> str:
    """The last part of a process's log from byte ``since`` on (this run), printable, or a note
    why there is none (never an exception: the failure it illustrates is the message)."""
    try:
        return run_log_tail(proxy, name, since, length, app) or "(nothing in its log from this run)"
    except (xmlrpc.client.Error, OSError, DeployError) as exc:
        return f"(no log: {exc})"


def start_daemon(conf_path: str, layout: Layout, timeout: float = 30.0) -> None:
    """Start supervisord on ``conf_path`` and wait until its control socket answers."""
    # supervisord forks into the background only after it has bound every socket, so a
    # busy port or a bad conf makes this first process exit non-zero with the reason.
    proc = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", conf_path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = _file_tail(layout.logfile, 20)
        raise UserError(f"supervisord did not start (exit {proc.returncode}):\n{proc.stdout.strip()}"
                        + (f"\n--- {layout.logfile} ---\n{tail}" if tail else ""))
    wait_for(lambda: is_running(layout), timeout, "supervisord's control socket to answer")


def stop_daemon(layout: Layout, timeout: float = 120.0) -> bool:
    """Ask supervisord to shut down and wait until it has; False if it was not running."""
    if not is_running(layout):
        return False
    pid = _read_pid(layout.pidfile)
    try:
        rpc(layout).supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault):
        pass
    wait_for(lambda: not (pid and pid_alive(pid)) and not is_running(layout), timeout, "supervisord to exit")
    return True


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise UserError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _file_tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


# --- orphans: what a supervisord killed with -9 left running ------------------------------


@dataclass(frozen=True)
class Orphan:
    pid: int
    name: str  # supervisord's process name (from the child's environment)
    command: str
    group: str = ""  # supervisord's group name (from the child's environment)


def orphan_of(environ: bytes, cmdline: bytes, pid: int, serverurl: str) -> Optional[Orphan]:
    """The process, if its environment says the supervisord at ``serverurl`` started it (pure).

    supervisord gives every child SUPERVISOR_SERVER_URL (its own control socket) and
    SUPERVISOR_PROCESS_NAME; nothing else on the host has this deployment's socket path there.
    """
    env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
    if env.get(b"SUPERVISOR_SERVER_URL", b"").decode("utf-8", "replace") != serverurl:
        return None
    name = env.get(b"SUPERVISOR_PROCESS_NAME", b"?").decode("utf-8", "replace")
    group = env.get(b"SUPERVISOR_GROUP_NAME", b"").decode("utf-8", "replace")
    command = " ".join(w.decode("utf-8", "replace") for w in cmdline.split(b"\0") if w)
    return Orphan(pid, name, command[:200], group)


def start_ticks(pid: int, proc: str = "/proc") -> Optional[int]:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), None if unknown."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def find_orphans(layout: Layout, proc: str = "/proc") -> List[Orphan]:
    """Processes a supervisord of this deployment started and that outlived it (killed with -9).

    While a new supervisord runs (it came back beside them) only those older than it count:
    its own children carry the same control socket URL."""
    serverurl = f"unix://{layout.socket}"
    out = []
    me = os.getpid()
    daemon = _read_pid(layout.pidfile)
    since = start_ticks(daemon, proc) if daemon and pid_alive(daemon) else None
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) in (me, daemon):
            continue
        if since is not None and (start_ticks(int(entry), proc) or 0) >= since:
            continue
        try:
            with open(os.path.join(proc, entry, "environ"), "rb") as f:
                environ = f.read(1 << 20)
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                cmdline = f.read(1 << 16)
        except OSError:
            continue  # gone, or not ours to read
        found = orphan_of(environ, cmdline, int(entry), serverurl)
        if found is not None:
            out.append(found)
    return sorted(out, key=lambda o: o.name)


def describe_orphans(orphans: Sequence[Orphan]) -> str:
    return ", ".join(f"{o.name} (pid {o.pid})" for o in orphans)


def stop_orphans(orphans: Sequence[Orphan], grace: float) -> None:
    """SIGTERM each orphan's process group (supervisord made every child a group leader), then
    SIGKILL whatever is left after ``grace`` seconds."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for o in orphans:
            for kill in (os.killpg, os.kill):
                try:
                    kill(o.pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while any(pid_alive(o.pid) for o in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(pid_alive(o.pid) for o in orphans):
            return
