"""The ``[program:<app>_watchdog]``: recycles workers that outgrow ``memory.limit`` and kills hung ones.

Rendered only when ``memory.limit``, ``server.heartbeat_timeout`` or ``server.startup_timeout`` is set.

- **Memory.** Every ``check_interval`` seconds it reads each ready worker's RSS. A worker
  above the limit on ``limit_checks`` consecutive checks is recycled: ``stopProcess``
  (SIGTERM, so the worker drains: it stops accepting, answers what it already has with
  ``Connection: close``) then ``startProcess``. One worker at a time, and only while every
  other worker is ready, so never fewer than numprocs-1 serve; the next recycle waits
  until the new process is listening. An alert (``memory_recycle``) says which and how big.
- **Heartbeat.** Each worker touches its state file from inside its event loop. A ready
  worker whose file is older than ``heartbeat_timeout`` has a blocked loop: it gets SIGKILL
  (a blocked loop cannot drain anyway), supervisord restarts it, and an alert
  (``hung_worker``) names it. A worker busy with many slow *async* requests still beats.
- **Start-up.** A worker process that has been up ``startup_timeout`` seconds without
  listening (its import or lifespan start-up hangs, e.g. on a database that does not
  answer) takes no connections and never beats: it gets SIGKILL and an alert
  (``startup_timeout``). Repeats make a crash loop, which the controller inside
  supervisord holds back (plugins/crashloop.py); without the plugin supervisord restarts
  the worker at once and gives up (FATAL) after ``startretries`` quick start failures.

``Watchdog.observe(workers, now) -> [actions]`` is the whole decision, pure; ``run`` is the
loop that feeds it from supervisord and /proc and carries the actions out.
"""

import argparse
import os
import signal
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..contracts.files import read_json, read_rss, read_worker_states, write_json_atomic
from ..contracts.rpc import ProcessInfo, announce_restart, notify
from ..contracts.sizes import format_size

# A recycle that has not produced a listening worker in this long is abandoned (and
# alerted) so that one stuck worker does not block every later recycle.
RECYCLE_GIVE_UP = 300.0


@dataclass(frozen=True)
class Config:
    group: str
    workers: int
    memory_limit: Optional[int] = None
    check_interval: float = 10.0
    limit_checks: int = 2
    heartbeat_timeout: Optional[float] = None
    startup_timeout: Optional[float] = None

    @property
    def tick(self) -> float:
        """How often the loop observes: often enough for every check it runs."""
        periods = [1.0]
        if self.memory_limit is not None:
            periods.append(self.check_interval)
        for timeout in (self.heartbeat_timeout, self.startup_timeout):
            if timeout:
                periods.append(timeout / 4)
        return max(0.2, min(periods))


@dataclass(frozen=True)
class Worker:
    """One web worker as seen now: supervisord's view plus its state file and RSS."""

    name: str  # the full name, group:name
    state: str
    pid: int
    ready: bool  # RUNNING and its state file names this pid
    beat: Optional[float] = None  # state file mtime (epoch)
    rss: Optional[int] = None
    started: Optional[float] = None  # when supervisord spawned this pid (epoch)


@dataclass(frozen=True)
class Stop:
    name: str
    cause: str = field(default="memory", compare=False)  # announced to the controller ([metrics])


@dataclass(frozen=True)
class Start:
    name: str


@dataclass(frozen=True)
class Kill:
    name: str
    cause: str = field(default="", compare=False)  # "hung": counted as such, not as a kill


@dataclass(frozen=True)
class Notify:
    """Raise a one-off alert through the app's listener (``contracts.rpc.notify``: an event sent
    through supervisord; the listener de-duplicates and delivers it)."""

    kind: str
    process: str
    summary: str
    details: Tuple[Tuple[str, Any], ...] = ()


Action = Any  # Stop | Start | Kill | Notify


@dataclass
class Recycle:
    name: str
    old_pid: int
    since: float
    started: bool = False


