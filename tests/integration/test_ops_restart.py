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
    # Keep-alive too: a draining worker's responses say Connection: close, so no connection is
    # closed under a client that is about to reuse it (stale counts those it caught in time).
    assert r.failures == 0 and r.stale == 0, r.summary()


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
    # A broken new worker can accept a connection in the instant before it dies (seen once
    # in ~5000 requests); nothing may be refused, and the old worker serves the rest.
    assert r.errors["ConnectionRefusedError"] == 0 and r.failures <= 2, r.summary()
    text = wait_until(lambda: os.path.exists(alerts) and "rolling_restart_failed" in open(alerts).read()
                      and open(alerts).read(), 20, "the rolling_restart_failed alert in the log channel")
    assert "web_00" in text


def test_rolling_restart_with_one_worker_and_slow_requests_in_flight(deploy):
    import threading

    d = deploy({"server": {"workers": 1}})
    results = []

    def slow():
        try:
            results.append(d.get("/sleep?s=2", timeout=20)[0])
        except OSError as exc:
            results.append(type(exc).__name__)

    with Load("127.0.0.1", d.port, mode="close", threads=4) as load:
        load.wait_requests(50)
        threads = [threading.Thread(target=slow) for _ in range(5)]
        for t in threads:
            t.start()
        wait_until(lambda: load.result.requests > 100, 10, "more load")
        out = d.cli("restart")
        for t in threads:
            t.join(30)
        n = load.result.requests
        load.wait_requests(n + 50)
    r = load.result
    print(f"\nsupervisor-fastapi restart, 1 worker: {r.summary()}; slow requests in flight: {results}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert r.failures == 0, r.summary()
    assert results == [200] * 5
