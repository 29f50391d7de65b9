"""The event listener on demand: started by the plugin when an event needs it.

With the plugin, the listener exits (status 0) once it has had nothing to do for a few seconds
(listener/main.py, ``idle_exit``), and its ``[eventlistener]`` section restarts it only after a
crash (``autorestart=unexpected``). supervisord keeps buffering the pool's events meanwhile
(its ``event_buffer``); this module, run from the controller once per main-loop pass after
an event, looks at that buffer while the listener is EXITED:

- an event the listener acts on (``wanted``) starts it (``spawn``, as `supervisorctl start`
  does);
- every other event is dropped from the buffer, so a long rest cannot overflow it (supervisord
  logs each overflow as an error and drops the oldest event, which could be a wanted one).

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

A listener the operator stopped (STOPPED) is not started: its buffer is only kept tidy.
An event sent to the listener just as it exits is given back to the buffer by supervisord
(``EventRejectedEvent``) and starts the next one. Standard library and supervisor only.
"""

import json
from typing import Any, Callable, List, Optional

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


def wake(supervisord: Any, config: ControlConfig, pool_name: str, web_running: List[str],
         log: Callable[[str], None]) -> bool:
    """Tidy the buffer of ``pool_name`` and start its listener if it has a wanted event.
    Returns whether it started it."""
    from supervisor.states import ProcessStates, SupervisorStates

    pool = supervisord.process_groups.get(pool_name)
    process = listener_process(pool)
    if process is None or supervisord.options.mood < SupervisorStates.RUNNING:
        return False  # shutting down or reloading: the next run's listener starts with autostart
    state = process.get_state()
    if state not in (ProcessStates.EXITED, ProcessStates.STOPPED):
        return False  # running, starting or restarting: it takes the buffer as it is
    keep = [e for e in pool.event_buffer if wanted(e, config, bool(web_running))]
    if len(keep) != len(pool.event_buffer):
        pool.event_buffer[:] = keep
    if not keep or state != ProcessStates.EXITED:
        return False
    log(f"supervisor-fastapi: starting {pool_name} for {len(keep)} event(s)")
    process.spawn()
    return True


def snapshot(pool: Any, config: ControlConfig, web_running: List[str]) -> None:
    """Append the ``serving`` snapshot to the buffer of the listener going STARTING now."""
    from supervisor import events

    pool._acceptEvent(events.RemoteCommunicationEvent(REMOTE_TYPE, serving_snapshot_body(config.app, web_running)))
