"""Getting alerts to every channel: retries with backoff, one sender thread per channel, and
the journal of what could not be delivered.

Everything here runs off the listener's event loop: ``Dispatcher.submit`` only puts the
alert on a queue. One thread per channel sends with retries and backoff, so a slow or
dead webhook delays neither the event loop nor the other channels. What still cannot be
delivered goes to the journal (JSON lines in run_dir); nothing is dropped silently.
``send_test`` is ``alert-test``'s one-shot path through the same ``deliver``.

Imports the channels, never a network client itself (they load theirs on first use).
"""

import json
import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from ..contracts.rpc import LogRef
from .channels import Channel
from .logfile import append_line
from .message import Message, make_message
from .redaction import redact

log = logging.getLogger("supervisor_fastapi.listener")
QUEUE_LIMIT = 1000  # per channel; beyond it alerts go straight to the journal
T = TypeVar("T")


def deliver(channel: Channel, msg: Message, retries: int, sleep: Callable[[float], None] = time.sleep,
            first_delay: float = 1.0, quiet: bool = False) -> Optional[str]:
    """Send with up to ``retries`` retries (1 s, 2 s, 4 s... apart); the last error, or None if sent."""
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(first_delay * 2 ** (attempt - 1))
        try:
            channel.send(msg)
            return None
        except Exception as exc:  # a channel bug must not kill its thread either
            error = redact(str(exc) or type(exc).__name__, channel.secrets())
            if not quiet:
                    log.warning("alert %s via %s failed (attempt %d/%d): %s", msg.get("kind"), channel.name,
                            attempt + 1, retries + 1, error)
    return error


