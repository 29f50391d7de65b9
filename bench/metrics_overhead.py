"""What [metrics] costs the workers: throughput with request counting on vs off, same run.

    python bench/metrics_overhead.py                  # 5 rounds of 10 s wrk runs, 1 and 64 connections
    python bench/metrics_overhead.py --rounds 1 --duration 2   # a quick look

Two supervisor-fastapi deployments of bench/app.py are up at once, identical but for a
``[metrics]`` table in one (the workers then count every request and write their counters
on each heartbeat; the exporter program runs beside them). A scraper reads the exporter's
/metrics every second during the whole run, 15 times more often than Prometheus's default.
Runs alternate off/on, on/off from round to round (bench/measure.serve_phase), so drift of
a shared machine hits both alike. Prints the median req/s of each and the on/off ratio per
connection count; ``--json`` keeps the raw rounds. No threshold is asserted here.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

import load
from contenders import StartError, SupervisorFastAPI
from measure import Plan, serve_phase
from run import free_port, log


class SupervisorFastAPIMetrics(SupervisorFastAPI):
    """The same deployment with ``[metrics]``: counting workers plus the exporter program."""

    key = "sf-metrics"
    label = "supervisor-fastapi with [metrics]"

    def prepare(self) -> None:
        super().prepare()
        import tomli_w

        try:
            import tomllib  # type: ignore[import-not-found]
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        with open(self.spec_path, "rb") as f:
            spec = tomllib.load(f)
        self.metrics_port = free_port()
        spec["metrics"] = {"bind": f"127.0.0.1:{self.metrics_port}"}
        with open(self.spec_path, "w") as f:
            f.write(tomli_w.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "render", "-c", self.spec_path,
                               "-o", self.conf_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise StartError(f"supervisor-fastapi render failed:\n{proc.stdout}")


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` seconds until stopped; counts answers and failures."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.done = threading.Event()
        self.ok = self.failed = 0
        self.last = ""

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                self.last = resp.read().decode()
                conn.close()
                self.ok += resp.status == 200
                self.failed += resp.status != 200
            except OSError:
                self.failed += 1


def requests_counted(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("supervisor_fastapi_http_requests_total{"))


def micro(n: int = 200_000) -> Dict[str, float]:
    """The wrapper's own cost per request, in-process: a trivial ASGI app called ``n`` times
    with and without RequestCounter on one event loop (no sockets, no HTTP parsing). CPU time
    (process_time), best of 7 interleaved rounds: on a shared machine wall time mostly
    measures the neighbours."""
    import asyncio

    from supervisor_fastapi.runtime.reqcount import Counts, RequestCounter

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/"}

    async def loop(target: Any) -> float:
        t = time.process_time()
        for _ in range(n):
            await target(scope, receive, send)
        return (time.process_time() - t) / n

    wrapped = RequestCounter(app, Counts())
    plain, counted = [], []
    for _ in range(7):
        plain.append(asyncio.run(loop(app)))
        counted.append(asyncio.run(loop(wrapped)))
    plain_s, counted_s = min(plain), min(counted)
    return {"plain_us": plain_s * 1e6, "counted_us": counted_s * 1e6, "added_us": (counted_s - plain_s) * 1e6}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/metrics_overhead.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stack", choices=("auto", "asyncio-h11"), default="auto")
    p.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--json", default=None, help="write the raw rounds here")
    p.add_argument("--micro", action="store_true", help="only the in-process cost of the counting wrapper")
    a = p.parse_args(argv)
    if a.micro:
        m = micro()
        log(f"RequestCounter in-process: trivial app {m['plain_us']:.2f} us/call, counted {m['counted_us']:.2f} "
            f"us/call: {m['added_us']:.2f} us added per request")
        return 0
    tool = load.choose_tool(a.load)
    plan = Plan(duration=a.duration, warmup=2, rest=0.5, restart_duration=0, restart_lead=0, restart_connections=0,
                restart_rate=0, keepalive_restart=False, extra_restarts=False, tool=tool)
    folder = tempfile.mkdtemp(prefix="sfm-")
    off = SupervisorFastAPI(a.workers, free_port(), os.path.join(folder, "off"), a.stack, False)
    on = SupervisorFastAPIMetrics(a.workers, free_port(), os.path.join(folder, "on"), a.stack, False)
    log(f"metrics overhead: {a.rounds} round(s) of {a.duration:g} s {tool} runs, {a.workers} workers, "
        f"stack {a.stack}; /metrics scraped every 1 s")
    scraper: Dict[str, Scraper] = {}
    original_wait = on.wait_ready

    def wait_and_scrape(timeout: float = 60.0) -> float:
        took = original_wait(timeout)
        scraper["s"] = Scraper(on.metrics_port)
        scraper["s"].start()
        return took

    original_stop = on.stop

    def stop_scraper_then(timeout: float = 60.0) -> None:
        if "s" in scraper:  # scrapes of a deployment being stopped would count as failures
            scraper["s"].done.set()
            scraper["s"].join(10)
        original_stop(timeout)

    on.wait_ready = wait_and_scrape  # type: ignore[method-assign]
    on.stop = stop_scraper_then  # type: ignore[method-assign]
    t0 = time.monotonic()
    served = serve_phase([off, on], plan, a.rounds, log)
    s = scraper.get("s")
    if s is not None:
        s.done.set()
        s.join(10)
    errors = {k: v["error"] for k, v in served.items() if v["error"]}
    if errors:
        log(f"FAILED: {errors}; deployments' folders and logs kept in {folder}")
        return 1
    shutil.rmtree(folder, ignore_errors=True)
    summary: Dict[str, Any] = {"command": "python bench/metrics_overhead.py " + " ".join(sys.argv[1:] if argv is None
                                                                                          else argv),
                               "rounds": a.rounds, "duration": a.duration, "workers": a.workers, "tool": tool,
                               "stack": a.stack, "scrapes": {"ok": s.ok if s else 0, "failed": s.failed if s else 0},
                               "requests_counted_at_last_scrape": requests_counted(s.last) if s else 0,
                               "elapsed_s": round(time.monotonic() - t0, 1), "raw": served}
    for conns in (1, 64):
        rps: Dict[str, List[float]] = {k: [r[f"c{conns}"]["rps"] for r in served[k]["rounds"]] for k in served}
        cpu: Dict[str, List[float]] = {k: [r[f"c{conns}"]["worker_cpu_us_per_request"] or 0.0
                                           for r in served[k]["rounds"]] for k in served}
        ratios = [b / a_ for a_, b in zip(rps["sf"], rps["sf-metrics"]) if a_]
        cpu_ratios = [b / a_ for a_, b in zip(cpu["sf"], cpu["sf-metrics"]) if a_]
        summary[f"c{conns}"] = {"off_rps": statistics.median(rps["sf"]), "on_rps": statistics.median(rps["sf-metrics"]),
                                "ratio_median": statistics.median(ratios), "ratios": ratios,
                                "off_cpu_us": statistics.median(cpu["sf"]),
                                "on_cpu_us": statistics.median(cpu["sf-metrics"]),
                                "cpu_ratio_median": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios}
        x = summary[f"c{conns}"]
        log(f"{conns:>2} connection(s): off {x['off_rps']:.0f} req/s, on {x['on_rps']:.0f} req/s (medians); "
            f"on/off per round {', '.join(f'{r:.3f}' for r in ratios)}; median {x['ratio_median']:.3f}")
        log(f"   worker CPU per request: off {x['off_cpu_us']:.1f} us, on {x['on_cpu_us']:.1f} us (medians); "
            f"on/off per round {', '.join(f'{r:.3f}' for r in cpu_ratios)}; median {x['cpu_ratio_median']:.3f}")
    log(f"scrapes during the run: {summary['scrapes']}; requests counted at the last scrape: "
        f"{summary['requests_counted_at_last_scrape']:.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
