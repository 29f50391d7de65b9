"""The listener's pure decisions: the alert relay (dedupe) and the no-plugin fallback."""

from supervisor_fastapi.contracts.rpc import LogRef
from supervisor_fastapi.contracts.settings import ListenerConfig
from supervisor_fastapi.listener.state import Fallback, ProcessState, Relay, RemoteEvent, SendAlert, Start


def test_the_controllers_alerts_pass_straight_through_and_other_apps_are_ignored():
    r = Relay("shop")
    log = LogRef("shop:shop_00", 1234)
    ev = RemoteEvent("crash_loop", "shop_00", "s", {"failures": 3}, app="shop", event="open", log_of=log)
    assert r.observe(ev, 0) == [SendAlert("open", "crash_loop", "shop_00", "s", {"failures": 3}, log)]
    assert r.observe(ev, 1) == []  # the same incident, still open: one OPEN
    assert r.observe(RemoteEvent("crash_loop", "x", app="shop_admin", event="open"), 2) == []


def test_one_incident_one_open_one_resolve_across_supervisord_runs():
    from supervisor_fastapi.listener.state import restore_incidents

    r = Relay("shop")
    opened = RemoteEvent("migration_failed", "shop_migrate", "s", app="shop", event="open")
    assert len(r.observe(opened, 0)) == 1
    # reload: the run's controller closes what it had open; the cause did not go away.
    ended = RemoteEvent("migration_failed", "shop_migrate", "closed", {"run_ended": True}, app="shop", event="resolve")
    assert r.observe(ended, 1) == []
    # The next run (a new listener process, its incidents from the state file) opens it again: not sent.
    r2 = Relay("shop", restore_incidents(dict(r.incidents)))
    assert r2.observe(opened, 2) == []
    fixed = RemoteEvent("migration_failed", "shop_migrate", "ok", app="shop", event="resolve")
    assert [a.event for a in r2.observe(fixed, 3)] == ["resolve"]
    assert r2.observe(fixed, 4) == [] and r2.incidents == {}  # the same resolve twice: sent once
    # An OPEN a listener could not save (full disk): its RESOLVED is still sent.
    assert [a.event for a in Relay("shop").observe(fixed, 5)] == ["resolve"]
    assert restore_incidents({"a": "x", "b": True, "c": 1.5, 3: 2}) == {"c": 1.5}
    assert restore_incidents(["junk"]) == {}


def test_no_worker_serving_opens_after_the_grace_and_resolves_when_one_runs():
    from supervisor_fastapi.listener.state import ProcessState, ServingWatch

    r = Relay("shop")
    w = ServingWatch("shop", now=0.0, served=False, grace=10)
    assert w.tick(20, r) == []  # never served (a first deploy waiting for its migration): no page
    w.observe(ProcessState("shop_00", "shop", "RUNNING"), 21)
    w.observe(ProcessState("shop_00", "shop", "STOPPING"), 30)
    assert w.tick(39, r) == []
    [opened] = w.tick(40, r)
    assert (opened.event, opened.kind, opened.process) == ("open", "no_worker_serving", "shop")
    assert w.tick(50, r) == []
    w.observe(ProcessState("shop_01", "shop", "RUNNING"), 51)
    assert [a.event for a in w.tick(51, r)] == ["resolve"]
    assert w.tick(52, r) == []
    # A new listener of a deployment that served: the clock starts at its start.
    w2 = ServingWatch("shop", now=100.0, served=True, grace=10)
    assert [a.event for a in w2.tick(110, Relay("shop"))] == ["open"]


def test_one_off_events_alert_once_a_minute_per_kind_and_process_and_count_the_rest():
    r = Relay("web")
    first = r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 0)
    assert [a.kind for a in first] == ["memory_recycle"]
    assert r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 10) == []
    assert r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 20) == []
    assert [a.process for a in r.observe(RemoteEvent("memory_recycle", "web_01", "big"), 21)] == ["web_01"]
    [again] = r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 61)
    assert again.details["suppressed_since_last"] == 2


