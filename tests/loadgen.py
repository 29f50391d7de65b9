"""A small, bounded HTTP load generator for tests and measurements (standard library only).

    from tests.loadgen import Load

    with Load("127.0.0.1", port, mode="close", threads=4) as load:   # starts the threads
        ...                                                           # restart things
    r = load.result          # stopped and joined on leaving the block
    assert r.failures == 0, r.summary()

``Load(host, port, path="/", mode="close"|"keepalive", threads=4, timeout=10.0,
pause=0.0, unix_path=None)``:

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

``start()``/``stop() -> Result`` do the same as the ``with`` block. ``Result`` has
``requests``, ``ok``, ``failures``, ``stale``, ``errors`` (Counter of error kind -> count),
``pids`` (Counter of the ``pid`` field of JSON bodies, when the app returns one),
``max_latency``, ``duration`` and ``summary()``. Every thread stops within ``timeout``
seconds of ``stop()``; ``stop()`` raises if one does not.
"""

import http.client
import json
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class Result:
    requests: int = 0
    ok: int = 0
    failures: int = 0
    stale: int = 0
    errors: Counter = field(default_factory=Counter)
    pids: Counter = field(default_factory=Counter)
    max_latency: float = 0.0
    duration: float = 0.0

    def summary(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in self.errors.most_common()) or "none"
        rate = self.requests / self.duration if self.duration else 0.0
        stale = f", {self.stale} idle connections found closed and reopened" if self.stale else ""
        return (f"{self.requests} requests in {self.duration:.1f} s ({rate:.0f}/s), {self.failures} failed "
                f"[{errors}]{stale}, max latency {self.max_latency * 1000:.0f} ms, {len(self.pids)} worker pids")


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
                 unix_path: Optional[str] = None) -> None:
        if mode not in ("close", "keepalive"):
            raise ValueError(f"mode must be 'close' or 'keepalive', not {mode!r}")
        self.host, self.port, self.path, self.mode = host, port, path, mode
        self.threads, self.timeout, self.pause, self.unix_path = threads, timeout, pause, unix_path
        self.result = Result()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: List[threading.Thread] = []
        self._started = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_path:
            return _UnixHTTPConnection(self.unix_path, self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _record(self, error: Optional[str], latency: float, pid: Any = None) -> None:
        with self._lock:
            r = self.result
            r.requests += 1
            r.max_latency = max(r.max_latency, latency)
            if error:
                r.failures += 1
                r.errors[error] += 1
            else:
                r.ok += 1
                if pid is not None:
                    r.pids[pid] += 1

    def _run(self) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        headers = {"Connection": "close"} if self.mode == "close" else {}
        while not self._stop.is_set():
            if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
                conn.close()
                conn = None
                with self._lock:
                    self.result.stale += 1
            if conn is None:
                conn = self._connection()
            t0 = time.monotonic()
            error, pid = None, None
            try:
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    error = f"HTTP {resp.status}"
                elif body[:1] == b"{":
                    pid = json.loads(body).get("pid")
                if self.mode == "close" or resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = type(exc).__name__
                conn.close()
                conn = None
            self._record(error, time.monotonic() - t0, pid)
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
        for t in self._workers:
            t.join(self.timeout + 5)
            if t.is_alive():
                raise RuntimeError("a load thread did not stop in time")
        self.result.duration = time.monotonic() - self._started
        return self.result

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
