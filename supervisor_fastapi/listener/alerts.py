"""Alert channels (webhook, email, command, log), retries, and the journal of undeliverable alerts.

Everything here runs off the listener's event loop: ``Dispatcher.submit`` only puts the
alert on a queue. One thread per channel sends with retries and backoff, so a slow or
dead webhook delays neither the event loop nor the other channels. What still cannot be
delivered goes to the journal (JSON lines in run_dir); nothing is dropped silently.
"""

import fcntl
import json
import logging
import os
import queue
import shlex
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

from ..layout import Layout
from ..spec.model import Alert as AlertSpec

log = logging.getLogger("supervisor_fastapi.listener")
QUEUE_LIMIT = 1000  # per channel; beyond it alerts go straight to the journal
# alerts.log and the journal rotate like supervisord's own logs (logfile_maxbytes/backups):
# a dead channel writes a reminder every reminder_interval for as long as it stays dead.
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_KEEP = 5
Message = Dict[str, Any]
T = TypeVar("T")


class SendError(Exception):
    """A channel could not deliver one alert."""


# --- the message ---------------------------------------------------------------------------


def make_message(event: str, kind: str, process: str, summary: str, details: Mapping[str, Any], app: str,
                 now: float, host: Optional[str] = None) -> Message:
    """The alert as every channel sees it (the JSON body of webhooks and commands)."""
    host = host or socket.gethostname()
    label = {"open": "OPEN", "reminder": "STILL OPEN", "resolve": "RESOLVED", "event": "EVENT",
             "test": "TEST"}.get(event, event.upper())
    text = f"[{app}@{host}] {label} {kind}: {summary}"
    return {"text": text, "event": event, "kind": kind, "app": app, "host": host, "process": process,
            "summary": summary, "details": dict(details), "at": now,
            "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def full_text(msg: Message) -> str:
    """A plain-text body: the one-line text, details, and the log tail if any."""
    lines = [msg["text"], ""]
    details = dict(msg.get("details") or {})
    tail = details.pop("log_tail", None)
    for key in sorted(details):
        lines.append(f"{key}: {details[key]}")
    if tail:
        lines += ["", "--- last lines of the log ---", str(tail).rstrip()]
    return "\n".join(lines) + "\n"


# --- channels -------------------------------------------------------------------------------


class Channel:
    """One destination; ``send`` raises SendError (or any OSError) when delivery failed."""

    name = ""
    type = ""

    def send(self, msg: Message) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class WebhookChannel(Channel):
    type = "webhook"

    def __init__(self, name: str, url: str, timeout: float = 5.0, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self.name, self.url, self.timeout, self.headers = name, url, timeout, dict(headers)

    def send(self, msg: Message) -> None:
        body = json.dumps(msg, default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "supervisor-fastapi-listener"}
        headers.update(self.headers)
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - URL from the spec
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            raise SendError(f"HTTP {exc.code} from {self.url}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SendError(f"POST {self.url}: {reason}") from None


class EmailChannel(Channel):
    type = "email"

    def __init__(self, name: str, opts: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name, self.opts, self.env = name, dict(opts), env

    def _credentials(self) -> Optional[Tuple[str, str]]:
        user_env, pass_env = self.opts.get("username_env"), self.opts.get("password_env")
        if not user_env and not pass_env:
            return None
        missing = [n for n in (user_env, pass_env) if n and n not in self.env]
        if missing:
            raise SendError(f"environment variable {', '.join(missing)} is not set (named by username_env/"
                            "password_env); set it in supervisord's environment")
        return self.env.get(user_env or "", ""), self.env.get(pass_env or "", "")

    def send(self, msg: Message) -> None:
        o = self.opts
        email = EmailMessage()
        email["Subject"] = f"{o.get('subject_prefix', '[supervisor-fastapi]')} {msg['text']}"[:900]
        email["From"] = o["from"]
        email["To"] = ", ".join(o["to"])
        email.set_content(full_text(msg))
        creds = self._credentials()
        timeout = float(o.get("timeout", 10.0))
        try:
            if o.get("ssl"):
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(o["host"], int(o["port"]), timeout=timeout,
                                                      context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(o["host"], int(o["port"]), timeout=timeout)
            with smtp:
                if o.get("starttls") and not o.get("ssl"):
                    smtp.starttls(context=ssl.create_default_context())
                if creds:
                    smtp.login(*creds)
                smtp.send_message(email)
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise SendError(f"SMTP {o['host']}:{o['port']}: {exc}") from None


class CommandChannel(Channel):
    type = "command"

    def __init__(self, name: str, command: str, timeout: float = 10.0, cwd: Optional[str] = None) -> None:
        self.name, self.command, self.timeout, self.cwd = name, command, timeout, cwd

    def send(self, msg: Message) -> None:
        try:
            proc = subprocess.run(shlex.split(self.command), input=json.dumps(msg, default=str), text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout,
                                  cwd=self.cwd)
        except subprocess.TimeoutExpired:
            raise SendError(f"{self.command!r} did not finish within {self.timeout:g} s") from None
        except OSError as exc:
            raise SendError(f"{self.command!r}: {exc}") from None
        if proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            raise SendError(f"{self.command!r} exited with status {proc.returncode} {err[0][:200]}".rstrip())


class LogChannel(Channel):
    type = "log"

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path

    def send(self, msg: Message) -> None:
        try:
            append_line(self.path, msg)
        except OSError as exc:
            raise SendError(f"{self.path}: {exc}") from None


def append_line(path: str, obj: Any, max_bytes: int = ROTATE_BYTES, keep: int = ROTATE_KEEP) -> None:
    """Append one JSON line (one write call, so a reader never sees half a line); when the file
    has reached ``max_bytes``, first rotate it to ``path.1`` (``path.1`` to ``path.2``, ...,
    keeping ``keep``). An exclusive flock on ``path.lock`` makes check, rotation and write one
    step for the listener's threads and an ``alert-test`` in another process alike: a lock on
    the log file itself would not do, since two writers can hold locks on two generations."""
    line = (json.dumps(obj, default=str, sort_keys=True) + "\n").encode()
    lock = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > max_bytes:
            rotate(path, keep)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
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


def channels_from_alerts(alerts: Sequence[Mapping[str, Any]], base_dir: str, run_dir: str,
                         env: Optional[Mapping[str, str]] = None) -> List[Channel]:
    """One channel per ``[[alerts]]`` entry ({"type", "name", "options"}, as the conf carries
    them); with none configured, a log file so alerts still land somewhere."""
    env = os.environ if env is None else env
    records = [AlertSpec(type=str(a["type"]), name=str(a["name"]), options=tuple(dict(a.get("options") or {}).items()))
               for a in alerts] or [AlertSpec(type="log", name="log")]
    out: List[Channel] = []
    for a in records:
        if a.type == "webhook":
            out.append(WebhookChannel(a.name, a.get("url"), a.get("timeout", 5.0), a.get("headers", ())))
        elif a.type == "email":
            out.append(EmailChannel(a.name, dict(a.options), env))
        elif a.type == "command":
            out.append(CommandChannel(a.name, a.get("command"), a.get("timeout", 10.0), base_dir))
        else:
            out.append(LogChannel(a.name, a.get("path") or Layout(run_dir).alerts_log))
    return out


# --- delivery ------------------------------------------------------------------------------


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
            error = str(exc) or type(exc).__name__
            if not quiet:
                    log.warning("alert %s via %s failed (attempt %d/%d): %s", msg.get("kind"), channel.name,
                            attempt + 1, retries + 1, error)
    return error


class Journal:
    """Alerts no channel retry could deliver, one JSON object a line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, msg: Message, channel: str, error: str, now: Optional[float] = None) -> None:
        entry = {"at": time.time() if now is None else now, "channel": channel, "error": error, "alert": msg}
        with self._lock:
            try:
                append_line(self.path, entry)
            except OSError as exc:  # the last resort: stderr, which supervisord keeps in a log
                log.error("cannot write alert journal %s: %s; undelivered alert: %s", self.path, exc,
                          json.dumps(entry, default=str))


ResultCallback = Callable[[Message, Dict[str, str]], None]
Enricher = Callable[[Message, Optional[str]], Message]


class Dispatcher:
    """Queues alerts to per-channel sender threads; reports per-channel results when all are done."""

    def __init__(self, channels: Sequence[Channel], journal: Journal, retries: int,
                 on_result: Optional[ResultCallback] = None, enrich: Optional[Enricher] = None,
                 sleep: Callable[[float], None] = time.sleep, first_delay: float = 1.0) -> None:
        self.channels = list(channels)
        self.journal, self.retries = journal, retries
        self.on_result, self.enrich = on_result, enrich
        self.sleep, self.first_delay = sleep, first_delay
        self._intake: queue.Queue[Optional[Tuple[Message, Optional[str]]]] = queue.Queue()
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

    def submit(self, msg: Message, log_of: Optional[str] = None) -> None:
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
                self.journal.write(msg, c.name, "queue full: the channel is too far behind")
                self._done(ident, msg, c.name, "journaled: queue full")
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
                self.journal.write(msg, channel.name, error)
                self._done(ident, msg, channel.name, f"journaled: {error}")

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
