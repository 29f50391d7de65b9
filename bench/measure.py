"""One contender's slot in a round: start it, measure everything, stop it."""

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from contenders import Contender
from load import Load, run_load
from procs import memory_of, probe, wait_until


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run (full or smoke)."""

    duration: float  # seconds of each throughput/latency run
    warmup: float
    rest: float  # idle seconds after the warm-up before memory is measured
    restart_duration: float  # seconds of load around each restart
    restart_lead: float  # seconds of load before the restart is issued
    restart_connections: int
    restart_rate: float  # requests per second per connection, on a fixed schedule
    keepalive_restart: bool
    extra_restarts: bool  # also the restart methods a contender offers besides its own (Contender.extra_restarts)
    tool: str  # "wrk" | "python"


def measure_kill(c: Contender, timeout: float = 30.0) -> Dict[str, Any]:
    """kill -9 one worker; seconds until a new worker process exists and until one answers."""
    old = set(c.worker_pids())
    victim = min(old)
    spawned: Dict[str, float] = {}
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def replacement_answers() -> bool:
        if "spawn_s" not in spawned and set(c.worker_pids()) - old:
            spawned["spawn_s"] = time.monotonic() - t0
        return bool(probe(c.port, parallel=4, timeout=1.0) - old)

    ok, answered = wait_until(replacement_answers, timeout, interval=0.005)
    out: Dict[str, Any] = {"ok": ok, "answer_s": answered if ok else None, "spawn_s": spawned.get("spawn_s")}
    c.wait_ready(60)  # every worker back before the next measurement
    return out


def measure_restart(c: Contender, plan: Plan, close: bool, action: Optional[Callable[[], None]] = None,
                    method: Optional[str] = None) -> Dict[str, Any]:
    """A restart under load (the contender's own method unless ``action`` is given); failed requests and duration."""
    old = set(c.worker_pids())
    load = Load(plan.tool, c.port, plan.restart_connections, plan.restart_duration, close=close,
                timeout=10.0, rate=plan.restart_rate).start()
    try:
        time.sleep(plan.restart_lead)
        t0 = time.monotonic()
        (action or c.restart)()
        command_s = time.monotonic() - t0
        seen: set = set()
        # Done when every old worker is gone and each new one has answered: gunicorn, for one,
        # retires the old workers before the new ones have imported the app.
        ok, _ = wait_until(lambda: c.replaced(old) and c.all_answering(seen), plan.restart_duration + 60,
                           interval=0.02)
        restart_s = time.monotonic() - t0
        result = load.wait()
    finally:
        load.kill()
    c.wait_ready(60)
    return {"ok": ok, "method": method or c.restart_method, "client": "connection-per-request" if close else "keep-alive",
            "command_s": command_s, "restart_s": restart_s,
            "within_load": plan.restart_lead + restart_s <= plan.restart_duration,
            "load": result.as_dict()}


def measure_contender(c: Contender, plan: Plan, log: Any) -> Dict[str, Any]:
    """Everything measured on one fresh deployment; ``error`` is set if anything failed."""
    rec: Dict[str, Any] = {"key": c.key, "label": c.label, "ok": False, "error": None}
    step = "start"
    try:
        c.start()
        rec["ready_s"] = c.wait_ready(60)
        rec["restart_method"] = c.restart_method
        log(f"    ready in {rec['ready_s']:.2f} s, workers {c.worker_pids()}")
        step = "warm-up"
        run_load(plan.tool, c.port, 16, plan.warmup, threads=2)
        time.sleep(plan.rest)
        step = "memory"
        rss, pss, n = memory_of(c.root)
        rec["memory"] = {"rss": rss, "pss": pss, "processes": n}
        for conns in (1, 64):
            step = f"load with {conns} connection(s)"
            r = run_load(plan.tool, c.port, conns, plan.duration, threads=1 if conns == 1 else 2)
            rec[f"c{conns}"] = r.as_dict()
            log(f"    {conns:>2} conn: {r.rps:8.0f} req/s  p50 {r.latency_ms['50']:7.2f} ms  "
                f"p99 {r.latency_ms['99']:7.2f} ms  failed {r.failed}")
        step = "kill -9"
        rec["kill9"] = measure_kill(c)
        log(f"    kill -9: new worker answering after {fmt_s(rec['kill9']['answer_s'])}")
        restarts = [True] + ([False] if plan.keepalive_restart else [])
        for close in restarts:
            name = "restart_close" if close else "restart_keepalive"
            step = f"restart ({'connection-per-request' if close else 'keep-alive'})"
            rec[name] = r2 = measure_restart(c, plan, close)
            log(f"    {step}: {r2['load']['failed']} failed of {r2['load']['requests'] + r2['load']['failed']}"
                f" ({r2['load']['errors']}), restart took {r2['restart_s']:.2f} s"
                + ("" if r2["ok"] else " (NOT COMPLETED)"))
        for method, action in (c.extra_restarts() if plan.extra_restarts else {}).items():
            step = f"restart by {method}"
            r3 = measure_restart(c, plan, True, action, method)
            rec.setdefault("extra_restarts", {})[method] = r3
            log(f"    {step} (connection-per-request): {r3['load']['failed']} failed of "
                f"{r3['load']['requests'] + r3['load']['failed']}, restart took {r3['restart_s']:.2f} s")
        rec["ok"] = True
    except Exception as exc:  # noqa: BLE001 - one contender's failure is reported, the run goes on
        rec["error"] = f"{step}: {type(exc).__name__}: {exc}"
        log(f"    FAILED at {rec['error']}")
    finally:
        c.stop()
    return rec


def fmt_s(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} s"
