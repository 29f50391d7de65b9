"""The listener's edges: the stdin/stdout protocol loop, the clock and timer, RPC, alerts, state file.

The loop is: wait for an event (``select`` on stdin, waking at least once a second to pick
up alert results and save state), hand it to the machines, queue the actions,
acknowledge. With the plugin (``idle_exit`` > 0) the loop also ends, exit status 0, once
nothing is left to do: no alert on its way, the state saved, no ``no_worker_serving`` to time,
no event for ``idle_exit`` seconds. supervisord keeps the events that come meanwhile and the
plugin starts the listener again for the first that needs it (plugins/ondemand.py), so a
deployment at rest runs no listener process. Alerts that came while it was not running wait in
the plugin's spool file (``spool_path``), taken before each batch from stdin: they are older.
Acknowledging never waits on RPC or a channel: RPC calls run in a worker thread with
``wait=False``, alerts in the sender threads. stdout is the protocol channel;
every log line goes to stderr. Signal handlers only set a flag: the loop finishes the
protocol write it is in and then stops.
"""

import collections
import dataclasses
import fcntl
import json
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..contracts.files import is_enospc, read_small_file
from ..contracts.rpc import LogRef, ProcessInfo, run_log_tail, scrubbing_transport
from ..contracts.settings import LISTENER_ENV, ListenerConfig
from . import statefile
from .channels import channels_from_alerts
from .delivery import Dispatcher, Journal
from .message import Message, make_message
from .protocol import OK, READY, Parser, decode
from .state import (
    Action,
    Event,
    Fallback,
    ProcessState,
    Relay,
    RemoteEvent,
    SendAlert,
    Serving,
    ServingWatch,
    Start,
    incident_key,
    restore_incidents,
)

log = logging.getLogger("supervisor_fastapi.listener")
MAX_SLEEP = 1.0  # wake at least this often, to pick up alert results and save state
SAVE_EVERY = 0.25  # coalesce state-file writes to at most four a second
TAIL_CHARS = 4000
SPOOL_MAX = 64 * 1024 * 1024  # read at most this much of a spool (the plugin writes at most 16 MiB)
# Spooled alerts in flight at once: a burst taken in one go must not overrun a channel's queue
# (delivery.QUEUE_LIMIT), which would journal what a running listener would have sent.
BACKLOG_WINDOW = 100
TAIL_LINES = 30

ProxyFactory = Callable[[], Any]


def default_proxy(env: Optional[Dict[str, str]] = None) -> Any:
    """An RPC proxy to the supervisord that runs this listener (SUPERVISOR_SERVER_URL)."""
    import xmlrpc.client

    # childutils.getRPCInterface, with answers scrubbed: a log tail is app output, and one
    # control byte in it made expat refuse the whole answer (the alert lost its tail).
    env = dict(os.environ if env is None else env)
    transport = scrubbing_transport(env.get("SUPERVISOR_USERNAME", ""), env.get("SUPERVISOR_PASSWORD", ""),
                                    env["SUPERVISOR_SERVER_URL"])
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


class RpcWorker:
    """Carries out Start in its own thread with wait=False, in the order they were decided."""

    def __init__(self, make_proxy: ProxyFactory) -> None:
        self.make_proxy = make_proxy
        self._q: queue.Queue[Optional[Start]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="rpc", daemon=True)

    def start(self) -> "RpcWorker":
        self._thread.start()
        return self

    def submit(self, action: Start) -> None:
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
            import xmlrpc.client  # on the first start: with the plugin, this thread never gets one

            try:
                proxy = proxy or self.make_proxy()
                run_rpc(proxy, action)
            except xmlrpc.client.Fault as exc:
                # ALREADY_STARTED is the normal outcome of a race with supervisord.
                log.info("start %s: %s", action.full_name, exc.faultString)
            except Exception as exc:
                log.warning("start %s failed: %s", action.full_name, exc)
                proxy = None


def run_rpc(proxy: Any, action: Start) -> None:
    group, _, name = action.full_name.partition(":")
    if name == "*":
        proxy.supervisor.startProcessGroup(group, False)
    else:
        proxy.supervisor.startProcess(action.full_name, False)


