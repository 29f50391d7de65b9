"""The listener's edges: the stdin/stdout protocol loop, the clock and timer, RPC, alerts, state file.

The loop is: wait for an event or a due timer (``select`` on stdin with a timeout, so
backoff delays keep ~100 ms precision without TICK events), hand it to the machine,
queue the actions, acknowledge. Acknowledging never waits on RPC or a channel: RPC
calls run in a worker thread with ``wait=False``, alerts in the sender threads.
stdout is the protocol channel; every log line goes to stderr.
"""

import argparse
import dataclasses
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
import xmlrpc.client
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import statefile
from .alerts import Dispatcher, Journal, Message, channels_from_spec, make_message
from .protocol import OK, READY, Parser, decode
from .state import Action, Alert, Config, Event, Machine, ProcessState, Reconcile, Start, StartFailed, Stop, Tick

log = logging.getLogger("supervisor_fastapi.listener")
MAX_SLEEP = 1.0  # wake at least this often, to pick up alert results and save state
SAVE_EVERY = 0.25  # coalesce state-file writes to at most four a second
SPEC_CHECK_EVERY = 2.0  # seconds between looks at the spec file's mtime
TAIL_CHARS = 4000
TAIL_LINES = 30

ProxyFactory = Callable[[], Any]


def default_proxy(env: Optional[Dict[str, str]] = None) -> Any:
    """An RPC proxy to the supervisord that runs this listener (SUPERVISOR_SERVER_URL)."""
    from supervisor import childutils

    return childutils.getRPCInterface(dict(os.environ if env is None else env))


