"""The ``[program:<app>_metrics]``: serves ``/metrics`` in the Prometheus text format.

Rendered when the spec has a ``[metrics]`` table. It runs as supervisord's user (like the
watchdog) and holds no state of its own: each scrape asks supervisord over XML-RPC
(``getAllProcessInfo``, and the controller's ``fastapi_<app>.getState``: gate, holds,
restarts by cause) and reads, for the process names supervisord reports only, the
workers' ready files and request counters (``<state_dir>/<name>.metrics``, written by each
worker on its heartbeat; contracts.files reads them defensively: no symlinks, size caps), RSS
from /proc and the listener's state file (alert results by channel).

``collect(Observed) -> [Family]`` is the whole mapping, pure; ``observe`` gathers the
inputs; ``serve`` is a small stdlib HTTP server. Standard library and supervisor only:
no uvicorn, click or TOML parser (tests/unit check the imports of every entry point).
"""

import argparse
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..contracts.files import (
    MIGRATION_FAILED,
    MIGRATION_OK,
    WorkerState,
    read_json,
    read_release_record,
    read_rss,
    read_worker_metrics,
    read_worker_states,
)
from ..contracts.rpc import ControlState, Hold, ProcessControl, ProcessInfo, control_state, is_ready
from .exposition import CONTENT_TYPE, Family, render

PREFIX = "supervisor_fastapi_"
RESTART_CAUSES = ("killed", "crashed", "start_failed", "memory", "hung", "rolled")  # controller.RESTART_CAUSES
ALERT_RESULTS = ("sent", "failed", "journaled")
SCRAPE_TIMEOUT = 10.0  # seconds a client may take to send its request


@dataclass
class Observed:
    """What one scrape sees; every field may be empty (supervisord down, no plugin, no files)."""

    app: str
    web: str
    migrate: str = ""
    up: bool = False  # supervisord answered
    infos: List[ProcessInfo] = field(default_factory=list)
    control: Optional[ControlState] = None  # getState, None without the plugin
    states: Dict[str, WorkerState] = field(default_factory=dict)  # ready files by process name
    rss: Dict[int, int] = field(default_factory=dict)  # bytes by pid
    requests: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # metrics files by process name
    listener: Optional[Dict[str, Any]] = None
    release: Optional[str] = None  # release mode: the release `current` points at (getState)
    memory_limit: Optional[int] = None  # memory.limit, bytes
    # release mode: the last migration deploy ran (release, succeeded, seconds, ended at)
    last_migration: Optional[Tuple[str, bool, Optional[float], float]] = None


def _family(name: str, kind: str, help_text: str) -> Family:
    return Family(PREFIX + name, kind, help_text)


def collect(seen: Observed) -> List[Family]:
    """The metric families of one scrape (pure)."""
    from .reqcount import parse_counts  # stdlib-only, like this module

    app = seen.app
    up = _family("up", "gauge", "1 when supervisord answered this scrape")
    up.add(1 if seen.up else 0, {"app": app})
    families = [up]
    if not seen.up:
        return families

    worker_up = _family("worker_up", "gauge", "1 when the web worker is RUNNING and its ready file names its pid")
    rss = _family("worker_rss_bytes", "gauge", "resident set size of the web worker")
    started = _family("worker_start_time_seconds", "gauge", "when supervisord started the worker (unix time)")
    requests = _family("http_requests_total", "counter", "HTTP requests answered, by method and status class")
    duration = _family("http_request_duration_seconds", "histogram", "HTTP request duration, from the ASGI call "
                       "to its end")
    web = sorted((i for i in seen.infos if i.get("group") == seen.web), key=lambda i: str(i.get("name")))
    processes = (seen.control or {}).get("processes") or {}
    for info in web:
        name = str(info.get("name"))
        labels = {"app": app, "process": name}
        pid = int(info.get("pid") or 0) if info.get("statename") in ("STARTING", "RUNNING", "STOPPING") else 0
        # The controller's state is read after supervisord's process list: a worker that died
        # in between shows as RUNNING there and as held here. Held is the newer word, and a
        # held worker is not serving.
        entry = processes.get(f"{seen.web}:{name}")
        held_now = isinstance(entry, dict) and isinstance(entry.get("held"), dict)
        worker_up.add(1 if is_ready(info, seen.states) and not held_now else 0, labels)
        if pid and pid in seen.rss:
            rss.add(seen.rss[pid], labels)
        if pid and info.get("start"):
            started.add(float(info["start"]), labels)
        parsed = parse_counts(seen.requests.get(name))
        if parsed is None:
            continue
        by_kind, buckets, total = parsed
        # Every (method, class) the worker has seen; none seen yet: GET 2xx at 0, so the series exists.
        for (method, klass), n in sorted(by_kind.items()) or [(("GET", "2xx"), 0)]:
            requests.add(n, dict(labels, method=method, status_class=klass))
        bounds = tuple(float(b) for b in seen.requests[name]["bounds"])
        duration.add_histogram(labels, bounds, buckets, total)
    families += [worker_up, rss, started, requests, duration]
    if seen.memory_limit:
        limit = _family("memory_limit_bytes", "gauge", "memory.limit: a worker above it is recycled by the watchdog")
        limit.add(seen.memory_limit, {"app": app})
        families.append(limit)

    restarts = _family("restarts_total", "counter", "process restarts in this supervisord run, by cause: killed "
                       "(SIGKILL while serving), crashed, start_failed, memory (watchdog recycle), hung (watchdog "
                       "kill), rolled (rolling restart)")
    held = _family("held", "gauge", "1 while the crash-loop guard holds the process in BACKOFF")
    held_until = _family("held_until_seconds", "gauge", "when a held process is retried next (unix time)")
    for ns in sorted(processes):
        entry = processes[ns]
        if not isinstance(entry, dict) or "restarts" not in entry:
            continue  # not under the crash-loop guard (the migration)
        labels = {"app": app, "process": ns.split(":", 1)[-1]}
        causes: Dict[str, Any] = entry["restarts"] if isinstance(entry.get("restarts"), dict) else {}
        for cause in RESTART_CAUSES:
            restarts.add(_number(causes.get(cause)), dict(labels, cause=cause))
        hold: Hold = entry["held"] if isinstance(entry.get("held"), dict) else {}
        crash_hold = hold.get("kind") == "crash"
        held.add(1 if crash_hold else 0, labels)
        until = hold.get("until")
        if crash_hold and isinstance(until, (int, float)):
            held_until.add(float(until), labels)
    families += [restarts, held, held_until]
    families += _migration(seen)
    families.append(_alerts(seen))
    families += _releases(seen, processes)
    return families