class Journal:
    """Alerts no channel retry could deliver, one JSON object a line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, msg: Message, channel: str, error: str, now: Optional[float] = None) -> bool:
        """Journal one undelivered alert; False when even that failed (it is then on stderr only)."""
        entry = {"at": time.time() if now is None else now, "channel": channel, "error": error, "alert": msg}
        with self._lock:
            try:
                append_line(self.path, entry)
                return True
            except OSError as exc:  # the last resort: stderr, which supervisord keeps in a log
                log.error("cannot write alert journal %s: %s; undelivered alert: %s", self.path, exc,
                          json.dumps(entry, default=str))
                return False


ResultCallback = Callable[[Message, Dict[str, str]], None]
Enricher = Callable[[Message, Optional[LogRef]], Message]


class Dispatcher:
    """Queues alerts to per-channel sender threads; reports per-channel results when all are done."""

    def __init__(self, channels: Sequence[Channel], journal: Journal, retries: int,
                 on_result: Optional[ResultCallback] = None, enrich: Optional[Enricher] = None,
                 sleep: Callable[[float], None] = time.sleep, first_delay: float = 1.0) -> None:
        self.channels = list(channels)
        self.journal, self.retries = journal, retries
        self.on_result, self.enrich = on_result, enrich
        self.sleep, self.first_delay = sleep, first_delay
        self._intake: queue.Queue[Optional[Tuple[Message, Optional[LogRef]]]] = queue.Queue()
        self._queues: Dict[str, queue.Queue[Optional[Tuple[int, Message]]]] = {
            c.name: queue.Queue(QUEUE_LIMIT) for c in self.channels}
        self._pending: Dict[int, Dict[str, str]] = {}
        self._lock = threading.Lock()
        self._ids = 0
        self._threads: List[threading.Thread] = []
        self._down: Set[str] = set()
        self._sending: Dict[str, Message] = {}  # channel name -> the alert its thread is sending

    def start(self) -> "Dispatcher":
        self._threads.append(threading.Thread(target=self._enrich_loop, name="alert-enrich", daemon=True))
        for c in self.channels:
            self._threads.append(threading.Thread(target=self._channel_loop, args=(c,), name=f"alert-{c.name}",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        return self

    def submit(self, msg: Message, log_of: Optional[LogRef] = None) -> None:
        """Never blocks: the event loop calls this."""
        self._intake.put((msg, log_of))

    def _enrich_loop(self) -> None:
        while True:
            item = self._intake.get()
            if item is None:
                for q in self._queues.values():
                    q.put(None)
                return
            msg, log_of = item
            if self.enrich is not None:
                try:
                    msg = self.enrich(msg, log_of)
                except Exception as exc:  # enrichment is a bonus; the alert still goes out
                    log.warning("could not add process details to the alert: %s", exc)
            self._fan_out(msg)

    def _fan_out(self, msg: Message) -> None:
        with self._lock:
            self._ids += 1
            ident = self._ids
            self._pending[ident] = {}
        for c in self.channels:
            try:
                self._queues[c.name].put_nowait((ident, msg))
            except queue.Full:
                ok = self.journal.write(msg, c.name, "queue full: the channel is too far behind")
                self._done(ident, msg, c.name, ("journaled" if ok else "LOST (journal not writable)") + ": queue full")
        if not self.channels:
            self._finish(ident, msg)

    def _channel_loop(self, channel: Channel) -> None:
        q = self._queues[channel.name]
        while True:
            item = q.get()
            if item is None:
                return
            ident, msg = item
            # While a channel is down, later alerts get one try each instead of the full
            # retry schedule, so an alert storm cannot push the channel minutes behind.
            retries = 0 if channel.name in self._down else self.retries
            with self._lock:
                self._sending[channel.name] = msg
            error = deliver(channel, msg, retries, self.sleep, self.first_delay)
            with self._lock:
                self._sending.pop(channel.name, None)
            if error is None:
                self._down.discard(channel.name)
                self._done(ident, msg, channel.name, "sent")
            else:
                self._down.add(channel.name)
                ok = self.journal.write(msg, channel.name, error)
                self._done(ident, msg, channel.name, f"{'journaled' if ok else 'LOST (journal not writable)'}: {error}")

    def _done(self, ident: int, msg: Message, channel: str, result: str) -> None:
        with self._lock:
            results = self._pending.get(ident)
            if results is None:
                return
            results[channel] = result
            complete = len(results) == len(self.channels)
        if complete:
            self._finish(ident, msg)

    def _finish(self, ident: int, msg: Message) -> None:
        with self._lock:
            results = self._pending.pop(ident, {})
        if self.on_result is not None:
            try:
                self.on_result(msg, results)
            except Exception:  # pragma: no cover - a callback bug must not kill a sender
                log.exception("alert result callback failed")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads; alerts still queued or mid-send after ``timeout`` are journaled, not lost."""
        self._intake.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            sending = dict(self._sending)
        for name, msg in sorted(sending.items()):
            # A send cut off by our exit may or may not have arrived: journal it rather than guess.
            self.journal.write(msg, name, "listener stopped while sending it (it may or may not have arrived)")
        unsent = "listener stopped before the alert was sent"
        for msg, _log_of in _drain(self._intake):  # not yet fanned out (the enricher was busy)
            for c in self.channels:
                self.journal.write(msg, c.name, unsent)
        for name, q in self._queues.items():
            for _ident, msg in _drain(q):
                self.journal.write(msg, name, unsent)


def _drain(q: "queue.Queue[Optional[T]]") -> List[T]:
    """What is left in ``q`` now, without the None that stops its thread."""
    out: List[T] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return out
        if item is not None:
            out.append(item)


def send_to_all(channels: Sequence[Channel], msg: Message, retries: int = 0) -> Dict[str, Optional[str]]:
    """Send one message to every channel in parallel and wait; channel name -> error or None."""
    results: Dict[str, Optional[str]] = {}

    def one(c: Channel) -> None:
        results[c.name] = deliver(c, msg, retries, quiet=True)  # the caller reports each result

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in channels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {c.name: results.get(c.name, "no result") for c in channels}


def send_test(channels: Sequence[Channel], app: str, source: str) -> List[Tuple[Channel, Optional[str]]]:
    """`supervisor-fastapi alert-test`: one test alert to every channel, (channel, error or None) each."""
    msg = make_message("test", "test", "", "test alert from `supervisor-fastapi alert-test`; no action needed",
                       {"spec": source}, app, time.time())
    results = send_to_all(channels, msg)
    return [(c, results[c.name]) for c in channels]
