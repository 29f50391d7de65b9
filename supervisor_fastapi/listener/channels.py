"""Alert channels: where an alert goes (webhook, email, command, log) and how one is sent.

``Channel.send`` blocks until the alert is delivered or raises SendError; it runs in a
sender thread (delivery.py) or in ``alert-test``, never on the listener's event loop.
``channels_from_alerts`` builds them from the ``[[alerts]]`` records the conf carries.

Imports the spec's records, ``layout``, ``contracts`` and the listener's message, redaction and
logfile modules. The network clients (``transport``: HTTP, SMTP, TLS, email),
subprocess and pwd/grp load inside a channel's ``send`` on its first alert, so the listener
at rest does without them (tests/unit/test_imports.py).
"""

import base64
import json
import os
import sys
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..contracts.files import read_small_file
from ..layout import Layout
from ..spec.model import AlertChannel
from .logfile import append_line
from .message import Message, full_text
from .redaction import redact, redact_url, url_secrets


class SendError(Exception):
    """A channel could not deliver one alert."""


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


def channels_from_alerts(alerts: Sequence[Mapping[str, Any]], base_dir: str, run_dir: str,
                         env: Optional[Mapping[str, str]] = None) -> List[Channel]:
    """One channel per ``[[alerts]]`` entry ({"type", "name", "options"}, as the conf carries
    them); with none configured, a log file so alerts still land somewhere."""
    env = os.environ if env is None else env
    records = [AlertChannel(type=str(a["type"]), name=str(a["name"]),
                            options=tuple(dict(a.get("options") or {}).items()))
               for a in alerts] or [AlertChannel(type="log", name="log")]
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
