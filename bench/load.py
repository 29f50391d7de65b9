"""Running the load generator: wrk when installed, else bench/pyload.py; one result record."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk_report.lua")
PYLOAD = os.path.join(HERE, "pyload.py")


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    errors: Dict[str, int]
    latency_ms: Dict[str, float]  # percentile ("50", "99", ...) -> ms
    latency_mean_ms: float
    latency_max_ms: float
    tool: str
    raw: str = field(default="", repr=False)
    failure_window_s: Optional[float] = None  # first to last failure (bench/pyload.py only)
    first_failure_s: Optional[float] = None
    # bench/pyload.py only: the longest stretch with no successful answer, and the longest
    # few as [time.monotonic() at its start, seconds].
    max_gap_s: Optional[float] = None
    gaps: List[List[float]] = field(default_factory=list)
    start_monotonic: Optional[float] = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx/3xx answer: socket errors of every kind plus bad statuses."""
        return sum(self.errors.values())

    def as_dict(self) -> Dict[str, object]:
        return {"requests": self.requests, "duration_s": self.duration_s, "rps": self.rps,
                "errors": self.errors, "failed": self.failed, "latency_ms": self.latency_ms,
                "latency_mean_ms": self.latency_mean_ms, "latency_max_ms": self.latency_max_ms,
                "tool": self.tool, "failure_window_s": self.failure_window_s, "first_failure_s": self.first_failure_s,
                "max_gap_s": self.max_gap_s, "gaps": self.gaps, "start_monotonic": self.start_monotonic}


def wrk_path() -> Optional[str]:
    return shutil.which("wrk")


def choose_tool(preference: str = "auto") -> str:
    """'wrk' or 'python'; 'wrk' requested but missing is an error."""
    if preference == "python":
        return "python"
    if wrk_path():
        return "wrk"
    if preference == "wrk":
        raise SystemExit("bench: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)")
    return "python"


def tool_version(tool: str) -> str:
    if tool != "wrk":
        return f"bench/pyload.py (Python {sys.version.split()[0]}, asyncio)"
    proc = subprocess.run([wrk_path() or "wrk", "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=10)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "wrk"


def command(tool: str, port: int, connections: int, duration: float, close: bool = False,
            path: str = "/", threads: Optional[int] = None, timeout: float = 5.0, rate: float = 0.0) -> List[str]:
    """The load generator's argv; ``rate`` (per connection, per second) needs the Python generator."""
    if tool == "wrk" and not rate:
        t = threads or max(1, min(2, connections))
        argv = [wrk_path() or "wrk", "-t", str(t), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
                "--timeout", f"{timeout:g}s", "-s", WRK_SCRIPT]
        if close:
            argv += ["-H", "Connection: close"]
        return argv + [f"http://127.0.0.1:{port}{path}"]
    argv = [sys.executable, PYLOAD, "--port", str(port), "--path", path, "--connections", str(connections),
            "--duration", f"{duration:g}", "--timeout", f"{timeout:g}"]
    return argv + (["--close"] if close else []) + (["--rate", f"{rate:g}"] if rate else [])


def parse(tool: str, output: str) -> LoadResult:
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            return LoadResult(
                requests=int(d["requests"]), duration_s=d["duration_us"] / 1e6, errors=dict(d["errors"]),
                latency_ms={k: v / 1000.0 for k, v in d["latency_us"].items()},
                latency_mean_ms=d["latency_mean_us"] / 1000.0, latency_max_ms=d["latency_max_us"] / 1000.0,
                tool=tool, raw=output, failure_window_s=d.get("failure_window_s"),
                first_failure_s=d.get("first_failure_s"), max_gap_s=d.get("max_gap_s"),
                gaps=d.get("gaps") or [], start_monotonic=d.get("start_monotonic"))
    raise RuntimeError(f"{tool} printed no result:\n{output[-2000:]}")


class Load:
    """A load run in the background: start(), then wait() for its result."""

    def __init__(self, tool: str, port: int, connections: int, duration: float, close: bool = False,
                 path: str = "/", threads: Optional[int] = None, timeout: float = 5.0, rate: float = 0.0) -> None:
        self.tool = "python" if rate else tool
        self.duration = duration
        self.argv = command(self.tool, port, connections, duration, close, path, threads, timeout, rate)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Load":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        return self

    def wait(self) -> LoadResult:
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=self.duration + 60)
        finally:
            self.kill()
        return parse(self.tool, out)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


def run_load(tool: str, port: int, connections: int, duration: float, close: bool = False, path: str = "/",
             threads: Optional[int] = None, timeout: float = 5.0) -> LoadResult:
    """Run the load generator in the foreground and return its figures."""
    return Load(tool, port, connections, duration, close, path, threads, timeout).start().wait()
