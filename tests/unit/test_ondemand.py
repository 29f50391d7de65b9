"""The plugin's rule for starting the listener on demand, on supervisor's own event objects."""

import json
from types import SimpleNamespace
from typing import Any, List, Optional

from supervisor import events
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
from supervisor.states import ProcessStates, SupervisorStates

from supervisor_fastapi.contracts.rpc import REMOTE_TYPE, remote_alert_body, serving_snapshot_body
from supervisor_fastapi.contracts.settings import ControlConfig
from supervisor_fastapi.plugins.ondemand import ListenerStarter, snapshot, wanted

CONFIG = ControlConfig(app="shop", web="shop", state_dir="/x", migrate="shop_migrate")


def proc(name: str, group: str, state: int = ProcessStates.RUNNING) -> Any:
    p = SimpleNamespace(config=SimpleNamespace(name=name), pid=7, state=state, backoff=0)
    p.group = SimpleNamespace(config=SimpleNamespace(name=group))
    p.get_state = lambda: p.state
    return p


def state_event(cls: Any, name: str, group: str) -> Any:
    return cls(proc(name, group), ProcessStates.RUNNING)


def remote(body: str, type_: str = REMOTE_TYPE) -> Any:
    return events.RemoteCommunicationEvent(type_, body)


def test_what_the_listener_is_started_for():
    alert = remote(remote_alert_body("shop", "crash_loop", "shop_00", "s", event="open"))
    assert wanted(alert, CONFIG, web_running=True)
    assert wanted(remote(remote_alert_body("", "hung_worker", "shop_00", "s")), CONFIG, True)  # no app: ours
    assert wanted(remote("not json"), CONFIG, True)  # becomes an "unparsable_event" alert
    assert not wanted(remote(remote_alert_body("other", "k", "p", "s")), CONFIG, True)
    assert not wanted(remote("{}", type_="someone-else"), CONFIG, True)
    assert not wanted(remote(serving_snapshot_body("shop", [])), CONFIG, False)  # a stale snapshot
    exited = state_event(events.ProcessStateExitedEvent, "shop_00", "shop")
    assert not wanted(exited, CONFIG, web_running=True)  # its sibling serves: nothing to time
    assert wanted(exited, CONFIG, web_running=False)  # none serves: no_worker_serving's timer
    assert wanted(state_event(events.ProcessStateExitedEvent, "shop_migrate", "shop_migrate"), CONFIG, True)
    assert not wanted(state_event(events.ProcessStateStartingEvent, "shop_migrate", "shop_migrate"), CONFIG, True)
    assert not wanted(state_event(events.ProcessStateExitedEvent, "shop_listener", "shop_listener"), CONFIG, False)
    assert not wanted(events.Tick5Event(5, None), CONFIG, False)


class Pool:
    def __init__(self, buffer: List[Any], state: int, autorestart: Any = RestartWhenExitUnexpected) -> None:
        self.event_buffer = list(buffer)
        self.spawned = 0
        self.process = proc("shop_listener", "shop_listener", state)
        self.process.config.autorestart = autorestart
        self.process.spawn = self._spawn
        self.processes = {"shop_listener": self.process}

    def _spawn(self) -> None:
        self.spawned += 1

    def _acceptEvent(self, event: Any) -> None:  # noqa: N802 - supervisor's name
        self.event_buffer.append(event)


def supervisord(pool: Pool, mood: int = SupervisorStates.RUNNING) -> Any:
    return SimpleNamespace(process_groups={"shop_listener": pool}, options=SimpleNamespace(mood=mood))


def wake(sd: Any, config: ControlConfig, name: str, running: List[str], log: Any, spool: str = "") -> bool:
    return ListenerStarter(log).wake(sd, config, name, running, spool)


