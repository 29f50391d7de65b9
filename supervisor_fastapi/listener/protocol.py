"""supervisord's event-listener wire format, and decoding events into machine records.

supervisord writes ``<header line>\\n`` then ``len`` payload *characters* (not bytes,
supervisor #1243), so the parser works on decoded text. The listener answers
``RESULT 2\\nOK`` and then ``READY\\n`` for the next event. Nothing here does I/O.
"""

import codecs
import json
from typing import Any, Dict, List, Optional, Tuple

from ..contracts.rpc import REMOTE_TYPE, SERVING_EVENT, LogRef
from .state import MAX_INCIDENTS, Event, ProcessState, RemoteEvent, Serving

READY = "READY\n"
OK = "RESULT 2\nOK"
Headers = Dict[str, str]


def parse_headers(line: str) -> Headers:
    """``a:1 b:2`` -> {"a": "1", "b": "2"}. Not ``childutils.get_headers``: that raises on a
    word with no colon or with two, and a listener must not fail on what it is sent."""
    out: Headers = {}
    for word in line.split():
        key, sep, value = word.partition(":")
        if sep:
            out[key] = value
    return out


class Parser:
    """Feed it bytes as they arrive; it returns complete (headers, payload) events."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._headers: Optional[Headers] = None

    def feed(self, data: bytes) -> List[Tuple[Headers, str]]:
        self._text += self._decoder.decode(data)
        events: List[Tuple[Headers, str]] = []
        while True:
            if self._headers is None:
                pos = self._text.find("\n")
                if pos < 0:
                    break
                self._headers = parse_headers(self._text[:pos])
                self._text = self._text[pos + 1:]
            try:
                need = int(self._headers.get("len", "0"))
            except ValueError:
                need = 0
            if len(self._text) < need:
                break
            events.append((self._headers, self._text[:need]))
            self._text = self._text[need:]
            self._headers = None
        return events


def decode(headers: Headers, payload: str) -> Optional[Event]:
    """The machine event for one wire event, or None for events the listener ignores."""
    name = headers.get("eventname", "")
    if name.startswith("PROCESS_STATE_"):
        # PROCESS_STATE payloads are one line of key:value words with no trailing newline.
        fields = parse_headers(payload.split("\n", 1)[0])
        expected = fields.get("expected")
        pid = fields.get("pid", "0")
        return ProcessState(name=fields.get("processname", ""), group=fields.get("groupname", ""),
                            state=name[len("PROCESS_STATE_"):], from_state=fields.get("from_state", ""),
                            expected=None if expected is None else expected == "1",
                            pid=int(pid) if pid.isdigit() else 0)
    if name == "REMOTE_COMMUNICATION":
        head, _, data = payload.partition("\n")
        if parse_headers(head).get("type") != REMOTE_TYPE:
            return None
        return remote_event(data)
    return None


def remote_event(data: str) -> Event:
    """The JSON body ``notify()`` sends (or the controller's ``serving`` snapshot); anything
    unparsable still becomes an alert."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError:
        return RemoteEvent(kind="unparsable_event", summary=data[:200], details={"raw": data[:2000]})
    if body.get("event") == SERVING_EVENT:
        running = body.get("running")
        return Serving(app=str(body.get("app") or ""),
                       running=tuple(str(n) for n in running[:MAX_INCIDENTS]) if isinstance(running, list) else ())
    details = body.get("details")
    event = str(body.get("event") or "event")
    return RemoteEvent(kind=str(body.get("kind") or "event"), process=str(body.get("process") or ""),
                       summary=str(body.get("summary") or "").splitlines()[0] if body.get("summary") else "",
                       details=details if isinstance(details, dict) else {}, app=str(body.get("app") or ""),
                       event=event if event in ("open", "reminder", "resolve") else "event",
                       log_of=LogRef(str(body["log_of"]), _offset(body.get("log_from")))
                       if body.get("log_of") else None)


def _offset(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