def make_enricher(make_proxy: ProxyFactory, app: str = "") -> Callable[[Message, Optional[LogRef]], Message]:
    """Adds exit status and the log tail of ``log_of`` to an alert (runs in the sender side)."""
    local = threading.local()

    def enrich(msg: Message, log_of: Optional[LogRef]) -> Message:
        if not log_of:
            return msg
        proxy = getattr(local, "proxy", None) or make_proxy()
        local.proxy = proxy
        details = dict(msg.get("details") or {})
        try:
            info: ProcessInfo = proxy.supervisor.getProcessInfo(log_of.full_name)
            details.setdefault("exitstatus", info.get("exitstatus"))
            details["state"] = info.get("statename")
            # From the start of the run the alert is about: never an earlier run's lines.
            text = run_log_tail(proxy, log_of.full_name, log_of.since, TAIL_CHARS, app)
            details["log_tail"] = "\n".join(text.splitlines()[-TAIL_LINES:])
        except Exception as exc:
            local.proxy = None
            details["log_tail"] = f"(could not read the log: {exc})"
        out = dict(msg)
        out["details"] = details
        return out

    return enrich


ALERT_RESULTS = ("sent", "failed", "journaled")


def result_word(result: str) -> str:
    """A channel's result as [metrics] counts it: sent; journaled (kept for a retry); anything else failed."""
    return "sent" if result == "sent" else "journaled" if result.startswith("journaled") else "failed"


def tally(counts: Dict[str, Dict[str, int]], results: Mapping[str, str]) -> None:
    """Add one alert's per-channel results to ``counts`` (channel -> result word -> n)."""
    for channel, result in results.items():
        by_result = counts.setdefault(str(channel), {})
        word = result_word(str(result))
        by_result[word] = by_result.get(word, 0) + 1


def restore_counts(saved: Any) -> Dict[str, Dict[str, int]]:
    """The counts a previous listener process saved (counters carry on across its restarts); odd data: none."""
    out: Dict[str, Dict[str, int]] = {}
    if not isinstance(saved, dict):
        return out
    for channel, by_result in list(saved.items())[:256]:
        if isinstance(by_result, dict):
            out[str(channel)] = {w: n for w, n in by_result.items()
                                 if w in ALERT_RESULTS and isinstance(n, int) and not isinstance(n, bool) and n >= 0}
    return out


