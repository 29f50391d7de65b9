"""How fast does the real listener acknowledge events while every alert channel is unreachable?

Drives ``python -m supervisor_fastapi.listener`` over its stdin/stdout wire protocol, as
supervisord does: one event, wait for ``RESULT 2\\nOK`` + ``READY``, next event. The event
mix is a storm: four workers crash-looping (STARTING/RUNNING/EXITED unexpected), the
controller's alerts (REMOTE_COMMUNICATION open/reminder events), one-off events it
de-duplicates, and FATALs; the listener runs in its no-plugin fallback mode, so the
process events are decided on too. Every channel
is unreachable: a webhook on a closed port, SMTP on a closed port, a command that does
not exist, and a log file in a folder that does not exist. RPC goes to a small XML-RPC
server in this process that answers like supervisord.

    python bench/listener_ack.py            # 10,000 events
    python bench/listener_ack.py --smoke    # 1,000 events, a few seconds

Prints a markdown table: ack latency percentiles, the listener's peak RSS (VmHWM), and
how many alerts it journaled. The floor (issue 3): p99 < 5 ms, RSS < 40 MB.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from supervisor_fastapi.contracts.rpc import remote_alert_body  # noqa: E402
from supervisor_fastapi.contracts.settings import LISTENER_ENV  # noqa: E402
from supervisor_fastapi.generate.conf import listener_config  # noqa: E402
from supervisor_fastapi.spec import load_spec  # noqa: E402
from tests.wire import encode_event, process_state_payload  # noqa: E402

WORKERS = [f"bench_{i:02d}" for i in range(4)]
REPLY = b"RESULT 2\nOKREADY\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeSupervisor:
    """The handful of supervisor.* RPC methods the listener calls, answering at once."""

    def __init__(self) -> None:
        self.calls: Dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def getAllProcessInfo(self) -> List[Dict[str, Any]]:  # noqa: N802 - supervisor's names
        self._count("getAllProcessInfo")
        now = int(time.time())
        return [{"name": n, "group": "bench", "statename": "RUNNING", "start": now, "stop": 0, "pid": 1000 + i,
                 "exitstatus": 0} for i, n in enumerate(WORKERS)]

    def getProcessInfo(self, name: str) -> Dict[str, Any]:  # noqa: N802
        self._count("getProcessInfo")
        return {"name": name.split(":")[-1], "statename": "EXITED", "exitstatus": 1, "start": 0, "stop": 0}

    def tailProcessStdoutLog(self, name: str, offset: int, length: int) -> List[Any]:  # noqa: N802
        self._count("tailProcessStdoutLog")
        return ["Traceback (most recent call last):\nRuntimeError: boom\n", 0, False]

    def startProcess(self, name: str, wait: bool = True) -> bool:  # noqa: N802
        self._count("startProcess")
        return True

    def stopProcess(self, name: str, wait: bool = True) -> bool:  # noqa: N802
        self._count("stopProcess")
        return True

    def startProcessGroup(self, name: str, wait: bool = True) -> List[Any]:  # noqa: N802
        self._count("startProcessGroup")
        return []


def serve_rpc() -> Any:
    class Handler(SimpleXMLRPCRequestHandler):
        rpc_paths = ("/RPC2",)

        def log_message(self, *args: Any) -> None:
            pass

    server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Handler, logRequests=False, allow_none=True)
    fake = FakeSupervisor()
    for name in ("getAllProcessInfo", "getProcessInfo", "tailProcessStdoutLog", "startProcess", "stopProcess",
                 "startProcessGroup"):
        server.register_function(getattr(fake, name), f"supervisor.{name}")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, fake


def write_spec(folder: str) -> str:
    dead = closed_port()
    spec = f"""
[app]
name = "bench"
asgi = "app:app"
directory = "{folder}"

[supervisord]
run_dir = "{folder}/run"

[crash_loop]
restarts = 3
window = 60
backoff_initial = 0.5
backoff_max = 2
backoff_reset = 5

[listener]
send_retries = 3
reminder_interval = 1

[[alerts]]
type = "webhook"
url = "http://127.0.0.1:{dead}/hook"

[[alerts]]
type = "email"
host = "127.0.0.1"
port = {dead}
from = "bench@example.com"
to = "ops@example.com"

[[alerts]]
type = "command"
command = "/nonexistent/notify-ops"

