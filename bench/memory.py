"""Memory of a whole deployment at rest, contender by contender, in one run.

    python bench/memory.py                        # sf, gunicorn, uvicorn; 3 rounds; 2 workers each
    python bench/memory.py --rounds 5 --contenders sf,gunicorn,uvicorn,docs --json out.json

Each round starts every contender in turn on a fresh deployment (alone on the machine, as it
would be deployed; the order rotates from round to round), waits until each worker answers,
sends ``--requests`` requests on new connections (so every worker has imported and served
the app), lets it rest (10 s: supervisor-fastapi's event listener exits 5 s after its last event
and is started again by the plugin for the next one that needs it), then sums over its whole
process tree (the manager, the workers, and for supervisor-fastapi the event listener if it
runs and any watchdog):

- **PSS**: each shared page split among the processes that map it (the deployment's share
  of the machine's memory; shared libraries mapped by unrelated processes lower it a little).
- **USS**: the pages only that process maps (what stopping it would free; independent of what
  else runs).
- **RSS**: every resident page, shared ones counted in full in each process.

Per process it also prints RSS, PSS and USS by role, so the listener's RSS stands alone.
Medians over the rounds; the ratios are taken against gunicorn + UvicornWorker measured in the
same run. No threshold is asserted: exit status 1 only when a contender failed to start.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import psutil
from contenders import CONTENDERS, Contender
from procs import get_pid, tree

MB = 1e6


def role(c: Contender, p: psutil.Process) -> str:
    """manager, worker, listener, watchdog or other (uvicorn's multiprocessing helper)."""
    if p.pid == c.root:
        return "manager"
    if p.pid in c.worker_pids():
        return "worker"
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    if "supervisor_fastapi.listener" in cmd:
        return "listener"
    if "supervisor_fastapi.runtime.watchdog" in cmd:
        return "watchdog"
    return "other"


def sample(c: Contender) -> Dict[str, Any]:
    """One reading of every process of the contender's tree: role, rss, pss, uss (bytes)."""
    procs = []
    for p in tree(c.root):
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        procs.append({"role": role(c, p), "pid": p.pid, "rss": full.rss, "pss": full.pss, "uss": full.uss})
    procs.sort(key=lambda x: ("manager", "listener", "watchdog", "worker", "other").index(x["role"]))
    total = {k: sum(x[k] for x in procs) for k in ("rss", "pss", "uss")}
    return {"processes": procs, **total}


def measure(c: Contender, requests: int, rest: float, samples: int) -> Dict[str, Any]:
    """Start, warm up, rest, read ``samples`` times; the reading with the median PSS."""
    c.start()
    try:
        ready_s = c.wait_ready(90)
        answered = sum(1 for _ in range(requests) if get_pid(c.port, timeout=5.0))
        # supervisor-fastapi's listener while it runs (the warm-up's events keep it up): read
        # before it exits at rest, so its own size is reported too.
        running_listener = [p for p in sample(c)["processes"] if p["role"] == "listener"]
        time.sleep(rest)
        readings = []
        for i in range(samples):
            if i:
                time.sleep(0.5)
            readings.append(sample(c))
        readings.sort(key=lambda r: r["pss"])
        out = readings[len(readings) // 2]
        out.update(ready_s=ready_s, answered=answered, running_listener=running_listener)
        return out
    finally:
        c.stop()


def med(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summarize(runs: List[Dict[str, Any]], keys: List[str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for k in keys:
        mine = [r for r in runs if r["key"] == k and r.get("ok")]
        s: Dict[str, Any] = {k2: med([r[k2] for r in mine]) for k2 in ("rss", "pss", "uss")}
        roles = sorted({p["role"] for r in mine for p in r["processes"]})
        for rl in roles:
            for k2 in ("rss", "pss", "uss"):
                # Per process of that role (e.g. each worker), median over rounds and processes.
                s[f"{rl}.{k2}"] = med([p[k2] for r in mine for p in r["processes"] if p["role"] == rl])
            s[f"{rl}.count"] = med([sum(1 for p in r["processes"] if p["role"] == rl) for r in mine])
        s["roles"] = roles
        s["rounds"] = len(mine)
        running = [p for r in mine for p in r.get("running_listener") or []]
        for k2 in ("rss", "pss", "uss"):
            s[f"running_listener.{k2}"] = med([p[k2] for p in running])
        out[k] = s
    return out


def f_mb(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v / MB:.1f} MB"


def report(summary: Dict[str, Dict[str, Any]], keys: List[str], workers: int) -> List[str]:
    base = summary.get("gunicorn", {})
    lines = [f"Memory at rest, {workers} workers each (medians; MB = 10^6 bytes)", "",
             "| | PSS (sum) | ÷ gunicorn | USS (sum) | ÷ gunicorn | RSS (sum) | processes |",
             "|---|---|---|---|---|---|---|"]
    for k in keys:
        s = summary[k]
        ratio = {m: (f"{s[m] / base[m]:.2f}x" if s.get(m) and base.get(m) else "n/a") for m in ("pss", "uss")}
        count = sum(s.get(f"{rl}.count") or 0 for rl in s["roles"])
        lines.append(f"| {CONTENDERS[k].label} | {f_mb(s['pss'])} | {ratio['pss']} | {f_mb(s['uss'])} | "
                     f"{ratio['uss']} | {f_mb(s['rss'])} | {count:g} |")
    lines += ["", "| | process | RSS | PSS | USS |", "|---|---|---|---|---|"]
    for k in keys:
        s = summary[k]
        for rl in s["roles"]:
            n = s.get(f"{rl}.count") or 0
            lines.append(f"| {CONTENDERS[k].key} | {rl}" + (f" (each of {n:g})" if n > 1 else "")
                         + f" | {f_mb(s[f'{rl}.rss'])} | {f_mb(s[f'{rl}.pss'])} | {f_mb(s[f'{rl}.uss'])} |")
        if s.get("running_listener.rss") is not None and "listener" not in s["roles"]:
            lines.append(f"| {CONTENDERS[k].key} | listener while it runs (not at rest) | "
                         f"{f_mb(s['running_listener.rss'])} | {f_mb(s['running_listener.pss'])} | "
                         f"{f_mb(s['running_listener.uss'])} |")
    return lines


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--contenders", default="sf,gunicorn,uvicorn", help=f"subset of {','.join(CONTENDERS)}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=200, help="requests sent to each deployment before reading")
    # Longer than supervisor-fastapi's listener takes to exit when idle (5 s after its last
    # event, generate/conf.py LISTENER_IDLE_EXIT): at rest, a deployment runs no listener.
    p.add_argument("--rest", type=float, default=10.0, help="idle seconds before reading")
    p.add_argument("--samples", type=int, default=3, help="readings per deployment (the median one is kept)")
    p.add_argument("--stack", choices=("auto", "asyncio-h11"), default="auto")
    p.add_argument("--json", default=None, help="write the raw readings and the summary here")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.contenders.split(",") if k.strip()]
    if not keys or any(k not in CONTENDERS for k in keys):
        print(f"bench/memory.py: choose contenders from {', '.join(CONTENDERS)}", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="sfm-")  # short: supervisord's control socket path must fit
    runs: List[Dict[str, Any]] = []
    for r in range(a.rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            c = CONTENDERS[k](a.workers, free_port(), os.path.join(folder, f"{r}-{k}"), a.stack, False)
            rec: Dict[str, Any] = {"key": k, "round": r}
            try:
                rec.update(measure(c, a.requests, a.rest, a.samples), ok=True)
                listener = [x["rss"] for x in rec["processes"] if x["role"] == "listener"]
                print(f"round {r + 1}/{a.rounds} {k:>8}: PSS {f_mb(rec['pss'])}, USS {f_mb(rec['uss'])}, "
                      f"RSS {f_mb(rec['rss'])}" + (f", listener RSS {f_mb(listener[0])}" if listener else ""),
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                print(f"round {r + 1}/{a.rounds} {k:>8}: FAILED {rec['error']}", flush=True)
            runs.append(rec)
    summary = summarize(runs, keys)
    print("\n" + "\n".join(report(summary, keys, a.workers)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"argv": sys.argv, "workers": a.workers, "runs": runs, "summary": summary}, f, indent=1)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
