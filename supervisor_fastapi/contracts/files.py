"""Files one process writes and another reads: the bounded, no-follow readers, the atomic
writer, the workers' state and metrics files, the releases' record, and what /proc says
about a pid.

Readers are defensive because their callers may run as root inside supervisord while the
app user writes the files (run_dir/workers/): a reader never follows a symlink, never
blocks (a FIFO opens non-blocking and is refused), reads regular files only, caps the size
and treats anything odd as "no data". Writers replace files atomically, so a reader sees
the old content or the new one, never half.

Standard library only, and nothing else of ours: the web worker imports it under the app's
own interpreter, and supervisord, the listener, the watchdog and the exporter do too.
"""

import errno
import json
import os
import stat
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, TypedDict

# A worker state file is ~50 bytes; the listener's state a few kB. Anything larger is not ours.
MAX_STATE_BYTES = 4096
MAX_JSON_BYTES = 256 * 1024
# A worker's request counters ([metrics]): ~1 kB of JSON (8 methods x 5 classes, 12 buckets).
MAX_METRICS_BYTES = 64 * 1024
METRICS_SUFFIX = ".metrics"
# Longest integer literal a reader converts: int() of a long digit string is quadratic on
# Python < 3.11, and no file between our processes holds a number that long.
MAX_INT_DIGITS = 40
# How every reader opens a file someone else may control: no link followed, no blocking
# (a FIFO), never our controlling terminal, not inherited by children.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_regular(path: str, max_bytes: int) -> Optional[Tuple[bytes, os.stat_result]]:
    """The bytes and stat of a regular file of at most ``max_bytes``; None for anything else."""
    try:
        fd = os.open(path, READ_FLAGS)
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


def is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# --- worker state files (run_dir/workers/<process name>) -----------------------------------


class WorkerState(TypedDict):
    """What ``read_worker_state`` makes of a worker's file (also the plugin's getWorkerStates values)."""

    pid: int  # the incarnation that is listening
    ready: float  # when it started listening
    beat: float  # the file's mtime: the worker's last heartbeat


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


def read_worker_state(path: str) -> Optional[WorkerState]:
    """One worker's state ``{"pid", "ready", "beat"}`` (beat = mtime), None when unusable."""
    found = _read_regular(path, MAX_STATE_BYTES)
    if found is None:
        return None
    data, st = parse_json_object(found[0]), found[1]
    if data is None or not isinstance(data.get("pid"), int) or isinstance(data.get("pid"), bool):
        return None
    state: WorkerState = {"pid": data["pid"], "beat": st.st_mtime,
                          "ready": data["ready"] if isinstance(data.get("ready"), (int, float)) else 0.0}
    return state


def read_worker_states(state_dir: str, names: Iterable[str]) -> Dict[str, WorkerState]:
    """The state of each worker in ``names`` (the process names supervisord reports), by name.

    The folder is never listed: the app user writes it, and a listing can be made as long (or
    as slow) as it likes, or bury the real files past any cap on entries."""
    out: Dict[str, WorkerState] = {}
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


# --- processes, as /proc shows them -------------------------------------------------------


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

