"""The event listener runs only while it has work: at rest the deployment has no listener
process, and every alert still arrives, the ones sent as it exits included."""

import json
import os
import signal
import threading
import time
import xmlrpc.client

from supervisor_fastapi.contracts.rpc import notify

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until

IDLE_EXIT = 5.0  # generate/conf.py LISTENER_IDLE_EXIT


def listener(d) -> dict:
    try:
        return next(i for i in d.infos() if i["name"] == "web_listener")
    except (OSError, xmlrpc.client.Fault):  # supervisord reloading or not up yet
        return {"statename": "UNKNOWN", "pid": 0, "exitstatus": None}


def at_rest(d, timeout: float = 30.0) -> None:
    wait_until(lambda: listener(d)["statename"] == "EXITED", timeout, "the listener's idle exit")
    assert listener(d)["exitstatus"] == 0


def daemon_log(d) -> str:
    with open(d.layout.logfile, errors="replace") as f:
        return f.read()


def kinds(hook: WebhookReceiver, event: str = "event") -> list:
    return sorted(a["kind"] for _, a in hook.alerts(event=event))


def test_the_listener_exits_at_rest_and_every_alert_still_arrives(deploy):
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "name": "hook", "url": hook.url}]})
        at_rest(d)
        # A lone worker crash while its sibling serves needs no listener (the plugin decides
        # crash loops); it is not started for it.
        exits = daemon_log(d).count("exited: web_listener")
        d.ctl("restart", "web:web_00")
        time.sleep(1.5)
        assert listener(d)["statename"] == "EXITED"

        # An alert at rest: the plugin starts the listener, which delivers and exits again.
        notify(d.rpc, "web", "rest_alert", "web_00", "sent at rest")
        wait_until(lambda: kinds(hook) == ["rest_alert"], 10, "the alert sent at rest")
        at_rest(d)

        # Alerts sent as the listener exits: every 50 ms across its idle deadline. An event
        # supervisord hands over just as it exits comes back to the buffer and starts the next one.
        notify(d.rpc, "web", "race_0", "web_00", "starts the listener")
        wait_until(lambda: "race_0" in kinds(hook), 10, "race_0")
        start = time.time()
        sent = ["race_0"]
        for i in range(1, 25):
            time.sleep(max(0.0, start + IDLE_EXIT - 0.6 + i * 0.05 - time.time()))
            notify(d.rpc, "web", f"race_{i}", "web_00", "around the idle exit")
            sent.append(f"race_{i}")
        wait_until(lambda: sorted(sent) == sorted(k for k in kinds(hook) if k.startswith("race_")), 20,
                   "every alert sent around the idle exit")
        at_rest(d)
        assert daemon_log(d).count("exited: web_listener") > exits

        # De-duplication outlives the listener process: the same alert within a minute is
        # held back and counted, not sent again by the next listener.
        notify(d.rpc, "web", "rest_alert", "web_00", "again, within the minute")
        wait_until(lambda: listener(d)["statename"] == "RUNNING", 10, "the listener started for the repeat")
        at_rest(d)
        assert kinds(hook).count("rest_alert") == 1
        assert d.listener_state()["dedupe"]["suppressed"] == [["rest_alert", "web_00", 1]]
        assert "overflowed" not in daemon_log(d)


def test_with_every_worker_stopped_the_listener_stays_and_pages_then_resolves(deploy):
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "name": "hook", "url": hook.url}]})
        at_rest(d)
        d.ctl("stop", "web:*")
        opened = wait_until(lambda: hook.alerts(kind="no_worker_serving", event="open"), 25,
                            "no_worker_serving after the grace")
        assert listener(d)["statename"] == "RUNNING"  # it stays while no worker serves
        d.ctl("start", "web:*")
        wait_until(lambda: hook.alerts(kind="no_worker_serving", event="resolve"), 15, "the resolve")
        assert len(opened) == 1
        at_rest(d)
        # At rest again with the workers up: a lone restart does not page.
        d.ctl("restart", "web:web_01")
        time.sleep(IDLE_EXIT + 1)
        assert len(hook.alerts(kind="no_worker_serving")) == 2


def test_a_listener_restarted_after_a_crash_knows_both_workers_serve(deploy):
    """Whoever starts the listener, the plugin tells it which workers run: a listener that
    supervisord restarts after kill -9 must not page "no worker serving" while both serve."""
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "name": "hook", "url": hook.url}]})
        at_rest(d)  # every start-up event taken: no RUNNING event is left to tell a new listener
        old = d.running_listener()
        os.kill(old["pid"], signal.SIGKILL)
        wait_until(lambda: listener(d)["statename"] == "RUNNING" and listener(d)["pid"] != old["pid"], 15,
                   "supervisord's restart of the listener")
        time.sleep(12)  # past the 10 s grace of no_worker_serving
        assert hook.alerts(kind="no_worker_serving") == []
        at_rest(d)


def test_an_alert_sent_at_rest_survives_a_reload_and_a_down_that_follow_at_once(deploy):
    """While the listener starts (a second), alerts wait in the plugin's spool on disk, not in
    supervisord's buffer, which a reload or a shutdown throws away."""
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "name": "hook", "url": hook.url}]})
        at_rest(d)
        notify(d.rpc, "web", "before_reload", "web_00", "then supervisorctl reload at once")
        assert d.ctl("reload").returncode == 0
        wait_until(lambda: "before_reload" in kinds(hook), 30, "the alert sent just before the reload")
        at_rest(d, 60)
        notify(d.rpc, "web", "before_down", "web_00", "then down at once")
        r = d.cli("down")
        assert r.returncode == 0, r.stdout + r.stderr
        r = d.cli("up", "--timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: "before_down" in kinds(hook), 30, "the alert sent just before down, after up")
        assert kinds(hook).count("before_reload") == 1 and kinds(hook).count("before_down") == 1
        assert not os.path.exists(d.layout.listener_spool)


def test_a_burst_larger_than_supervisords_buffer_at_rest_loses_nothing(deploy):
    d = deploy({"alerts": [{"type": "log", "name": "file"}]})
    at_rest(d)
    sent = [f"burst_{i}" for i in range(1500)]  # the listener's buffer in supervisord holds 1024

    def send(kinds: list) -> None:
        rpc = d.rpc  # a connection per thread: four senders outrun the listener's one-second start
        for kind in kinds:
            notify(rpc, "web", kind, "web_00", "a burst at rest")

    threads = [threading.Thread(target=send, args=(sent[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    def delivered() -> list:
        try:
            with open(d.layout.alerts_log) as f:
                return [json.loads(line)["kind"] for line in f if line.strip()]
        except OSError:
            return []

    wait_until(lambda: len([k for k in delivered() if k.startswith("burst_")]) == len(sent), 60,
               "every alert of the burst in the log channel")
    assert sorted(k for k in delivered() if k.startswith("burst_")) == sorted(sent)
    time.sleep(12)  # past no_worker_serving's grace: both workers serve, no page
    assert "no_worker_serving" not in delivered()
    assert "overflowed" not in daemon_log(d)
