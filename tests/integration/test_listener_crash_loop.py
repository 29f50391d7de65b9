"""Crash-loop backoff with a real supervisord and real uvicorn workers that die 1 s after start."""

import json
import re
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
    return d.process_state(name).get("incident")


def dump(d) -> None:
    """Printed on failure (pytest shows captured output): what the controller saw and decided."""
    print("--- listener log ---\n" + d.log("web_listener")[-6000:])
    try:
        print("--- controller ---\n" + json.dumps(d.control_state(), indent=1))
    except Exception as exc:
        print(f"--- controller: {exc}")
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
        assert "failed 3 times" in opened[0][1]["text"]
        assert "log_tail" in opened[0][1]["details"]
        # Two more failed retries: the nominal delay doubles each time.
        wait_until(lambda: (incident(d) or {}).get("delay") == 6.0, 25, "the delay to reach 6 s")
        flag.unlink()  # "deploy the fix": the next retry survives
        resolved = wait_until(lambda: hook.alerts("crash_loop", "resolve"), 20, "the recovery alert")
        assert "recovered" in resolved[0][1]["text"]
        assert len(hook.alerts("crash_loop", "open")) == 1, "exactly one open alert per incident"
        # Each retry is the only spawn after the crash that scheduled it, no sooner than its
        # nominal delay (1.5, 3, 6 s; jitter 0) and within supervisord's 1 s poll of it.
        exits = log_events(d, r"exited: web_00 \(exit status 1; not expected\)")
        spawned = log_events(d, r"spawned: 'web_00'")
        retries = [min(t for t in spawned if t > e) for e in exits[2:5]]
        gaps = [round(r - e, 2) for r, e in zip(retries, exits[2:5])]
        for gap, nominal in zip(gaps, (1.5, 3.0, 6.0)):
            assert nominal - 0.05 <= gap <= nominal + 1.5, (gaps, "nominal 1.5, 3, 6 s")
        for e, r in zip(exits[2:5], retries):
            assert [t for t in spawned if e < t < r] == [], "a spawn while the process was held"
        assert d.state_of("web_00") == "RUNNING"
        assert incident(d) is None
        assert len(d.process_state("web_00")["spawns"]) == len(spawned), "the controller counts every spawn"