def spooled(path: Any) -> Optional[List[dict]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return None


def test_an_exited_listener_is_started_and_the_rest_of_its_buffer_is_dropped():
    mine = remote(remote_alert_body("shop", "k", "p", "s"))
    other = state_event(events.ProcessStateExitedEvent, "shop_00", "shop")  # a sibling serves
    pool = Pool([other, mine, remote(remote_alert_body("other", "k", "p", "s"))], ProcessStates.EXITED)
    log: List[str] = []
    assert wake(supervisord(pool), CONFIG, "shop_listener", ["shop_01"], log.append)
    assert pool.spawned == 1 and pool.event_buffer == [mine]
    assert log == ["supervisor-fastapi: starting shop_listener for 1 event(s)"]


def test_alerts_wait_in_the_spool_while_the_listener_does_not_run(tmp_path):
    path = tmp_path / "listener-spool.jsonl"
    first, second = (remote(remote_alert_body("shop", k, "p", "s")) for k in ("first", "second"))
    none_serve = state_event(events.ProcessStateExitedEvent, "shop_00", "shop")
    pool = Pool([first, none_serve], ProcessStates.EXITED)
    assert wake(supervisord(pool), CONFIG, "shop_listener", [], print, str(path))
    # The alert is on disk (a reload or a burst cannot drop it); the state event stays for the
    # listener, behind which its snapshot goes.
    assert pool.event_buffer == [none_serve] and pool.spawned == 1
    [line] = spooled(path)
    assert line == {"eventname": "REMOTE_COMMUNICATION", "payload": first.payload()}
    pool.process.state = ProcessStates.STARTING  # its first second: still spooled, in order
    pool.event_buffer.append(second)
    assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print, str(path))
    assert [json.loads(x["payload"].split("\n", 1)[1])["kind"] for x in spooled(path)] == ["first", "second"]
    assert pool.event_buffer == [none_serve] and pool.spawned == 1
    pool.process.state = ProcessStates.RUNNING  # running: it takes its buffer as supervisord hands it over
    third = remote(remote_alert_body("shop", "third", "p", "s"))
    pool.event_buffer.append(third)
    assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print, str(path))
    assert pool.event_buffer[-1] is third and len(spooled(path)) == 2


def test_supervisord_stopping_spools_but_starts_nothing_and_a_full_disk_keeps_the_buffer(tmp_path):
    alert = remote(remote_alert_body("shop", "k", "p", "s"))
    pool = Pool([alert], ProcessStates.EXITED)
    path = tmp_path / "spool.jsonl"
    assert not wake(supervisord(pool, SupervisorStates.SHUTDOWN), CONFIG, "shop_listener", [], print, str(path))
    assert len(spooled(path)) == 1 and pool.event_buffer == [] and pool.spawned == 0
    log: List[str] = []
    pool = Pool([alert], ProcessStates.EXITED)
    unwritable = str(tmp_path / "no-such-dir" / "spool.jsonl")
    starter = ListenerStarter(log.append)
    for _ in range(2):
        starter.wake(supervisord(pool, SupervisorStates.SHUTDOWN), CONFIG, "shop_listener", [], unwritable)
    assert pool.event_buffer == [alert] and len(log) == 1 and "cannot spool alerts" in log[0]


def test_the_snapshot_goes_behind_every_buffered_event():
    mine = remote(remote_alert_body("shop", "k", "p", "s"))
    pool = Pool([mine], ProcessStates.STARTING)
    snapshot(pool, CONFIG, ["shop_00", "shop_01"])
    assert pool.event_buffer[0] is mine
    body = {"app": "shop", "event": "serving", "running": ["shop_00", "shop_01"]}
    assert json.loads(pool.event_buffer[1].data) == body


def test_the_listener_is_left_alone_when_it_runs_was_stopped_or_supervisord_stops():
    mine = remote(remote_alert_body("shop", "k", "p", "s"))
    noise = remote(remote_alert_body("other", "k", "p", "s"))
    for state in (ProcessStates.RUNNING, ProcessStates.STARTING, ProcessStates.BACKOFF, ProcessStates.FATAL):
        pool = Pool([noise, mine], state)
        assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print)
        assert pool.event_buffer == [noise, mine]  # it takes its buffer as it is
    pool = Pool([noise, mine], ProcessStates.STOPPED)  # stopped by the operator: tidied, not started
    assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print)
    assert pool.spawned == 0 and pool.event_buffer == [mine]
    pool = Pool([mine], ProcessStates.EXITED)
    assert not wake(supervisord(pool, SupervisorStates.SHUTDOWN), CONFIG, "shop_listener", [], print)
    pool = Pool([mine], ProcessStates.EXITED, autorestart=RestartUnconditionally)  # an older conf
    assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print) and pool.spawned == 0
    pool = Pool([noise], ProcessStates.EXITED)
    assert not wake(supervisord(pool), CONFIG, "shop_listener", [], print) and pool.event_buffer == []
