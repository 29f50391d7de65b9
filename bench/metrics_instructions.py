"""What [metrics] costs a worker per request, in CPU instructions: on vs off, same run.

    python bench/metrics_instructions.py                  # 400 and 1200 requests, FastAPI app
    python bench/metrics_instructions.py --requests 200 --json out.json

Throughput ratios on a shared 2-core machine spread by more than the 2% they should show
(docs/metrics.md: 0.67x to 2.7x from round to round). Instructions do not: valgrind's
callgrind counts every instruction a process runs, the same count for the same work whatever
else the machine does. So this runs the real web worker (``python -m
supervisor_fastapi.runtime.worker bench.app:app``, on a listening socket passed as fd 0, as
supervisord does) under callgrind, once with ``--metrics`` and once without, and sends it
``N`` and then ``3N`` keep-alive requests from this process (not under valgrind). The
per-request cost is the difference between the two totals divided by ``2N``: start-up and
shutdown cancel out.

Heartbeats (and, with ``--metrics``, the counter file written on each one) run by the clock,
once a second. A worker under valgrind is about 50 times slower than a real one, so counted
in they weigh about 50 times more per request than in production: ``--heartbeat-interval``
(default 3600: none during the run) leaves them out, ``--heartbeat-interval 1`` counts them
in as a worst case.

Needs valgrind (Debian's package). Prints instructions per request for each and the ratio;
no threshold is asserted.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))


def _serve_and_count(metrics: bool, requests: int, work: str, heartbeat: float) -> int:
    """Total instructions of one worker that serves ``requests`` requests, start to exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    state_dir = tempfile.mkdtemp(dir=work)
    out = os.path.join(work, f"callgrind.{'on' if metrics else 'off'}.{requests}")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
            "supervisor_fastapi.runtime.worker", "app:app", "--state-dir", state_dir, "--graceful-timeout", "5",
            "--heartbeat-interval", f"{heartbeat:g}",
            "--set", "http=httptools", "--set", "loop=uvloop", "--set", "access_log=false"]
    if metrics:
        argv.append("--metrics")
    # Same hash seed, same environment: the two runs differ only by --metrics.
    env = dict(os.environ, PYTHONHASHSEED="0", SUPERVISOR_PROCESS_NAME="bench_00", PYTHONMALLOC="malloc")
    proc = subprocess.Popen(argv, stdin=listener.fileno(), cwd=HERE, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listener.close()
    try:
        conn = _connect(port, proc)
        for _ in range(requests):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"metrics_instructions: the worker answered {resp.status}")
        conn.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is a clean stop.
    if proc.returncode not in (0, -signal.SIGTERM):
        raise SystemExit(f"metrics_instructions: the worker exited {proc.returncode}:\n{err.decode()[-2000:]}")
    with open(out) as f:
        totals = re.search(r"^(?:totals|summary): (\d+)", f.read(), re.M)
    if not totals:
        raise SystemExit(f"metrics_instructions: no totals in {out}")
    return int(totals.group(1))


def _connect(port: int, proc: "subprocess.Popen[bytes]") -> http.client.HTTPConnection:
    """A keep-alive connection once the worker answers (valgrind makes its start take a while)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"metrics_instructions: the worker exited {proc.returncode} before answering")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("GET", "/pid")
            conn.getresponse().read()
            return conn
        except OSError:
            conn.close()
            time.sleep(0.5)
    raise SystemExit("metrics_instructions: the worker did not answer within 300 s")


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=400, help="N: each worker serves N, then another 3N (default 400)")
    p.add_argument("--heartbeat-interval", type=float, default=3600.0,
                   help="the workers' beat, in seconds (default 3600: no beat during the run)")
    p.add_argument("--json", help="write the raw totals here")
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        print("metrics_instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="sf-instr-")
    n = args.requests
    totals: Dict[str, Dict[int, int]] = {"off": {}, "on": {}}
    try:
        for count in (n, 3 * n):
            for key in ("off", "on"):
                started = time.monotonic()
                totals[key][count] = _serve_and_count(key == "on", count, work, args.heartbeat_interval)
                print(f"  metrics {key:3}: {count:5} requests, {totals[key][count]:,} instructions "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = {key: (t[3 * n] - t[n]) / (2 * n) for key, t in totals.items()}
    print(f"instructions per request: metrics off {per['off']:,.0f}, on {per['on']:,.0f}; "
          f"on/off {per['on'] / per['off']:.4f} (+{per['on'] - per['off']:,.0f} per request)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"requests": n, "totals": totals, "per_request": per}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
