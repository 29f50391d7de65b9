"""Process bookkeeping for the benchmark: trees, RSS, probes, and killing what we started."""

import http.client
import json
import os
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

import psutil


def tree(root: int) -> List[psutil.Process]:
    """root and every descendant still alive."""
    try:
        p = psutil.Process(root)
        return [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def memory_of(root: int, workers: Optional[List[int]] = None) -> Dict[str, int]:
    """Memory of the tree under root, in bytes: total RSS and PSS, and RSS by role.

    RSS counts shared pages (interpreter, libraries) once per process; PSS splits them.
    Roles: the manager (root), the workers, and anything else (e.g. an event listener).
    """
    workers_set = set(workers or [])
    out = {"rss": 0, "pss": 0, "processes": 0, "rss_manager": 0, "rss_workers": 0, "rss_other": 0}
    for p in tree(root):
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out["rss"] += full.rss
        out["pss"] += getattr(full, "pss", full.rss)
        out["processes"] += 1
        role = "manager" if p.pid == root else "workers" if p.pid in workers_set else "other"
        out[f"rss_{role}"] += full.rss
    return out


def session_members(sid: int) -> List[int]:
    """Every process in session ``sid`` (the session a contender was started in)."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.pid != os.getpid():
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return out


def kill_session(sid: int) -> None:
    """SIGKILL every process left in a session this benchmark created.

    supervisord puts each child in its own process group, so killpg of the session
    leader's group is not enough; the session id still covers them all.
    """
    for _ in range(3):
        pids = session_members(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def get_pid(port: int, timeout: float = 2.0) -> Optional[int]:
    """The pid of the worker that answers GET /pid on a new connection, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/pid", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        return int(json.loads(body)["pid"])
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def probe(port: int, parallel: int = 4, timeout: float = 2.0) -> Set[int]:
    """Pids answering ``parallel`` simultaneous new connections (the kernel spreads them)."""
    found: Set[int] = set()
    lock = threading.Lock()

    def one() -> None:
        pid = get_pid(port, timeout)
        if pid:
            with lock:
                found.add(pid)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 1)
    return found


def wait_until(check: Callable[[], object], timeout: float, interval: float = 0.02) -> Tuple[bool, float]:
    """Poll check() until truthy or timeout; (succeeded, seconds waited)."""
    start = time.monotonic()
    while True:
        if check():
            return True, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return False, time.monotonic() - start
        time.sleep(interval)


def is_alive(pid: int) -> bool:
    """True for a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
