"""The migration gate with a real supervisord: workers start only after `<app>_migrate` exits 0."""

import sys
import time

import pytest

from supervisor_fastapi.cli.deploy import wait_ready
from supervisor_fastapi.errors import UserError

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until

MIGRATION = """\
import os, sys, time
flag = os.environ.get("MIGRATE_FAIL_WHILE", "")
print("migrating: step 1 of 2", flush=True)
time.sleep(float(os.environ.get("MIGRATE_SECONDS", "0")))
if flag and os.path.exists(flag):
    print("ERROR: relation \\"users\\" already exists", flush=True)
    sys.exit(3)
print("migrating: done", flush=True)
"""


def migration_script(tmp_path) -> str:
    path = tmp_path / "migrate.py"
    path.write_text(MIGRATION)
    return f"{sys.executable} {path}"


def info(d, name):
    return next(i for i in d.infos() if i["name"] == name)


def test_workers_start_only_after_the_migration_exits_0(deploy, tmp_path):
    d = deploy({"migrate": {"command": migration_script(tmp_path), "env": {"MIGRATE_SECONDS": "2"}}},
               wait=False)
    wait_until(lambda: info(d, "web_migrate")["statename"] == "RUNNING", 15, "the migration to run")
    # While it runs, no worker is even started: the controller holds them, and says why.
    web = [i for i in d.infos() if i["group"] == "web"]
    assert {i["statename"] for i in web} == {"BACKOFF"} and all(i["pid"] == 0 for i in web)
    assert all("held by supervisor-fastapi: waiting for web_migrate" in i["spawnerr"] for i in web)
    wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 30)
    m = info(d, "web_migrate")
    assert m["statename"] == "EXITED" and m["exitstatus"] == 0
    for w in ("web_00", "web_01"):
        assert info(d, w)["start"] >= m["stop"], "a worker started before the migration ended"
    assert d.get("/")[0] == 200
    assert d.control_state()["gate"]["state"] == "open"


def test_failing_migration_keeps_workers_down_and_alerts_then_a_rerun_gates_again(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    with WebhookReceiver() as hook:
        d = deploy({"migrate": {"command": migration_script(tmp_path), "env": {"MIGRATE_FAIL_WHILE": str(flag)}},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, wait=False)
        alerts = wait_until(lambda: hook.alerts("migration_failed", "open"), 20, "the migration alert")
        m = info(d, "web_migrate")
        assert m["statename"] == "EXITED" and m["exitstatus"] == 3
        at, alert = alerts[0]
        # supervisord reports stop in whole seconds, and at first start the listener may still be
        # starting when the migration fails (supervisord buffers the alert for it).
        assert at - m["stop"] < 3.0, f"alert {at - m['stop']:.2f} s after the migration exited"
        assert "exited with status 3" in alert["text"]
        assert alert["details"]["exitstatus"] == 3
        assert 'relation "users" already exists' in alert["details"]["log_tail"]
        # Workers are never started: held in BACKOFF with no pid.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not [i for i in d.infos() if i["group"] == "web" and (i["statename"] != "BACKOFF" or i["pid"])]
            time.sleep(0.2)
        with pytest.raises(UserError, match="status 3"):
            wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 10)
        assert "EXITED" in d.ctl("status", "web_migrate").stdout
        assert d.control_state()["gate"]["state"] == "failed"
        assert len(hook.alerts("migration_failed", "open")) == 1
        # Fix the cause and run it again: the gate opens and the workers start.
        flag.unlink()
        d.ctl("start", "web_migrate")
        wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 30)
        wait_until(lambda: hook.alerts("migration_failed", "resolve"), 10, "the resolve alert")
        assert d.control_state()["gate"]["state"] == "open"


def test_hanging_migration_is_stopped_at_its_timeout(deploy, tmp_path):
    with WebhookReceiver() as hook:
        d = deploy({"migrate": {"command": migration_script(tmp_path), "timeout": 2,
                                "env": {"MIGRATE_SECONDS": "120"}},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, wait=False)
        wait_until(lambda: info(d, "web_migrate")["statename"] == "RUNNING", 15, "the migration to run")
        started = info(d, "web_migrate")["start"]
        alerts = wait_until(lambda: hook.alerts("migration_timeout", "open"), 15, "the timeout alert")
        at, alert = alerts[0]
        assert 2.0 <= at - started < 4.5, f"timeout alert {at - started:.2f} s after start"
        assert "migrating: step 1 of 2" in alert["details"]["log_tail"]
        wait_until(lambda: info(d, "web_migrate")["statename"] == "STOPPED", 15, "the migration to be stopped")
        assert {i["statename"] for i in d.infos() if i["group"] == "web"} == {"BACKOFF"}
        with pytest.raises(UserError, match="stopped before it finished"):
            wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 10)
        assert d.control_state()["gate"]["state"] == "timeout"


def test_a_migration_alert_carries_the_log_of_the_run_that_failed_only(deploy, tmp_path):
    """Issue 10 point 4: the alert's log tail starts at the failing run, not at an earlier one."""
    flag, said = tmp_path / "broken", tmp_path / "says"
    flag.write_text("")
    said.write_text("first_run_line_abc")
    script = tmp_path / "says.py"
    script.write_text("import os, sys\nprint(open(sys.argv[1]).read(), flush=True)\n"
                      "sys.exit(3 if os.path.exists(sys.argv[2]) else 0)\n")
    with WebhookReceiver() as hook:
        d = deploy({"migrate": {"command": f"{sys.executable} {script} {said} {flag}"},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, wait=False)
        first = wait_until(lambda: hook.alerts("migration_failed", "open"), 20, "the first migration alert")
        assert "first_run_line_abc" in first[0][1]["details"]["log_tail"]
        flag.unlink()
        said.write_text("second_run_line_def")
        d.ctl("start", "web_migrate")
        wait_until(lambda: hook.alerts("migration_failed", "resolve"), 20, "the resolve alert")
        flag.write_text("")
        said.write_text("third_run_line_ghi")
        d.ctl("start", "web_migrate")
        alerts = wait_until(lambda: len(hook.alerts("migration_failed", "open")) == 2
                            and hook.alerts("migration_failed", "open"), 20, "the second migration alert")
        tail = alerts[-1][1]["details"]["log_tail"]
        assert "third_run_line_ghi" in tail, tail
        assert "first_run_line_abc" not in tail and "second_run_line_def" not in tail, tail
        assert "first_run_line_abc" in d.log("web_migrate"), "the log file keeps the earlier runs"