class Listener:
    """The protocol loop around the decision machines; all I/O is injected."""

    def __init__(self, config: ListenerConfig, rpc: RpcWorker, dispatcher: Dispatcher, proxy: Any = None,
                 stdin_fd: int = 0, stdout_fd: int = 1, clock: Callable[[], float] = time.time) -> None:
        self.config, self.rpc, self.dispatcher, self.proxy = config, rpc, dispatcher, proxy
        self.relay = Relay(config.app)
        self.fallback = None if config.controller else Fallback(config)
        self.stdin_fd, self.stdout_fd, self.clock = stdin_fd, stdout_fd, clock
        self.serving = ServingWatch(config.web, clock())
        self.parser = Parser()
        self.last_alert: Optional[Dict[str, Any]] = None
        self.alert_counts: Dict[str, Dict[str, int]] = {}  # channel -> sent/failed/journaled, for [metrics]
        self.stop_requested = False
        self._results: queue.Queue[Tuple[Message, Dict[str, str]]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self._last_save = 0.0
        self._dirty = False
        self._save_failing = False
        # Idle exit (plugin only): alerts handed to the dispatcher whose results are not in yet,
        # and when stdin last brought anything.
        self.idle_exit = config.idle_exit if config.controller else 0.0
        self._outstanding = 0
        self._last_input = clock()
        self._backlog: collections.deque[Tuple[Dict[str, str], str]] = collections.deque()
        self._taking = ""  # the spool file being fed; removed once every line is handled
        dispatcher.on_result = self._on_result

    # -- sender-thread side --

    def _on_result(self, msg: Message, results: Dict[str, str]) -> None:
        self._results.put((msg, results))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def request_stop(self, signum: int = 0, frame: Any = None) -> None:
        """The SIGTERM/SIGINT handler: only a flag and a wake-up; the loop stops between events."""
        self.stop_requested = True
        self._wake()

    # -- the loop --

    def restore(self, saved: Optional[Dict[str, Any]]) -> None:
        """What the previous listener process knew: the last alert (holds live in supervisord)."""
        if saved and isinstance(saved.get("last_alert"), dict):
            self.last_alert = saved["last_alert"]
        self.alert_counts = restore_counts(saved.get("alert_counts") if saved else None)
        # Incidents outlive the supervisord run (reload, down/up, a restart by systemd): one OPEN,
        # one RESOLVED each. The file is root's (run_dir), read through contracts.files' reader.
        self.relay.incidents = restore_incidents(saved.get("incidents") if saved else None)
        self.relay.remember(saved.get("dedupe") if saved else None)
        self.serving.served = bool(saved.get("served") is True) if saved else False
        self._dirty = True
        self._save(force=True)

    def take_spool(self) -> None:
        """Handle the alerts the plugin spooled while this listener was not running (oldest first).

        Renamed before reading, so the plugin's next append starts a new file; a ``.taking``
        file left by a listener that died while handling it is taken first."""
        path = self.config.spool_path
        if not path or self._backlog:
            return
        taking = path + ".taking"
        try:
            if not os.path.exists(taking):
                os.rename(path, taking)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot take the spool %s: %s", path, exc)
            return
        try:
            # The plugin writes under this lock, and only to the file still at ``path``: once
            # held, no write to this one is under way or to come.
            fd = os.open(taking, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.error("cannot take the spool %s: %s", taking, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = read_small_file(taking, SPOOL_MAX)
        finally:
            os.close(fd)
        if data is None:
            log.error("cannot read the spool %s (not a regular file, or over %d bytes): its alerts are lost",
                      taking, SPOOL_MAX)
        lines = (data or b"").decode("utf-8", "replace").splitlines()
        for line in lines:
            try:
                item = json.loads(line)
                self._backlog.append(({"eventname": str(item["eventname"])}, str(item["payload"])))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping a spool line that is not an event: %r", line[:200])
        if lines:
            log.info("took %d event(s) kept by the plugin while the listener was not running", len(lines))
            self._last_input = self.clock()
        self._taking = taking
        self.feed_backlog()

    def feed_backlog(self) -> None:
        """Handle spooled events, at most BACKLOG_WINDOW alerts in flight; remove the file once done."""
        while self._backlog and self._outstanding < BACKLOG_WINDOW:
            headers, payload = self._backlog.popleft()
            self.handle(headers, payload)
        if self._backlog or not self._taking:
            return
        taking, self._taking = self._taking, ""
        try:
            os.unlink(taking)
        except OSError as exc:
            log.error("cannot remove the spool %s: %s", taking, exc)

    def run(self) -> int:
        """Serve events until supervisord closes stdin or a signal asks us to stop."""
        self.take_spool()
        self._write(READY)
        while not self.stop_requested:
            timeout = MAX_SLEEP
            if self._dirty:
                timeout = min(timeout, max(0.0, self._last_save + SAVE_EVERY - self.clock()))
            # Spooled events are older than anything supervisord hands over now: stdin waits
            # until they are all handled.
            watch = [self._wake_r] if self._backlog else [self.stdin_fd, self._wake_r]
            try:
                readable, _, _ = select.select(watch, [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select on 3.5+
                continue
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
                self._drain_results()
            self.take_spool()
            self.feed_backlog()
            if self.stdin_fd in readable and not self._backlog:
                data = os.read(self.stdin_fd, 65536)
                if not data:
                    log.info("stdin closed: supervisord is going away")
                    return 0
                self._last_input = self.clock()
                for headers, payload in self.parser.feed(data):
                    self.handle(headers, payload)
                    self._write(OK)
                    self._write(READY)
            if self.config.controller:
                self._apply(self.serving.tick(self.clock(), self.relay))
            self._save()
            if self.idle(self.clock()):
                log.info("nothing to do for %.0f s: exiting; the plugin starts the listener again for the next event "
                         "that needs it", self.idle_exit)
                return 0
        log.info("stopping on a signal")
        return 0

    def idle(self, now: float) -> bool:
        """Whether the listener may exit until the plugin needs it again (see the module doc)."""
        return (self.idle_exit > 0 and self._outstanding == 0 and not self._backlog and not self._dirty
                and not self._save_failing
                and not self.serving.watching() and now - self._last_input >= self.idle_exit)

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
        now = self.clock()
        actions: List[Action] = []
        if isinstance(event, Serving):
            if event.app == self.config.app:
                self.serving.take(event, now)
            return
        if isinstance(event, ProcessState):
            served = self.serving.served
            self.serving.observe(event, now)
            self._dirty = self._dirty or served != self.serving.served
            if self.config.controller and event.name == self.config.migrate and event.state == "EXITED" \
                    and event.expected:
                # A migration incident an earlier run left open, where this run's controller
                # never opened one (fixed while supervisord was down): it ends here.
                for kind in ("migration_failed", "migration_timeout"):
                    if incident_key(kind, event.name) not in self.relay.incidents:
                        continue
                    self._apply(self.relay.observe(RemoteEvent(kind, event.name, f"{event.name} succeeded",
                                                               event="resolve", app=self.config.app), now))
        if isinstance(event, RemoteEvent):
            actions = self.relay.observe(event, now)
            self._dirty = True  # incidents and the de-duplication memory are saved
        elif isinstance(event, ProcessState) and self.fallback is not None:
            if event.name == self.config.migrate and event.state == "EXITED" and self.proxy is not None:
                # The payload has no exit status; one quick RPC per migration run tells it.
                try:
                    info: ProcessInfo = self.proxy.supervisor.getProcessInfo(event.full_name)
                    event = dataclasses.replace(event, exitstatus=info.get("exitstatus"))
                except Exception as exc:
                    log.warning("getProcessInfo(%s) failed: %s", event.full_name, exc)
            actions = self.fallback.observe(event, now)
        self._apply(actions)

    def _apply(self, actions: List[Action]) -> None:
        if actions:
            self._dirty = True
        for action in actions:
            if isinstance(action, SendAlert):
                msg = make_message(action.event, action.kind, action.process, action.summary, action.details,
                                   self.config.app, self.clock())
                log.warning("alert: %s", msg["text"])
                self._outstanding += 1
                self.dispatcher.submit(msg, action.log_of)
            else:
                log.info("start %s", action.full_name)
                self.rpc.submit(action)

    def _drain_results(self) -> None:
        while True:
            try:
                msg, results = self._results.get_nowait()
            except queue.Empty:
                return
            self._outstanding = max(0, self._outstanding - 1)
            self.last_alert = {"at": msg["at"], "kind": msg["kind"], "event": msg["event"],
                               "summary": msg["summary"], "results": results}
            tally(self.alert_counts, results)
            self._dirty = True

    def _save(self, force: bool = False) -> None:
        now = self.clock()
        if not self.config.state_path or not self._dirty or (not force and now < self._last_save + SAVE_EVERY):
            return
        state = {"version": 1, "updated": now, "app": self.config.app, "last_alert": self.last_alert,
                 "pid": os.getpid(), "alert_counts": self.alert_counts, "incidents": self.relay.incidents,
                 "served": self.serving.served, "dedupe": self.relay.memory(now)}
        self._last_save = now
        try:
            statefile.save(self.config.state_path, state)
        except OSError as exc:
            # A full disk: keep acknowledging events, keep the state dirty and try again on
            # the next save; say so once per outage, not four times a second.
            if not self._save_failing:
                log.error("cannot write the state file %s: %s%s", self.config.state_path, exc,
                          " (disk full; retrying until there is room)" if is_enospc(exc) else "")
            self._save_failing = True
            return
        if self._save_failing:
            log.info("the state file %s is written again", self.config.state_path)
        self._save_failing, self._dirty = False, False

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
        self._dirty = True
        self._save(force=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m supervisor_fastapi.listener`` (settings in $SUPERVISOR_FASTAPI_LISTENER)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # supervisord passes none; argparse (--help, or the error for anything else) only then
        import argparse

        parser = argparse.ArgumentParser(prog="python -m supervisor_fastapi.listener",
                                         description="supervisor-fastapi event listener (run by supervisord; its "
                                         f"settings come from ${LISTENER_ENV}, rendered into the conf)")
        parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s listener: %(message)s")
    try:
        config = ListenerConfig.from_env(os.environ.get(LISTENER_ENV, ""))
    except ValueError as exc:
        log.error("%s; re-render the conf (supervisor-fastapi render) and `supervisorctl update`", exc)
        return 2
    channels = channels_from_alerts(config.alerts, config.base_dir, config.run_dir)
    dispatcher = Dispatcher(channels, Journal(config.journal_path), config.send_retries,
                            enrich=make_enricher(default_proxy, config.app)).start()
    rpc = RpcWorker(default_proxy).start()
    # Only the fallback gate asks supervisord anything from this thread; with the plugin, the
    # RPC client (supervisor.childutils, http.client, TLS) is loaded on the first alert's log tail.
    listener = Listener(config, rpc, dispatcher, proxy=None if config.controller else default_proxy())
    # The sender and RPC threads must not keep the event loop waiting for the GIL for the
    # default 5 ms switch interval: acknowledgements are the latency that matters.
    sys.setswitchinterval(0.0005)
    signal.signal(signal.SIGTERM, listener.request_stop)
    signal.signal(signal.SIGINT, listener.request_stop)
    log.info("started (pid %d): app %s, %s, %d alert channel(s): %s", os.getpid(), config.app,
             "gate and holds in supervisord" if config.controller else "no plugin: fallback gate, no holds",
             len(channels), ", ".join(f"{c.name} ({c.type})" for c in channels))
    try:
        listener.restore(statefile.load(config.state_path) if config.state_path else None)
        return listener.run()
    finally:
        listener.close()
