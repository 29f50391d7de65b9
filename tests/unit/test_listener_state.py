"""The listener's state machine, driven by event histories written as data (no clock, no RPC)."""

import json
from typing import Any, List, Optional, Sequence, Tuple

from supervisor_fastapi.listener.state import (
    STOP_SETTLE,
    Alert,
    Config,
    Machine,
    ProcessState,
    Reconcile,
    RemoteEvent,
    Start,
    StartFailed,
    Stop,
    Tick,
)
from supervisor_fastapi.spec import Backoff, CrashLoop

B = Backoff(restarts=3, window=60, backoff_initial=10, backoff_max=40, backoff_reset=60, jitter=0.0)


def machine(migrate: Optional[float] = None, backoff: Backoff = B, rand: float = 0.0, reminder: float = 3600,
            overrides: Tuple[Tuple[str, Backoff], ...] = ()) -> Machine:
    return Machine(Config(app="web", migrate_timeout=migrate, crash_loop=CrashLoop(backoff, overrides),
                          reminder_interval=reminder), rand=lambda: rand)


def ps(state: str, name: str = "web_00", frm: str = "", expected: Optional[bool] = None, group: str = "web",
       **kw: Any) -> ProcessState:
    return ProcessState(name=name, group=group, state=state, from_state=frm, expected=expected, **kw)


def info(name: str, state: str, group: str = "web", start: float = 0.0, exitstatus: int = 0) -> dict:
    return {"name": name, "group": group, "statename": state, "start": start, "exitstatus": exitstatus}


def replay(m: Machine, history: Sequence[Tuple[float, Any]]) -> List[Tuple[float, Any]]:
    """Feed (time, event) pairs, ticking every 0.1 s in between as the real loop's timer would."""
    out: List[Tuple[float, Any]] = []
    now = history[0][0]
    for t, event in history:
        while True:
            due = m.next_deadline()
            if due is None or due > t:
                break
            now = max(now, due)
            out += [(round(now, 2), a) for a in m.observe(Tick(), now)]
        now = t
        out += [(round(now, 2), a) for a in m.observe(event, now)]
    return out


def crash(t: float, name: str = "web_00") -> List[Tuple[float, Any]]:
    """One supervisord crash-restart cycle starting at t: STARTING, RUNNING 1 s later, EXITED 1.5 s later."""
    return [(t, ps("STARTING", name, "EXITED")), (t + 1, ps("RUNNING", name, "STARTING")),
            (t + 1.5, ps("EXITED", name, "RUNNING", expected=False))]


def alerts(actions: List[Tuple[float, Any]], event: Optional[str] = None) -> List[Tuple[float, Alert]]:
    return [(t, a) for t, a in actions if isinstance(a, Alert) and (event is None or a.event == event)]


def rpcs(actions: List[Tuple[float, Any]]) -> List[Tuple[float, str, str]]:
    return [(t, type(a).__name__, a.namespec) for t, a in actions if isinstance(a, (Start, Stop))]


# --- crash loops ----------------------------------------------------------------------------


def test_three_unexpected_exits_in_the_window_open_one_incident_and_hold_the_process():
    m = machine()
    history = crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED"))]
    out = replay(m, history + [(9.0, Tick())])
    opened = alerts(out, "open")
    assert len(opened) == 1
    t, alert = opened[0]
    assert t == 5.5 and alert.kind == "crash_loop" and alert.process == "web_00"
    assert alert.summary == "web_00 crashed 3 times in 4 s; restarting it with backoff"
    assert alert.log_of == "web:web_00"
    # supervisord's own respawn at 6.0 is stopped once it had time to exec.
    assert rpcs(out) == [(6.0 + STOP_SETTLE, "Stop", "web:web_00")]
    assert m.procs["web_00"].incident.next_retry == 15.5


def test_retries_double_the_delay_up_to_the_maximum_and_never_alert_twice():
    m = machine()
    out = replay(m, crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")),
                                                      (6.4, ps("STOPPED", frm="STOPPING"))])
    delays = []
    for _ in range(4):
        # The retry the machine scheduled fails like the others, and supervisord respawns it once.
        inc = m.procs["web_00"].incident
        t = inc.next_retry
        delays.append(inc.delay)
        out += replay(m, [(t, Tick()), (t, ps("STARTING", frm="STOPPED")), (t + 1, ps("RUNNING", frm="STARTING")),
                          (t + 1.5, ps("EXITED", frm="RUNNING", expected=False)),
                          (t + 1.6, ps("STARTING", frm="EXITED")), (t + 2.0, ps("STOPPED", frm="STOPPING"))])
    assert delays == [10, 20, 40, 40]  # doubling, capped at backoff_max
    starts = [t for t, kind, _ in rpcs(out) if kind == "Start"]
    assert starts == [15.5, 37.0, 78.5, 120.0]
    assert len(alerts(out, "open")) == 1 and not alerts(out, "resolve")
    assert m.procs["web_00"].incident.retries == 4


