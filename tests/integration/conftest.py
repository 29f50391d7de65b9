"""The `deploy` fixture: a real supervisord from a generated conf in a temp folder.

    def test_x(deploy):
        d = deploy({"server": {"workers": 3}})      # dict deep-merged over the defaults
        status, body = d.get("/")                    # real HTTP to real uvicorn workers

Every process a test starts is stopped at teardown (supervisord shutdown, then SIGKILL
of anything left), and every wait is bounded by a deadline.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import tomli_w

from supervisor_fastapi.cli import control
from supervisor_fastapi.cli import deploy as deploy_mod
from supervisor_fastapi.contracts.files import read_json, read_worker_states
from supervisor_fastapi.layout import Layout, Names
from supervisor_fastapi.spec import Spec, load_spec
from tests.ports import free_port

APPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps")

pytestmark = pytest.mark.integration


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def worker_files(layout: Layout) -> Dict[str, Dict[str, Any]]:
    """Every ready file in the deployment's workers folder (the test lists it; the package never does)."""
    try:
        names = os.listdir(layout.state_dir)
    except OSError:
        names = []
    return read_worker_states(layout.state_dir, names)


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def daemon_pid(pidfile: str, timeout: float = 30.0) -> int:
    """The pid of a supervisord just started by hand, once its pidfile names a live process.

    `supervisord -c conf` returns when its first process exits after the fork; the daemon writes
    its pidfile after that, so reading the file at once races with it.
    """
    def live() -> int:
        pid = control._read_pid(pidfile)
        return pid if pid and control.pid_alive(pid) else 0

    return wait_until(live, timeout, f"{pidfile} to name a running supervisord")


def reap(pid: Optional[int], timeout: float = 60.0) -> None:
    """Teardown after `shutdown`: give ``pid`` ``timeout`` seconds to exit, then SIGKILL it.

    Never fails the test: a supervisord that hangs on shutdown is killed, not left behind.
    """
    if not pid:
        return
    deadline = time.monotonic() + timeout
    while control.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Deployment:
    folder: str
    spec_path: str
    conf_path: str
    spec: Spec
    port: int
    started: bool = False
    pids_seen: List[int] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return Layout(self.spec.run_dir)

    @property
    def rpc(self) -> Any:
        return control.rpc(self.layout)

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Start supervisord; with ``wait``, until every web worker is ready."""
        control.start_daemon(self.conf_path, self.layout)
        self.started = True
        if wait:
            deploy_mod.wait_ready(self.spec, self.rpc, self.layout, lambda m: None, timeout)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run `supervisor-fastapi ARGS -c spec` as a user would."""
        return subprocess.run([sys.executable, "-m", "supervisor_fastapi", *args, "-c", self.spec_path],
                              capture_output=True, text=True, timeout=timeout)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run `supervisorctl -c conf ARGS`."""
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf_path, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def get(self, path: str = "/", timeout: float = 5.0) -> Tuple[int, Dict[str, Any]]:
        """One GET on a new connection; returns (status, parsed JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            data = json.loads(body) if body[:1] == b"{" else {"raw": body.decode(errors="replace")}
            return resp.status, data
        finally:
            conn.close()

    def infos(self) -> List[Dict[str, Any]]:
        return self.rpc.supervisor.getAllProcessInfo()

    def state_of(self, name: str) -> str:
        return next(i["statename"] for i in self.infos() if i["name"] == name)

    def running_listener(self) -> Dict[str, Any]:
        """The event listener's process info, started first if it is at rest (its idle exit):
        a test that kills it needs a pid, and pid 0 would be the test's own process group."""
        name = Names(self.spec.app.name).listener
        info = next(i for i in self.infos() if i["name"] == name)
        if info["statename"] != "RUNNING":
            try:
                self.rpc.supervisor.startProcess(name, True)
            except Exception:  # xmlrpc Fault ALREADY_STARTED: started for an event meanwhile
                pass
            info = wait_until(lambda: next((i for i in self.infos() if i["name"] == name
                                            and i["statename"] == "RUNNING"), None), 15, "the listener running")
        assert info["pid"] > 0
        return info

    def listener_state(self) -> Dict[str, Any]:
        """The event listener's state file (the last alert), {} while it has written none."""
        return read_json(self.layout.listener_state) or {}

    def control_state(self) -> Dict[str, Any]:
        """The controller's state inside supervisord (gate, holds, incidents, spawns)."""
        return getattr(self.rpc, Names(self.spec.app.name).rpc_namespace).getState()

    def process_state(self, name: str) -> Dict[str, Any]:
        """The controller's entry for one process, by its name (``web_00``)."""
        return next((v for k, v in self.control_state()["processes"].items() if k.split(":")[1] == name), {})

    def log(self, name: str) -> str:
        path = os.path.join(self.layout.log_dir, f"{name}.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        # Whoever started supervisord (the fixture, or the test's own `up` or `deploy`): a live
        # pidfile means there is one to stop, so a test that forgets to say so leaks nothing.
        if not self.started and not control._read_pid(self.layout.pidfile):
            return
        pids = []
        try:
            pids = [i["pid"] for i in self.infos() if i["pid"]]
        except Exception:
            pass
        try:
            control.stop_daemon(self.layout, timeout=60)
        except Exception:
            pass
        supervisord_pid = control._read_pid(self.layout.pidfile)
        for pid in pids + ([supervisord_pid] if supervisord_pid else []):
            for kill in (os.killpg, os.kill):  # the worker's process group, then the pid itself
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.started = False


@pytest.fixture
def deploy() -> Iterator[Callable[..., Deployment]]:
    made: List[Deployment] = []
    # A short folder: the control socket path must fit in a unix socket address.
    folders: List[str] = []

    def make(overrides: Optional[Dict[str, Any]] = None, start: bool = True, wait: bool = True,
             timeout: float = 60.0) -> Deployment:
        folder = tempfile.mkdtemp(prefix="sf-")
        folders.append(folder)
        port = free_port()
        base = {
            "app": {"name": "web", "asgi": "testapp:app", "directory": APPS},
            # The stack a plain `pip install fastapi` runs (h11, asyncio), although the test extra
            # installs httptools and uvloop for the tests that pick them (test_drain_keepalive).
            "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": 2, "graceful_timeout": 5,
                       "uvicorn": {"http": "h11", "loop": "asyncio"}},
            "supervisord": {"run_dir": os.path.join(folder, "run")},
        }
        data = merge(base, overrides or {})
        spec_path = os.path.join(folder, "supervisor-fastapi.toml")
        with open(spec_path, "w") as f:
            f.write(tomli_w.dumps(data))
        spec = load_spec(spec_path)
        conf_path = os.path.join(folder, "supervisord.conf")
        deploy_mod.render_to(spec, conf_path, f"supervisor-fastapi render -c {spec_path}")
        d = Deployment(folder, spec_path, conf_path, spec, port)
        made.append(d)
        if start:
            d.start(wait=wait, timeout=timeout)
        return d

    yield make
    for d in made:
        d.stop()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
