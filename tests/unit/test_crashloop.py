"""The crash-loop machine: histories replayed as data, a fixed clock, a fixed jitter."""

import pytest

from supervisor_fastapi.contracts.settings import Policy
from supervisor_fastapi.plugins.crashloop import GiveUp, Hold, ProcessLoop, Restart, classify

P = Policy(restarts=3, window=60, backoff_initial=2, backoff_max=16, backoff_reset=30, jitter=0.0)


def loop(policy: Policy = P, rand: float = 0.0) -> ProcessLoop:
    return ProcessLoop("shop_00", "shop:shop_00", policy, reminder_interval=600, rand=lambda: rand)


def fail(p: ProcessLoop, now: float, cause: str = "crash"):
    p.started(now - 1)
    p.running(now - 0.5)
    return p.exited(cause, now, signal=9 if cause == "killed" else None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, cause", [
    ({"stopping": True, "served": True, "expected": False, "signal": 9}, "stopped"),
    ({"stopping": False, "served": True, "expected": False, "signal": 9}, "killed"),
    ({"stopping": False, "served": False, "expected": False, "signal": 9}, "start_failure"),
    ({"stopping": False, "served": True, "expected": False, "signal": 11}, "crash"),
    ({"stopping": False, "served": True, "expected": False, "signal": 6}, "crash"),
    ({"stopping": False, "served": True, "expected": False, "signal": None}, "crash"),
    ({"stopping": False, "served": True, "expected": True, "signal": None}, "clean_exit"),
    ({"stopping": False, "served": False, "expected": True, "signal": None}, "start_failure"),
])
def test_classify(kw, cause):
    assert classify(**kw) == cause


def test_kills_after_serving_restart_at_once_forever_and_alert_once_per_incident():
    p = loop()
    alerts = []
    for n in range(10):
        decision, out = fail(p, 100 + 2 * n, "killed")
        assert decision == Restart()
        alerts += out
    assert [(a.event, a.kind) for a in alerts] == [("open", "killed")]
    assert "shop_00 killed by SIGKILL 3 times in 4 s: out of memory?" in alerts[0].summary
    assert p.incident is None  # kills never open a crash-loop hold
    # 30 s running without a kill closes it.
    p.running(130)
    assert p.tick(140) == []
    [resolved] = p.tick(149)
    assert (resolved.event, resolved.kind) == ("resolve", "killed")


def test_the_third_failure_opens_one_incident_and_every_later_failure_holds_with_doubling_delays():
    p = loop()
    assert fail(p, 10)[0] == Restart()
    assert fail(p, 12)[0] == Restart()
    decision, alerts = fail(p, 14)
    assert decision == Hold(16.0, "crash loop: retry 1 after a 2 s backoff")
    assert [(a.event, a.kind, a.log_of) for a in alerts] == [("open", "crash_loop", "shop:shop_00")]
    holds = []
    for now in (20, 30, 50, 80, 120):
        decision, alerts = fail(p, now)
        assert alerts == []  # one alert per incident
        holds.append(decision.until - now)  # type: ignore[union-attr]
    assert holds == [4, 8, 16, 16, 16]


def test_start_failures_count_like_crashes_and_expected_exits_do_not():
    p = loop()
    assert fail(p, 10, "start_failure")[0] == Restart()
    assert fail(p, 11, "clean_exit")[0] == Restart()
    assert fail(p, 12, "stopped")[0] == Restart()
    assert fail(p, 13, "start_failure")[0] == Restart()
    assert isinstance(fail(p, 14, "start_failure")[0], Hold)


def test_failures_outside_the_window_do_not_add_up():
    p = loop()
    for now in (0, 61, 122, 183):
        assert fail(p, now)[0] == Restart()


def test_jitter_only_lengthens_the_delay():
    p = loop(Policy(restarts=1, backoff_initial=10, jitter=0.5), rand=1.0)
    decision, _ = fail(p, 100)
    assert decision.until == pytest.approx(115.0)  # type: ignore[union-attr]


def test_stable_running_for_backoff_reset_resolves_and_forgets_the_failures():
    p = loop()
    for now in (10, 12, 14):
        fail(p, now)
    p.started(17)
    p.running(18)
    assert p.tick(47) == []
    [resolved] = p.tick(48.5)
    assert (resolved.event, resolved.kind) == ("resolve", "crash_loop") and p.incident is None
    assert fail(p, 50)[0] == Restart()  # a fresh count


def test_a_retry_is_counted_when_the_held_process_is_spawned():
    p = loop()
    for now in (10, 12, 14):
        fail(p, now)
    assert p.incident.next_retry == 16
    p.started(16)
    assert p.incident.next_retry is None and p.incident.retries == 1


def test_retry_fatal_false_gives_up_instead_of_holding():
    p = loop(Policy(restarts=2, retry_fatal=False))
    fail(p, 10)
    decision, alerts = fail(p, 11)
    assert isinstance(decision, GiveUp) and "start it by hand" in alerts[0].summary


def test_a_stop_by_hand_or_up_closes_the_incident():
    p = loop()
    for now in (10, 12, 14):
        fail(p, now)
    [a] = p.stopped_by_operator(20)
    assert a.event == "resolve" and "stopped by hand" in a.summary
    for now in (30, 32, 34):
        fail(p, now)
    [b] = p.resume(40)
    assert b.event == "resolve" and p.failures == []


def test_reminders_are_rate_limited_while_an_incident_stays_open():
    p = loop()
    for now in (10, 12, 14):
        fail(p, now)
    assert p.tick(600) == []
    [r] = p.tick(614)
    assert r.event == "reminder"
    assert p.tick(700) == []


def test_spawn_history_is_capped_to_one_hour():
    p = loop()
    for n in range(100):
        p.started(n * 60.0)
    assert all(t > 99 * 60 - 3600 for t in p.snapshot(99 * 60)["spawns"])


def test_root_sees_a_socket_in_an_epoll_set_and_nothing_else():
    """The 'served' evidence (issue 16, point 7): an event loop watching the listening socket."""
    import os
    import select
    import socket

    from supervisor_fastapi.plugins.controller import epoll_targets, watches_socket

    with socket.socket() as listener, socket.socket() as other:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        inode = os.fstat(listener.fileno()).st_ino
        assert not watches_socket(os.getpid(), inode)  # holding the socket is not listening on it
        ep = select.epoll()
        try:
            ep.register(other.fileno(), select.EPOLLIN)
            assert not watches_socket(os.getpid(), inode)
            ep.register(listener.fileno(), select.EPOLLIN)
            assert watches_socket(os.getpid(), inode)
        finally:
            ep.close()
        assert not watches_socket(os.getpid(), inode)
    assert not watches_socket(2**22 + 7, 1)  # no such process
    assert epoll_targets("pos:\t0\nflags:\t02\ntfd:        7 events:       19 data: 7  pos:0 ino:1 sdev:8\n"
                         "tfd: x\n") == [7]
