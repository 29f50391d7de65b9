"""For other components: raise a one-off alert through the running listener.

    from supervisor_fastapi.listener.notify import notify
    notify(proxy, "memory_recycle", "web_01", "web_01 used 1.2 GB; recycled", {"rss": 1288490188})

The listener turns each such REMOTE_COMMUNICATION event into an alert on every channel
(the same (kind, process) at most once a minute; suppressed repeats are counted).
"""

import json
from typing import Any, Mapping, Optional

from ..contracts import REMOTE_TYPE


def notify(proxy: Any, kind: str, process: str, summary: str, details: Optional[Mapping[str, Any]] = None) -> None:
    """Send one alert request to the listener via ``supervisor.sendRemoteCommEvent``."""
    body = {"kind": kind, "process": process or "", "summary": " ".join(str(summary).split()),
            "details": dict(details or {})}
    proxy.supervisor.sendRemoteCommEvent(REMOTE_TYPE, json.dumps(body, default=str))