def _releases(seen: Observed, processes: Mapping[str, ProcessControl]) -> List[Family]:
    """Release mode ([release]): the release ``current`` points at, and the one each web worker
    was spawned from (they differ during a deploy's rolling restart)."""
    if not seen.release:
        return []
    current = _family("release_info", "gauge", "the release the app's current link points at")
    current.add(1, {"app": seen.app, "release": seen.release})
    workers = _family("worker_release_info", "gauge", "the release each running web worker was spawned from")
    for ns in sorted(processes):
        entry = processes[ns]
        if ns.split(":", 1)[0] == seen.web and isinstance(entry, dict) and isinstance(entry.get("release"), str):
            workers.add(1, {"app": seen.app, "process": ns.split(":", 1)[-1], "release": entry["release"]})
    return [current, workers]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def last_release_migration(record: Mapping[str, Any]) -> Optional[Tuple[str, bool, Optional[float], float]]:
    """Release mode: the last migration `deploy` (or `rollback --migrate`) ran, from its record:
    (release, succeeded, seconds it took or None, when it ended), or None before the first."""
    runs: List[Tuple[float, str, bool, Optional[float]]] = []
    for rid, entry in (record.get("releases") or {}).items():
        at, seconds = entry.get("migrated_at"), entry.get("migration_seconds")
        if isinstance(at, (int, float)) and entry.get("migration") in (MIGRATION_OK, MIGRATION_FAILED):
            runs.append((float(at), rid, entry["migration"] == MIGRATION_OK,
                         float(seconds) if isinstance(seconds, (int, float)) else None))
        if isinstance(entry.get("rerun_at"), (int, float)):  # a failed rerun, beside the success it kept
            runs.append((float(entry["rerun_at"]), rid, False, None))
    if not runs:
        return None
    at, rid, ok, seconds = max(runs)
    return rid, ok, seconds, at


def _migration(seen: Observed) -> List[Family]:
    if not seen.migrate:
        return []
    labels = {"app": seen.app}
    out = []
    gate = (seen.control or {}).get("gate")
    if isinstance(gate, dict):
        g = _family("migration_gate_open", "gauge", "1 while the migration gate lets web workers start")
        g.add(1 if gate.get("state") == "open" else 0, labels)
        out.append(g)
    last = seen.last_migration  # release mode: deploy's runs, not the program's re-checks
    info = next((i for i in seen.infos if i.get("group") == seen.migrate), None)
    if last is None and info is not None and info.get("statename") in ("EXITED", "STOPPED", "FATAL", "BACKOFF") \
            and info.get("stop") and info.get("start") and float(info["stop"]) >= float(info["start"]):
        # The program's own last run; in release mode it ran for the release `current` points at.
        last = (seen.release or "", info.get("statename") == "EXITED" and info.get("exitstatus") == 0,
                float(info["stop"]) - float(info["start"]), float(info["stop"]))
    if last is not None:
        release, succeeded, seconds, ended_at = last
        if release:
            labels = dict(labels, release=release)
        ok = _family("migration_last_success", "gauge", "1 when the last migration run exited 0")
        ok.add(1 if succeeded else 0, labels)
        out.append(ok)
        if seconds is not None:
            took = _family("migration_last_duration_seconds", "gauge", "how long the last migration run took")
            took.add(seconds, labels)
            out.append(took)
        ended = _family("migration_last_end_time_seconds", "gauge", "when the last migration run ended (unix time)")
        ended.add(ended_at, labels)
        out.append(ended)
    return out


