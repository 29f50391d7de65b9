"""`supervisor-fastapi demo`: the demo app, two workers, a temporary run folder."""

import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Callable, Dict, List

from ..errors import UserError
from ..spec import HostDefaults, build_spec
from . import deploy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(host: str, port: int, path: str = "/", timeout: float = 5.0) -> Dict[str, object]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def say(progress: Callable[[str], None], message: str) -> None:
    """Progress that survives a closed terminal: after SIGHUP a write may fail, the cleanup must not."""
    try:
        progress(message)
    except OSError:
        pass


# Ctrl-C, a TERM and a closed terminal: each stops the demo (and none may cut its teardown).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_demo(workers: int, smoke: bool, progress: Callable[[str], None]) -> None:
    """Start the demo, show which workers answer, and keep serving until Ctrl-C (or exit in smoke mode)."""
    if workers < 1:  # before the temp folder exists: nothing to leak, no spec file the user never saw
        raise UserError(f"demo --workers: must be 1 or more (got {workers})")
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise UserError("the demo needs FastAPI: pip install fastapi (or, in a clone, pip install '.[demo]')") from None
    # Ctrl-C, a TERM and a closed terminal (HUP) all tear the demo down, whenever they come:
    # each raises KeyboardInterrupt where the main thread is, and the finally below cleans up.
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps an inherited ignore.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler)
    folder = tempfile.mkdtemp(prefix="supervisor-fastapi-demo-")
    spec = None
    try:
        port = free_port()
        data = {"app": {"name": "demo", "asgi": "supervisor_fastapi.runtime.demo_app:app"},
                "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": workers, "graceful_timeout": 5}}
        spec_path = os.path.join(folder, "supervisor-fastapi.toml")
        import tomli_w

        with open(spec_path, "w") as f:
            f.write(tomli_w.dumps(data))
        spec = build_spec(data, spec_path, folder, HostDefaults())
        conf = os.path.join(folder, "supervisord.conf")
        deploy.up(spec, conf, f"supervisor-fastapi render -c {spec_path}", progress, timeout=60)
        pids: List[object] = []
        # The kernel may hand several new connections in a row to the same worker: ask until
        # every worker has answered (bounded), so the line below shows the replication.
        for _ in range(workers * 100):
            pids.append(get_json("127.0.0.1", port)["worker_pid"])
            if len(pids) >= workers * 6 and len(set(pids)) == workers:
                break
        print(f"demo: {workers} workers serving http://127.0.0.1:{port}/ "
              f"({len(set(pids))} distinct worker pids answered {len(pids)} requests)")
        print(f"demo: conf {conf}")
        if not smoke:  # a smoke run stops at once: no "try curl" for a demo about to be gone
            print(f"demo: try  curl http://127.0.0.1:{port}/  or  supervisorctl -c {conf} status")
            print("demo: press Ctrl-C to stop", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                try:
                    print()
                except OSError:
                    pass
    finally:
        # A second Ctrl-C (people press it twice) must not cut the teardown short: it left
        # supervisord and the workers running, and the folder behind. `down` is bounded on its own.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if spec is not None:
            say(progress, "stopping the demo")
            deploy.down(spec)
        shutil.rmtree(folder, ignore_errors=True)
