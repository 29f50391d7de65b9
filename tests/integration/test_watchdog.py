"""The watchdog program: memory recycling without failed requests, hung workers replaced."""

import http.client
import os
import threading
import time

from tests.loadgen import Load

from .conftest import wait_until, worker_files
from .test_restart_socket import ready_pids


def _pid_of(d, name):
    return next(i["pid"] for i in d.infos() if i["name"] == name)


def _grow_one(d, mb):
    """/grow on whichever worker answers; returns its pid."""
    status, body = d.get(f"/grow?mb={mb}")
    assert status == 200
    return body["pid"]


def test_worker_over_memory_limit_is_recycled_without_failed_requests(deploy, tmp_path):
    alerts = str(tmp_path / "alerts.log")
    interval = 1.0
    d = deploy({"memory": {"limit": "120MB", "check_interval": interval, "limit_checks": 2},
                "alerts": [{"type": "log", "path": alerts}]})
    wait_until(lambda: d.state_of("web_watchdog") == "RUNNING", 20, "the watchdog to run")
    before = ready_pids(d)
    with Load("127.0.0.1", d.port, mode="close", threads=4) as load, \
            Load("127.0.0.1", d.port, mode="keepalive", threads=2) as keep:
        load.wait_requests(50)
        t0 = time.monotonic()
        fat = _grow_one(d, 150)
        gone = wait_until(lambda: fat not in {i["pid"] for i in d.infos()} and time.monotonic(), 30,
                          "the fat worker to be stopped")
        wait_until(lambda: (p := ready_pids(d)) and fat not in p and len(p) == 2, 30, "a new worker ready")
        ready = time.monotonic()
        n = load.result.requests
        load.wait_requests(n + 50)
    r, k = load.result, keep.result
    print(f"\nmemory recycle: stop sent+exited {gone - t0:.1f} s after the grow, new worker ready after "
          f"{ready - t0:.1f} s (check_interval {interval:g} s, limit_checks 2)\n"
          f"  connection-per-request: {r.summary()}\n  keep-alive: {k.summary()}")
    assert r.failures == 0, r.summary()
    # Recycled within two check intervals (plus the drain, which takes well under a second here).
    assert gone - t0 <= 2 * interval + 1.5
    survivors = before - {fat}
    assert survivors <= ready_pids(d), "the other worker must not have been touched"
    text = wait_until(lambda: os.path.exists(alerts) and "memory_recycle" in open(alerts).read()
                      and open(alerts).read(), 20, "the memory_recycle alert")
    assert f"pid {fat}" in text


def test_blocked_worker_is_replaced_and_busy_worker_is_not(deploy, tmp_path):
    alerts = str(tmp_path / "alerts.log")
    timeout = 3
    d = deploy({"server": {"heartbeat_timeout": timeout}, "alerts": [{"type": "log", "path": alerts}]})
    wait_until(lambda: d.state_of("web_watchdog") == "RUNNING", 20, "the watchdog to run")
    before = ready_pids(d)

    # Busy, not hung: 20 slow async requests spread over both workers for longer than the timeout.
    def slow():
        try:
            d.get("/sleep?s=5", timeout=15)
        except OSError:
            pass

    threads = [threading.Thread(target=slow) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert ready_pids(d) == before, "a worker busy with slow async requests was killed"

    # Hung: a request that blocks the event loop for 60 s.
    def block():
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        try:
            conn.request("GET", "/block?s=60")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    t0 = time.monotonic()
    threading.Thread(target=block, daemon=True).start()
    hung = wait_until(lambda: _blocked_pid(d, before, timeout), 15, "a worker to stop beating")
    wait_until(lambda: (p := ready_pids(d)) and hung not in p and len(p) == 2, timeout + 10,
               "the hung worker to be replaced")
    replaced = time.monotonic() - t0
    print(f"\nhung worker pid {hung} replaced {replaced:.1f} s after its loop blocked "
          f"(heartbeat_timeout {timeout} s)")
    assert replaced <= timeout + 5
    text = wait_until(lambda: os.path.exists(alerts) and "hung_worker" in open(alerts).read()
                      and open(alerts).read(), 20, "the hung_worker alert")
    assert f"pid {hung}" in text


def test_worker_whose_startup_hangs_is_killed_after_startup_timeout(deploy, tmp_path):
    alerts = str(tmp_path / "alerts.log")
    flag = tmp_path / "db-down"
    timeout = 4
    d = deploy({"server": {"startup_timeout": timeout}, "app": {"env": {"HANG_STARTUP_WHILE": str(flag)}},
                "alerts": [{"type": "log", "path": alerts}]})
    wait_until(lambda: d.state_of("web_watchdog") == "RUNNING", 20, "the watchdog to run")
    before = ready_pids(d)
    flag.write_text("")  # the database goes away; web_01's next start-up hangs
    d.rpc.supervisor.signalProcess("web:web_01", "KILL")
    stuck = wait_until(lambda: (p := _pid_of(d, "web_01")) not in before and d.state_of("web_01") == "RUNNING"
                       and p, 15, "web_01 to be respawned")
    spawned = next(i["start"] for i in d.infos() if i["name"] == "web_01")
    text = wait_until(lambda: os.path.exists(alerts) and "startup_timeout" in open(alerts).read()
                      and open(alerts).read(), timeout + 10, "the startup_timeout alert")
    killed_after = time.time() - spawned
    assert f"pid {stuck}" in text, text
    assert stuck not in {s["pid"] for s in worker_files(d.layout).values()}, "it never listened"
    assert timeout <= killed_after <= timeout + 3, killed_after
    assert _pid_of(d, "web_01") != stuck, "the stuck process is gone"
    flag.unlink()  # the database is back: the next start-up finishes
    wait_until(lambda: len(ready_pids(d) or ()) == 2, 20, "web_01 to listen again")
    print(f"\nstuck start-up (pid {stuck}) alerted {killed_after:.1f} s after its spawn "
          f"(startup_timeout {timeout} s)")


def _blocked_pid(d, pids, timeout):
    """The pid whose state file stopped being touched (its loop is blocked)."""
    now = time.time()
    for state in worker_files(d.layout).values():
        if state.get("pid") in pids and now - state["beat"] > 1.0:
            return state["pid"]
    return None
