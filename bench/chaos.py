"""Chaos and recovery: kill -9 of workers under load, as an OOM killer or an operator would.

    python bench/run.py --only chaos,recovery        # both measurements, every chaos contender
    python bench/chaos.py [run.py options]           # the same

Chaos: on a fresh deployment per contender and client kind, a load of fixed-rate clients
(bench/pyload.py --rate: every scheduled request is counted once, answered or failed) runs
while a random serving worker is killed with SIGKILL every ``interval`` seconds for
``duration`` seconds. Measured: requests sent, failed requests, failed requests per kill,
and the longest stretch with no successful answer as the load client saw it; then how long
after the last kill every worker was back (N workers, no killed pid left, each answering).

Recovery: on a fresh deployment per contender and round, one kill -9 and the seconds until
a worker that did not exist before answers (bench/measure.py measure_kill); the median over
the rounds is the figure.
"""

import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from contenders import Contender
from load import Load
from measure import measure_kill
from procs import is_alive, probe

CHAOS_KEYS = ("sf", "uvicorn", "gunicorn")  # the contenders of issue #8's chaos comparison


@dataclass(frozen=True)
class ChaosPlan:
    duration: float  # seconds of kills
    interval: float  # seconds between kills
    lead: float  # seconds of load before the first kill
    tail: float  # seconds of load after the last kill
    connections: int
    rate: float  # requests per second per connection
    timeout: float  # per request: a request waiting longer has failed
    restore_timeout: float  # after the chaos: seconds allowed for every worker to be back
    recovery_rounds: int
    seed: int