@dataclass
class Watchdog:
    """All decisions; ``now`` is epoch seconds (state file mtimes are wall-clock)."""

    config: Config
    over: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # name -> (pid, consecutive checks)
    recycle: Optional[Recycle] = None
    killed: Dict[int, float] = field(default_factory=dict)  # pid -> when
    last_memory_check: Optional[float] = None

    def observe(self, workers: Sequence[Worker], now: float) -> List[Action]:
        out: List[Action] = []
        self._forget_dead(workers)
        self._heartbeats(workers, now, out)
        self._startups(workers, now, out)
        self._follow_recycle(workers, now, out)
        if self.config.memory_limit is not None and (
                self.last_memory_check is None or now - self.last_memory_check >= self.config.check_interval - 0.05):
            self.last_memory_check = now
            self._memory(workers, now, out)
        return out

    # -- heartbeats and start-ups: a worker that cannot drain is killed --

    def _forget_dead(self, workers: Sequence[Worker]) -> None:
        alive = {w.pid for w in workers if w.pid}
        self.killed = {pid: t for pid, t in self.killed.items() if pid in alive}

    def _kill(self, w: Worker, now: float, kind: str, why: str, details: Tuple[Tuple[str, Any], ...],
              out: List[Action]) -> None:
        """SIGKILL (a blocked or unfinished loop cannot drain), once per pid; supervisord respawns it."""
        self.killed[w.pid] = now
        out.append(Kill(w.name, "hung" if kind == "hung_worker" else ""))
        out.append(Notify(kind, w.name, f"{w.name} (pid {w.pid}) {why}; killed, supervisord starts a new one",
                          (("pid", w.pid),) + details))

    def _heartbeats(self, workers: Sequence[Worker], now: float, out: List[Action]) -> None:
        timeout = self.config.heartbeat_timeout
        if not timeout:
            return
        for w in workers:
            if not w.ready or w.beat is None or w.pid in self.killed:
                continue
            silent = now - w.beat
            if silent > timeout:
                self._kill(w, now, "hung_worker", f"has not beaten for {silent:.0f} s (heartbeat_timeout "
                           f"{timeout:g} s): its event loop is blocked",
                           (("silent_seconds", round(silent, 1)), ("heartbeat_timeout", timeout)), out)

    def _startups(self, workers: Sequence[Worker], now: float, out: List[Action]) -> None:
        timeout = self.config.startup_timeout
        if not timeout:
            return
        for w in workers:
            # STOPPING is a drain, not a start-up; a ready worker is the heartbeat's business.
            if w.ready or not w.pid or w.started is None or w.pid in self.killed or w.state == "STOPPING":
                continue
            up = now - w.started
            if up > timeout:
                self._kill(w, now, "startup_timeout", f"has not started listening {up:.0f} s after it was "
                           f"spawned (startup_timeout {timeout:g} s): its import or lifespan start-up hangs",
                           (("up_seconds", round(up, 1)), ("startup_timeout", timeout)), out)

    # -- memory --

    def _follow_recycle(self, workers: Sequence[Worker], now: float, out: List[Action]) -> None:
        r = self.recycle
        if r is None:
            return
        w = next((w for w in workers if w.name == r.name), None)
        if w is None:
            self.recycle = None
            return
        if not r.started and w.state in ("STOPPED", "EXITED", "FATAL", "BACKOFF"):
            r.started = True
            out.append(Start(r.name))
        elif w.ready and w.pid != r.old_pid:
            self.recycle = None  # the new process listens: the next recycle may go
        elif now - r.since > RECYCLE_GIVE_UP:
            self.recycle = None
            out.append(Notify("memory_recycle", r.name,
                              f"{r.name} was recycled for memory but no new process is listening after "
                              f"{RECYCLE_GIVE_UP:.0f} s (supervisord says {w.state})", (("state", w.state),)))

    def _memory(self, workers: Sequence[Worker], now: float, out: List[Action]) -> None:
        limit = self.config.memory_limit
        assert limit is not None
        for w in workers:
            if w.ready and w.rss is not None and w.rss > limit:
                pid, count = self.over.get(w.name, (w.pid, 0))
                self.over[w.name] = (w.pid, count + 1 if pid == w.pid else 1)
            else:
                self.over.pop(w.name, None)
        if self.recycle is not None:
            return
        due = [w for w in workers if self.over.get(w.name, (0, 0))[1] >= self.config.limit_checks and w.ready]
        if not due:
            return
        victim = max(due, key=lambda w: w.rss or 0)
        others_ready = sum(1 for w in workers if w.ready and w.name != victim.name)
        # Never leave fewer than numprocs-1 serving: every other worker must be ready.
        if others_ready < self.config.workers - 1:
            return
        checks = self.over.pop(victim.name)[1]
        self.recycle = Recycle(victim.name, victim.pid, now)
        out.append(Stop(victim.name))
        out.append(Notify("memory_recycle", victim.name,
                          f"{victim.name} (pid {victim.pid}) uses {format_size(victim.rss or 0)}, above "
                          f"memory.limit {format_size(limit)} on {checks} consecutive checks; recycling it "
                          "(drain, then a new process)",
                          (("pid", victim.pid), ("rss", victim.rss), ("limit", limit), ("checks", checks))))


# --- edges ------------------------------------------------------------------------------


def read_workers(infos: Sequence[ProcessInfo], states: Mapping[str, Mapping[str, Any]], group: str,
                 rss: Callable[[int], Optional[int]]) -> List[Worker]:
    """The group's workers from getAllProcessInfo records and state files."""
    out = []
    for info in infos:
        if info["group"] != group:
            continue
        pid = info["pid"] if info["statename"] in ("RUNNING", "STARTING", "STOPPING") else 0
        state = states.get(info["name"], {})
        ready = info["statename"] == "RUNNING" and bool(pid) and state.get("pid") == pid
        out.append(Worker(name=f"{info['group']}:{info['name']}", state=info["statename"], pid=pid, ready=ready,
                          beat=state.get("beat") if ready else None, rss=rss(pid) if ready else None,
                          started=float(info["start"]) if pid and info.get("start") else None))
    return out


