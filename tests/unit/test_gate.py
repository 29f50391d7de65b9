"""The migration gate: a pure function of the migration's current run, and the alerts of its changes."""

import pytest

from supervisor_fastapi.plugins.gate import Gate, GateWatch, Migration, gate_of


@pytest.mark.parametrize("m, state", [
    (Migration(""), "missing"),
    (Migration("STOPPED"), "waiting"),
    (Migration("STARTING", 10.0), "running"),
    (Migration("RUNNING", 10.0), "running"),
    (Migration("EXITED", 10.0, 0, True), "open"),
    (Migration("EXITED", 10.0, 3, False), "failed"),
    (Migration("BACKOFF", 10.0, spawnerr="no such file"), "failed"),
    (Migration("FATAL", 10.0), "failed"),
    (Migration("STOPPED", 10.0), "failed"),
    (Migration("STOPPED", 10.0, timed_out=True), "timeout"),
    (Migration("STOPPING", 10.0), "failed"),
])
def test_only_a_run_that_exited_expected_opens_the_gate(m, state):
    gate = gate_of(m, "shop_migrate", 600)
    assert gate.state == state and gate.open == (state == "open")
    if state in ("failed", "timeout"):
        assert "supervisor-fastapi up" in gate.detail or "being stopped" in gate.detail


def test_a_failed_run_alerts_once_saying_who_keeps_serving_and_a_success_resolves_it():
    w = GateWatch()
    assert w.observe(Gate("running", "r"), "shop_migrate", 0, 2) == []
    [opened] = w.observe(Gate("failed", "shop_migrate exited with status 3"), "shop_migrate", 2, 0)
    assert opened.event == "open" and opened.kind == "migration_failed"
    assert "the 2 worker(s) already running keep serving the previous release" in opened.summary
    assert w.observe(Gate("failed", "x"), "shop_migrate", 2, 0) == []
    assert w.observe(Gate("running", "r"), "shop_migrate", 2, 0) == []
    [resolved] = w.observe(Gate("open", "ok"), "shop_migrate", 2, 1)
    assert resolved.event == "resolve" and "starting 1 held web worker(s)" in resolved.summary
    assert w.observe(Gate("running", "r"), "shop_migrate", 2, 0) == []
    assert w.observe(Gate("open", "ok"), "shop_migrate", 2, 0) == []  # nothing was open


def test_a_timeout_is_its_own_kind_and_says_no_worker_runs():
    w = GateWatch()
    [a] = w.observe(Gate("timeout", "ran longer"), "m", 0, 2)
    assert a.kind == "migration_timeout" and "no web worker is running" in a.summary
