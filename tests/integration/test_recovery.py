"""supervisord killed with -9 (or crashed) comes back without `down` and without an outage.

Its workers outlive it and keep the port. A new supervisord (from `up`, or started again as
systemd restarts it) binds beside them (SO_REUSEPORT), its workers come up, and each old
worker drains and exits once a new worker of its name is ready. Clients under load, on
keep-alive and on new connections, must never go more than 3 s without an answer
(issue 16, point 3).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from supervisor_fastapi.cli import control
from supervisor_fastapi.cli.deploy import wait_ready

from ..loadgen import Load
from .conftest import daemon_pid, wait_until

pytestmark = pytest.mark.integration

MAX_GAP = 3.0


def kill_supervisord(d) -> set:
    """kill -9 the deployment's supervisord; the pids of the web workers it leaves running."""
    old = {i["pid"] for i in d.infos() if i["group"] == "web" and i["pid"]}
    pid = control._read_pid(d.layout.pidfile)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not control.pid_alive(pid), 10, "supervisord to die")
    return old


def killpg_all(pids) -> None:
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


def run_under_load(d, recover) -> tuple:
    """Load on keep-alive and new connections through kill -9 of supervisord and ``recover(d)``."""
    old = set()
    try:
        with Load(port=d.port, mode="keepalive", threads=2, pause=0.005, timeout=10) as kept, \
                Load(port=d.port, mode="close", threads=2, pause=0.005, timeout=10) as fresh:
            kept.wait_requests(100)
            fresh.wait_requests(100)
            old = kill_supervisord(d)
            # systemd waits RestartSec=2 before it starts supervisord again: the old workers serve meanwhile.
            time.sleep(2)
            recover(d)
            # Every old worker drains and exits once its successor is ready; none is left behind.
            wait_until(lambda: not any(control.pid_alive(p) for p in old), 60, "the old workers to exit")
            served = kept.result.ok + fresh.result.ok
            wait_until(lambda: kept.result.ok + fresh.result.ok > served + 100, 20, "requests after the recovery")
        return old, kept.result, fresh.result
    finally:
        killpg_all(p for p in old if control.pid_alive(p))


def assert_recovered(d, old, kept, fresh) -> None:
    for r in (kept, fresh):
        assert r.max_gap <= MAX_GAP, r.summary()
    new = {i["pid"] for i in d.infos() if i["group"] == "web"}
    assert new and not new & old and all(i["statename"] == "RUNNING" for i in d.infos() if i["group"] == "web")
    assert {d.get("/")[1]["pid"] for _ in range(20)} <= new
    assert control.find_orphans(d.layout) == []


def test_kill_9_of_supervisord_then_up_alone_brings_it_back_without_a_gap(deploy):
    d = deploy()

    def up(d) -> None:
        r = d.cli("up", "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr

    old, kept, fresh = run_under_load(d, up)
    print("keep-alive:", kept.summary(), "\nnew connections:", fresh.summary())
    assert_recovered(d, old, kept, fresh)


def test_kill_9_of_supervisord_then_plain_supervisord_recovers_as_under_systemd(deploy):
    d = deploy()

    def restart(d) -> None:
        # What systemd's Restart=always runs: the same command line, nothing else.
        r = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", d.conf_path], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        daemon_pid(d.layout.pidfile)
        control.wait_for(lambda: control.is_running(d.layout), 30, "supervisord's control socket")
        wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 60)

    old, kept, fresh = run_under_load(d, restart)
    print("keep-alive:", kept.summary(), "\nnew connections:", fresh.summary())
    assert_recovered(d, old, kept, fresh)
