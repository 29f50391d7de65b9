"""Spawns of a crash-looping app in its first 60 s: supervisord alone vs. with the listener's backoff.

Runs two real deployments side by side, each one uvicorn worker of tests/apps/testapp.py
that exits 1 1.5 s after every start (CRASH_AFTER=1.5):
- "supervisord alone": the listener runs but crash-loop detection is off
  (``restarts = 1000``), so supervisord restarts the worker as it always does;
- "with backoff": the spec's ``[crash_loop]`` defaults (restarts 3 in 60 s, delays from
  backoff_initial doubling, 10% jitter).
A local HTTP receiver collects the alerts. Counts come from each supervisord.log.

    python bench/listener_crashloop.py            # 60 s
    python bench/listener_crashloop.py --smoke    # 20 s
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tomli_w  # noqa: E402

from supervisor_fastapi.cli import control, deploy  # noqa: E402
from supervisor_fastapi.contracts.settings import Policy  # noqa: E402
from supervisor_fastapi.layout import Layout  # noqa: E402
from supervisor_fastapi.spec import load_spec  # noqa: E402
from tests.helpers_alerts import WebhookReceiver, closed_port  # noqa: E402

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")


def log_times(path: str, pattern: str) -> List[float]:
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m and re.search(pattern, m.group(2)):
                out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def run_one(label: str, crash_loop: Dict[str, Any], hook_url: str, seconds: float, run_for: float,
            out: Dict[str, Any]) -> None:
    folder = tempfile.mkdtemp(prefix="sf-cl-")
    try:
        data = {"app": {"name": "web", "asgi": "testapp:app", "directory": os.path.join(ROOT, "tests", "apps"),
                        "env": {"CRASH_AFTER": "1.5"}},
                "server": {"bind": f"tcp://127.0.0.1:{closed_port()}", "workers": 1, "graceful_timeout": 5},
                "supervisord": {"run_dir": os.path.join(folder, "run")},
                "crash_loop": crash_loop,
                "alerts": [{"type": "webhook", "url": hook_url, "headers": {"X-Deployment": label}}]}
        spec_path = os.path.join(folder, "supervisor-fastapi.toml")
        with open(spec_path, "w") as f:
            f.write(tomli_w.dumps(data))
        spec = load_spec(spec_path)
        conf = os.path.join(folder, "supervisord.conf")
        deploy.render_to(spec, conf, "bench")
        layout = Layout(spec.run_dir)
        control.start_daemon(conf, layout)
        try:
            time.sleep(run_for + 1)
        finally:
            control.stop_daemon(layout, timeout=60)
        spawns = log_times(layout.logfile, r"spawned: 'web_00'")
        t0 = spawns[0]
        exits = log_times(layout.logfile, r"exited: web_00 \(exit status 1; not expected\)")
        listener_starts = []
        with open(layout.program_log("web_listener"), errors="replace") as f:
            for line in f:
                m = re.match(r"^(\S+ \S+) \w+ listener: start web:web_00$", line.rstrip("\n"))
                if m:
                    listener_starts.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
        out[label] = {"spawns": [round(t - t0, 1) for t in spawns if t - t0 < seconds],
                      "exits": [t for t in exits if t - t0 < seconds], "t0": t0,
                      "retries": [round(t - t0, 1) for t in listener_starts],
                      "delays": [round(s - max(e for e in exits if e < s), 1) for s in listener_starts
                                 if any(e < s for e in exits)]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="20 s instead of 60 s")
    p.add_argument("--seconds", type=float, default=60.0, help="the window spawns are counted in")
    args = p.parse_args()
    seconds = 20.0 if args.smoke else args.seconds
    # Run past the counting window so the second, longer delay is seen too.
    run_for = seconds if args.smoke else seconds + 25
    b = Policy()
    results: Dict[str, Any] = {}
    with WebhookReceiver() as hook:
        runs = [("supervisord alone", {"restarts": 1000}), ("with backoff", {})]
        threads = [threading.Thread(target=run_one, args=(label, cl, hook.url, seconds, run_for, results))
                   for label, cl in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        received = hook.alerts("crash_loop", "open")
    print(f"### Crash loop, app exits 1.5 s after each start, first {seconds:g} s\n")
    print(f"Listener defaults: restarts {b.restarts} in {b.window:g} s, backoff_initial {b.backoff_initial:g} s, "
          f"backoff_max {b.backoff_max:g} s, jitter +{b.jitter * 100:g}%, backoff_reset {b.backoff_reset:g} s\n")
    print("| run | spawns | spawn times (s) | crash-loop alerts | alert after 3rd exit |")
    print("|---|---|---|---|---|")
    ok = True
    for label, _ in runs:
        r = results.get(label)
        if r is None:
            print(f"| {label} | (run failed) | | | |")
            ok = False
            continue
        alerts, latency = "-", ""
        if label == "with backoff":
            alerts = str(len(received))
            if len(r["exits"]) >= 3 and received:
                latency = f"{received[0][0] - r['exits'][2]:.2f} s"
        print(f"| {label} | {len(r['spawns'])} | {', '.join(str(s) for s in r['spawns'])} | {alerts} | {latency} |")
    bo = results.get("with backoff")
    if bo:
        print(f"\nOver {run_for:g} s the listener retried at {bo['retries']} s; "
              f"delay from the crash to each retry: {bo['delays']} s "
              "(the respawn supervisord makes on its own after each crash is stopped by the listener 0.3 s "
              "later; it is counted above)")
        ok = ok and len(bo["spawns"]) <= 6 and len(received) == 1 and bo["delays"] == sorted(bo["delays"])
    print(f"\n{'PASS' if ok else 'FAIL'}: with backoff <= 6 spawns, exactly one alert, growing delays")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
