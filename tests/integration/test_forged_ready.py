"""'Served' is what root observed, not what the app wrote (issue 16, point 7): a worker that
writes its own pid into its ready file and SIGKILLs itself before it listens is a start
failure, held in backoff, never 'killed after serving' and respawned at once forever."""

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
