"""One incident, one OPEN, one RESOLVED: across reloads, and an alert when no worker serves.

Issue 16, point 4: a migration re-run fails while the workers serve; each `reload` then
stops the workers and none restarts (the gate is shut). Before: no alert said so, and every
reload sent RESOLVED and a new OPEN for the same broken migration.
"""

import time

import pytest

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until
from .test_migrate import info, migration_script

pytestmark = pytest.mark.integration


def counts(hook):
    out = {}
    for _at, a in hook.alerts():
        key = (a["kind"], a["event"])
        out[key] = out.get(key, 0) + 1
    return out


def test_three_reloads_during_a_failed_migration_make_one_incident_and_say_no_worker_serves(deploy, tmp_path):
    flag = tmp_path / "broken"
    with WebhookReceiver() as hook:
        d = deploy({"migrate": {"command": migration_script(tmp_path), "env": {"MIGRATE_FAIL_WHILE": str(flag)}},
                    "alerts": [{"type": "webhook", "url": hook.url}]})
        assert d.get("/")[0] == 200
        flag.write_text("")
        d.ctl("start", "web_migrate")  # a re-run that fails: the workers keep serving
        wait_until(lambda: hook.alerts("migration_failed", "open"), 20, "the migration alert")
        for n in range(3):
            time.sleep(1.1)  # supervisord reports start in whole seconds
            before = int(time.time())
            r = d.ctl("reload")
            assert "Restarted supervisord" in r.stdout, r.stdout
            wait_until(lambda before=before: _failed_again(d, before), 40, f"the migration of run {n + 2} to fail")
        # Nobody serves now: the gate holds every worker of the new run.
        wait_until(lambda: hook.alerts("no_worker_serving", "open"), 30, "the no-worker alert")
        time.sleep(2)  # anything late would show now
        seen = counts(hook)
        assert seen.get(("migration_failed", "open")) == 1, seen
        assert seen.get(("no_worker_serving", "open")) == 1, seen
        assert not [k for k in seen if k[1] == "resolve"], seen
        # The fix: one RESOLVED for the migration, and the workers serve again.
        flag.unlink()
        d.ctl("start", "web_migrate")
        wait_until(lambda: hook.alerts("migration_failed", "resolve"), 30, "the migration's resolve")
        wait_until(lambda: hook.alerts("no_worker_serving", "resolve"), 30, "the no-worker resolve")
        assert d.get("/")[0] == 200
        time.sleep(2)
        seen = counts(hook)
        assert seen == {("migration_failed", "open"): 1, ("migration_failed", "resolve"): 1,
                        ("no_worker_serving", "open"): 1, ("no_worker_serving", "resolve"): 1}, seen


def _failed_again(d, before: float) -> bool:
    try:
        m = info(d, "web_migrate")
    except Exception:
        return False  # supervisord is between runs
    return m["start"] >= before and m["statename"] == "EXITED" and m["exitstatus"] == 3
