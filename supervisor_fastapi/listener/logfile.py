"""The listener's own JSON-lines files (``alerts.log``, the journal of undelivered alerts):
one whole line per record, rotated like supervisord's logs.

Runs in the listener's sender threads and in ``alert-test`` (another process), so every
write is one step under an flock. Standard library only.
"""

import errno
import fcntl
import json
import os
import stat
from typing import Any

# alerts.log and the journal rotate like supervisord's own logs (logfile_maxbytes/backups):
# a dead channel writes a reminder every reminder_interval for as long as it stays dead.
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_KEEP = 5


# Files the listener writes are its own: created 0600, opened without following a link.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_own(path: str, flags: int) -> int:
    """Open ``path`` for writing, refusing anything but a regular file of ours with one link
    (a FIFO would block, a hard link to another file would be written through)."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, "not a regular file of ours (a link, FIFO or another user's file?)", path)
    return fd


def append_line(path: str, obj: Any, max_bytes: int = ROTATE_BYTES, keep: int = ROTATE_KEEP) -> None:
    """Append one JSON line, whole or not at all (a short write is retried, and a failed one
    cut back off, so a reader never sees half a line); when the file has reached
    ``max_bytes``, first rotate it to ``path.1`` (``path.1`` to ``path.2``, ..., keeping
    ``keep``). An exclusive flock on ``path.lock`` makes check, rotation and write one
    step for the listener's threads and an ``alert-test`` in another process alike: a lock on
    the log file itself would not do, since two writers can hold locks on two generations.
    Raises OSError when the line was not written."""
    line = (json.dumps(obj, default=str, sort_keys=True) + "\n").encode()
    lock = _open_own(f"{path}.lock", os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > max_bytes:
            rotate(path, keep)
        fd = _open_own(path, _APPEND_FLAGS)
        try:
            start = os.fstat(fd).st_size
            view = memoryview(line)
            try:
                while view:
                    n = os.write(fd, view)
                    if n <= 0:  # pragma: no cover - write(2) returns >0 or raises
                        raise OSError(errno.EIO, "write returned 0", path)
                    view = view[n:]
            except OSError:
                try:
                    os.ftruncate(fd, start)  # no half line (the disk was full mid-line)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    finally:
        os.close(lock)  # also releases the lock


def rotate(path: str, keep: int) -> None:
    """``path`` becomes ``path.1``, ``path.1`` becomes ``path.2``...; the oldest beyond ``keep`` goes."""
    for n in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
    if keep > 0:
        os.replace(path, f"{path}.1")
    else:
        os.unlink(path)
