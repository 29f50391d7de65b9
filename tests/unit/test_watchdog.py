"""The watchdog's decisions, replayed as data with an injected clock."""

from supervisor_fastapi.generate.conf import watchdog_argv
from supervisor_fastapi.runtime.watchdog import (
    Config,
    Kill,
    Notify,
    Start,
    Stop,
    Watchdog,
    Worker,
    parse_args,
    read_workers,
)

MB = 1024 * 1024


def w(n, pid, rss=50 * MB, ready=True, state="RUNNING", beat=None, started=None):
    return Worker(f"web:web_0{n}", state, pid, ready, beat, rss, started)


def kinds(actions):
    return [type(a).__name__ + ":" + getattr(a, "name", getattr(a, "process", "")) for a in actions]


def test_recycle_after_limit_checks_consecutive_checks_only():
    dog = Watchdog(Config("web", 2, memory_limit=100 * MB, check_interval=10, limit_checks=2))
    assert dog.observe([w(0, 10, 150 * MB), w(1, 11)], 0) == []
    assert dog.observe([w(0, 10, 150 * MB), w(1, 11)], 5) == []  # not a check yet
    out = dog.observe([w(0, 10, 150 * MB), w(1, 11)], 10)
    assert kinds(out) == ["Stop:web:web_00", "Notify:web:web_00"]
    alert = out[1]
    assert alert.kind == "memory_recycle" and "150 MB" in alert.summary and "100 MB" in alert.summary


def test_a_dip_below_the_limit_resets_the_count():
    dog = Watchdog(Config("web", 2, memory_limit=100 * MB, check_interval=1, limit_checks=2))
    dog.observe([w(0, 10, 150 * MB), w(1, 11)], 0)
    dog.observe([w(0, 10, 90 * MB), w(1, 11)], 1)
    assert dog.observe([w(0, 10, 150 * MB), w(1, 11)], 2) == []
    assert kinds(dog.observe([w(0, 10, 150 * MB), w(1, 11)], 3))[0] == "Stop:web:web_00"


def test_one_at_a_time_and_never_below_numprocs_minus_one():
    dog = Watchdog(Config("web", 2, memory_limit=100 * MB, check_interval=1, limit_checks=1))
    out = dog.observe([w(0, 10, 300 * MB), w(1, 11, 200 * MB)], 0)
    assert kinds(out)[0] == "Stop:web:web_00"  # the biggest first
    # web_00 is draining: web_01 must wait even though it is over the limit.
    assert dog.observe([w(0, 10, None, ready=False, state="STOPPING"), w(1, 11, 200 * MB)], 1) == []
    assert kinds(dog.observe([w(0, 0, None, False, "STOPPED"), w(1, 11, 200 * MB)], 1.2)) == ["Start:web:web_00"]
    assert dog.observe([w(0, 12, None, False, "STARTING"), w(1, 11, 200 * MB)], 2) == []
    # New web_00 listening: the recycle is over, web_01 goes next.
    out = dog.observe([w(0, 12, 40 * MB), w(1, 11, 200 * MB)], 3)
    assert kinds(out)[0] == "Stop:web:web_01"


def test_no_recycle_while_another_worker_is_not_serving():
    dog = Watchdog(Config("web", 3, memory_limit=100 * MB, check_interval=1, limit_checks=1))
    workers = [w(0, 10, 300 * MB), w(1, 11, ready=False, state="BACKOFF"), w(2, 12)]
    assert dog.observe(workers, 0) == []


def test_single_worker_is_recycled_too():
    dog = Watchdog(Config("web", 1, memory_limit=100 * MB, check_interval=1, limit_checks=1))
    assert kinds(dog.observe([w(0, 10, 300 * MB)], 0))[0] == "Stop:web:web_00"


def test_hung_worker_is_killed_once_and_alerted():
    dog = Watchdog(Config("web", 2, heartbeat_timeout=5))
    assert dog.observe([w(0, 10, beat=100), w(1, 11, beat=104)], 104.9) == []
    out = dog.observe([w(0, 10, beat=100), w(1, 11, beat=105.5)], 105.5)
    assert out[0] == Kill("web:web_00")
    assert isinstance(out[1], Notify) and out[1].kind == "hung_worker" and "pid 10" in out[1].summary
    assert dog.observe([w(0, 10, beat=100), w(1, 11, beat=106)], 106) == []  # not killed twice
    # The replacement gets its own chance.
    assert dog.observe([w(0, 20, beat=107), w(1, 11, beat=107)], 108) == []


