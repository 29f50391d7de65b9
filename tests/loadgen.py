"""A small, bounded HTTP load generator for tests and measurements (standard library only).

    from tests.loadgen import Load

    with Load("127.0.0.1", port, mode="close", threads=4) as load:   # starts the threads
        ...                                                           # restart things
    r = load.result          # stopped and joined on leaving the block
    assert r.failures == 0, r.summary()

``Load(host, port, path="/", mode="close"|"keepalive", threads=4, timeout=10.0,
pause=0.0, unix_path=None, method="GET", body=b"", ssl_context=None,
probe_idle=True)``:

- ``mode="close"``: every request opens a new TCP connection (``Connection: close``).
- ``mode="keepalive"``: each thread keeps one HTTP/1.1 connection and reuses it; after a
  response that says ``Connection: close`` (a draining worker) or after an error it opens
  a new one. Like urllib3, before reusing an idle connection it checks whether the server
  has closed it meanwhile (readable with EOF) and reconnects if so (counted in
  ``stale``). A failed request is counted and **not retried**, so ``failures`` is the raw
  keep-alive race (server closes exactly while the client sends) a client sees.
- ``pause``: seconds each thread sleeps between requests (0 = as fast as it can).
- ``timeout``: per-request socket timeout; a request slower than this counts as failed.
- ``unix_path``: talk to a unix socket instead of host:port.
- ``method``/``body``: send POSTs (with that body) instead of GETs.
- ``ssl_context``: speak HTTPS with this context (a proxy in front of the workers).
- ``probe_idle=False``: in keep-alive mode, reuse a connection without checking it first (as
  wrk does, or a proxy forwarding a POST, which it never retries): a connection the server
  closed after a response that did not say ``Connection: close`` then fails the next request.

``quiet()`` (a context manager) holds every thread between two requests, its connection
open and idle, until the block ends: what happens inside (a ``kill -9``) meets no request
in flight, and the idle connections it breaks are found closed and reopened (``stale``).

``start()``/``stop() -> Result`` do the same as the ``with`` block. ``Result`` has
``requests``, ``ok``, ``failures``, ``stale``, ``errors`` (Counter of error kind -> count),
``pids`` (Counter of the ``pid`` field of JSON bodies, when the app returns one),
``releases`` (Counter of their ``release`` field) and ``first_seen`` (release -> wall clock of
its first answer), ``max_latency``, ``max_gap`` (longest time between two answered requests),
``duration`` and ``summary()``. Every thread stops within ``timeout``
seconds of ``stop()``; ``stop()`` raises if one does not.
"""

import http.client
import json
import select
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple


@dataclass
class Result:
    requests: int = 0
    ok: int = 0
    failures: int = 0
    stale: int = 0
    errors: Counter = field(default_factory=Counter)
    pids: Counter = field(default_factory=Counter)
    releases: Counter = field(default_factory=Counter)
    first_seen: Dict[Any, float] = field(default_factory=dict)
    failed_at: List[Tuple[float, str]] = field(default_factory=list)  # (wall clock, error kind)
    max_latency: float = 0.0
    duration: float = 0.0
    # The longest time between two answered requests (any thread): what a client saw as an outage.
    max_gap: float = 0.0
    last_ok: float = 0.0

    def summary(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in self.errors.most_common()) or "none"
        rate = self.requests / self.duration if self.duration else 0.0
        stale = f", {self.stale} idle connections found closed and reopened" if self.stale else ""
        return (f"{self.requests} requests in {self.duration:.1f} s ({rate:.0f}/s), {self.failures} failed "
                f"[{errors}]{stale}, max latency {self.max_latency * 1000:.0f} ms, longest without an answer "
                f"{self.max_gap:.2f} s, {len(self.pids)} worker pids")


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket is readable only when the server closed it (or misbehaved)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Load:
    """Threads sending GETs until stopped; counts every failure (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/", mode: str = "close",
                 threads: int = 4, timeout: float = 10.0, pause: float = 0.0,
                 unix_path: Optional[str] = None, method: str = "GET", body: bytes = b"",
                 ssl_context: Any = None, probe_idle: bool = True) -> None:
        if mode not in ("close", "keepalive"):
            raise ValueError(f"mode must be 'close' or 'keepalive', not {mode!r}")
        self.host, self.port, self.path, self.mode = host, port, path, mode
        self.threads, self.timeout, self.pause, self.unix_path = threads, timeout, pause, unix_path
        self.method, self.body, self.ssl_context = method, body, ssl_context
        self.probe_idle = probe_idle
        self.result = Result()
        self._quiet = threading.Event()
        self._quiet.set()  # set: threads may send
        self._busy = 0  # threads inside a request
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: List[threading.Thread] = []
        self._started = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_path:
            return _UnixHTTPConnection(self.unix_path, self.timeout)
        if self.ssl_context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _record(self, error: Optional[str], latency: float, pid: Any = None, release: Any = None) -> None:
        with self._lock:
            r = self.result
            r.requests += 1
            r.max_latency = max(r.max_latency, latency)
            if error:
                r.failures += 1
                r.errors[error] += 1
                r.failed_at.append((time.time(), error))
            else:
                r.ok += 1
                now = time.monotonic()
                if r.last_ok:
                    r.max_gap = max(r.max_gap, now - r.last_ok)
                r.last_ok = now
                if pid is not None:
                    r.pids[pid] += 1
                if release is not None:
                    r.releases[release] += 1
                    r.first_seen.setdefault(release, time.time())

    def _run(self) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        headers = {"Connection": "close"} if self.mode == "close" else {}
        while not self._stop.is_set():
            self._quiet.wait(self.timeout)
            with self._lock:
                if not self._quiet.is_set():
                    continue
                self._busy += 1
            if self.probe_idle and conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
                conn.close()
                conn = None
                with self._lock:
                    self.result.stale += 1
            if conn is None:
                conn = self._connection()
            t0 = time.monotonic()
            error, pid, release = None, None, None
            try:
                conn.request(self.method, self.path, body=self.body or None, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    error = f"HTTP {resp.status}"
                elif body[:1] == b"{":
                    data = json.loads(body)
                    pid, release = data.get("pid"), data.get("release")
                if self.mode == "close" or resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = type(exc).__name__
                conn.close()
                conn = None
            with self._lock:
                self._busy -= 1
            self._record(error, time.monotonic() - t0, pid, release)
            if self.pause:
                self._stop.wait(self.pause)
        if conn is not None:
            conn.close()

    def start(self) -> "Load":
        self._started = time.monotonic()
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> Result:
        self._stop.set()
        self._quiet.set()
        for t in self._workers:
            t.join(self.timeout + 5)
            if t.is_alive():
                raise RuntimeError("a load thread did not stop in time")
        self.result.duration = time.monotonic() - self._started
        return self.result

    @contextmanager
    def quiet(self, timeout: float = 10.0) -> Iterator[None]:
        """Hold every thread between two requests (connections open and idle) during the block."""
        with self._lock:
            self._quiet.clear()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._busy == 0:
                    break
            if time.monotonic() > deadline:
                self._quiet.set()
                raise RuntimeError(f"requests still in flight after {timeout} s")
            time.sleep(0.005)
        try:
            yield
        finally:
            self._quiet.set()

    def wait_requests(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least ``n`` requests were sent (the load is really running)."""
        deadline = time.monotonic() + timeout
        while self.result.requests < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.result.requests} requests after {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
