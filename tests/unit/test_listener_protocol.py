"""The wire format and the protocol loop, with the real format written into pipes."""

import json
import os
import threading
from typing import Any, Dict, List, Optional

from supervisor_fastapi.contracts.rpc import notify, remote_alert_body
from supervisor_fastapi.contracts.settings import ListenerConfig
from supervisor_fastapi.listener import statefile
from supervisor_fastapi.listener.channels import Channel
from supervisor_fastapi.listener.delivery import Dispatcher, Journal
from supervisor_fastapi.listener.main import Listener
from supervisor_fastapi.listener.message import Message
from supervisor_fastapi.listener.protocol import Parser, decode, remote_event
from supervisor_fastapi.listener.state import ProcessState, RemoteEvent, Start

from ..wire import encode_event, process_state_payload


def test_parser_counts_characters_not_bytes_and_handles_any_chunking():
    payload = "type:supervisor-fastapi\n" + json.dumps({"kind": "x", "summary": "caf\u00e9 \u2603 \U0001f600"},
                                                        ensure_ascii=False)
    wire = (encode_event("REMOTE_COMMUNICATION", payload, 1) + encode_event("PROCESS_STATE_RUNNING", "a:1", 2))
    data = wire.encode()
    assert len(data) > len(wire)  # multi-byte characters: len: counts characters
    for size in (1, 2, 3, 7, len(data)):
        p, got = Parser(), []
        for i in range(0, len(data), size):
            got += p.feed(data[i:i + size])
        assert [h["serial"] for h, _ in got] == ["1", "2"]
        assert got[0][1] == payload and got[1][1] == "a:1"


def test_decode_process_state_and_remote_events():
    ev = decode({"eventname": "PROCESS_STATE_EXITED"},
                process_state_payload("web_00", "web", "RUNNING", expected="0", pid="42"))
    assert ev == ProcessState("web_00", "web", "EXITED", "RUNNING", expected=False, pid=42)
    ev = decode({"eventname": "PROCESS_STATE_STARTING"}, process_state_payload("web_00", "web", "STOPPED", tries="0"))
    assert ev == ProcessState("web_00", "web", "STARTING", "STOPPED", expected=None, pid=0)
    assert decode({"eventname": "REMOTE_COMMUNICATION"}, "type:other\n{}") is None
    assert decode({"eventname": "TICK_5"}, "when:5") is None
    assert remote_event("not json") == RemoteEvent("unparsable_event", "", "not json", {"raw": "not json"})


def test_notify_sends_what_the_listener_decodes():
    class Proxy:
        class supervisor:  # noqa: N801 - mimics ServerProxy attribute access
            sent: List[Any] = []

            @classmethod
            def sendRemoteCommEvent(cls, type_: str, data: str) -> bool:  # noqa: N802
                cls.sent.append((type_, data))
                return True

    notify(Proxy, "web", "memory_recycle", "web_01", "web_01 used\n1.2 GB", {"rss": 5})
    type_, data = Proxy.supervisor.sent[0]
    ev = decode({"eventname": "REMOTE_COMMUNICATION"}, f"type:{type_}\n{data}")
    assert ev == RemoteEvent("memory_recycle", "web_01", "web_01 used 1.2 GB", {"rss": 5}, app="web")


class FakeRpc:
    def __init__(self) -> None:
        self.actions: List[Any] = []

    def submit(self, action: Any) -> None:
        self.actions.append(action)

    def close(self, timeout: float = 0) -> None:
        pass


