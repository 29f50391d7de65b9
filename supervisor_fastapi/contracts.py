"""The files and constants between processes, in one module: both the operator's side (CLI)
and the code inside supervisord import this, and neither imports the other.

Readers are defensive because their callers may run as root inside supervisord while the
app user writes the files (run_dir/workers/): a reader never follows a symlink, never
blocks (a FIFO opens non-blocking and is refused), reads regular files only, caps the size
and treats anything odd as "no data". Writers replace files atomically, so a reader sees
the old content or the new one, never half.

Standard library only: supervisord, the listener, the watchdog and the worker import it.
"""

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

# The REMOTE_COMMUNICATION type the listener turns into alerts.
REMOTE_TYPE = "supervisor-fastapi"
# How the controller describes a process it holds (supervisord shows it as the BACKOFF
# description): "<prefix> until HH:MM:SS: why" for a timed hold, "<prefix>: why" for the gate.
HELD_PREFIX = "held by supervisor-fastapi"
GATE_HELD_PREFIX = HELD_PREFIX + ":"
# supervisord states in which a process is not going to serve on its own.
FAILED_STATES = ("FATAL", "BACKOFF", "UNKNOWN")
# A worker state file is ~50 bytes; the listener's state a few kB. Anything larger is not ours.
MAX_STATE_BYTES = 4096
MAX_JSON_BYTES = 256 * 1024
# A worker's request counters ([metrics]): ~1 kB of JSON (8 methods x 5 classes, 12 buckets).
MAX_METRICS_BYTES = 64 * 1024
METRICS_SUFFIX = ".metrics"
# Longest integer literal a reader converts: int() of a long digit string is quadratic on
# Python < 3.11, and no file between our processes holds a number that long.
MAX_INT_DIGITS = 40
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_regular(path: str, max_bytes: int) -> Optional[Tuple[bytes, os.stat_result]]:
    """The bytes and stat of a regular file of at most ``max_bytes``; None for anything else."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while we read
                return None
        return b"".join(chunks), st
    except OSError:
        return None
    finally:
        os.close(fd)


def read_small_file(path: str, max_bytes: int = MAX_JSON_BYTES) -> Optional[bytes]:
    """The bytes of a regular file of at most ``max_bytes``; None for anything else
    (missing, a symlink, a FIFO, a device, a folder, too big, unreadable)."""
    found = _read_regular(path, max_bytes)
    return found[0] if found else None


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError("integer literal too long")
    return int(text)


def parse_json_object(data: Optional[bytes]) -> Optional[Dict[str, Any]]:
    """A JSON object from ``data``, None for anything else (deep nesting, huge integers included)."""
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"), parse_int=_parse_int)
    except (ValueError, RecursionError, UnicodeDecodeError, MemoryError):
        return None
    return value if isinstance(value, dict) else None


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES) -> Optional[Dict[str, Any]]:
    """A JSON object file read safely (see the module docstring), None when there is none."""
    return parse_json_object(read_small_file(path, max_bytes))


def write_json_atomic(path: str, data: Mapping[str, Any], mode: int = 0o600, sync: bool = True) -> None:
    """Write via a temporary file, fsync (unless ``sync`` is False) and rename: a reader never
    sees half a file, and a full disk leaves the old file in place (the OSError reaches the caller)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    body = json.dumps(data, indent=1, sort_keys=True, default=str).encode("utf-8")
    # O_EXCL: never write through whatever already sits at the temporary name (a link
    # planted there, or the leftover of a crashed process with our pid).
    _unlink_quietly(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        view = memoryview(body)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- worker state files (run_dir/workers/<process name>) -----------------------------------


def worker_state_path(state_dir: str, process_name: str) -> str:
    return os.path.join(state_dir, process_name)


def write_worker_state(path: str, pid: int, ready: float) -> None:
    """The worker, once uvicorn listens: which incarnation is ready.

    On a full disk the atomic replace cannot get a block for its temporary file; the file a
    previous incarnation left is then overwritten in place (its block is already allocated:
    readers may see a torn file for an instant, which reads as "no data", never a wrong pid).
    """
    try:
        write_json_atomic(path, {"pid": pid, "ready": ready}, mode=0o644)
    except OSError as exc:
        if not is_enospc(exc):
            raise
        body = json.dumps({"pid": pid, "ready": ready}).encode()
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))  # no file yet: the OSError goes up
        try:
            if os.pwrite(fd, body, 0) != len(body):
                raise OSError(errno.ENOSPC, "short write", path) from exc
            os.ftruncate(fd, len(body))
        finally:
            os.close(fd)