def _alerts(seen: Observed) -> Family:
    fam = _family("alerts_total", "counter", "alert deliveries by channel and result (sent, failed, journaled: "
                  "kept for a later retry), since the listener started")
    counts = (seen.listener or {}).get("alert_counts")
    if isinstance(counts, dict):
        for channel in sorted(counts):
            by_result = counts[channel] if isinstance(counts[channel], dict) else {}
            for result in ALERT_RESULTS:
                fam.add(_number(by_result.get(result)), {"app": seen.app, "channel": str(channel), "result": result})
    return fam


# --- edges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    app: str
    web: str
    migrate: str
    state_dir: str
    listener_state: str
    bind: str
    memory_limit: Optional[int] = None
    release_record: str = ""  # release mode: run/releases.json, where `deploy` records migrations


def observe(settings: Settings, proxy: Any) -> Observed:
    """One scrape's inputs: supervisord over XML-RPC, then only the files of the names it reports."""
    seen = Observed(settings.app, settings.web, settings.migrate, memory_limit=settings.memory_limit)
    try:
        seen.infos = list(proxy.supervisor.getAllProcessInfo())
    except (xmlrpc.client.Fault, xmlrpc.client.ProtocolError, OSError):
        return seen
    seen.up = True
    seen.control = control_state(proxy, settings.app)
    release = (seen.control or {}).get("release")
    seen.release = release if isinstance(release, str) and release else None
    names = [str(i.get("name")) for i in seen.infos if i.get("group") == settings.web]
    seen.states = read_worker_states(settings.state_dir, names)
    seen.requests = read_worker_metrics(settings.state_dir, names)
    for info in seen.infos:
        if info.get("group") == settings.web and info.get("pid"):
            found = read_rss(int(info["pid"]))
            if found is not None:
                seen.rss[int(info["pid"])] = found
    seen.listener = read_json(settings.listener_state) if settings.listener_state else None
    if settings.release_record:
        seen.last_migration = last_release_migration(read_release_record(settings.release_record))
    return seen


def scrape(settings: Settings, connect: Callable[[], Any]) -> bytes:
    return render(collect(observe(settings, connect()))).encode("utf-8")


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "supervisor-fastapi-metrics"
    timeout = SCRAPE_TIMEOUT
    produce: Callable[[], bytes] = staticmethod(lambda: b"")

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._send(404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = type(self).produce()
        except Exception as exc:  # one failed scrape must not stop the exporter
            self._send(500, f"scrape failed: {exc!r}\n".encode(), "text/plain; charset=utf-8")
            return
        self._send(200, body, CONTENT_TYPE)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return str(self.client_address[0]) if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not news; errors are answered with a status


class TCPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_server(bind: str, produce: Callable[[], bytes]) -> socketserver.BaseServer:
    """A threaded HTTP server on ``tcp://HOST:PORT`` or ``unix:///path`` answering with ``produce()``."""
    handler = type("BoundHandler", (Handler,), {"produce": staticmethod(produce)})
    if bind.startswith("unix://"):
        path = bind[len("unix://"):]
        if os.path.exists(path) and _is_socket(path):
            os.unlink(path)  # our own socket from a previous run: a socket file outlives its server
        server: socketserver.BaseServer = UnixServer(path, handler)
        os.chmod(path, 0o660)
        return server
    host, _, port = bind[len("tcp://"):].rpartition(":")
    TCPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return TCPServer((host.strip("[]"), int(port)), handler)


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def parse_args(argv: Optional[Sequence[str]] = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m supervisor_fastapi.runtime.metrics",
                                description="Serve the deployment's Prometheus metrics at /metrics.")
    p.add_argument("--app", required=True)
    p.add_argument("--web", required=True, help="the web group")
    p.add_argument("--migrate", default="", help="the migration program, if any")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--listener-state", default="")
    p.add_argument("--bind", required=True, help="tcp://HOST:PORT or unix:///path")
    p.add_argument("--memory-limit", type=int, default=None, help="memory.limit in bytes, exported as a gauge")
    p.add_argument("--release-record", default="", help="release mode: the releases record deploy writes")
    a = p.parse_args(argv)
    return Settings(a.app, a.web, a.migrate, a.state_dir, a.listener_state, a.bind, a.memory_limit,
                    a.release_record)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from supervisor import childutils

    settings = parse_args(argv)

    def connect() -> Any:
        return childutils.getRPCInterface(os.environ)

    try:
        server = make_server(settings.bind, lambda: scrape(settings, connect))
    except OSError as exc:
        print(f"metrics: cannot listen on {settings.bind}: {exc}; change [metrics] bind", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} metrics: serving {settings.bind.rstrip('/')}/metrics for "
          f"{settings.app}", flush=True)

    def request_stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.serve_forever(poll_interval=0.5)
    server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
