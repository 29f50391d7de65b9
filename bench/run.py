"""Benchmark supervisor-fastapi side by side with the usual ways to run a FastAPI app.

    python bench/run.py                      # full run: writes docs/benchmarks.md, docs/img/*.png
    python bench/run.py --smoke              # a short run of every step (CI); writes to a temp folder
    python bench/run.py --only chaos,recovery  # rerun some phases; the others are kept from bench/results.json

Contenders, all serving bench/app.py with the same worker count on 127.0.0.1:
  docs      the Uvicorn docs' Supervisor recipe ([fcgi-program] + uvicorn --fd 0)
  sf        supervisor-fastapi (spec -> conf with `supervisor-fastapi render`, run by supervisord)
  uvicorn   uvicorn --workers N
  gunicorn  gunicorn -k uvicorn_worker.UvicornWorker -w N

Throughput and latency are measured with every contender up at once, one wrk run after the
other in an order rotated from round to round (A B C D, B C D A, ...), so drift of the
machine hits all alike. Restarts and kill -9 then run on a fresh deployment per contender
and round, in the same rotation. Chaos (bench/chaos.py: kill -9 of a random worker every 2 s
under load) and recovery (one kill -9, N rounds) run on sf, uvicorn and gunicorn, a fresh
deployment each. The report gives medians over the rounds and the ratios measured within
the same run.
Needs the bench extra (pip install -e '.[bench]') and wrk (apt-get install -y wrk); without
wrk a slower Python load generator is used and the output says so.
Exit status: 0 when every contender started and every measurement ran, 1 otherwise.
No performance threshold is ever asserted.
"""

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import chaos
import envinfo
import load
from contenders import CONTENDERS
from measure import Plan, resilience_slot, serve_phase

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LISTENER_ACK = os.path.join(HERE, "listener_ack.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Any = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="one short round of every step (a few minutes); prints the headline and keeps no "
                        "files unless --out/--img-dir/--json say where")
    p.add_argument("--workers", type=int, default=2, help="workers per contender (default 2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of restarts and kill -9, each on fresh deployments (default 3; smoke 1)")
    p.add_argument("--serve-rounds", type=int, default=None,
                   help="rounds of alternated throughput/latency runs (default 5; smoke 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of each throughput/latency run (default 10; smoke 1)")
    p.add_argument("--restart-duration", type=float, default=None,
                   help="seconds of load around each restart (default 12; smoke 2.5)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of {','.join(CONTENDERS)}")
    p.add_argument("--stack", choices=("auto", "asyncio-h11"), default="auto",
                   help="auto: uvicorn picks uvloop/httptools when installed (the bench extra installs them); "
                        "asyncio-h11: force the pure-Python stack on every contender")
    p.add_argument("--alt-stack", choices=("none", "asyncio-h11"), default=None,
                   help="also measure throughput and latency on this stack, with half the rounds and duration "
                        "(default asyncio-h11; smoke: none)")
    p.add_argument("--access-log", action="store_true",
                   help="keep uvicorn's access log on (default off for every contender, as gunicorn's default)")
    p.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator (auto: wrk when installed)")
    p.add_argument("--out", default=None, help="markdown report (default docs/benchmarks.md; smoke: temp folder)")
    p.add_argument("--img-dir", default=None, help="PNG folder (default docs/img; smoke: temp folder)")
    p.add_argument("--json", default=None, help="raw results (default bench/results.json; smoke: temp folder)")
    p.add_argument("--phases", "--only", dest="phases", default=",".join(PHASES),
                   help="comma-separated subset of serve (throughput, latency, memory), resilience (kill -9, "
                        "restarts), listener (bench/listener_ack.py), chaos (kill -9 every 2 s under load), "
                        "recovery (kill -9 to a new worker answering, N rounds). A full run's report keeps the "
                        "phases not run from the previous bench/results.json, each with its own date and commit")
    p.add_argument("--chaos-duration", type=float, default=None,
                   help="seconds of kills in each chaos run (default 60; smoke 10)")
    p.add_argument("--chaos-interval", type=float, default=2.0, help="seconds between kills (default 2)")
    p.add_argument("--chaos-connections", type=int, default=16,
                   help="load clients during chaos, each at --chaos-rate requests/s (default 16)")
    p.add_argument("--chaos-rate", type=float, default=100.0,
                   help="requests per second per chaos client, fixed schedule (default 100)")
    p.add_argument("--chaos-seed", type=int, default=8, help="seed of the choice of the worker to kill")
    p.add_argument("--recovery-rounds", type=int, default=None,
                   help="kill -9 recovery rounds per contender, a fresh deployment each (default 10; smoke 2)")
    return p.parse_args(argv)