def read_worker_state(path: str) -> Optional[Dict[str, Any]]:
    """One worker's state ``{"pid", "ready", "beat"}`` (beat = mtime), None when unusable."""
    found = _read_regular(path, MAX_STATE_BYTES)
    if found is None:
        return None
    data, st = parse_json_object(found[0]), found[1]
    if data is None or not isinstance(data.get("pid"), int) or isinstance(data.get("pid"), bool):
        return None
    return {"pid": data["pid"], "ready": data.get("ready") if isinstance(data.get("ready"), (int, float)) else 0.0,
            "beat": st.st_mtime}


def read_worker_states(state_dir: str, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """The state of each worker in ``names`` (the process names supervisord reports), by name.

    The folder is never listed: the app user writes it, and a listing can be made as long (or
    as slow) as it likes, or bury the real files past any cap on entries."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
            continue
        data = read_worker_state(os.path.join(state_dir, name))
        if data is not None:
            out[name] = data
    return out


def metrics_path(state_dir: str, process_name: str) -> str:
    """A web worker's request counters ([metrics]), beside its state file; written by the worker."""
    return os.path.join(state_dir, process_name + METRICS_SUFFIX)


def read_worker_metrics(state_dir: str, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """The metrics files of the named workers (only those: the folder is the app user's), as JSON objects."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
            continue
        data = read_json(metrics_path(state_dir, name), MAX_METRICS_BYTES)
        if data is not None:
            out[name] = data
    return out


def is_ready(info: Mapping[str, Any], states: Mapping[str, Mapping[str, Any]]) -> bool:
    """RUNNING in supervisord and its own state file names that pid (uvicorn is listening)."""
    pid = info.get("pid")
    return info.get("statename") == "RUNNING" and bool(pid) and states.get(str(info.get("name")), {}).get("pid") == pid


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by whoever adopted it) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def read_rss(pid: int) -> Optional[int]:
    """Resident set size of ``pid`` in bytes (Linux /proc), None if unknown."""
    data = read_small_file(f"/proc/{int(pid)}/status", 64 * 1024) if pid > 0 else None
    if data is None:
        return None
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith("VmRSS:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# --- the releases' record (run_dir/releases.json) ------------------------------------------
#
# Written by the operator's CLI only (deploy, rollback), in run_dir, which is root's: the app
# user cannot forge it. The migration program supervisord starts reads it to skip a
# migration that already succeeded for the release it runs in.

MIGRATION_OK = "ok"
MIGRATION_FAILED = "failed"
RELEASE_ID_MAX = 64


def valid_release_id(value: Any) -> bool:
    """A release id is one plain folder name: letters, digits, '.', '_', '-', not starting with '.'."""
    return isinstance(value, str) and 0 < len(value) <= RELEASE_ID_MAX and value[0] != "." \
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)


def read_release_record(path: str) -> Dict[str, Any]:
    """The record, with only well-formed entries: {"releases": {id: {...}}, "history": [id, ...]}.
    Anything odd (missing, a link, too big, not JSON) reads as an empty record."""
    data = read_json(path) or {}
    releases = data.get("releases")
    out: Dict[str, Dict[str, Any]] = {}
    if isinstance(releases, dict):
        for rid, entry in releases.items():
            if valid_release_id(rid) and isinstance(entry, dict):
                out[rid] = {k: v for k, v in entry.items() if isinstance(k, str)
                            and isinstance(v, (str, int, float, type(None)))}
    history = [h for h in data.get("history") or [] if valid_release_id(h)] \
        if isinstance(data.get("history"), list) else []
    return {"releases": out, "history": history}


def migration_succeeded(record: Mapping[str, Any], release_id: str) -> bool:
    entry = record.get("releases", {}).get(release_id) or {}
    return entry.get("migration") == MIGRATION_OK


# --- the controller's settings: rendered as the options of [rpcinterface:fastapi_<app>] ----
#
# supervisord hands a plugin section's options to its factory exactly as loaded (and, after
# `reread`, keeps the new ones in options.rpcinterface_factories), so the controller never
# reads the spec: what it enforces is what supervisord loaded.

POLICY_KEYS = ("restarts", "window", "backoff_initial", "backoff_max", "backoff_reset", "jitter", "retry_fatal")


@dataclass(frozen=True)
class Policy:
    """Crash-loop settings of one supervisor group (the spec's ``[crash_loop]``)."""

    restarts: int = 3
    window: float = 60.0
    # The kubelet's CrashLoopBackOff starts at 10 s too; each retry is one spawn (the hold is
    # enforced inside supervisord, plugins/controller.py).
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    backoff_reset: float = 60.0
    jitter: float = 0.1
    retry_fatal: bool = True

    def encode(self) -> str:
        return " ".join(f"{k}={_word(getattr(self, k))}" for k in POLICY_KEYS)

    @classmethod
    def decode(cls, text: str) -> "Policy":
        values: Dict[str, Any] = {}
        for word in text.split():
            key, sep, raw = word.partition("=")
            if not sep or key not in POLICY_KEYS:
                raise ValueError(f"bad crash-loop setting {word!r}")
            values[key] = raw == "true" if key == "retry_fatal" else int(raw) if key == "restarts" else float(raw)
        return cls(**values)


@dataclass(frozen=True)
class ControlConfig:
    """What the controller inside supervisord enforces for one app."""

    app: str
    web: str  # the fcgi group of the web workers
    state_dir: str  # the workers' ready files (read safely: the app user writes them)
    migrate: str = ""  # the migration program, "" for none
    migrate_timeout: float = 0.0
    groups: Tuple[str, ...] = ()  # groups under crash-loop control (web, [[programs]], watchdog)
    policy: Policy = Policy()
    overrides: Tuple[Tuple[str, Policy], ...] = ()  # by group name
    reminder_interval: float = 3600.0
    current: str = ""  # release mode: the `current` symlink (which release a worker was started from)

    def policy_for(self, group: str) -> Policy:
        return dict(self.overrides).get(group, self.policy)

    def to_options(self) -> List[Tuple[str, str]]:
        """The plugin section's options (values are plain words; the INI writer escapes them)."""
        opts = [("app", self.app), ("web", self.web), ("state_dir", self.state_dir)]
        if self.migrate:
            opts += [("migrate", self.migrate), ("migrate_timeout", _word(self.migrate_timeout))]
        opts += [("groups", " ".join(self.groups)), ("crash_loop", self.policy.encode())]
        opts += [(f"crash_loop.{group}", policy.encode()) for group, policy in self.overrides]
        opts.append(("reminder_interval", _word(self.reminder_interval)))
        if self.current:
            opts.append(("current", self.current))
        return opts

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> "ControlConfig":
        """The inverse of ``to_options``; ValueError names what is wrong."""
        try:
            overrides = tuple(sorted((key[len("crash_loop."):], Policy.decode(value))
                                     for key, value in options.items() if key.startswith("crash_loop.")))
            return cls(app=options["app"], web=options.get("web") or options["app"], state_dir=options["state_dir"],
                       migrate=options.get("migrate", ""),
                       migrate_timeout=float(options.get("migrate_timeout") or 0.0),
                       groups=tuple(options.get("groups", "").split()),
                       policy=Policy.decode(options.get("crash_loop", "")), overrides=overrides,
                       reminder_interval=float(options.get("reminder_interval") or 3600.0),
                       current=options.get("current", ""))
        except KeyError as exc:
            raise ValueError(f"missing option {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- the listener's settings: one environment variable of its program ---------------------
#
# Alert channels carry secrets (webhook URLs are credentials), so they go neither on the
# command line (ps shows it to every local user) nor in a file the app could read: the
# conf (root-only when it holds secrets) gives them to the listener's environment, which
# only root and the listener's own user can read.

LISTENER_ENV = "SUPERVISOR_FASTAPI_LISTENER"


@dataclass(frozen=True)
class ListenerConfig:
    app: str
    web: str
    migrate: str = ""
    controller: bool = True  # the plugin enforces the gate and holds; False: the listener starts the web group
    groups: Tuple[str, ...] = ()
    state_path: str = ""
    journal_path: str = ""
    base_dir: str = ""  # where `command` channels run
    run_dir: str = ""
    alerts: Tuple[Dict[str, Any], ...] = ()  # {"type", "name", "options": {...}} per [[alerts]]
    send_retries: int = 3

    def to_env(self) -> str:
        import base64

        body = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        return base64.urlsafe_b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).decode()

    @classmethod
    def from_env(cls, value: str) -> "ListenerConfig":
        import base64

        try:
            body = json.loads(base64.urlsafe_b64decode(value.encode()).decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not an object")
            body["groups"] = tuple(body.get("groups") or ())
            body["alerts"] = tuple(body.get("alerts") or ())
            return cls(**body)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{LISTENER_ENV} is not a supervisor-fastapi listener setting ({exc})") from None


# --- alerts from other components: REMOTE_COMMUNICATION events the listener turns into alerts --


def remote_alert_body(app: str, kind: str, process: str, summary: str,
                      details: Optional[Mapping[str, Any]] = None, event: str = "event",
                      log_of: Optional[str] = None) -> str:
    """The JSON body of a ``supervisor-fastapi`` REMOTE_COMMUNICATION event (read by listener/protocol)."""
    return json.dumps({"app": app, "event": event, "kind": kind, "process": process or "",
                       "summary": " ".join(str(summary).split()), "details": dict(details or {}),
                       "log_of": log_of}, default=str)


def control_state(proxy: Any, app: str) -> Optional[Dict[str, Any]]:
    """The controller's state of ``app`` (plugins/rpc getState), None when supervisord runs
    without the plugin for it. Used by the CLI and by supervisorctl's plugin alike, so it needs
    nothing beyond supervisor and the standard library (no uvicorn, click or tomli-w)."""
    import xmlrpc.client  # here: the worker and the listener import this module and never call it

    from .layout import Names

    try:
        return dict(getattr(proxy, Names(app).rpc_namespace).getState())
    except (xmlrpc.client.Fault, OSError, xmlrpc.client.ProtocolError):
        return None


def announce_restart(proxy: Any, app: str, name: str, cause: str) -> None:
    """Tell ``app``'s controller that the current run of ``name`` (group:name) ends on purpose, so
    [metrics] counts its exit as ``cause`` (memory, hung, rolled). Without the plugin (or with an
    older one) nobody listens, and the caller's action goes ahead anyway."""
    import xmlrpc.client  # here, as in control_state

    from .layout import Names

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


# --- sizes as people read them (status tables, alerts; also in supervisorctl's plugin) ------

SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def format_size(n: float) -> str:
    """Bytes as a short human size: '1 GB', '512 MB' (powers of 1024, as parse_size)."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = SIZE_UNITS[unit[0]]
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


# --- log tails: this run's lines only ---------------------------------------------------


@dataclass(frozen=True)
class LogRef:
    """Which log an alert attaches: a process's, from byte ``since`` (the start of the run
    the alert is about; the controller measures it at spawn) on."""

    namespec: str
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
        fd = os.open(path, _OPEN_FLAGS)
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

        from .layout import Names

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
