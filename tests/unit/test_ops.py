"""Rolling restart and status, against a fake supervisord (no processes, no clock)."""

import json

from supervisor_fastapi.cli.ops import Edges, app_groups, collect_status, format_status, rolling_restart


class FakeSupervisor(Edges):
    """Processes as dicts; start() spawns a new pid that becomes ready after ``ready_after`` polls."""

    def __init__(self, names, broken=(), control=None, states=None):
        self.procs = {n: {"name": n, "group": "web", "statename": states.get(n, "RUNNING") if states else "RUNNING",
                          "pid": 100 + i, "start": 1000.0, "now": 1060.0, "spawnerr": "", "exitstatus": 0}
                      for i, n in enumerate(names)}
        self.files = {n: {"pid": p["pid"], "beat": 1059.0} for n, p in self.procs.items()}
        self.broken = set(broken)
        self.listener = {}
        self.control = control if control is not None else {"gate": None, "processes": {}}
        self.log, self.alerts, self.next_pid, self.pending = [], [], 500, {}

    def infos(self):
        for n, left in list(self.pending.items()):  # time passes on each poll
            if left <= 0:
                p = self.procs[n]
                if n in self.broken:
                    p.update(statename="FATAL", pid=0, spawnerr="Exited too quickly")
                else:
                    p["statename"] = "RUNNING"
                    self.files[n] = {"pid": p["pid"], "beat": 1059.0}
                del self.pending[n]
            else:
                self.pending[n] = left - 1
        return [dict(p) for p in self.procs.values()]

    def worker_states(self, names):
        return {n: v for n, v in self.files.items() if n in names}

    def listener_state(self):
        return self.listener

    def control_state(self):
        return self.control

    def rss(self, pids):
        return {pid: 50 * 1024 * 1024 for pid in pids}

    def stop(self, name):
        n = name.split(":")[1]
        # The roll must never stop a worker while another one is not ready.
        others = [p for k, p in self.procs.items() if k != n and p["statename"] == "RUNNING"]
        assert not self.pending, f"stopping {n} while {list(self.pending)} is still coming up"
        self.log.append(("stop", n, len(others)))
        self.procs[n].update(statename="STOPPED", pid=0)

    def start(self, name):
        n = name.split(":")[1]
        self.log.append(("start", n))
        self.next_pid += 1
        self.procs[n].update(statename="STARTING", pid=self.next_pid)
        self.pending[n] = 2

    def alert(self, kind, process, summary, details):
        self.alerts.append((kind, process, summary))


def roll(fake, **kw):
    messages = []
    r = rolling_restart(fake, "web", messages.append, timeout=30, clock=_Clock(), sleep=lambda s: None, **kw)
    return r, messages


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 0.1
        return self.t


def test_one_at_a_time_each_ready_before_the_next_stops():
    fake = FakeSupervisor(["web_00", "web_01", "web_02"])
    r, messages = roll(fake)
    assert r.ok and r.restarted == ["web:web_00", "web:web_01", "web:web_02"]
    assert [e[:2] for e in fake.log] == [("stop", "web_00"), ("start", "web_00"), ("stop", "web_01"),
                                         ("start", "web_01"), ("stop", "web_02"), ("start", "web_02")]
    assert all(e[2] == 2 for e in fake.log if e[0] == "stop")  # the two others serve each time
    assert all(p["pid"] >= 500 for p in fake.procs.values())
    assert not fake.alerts


def test_a_worker_that_does_not_come_up_stops_the_roll_and_alerts():
    fake = FakeSupervisor(["web_00", "web_01", "web_02"], broken={"web_01"})
    r, messages = roll(fake)
    assert not r.ok and r.failed == "web:web_01" and "FATAL" in r.reason
    assert r.restarted == ["web:web_00"] and r.untouched == ["web:web_02"]
    assert fake.procs["web_02"]["pid"] == 102  # never touched, still serving
    assert fake.alerts[0][0] == "rolling_restart_failed" and fake.alerts[0][1] == "web:web_01"


def test_a_worker_held_by_the_crash_loop_guard_is_skipped():
    held = {"web:web_00": {"held": {"kind": "crash", "reason": "crash loop: retry 1 after a 2 s backoff"}}}
    fake = FakeSupervisor(["web_00", "web_01"], control={"gate": None, "processes": held},
                          states={"web_00": "BACKOFF"})
    fake.procs["web_00"]["pid"] = 0
    r, _ = roll(fake)
    assert r.ok and list(r.skipped) == ["web:web_00"] and r.restarted == ["web:web_01"]
    assert ("start", "web_00") not in fake.log


def test_a_shut_migration_gate_refuses_the_roll_before_stopping_anything():
    gate = {"state": "failed", "detail": "web_migrate exited with status 3"}
    fake = FakeSupervisor(["web_00", "web_01"], control={"gate": gate, "processes": {}})
    r, _ = roll(fake)
    assert not r.ok and "the migration gate is shut: web_migrate exited with status 3" in r.reason
    assert "no worker was stopped" in r.reason and fake.log == []