class Monkey:
    """Kills a random serving worker every ``interval`` s in a thread; records every kill.

    "Serving" means it answered a GET /pid: a worker killed before it answered is a
    start-up failure, which a supervisor may rightly back off. Only when no listed worker
    has answered yet is one of them killed anyway (the kill says so). Between kills it
    watches the worker list, so each kill gets the time its replacement process appeared
    (new pids go to the oldest kill still waiting); after the last kill it watches until
    every worker is back (N workers, no killed pid alive, each answering) or
    ``restore_timeout`` has passed.
    """

    def __init__(self, c: Contender, plan: ChaosPlan, t0: float, rng: random.Random) -> None:
        self.c, self.plan, self.t0, self.rng = c, plan, t0, rng
        self.kills: List[Dict[str, Any]] = []
        self.idle_ticks: List[float] = []  # tick times when no worker was there to kill
        self.seen: set = set()  # pids that answered a probe
        self.known: set = set()  # pids ever listed
        self.restored_s: Optional[float] = None  # after the last kill, None if never
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def listed(self) -> List[int]:
        try:
            return self.c.kill_candidates()
        except Exception:  # noqa: BLE001 - a manager that does not answer has no worker to kill
            return []

    def run(self) -> None:
        n = int(self.plan.duration // self.plan.interval)
        for i in range(n):
            at = self.plan.lead + i * self.plan.interval
            while self.now() < at:
                self.watch()
                if self.stop.wait(min(0.1, max(0.0, at - self.now()))):
                    return
            self.tick()
        last = self.kills[-1]["t"] if self.kills else self.now()
        answered: set = set()
        while self.now() < last + self.plan.restore_timeout and not self.stop.is_set():
            self.watch()
            if self.restored(answered):
                self.restored_s = self.now() - last
                return
            self.stop.wait(0.05)

    def watch(self) -> None:
        new = sorted(set(self.listed()) - self.known)
        self.known.update(new)
        waiting = [k for k in self.kills if k["replaced_s"] is None]
        for pid, kill in zip(new, waiting):
            kill["replaced_s"], kill["replacement"] = self.now() - kill["t"], pid

    def restored(self, answered: set) -> bool:
        killed = {k["pid"] for k in self.kills}
        try:
            pids = set(self.c.worker_pids())
            return (len(pids) == self.c.workers and not pids & killed and not any(is_alive(p) for p in killed)
                    and self.c.all_answering(answered))
        except Exception:  # noqa: BLE001 - the manager died: not restored
            return False

    def tick(self) -> None:
        now = self.now()
        listed = self.listed()
        self.known.update(listed)
        self.seen |= probe(self.c.port, parallel=8, timeout=0.3)
        serving = [p for p in listed if p in self.seen]
        pool = serving or listed
        if not pool:
            self.idle_ticks.append(now)
            return
        victim = self.rng.choice(pool)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills.append({"t": now, "pid": victim, "listed": listed, "had_answered": victim in self.seen,
                           "replaced_s": None, "replacement": None})


def run_chaos(c: Contender, plan: ChaosPlan, close: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    """One chaos run on a fresh deployment of ``c`` (started and stopped here)."""
    client = "connection-per-request" if close else "keep-alive"
    rec: Dict[str, Any] = {"key": c.key, "label": c.label, "client": client, "error": None}
    monkey: Optional[Monkey] = None
    try:
        c.start()
        c.wait_ready(90)
        total = plan.lead + plan.duration + plan.tail
        load = Load("python", c.port, plan.connections, total, close=close, timeout=plan.timeout,
                    rate=plan.rate).start()
        try:
            t0 = time.monotonic()
            monkey = Monkey(c, plan, t0, random.Random(f"{plan.seed}-{c.key}-{client}"))
            monkey.thread.start()
            result = load.wait()
            monkey.thread.join(plan.restore_timeout + 15)
        finally:
            if monkey:
                monkey.stop.set()
                monkey.thread.join(10)
            load.kill()
        rec["restored_after_last_kill_s"] = ok = monkey.restored_s
        rec["manager_view"] = c.manager_view()
        rec["replaced"] = sum(1 for k in monkey.kills if k["replaced_s"] is not None)
        load_d = result.as_dict()
        # Gaps as seconds since the load started, so they line up with the kill times.
        start = result.start_monotonic or t0
        rec["gaps"] = [[g[0] - start, g[1]] for g in result.gaps]
        rec["kill_offset_s"] = t0 - start  # the kill times are relative to t0
        rec.update(load=load_d, kills=monkey.kills, idle_ticks=monkey.idle_ticks, requests=result.requests,
                   failed=result.failed, sent=result.requests + result.failed,
                   failed_per_kill=result.failed / len(monkey.kills) if monkey.kills else None,
                   max_gap_s=result.max_gap_s)
        log(f"    {c.key:>8} {client:>22}: {len(monkey.kills)} kills"
            + (f" ({len(monkey.idle_ticks)} ticks found no worker)" if monkey.idle_ticks else "")
            + f", {result.failed} failed of {rec['sent']}"
            + (f" ({rec['failed_per_kill']:.1f} per kill)" if monkey.kills else "")
            + f", longest with no answer {fmt(result.max_gap_s)}, {rec['replaced']} replaced, every worker back "
            + (f"{ok:.2f} s after the last kill" if ok is not None
               else f"NOT within {plan.restore_timeout:g} s: {'; '.join(rec['manager_view'])}"))
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        rec["error"] = f"{type(exc).__name__}: {exc}"
        log(f"    {c.key} {client}: FAILED: {rec['error']}")
    finally:
        c.stop()
    rec["ok"] = rec["error"] is None
    return rec


def chaos_phase(make: Callable[[str, str], Contender], keys: List[str], plan: ChaosPlan,
                log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """Every chaos contender under both client kinds, a fresh deployment each, contenders rotated."""
    out = []
    for n, close in enumerate((True, False)):
        order = keys[n % len(keys):] + keys[:n % len(keys)]
        log(f"  {'connection-per-request' if close else 'keep-alive'} clients: {' '.join(order)}")
        for key in order:
            out.append(run_chaos(make(key, f"chaos-{n}-{key}"), plan, close, log))
    return out


def recovery_phase(make: Callable[[str, str], Contender], keys: List[str], rounds: int,
                   log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """kill -9 of one worker to a replacement answering, a fresh deployment per contender and round."""
    out = []
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        line = []
        for key in order:
            c = make(key, f"recovery-{r}-{key}")
            rec: Dict[str, Any] = {"key": key, "label": c.label, "round": r, "error": None}
            try:
                c.start()
                c.wait_ready(90)
                t0 = time.monotonic()
                rec.update(measure_kill(c))
                rec["restored_s"] = time.monotonic() - t0  # measure_kill waits for every worker
                if not rec["ok"]:
                    rec["error"] = "no new worker answered within 30 s"
                line.append(f"{key} {fmt(rec['answer_s'])}")
            except Exception as exc:  # noqa: BLE001
                rec["error"] = f"{type(exc).__name__}: {exc}"
                line.append(f"{key} FAILED ({rec['error'].splitlines()[0]})")
            finally:
                c.stop()
            rec["ok"] = rec["error"] is None
            out.append(rec)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(line))
    return out


def fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "chaos,recovery"] + sys.argv[1:]))
