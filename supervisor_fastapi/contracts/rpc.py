"""What passes over supervisord's XML-RPC between our processes: the records supervisord
and the controller's ``getState`` answer (as TypedDicts), the controller's calls
(``control_state``, ``announce_restart``), alerts raised through the listener (``notify``,
``remote_alert_body``), log tails of one run, and app output made printable for XML.

Every record here comes from another process and may be malformed: the types say what a
well-behaved peer sends, and readers still check each value before they use it.

Standard library only, xmlrpc.client and supervisor imported inside the functions that call
out: the listener imports this module at rest and loads them on its first alert.
"""

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypedDict, cast

from .files import READ_FLAGS

# The REMOTE_COMMUNICATION type the listener turns into alerts.
REMOTE_TYPE = "supervisor-fastapi"
# How the controller describes a process it holds (supervisord shows it as the BACKOFF
# description): "<prefix> until HH:MM:SS: why" for a timed hold, "<prefix>: why" for the gate.
HELD_PREFIX = "held by supervisor-fastapi"
GATE_HELD_PREFIX = HELD_PREFIX + ":"
# supervisord states in which a process is not going to serve on its own.
FAILED_STATES = ("FATAL", "BACKOFF", "UNKNOWN")


# --- records over XML-RPC ----------------------------------------------------------------


class ProcessInfo(TypedDict, total=False):
    """One record of supervisord's ``getAllProcessInfo`` / ``getProcessInfo``. supervisord sends
    every key; total=False because tests and fakes build partial records."""

    name: str
    group: str
    description: str  # supervisorctl's text: uptime, or for BACKOFF the spawnerr
    start: int  # unix time of the last start, 0 if never
    stop: int
    now: int
    state: int
    statename: str  # STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    spawnerr: str  # while the controller holds the process: HELD_PREFIX ...
    exitstatus: int
    logfile: str  # the same as stdout_logfile (supervisord keeps it for old clients)
    stdout_logfile: str
    stderr_logfile: str
    pid: int


class Incident(TypedDict, total=False):
    """An open incident of one process (plugins/crashloop.py ``Incident.to_json``)."""

    kind: str  # crash_loop, killed
    opened: float
    summary: str
    delay: float  # the current backoff delay
    next_retry: Optional[float]  # None: no retry planned (given up, or a kill incident)
    retries: int
    last_alert: float
    gave_up: bool


class Hold(TypedDict, total=False):
    """Why the controller keeps a process in BACKOFF: ``kind`` crash or gate; no ``until`` is forever."""

    until: Optional[float]
    kind: str
    reason: str


class ProcessControl(TypedDict, total=False):
    """The controller's entry for one process (``group:name``) of the app.

    Keys beyond ``state`` only for what applies: the crash-loop ones (incident, spawns, restarts
    by cause, ...) for processes under crash-loop control, ``release`` for a live one in
    release mode, ``held`` while it is held."""

    state: str
    incident: Optional[Incident]
    kill_incident: Optional[Incident]
    failures: List[float]
    kills: List[float]
    spawns: List[float]  # the last hour's
    first_spawn: Optional[float]
    restarts: Dict[str, int]  # by cause: killed, crashed, start_failed, memory, hung, rolled
    release: str
    held: Hold


class Gate(TypedDict, total=False):
    """The migration gate: ``state`` open, or why workers may not start yet."""

    state: str
    detail: str


class ControlState(TypedDict, total=False):
    """What ``fastapi_<app>.getState`` answers (plugins/controller.py ``AppControl.snapshot``).
    XML-RPC carries no None: a key whose value is None is left out."""

    app: str
    since: float
    now: float
    settings: Dict[str, str]  # ControlConfig.to_options: what supervisord loaded
    gate: Optional[Gate]  # only with a migration
    release: Optional[str]  # release mode: what `current` points at
    processes: Dict[str, ProcessControl]  # by group:name