def fallback() -> Fallback:
    return Fallback(ListenerConfig(app="web", web="web", migrate="web_migrate", controller=False,
                                   groups=("web", "web_worker")))


def test_without_the_plugin_the_workers_start_when_the_migration_exits_0():
    f = fallback()
    assert f.observe(ProcessState("web_migrate", "web_migrate", "EXITED", "RUNNING", expected=True, exitstatus=0),
                     0) == [Start("web:*")]


def test_without_the_plugin_a_failed_migration_alerts_once_and_a_success_resolves_it():
    f = fallback()
    failed = ProcessState("web_migrate", "web_migrate", "EXITED", "RUNNING", expected=False, exitstatus=3)
    [alert] = f.observe(failed, 0)
    assert (alert.event, alert.kind, alert.log_of) == ("open", "migration_failed", LogRef("web_migrate:web_migrate"))
    assert "status 3" in alert.summary
    assert f.observe(failed, 1) == []
    ok = f.observe(ProcessState("web_migrate", "web_migrate", "EXITED", "RUNNING", expected=True, exitstatus=0), 2)
    assert [type(a).__name__ for a in ok] == ["SendAlert", "Start"] and ok[0].event == "resolve"


def test_without_the_plugin_fatal_programs_alert_once_and_resolve_when_running_again():
    f = fallback()
    [a] = f.observe(ProcessState("web_worker", "web_worker", "FATAL", "BACKOFF"), 0)
    assert a.kind == "fatal" and "no crash-loop backoff" in a.summary
    assert f.observe(ProcessState("web_worker", "web_worker", "FATAL", "BACKOFF"), 1) == []
    assert [a.event for a in f.observe(ProcessState("web_worker", "web_worker", "RUNNING", "STARTING"), 2)] == [
        "resolve"]
    assert f.observe(ProcessState("other_x", "other", "FATAL", "BACKOFF"), 3) == []  # not this app's


def test_a_listener_started_on_demand_takes_the_controllers_snapshot_of_running_workers():
    from supervisor_fastapi.listener.state import Serving, ServingWatch

    r = Relay("shop")
    w = ServingWatch("shop", now=100.0, served=True, grace=10)
    assert w.watching()  # a new listener knows of no worker RUNNING yet: it stays to time the grace
    w.take(Serving("shop", ("shop_00", "shop_01")), 101)
    assert not w.watching() and w.tick(200, r) == []  # both serve: nothing to time, no page
    w.observe(ProcessState("shop_00", "shop", "EXITED"), 201)
    assert not w.watching()
    w.take(Serving("shop", ()), 202)  # then none: the grace runs from here
    assert w.watching() and w.tick(211, r) == []
    assert [a.event for a in w.tick(212, r)] == ["open"]
    assert w.watching()  # the incident is open: it stays until a worker runs
    w.take(Serving("shop", ("shop_01",)), 220)
    assert [a.event for a in w.tick(220, r)] == ["resolve"] and not w.watching()


def test_the_de_duplication_outlives_the_listener_process():
    r = Relay("web")
    r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 0)
    r.observe(RemoteEvent("memory_recycle", "web_00", "big"), 10)  # held back, counted
    r.observe(RemoteEvent("old", "web_01", "x"), -100)  # outside the minute: not worth keeping
    saved = r.memory(20)
    assert saved["sent"] == [["memory_recycle", "web_00", 0]]
    later = Relay("web")
    later.remember(saved)
    assert later.observe(RemoteEvent("memory_recycle", "web_00", "big"), 30) == []
    [again] = later.observe(RemoteEvent("memory_recycle", "web_00", "big"), 61)
    assert again.details["suppressed_since_last"] == 2
    odd = Relay("web")
    for junk in (None, [], {"sent": [["a"]], "suppressed": [["k", "p", -1], ["k", "p", True]], "resolved": {"x": "y"}}):
        odd.remember(junk)
    assert (odd.sent, odd.suppressed, odd.resolved) == ({}, {}, {})