class RpcWorker:
    """Carries out Start/Stop in its own thread with wait=False, in the order they were decided."""

    def __init__(self, make_proxy: ProxyFactory) -> None:
        self.make_proxy = make_proxy
        self.on_start_failed: Optional[Callable[[str, str], None]] = None
        self._q: queue.Queue[Optional[Action]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="rpc", daemon=True)

    def start(self) -> "RpcWorker":
        self._thread.start()
        return self

    def submit(self, action: Action) -> None:
        self._q.put(action)

    def close(self, timeout: float = 2.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        proxy = None
        while True:
            action = self._q.get()
            if action is None:
                return
            error = ""
            try:
                proxy = proxy or self.make_proxy()
                run_rpc(proxy, action)
            except xmlrpc.client.Fault as exc:
                # ALREADY_STARTED / NOT_RUNNING are the normal outcome of a race with supervisord.
                log.info("%s: %s", describe(action), exc.faultString)
                error = "" if "ALREADY_STARTED" in exc.faultString else exc.faultString
            except Exception as exc:
                log.warning("%s failed: %s", describe(action), exc)
                proxy = None
                error = str(exc) or type(exc).__name__
            if error and isinstance(action, Start) and self.on_start_failed is not None:
                self.on_start_failed(action.namespec, error)


def run_rpc(proxy: Any, action: Action) -> None:
    if isinstance(action, Start):
        group, _, name = action.namespec.partition(":")
        if name == "*":
            proxy.supervisor.startProcessGroup(group, False)
        else:
            proxy.supervisor.startProcess(action.namespec, False)
    elif isinstance(action, Stop):
        proxy.supervisor.stopProcess(action.namespec, False)


def describe(action: Action) -> str:
    return f"{type(action).__name__.lower()} {getattr(action, 'namespec', '')}"


def make_enricher(make_proxy: ProxyFactory) -> Callable[[Message, Optional[str]], Message]:
    """Adds exit status and the log tail of ``log_of`` to an alert (runs in the sender side)."""
    local = threading.local()

    def enrich(msg: Message, log_of: Optional[str]) -> Message:
        if not log_of:
            return msg
        proxy = getattr(local, "proxy", None) or make_proxy()
        local.proxy = proxy
        details = dict(msg.get("details") or {})
        try:
            info = proxy.supervisor.getProcessInfo(log_of)
            details.setdefault("exitstatus", info.get("exitstatus"))
            details["state"] = info.get("statename")
            text, _offset, _overflow = proxy.supervisor.tailProcessStdoutLog(log_of, 0, TAIL_CHARS)
            lines = text.splitlines()[-TAIL_LINES:]
            if len(text) >= TAIL_CHARS and len(lines) > 1:
                lines = lines[1:]  # the first line is probably cut
            details["log_tail"] = "\n".join(lines)
        except Exception as exc:
            local.proxy = None
            details["log_tail"] = f"(could not read the log: {exc})"
        out = dict(msg)
        out["details"] = details
        return out

    return enrich


class Listener:
    """The protocol loop around a Machine; all I/O is injected."""

    def __init__(self, machine: Machine, app: str, state_path: str, rpc: RpcWorker, dispatcher: Dispatcher,
                 proxy: Any = None, stdin_fd: int = 0, stdout_fd: int = 1,
                 clock: Callable[[], float] = time.time, changed: Optional[Callable[[], bool]] = None) -> None:
        self.machine, self.app, self.state_path = machine, app, state_path
        self.rpc, self.dispatcher, self.proxy = rpc, dispatcher, proxy
        self.stdin_fd, self.stdout_fd, self.clock = stdin_fd, stdout_fd, clock
        self.parser = Parser()
        self.last_alert: Optional[Dict[str, Any]] = None
        self._results: queue.Queue[Tuple[Message, Dict[str, str]]] = queue.Queue()
        self._failed_starts: queue.Queue[Tuple[str, str]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self._last_save = 0.0
        self._dirty = False
        self.changed = changed
        self._next_check = 0.0
        dispatcher.on_result = self._on_result
        if isinstance(rpc, RpcWorker):
            rpc.on_start_failed = self._on_start_failed

    # -- sender-thread side --

    def _on_start_failed(self, namespec: str, reason: str) -> None:
        self._failed_starts.put((namespec, reason))
        self._wake()

    def _on_result(self, msg: Message, results: Dict[str, str]) -> None:
        self._results.put((msg, results))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the loop --

    def reconcile(self, saved: Optional[Dict[str, Any]]) -> None:
        """Fold what supervisord reports now and the previous state file into the machine."""
        infos: List[Dict[str, Any]] = []
        if self.proxy is not None:
            for attempt in range(5):
                try:
                    infos = self.proxy.supervisor.getAllProcessInfo()
                    break
                except Exception as exc:
                    log.warning("getAllProcessInfo failed (%s); retrying", exc)
                    time.sleep(0.2 * (attempt + 1))
        if saved and saved.get("last_alert"):
            self.last_alert = saved["last_alert"]
        self._apply(self.machine.observe(Reconcile(infos, saved), self.clock()))
        self._save(force=True)

    def run(self) -> int:
        """Serve events until supervisord closes stdin."""
        self._write(READY)
        while True:
            now = self.clock()
            timeout = MAX_SLEEP
            deadline = self.machine.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now))
            if self._dirty:
                timeout = min(timeout, max(0.0, self._last_save + SAVE_EVERY - now))
            readable, _, _ = select.select([self.stdin_fd, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
                self._drain_results()
                self._drain_failed_starts()
            if self.stdin_fd in readable:
                data = os.read(self.stdin_fd, 65536)
                if not data:
                    log.info("stdin closed: supervisord is going away")
                    return 0
                for headers, payload in self.parser.feed(data):
                    self.handle(headers, payload)
                    self._write(OK)
                    self._write(READY)
            self._tick()
            self._save()
            if self.changed is not None and time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + SPEC_CHECK_EVERY
                if self.changed():
                    # supervisord restarts us (autorestart=true); the new process reads the
                    # new spec and reconciles from the state file written on the way out.
                    log.info("the spec changed: exiting so supervisord restarts the listener with it")
                    return 0

    def handle(self, headers: Dict[str, str], payload: str) -> None:
        """One event: decode, decide, queue the actions. Never raises: the event is acked anyway."""
        try:
            event = decode(headers, payload)
            if event is None:
                return
            self._observe(event)
        except Exception:
            log.exception("error handling %s (acknowledged anyway)", headers.get("eventname"))

    def _observe(self, event: Event) -> None:
        if (isinstance(event, ProcessState) and event.name == self.machine.config.migrate_name
                and self.proxy is not None):
            # The payload has neither the exit status nor which run it belongs to; one quick
            # RPC (a handful per migration run) tells both.
            try:
                info = self.proxy.supervisor.getProcessInfo(event.namespec)
                event = dataclasses.replace(event, exitstatus=info.get("exitstatus"),
                                            run_start=float(info.get("start") or 0))
            except Exception as exc:
                log.warning("getProcessInfo(%s) failed: %s", event.namespec, exc)
        self._apply(self.machine.observe(event, self.clock()))
        self._dirty = True

    def _tick(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline is not None and self.clock() >= deadline:
            try:
                self._apply(self.machine.observe(Tick(), self.clock()))
            except Exception:
                log.exception("error in a timer (continuing)")
            self._dirty = True

    def _apply(self, actions: List[Action]) -> None:
        for action in actions:
            if isinstance(action, Alert):
                msg = make_message(action.event, action.kind, action.process, action.summary, action.details,
                                   self.app, self.clock())
                log.warning("alert: %s", msg["text"])
                self.dispatcher.submit(msg, action.log_of)
            else:
                log.info("%s", describe(action))
                self.rpc.submit(action)

    def _drain_failed_starts(self) -> None:
        while True:
            try:
                namespec, reason = self._failed_starts.get_nowait()
            except queue.Empty:
                return
            try:
                self._observe(StartFailed(namespec, reason))
            except Exception:
                log.exception("error handling a failed start of %s", namespec)

    def _drain_results(self) -> None:
        while True:
            try:
                msg, results = self._results.get_nowait()
            except queue.Empty:
                return
            self.last_alert = {"at": msg["at"], "kind": msg["kind"], "event": msg["event"],
                               "summary": msg["summary"], "results": results}
            self._dirty = True

    def _save(self, force: bool = False) -> None:
        now = self.clock()
        if not force and (not self._dirty or now < self._last_save + SAVE_EVERY):
            return
        state = self.machine.snapshot(now)
        state["last_alert"] = self.last_alert
        state["pid"] = os.getpid()
        self._dirty, self._last_save = False, now
        try:
            statefile.save(self.state_path, state)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self.state_path, exc)

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            n = os.write(self.stdout_fd, data)
            data = data[n:]

    def close(self) -> None:
        self._drain_results()
        self._dirty = True
        self._save(force=True)
        self.rpc.close()
        self.dispatcher.close()
        self._drain_results()
        self._save(force=True)


def spec_watcher(path: str) -> Callable[[], bool]:
    """True once the spec file changed and the new version loads (a broken edit keeps the old one)."""
    from ..errors import UserError
    from ..spec import load_spec

    def stamp() -> Tuple[float, int]:
        try:
            st = os.stat(path)
            return st.st_mtime, st.st_size
        except OSError:
            return 0.0, 0

    seen = [stamp()]

    def changed() -> bool:
        now = stamp()
        if now == seen[0]:
            return False
        seen[0] = now
        try:
            load_spec(path)
        except UserError as exc:
            log.error("the spec changed but does not load (%s); keeping the old one", exc)
            return False
        return True

    return changed


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m supervisor_fastapi.listener --spec PATH``."""
    parser = argparse.ArgumentParser(prog="python -m supervisor_fastapi.listener",
                                     description="supervisor-fastapi event listener (run by supervisord)")
    parser.add_argument("--spec", required=True, help="absolute path of the deployment spec")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s listener: %(message)s")
    from ..errors import UserError
    from ..layout import Layout
    from ..spec import load_spec

    try:
        spec = load_spec(args.spec)
    except UserError as exc:
        log.error("cannot load the spec: %s", exc)
        return 2
    layout = Layout(spec.run_dir)
    os.makedirs(spec.run_dir, exist_ok=True)
    channels = channels_from_spec(spec)
    dispatcher = Dispatcher(channels, Journal(layout.alert_journal), spec.listener.send_retries,
                            enrich=make_enricher(default_proxy)).start()
    rpc = RpcWorker(default_proxy).start()
    listener = Listener(Machine(Config.from_spec(spec)), spec.app.name, layout.listener_state, rpc, dispatcher,
                        proxy=default_proxy(), changed=spec_watcher(spec.source))
    # The sender and RPC threads must not keep the event loop waiting for the GIL for the
    # default 5 ms switch interval: acknowledgements are the latency that matters.
    sys.setswitchinterval(0.0005)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    log.info("started (pid %d): app %s, %d alert channel(s): %s", os.getpid(), spec.app.name, len(channels),
             ", ".join(f"{c.name} ({c.type})" for c in channels))
    try:
        listener.reconcile(statefile.load(layout.listener_state))
        return listener.run()
    finally:
        listener.close()
