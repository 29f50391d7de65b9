"""A small HTTP/1.1 load generator, used only when wrk is not installed.

    python bench/pyload.py --port 8000 --connections 64 --duration 10 [--close] [--rate R]

It prints the same ``BENCH_JSON {...}`` line as bench/wrk_report.lua. It runs in its own
process with asyncio (uvloop when installed); on a small machine it saturates a CPU long
before the servers do, so its throughput figures are lower bounds and its latencies
include its own queueing. wrk is the reference for throughput: ``apt-get install -y wrk``.

With ``--rate R`` each connection sends R requests a second on a fixed schedule and every
scheduled request is counted once, as answered or failed. That is what the restart
measurement uses: wrk retries a refused connection in a tight loop, so its error count
says how fast it loops, not how many requests a user would have lost.
"""

import argparse
import asyncio
import json
import time
from typing import Dict, List, Optional


class Stats:
    def __init__(self) -> None:
        self.latencies_us: List[float] = []
        self.errors: Dict[str, int] = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        self.failure_times: List[float] = []
        self.success_times: List[float] = []  # time.monotonic() of each 2xx/3xx answer

    def fail(self, kind: str) -> None:
        self.errors[kind] += 1
        self.failure_times.append(time.monotonic())


async def read_response(reader: asyncio.StreamReader) -> "tuple[int, bool]":
    """(status, server wants to close) of one response; raises on a short read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


async def client(host: str, port: int, path: str, close: bool, deadline: float, timeout: float,
                 stats: Stats, interval: float = 0.0, offset: float = 0.0) -> None:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    writer: Optional[asyncio.StreamWriter] = None
    reader: Optional[asyncio.StreamReader] = None
    next_at = time.monotonic() + offset
    while time.monotonic() < deadline:
        if interval:
            # A fixed schedule, without catching up in bursts after a slow answer.
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic())
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, asyncio.TimeoutError):
                stats.fail("connect")
                if not interval:
                    await asyncio.sleep(0.001)
                continue
        assert reader is not None
        start = time.perf_counter()
        try:
            writer.write(request)
        except OSError:
            stats.fail("write")
            writer, reader = None, None
            continue
        try:
            status, server_close = await asyncio.wait_for(read_response(reader), timeout)
        except asyncio.TimeoutError:
            stats.fail("timeout")
            writer.close()
            writer, reader = None, None
            continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            stats.fail("read")
            writer.close()
            writer, reader = None, None
            continue
        stats.latencies_us.append((time.perf_counter() - start) * 1e6)
        if status >= 400:
            stats.fail("status")
        else:
            stats.success_times.append(time.monotonic())
        if close or server_close:
            writer.close()
            writer, reader = None, None
    if writer is not None:
        writer.close()


def longest_gaps(times: List[float], start: float, end: float, keep: int = 5) -> List[List[float]]:
    """The ``keep`` longest stretches with no successful answer, as [start, seconds], longest first.

    The stretches before the first answer and after the last one count too: a server that
    stops answering for good shows up as one long gap up to ``end``.
    """
    edges = [start] + sorted(times) + [end]
    gaps = [[a, b - a] for a, b in zip(edges, edges[1:])]
    return sorted(gaps, key=lambda g: -g[1])[:keep]


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


async def run(host: str, port: int, path: str, connections: int, duration: float, close: bool,
              timeout: float, rate: float = 0.0) -> Dict[str, object]:
    stats = Stats()
    start = time.monotonic()
    deadline = start + duration
    interval = 1.0 / rate if rate else 0.0
    await asyncio.gather(*(client(host, port, path, close, deadline, timeout, stats, interval,
                                  interval * i / connections) for i in range(connections)))
    elapsed = time.monotonic() - start
    lat = sorted(stats.latencies_us)
    ft = stats.failure_times
    gaps = longest_gaps(stats.success_times, start, start + elapsed)
    return {
        # Absolute time.monotonic() values (system-wide on Linux), so that a caller in another
        # process can line the gaps up with what it did meanwhile (bench/chaos.py: the kills).
        "start_monotonic": start,
        "max_gap_s": gaps[0][1] if gaps else elapsed,
        "gaps": gaps,
        "failure_window_s": (ft[-1] - ft[0]) if ft else 0.0,
        "first_failure_s": (ft[0] - start) if ft else None,
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        "errors": stats.errors,
        "latency_us": {str(q): percentile(lat, q) for q in (50, 75, 90, 99, 99.9)},
        "latency_mean_us": sum(lat) / len(lat) if lat else 0.0,
        "latency_max_us": lat[-1] if lat else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--close", action="store_true", help="one connection per request (Connection: close)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="requests per second per connection on a fixed schedule (default 0: as fast as possible)")
    a = p.parse_args()
    coro = run(a.host, a.port, a.path, a.connections, a.duration, a.close, a.timeout, a.rate)
    try:
        import uvloop  # type: ignore[import-not-found]

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
