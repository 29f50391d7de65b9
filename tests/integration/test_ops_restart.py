"""`supervisor-fastapi restart` under load: one worker at a time, zero failed requests."""

import os

import pytest

from tests.loadgen import Load

from .conftest import wait_until
from .test_restart_socket import ready_pids


@pytest.mark.parametrize("mode", ["close", "keepalive"])
def test_rolling_restart_under_load(deploy, mode):
    d = deploy({"server": {"workers": 2}})
    before = ready_pids(d)
    with Load("127.0.0.1", d.port, mode=mode, threads=4) as load:
        load.wait_requests(100)
        out = d.cli("restart")
        n = load.result.requests
        load.wait_requests(n + 100)
    r = load.result
    print(f"\nsupervisor-fastapi restart, {mode}: {r.summary()}\n{out.stderr}")
    assert out.returncode == 0, out.stdout + out.stderr
    after = ready_pids(d)
    assert after and not (after & before) and len(after) == 2
    if mode == "close":
        assert r.failures == 0, r.summary()
    else:
        assert r.failures <= 4, r.summary()


def test_rolling_restart_stops_at_a_worker_that_does_not_come_up(deploy, tmp_path):
    flag = str(tmp_path / "broken")
    alerts = str(tmp_path / "alerts.log")
    d = deploy({"app": {"env": {"CRASH_AFTER": "0", "CRASH_WHILE": flag}},
                "alerts": [{"type": "log", "path": alerts}]})
    before = {i["name"]: i["pid"] for i in d.infos() if i["group"] == "web"}
    open(flag, "w").close()  # from now on a new worker dies as it starts
    with Load("127.0.0.1", d.port, mode="close", threads=2) as load:
        load.wait_requests(20)
        out = d.cli("restart", timeout=120)
        n = load.result.requests
        load.wait_requests(n + 20)
    r = load.result
    print(f"\nfailed roll: {r.summary()}\n{out.stderr}\n{out.stdout}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED at web:web_00" in out.stdout
    # The roll stopped there: the other old worker was never touched and kept serving.
    assert {i["name"]: i["pid"] for i in d.infos() if i["group"] == "web"}["web_01"] == before["web_01"]
    assert r.failures == 0, r.summary()
    text = wait_until(lambda: os.path.exists(alerts) and "rolling_restart_failed" in open(alerts).read()
                      and open(alerts).read(), 20, "the rolling_restart_failed alert in the log channel")
    assert "web_00" in text
