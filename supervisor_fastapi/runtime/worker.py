"""The web worker: serves an ASGI app with uvicorn on the listening socket supervisord passes as fd 0.

``uvicorn --fd 0`` wraps the descriptor as AF_UNIX whatever it really is, so asyncio never
sets TCP_NODELAY and every keep-alive response waits out Nagle and delayed ACK (~44 ms).
Here the socket is opened with ``socket.socket(fileno=0)``, which asks the kernel for the
real family and protocol, and TCP_NODELAY is also set on the listener (accepted sockets
inherit it on Linux), so asyncio and uvloop both answer at once.

This module imports only the standard library and uvicorn: it runs under the app's own
interpreter (``app.python``), which need not have click or supervisor installed. As the worker
process, it loads uvicorn without its command line (lean_uvicorn.py).
"""

if __name__ == "__main__":  # the worker process, before anything imports uvicorn; an import (tests) leaves it be
    from supervisor_fastapi.runtime import lean_uvicorn

    lean_uvicorn.install()

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..contracts.files import pid_alive, read_worker_state, write_worker_state
from ..uvicorn_settings import UVICORN_SETTINGS


class WorkerError(Exception):
    """The worker cannot start as configured; ``main`` prints it and exits 2 (supervisord logs it)."""


def decode_settings(pairs: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The inverse of encode_setting, typed by UVICORN_SETTINGS; ``*_env`` settings are read from ``env``."""
    env = os.environ if env is None else env
    out: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        setting = UVICORN_SETTINGS.get(key)
        if not sep or setting is None:
            raise WorkerError(f"supervisor-fastapi worker: unknown uvicorn setting {pair!r}")
        if setting.kind == "list":
            out.setdefault(key, []).append(raw)
        elif setting.kind == "bool":
            out[key] = raw == "true"
        elif setting.kind == "int":
            out[key] = int(raw)
        elif setting.kind == "float":
            out[key] = float(raw)
        elif setting.kind == "env":  # "<keyword>_env" names the variable that holds <keyword>'s value
            if raw not in env:
                raise WorkerError(f"supervisor-fastapi worker: {key} names {raw}, which is not set in the worker's "
                                 "environment; set it where supervisord starts (systemd EnvironmentFile=, or the "
                                 "shell that runs `supervisor-fastapi up`)")
            out[key[: -len("_env")]] = env[raw]
        else:
            out[key] = raw
    if "forwarded_allow_ips" in out:
        out["forwarded_allow_ips"] = ",".join(out["forwarded_allow_ips"])
    if "headers" in out:
        out["headers"] = [tuple(h.split(":", 1)) for h in out["headers"]]
        out["headers"] = [(k.strip(), v.strip()) for k, v in out["headers"]]
    return out


def listening_socket(fd: int = 0) -> socket.socket:
    """The inherited listener with its real family and protocol, TCP_NODELAY on for TCP."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise WorkerError(f"supervisor-fastapi worker: fd {fd} is not a socket ({exc}); run the worker from an "
                         "[fcgi-program] section, never inside [group:] (supervisord then passes a pipe)") from None
    if sock.type != socket.SOCK_STREAM:
        raise WorkerError(f"supervisor-fastapi worker: fd {fd} is not a stream socket")
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Succession:
    """Whether supervisord died under this worker, and whether a successor of its name serves.

    A supervisord killed with -9 leaves its workers running: they keep serving (clients see
    no outage) until a new supervisord's worker of the same name writes its ready file; then
    this one drains and exits. Its parent changing (to init or a subreaper) is how it knows
    supervisord is gone: nothing else reparents a process.
    """

    def __init__(self, path: Optional[str], parent: Optional[int] = None,
                 getppid: Callable[[], int] = os.getppid, alive: Callable[[int], bool] = pid_alive) -> None:
        self.path = path
        self.getppid = getppid
        self.parent = getppid() if parent is None else parent
        self.alive = alive

    def orphaned(self) -> bool:
        return self.getppid() != self.parent

    def replaced(self) -> bool:
        """Orphaned, and the ready file of this name now names another live process."""
        if not self.path or not self.orphaned():
            return False
        state = read_worker_state(self.path)
        pid = state["pid"] if state else 0
        return bool(pid) and pid != os.getpid() and self.alive(pid)