[[alerts]]
type = "log"
path = "{folder}/no-such-folder/alerts.log"
"""
    path = os.path.join(folder, "supervisor-fastapi.toml")
    with open(path, "w") as f:
        f.write(spec)
    os.makedirs(os.path.join(folder, "run"), exist_ok=True)
    return path


def events(n: int) -> List[bytes]:
    """A storm: crash loops on four workers, remote alerts, some FATALs."""
    out: List[bytes] = []
    cycle = [("STARTING", "EXITED", {"tries": "0"}), ("RUNNING", "STARTING", {"pid": "4242"}),
             ("EXITED", "RUNNING", {"expected": "0", "pid": "4242"})]
    i = 0
    while len(out) < n:
        i += 1
        if i % 20 == 0:
            body = remote_alert_body("bench", "crash_loop", WORKERS[i % 4], "failed 3 times", {"n": i},
                                     event="open" if i % 40 else "reminder")
            out.append(encode_event("REMOTE_COMMUNICATION", f"type:supervisor-fastapi\n{body}", len(out) + 1)
                       .encode())
            continue
        if i % 10 == 0:
            body = json.dumps({"kind": f"hung_worker_{i % 7}", "process": WORKERS[i % 4], "summary": "no heartbeat",
                               "details": {"seconds": i}})
            out.append(encode_event("REMOTE_COMMUNICATION", f"type:supervisor-fastapi\n{body}", len(out) + 1)
                       .encode())
            continue
        if i % 97 == 0:
            payload = process_state_payload(WORKERS[i % 4], "bench", "BACKOFF")
            out.append(encode_event("PROCESS_STATE_FATAL", payload, len(out) + 1).encode())
            continue
        state, prev, extra = cycle[i % 3]
        payload = process_state_payload(WORKERS[(i // 3) % 4], "bench", prev, **extra)
        out.append(encode_event(f"PROCESS_STATE_{state}", payload, len(out) + 1).encode())
    return out


def rss_kb(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise RuntimeError("the listener closed stdout; see its stderr above")
        data += chunk
    return data


def run(n: int, python: str) -> Dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="sf-bench-")
    server, fake = serve_rpc()
    try:
        spec = write_spec(folder)
        os.makedirs(os.path.join(folder, "run"), exist_ok=True)
        settings = listener_config(load_spec(spec), controller=False).to_env()
        env = dict(os.environ, SUPERVISOR_SERVER_URL=f"http://127.0.0.1:{server.server_address[1]}",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **{LISTENER_ENV: settings})
        stderr_path = os.path.join(folder, "listener.stderr")
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen([python, "-m", "supervisor_fastapi.listener"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        out_fd, in_fd = proc.stdout.fileno(), proc.stdin.fileno()
        try:
            started = time.perf_counter()
            assert read_exact(out_fd, 6) == b"READY\n"
            ready_after = time.perf_counter() - started
            times: List[float] = []
            wall = time.perf_counter()
            for ev in events(n):
                t0 = time.perf_counter()
                os.write(in_fd, ev)
                reply = read_exact(out_fd, len(REPLY))
                times.append(time.perf_counter() - t0)
                if reply != REPLY:
                    raise RuntimeError(f"unexpected reply {reply!r}")
            wall = time.perf_counter() - wall
            time.sleep(0.5)  # let the sender threads journal what is queued
            peak = rss_kb(proc.pid)
            now_rss = rss_kb(proc.pid, "VmRSS")
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        journal = os.path.join(folder, "run", "alerts-undelivered.jsonl")
        journaled = sum(1 for _ in open(journal)) if os.path.exists(journal) else 0
        with open(stderr_path) as f:
            alerts = sum(1 for line in f if " alert: " in line)
        times.sort()
        return {"n": n, "ready_s": ready_after, "wall_s": wall, "p50": times[len(times) // 2],
                "p90": times[int(len(times) * 0.9)], "p99": times[int(len(times) * 0.99)], "max": times[-1],
                "mean": statistics.mean(times), "peak_rss_mb": peak / 1024, "rss_mb": now_rss / 1024,
                "alerts": alerts, "journaled": journaled, "rpc": dict(fake.calls), "exit": proc.returncode}
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="1,000 events: a few seconds")
    p.add_argument("-n", "--events", type=int, default=10000)
    p.add_argument("--python", default=sys.executable, help="interpreter to run the listener with")
    args = p.parse_args()
    n = 1000 if args.smoke else args.events
    r = run(n, args.python)
    ok = r["p99"] < 0.005 and r["peak_rss_mb"] < 40
    ver = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                         text=True).stdout.strip()
    print(f"### Listener ack benchmark ({r['n']:,} events, every alert channel unreachable, Python {ver})\n")
    print("| metric | value | floor |")
    print("|---|---|---|")
    print(f"| ack p50 | {r['p50'] * 1000:.3f} ms | |")
    print(f"| ack p90 | {r['p90'] * 1000:.3f} ms | |")
    print(f"| ack p99 | {r['p99'] * 1000:.3f} ms | < 5 ms |")
    print(f"| ack max | {r['max'] * 1000:.3f} ms | |")
    print(f"| events/s | {r['n'] / r['wall_s']:,.0f} | |")
    print(f"| listener peak RSS (VmHWM) | {r['peak_rss_mb']:.1f} MB | < 40 MB |")
    print(f"| alerts raised / journal lines | {r['alerts']} / {r['journaled']} | |")
    print(f"| RPC calls | {', '.join(f'{k} {v}' for k, v in sorted(r['rpc'].items()))} | |")
    print(f"| start-up to READY | {r['ready_s'] * 1000:.0f} ms | |")
    print(f"\n{'PASS' if ok else 'FAIL'}: p99 {r['p99'] * 1000:.2f} ms, peak RSS {r['peak_rss_mb']:.1f} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