def is_ready(info: ProcessInfo, states: Mapping[str, Mapping[str, Any]]) -> bool:
    """RUNNING in supervisord and its own state file names that pid (uvicorn is listening).
    ``states``: read_worker_states, or the plugin's getWorkerStates answer."""
    pid = info.get("pid")
    return info.get("statename") == "RUNNING" and bool(pid) and states.get(str(info.get("name")), {}).get("pid") == pid


# --- alerts from other components: REMOTE_COMMUNICATION events the listener turns into alerts --


def remote_alert_body(app: str, kind: str, process: str, summary: str,
                      details: Optional[Mapping[str, Any]] = None, event: str = "event",
                      log_of: Optional[str] = None) -> str:
    """The JSON body of a ``supervisor-fastapi`` REMOTE_COMMUNICATION event (read by listener/protocol)."""
    return json.dumps({"app": app, "event": event, "kind": kind, "process": process or "",
                       "summary": " ".join(str(summary).split()), "details": dict(details or {}),
                       "log_of": log_of}, default=str)


# The controller's snapshot for a listener it starts on demand (plugins/controller.py): which web
# workers are RUNNING now. It follows every event buffered while the listener was down, so it
# is the newest word on them; the listener (state.ServingWatch) takes it as its own picture.
SERVING_EVENT = "serving"


def serving_snapshot_body(app: str, running: Sequence[str]) -> str:
    """The JSON body of a ``serving`` snapshot (read by listener/protocol)."""
    return json.dumps({"app": app, "event": SERVING_EVENT, "running": sorted(running)})


def control_state(proxy: Any, app: str) -> Optional[ControlState]:
    """The controller's state of ``app`` (plugins/rpc getState), None when supervisord runs
    without the plugin for it. Used by the CLI and by supervisorctl's plugin alike, so it needs
    nothing beyond supervisor and the standard library (no uvicorn, click or tomli-w)."""
    import xmlrpc.client  # here: the listener imports this module at rest and never calls it

    from ..layout import Names

    try:
        # Typed as a well-behaved controller answers; its readers check each value all the same.
        return cast(ControlState, dict(getattr(proxy, Names(app).rpc_namespace).getState()))
    except (xmlrpc.client.Fault, OSError, xmlrpc.client.ProtocolError):
        return None


def announce_restart(proxy: Any, app: str, name: str, cause: str) -> None:
    """Tell ``app``'s controller that the current run of ``name`` (group:name) ends on purpose, so
    [metrics] counts its exit as ``cause`` (memory, hung, rolled). Without the plugin (or with an
    older one) nobody listens, and the caller's action goes ahead anyway."""
    import xmlrpc.client  # here, as in control_state

    from ..layout import Names

    if not cause:
        return
    try:
        getattr(proxy, Names(app).rpc_namespace).expectRestart(name, cause)
    except (xmlrpc.client.Fault, OSError, xmlrpc.client.ProtocolError):
        pass


def notify(proxy: Any, app: str, kind: str, process: str, summary: str,
           details: Optional[Mapping[str, Any]] = None) -> None:
    """Raise a one-off alert through ``app``'s listener (the same (kind, process) at most once a
    minute; repeats are counted), via ``supervisor.sendRemoteCommEvent``."""
    proxy.supervisor.sendRemoteCommEvent(REMOTE_TYPE, remote_alert_body(app, kind, process, summary, details))


# --- log tails: this run's lines only ---------------------------------------------------


@dataclass(frozen=True)
class LogRef:
    """Which log an alert attaches: a process's, from byte ``since`` (the start of the run
    the alert is about; the controller measures it at spawn) on."""

    full_name: str  # group:name
    since: int = 0


def tail_window(size: int, since: int, length: int) -> Tuple[int, int]:
    """(offset, length) of the last ``length`` bytes of a log of ``size`` bytes that were
    written at or after ``since`` (where the run began); a log now smaller than ``since``
    was rotated, and all of it is newer (pure)."""
    if since > size:
        since = 0
    start = max(since, size - length, 0)
    return start, size - start