def test_worker_not_ready_is_never_judged_by_its_heartbeat():
    dog = Watchdog(Config("web", 1, heartbeat_timeout=2))
    assert dog.observe([w(0, 10, ready=False, state="STARTING", beat=None)], 100) == []


def test_a_worker_that_never_listens_is_killed_after_startup_timeout_once():
    dog = Watchdog(Config("web", 2, startup_timeout=30))
    stuck = w(0, 10, None, ready=False, state="RUNNING", started=100)
    assert dog.observe([stuck, w(1, 11, started=50)], 130) == []  # up 30 s: not yet
    out = dog.observe([stuck, w(1, 11, started=50)], 130.5)
    assert out[0] == Kill("web:web_00")
    assert out[1].kind == "startup_timeout" and "pid 10" in out[1].summary and "30 s" in out[1].summary
    assert dog.observe([stuck, w(1, 11, started=50)], 131) == []  # not killed twice
    # Its replacement gets the full timeout again, and a worker that listens is left alone.
    assert dog.observe([w(0, 12, None, ready=False, state="STARTING", started=132), w(1, 11, started=50)], 161) == []
    assert dog.observe([w(0, 12, started=132), w(1, 11, started=50)], 200) == []


def test_startup_timeout_spares_draining_and_stopped_workers_and_is_off_by_default():
    dog = Watchdog(Config("web", 2, startup_timeout=5))
    assert dog.observe([w(0, 10, None, ready=False, state="STOPPING", started=0),
                        w(1, 0, None, ready=False, state="BACKOFF")], 100) == []
    off = Watchdog(Config("web", 1, heartbeat_timeout=5))
    assert off.observe([w(0, 10, None, ready=False, state="RUNNING", started=0)], 1000) == []


def test_read_workers_uses_state_file_pid_for_readiness():
    infos = [{"name": "web_00", "group": "web", "statename": "RUNNING", "pid": 10, "start": 3},
             {"name": "web_01", "group": "web", "statename": "RUNNING", "pid": 11, "start": 4},
             {"name": "web_listener", "group": "web_listener", "statename": "RUNNING", "pid": 9}]
    states = {"web_00": {"pid": 10, "beat": 5.0}, "web_01": {"pid": 7, "beat": 5.0}}
    got = read_workers(infos, states, "web", lambda pid: pid * MB)
    assert [(x.name, x.ready, x.beat, x.rss, x.started) for x in got] == [
        ("web:web_00", True, 5.0, 10 * MB, 3.0), ("web:web_01", False, None, None, 4.0)]


def test_args_round_trip_through_the_rendered_command():
    from supervisor_fastapi.spec import parse_spec

    spec = parse_spec('[app]\nname="web"\nasgi="m:app"\n[server]\nbind="tcp://127.0.0.1:8000"\nworkers=3\n'
                      'heartbeat_timeout=10\nstartup_timeout=90\n[memory]\nlimit="1.5GB"\ncheck_interval=5\n'
                      '[supervisord]\nrun_dir="/tmp/r"\n', "/x/s.toml", "/x")
    argv = watchdog_argv(spec)
    assert argv is not None and argv[:3] == [spec.app.python, "-m", "supervisor_fastapi.runtime.watchdog"]
    config, state_dir, memo = parse_args(argv[3:])
    assert config == Config("web", 3, int(1.5 * 1024**3), 5.0, 2, 10.0, 90.0)
    assert (state_dir, memo) == ("/tmp/r/workers", "/tmp/r/watchdog-state.json")
    assert Stop("a") != Start("a")


def test_an_unfinished_recycle_is_resumed_by_the_next_watchdog(tmp_path):
    from supervisor_fastapi.runtime.watchdog import Recycle, load_recycle, save_recycle

    path = str(tmp_path / "memo.json")
    save_recycle(path, Recycle("web:web_00", 10, 0.0))
    dog = Watchdog(Config("web", 2, memory_limit=100 * MB), recycle=load_recycle(path, 50.0))
    # The previous watchdog stopped web_00 and died before starting it.
    assert dog.observe([w(0, 0, None, False, "STOPPED"), w(1, 11)], 51) == [Start("web:web_00")]
    save_recycle(path, None)
    assert load_recycle(path, 60.0) is None
