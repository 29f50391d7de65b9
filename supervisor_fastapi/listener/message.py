"""The alert as every channel sees it: one JSON-able dict, and its plain-text body.

Pure (the host name aside, looked up only when the caller gives none); imported by the
listener's event loop, the channels and ``alert-test``. Standard library only: it may import
nothing else of the listener.
"""

import time
from typing import Any, Dict, Mapping, Optional

Message = Dict[str, Any]


def make_message(event: str, kind: str, process: str, summary: str, details: Mapping[str, Any], app: str,
                 now: float, host: Optional[str] = None) -> Message:
    """The alert as every channel sees it (the JSON body of webhooks and commands)."""
    if not host:
        import socket  # here: the listener at rest has no use for it

        host = socket.gethostname()
    label = {"open": "OPEN", "reminder": "STILL OPEN", "resolve": "RESOLVED", "event": "EVENT",
             "test": "TEST"}.get(event, event.upper())
    text = f"[{app}@{host}] {label} {kind}: {summary}"
    return {"text": text, "event": event, "kind": kind, "app": app, "host": host, "process": process,
            "summary": summary, "details": dict(details), "at": now,
            "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def full_text(msg: Message) -> str:
    """A plain-text body: the one-line text, details, and the log tail if any."""
    lines = [msg["text"], ""]
    details = dict(msg.get("details") or {})
    tail = details.pop("log_tail", None)
    for key in sorted(details):
        lines.append(f"{key}: {details[key]}")
    if tail:
        lines += ["", "--- last lines of the log ---", str(tail).rstrip()]
    return "\n".join(lines) + "\n"
