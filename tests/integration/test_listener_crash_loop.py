"""Crash-loop backoff with a real supervisord and real uvicorn workers that die 1 s after start."""

import json
import os
import re
import signal
import time
from datetime import datetime
from typing import List

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")


def log_events(d, pattern: str) -> List[float]:
    """Epoch times of supervisord.log lines matching ``pattern``."""
    out = []
    with open(d.layout.logfile, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m and re.search(pattern, m.group(2)):
                out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def listener_log_times(d, pattern: str) -> List[float]:
    out = []
    for line in d.log("web_listener").splitlines():
        m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ listener: (.*)$", line)
        if m and re.search(pattern, m.group(2)):
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def incident(d, name="web_00") -> dict:
    return d.listener_state().get("incidents", {}).get(name) or {}


def dump(d) -> None:
    """Printed on failure (pytest shows captured output): what the listener saw and decided."""
    print("--- listener log ---\n" + d.log("web_listener")[-6000:])
    print("--- state file ---\n" + json.dumps(d.listener_state(), indent=1))
    with open(d.layout.logfile, errors="replace") as f:
        print("--- supervisord.log ---\n" + f.read()[-6000:])


def crashing(flag, hook_url, **backoff) -> dict:
    loop = {"restarts": 3, "window": 30, "backoff_initial": 1.5, "backoff_max": 20, "backoff_reset": 3,
            "jitter": 0}
    loop.update(backoff)
    return {"server": {"workers": 1},
            "app": {"env": {"CRASH_AFTER": "1", "CRASH_WHILE": str(flag)}},
            "crash_loop": loop,
            "alerts": [{"type": "webhook", "url": hook_url}]}


def test_crash_loop_opens_one_incident_backs_off_and_resolves_after_a_fix(deploy, tmp_path, request):
    flag = tmp_path / "broken"
    flag.write_text("")
    with WebhookReceiver() as hook:
        d = deploy(crashing(flag, hook.url), wait=False)
        request.addfinalizer(lambda: dump(d))
        opened = wait_until(lambda: hook.alerts("crash_loop", "open"), 25, "the crash-loop alert")
        detected = log_events(d, r"exited: web_00 \(exit status 1; not expected\)")[2]
        assert opened[0][0] - detected < 2.0, f"alert {opened[0][0] - detected:.2f} s after detection"
        assert "crashed 3 times" in opened[0][1]["text"]
        assert "log_tail" in opened[0][1]["details"]
        # Two more failed retries: the nominal delay doubles each time.
        wait_until(lambda: incident(d).get("delay") == 6.0, 25, "the delay to reach 6 s")
        flag.unlink()  # "deploy the fix": the next retry survives
        resolved = wait_until(lambda: hook.alerts("crash_loop", "resolve"), 20, "the recovery alert")
        assert "recovered" in resolved[0][1]["text"]
        assert len(hook.alerts("crash_loop", "open")) == 1, "exactly one open alert per incident"
        # Each retry comes no sooner than its nominal delay (1.5, 3, 6 s; jitter 0) after the crash
        # that scheduled it, and not much later: the slack covers supervisord's delivery of the
        # EXITED and STOPPED events (up to ~1 s each) and the stop of the automatic respawn.
        # The crash that schedules a retry is the first one after the previous start (the
        # incident's opening crash for the first retry); an automatic respawn may crash on its
        # own before the listener's stop lands, adding a later exit that must not count.
        exits = log_events(d, r"exited: web_00 \(exit status 1; not expected\)")
        starts = listener_log_times(d, r"start web:web_00$")
        assert len(starts) >= 3, (starts, exits)
        scheduling = [exits[2]] + [min(e for e in exits if e > s) for s in starts[:2]]
        gaps = [round(s - e, 2) for s, e in zip(starts, scheduling)]
        for gap, nominal in zip(gaps, (1.5, 3.0, 6.0)):
            assert nominal - 0.05 <= gap <= nominal + 4.0, (gaps, "nominal 1.5, 3, 6 s")
        assert d.state_of("web_00") == "RUNNING"
        assert incident(d) == {}
        spawns = d.listener_state()["spawns"]["web_00"]
        assert len(spawns) == len(log_events(d, r"spawned: 'web_00'")), "state file counts every spawn"


def test_listener_killed_mid_backoff_keeps_the_hold_and_the_incident(deploy, tmp_path, request):
    flag = tmp_path / "broken"
    flag.write_text("")
    with WebhookReceiver() as hook:
        d = deploy(crashing(flag, hook.url, backoff_initial=6), wait=False)
        request.addfinalizer(lambda: dump(d))
        wait_until(lambda: incident(d).get("next_retry"), 25, "the incident to hold web_00")
        next_retry = incident(d)["next_retry"]
        wait_until(lambda: d.state_of("web_00") == "STOPPED", 5, "web_00 to be held stopped")
        listener = next(i for i in d.infos() if i["name"] == "web_listener")
        os.kill(listener["pid"], signal.SIGKILL)
        wait_until(lambda: next((i for i in d.infos() if i["name"] == "web_listener" and i["statename"] == "RUNNING"
                                 and i["pid"] != listener["pid"]), None), 15, "the listener to come back")
        assert time.time() < next_retry, "the test must kill the listener before the retry is due"
        # Still held until the saved retry time, then retried once, without a second open alert.
        assert d.state_of("web_00") == "STOPPED"
        retry = wait_until(lambda: [t for t in log_events(d, r"spawned: 'web_00'") if t > next_retry - 1], 15,
                           "the retry after the listener restart")[0]
        assert next_retry - 0.3 <= retry <= next_retry + 1.5, (retry - next_retry)
        assert incident(d)["kind"] == "crash_loop"
        time.sleep(0.5)
        assert len(hook.alerts("crash_loop", "open")) == 1
