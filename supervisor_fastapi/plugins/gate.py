"""The migration gate: whether web workers may be spawned, as a pure function of the
migration program's current run (its supervisord state), plus the alerts its changes raise.

The gate is open only while the migration's last run in this supervisord exited with an
expected status. Deriving it from the process (not from remembered events) is what makes
it hold through every start path and open in every legitimate flow: a new supervisord, a
`reload` and an `update` that re-adds the migration all run it again (autostart), and the
gate is shut until that run succeeds; an `update` that leaves the migration alone leaves
it open. Workers already serving when a re-run fails keep serving the release they
started with; no worker is started (not even to replace a crashed one) until a migration
succeeds.
"""

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional

GateState = Literal["open", "running", "failed", "timeout", "waiting", "missing"]


@dataclass(frozen=True)
class Migration:
    """What supervisord says about the migration program's current run."""

    state: str  # supervisord state name; "" when the program is not loaded
    laststart: float = 0.0
    exitstatus: Optional[int] = None
    expected: bool = False  # exitstatus is in the program's exitcodes
    spawnerr: str = ""
    timed_out: bool = False  # the controller stopped this run for running past its timeout


@dataclass(frozen=True)
class Gate:
    state: GateState
    detail: str

    @property
    def open(self) -> bool:
        return self.state == "open"


def gate_of(m: Migration, name: str, timeout: float) -> Gate:
    """The gate for the migration's current run (pure)."""
    if not m.state:
        return Gate("missing", f"{name} is not loaded in supervisord; run `supervisor-fastapi up`")
    if m.state in ("STARTING", "RUNNING"):
        return Gate("running", f"waiting for {name} (running since {_clock(m.laststart)})")
    if m.state == "EXITED" and m.expected:
        return Gate("open", f"{name} exited {m.exitstatus} at {_clock(m.laststart)}")
    if m.state == "EXITED":
        return Gate("failed", f"{name} exited with status {m.exitstatus}; fix it, then run "
                    f"`supervisor-fastapi up` (or `supervisorctl start {name}`)")
    if m.timed_out:
        return Gate("timeout", f"{name} ran longer than its timeout ({timeout:g} s) and was stopped; "
                    f"fix it, then run `supervisor-fastapi up` (or `supervisorctl start {name}`)")
    if m.state in ("BACKOFF", "FATAL"):
        return Gate("failed", f"{name} could not be started ({m.spawnerr or m.state}); fix it, then run "
                    "`supervisor-fastapi up`")
    if m.state == "STOPPING":
        return Gate("failed", f"{name} is being stopped before it finished")
    if m.laststart:
        return Gate("failed", f"{name} was stopped before it finished; run `supervisor-fastapi up` "
                    f"(or `supervisorctl start {name}`)")
    return Gate("waiting", f"waiting for {name} to run")


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "-"


@dataclass(frozen=True)
class GateAlert:
    event: Literal["open", "resolve"]
    kind: str
    summary: str
    details: Dict[str, Any]


class GateWatch:
    """Alerts from the gate's changes: one open per failed run, one resolve when a run succeeds.
    Texts never contradict the facts: they say how many workers keep serving."""

    def __init__(self) -> None:
        self.state: Optional[GateState] = None
        self.incident: Optional[str] = None  # the kind of the open migration incident

    def observe(self, gate: Gate, name: str, running: int, held: int) -> List[GateAlert]:
        if gate.state == self.state:
            return []
        self.state = gate.state
        if gate.state in ("failed", "timeout"):
            self.incident = "migration_timeout" if gate.state == "timeout" else "migration_failed"
            keep = (f"the {running} worker(s) already running keep serving the previous release"
                    if running else "no web worker is running")
            return [GateAlert("open", self.incident, f"{gate.detail}. Meanwhile {keep}, and no worker will "
                              "start until a migration succeeds", {"gate": gate.state, "running_workers": running})]
        if gate.open and self.incident is not None:
            kind, self.incident = self.incident, None
            return [GateAlert("resolve", kind, f"{name} succeeded; starting {held} held web worker(s)",
                              {"held_workers": held})]
        return []