PHASES = ("serve", "resilience", "listener", "chaos", "recovery")


def make_chaos_plan(a: argparse.Namespace) -> chaos.ChaosPlan:
    return chaos.ChaosPlan(duration=a.chaos_duration or (10 if a.smoke else 60), interval=a.chaos_interval,
                           lead=1.0, tail=3.0, connections=a.chaos_connections, rate=a.chaos_rate, timeout=5.0,
                           restore_timeout=15 if a.smoke else 30,
                           recovery_rounds=a.recovery_rounds or (2 if a.smoke else 10), seed=a.chaos_seed)


def carry_over(results: Dict[str, Any], raw: str, phases: set) -> None:
    """Copy the phases this run skipped from the previous results file, so the report stays whole.

    Each phase records the run it came from (``phase_info``), and the report says so.
    """
    try:
        with open(raw) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return
    if old.get("smoke"):
        return
    old_info = {"date": old["info"]["date"], "commit": old["info"]["commit"], "command": old["command"]}
    results["phase_info"] = {p: i for p, i in old.get("phase_info", {}).items() if p not in phases}
    for p in set(PHASES) - phases:
        results["phase_info"].setdefault(p, old_info)
    results["runs"] += [r for r in old.get("runs", []) if r.get("phase", "").split(" ")[0] not in phases]
    if "serve" not in phases:
        results["serve_rounds"] = old.get("serve_rounds", results["serve_rounds"])
        if "alt" in old:
            results["alt"] = old["alt"]
    if "resilience" not in phases:
        results["rounds"] = old.get("rounds", results["rounds"])
    if not phases & {"serve", "resilience"}:
        results["plan"] = old.get("plan", results["plan"])
        results["contenders"] = old.get("contenders", results["contenders"])
    for p in ("listener", "chaos", "recovery"):
        if p not in phases and p in old:
            results[p] = old[p]


def make_plan(a: argparse.Namespace, tool: str) -> Plan:
    if a.smoke:
        return Plan(duration=a.duration or 1, warmup=0, rest=0.2, restart_duration=a.restart_duration or 2.5,
                    restart_lead=0.5, restart_connections=8, restart_rate=50, keepalive_restart=False,
                    extra_restarts=False,
                    tool=tool)
    return Plan(duration=a.duration or 10, warmup=2, rest=1.0, restart_duration=a.restart_duration or 12,
                restart_lead=2.0, restart_connections=16, restart_rate=100, keepalive_restart=True, extra_restarts=True,
                tool=tool)


def run_listener_ack(smoke: bool) -> Dict[str, Any]:
    """bench/listener_ack.py (the listener's own benchmark), when it exists, run as it is.

    It prints a markdown table and exits 1 when its own floor is not met; that floor is a
    performance threshold, so only a run that produced no table counts as a failure here.
    """
    if not os.path.exists(LISTENER_ACK):
        return {"ran": False, "note": "bench/listener_ack.py does not exist in this checkout"}
    argv = [sys.executable, LISTENER_ACK] + (["--smoke"] if smoke else [])
    try:
        proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120 if smoke else 900, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        return {"ran": True, "ok": False, "argv": argv, "output": f"timed out after {exc.timeout} s"}
    produced = any(line.startswith("|") for line in proc.stdout.splitlines())
    verdict = next((line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith(("PASS", "FAIL"))),
                   None)
    return {"ran": True, "ok": produced, "returncode": proc.returncode, "verdict": verdict, "argv": argv,
            "output": proc.stdout}