class Recorder(Channel):
    name, type = "rec", "log"

    def __init__(self) -> None:
        self.sent: List[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_listener(tmp_path: Any, wire: bytes, config: Optional[ListenerConfig] = None,
                 saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the loop on pipes until EOF; return what it wrote, did and saved."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    rpc, chan = FakeRpc(), Recorder()
    dispatcher = Dispatcher([chan], Journal(str(tmp_path / "journal.jsonl")), 0).start()
    path = str(tmp_path / "state.json")
    config = config or ListenerConfig(app="web", web="web", state_path=path)
    listener = Listener(config, rpc, dispatcher, None, in_r, out_w, Clock())  # type: ignore[arg-type]
    listener.restore(saved)
    result: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(rc=listener.run()))
    t.start()
    os.write(in_w, wire)
    os.close(in_w)
    t.join(10)
    assert not t.is_alive()
    listener.close()
    os.close(out_w)
    chunks = []
    while True:
        chunk = os.read(out_r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return {"out": b"".join(chunks).decode(), "rpc": rpc.actions, "sent": chan.sent, "rc": result.get("rc"),
            "state": statefile.load(path)}


def remote(serial: int, app: str = "web", event: str = "open", kind: str = "crash_loop") -> str:
    body = remote_alert_body(app, kind, "web_00", "web_00 failed 3 times", {"failures": 3}, event=event)
    return encode_event("REMOTE_COMMUNICATION", f"type:supervisor-fastapi\n{body}", serial)


def exited(serial: int, name: str = "web_00", group: str = "web", expected: str = "0") -> str:
    return encode_event("PROCESS_STATE_EXITED", process_state_payload(name, group, "RUNNING", expected=expected,
                                                                      pid="7"), serial)


def test_the_loop_acks_every_event_and_relays_the_controllers_alerts(tmp_path):
    r = run_listener(tmp_path, (remote(1) + exited(2) + remote(3, app="other")).encode())
    assert r["out"] == "READY\n" + "RESULT 2\nOKREADY\n" * 3
    assert r["rc"] == 0
    assert [(m["event"], m["kind"]) for m in r["sent"]] == [("open", "crash_loop")]  # another app's is not ours
    assert r["rpc"] == []  # with the controller, the listener starts nothing
    assert r["state"]["last_alert"]["results"] == {"rec": "sent"}


def test_without_the_plugin_the_listener_starts_the_web_group_after_the_migration(tmp_path):
    config = ListenerConfig(app="web", web="web", migrate="web_migrate", controller=False,
                            state_path=str(tmp_path / "state.json"))
    r = run_listener(tmp_path, exited(1, "web_migrate", "web_migrate", expected="1").encode(), config)
    assert r["rpc"] == [Start("web:*")]


def test_a_handler_error_is_logged_and_the_event_still_acknowledged(tmp_path, caplog, monkeypatch):
    from supervisor_fastapi.listener import state

    def broken(self, event, now):
        raise RuntimeError("bug")

    monkeypatch.setattr(state.Relay, "observe", broken)
    r = run_listener(tmp_path, (remote(1) + remote(2) + remote(3)).encode())
    assert r["out"] == "READY\n" + "RESULT 2\nOKREADY\n" * 3  # never FAIL, never a loop
    assert "error handling REMOTE_COMMUNICATION (acknowledged anyway)" in caplog.text


def test_the_last_alert_survives_a_listener_restart(tmp_path):
    saved = {"version": 1, "last_alert": {"at": 990.0, "kind": "crash_loop", "event": "open", "summary": "s",
                                          "results": {"rec": "sent"}}}
    r = run_listener(tmp_path, b"", saved=saved)
    assert r["state"]["last_alert"]["at"] == 990.0


def test_a_full_disk_does_not_stop_the_loop_and_the_state_is_saved_once_there_is_room(tmp_path, monkeypatch, caplog):
    from supervisor_fastapi.listener import main

    real_save, calls = statefile.save, []

    def flaky(path, state):
        calls.append(path)
        if len(calls) <= 2:
            raise OSError(28, "No space left on device")
        real_save(path, state)

    monkeypatch.setattr(main.statefile, "save", flaky)
    r = run_listener(tmp_path, (remote(1) + remote(2)).encode())
    assert r["out"] == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert r["state"] is not None and r["state"]["last_alert"]["kind"] == "crash_loop"
    assert caplog.text.count("cannot write the state file") == 1  # once per outage, not per attempt


def test_alert_results_are_counted_by_channel_and_survive_a_listener_restart(tmp_path):
    saved = {"version": 1, "alert_counts": {"rec": {"sent": 5, "failed": 2, "bogus": 9, "journaled": -1}}}
    r = run_listener(tmp_path, (remote(1) + remote(2, kind="killed")).encode(), saved=saved)
    assert r["state"]["alert_counts"] == {"rec": {"sent": 7, "failed": 2}}


def test_result_words():
    from supervisor_fastapi.listener.main import result_word

    assert [result_word(r) for r in ("sent", "journaled: timeout", "LOST (journal not writable): x", "no result")] \
        == ["sent", "journaled", "failed", "failed"]


def test_the_controllers_serving_snapshot_decodes_and_odd_ones_do_not_break_it():
    from supervisor_fastapi.contracts.rpc import serving_snapshot_body
    from supervisor_fastapi.listener.state import Serving

    assert remote_event(serving_snapshot_body("web", ["web_01", "web_00"])) == Serving("web", ("web_00", "web_01"))
    assert remote_event(json.dumps({"app": "web", "event": "serving", "running": "web_00"})) == Serving("web", ())


def idle_listener(controller: bool = True, idle_exit: float = 5.0) -> Any:
    config = ListenerConfig(app="web", web="web", controller=controller, idle_exit=idle_exit)
    dispatcher = Dispatcher([Recorder()], Journal(os.devnull), 0)
    return Listener(config, FakeRpc(), dispatcher, None, -1, -1, Clock(1000.0))  # type: ignore[arg-type]


def test_with_the_plugin_the_listener_is_idle_only_with_nothing_left_to_do():
    from supervisor_fastapi.listener.state import SendAlert, Serving

    listener = idle_listener()
    listener.serving.served = False
    assert not listener.idle(1004.9) and listener.idle(1005.0)
    listener._dirty = True  # the state is not saved yet
    assert not listener.idle(1010)
    listener._dirty = False
    listener._apply([SendAlert("event", "k", "p", "s")])  # an alert on its way
    listener._dirty = False
    assert not listener.idle(1010)
    listener._results.put(({"at": 1.0, "kind": "k", "event": "event", "summary": "s"}, {"rec": "sent"}))
    listener._drain_results()
    listener._dirty = False
    assert listener.idle(1010)
    listener.serving.served = True  # served once, and no worker RUNNING now: it times no_worker_serving
    assert not listener.idle(1010)
    listener._observe(Serving("web", ("web_00",)))
    listener._dirty = False
    assert listener.idle(1010)
    listener._save_failing = True  # a full disk: the state is not saved
    assert not listener.idle(1010)
    # Without the plugin (nobody would start it again), or from a conf without the setting: never.
    assert not idle_listener(controller=False).idle(2000)
    assert not idle_listener(idle_exit=0).idle(2000)


def test_the_loop_exits_with_status_0_once_idle(tmp_path):
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    clock = Clock(1000.0)
    config = ListenerConfig(app="web", web="web", state_path=str(tmp_path / "state.json"), idle_exit=5.0)
    dispatcher = Dispatcher([Recorder()], Journal(str(tmp_path / "j.jsonl")), 0).start()
    listener = Listener(config, FakeRpc(), dispatcher, None, in_r, out_w, clock)  # type: ignore[arg-type]
    result: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(rc=listener.run()))
    t.start()
    os.write(in_w, remote(1, event="event", kind="hello").encode())
    t.join(1.5)
    assert t.is_alive()  # not idle yet: its clock has not moved
    clock.now += 6
    t.join(5)
    assert not t.is_alive() and result["rc"] == 0
    listener.close()
    assert os.read(out_r, 65536).decode() == "READY\nRESULT 2\nOKREADY\n"
    assert statefile.load(str(tmp_path / "state.json"))["last_alert"]["kind"] == "hello"
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)


def test_alerts_spooled_by_the_plugin_go_out_first_and_the_spool_is_removed(tmp_path):
    spool = tmp_path / "listener-spool.jsonl"
    lines = [json.dumps({"eventname": "REMOTE_COMMUNICATION",
                         "payload": "type:supervisor-fastapi\n" + remote_alert_body("web", k, "web_00", "s")})
             for k in ("spooled_1", "spooled_2")]
    spool.write_text("\n".join(lines + ["not an event"]) + "\n")
    config = ListenerConfig(app="web", web="web", state_path=str(tmp_path / "state.json"), spool_path=str(spool))
    r = run_listener(tmp_path, remote(1, event="event", kind="from_stdin").encode(), config)
    assert [m["kind"] for m in r["sent"]] == ["spooled_1", "spooled_2", "from_stdin"]
    assert not spool.exists() and not (tmp_path / "listener-spool.jsonl.taking").exists()
    assert r["out"] == "READY\nRESULT 2\nOKREADY\n"  # spooled events are not acknowledged: supervisord never sent them
