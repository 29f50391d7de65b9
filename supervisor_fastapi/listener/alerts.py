"""Alert channels (webhook, email, command, log), retries, and the journal of undeliverable alerts.

Everything here runs off the listener's event loop: ``Dispatcher.submit`` only puts the
alert on a queue. One thread per channel sends with retries and backoff, so a slow or
dead webhook delays neither the event loop nor the other channels. What still cannot be
delivered goes to the journal (JSON lines in run_dir); nothing is dropped silently.
"""

import base64
import errno
import fcntl
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

from ..contracts.files import read_small_file
from ..contracts.rpc import LogRef
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
    if not host:
        import socket  # here: the listener at rest has no use for it

        host = socket.gethostname()
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

    def secrets(self) -> List[str]:
        """Strings that must never appear in an error, a log line or the state file."""
        return []

    def target(self) -> str:
        """Where it sends, safe to print."""
        return ""


# --- secrets in URLs --------------------------------------------------------------------------

REDACTED = "***"


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` with the rest hidden: a webhook's path and query are its
    password (Slack, Discord, Teams...), and ``user:password@`` is one."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.split(':', 1)[0]}://{REDACTED}"
    if ":" in host:
        host = f"[{host}]"
    userinfo = f"{REDACTED}@" if parts.username is not None or parts.password is not None else ""
    rest = "/" + REDACTED if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{userinfo}{host}{port}{rest}"


def url_secrets(url: str) -> List[str]:
    """The secret pieces of ``url``, longest first (the whole URL, its path and query, its password)."""
    out = [url]
    try:
        parts = urllib.parse.urlsplit(url)
        out += [p for p in (parts.netloc.rpartition("@")[0] if "@" in parts.netloc else "",
                            parts.password or "", parts.path + ("?" + parts.query if parts.query else ""),
                            parts.path, parts.query) if p and p.strip("/")]
        # urllib may report the unquoted form.
        out += [urllib.parse.unquote(p) for p in list(out)]
    except ValueError:
        pass
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced (whole URLs by their redacted form)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3 and secret in text:
            text = text.replace(secret, redact_url(secret) if "://" in secret else REDACTED)
    return text


class WebhookChannel(Channel):
    type = "webhook"

    def __init__(self, name: str, url: str, timeout: float = 5.0, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self.name, self.url, self.timeout, self.headers = name, url, timeout, dict(headers)

    def secrets(self) -> List[str]:
        try:
            auth = list(self._request_url()[1].values())
        except ValueError:
            auth = []
        return url_secrets(self.url) + [v for v in list(self.headers.values()) + auth if len(v) >= 3]

    def target(self) -> str:
        return redact_url(self.url)

    def _request_url(self) -> Tuple[str, Dict[str, str]]:
        """The URL urllib can open, and a Basic Authorization header for ``user:password@``
        (urllib itself would take it for part of the host name)."""
        parts = urllib.parse.urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url, {}
        userinfo, _, hostport = parts.netloc.rpartition("@")
        token = base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode()
        return urllib.parse.urlunsplit(parts._replace(netloc=hostport)), {"Authorization": f"Basic {token}"}

    def send(self, msg: Message) -> None:
        # Here, not at the top: the listener loads HTTP and TLS on its first webhook alert.
        import http.client
        import urllib.error
        import urllib.request

        from . import transport

        body = json.dumps(msg, default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "supervisor-fastapi-listener"}
        url, auth = self._request_url()
        headers.update(auth)
        headers.update(self.headers)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        where = redact_url(self.url)
        with transport.Deadline(self.timeout) as deadline:
            opener = urllib.request.build_opener(transport.HTTPHandler(deadline), transport.HTTPSHandler(deadline))
            try:
                with opener.open(req, timeout=self.timeout) as resp:
                    resp.read(65536)
            except urllib.error.HTTPError as exc:
                raise SendError(f"HTTP {exc.code} from {where}") from None
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                if deadline.expired:
                    raise SendError(f"POST {where}: timed out: no complete answer within {self.timeout:g} s") from None
                reason = getattr(exc, "reason", exc)
                raise SendError(redact(f"POST {where}: {reason}", self.secrets())) from None
        if deadline.expired:  # pragma: no cover - the answer completed as the timer fired
            raise SendError(f"POST {where}: timed out: no complete answer within {self.timeout:g} s")


PASSWORD_FILE_BYTES = 4096


class EmailChannel(Channel):
    type = "email"

    def __init__(self, name: str, opts: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name, self.opts, self.env = name, dict(opts), env

    def _password(self) -> Optional[str]:
        path, pass_env = self.opts.get("password_file"), self.opts.get("password_env")
        if path:
            data = read_small_file(path, PASSWORD_FILE_BYTES)
            if data is None:
                raise SendError(f"password_file {path} cannot be read (missing, not a regular file, a symlink, or "
                                f"over {PASSWORD_FILE_BYTES} bytes)")
            try:
                return data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise SendError(f"password_file {path} is not UTF-8 text") from None
        if pass_env:
            if not self.env.get(pass_env):
                raise SendError(f"environment variable {pass_env} is not set (named by password_env); set it in "
                                "supervisord's environment")
            return self.env[pass_env]
        return None

    def _credentials(self) -> Optional[Tuple[str, str]]:
        user_env = self.opts.get("username_env")
        if user_env and not self.env.get(user_env):
            raise SendError(f"environment variable {user_env} is not set (named by username_env); set it in "
                            "supervisord's environment")
        user = self.opts.get("username") or (self.env.get(user_env) if user_env else None)
        password = self._password()
        if user is None and password is None:
            return None
        return user or "", password or ""

    def secrets(self) -> List[str]:
        out = []
        try:
            creds = self._credentials()
        except SendError:
            creds = None
        if creds and len(creds[1]) >= 3:
            out.append(creds[1])
        return out

    def target(self) -> str:
        return ", ".join(self.opts["to"])

    def send(self, msg: Message) -> None:
        # Here, not at the top: the listener loads SMTP, TLS and email on its first email alert.
        import smtplib
        import ssl
        from email.message import EmailMessage

        from . import transport

        o = self.opts
        email = EmailMessage()
        email["Subject"] = f"{o.get('subject_prefix', '[supervisor-fastapi]')} {msg['text']}"[:900]
        email["From"] = o["from"]
        email["To"] = ", ".join(o["to"])
        email.set_content(full_text(msg))
        creds = self._credentials()
        timeout = float(o.get("timeout", 10.0))
        where = f"SMTP {o['host']}:{o['port']}"
        with transport.Deadline(timeout) as deadline:
            try:
                smtp: smtplib.SMTP
                if o.get("ssl"):
                    smtp = transport.SMTP_SSL(timeout=timeout, context=transport.tls_context(deadline))
                else:
                    smtp = transport.SMTP(timeout=timeout)
                smtp.deadline = deadline
                smtp._host = o["host"]  # type: ignore[union-attr]  # what starttls() verifies against
                with smtp:
                    code, reply = smtp.connect(o["host"], int(o["port"]))
                    if code != 220:
                        raise smtplib.SMTPConnectError(code, reply)
                    if o.get("starttls") and not o.get("ssl"):
                        smtp.starttls(context=transport.tls_context(deadline))
                    if creds:
                        smtp.login(*creds)
                    smtp.send_message(email)
            except (smtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
                if deadline.expired:
                    raise SendError(f"{where}: timed out: no complete answer within {timeout:g} s") from None
                raise SendError(redact(f"{where}: {exc}", [creds[1]] if creds else [])) from None


# What a command alert's environment holds besides the names its own spec entry passes
# (pass_env): an allow-list, not the listener's environment minus some names. The listener's
# environment carries SUPERVISOR_FASTAPI_LISTENER (every channel's settings, webhook tokens
# and headers included) and the SMTP credentials, and the command usually runs as app.user,
# who can read /proc/<pid>/environ of its own processes.
COMMAND_ENV = ("PATH", "HOME", "LANG")


def command_env(environ: Mapping[str, str], pass_env: Sequence[str], account: Any = None) -> Dict[str, str]:
    """The command's whole environment (pure): PATH, HOME, LANG and the ``pass_env`` names from
    ``environ``; with ``account`` (a pwd entry: the user it runs as), that user's HOME, USER and LOGNAME."""
    env = {k: environ[k] for k in COMMAND_ENV if k in environ}
    env.setdefault("PATH", os.defpath)
    env.update((k, environ[k]) for k in pass_env if k in environ)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return env


class CommandChannel(Channel):
    """Runs a command with the alert as JSON on stdin: as ``user`` (default app.user), or as
    root only when the spec says ``run_as_root = true``; its environment is ``command_env``."""

    type = "command"

    def __init__(self, name: str, command: str, timeout: float = 10.0, cwd: Optional[str] = None,
                 user: Optional[str] = None, run_as_root: bool = False, pass_env: Sequence[str] = (),
                 environ: Optional[Mapping[str, str]] = None) -> None:
        self.name, self.command, self.timeout, self.cwd = name, command, timeout, cwd
        self.user, self.run_as_root, self.pass_env = user, run_as_root, tuple(pass_env)
        self.environ = os.environ if environ is None else environ

    def target(self) -> str:
        return self.command

    def _identity(self) -> Dict[str, Any]:
        """subprocess arguments that drop to ``user`` (with its environment); {} to run as we are."""
        euid = os.geteuid()
        if self.user is None:
            if euid == 0 and not self.run_as_root:
                raise SendError("refusing to run the command as root: set user = \"...\" on this alert (or "
                                "app.user), or run_as_root = true to allow it")
            return {}
        import pwd

        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise SendError(f"user {self.user!r} does not exist") from None
        if entry.pw_uid == euid:
            return {}
        if euid != 0:
            raise SendError(f"cannot run the command as {self.user!r}: the listener is not root")
        env = command_env(self.environ, self.pass_env, entry)
        if sys.version_info >= (3, 9):
            groups = [g.gr_gid for g in _groups_of(entry.pw_name)]
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups, "env": env}
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name  # pragma: no cover - Python 3.8

        def drop() -> None:  # pragma: no cover - Python 3.8
            os.initgroups(name, gid)
            os.setgid(gid)
            os.setuid(uid)

        return {"preexec_fn": drop, "env": env}  # pragma: no cover - Python 3.8

    def send(self, msg: Message) -> None:
        import shlex
        import subprocess  # here, not at the top: the listener loads it on its first command alert

        identity = self._identity()
        identity.setdefault("env", command_env(self.environ, self.pass_env))
        try:
            proc = subprocess.run(shlex.split(self.command), input=json.dumps(msg, default=str), text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout,
                                  cwd=self.cwd, **identity)
        except subprocess.TimeoutExpired:
            raise SendError(f"{self.command!r} did not finish within {self.timeout:g} s") from None
        except OSError as exc:
            raise SendError(f"{self.command!r}: {exc}") from None
        if proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            raise SendError(f"{self.command!r} exited with status {proc.returncode} {err[0][:200]}".rstrip())


def _groups_of(user: str) -> List[Any]:
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]


class LogChannel(Channel):
    type = "log"

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path

    def target(self) -> str:
        return self.path

    def send(self, msg: Message) -> None:
        try:
            append_line(self.path, msg)
        except OSError as exc:
            raise SendError(f"{self.path}: {exc.strerror or exc}") from None


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
            out.append(CommandChannel(a.name, a.get("command"), a.get("timeout", 10.0), base_dir,
                                      user=a.get("user"), run_as_root=bool(a.get("run_as_root")),
                                      pass_env=a.get("pass_env") or (), environ=env))
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
