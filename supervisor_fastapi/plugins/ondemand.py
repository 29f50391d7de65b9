"""The event listener on demand: started by the plugin when an event needs it.

With the plugin, the listener exits (status 0) once it has had nothing to do for a few seconds
(listener/main.py, ``idle_exit``), and its ``[eventlistener]`` section restarts it only after a
crash (``autorestart=unexpected``). supervisord keeps buffering the pool's events meanwhile
(its ``event_buffer``); this module, run from the controller once per main-loop pass after
an event, looks at that buffer while the listener is not RUNNING:

- an event the listener acts on (``wanted``) starts it if it is EXITED (``spawn``, as
  `supervisorctl start` does);
- while it is EXITED or STOPPED, every other event is dropped from the buffer, so a long rest
  cannot overflow it (supervisord logs each overflow as an error and drops the oldest event,
  which could be a wanted one);
- this app's alerts, while the listener is not RUNNING (EXITED, STARTING for its first second,
  STOPPED, being restarted, or supervisord stopping), move from the buffer to the spool file
  (``run/listener-spool.jsonl``, root's), which the listener reads before the events
  supervisord hands it. The buffer lives in supervisord's memory: a reload, a shutdown or an
  `update` that replaces the listener's group drops it, and a burst larger than it overflows,
  where a running listener would have taken each alert within milliseconds. A spool that
  cannot be written (a full disk) leaves them in the buffer.

Events the listener acts on: this app's alerts (REMOTE_COMMUNICATION of our type for this app,
or for no app, which are this app's); the migration's EXITED (it closes an incident left open
by an earlier run); and a web worker's state change while no web worker is RUNNING (the
``no_worker_serving`` timer). A web worker's exit while another serves needs nothing from the
listener: the crash-loop machine runs here and sends its alerts as events.

Whoever starts the listener (this module, supervisord's autostart or its restart after a
crash, `supervisorctl start`), ``snapshot`` appends a ``serving`` event behind the buffered
ones as it goes STARTING: which web workers run now, the picture the listener would otherwise
have to build from events it never saw (without it, a listener started while both workers
serve would page "no worker serving" after its grace).

A listener the operator stopped (STOPPED) is not started: its alerts wait in the spool until
`supervisorctl start`.
An event sent to the listener just as it exits is given back to the buffer by supervisord
(``EventRejectedEvent``) and starts the next one. Standard library and supervisor only.
"""

import json
import os
from typing import Any, Callable, List, Optional, Sequence

from ..contracts.rpc import REMOTE_TYPE, SERVING_EVENT, serving_snapshot_body
from ..contracts.settings import ControlConfig


def wanted(event: Any, config: ControlConfig, web_running: bool) -> bool:
    """Whether the listener acts on ``event`` (a supervisor event object from its buffer)."""
    from supervisor import events

    if isinstance(event, events.RemoteCommunicationEvent):
        if event.type != REMOTE_TYPE:
            return False
        try:
            body = json.loads(event.data)
        except ValueError:
            return True  # the listener turns it into an "unparsable_event" alert
        if not isinstance(body, dict):
            return True
        if body.get("event") == SERVING_EVENT:
            return False  # a snapshot for a listener that has gone: stale, the next start sends a new one
        return str(body.get("app") or "") in ("", config.app)
    if isinstance(event, events.ProcessStateEvent):
        process = event.process
        group = process.group.config.name if getattr(process, "group", None) is not None else process.config.name
        if group == config.web:
            return not web_running
        return bool(config.migrate) and group == config.migrate and isinstance(event, events.ProcessStateExitedEvent)
    return False


def listener_process(pool: Any) -> Optional[Any]:
    """The listener pool's one process, if ``pool`` is an event-listener pool started on demand."""
    from supervisor.datatypes import RestartWhenExitUnexpected

    if pool is None or not isinstance(getattr(pool, "event_buffer", None), list):
        return None
    process = next(iter(pool.processes.values()), None)
    # A conf rendered before the listener exited when idle restarts it unconditionally: leave it be.
    if process is None or process.config.autorestart is not RestartWhenExitUnexpected:
        return None
    return process


SPOOL_LIMIT = 16 * 1024 * 1024  # beyond this, alerts wait in supervisord's buffer as before


def is_alert(event: Any) -> bool:
    from supervisor import events

    return isinstance(event, events.RemoteCommunicationEvent)


def spool(path: str, batch: Sequence[Any]) -> None:
    """Append ``batch`` (supervisor events) to the spool as JSON lines; OSError when it cannot."""
    from supervisor import events

    lines = "".join(json.dumps({"eventname": events.getEventNameByType(type(e)), "payload": e.payload()}) + "\n"
                    for e in batch).encode()
    import fcntl

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(10):
        fd = os.open(path, flags, 0o600)
        try:
            # The listener renames the file, then locks it before reading: under the lock, a
            # file that is no longer at ``path`` is the listener's now, and is not written to.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    continue
            except FileNotFoundError:
                continue
            if os.fstat(fd).st_size + len(lines) > SPOOL_LIMIT:
                raise OSError(f"{path} holds {SPOOL_LIMIT} bytes already")
            os.write(fd, lines)
            return
        finally:
            os.close(fd)  # and with it the lock
    raise OSError(f"{path} kept being taken while it was written")


class ListenerStarter:
    """What the plugin does for one app's listener on a pass after an event (``wake``)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.spool_failing = False

    def wake(self, supervisord: Any, config: ControlConfig, pool_name: str, web_running: List[str],
             spool_path: str) -> bool:
        """Spool this app's alerts while the listener does not run, tidy its buffer, and start it
        if a wanted event waits. Returns whether it started it."""
        from supervisor.states import ProcessStates, SupervisorStates

        pool = supervisord.process_groups.get(pool_name)
        process = listener_process(pool)
        if process is None:
            return False
        state = process.get_state()
        if state == ProcessStates.RUNNING:
            return False  # it takes its buffer as it is
        want = [e for e in pool.event_buffer if wanted(e, config, bool(web_running))]
        alerts = [e for e in want if is_alert(e)]
        if alerts and spool_path:
            try:
                spool(spool_path, alerts)
            except OSError as exc:
                if not self.spool_failing:
                    self.log(f"supervisor-fastapi: cannot spool alerts for {pool_name} ({exc}); they wait in "
                             "supervisord's buffer")
                self.spool_failing = True
            else:
                self.spool_failing = False
                spooled = set(map(id, alerts))
                pool.event_buffer[:] = [e for e in pool.event_buffer if id(e) not in spooled]
        if state in (ProcessStates.EXITED, ProcessStates.STOPPED):
            keep = set(map(id, want))
            pool.event_buffer[:] = [e for e in pool.event_buffer if id(e) in keep]
        if not want or state != ProcessStates.EXITED or supervisord.options.mood < SupervisorStates.RUNNING:
            return False  # stopped by the operator, starting already, or supervisord is stopping
        self.log(f"supervisor-fastapi: starting {pool_name} for {len(want)} event(s)")
        process.spawn()
        return True


def snapshot(pool: Any, config: ControlConfig, web_running: List[str]) -> None:
    """Append the ``serving`` snapshot to the buffer of the listener going STARTING now."""
    from supervisor import events

    pool._acceptEvent(events.RemoteCommunicationEvent(REMOTE_TYPE, serving_snapshot_body(config.app, web_running)))