def watch_succession(succession: Succession, interval: float = 0.5) -> threading.Thread:
    """A daemon thread that SIGTERMs this process (uvicorn then drains) once a successor serves."""
    def run() -> None:
        while True:
            time.sleep(interval)
            if succession.replaced():
                # No message: stdout and stderr were pipes to the dead supervisord (EPIPE).
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=run, name="succession", daemon=True)
    thread.start()
    return thread


class StateFile:
    """``<state_dir>/<process name>``: written when the worker accepts, touched on every beat.

    Its content (pid, start time) tells which incarnation is ready; its mtime is the last beat
    of the event loop, so a blocked loop shows as a stale file. A file that cannot be written
    (a full disk) never stops the worker from serving: it says so once on stderr and tries
    again on the next beat.
    """

    def __init__(self, state_dir: Optional[str], name: str, succession: Optional[Succession] = None) -> None:
        self.path = os.path.join(state_dir, name) if state_dir else None
        self.written = False
        self._complained = False
        # Once supervisord is gone the file may be a successor's: an orphan never writes it again.
        self.succession = succession or Succession(None, parent=0, getppid=lambda: 0)

    def ready(self) -> None:
        if not self.path:
            return
        try:
            write_worker_state(self.path, os.getpid(), time.time())
            self.written = True
        except OSError as exc:
            self._complain(exc)

    def gone(self) -> None:
        """Stopping: remove the file so nothing mistakes this worker for a ready one (only our own)."""
        if self.path:
            state = read_worker_state(self.path)
            if state is not None and state["pid"] != os.getpid():
                return  # a successor's, written after supervisord died under us
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def beat(self) -> None:
        if not self.path or self.succession.orphaned():
            return
        if not self.written:
            self.ready()
            return
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self.ready()
        except OSError as exc:
            self._complain(exc)

    def _complain(self, exc: OSError) -> None:
        if not self._complained:
            self._complained = True
            print(f"supervisor-fastapi worker: cannot write {self.path} ({exc}); serving anyway, retrying on each "
                  "beat (until then this worker does not count as ready)", file=sys.stderr, flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m supervisor_fastapi.runtime.worker",
                                description="Serve an ASGI app on the listening socket at fd 0.")
    p.add_argument("app", help="ASGI import string, module:attr")
    p.add_argument("--factory", action="store_true", help="the import string names an app factory")
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--backlog", type=int, default=2048)
    p.add_argument("--fd", type=int, default=0)
    p.add_argument("--state-dir", default=None, help="folder for the ready/heartbeat file")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--metrics", action="store_true",
                   help="count requests into <state-dir>/<process name>.metrics, written on each beat")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a uvicorn.Config setting")
    return p.parse_args(argv)


def build_server(args: argparse.Namespace) -> Any:
    import uvicorn

    from .drain import DrainingServer

    name = os.environ.get("SUPERVISOR_PROCESS_NAME") or f"worker-{os.getpid()}"
    config_cls: Any = uvicorn.Config
    succession = Succession(os.path.join(args.state_dir, name) if args.state_dir else None)
    state: Any = StateFile(args.state_dir, name, succession)
    if args.metrics and args.state_dir:
        from ..contracts.files import metrics_path
        from .reqcount import Counts, MeteredState, MetricsFile, metered_config

        counts = Counts()
        metrics = MetricsFile(metrics_path(args.state_dir, name), counts)
        metrics.load()
        config_cls, state = metered_config(uvicorn.Config, counts), MeteredState(state, metrics)
    config = config_cls(args.app, factory=args.factory, backlog=args.backlog,
                        timeout_graceful_shutdown=int(args.graceful_timeout) or None,
                        **decode_settings(args.settings))
    return DrainingServer(config, state, args.heartbeat_interval, args.graceful_timeout)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    # supervisord starts us in app.directory; make the app importable from there, as uvicorn's --app-dir does.
    sys.path.insert(0, os.getcwd())
    try:
        sock = listening_socket(args.fd)
        server = build_server(args)
    except WorkerError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(2)
    if server.state.path:
        watch_succession(server.state.succession)
    server.run(sockets=[sock])
    if not server.started:
        # uvicorn returns without serving when the app fails to import or lifespan startup
        # fails; exit non-zero so supervisord marks the spawn as failed, not as a clean stop.
        sys.exit(3)


if __name__ == "__main__":
    main()
