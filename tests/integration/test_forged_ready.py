"""'Served' is what root observed, not what the app wrote (issue 16, point 7): a worker that
writes its own pid into its ready file and SIGKILLs itself before it listens is a start
failure, held in backoff, never 'killed after serving' and respawned at once forever."""

import os
import signal
import time

from .conftest import wait_until
from .test_control_plane import held, spawns


def test_a_forged_ready_file_does_not_bypass_the_backoff(deploy):
    d = deploy({"app": {"asgi": "forgeapp:app"}, "server": {"workers": 1},
                "crash_loop": {"restarts": 3, "window": 60, "backoff_initial": 30, "jitter": 0}}, wait=False)
    wait_until(lambda: held(d), 20, "the forging worker to be held by the crash-loop guard")
    hold = held(d)
    assert hold["kind"] == "crash" and "crash loop" in hold["reason"], hold
    entry = d.process_state("web_00")
    assert entry["incident"]["kind"] == "crash_loop" and entry.get("kill_incident") is None, entry
    count = len(spawns(d))
    assert count <= 4, (f"{count} spawns before the hold", entry)
    time.sleep(5)
    assert len(spawns(d)) == count, "respawned while held"
    assert d.state_of("web_00") == "BACKOFF"


def test_a_worker_that_really_listened_is_seen_serving_on_uvloop_too(deploy):
    """The /proc evidence holds for uvloop's (libuv's) epoll as for asyncio's: killed after it
    served, it is restarted at once and never held."""
    d = deploy({"server": {"workers": 1, "uvicorn": {"loop": "uvloop", "http": "httptools"}},
                "crash_loop": {"restarts": 2, "window": 60, "backoff_initial": 30}})
    for n in range(3):
        old = next(i["pid"] for i in d.infos() if i["name"] == "web_00")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda old=old: d.state_of("web_00") == "RUNNING" and
                   next(i["pid"] for i in d.infos() if i["name"] == "web_00") != old and
                   d.rpc.fastapi_web.getWorkerStates().get("web_00", {}).get("pid") ==
                   next(i["pid"] for i in d.infos() if i["name"] == "web_00"), 15, f"kill {n}: web_00 ready again")
        assert not held(d), "a worker killed after it served must never be held"
    entry = d.process_state("web_00")
    assert entry.get("incident") is None and entry["kill_incident"]["kind"] == "killed", entry
