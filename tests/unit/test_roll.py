"""The rolling restart, against a fake supervisord (no processes, no clock)."""

from supervisor_fastapi.cli.edges import Edges
from supervisor_fastapi.cli.roll import rolling_restart


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