def run_serve(keys: List[str], a: argparse.Namespace, stack: str, plan: Plan, rounds: int, folder: str
              ) -> List[Dict[str, Any]]:
    """The serve phase for these contenders on this stack: one record per contender and round."""
    serving = [CONTENDERS[k](a.workers, free_port(), os.path.join(folder, k), stack, a.access_log) for k in keys]
    served = serve_phase(serving, plan, rounds, log)
    records: List[Dict[str, Any]] = []
    for c in serving:
        for rec in served[c.key]["rounds"]:
            rec.update(key=c.key, label=c.label, phase="serve" if stack == a.stack else f"serve ({stack})",
                       error=served[c.key]["error"], ok=not served[c.key]["error"])
            records.append(rec)
        if served[c.key]["error"] and not served[c.key]["rounds"]:
            records.append({"key": c.key, "label": c.label, "phase": "serve", "round": 0,
                            "error": served[c.key]["error"], "ok": False})
    return records


def main(argv: Any = None) -> int:
    a = parse_args(argv)
    keys = [k.strip() for k in a.contenders.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONTENDERS]
    if unknown or not keys:
        log(f"bench: unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
        return 2
    if a.alt_stack is None:
        a.alt_stack = "none" if a.smoke else "asyncio-h11"
    phases = {p.strip() for p in a.phases.split(",") if p.strip()}
    if phases - set(PHASES) or not phases:
        log(f"bench: unknown phase(s) {sorted(phases - set(PHASES))}; choose from {', '.join(PHASES)}")
        return 2
    tool = load.choose_tool(a.load)
    if tool != "wrk":
        log("bench: wrk not found, using the Python load generator bench/pyload.py (slower: its throughput "
            "figures are lower bounds). Install wrk: apt-get install -y wrk")
    plan = make_plan(a, tool)
    rounds = a.rounds or (1 if a.smoke else 3)
    serve_rounds = a.serve_rounds or (1 if a.smoke else 5)
    if a.smoke:
        out_dir = tempfile.mkdtemp(prefix="bench-smoke-")
        md, img, raw = (a.out or os.path.join(out_dir, "benchmarks.md"), a.img_dir or os.path.join(out_dir, "img"),
                        a.json or os.path.join(out_dir, "results.json"))
    else:
        md, img, raw = (a.out or os.path.join(REPO, "docs", "benchmarks.md"),
                        a.img_dir or os.path.join(REPO, "docs", "img"), a.json or os.path.join(HERE, "results.json"))
    info = envinfo.collect(tool, a.stack, REPO)
    log(f"bench: {len(keys)} contenders, {a.workers} workers each, load by {info['load_generator']}"
        f"; {info['stack']}")
    started = time.monotonic()
    results: Dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "smoke": a.smoke, "workers": a.workers, "rounds": rounds, "serve_rounds": serve_rounds, "contenders": keys,
        "plan": plan.__dict__,
        "access_log": a.access_log, "info": info, "runs": [],
    }
    folder = tempfile.mkdtemp(prefix="sfb-")  # short: supervisord's control socket path must fit
    if "serve" in phases:
        log(f"throughput, latency and memory: every contender up at once, {serve_rounds} round(s) of alternated runs")
        results["runs"] += run_serve(keys, a, a.stack, plan, serve_rounds, os.path.join(folder, "serve"))
    if "serve" in phases and a.alt_stack != "none" and a.alt_stack != a.stack:
        alt_plan = dataclasses.replace(plan, duration=max(1.0, plan.duration / 2))
        alt_rounds = max(1, serve_rounds // 2)
        log(f"the same with --stack {a.alt_stack}: {alt_rounds} round(s) of {alt_plan.duration:g} s runs")
        results["alt"] = {"stack": a.alt_stack, "stack_text": envinfo.stack_in_effect(a.alt_stack),
                          "serve_rounds": alt_rounds, "plan": alt_plan.__dict__, "contenders": keys,
                          "runs": run_serve(keys, a, a.alt_stack, alt_plan, alt_rounds, os.path.join(folder, "alt"))}
    if "resilience" in phases:
        log(f"restarts and kill -9: a fresh deployment per contender and round, {rounds} round(s)")
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            log(f"  round {r + 1}/{rounds}: {' '.join(order)}")
            for key in order:
                c = CONTENDERS[key](a.workers, free_port(), os.path.join(folder, f"{r}-{key}"), a.stack,
                                    a.access_log)
                rec = {"key": key, "label": c.label, "round": r, "phase": "resilience"}
                rec.update(resilience_slot(c, plan, log))
                rec["ok"] = not rec["error"]
                results["runs"].append(rec)
    def make(key: str, name: str) -> Any:
        return CONTENDERS[key](a.workers, free_port(), os.path.join(folder, name), a.stack, a.access_log)

    chaos_keys = [k for k in keys if k in chaos.CHAOS_KEYS]
    cplan = make_chaos_plan(a)
    if "chaos" in phases and chaos_keys:
        log(f"chaos: kill -9 of a random serving worker every {cplan.interval:g} s for {cplan.duration:g} s, "
            f"{cplan.connections} clients x {cplan.rate:g} req/s, connection-per-request then keep-alive")
        results["chaos"] = {"contenders": chaos_keys, "plan": cplan.__dict__,
                            "runs": chaos.chaos_phase(make, chaos_keys, cplan, log)}
    if "recovery" in phases and chaos_keys:
        log(f"recovery: kill -9 of one worker to a new worker answering, {cplan.recovery_rounds} round(s), "
            "a fresh deployment each")
        results["recovery"] = {"contenders": chaos_keys, "rounds": cplan.recovery_rounds, "plan": cplan.__dict__,
                               "runs": chaos.recovery_phase(make, chaos_keys, cplan.recovery_rounds, log)}
    if "listener" in phases:
        log("listener acknowledgement benchmark: " + ("bench/listener_ack.py" if os.path.exists(LISTENER_ACK)
                                                     else "bench/listener_ack.py absent, skipped"))
        results["listener"] = run_listener_ack(a.smoke)
    results["elapsed_s"] = time.monotonic() - started
    every = results["runs"] + results.get("alt", {}).get("runs", [])
    fresh = [x for x in every if x.get("phase", "").split(" ")[0] in phases]
    fresh += [dict(x, phase=p, round=x.get("round", 0)) for p in ("chaos", "recovery") if p in phases
              for x in results.get(p, {}).get("runs", [])]
    if set(PHASES) - phases and not a.smoke:
        carry_over(results, raw, phases)
    if all(x["ok"] for x in fresh):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        log(f"deployments' folders and logs kept in {folder}")
    os.makedirs(os.path.dirname(os.path.abspath(raw)), exist_ok=True)
    with open(raw, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    import report

    report.write(results, md, img, raw)
    if a.smoke and not (a.out or a.img_dir or a.json):
        # CI runs this: show the headline in its log, leave nothing behind in the temp folder.
        log("\n".join(report.headline(report.Summary(results))))
        shutil.rmtree(out_dir, ignore_errors=True)
        log(f"smoke run done in {results['elapsed_s']:.0f} s (report, plots and raw figures were written, then "
            "removed; pass --out/--img-dir/--json to keep them)")
    else:
        log(f"wrote {md}, {img}/*.png, {raw} in {results['elapsed_s']:.0f} s")
    failed = sorted({f"{x['phase']} round {x['round'] + 1} {x['key']}"
                     + (f" ({x['client']})" if x.get("client") else "") + f": {x['error']}"
                     for x in fresh if not x["ok"]})
    listener = results.get("listener", {})
    if listener.get("ran") and not listener.get("ok"):
        failed.append("bench/listener_ack.py failed:\n" + str(listener.get("output", ""))[-2000:])
    for line in failed:
        log(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
