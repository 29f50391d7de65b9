"""The rolling restart: replace the web workers one at a time, over ``Edges`` (cli/edges.py).

A worker is replaced when supervisord has the new process RUNNING *and* its state file names
the new pid (the worker writes it after uvicorn has started listening); only then does the
next old worker stop, so numprocs-1 workers serve throughout. While the migration gate is
shut it refuses before stopping anything (a new worker could not start); a worker the
crash-loop guard holds is skipped (the controller owns its retries). If a new worker does
not come up, the roll stops there, the remaining old workers keep serving, and an alert
(``rolling_restart_failed``) goes out through the listener.

Run by `supervisor-fastapi restart` and `deploy`, and by ``rolling_restart`` in supervisorctl
(plugins/ctl.py): no click here.
"""

import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..contracts.rpc import ControlState, ProcessInfo, is_ready
from .edges import Edges, hold_of, namespec

Progress = Callable[[str], None]


def gate_refusal(control: Optional[ControlState]) -> Optional[str]:
    """Why no worker may start now (the migration gate is shut), or None."""
    gate = (control or {}).get("gate")
    if isinstance(gate, dict) and gate.get("state") not in (None, "open"):
        return f"the migration gate is shut: {gate.get('detail') or gate.get('state')}"
    return None


@dataclass
class RollResult:
    restarted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Optional[str] = None
    reason: str = ""
    untouched: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


def _info(edges: Edges, name: str) -> Optional[ProcessInfo]:
    return next((i for i in edges.infos() if namespec(i) == name), None)


def wait_replaced(edges: Edges, spec_name: str, old_pid: int, timeout: float, clock: Callable[[], float],
                  sleep: Callable[[float], None]) -> Optional[str]:
    """None once ``spec_name`` runs a new, ready process; else why it did not come up."""
    deadline = clock() + timeout
    while True:
        info = _info(edges, spec_name)
        if info is None:
            return "it is no longer configured in supervisord"
        state = info["statename"]
        if state == "FATAL":
            return "FATAL: " + (info.get("spawnerr") or "it exited too quickly on every start attempt")
        if state == "EXITED" and info["pid"] == 0:
            return f"it exited with status {info.get('exitstatus')}"
        if state == "BACKOFF" and hold_of(edges.control_state(), info) is not None:
            return f"it crashed and the crash-loop guard holds it: {info.get('spawnerr')}"
        if state == "STOPPED":
            return "it was stopped while starting"
        if info["pid"] and info["pid"] != old_pid and is_ready(info, edges.worker_states([info["name"]])):
            return None
        if clock() > deadline:
            detail = f" (supervisord says {state})" if state != "RUNNING" else " (RUNNING but not listening yet)"
            return f"not ready after {timeout:g} s{detail}"
        sleep(0.1)


def wait_others_settled(edges: Edges, group: str, name: str, timeout: float, clock: Callable[[], float],
                        sleep: Callable[[float], None]) -> Optional[str]:
    """Wait until no other worker of the group is starting, stopping or not yet listening
    (a watchdog recycle, say), so stopping ``name`` leaves the rest serving; None when settled."""
    deadline = clock() + timeout
    while True:
        infos = edges.infos()
        states = edges.worker_states([i["name"] for i in infos if i["group"] == group])
        busy = [namespec(i) for i in infos if i["group"] == group and namespec(i) != name
                and (i["statename"] in ("STARTING", "STOPPING") or (i["statename"] == "RUNNING"
                                                                    and not is_ready(i, states)))]
        if not busy:
            return None
        if clock() > deadline:
            return ", ".join(busy)
        sleep(0.1)


def rolling_restart(edges: Edges, group: str, progress: Progress, timeout: float = 60.0,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> RollResult:
    """Replace the workers of ``group`` one at a time; see the module docstring."""
    result = RollResult()
    workers = sorted((i for i in edges.infos() if i["group"] == group), key=lambda i: i["name"])
    if not workers:
        result.failed, result.reason = group, f"supervisord has no program group {group!r}"
        return result
    control = edges.control_state()
    refusal = gate_refusal(control)
    if refusal is not None:
        # Refuse before stopping anything: a stopped worker could not be started again.
        result.failed, result.reason = group, f"{refusal}; no worker was stopped"
        result.untouched = [namespec(i) for i in workers]
        return result
    names = [namespec(i) for i in workers]
    for index, name in enumerate(names):
        info = _info(edges, name)
        if info is None:
            result.skipped[name] = "no longer configured"
            continue
        held = hold_of(control, info)
        if held is not None and info["statename"] != "RUNNING":
            result.skipped[name] = f"held by the crash-loop guard ({held.get('reason')}); the controller retries it"
            progress(f"{name}: skipped, {result.skipped[name]}")
            continue
        old_pid = info["pid"] if info["statename"] in ("RUNNING", "STARTING") else 0
        busy = wait_others_settled(edges, group, name, timeout, clock, sleep) if old_pid else None
        t0 = clock()
        why: Optional[str] = None
        if busy:
            why = (f"not stopped: {busy} still starting/stopping after {timeout:g} s "
                   "(another restart or a memory recycle in progress?)")
        else:
            progress(f"{name}: stopping pid {old_pid} (draining)" if old_pid
                     else f"{name}: {info['statename']}, starting")
            try:
                if old_pid:
                    try:
                        edges.stop(name)
                    except KeyboardInterrupt:
                        # Interrupted mid-stop (Ctrl-C): never leave the worker stopped.
                        edges.start(name)
                        raise
                edges.start(name)
                why = wait_replaced(edges, name, old_pid, timeout, clock, sleep)
            except (xmlrpc.client.Fault, OSError) as exc:
                why = f"supervisord refused: {getattr(exc, 'faultString', exc)}"
        if why is not None:
            result.failed, result.reason = name, why
            result.untouched = names[index + 1:]
            summary = (f"rolling restart of {group} stopped at {name}: {why}; "
                       f"{len(result.untouched)} old worker(s) left serving")
            progress(summary)
            edges.alert("rolling_restart_failed", name, summary,
                        {"group": group, "restarted": result.restarted, "untouched": result.untouched,
                         "reason": why})
            return result
        new = _info(edges, name) or {}
        progress(f"{name}: pid {new.get('pid')} ready in {clock() - t0:.1f} s")
        result.restarted.append(name)
    if not result.restarted:
        # "restarted 0" with exit 0 read as success: nothing serves the new code.
        result.failed = group
        why = "; ".join(sorted(set(result.skipped.values())))
        result.reason = (f"no worker was restarted: every one was skipped ({why}); fix the cause, then "
                         "`supervisor-fastapi up` clears crash-loop holds and starts them")
    return result
