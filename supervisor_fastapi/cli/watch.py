"""``supervisor-fastapi status --watch``: the status table refreshed in place, like ``top``.

For operators without a Prometheus. Each frame is the ``status`` table plus, when the
workers count requests (``[metrics]``), each worker's request rate since the last frame,
from the same per-worker counter files the exporter reads. A frame that cannot be made
(supervisord stopped answering) says why and the watch goes on; Ctrl-C ends it with exit
status 0. ``watch`` is the loop with its clock, sleep and output injected; ``rates`` is pure.
"""

import time
from typing import Callable, Dict, Optional, Sequence, Tuple

# Cursor home + clear screen: the next frame replaces this one on a terminal.
CLEAR = "\x1b[H\x1b[2J"
Totals = Dict[str, float]  # requests counted so far, by worker process name
Frame = Tuple[str, Optional[Totals]]


def rates(before: Optional[Tuple[float, Totals]], now: float, totals: Optional[Totals]) -> Dict[str, float]:
    """Requests per second by worker between two frames. A worker whose count went down (its
    file was replaced) or that is new shows nothing rather than a made-up number."""
    if before is None or totals is None or now <= before[0]:
        return {}
    then, old = before
    return {name: (n - old[name]) / (now - then) for name, n in totals.items() if name in old and n >= old[name]}


def footer(per_second: Dict[str, float], counting: bool) -> str:
    if not counting:
        return ""
    if not per_second:
        return "\nrequests/s: (from the next frame)"
    return "\nrequests/s: " + ", ".join(f"{name} {rate:.1f}" for name, rate in sorted(per_second.items())) \
        + f" (total {sum(per_second.values()):.1f})"


def watch(make_frame: Callable[[], Frame], out: Callable[[str], None], interval: float, count: int = 0,
          tty: bool = True, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, stamp: Callable[[], str] = lambda: time.strftime("%H:%M:%S"),
          errors: Sequence[type] = (OSError,)) -> int:
    """Print a frame every ``interval`` seconds, ``count`` times (0: until Ctrl-C); returns the exit status."""
    before: Optional[Tuple[float, Totals]] = None
    shown = 0
    try:
        while True:
            try:
                text, totals = make_frame()
            except tuple(errors) as exc:  # type: ignore[misc]
                text, totals = f"cannot read the status: {exc}", None
            now = clock()
            head = f"supervisor-fastapi status --watch   every {interval:g} s   {stamp()}   (Ctrl-C to quit)\n\n"
            frame = head + text + footer(rates(before, now, totals), totals is not None)
            out(CLEAR + frame if tty else frame + "\n\n")
            before = (now, totals) if totals is not None else None
            shown += 1
            if count and shown >= count:
                return 0
            sleep(interval)
    except KeyboardInterrupt:
        return 0
