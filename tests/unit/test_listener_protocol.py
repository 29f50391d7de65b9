"""The wire format and the protocol loop, with the real format written into pipes."""

import json
import os
import threading
from typing import Any, Dict, List, Optional

from supervisor_fastapi.listener import statefile
from supervisor_fastapi.listener.alerts import Channel, Dispatcher, Journal, Message
from supervisor_fastapi.listener.main import Listener
from supervisor_fastapi.listener.notify import notify
from supervisor_fastapi.listener.protocol import Parser, decode, encode_event, process_state_payload, remote_event
from supervisor_fastapi.listener.state import Config, Machine, ProcessState, RemoteEvent
from supervisor_fastapi.spec import Backoff, CrashLoop


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

    notify(Proxy, "memory_recycle", "web_01", "web_01 used\n1.2 GB", {"rss": 5})
    type_, data = Proxy.supervisor.sent[0]
    ev = decode({"eventname": "REMOTE_COMMUNICATION"}, f"type:{type_}\n{data}")
    assert ev == RemoteEvent("memory_recycle", "web_01", "web_01 used 1.2 GB", {"rss": 5})


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


def run_listener(tmp_path: Any, wire: bytes, machine: Optional[Machine] = None,
                 saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the loop on pipes until EOF; return what it wrote, did and saved."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    rpc, chan = FakeRpc(), Recorder()
    dispatcher = Dispatcher([chan], Journal(str(tmp_path / "journal.jsonl")), 0).start()
    m = machine or Machine(Config("web", None, CrashLoop(Backoff(restarts=2, backoff_initial=5, jitter=0))))
    path = str(tmp_path / "state.json")
    listener = Listener(m, "web", path, rpc, dispatcher, None, in_r, out_w, Clock())  # type: ignore[arg-type]
    listener.reconcile(saved)
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


def exited(serial: int) -> str:
    return encode_event("PROCESS_STATE_EXITED", process_state_payload("web_00", "web", "RUNNING", expected="0",
                                                                      pid="7"), serial)


def test_the_loop_acks_every_event_and_acts_on_them(tmp_path):
    r = run_listener(tmp_path, (exited(1) + exited(2)).encode())
    assert r["out"] == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert r["rc"] == 0
    assert [m["kind"] for m in r["sent"]] == ["crash_loop"]
    assert r["state"]["incidents"]["web_00"]["kind"] == "crash_loop"
    assert r["state"]["last_alert"]["results"] == {"rec": "sent"}


def test_a_handler_error_is_logged_and_the_event_still_acknowledged(tmp_path, caplog):
    class Broken(Machine):
        def observe(self, event, now):  # type: ignore[override]
            if isinstance(event, ProcessState):
                raise RuntimeError("bug")
            return super().observe(event, now)

    m = Broken(Config("web", None))
    r = run_listener(tmp_path, (exited(1) + exited(2) + exited(3)).encode(), machine=m)
    assert r["out"] == "READY\n" + "RESULT 2\nOKREADY\n" * 3  # never FAIL, never a loop
    assert "error handling PROCESS_STATE_EXITED (acknowledged anyway)" in caplog.text


def test_a_saved_hold_survives_a_restart_even_when_supervisord_does_not_answer(tmp_path):
    saved = {"version": 1, "gate": {"state": "none"}, "spawns": {},
             "incidents": {"web_00": {"kind": "crash_loop", "opened": 990.0, "next_retry": 1000.0 + 3600,
                                      "delay": 5.0, "summary": "s"}}}
    m = Machine(Config("web", None))
    r = run_listener(tmp_path, b"", machine=m, saved=saved)
    # No proxy here, so reconcile gets no process list: the incident is kept, nothing started.
    assert r["rpc"] == [] and r["state"]["incidents"]["web_00"]["next_retry"] == 4600.0


def test_the_listener_notices_a_changed_spec_but_not_a_broken_one(tmp_path):
    from supervisor_fastapi.listener.main import spec_watcher

    path = tmp_path / "supervisor-fastapi.toml"
    path.write_text('[app]\nname = "web"\nasgi = "m:app"\n')
    changed = spec_watcher(str(path))
    assert changed() is False
    path.write_text('[app]\nname = "web"\nasgi = "m:app"\n[listener]\nsend_retries = 1\n')
    os.utime(path, (1, 1))
    assert changed() is True and changed() is False
    path.write_text('[app]\nname = "web"\nasgi = "m:app"\n[listener]\nsend_retrys = 1\n')
    os.utime(path, (2, 2))
    assert changed() is False