def test_jitter_only_lengthens_the_delay():
    m = machine(backoff=Backoff(restarts=1, backoff_initial=10, backoff_max=40, jitter=0.2), rand=1.0)
    m.observe(ps("EXITED", frm="RUNNING", expected=False), 100.0)
    assert m.procs["web_00"].incident.next_retry == 112.0


def test_exits_outside_the_window_or_expected_do_not_open_an_incident():
    m = machine()
    out = replay(m, crash(0) + crash(70) + crash(140)
                 + [(150.0, ps("EXITED", frm="RUNNING", expected=True)), (151.0, ps("EXITED", frm="RUNNING",
                                                                                     expected=True))])
    assert alerts(out) == [] and rpcs(out) == []


def test_stable_running_for_backoff_reset_resolves_and_forgets_the_exits():
    m = machine()
    h = crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")), (6.4, ps("STOPPED", frm="STOPPING")),
                                          (15.5, ps("STARTING", frm="STOPPED")), (16.5, ps("RUNNING", frm="STARTING")),
                                          (200.0, Tick())]
    out = replay(m, h)
    resolved = alerts(out, "resolve")
    assert [(t, a.summary) for t, a in resolved] == [(76.5, "web_00: running for 60 s; recovered")]
    assert m.procs["web_00"].incident is None and m.procs["web_00"].exits == []
    # A new crash is just one exit again, not a continuation of the old loop.
    assert alerts(m.observe(ps("EXITED", frm="RUNNING", expected=False), 201.0)) == []


def test_reminders_are_rate_limited_while_an_incident_stays_open():
    m = machine(reminder=100)
    h = crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")), (6.4, ps("STOPPED", frm="STOPPING")),
                                          (15.5, ps("STARTING", frm="STOPPED")), (16.5, ps("FATAL", frm="BACKOFF")),
                                          (250.0, Tick())]
    out = replay(m, h)
    assert [t for t, _ in alerts(out, "reminder")] == [105.5, 205.5]


def test_a_stop_by_hand_closes_the_incident_and_a_start_by_hand_counts_as_the_retry():
    m = machine()
    h = crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")), (6.4, ps("STOPPED", frm="STOPPING"))]
    replay(m, h)
    # Held: the operator starts it by hand before the retry is due.
    assert rpcs([(7.0, a) for a in m.observe(ps("STARTING", frm="STOPPED"), 7.0)]) == []
    assert m.procs["web_00"].incident.next_retry is None and m.procs["web_00"].incident.retries == 1
    m.observe(ps("RUNNING", frm="STARTING"), 8.0)
    out = m.observe(ps("STOPPING", frm="RUNNING"), 9.0) + m.observe(ps("STOPPED", frm="STOPPING"), 9.5)
    assert [a.summary for a in out if isinstance(a, Alert)] == ["web_00: stopped by hand; incident closed"]
    assert m.procs["web_00"].incident is None


def test_a_retry_waits_for_our_pending_stop_instead_of_racing_it():
    m = machine()
    replay(m, crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED"))])
    assert [type(a).__name__ for a in m.observe(Tick(), 6.3)] == ["Stop"]  # the process is slow to die
    assert m.observe(Tick(), 15.5) == [] and m.next_deadline() > 1000  # no start into a STOPPING process
    m.observe(ps("STOPPING", frm="RUNNING"), 15.6)
    assert m.observe(ps("STOPPED", frm="STOPPING"), 16.0) == [Start("web:web_00")]


def test_a_failed_retry_start_is_tried_again():
    m = machine()
    replay(m, crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")),
                                                (6.4, ps("STOPPED", frm="STOPPING"))])
    assert m.observe(Tick(), 15.5) == [Start("web:web_00")]
    assert m.observe(StartFailed("web:web_00", "SPAWN_ERROR"), 15.6) == []
    assert m.observe(Tick(), 16.6) == [Start("web:web_00")]


