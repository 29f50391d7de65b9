"""The measurements: throughput and latency (all contenders up, runs alternated), then, on a
fresh deployment per contender and round, kill -9 recovery and restarts under load."""

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import psutil
from contenders import Contender
from load import Load, run_load
from procs import memory_of, probe, wait_until


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run (full or smoke)."""

    duration: float  # seconds of each throughput/latency run
    warmup: float
    rest: float  # idle seconds before memory is measured
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
    return {"ok": ok, "method": method or c.restart_method,
            "client": "connection-per-request" if close else "keep-alive",
            "command_s": command_s, "restart_s": restart_s,
            "within_load": plan.restart_lead + restart_s <= plan.restart_duration,
            "load": result.as_dict()}


def cpu_seconds(pids: List[int]) -> Dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def measure_throughput(c: Contender, plan: Plan, conns: int) -> Dict[str, Any]:
    """One wrk run on keep-alive connections, with the CPU each worker and the manager used meanwhile."""
    workers = c.worker_pids()
    before, manager_before = cpu_seconds(workers), cpu_seconds([c.root])
    r = run_load(plan.tool, c.port, conns, plan.duration, threads=1 if conns == 1 else 2)
    after, manager_after = cpu_seconds(workers), cpu_seconds([c.root])
    out = r.as_dict()
    used = [after[p] - before[p] for p in workers if p in before and p in after]
    out["worker_cpu_s"] = used
    out["busiest_worker_share"] = max(used) / sum(used) if used and sum(used) > 0 else None
    out["manager_cpu_s"] = sum(manager_after.values()) - sum(manager_before.values())
    # CPU per request is less sensitive than req/s to what else the machine is running.
    out["worker_cpu_us_per_request"] = sum(used) / r.requests * 1e6 if r.requests and used else None
    return out


def serve_phase(contenders: List[Contender], plan: Plan, rounds: int, log: Callable[[str], None]
                ) -> Dict[str, Dict[str, Any]]:
    """Throughput, latency and memory with every contender up at once, runs alternated A B C D.

    Idle deployments cost next to no CPU, so keeping them all up lets each round measure
    every contender within a minute or two; the order rotates from round to round. Returns,
    per contender key, ``error`` (or None) and ``rounds``: one record per round.
    """
    out: Dict[str, Dict[str, Any]] = {c.key: {"error": None, "rounds": []} for c in contenders}
    up: List[Contender] = []
    try:
        for c in contenders:
            try:
                c.start()
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                out[c.key]["error"] = f"start: {type(exc).__name__}: {exc}"
        for c in contenders:
            if out[c.key]["error"]:
                continue
            try:
                c.wait_ready(90)
                if plan.warmup:
                    run_load(plan.tool, c.port, 16, plan.warmup, threads=2)
                up.append(c)
                log(f"  {c.key}: up on port {c.port}, workers {c.worker_pids()}, warmed up")
            except Exception as exc:  # noqa: BLE001
                out[c.key]["error"] = f"start: {type(exc).__name__}: {exc}"
                log(f"  {c.key}: FAILED to start: {out[c.key]['error']}")
        for r in range(rounds):
            order = up[r % len(up):] + up[:r % len(up)] if up else []
            log(f"  round {r + 1}/{rounds}: {' '.join(c.key for c in order)}")
            for c in order:
                if out[c.key]["error"]:
                    continue
                rec: Dict[str, Any] = {"round": r}
                try:
                    for conns in (1, 64):
                        rec[f"c{conns}"] = x = measure_throughput(c, plan, conns)
                        share = x["busiest_worker_share"]
                        log(f"    {c.key:>8} {conns:>2} conn: {x['rps']:8.0f} req/s  "
                            f"p50 {x['latency_ms']['50']:7.2f} ms"
                            f"  p99 {x['latency_ms']['99']:7.2f} ms  failed {x['failed']}"
                            + (f"  busiest worker {share:.0%} of worker CPU" if share else ""))
                except Exception as exc:  # noqa: BLE001
                    out[c.key]["error"] = f"round {r + 1} load: {type(exc).__name__}: {exc}"
                    log(f"    {c.key}: FAILED: {out[c.key]['error']}")
                out[c.key]["rounds"].append(rec)
            time.sleep(plan.rest)  # every deployment idle: memory at rest
            for c in order:
                memory = memory_of(c.root, c.worker_pids())
                for rec in out[c.key]["rounds"][-1:]:
                    rec["memory"] = memory
    finally:
        for c in contenders:
            try:
                c.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"  {c.key}: stop failed: {exc}")
    return out


def resilience_slot(c: Contender, plan: Plan, log: Callable[[str], None]) -> Dict[str, Any]:
    """On a fresh deployment: time to start, kill -9 recovery, restarts under load; ``error`` if a step failed."""
    rec: Dict[str, Any] = {"error": None}
    step = "start"
    try:
        c.start()
        rec["ready_s"] = c.wait_ready(90)
        rec["restart_method"] = c.restart_method
        log(f"    {c.key}: ready in {rec['ready_s']:.2f} s, workers {c.worker_pids()}")
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
    except Exception as exc:  # noqa: BLE001 - one contender's failure is reported, the run goes on
        rec["error"] = f"{step}: {type(exc).__name__}: {exc}"
        log(f"    FAILED at {rec['error']}")
    finally:
        c.stop()
    return rec


def fmt_s(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} s"
