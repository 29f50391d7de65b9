"""Request counters in each web worker, for ``[metrics]``: an ASGI wrapper and its file.

The wrapper counts every HTTP request by method and status class and its duration in a
fixed-bucket histogram, in this process's memory: a dict lookup, a bisect and a few
additions per request, no lock (one event loop), no I/O. The counts reach the exporter
through ``<state_dir>/<process name>.metrics`` (contracts.files.metrics_path), written on the
worker's heartbeat (every ``heartbeat_interval``, 1 s by default) and when it stops, never
per request.

Counters never go backwards across a restart: a new incarnation of the same process name
starts from the values its predecessor last wrote (at most one beat of requests is lost
when a worker is SIGKILLed: an undercount, never a reset). A new supervisord run keeps
them too: the file belongs to the process name, not to the run.

Standard library only: it runs in the worker under the app's interpreter.
"""

import bisect
import os
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from ..contracts.files import MAX_METRICS_BYTES, read_json, write_json_atomic
from .exposition import DEFAULT_BUCKETS

Scope = Dict[str, Any]
Message = Dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]

# Methods counted by name; anything else is "other", so a client cannot grow the label set.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
FORMAT_VERSION = 1


def status_class(status: int) -> str:
    """'2xx' for 200; a request that never sent a response head counts as 5xx (uvicorn answers 500)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


class Counts:
    """Requests by (method, status class) and a duration histogram; plain data, one event loop.

    The hot path (``observe``) does no string work: a row of six integers per method, indexed
    by ``status // 100`` (index 0 collects statuses that are no HTTP status, counted as 5xx)."""

    def __init__(self, bounds: Tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.bounds = bounds
        self.rows: Dict[str, List[int]] = {m: [0] * 6 for m in METHODS + ("other",)}
        self.buckets: List[int] = [0] * (len(bounds) + 1)
        self.seconds = 0.0
        self.changed = False

    def observe(self, method: str, status: int, seconds: float) -> None:
        row = self.rows.get(method) or self.rows["other"]
        row[status // 100 if 100 <= status < 600 else 0] += 1
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.seconds += seconds
        self.changed = True

    @property
    def requests(self) -> Dict[Tuple[str, str], int]:
        """Non-zero counts by (method, status class)."""
        out: Dict[Tuple[str, str], int] = {}
        for method, row in self.rows.items():
            for index, n in enumerate(row):
                if n:
                    key = (method, STATUS_CLASSES[index - 1] if index else "5xx")
                    out[key] = out.get(key, 0) + n
        return out

    def to_json(self, pid: int, now: float) -> Dict[str, Any]:
        return {"version": FORMAT_VERSION, "writer": pid, "written": now,
                "requests": [[m, c, n] for (m, c), n in sorted(self.requests.items())],
                "bounds": list(self.bounds), "buckets": list(self.buckets), "sum": self.seconds}

    def load(self, data: Optional[Dict[str, Any]]) -> bool:
        """Continue from a predecessor's file; anything unexpected is ignored (start from zero)."""
        parsed = parse_counts(data, self.bounds)
        if parsed is None:
            return False
        requests, self.buckets, self.seconds = parsed
        self.rows = {m: [0] * 6 for m in METHODS + ("other",)}
        for (method, klass), n in requests.items():
            self.rows[method][STATUS_CLASSES.index(klass) + 1] += n
        return True


def parse_counts(data: Optional[Dict[str, Any]], bounds: Optional[Tuple[float, ...]] = None
                 ) -> Optional[Tuple[Dict[Tuple[str, str], int], List[int], float]]:
    """(requests, buckets, sum) from a metrics file's JSON, None when it is not one (or has other bounds)."""
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return None
    try:
        file_bounds = tuple(float(b) for b in data["bounds"])
        if bounds is not None and file_bounds != tuple(bounds):
            return None
        buckets = [int(n) for n in data["buckets"]]
        if len(buckets) != len(file_bounds) + 1 or min(buckets, default=0) < 0:
            return None
        requests: Dict[Tuple[str, str], int] = {}
        for method, klass, n in data["requests"]:
            if (method in METHODS or method == "other") and klass in STATUS_CLASSES and int(n) >= 0:
                requests[(method, klass)] = int(n)
        total = float(data["sum"])
    except (KeyError, TypeError, ValueError):
        return None
    return requests, buckets, total


class RequestCounter:
    """ASGI wrapper: counts HTTP requests into ``counts``; other scopes pass straight through."""

    def __init__(self, app: ASGIApp, counts: Counts, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app, self.counts, self.clock = app, counts, clock

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        clock = self.clock
        start = clock()
        status = 0

        # No annotations here: they would be evaluated each time this function is made, once
        # per request (``Awaitable[None]`` alone cost 0.25 us, a fifth of the wrapper).
        def send_counted(message):
            # A plain function returning send's awaitable: no extra coroutine per message.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.counts.observe(scope["method"], status, clock() - start)


class MetricsFile:
    """The worker's side of ``<state_dir>/<name>.metrics``: loaded at start, written on beats."""

    def __init__(self, path: str, counts: Counts) -> None:
        self.path, self.counts = path, counts
        self._complained = False

    def load(self) -> None:
        self.counts.load(read_json(self.path, MAX_METRICS_BYTES))
        self.counts.changed = True  # write once at start: the exporter then sees this incarnation

    def flush(self) -> None:
        if not self.counts.changed:
            return
        try:
            # No fsync: a beat's worth of counts lost to a power cut is an undercount, and
            # an fsync per second per worker would cost the event loop more than the counting.
            write_json_atomic(self.path, self.counts.to_json(os.getpid(), time.time()), mode=0o644, sync=False)
            self.counts.changed = False
        except OSError as exc:
            if not self._complained:
                self._complained = True
                import sys

                print(f"supervisor-fastapi worker: cannot write {self.path} ({exc}); request counts are kept in "
                      "memory and written on a later beat", file=sys.stderr, flush=True)


class MeteredState:
    """The worker's ready/heartbeat file, plus a metrics flush on each beat and at the end."""

    def __init__(self, state: Any, metrics: MetricsFile) -> None:
        self.state, self.metrics = state, metrics

    def ready(self) -> None:
        self.state.ready()
        self.metrics.flush()

    def beat(self) -> None:
        self.state.beat()
        self.metrics.flush()

    def gone(self) -> None:
        self.metrics.flush()
        self.state.gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)


def metered_config(config_cls: Any, counts: Counts) -> Any:
    """A subclass of uvicorn.Config whose loaded app is wrapped in a RequestCounter (the worker
    passes uvicorn.Config; kept as an argument so this module imports no uvicorn)."""

    class MeteredConfig(config_cls):
        loaded_app: Any

        def load(self) -> None:
            super().load()
            self.loaded_app = RequestCounter(self.loaded_app, counts)

    return MeteredConfig