# --- app output over XML-RPC ---------------------------------------------------------------
#
# A log holds whatever the app wrote: colour codes, control bytes, bytes that are not UTF-8.
# XML 1.0 cannot carry most control characters (expat refuses the whole answer) and
# supervisord's own log methods decode strictly (a stray byte is an HTTP 500). So every answer
# that can carry app output is made printable where it is produced (the plugin), and the
# clients scrub what an unpatched supervisord sends raw.

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Raw control bytes in an XML answer become these code points (valid XML), which printable()
# turns back into the control character before rendering it: one rendering for both paths.
_SCRUB_BASE = 0x10FF00
_SCRUB_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_UNSCRUB = re.compile("[\U0010ff00-\U0010ff1f]")


def printable(text: str) -> str:
    """``text`` as people and XML-RPC can read it: terminal escape sequences (colours) removed,
    CR/LF line ends as LF, any other control character shown as ``\\xNN``."""
    text = _UNSCRUB.sub(lambda m: chr(ord(m.group()) - _SCRUB_BASE), text)
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def scrub_xml_answer(data: bytes) -> bytes:
    """An XML-RPC answer with its raw control bytes (which expat refuses) replaced by character
    references that ``printable`` shows as ``\\xNN``; the markup itself never holds such bytes."""
    return _SCRUB_BYTES.sub(lambda m: f"&#{_SCRUB_BASE + m.group()[0]};".encode(), data)


class ScrubbingParser:
    """Wraps xmlrpc.client's parser: feeds it the answer through ``scrub_xml_answer``."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser

    def feed(self, data: Any) -> None:
        self.parser.feed(scrub_xml_answer(data.encode("utf-8") if isinstance(data, str) else data))

    def close(self) -> None:
        self.parser.close()


def scrubbing_transport(username: str, password: str, serverurl: str) -> Any:
    """supervisor's XML-RPC transport (``unix://`` or ``http://``) whose answers are scrubbed
    (``scrub_xml_answer``) before expat parses them: the CLI's and the listener's."""
    from supervisor.xmlrpc import SupervisorTransport

    class ScrubbingTransport(SupervisorTransport):
        def getparser(self) -> Any:
            parser, unmarshaller = super().getparser()
            return ScrubbingParser(parser), unmarshaller

    return ScrubbingTransport(username, password, serverurl)


def log_text(data: bytes, cut: bool) -> str:
    """Log bytes as printable text; ``cut``: the first line was cut by the window and is dropped."""
    text = data.decode("utf-8", "replace")
    if cut and "\n" in text:
        text = text.split("\n", 1)[1]
    return printable(text)


def read_log_window(path: str, since: int, length: int) -> str:
    """The last ``length`` bytes of the log at ``path`` written at or after ``since``, as
    printable text; "" when there is none (read as root: no link is followed, nothing blocks)."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        start, count = tail_window(st.st_size, since, length)
        if count <= 0:
            return ""
        data = os.pread(fd, count, start)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return log_text(data, start > min(since, st.st_size))


def run_log_tail(proxy: Any, namespec: str, since: int = 0, length: int = 3000, app: str = "") -> str:
    """The end of a process's log through supervisord, from byte ``since`` on, printable: a
    process that failed now is shown with its own lines, never with an earlier run's. A first
    line cut by ``length`` is dropped. With ``app``, its plugin reads the log (any bytes);
    without the plugin, supervisord's own log methods (a log that is not UTF-8 fails there)."""
    if app:
        import xmlrpc.client  # here, as in control_state

        from ..layout import Names

        try:
            return str(getattr(proxy, Names(app).rpc_namespace).tailLog(namespec, since, length))
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != 1:  # UNKNOWN_METHOD: supervisord without this plugin (or an older one)
                raise
    _, size, _ = proxy.supervisor.tailProcessStdoutLog(namespec, 0, 0)  # (b"", size, overflow)
    start, count = tail_window(int(size), since, length)
    if count <= 0:
        return ""
    text = printable(str(proxy.supervisor.readProcessStdoutLog(namespec, start, count)))
    if start > since and "\n" in text:
        text = text.split("\n", 1)[1]
    return text