def test_timeout_when_the_new_worker_never_listens():
    fake = FakeSupervisor(["web_00"])
    fake.files = {}
    fake.worker_states = lambda names: {}
    r, _ = roll(fake)
    assert not r.ok and "not ready after 30 s" in r.reason


def test_unknown_group_fails_without_touching_anything():
    fake = FakeSupervisor([])
    r, _ = roll(fake)
    assert not r.ok and "no program group" in r.reason


INFOS = [
    {"name": "web_00", "group": "web", "statename": "RUNNING", "pid": 10, "start": 1000, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
    {"name": "web_01", "group": "web", "statename": "STOPPED", "pid": 0, "start": 1000, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
    {"name": "web_listener", "group": "web_listener", "statename": "RUNNING", "pid": 9, "start": 900,
     "now": 4600, "spawnerr": "", "exitstatus": 0},
    {"name": "web_migrate", "group": "web_migrate", "statename": "EXITED", "pid": 0, "start": 900,
     "now": 4600, "spawnerr": "", "exitstatus": 0},
    {"name": "other", "group": "other", "statename": "FATAL", "pid": 0, "start": 0, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
]
INFOS += [{"name": "web_admin_00", "group": "web_admin", "statename": "FATAL", "pid": 0, "start": 0, "now": 4600,
           "spawnerr": "", "exitstatus": 0}]  # another app, named like this one's programs
LISTENER = {"last_alert": {"at": 4500.0, "kind": "crash_loop", "summary": "web_01 crashed 3 times in 60 s",
                           "results": {"log": "ok"}}}
CONTROL = {"since": 100.0, "gate": {"state": "open", "detail": "web_migrate exited 0"},
           "processes": {"web:web_01": {"state": "BACKOFF",
                                        "incident": {"kind": "crash_loop", "opened": 4500.0, "next_retry": 4660.0,
                                                     "delay": 60, "summary": "web_01 failed 3 times in 60 s"},
                                        "spawns": [4000.0, 4400.0, 4500.0], "first_spawn": 100.0},
                         "web:web_00": {"state": "RUNNING", "spawns": [4000.0], "first_spawn": 4000.0}}}


def test_status_rows_cover_every_program_of_the_app_only():
    s = collect_status(INFOS, {"web_00": {"pid": 10, "beat": 4599.0}}, LISTENER, {10: 60 * 1024 * 1024}, 4600.0,
                       "web", control=CONTROL, groups=app_groups("web", [], CONTROL))
    rows = {r.name: r for r in s.rows}
    assert list(rows) == ["web:web_00", "web:web_01", "web_listener", "web_migrate"]
    web0 = rows["web:web_00"]
    assert (web0.state, web0.pid, web0.uptime, web0.rss, web0.ready, web0.restarts_1h) == \
        ("RUNNING", 10, 3600, 60 * 1024 * 1024, True, 0)  # its one spawn is the first start
    web1 = rows["web:web_01"]
    assert web1.restarts_1h == 3 and web1.incident["next_retry"] == 4660.0 and web1.problem
    assert rows["web_migrate"].problem == ""  # a one-shot that exited 0 is fine
    assert s.down == ["web:web_01"] and not s.ok
    data = json.loads(json.dumps(s.to_json()))
    assert data["last_alert"]["kind"] == "crash_loop" and data["down"] == ["web:web_01"]
    text = format_status(s, 4600.0)
    assert "next retry" in text and "(in 60 s)" in text and "last alert:" in text and "DOWN: web:web_01" in text


def test_status_without_listener_data_is_graceful():
    s = collect_status(INFOS[:1], {"web_00": {"pid": 10, "beat": 4599.0}}, None, {}, 4600.0, "web")
    assert s.ok and s.rows[0].rss is None and s.rows[0].restarts_1h is None  # nobody counted them
    text = format_status(s, 4600.0)
    assert "listener: no state file yet" in text and text.endswith("ok")
    assert "controller: none ([rpcinterface:fastapi_web] is not loaded" in text
    assert "restart counts unknown" in text and text.splitlines()[1].split()[5] == "-"


def test_status_of_an_app_with_no_process_in_supervisord_is_down():
    s = collect_status([], {}, None, {}, 4600.0, "web")
    assert not s.ok
    assert "DOWN: none of this app's programs" in format_status(s, 4600.0)


def test_waits_for_another_worker_in_transition_before_stopping():
    fake = FakeSupervisor(["web_00", "web_01"])
    fake.procs["web_01"]["statename"] = "STARTING"  # a watchdog recycle under way
    fake.pending["web_01"] = 3
    fake.files.pop("web_01")
    r, _ = roll(fake)
    assert r.ok and fake.log[0][:2] == ("stop", "web_00") and fake.log[0][2] == 1


def test_gives_up_when_another_worker_never_settles():
    fake = FakeSupervisor(["web_00", "web_01"])
    fake.procs["web_01"]["statename"] = "STOPPING"
    r, _ = roll(fake)
    assert not r.ok and "web:web_01 still starting/stopping" in r.reason and fake.log == []