def test_a_stop_that_found_the_process_already_exited_does_not_block_the_retry():
    m = machine()
    replay(m, crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")), (6.3, Tick())])
    # It crashed before our stop arrived (NOT_RUNNING): supervisord respawns, we hold again.
    m.observe(ps("EXITED", frm="STARTING", expected=False), 6.5)
    out = replay(m, [(6.6, ps("STARTING", frm="EXITED")), (7.0, ps("STOPPED", frm="STOPPING")), (40.0, Tick())])
    assert [kind for _, kind, _ in rpcs(out)] == ["Stop", "Start"]


def test_fatal_is_retried_on_the_same_schedule_or_only_reported():
    m = machine()
    out = replay(m, [(0.0, ps("FATAL", frm="BACKOFF")), (11.0, Tick())])
    assert [a.kind for _, a in alerts(out, "open")] == ["fatal"]
    assert rpcs(out) == [(10.0, "Start", "web:web_00")]
    m2 = machine(overrides=(("worker", Backoff(retry_fatal=False)),))
    out2 = replay(m2, [(0.0, ps("FATAL", "web_worker", "BACKOFF", group="web_worker")), (500.0, Tick())])
    assert "supervisord will not retry it" in alerts(out2, "open")[0][1].summary
    assert rpcs(out2) == []


def test_the_listener_and_the_migration_are_not_crash_loop_candidates():
    m = machine()
    for t in range(5):
        assert alerts([(0, a) for a in m.observe(ps("EXITED", "web_listener", "RUNNING", expected=False,
                                                         group="web_listener"), float(t))]) == []
    assert "web_listener" not in m.procs


# --- the migration gate --------------------------------------------------------------------


def gated() -> Machine:
    m = machine(migrate=30)
    m.observe(Reconcile([info("web_00", "STOPPED"), info("web_01", "STOPPED"),
                         info("web_migrate", "STOPPED", "web_migrate")]), 0.0)
    return m


def mig(state: str, frm: str = "", expected: Optional[bool] = None, **kw: Any) -> ProcessState:
    return ps(state, "web_migrate", frm, expected, group="web_migrate", **kw)


def test_workers_start_only_when_the_migration_exits_0():
    m = gated()
    assert m.gate.state == "waiting"
    out = replay(m, [(0.1, mig("STARTING", "STOPPED")), (0.1, mig("RUNNING", "STARTING")),
                     (12.0, mig("EXITED", "RUNNING", True, exitstatus=0))])
    assert rpcs(out) == [(12.0, "Start", "web:web_00"), (12.0, "Start", "web:web_01")]
    assert m.snapshot(12.0)["gate"] == {"state": "open", "detail": "migration exited 0"}


def test_a_failed_migration_keeps_workers_down_and_alerts_with_its_log_then_a_rerun_gates_again():
    m = gated()
    out = replay(m, [(0.1, mig("STARTING", "STOPPED")), (0.1, mig("RUNNING", "STARTING")),
                     (3.0, mig("EXITED", "RUNNING", False, exitstatus=2, run_start=0.1))])
    assert rpcs(out) == []
    [(t, a)] = alerts(out)
    assert (t, a.event, a.kind, a.log_of) == (3.0, "open", "migration_failed", "web_migrate:web_migrate")
    assert a.summary == "web_migrate exited with status 2; web workers stay down"
    snap = m.snapshot(3.0)
    assert snap["gate"]["state"] == "failed" and snap["incidents"]["web_migrate"]["kind"] == "migration_failed"
    out = replay(m, [(50.0, mig("STARTING", "EXITED")), (51.0, mig("EXITED", "RUNNING", True, exitstatus=0))])
    assert [a.event for _, a in alerts(out)] == ["resolve"]
    assert [kind for _, kind, _ in rpcs(out)] == ["Start", "Start"]
    assert "web_migrate" not in m.snapshot(51.0)["incidents"]


def test_a_migration_past_its_timeout_is_stopped_and_the_gate_fails():
    m = gated()
    out = replay(m, [(1.0, mig("STARTING", "STOPPED")), (1.0, mig("RUNNING", "STARTING")),
                     (40.0, mig("STOPPED", "STOPPING"))])
    assert rpcs(out) == [(31.0, "Stop", "web_migrate:web_migrate")]
    assert [(t, a.kind) for t, a in alerts(out)] == [(31.0, "migration_timeout")]
    assert m.gate.state == "failed" and "longer than its timeout (30 s)" in m.gate.detail


def test_a_migration_stopped_by_hand_fails_the_gate_without_an_alert():
    m = gated()
    out = replay(m, [(1.0, mig("STARTING", "STOPPED")), (2.0, mig("STOPPED", "STOPPING"))])
    assert alerts(out) == [] and m.gate.state == "failed"


def test_no_migration_means_no_gate():
    m = machine()
    m.observe(Reconcile([info("web_00", "RUNNING")]), 0.0)
    assert m.snapshot(0.0)["gate"]["state"] == "none"


# --- remote events -------------------------------------------------------------------------


def test_remote_events_alert_once_a_minute_per_kind_and_process_and_count_the_rest():
    m = machine()
    sent = []
    for t in (0.0, 10.0, 20.0):
        sent += m.observe(RemoteEvent("memory_recycle", "web_01", "web_01 used 1.2 GB", {"rss": 1}), t)
    sent += m.observe(RemoteEvent("memory_recycle", "web_00", "web_00 used 1.3 GB"), 21.0)
    sent += m.observe(RemoteEvent("memory_recycle", "web_01", "web_01 used 1.2 GB", {"rss": 1}), 61.0)
    assert [(a.process, a.event, dict(a.details).get("suppressed_since_last")) for a in sent] == [
        ("web_01", "event", None), ("web_00", "event", None), ("web_01", "event", 2)]


# --- restart and reconcile -----------------------------------------------------------------


def test_state_survives_a_listener_restart_through_the_snapshot():
    m = machine()
    replay(m, crash(0) + crash(2) + crash(4) + [(6.0, ps("STARTING", frm="EXITED")),
                                                (6.4, ps("STOPPED", frm="STOPPING"))])
    saved = json.loads(json.dumps(m.snapshot(7.0)))  # what the state file holds
    assert set(saved) >= {"version", "updated", "gate", "incidents", "spawns"}
    assert saved["incidents"]["web_00"]["next_retry"] == 15.5
    assert len(saved["spawns"]["web_00"]) == 4
    # A new listener, while supervisord respawned nothing: still held, retried on time, no new alert.
    m2 = machine()
    out = m2.observe(Reconcile([info("web_00", "STOPPED")], saved), 8.0)
    assert out == []
    out = replay(m2, [(8.0, Tick()), (16.0, Tick())])
    assert rpcs(out) == [(15.5, "Start", "web:web_00")] and alerts(out) == []
    # If the process was started behind its back meanwhile, the new listener holds it again.
    m3 = machine()
    assert m3.observe(Reconcile([info("web_00", "RUNNING", start=7.5)], saved), 8.0) == [Stop("web:web_00")]


def test_reconcile_opens_the_gate_for_a_migration_that_finished_unwatched_and_ignores_its_replayed_events():
    m = machine(migrate=30)
    infos = [info("web_00", "STOPPED"), info("web_migrate", "EXITED", "web_migrate", start=5.0, exitstatus=0)]
    out = m.observe(Reconcile(infos, None), 9.0)
    assert out == [Start("web:web_00")] and m.gate.state == "open"
    # supervisord now delivers the buffered events of that same run: nothing happens twice.
    for ev in (mig("STARTING", "STOPPED", run_start=5.0), mig("EXITED", "RUNNING", True, run_start=5.0)):
        assert m.observe(ev, 9.5) == []
    assert m.gate.state == "open"
    # With the gate already open in the state file, a listener restart starts nothing.
    m2 = machine(migrate=30)
    assert m2.observe(Reconcile(infos, {"version": 1, "gate": {"state": "open"}}), 9.0) == []


def test_reconcile_reports_a_migration_that_failed_unwatched_once():
    m = machine(migrate=30)
    infos = [info("web_migrate", "EXITED", "web_migrate", start=5.0, exitstatus=4)]
    out = m.observe(Reconcile(infos, None), 9.0)
    assert [a.kind for a in out if isinstance(a, Alert)] == ["migration_failed"]
    saved = json.loads(json.dumps(m.snapshot(9.0)))
    assert machine(migrate=30).observe(Reconcile(infos, saved), 10.0) == []


def test_next_deadline_is_the_earliest_timer():
    m = gated()
    assert m.next_deadline() is None
    m.observe(mig("STARTING", "STOPPED"), 1.0)
    assert m.next_deadline() == 31.0


def test_from_spec_watches_only_the_groups_the_spec_renders(tmp_path):
    from supervisor_fastapi.spec import HostDefaults, parse_spec

    spec = parse_spec('[app]\nname = "web"\nasgi = "m:app"\n[[programs]]\nname = "jobs"\ncommand = "python j.py"\n',
                      str(tmp_path / "s.toml"), str(tmp_path), HostDefaults(python="python3", cpu_count=2))
    m = Machine(Config.from_spec(spec))
    for t in range(5):
        m.observe(ps("EXITED", "web_legacy", "RUNNING", expected=False, group="web_legacy"), float(t))
        m.observe(ps("EXITED", "web_jobs", "RUNNING", expected=False, group="web_jobs"), float(t))
    assert "web_legacy" not in m.procs and m.procs["web_jobs"].incident is not None


def test_removing_a_group_closes_its_incidents_and_forgets_its_holds():
    from supervisor_fastapi.listener.protocol import decode

    m = machine()
    replay(m, crash(0) + crash(2) + crash(4))
    assert m.procs["web_00"].held
    ev = decode({"eventname": "PROCESS_GROUP_REMOVED"}, "groupname:web\n")
    out = m.observe(ev, 7.0)
    assert [(a.event, a.summary) for a in out if isinstance(a, Alert)] == [
        ("resolve", "web_00: removed from supervisord; incident closed")]
    assert m.procs == {} and m.next_deadline() is None