def carry_out(proxy: Any, app: str, actions: Sequence[Action], log: Callable[[str], None]) -> None:
    """Perform the actions over XML-RPC; a failed one is logged, never fatal."""
    for a in actions:
        try:
            if isinstance(a, Kill):
                log(f"killing {a.name} (SIGKILL)")
                announce_restart(proxy, app, a.name, a.cause)
                proxy.supervisor.signalProcess(a.name, "KILL")
            elif isinstance(a, Stop):
                log(f"stopping {a.name} (drain)")
                announce_restart(proxy, app, a.name, a.cause)
                proxy.supervisor.stopProcess(a.name, False)
            elif isinstance(a, Start):
                log(f"starting {a.name}")
                proxy.supervisor.startProcess(a.name, False)
            elif isinstance(a, Notify):
                log(f"alert {a.kind}: {a.summary}")
                try:
                    notify(proxy, app, a.kind, a.process, a.summary, dict(a.details))
                except Exception as exc:  # an alert must not stop the watchdog
                    log(f"alert {a.kind} not sent: {exc}")
        except (xmlrpc.client.Fault, OSError) as exc:
            log(f"{type(a).__name__} {getattr(a, 'name', '')} failed: {getattr(exc, 'faultString', exc)}")


def run(config: Config, proxy: Any, state_dir: str, memo: str, log: Callable[[str], None],
        clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
        stop: Callable[[], bool] = lambda: False) -> None:
    """The loop: observe every ``config.tick`` seconds and act, until ``stop()``."""
    # A recycle is stop, then start: if this process died in between, the worker would
    # stay stopped (supervisord does not restart a stopped process). Resume it.
    dog = Watchdog(config, recycle=load_recycle(memo, clock()))
    while not stop():
        try:
            infos = proxy.supervisor.getAllProcessInfo()
            names = [str(i["name"]) for i in infos if i.get("group") == config.group]
            workers = read_workers(infos, read_worker_states(state_dir, names), config.group, read_rss)
            carry_out(proxy, config.group, dog.observe(workers, clock()), log)
            save_recycle(memo, dog.recycle)
        except (xmlrpc.client.Fault, OSError) as exc:
            log(f"cannot reach supervisord: {getattr(exc, 'faultString', exc)}")
        # While a recycle is under way, follow it closely: the start should follow the stop at once.
        sleep(min(config.tick, 0.2) if dog.recycle is not None else config.tick)


def load_recycle(path: str, now: float) -> Optional[Recycle]:
    """The recycle a previous watchdog process left unfinished, if any (the memo is ours, in run_dir)."""
    data = read_json(path)
    try:
        return Recycle(str(data["name"]), int(data["old_pid"]), now) if data else None
    except (KeyError, TypeError, ValueError):
        return None


def save_recycle(path: str, recycle: Optional[Recycle]) -> None:
    try:
        if recycle is None:
            if os.path.lexists(path):
                os.unlink(path)
            return
        write_json_atomic(path, {"name": recycle.name, "old_pid": recycle.old_pid})
    except OSError:
        pass  # a full disk: the memo only shortens a rare recovery


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[Config, str, str]:
    p = argparse.ArgumentParser(prog="python -m supervisor_fastapi.runtime.watchdog",
                                description="Recycle web workers over memory.limit; kill workers whose loop hangs.")
    p.add_argument("--group", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--memo", required=True, help="where an unfinished recycle is remembered")
    p.add_argument("--memory-limit", type=int, default=None, help="bytes")
    p.add_argument("--check-interval", type=float, default=10.0)
    p.add_argument("--limit-checks", type=int, default=2)
    p.add_argument("--heartbeat-timeout", type=float, default=None)
    p.add_argument("--startup-timeout", type=float, default=None)
    a = p.parse_args(argv)
    return Config(a.group, a.workers, a.memory_limit, a.check_interval, a.limit_checks, a.heartbeat_timeout,
                  a.startup_timeout), a.state_dir, a.memo


def main(argv: Optional[Sequence[str]] = None) -> None:
    from supervisor import childutils

    config, state_dir, memo = parse_args(argv)
    stopping: List[int] = []

    def log(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} watchdog: {message}", flush=True)

    def request_stop(signum: int, frame: Any) -> None:
        stopping.append(signum)  # only a flag: the loop ends between two checks

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log(f"watching {config.group} ({config.workers} workers): "
        + (f"memory.limit {format_size(config.memory_limit)} every {config.check_interval:g} s x "
           f"{config.limit_checks}; " if config.memory_limit is not None else "")
        + (f"heartbeat_timeout {config.heartbeat_timeout:g} s" if config.heartbeat_timeout else "no heartbeat check")
        + (f"; startup_timeout {config.startup_timeout:g} s" if config.startup_timeout else ""))
    parent = os.getppid()
    # supervisord killed with -9 leaves us running; a new one starts its own watchdog, and
    # two would act on the same workers: the one whose supervisord is gone stops.
    run(config, childutils.getRPCInterface(os.environ), state_dir, memo, log,
        sleep=lambda seconds: _sleep_unless(seconds, stopping),
        stop=lambda: bool(stopping) or os.getppid() != parent)


def _sleep_unless(seconds: float, stopping: List[int]) -> None:
    deadline = time.monotonic() + seconds
    while not stopping and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


if __name__ == "__main__":
    main(sys.argv[1:])
