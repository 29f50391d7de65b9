"""The trust boundary in pure and local pieces: safe readers, the listener's own files, secrets
in errors, whole-request deadlines against real loopback servers, run_dir creation, the conf's
mode and environment, and the spec inputs that must be one line naming the key."""

import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from typing import Any, List

import pytest

from supervisor_fastapi.cli import checks, deploy
from supervisor_fastapi.contracts import files
from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.generate import ini
from supervisor_fastapi.generate.conf import alert_records, render
from supervisor_fastapi.layout import Layout
from supervisor_fastapi.listener import logfile
from supervisor_fastapi.listener.channels import (
    Channel,
    CommandChannel,
    EmailChannel,
    SendError,
    WebhookChannel,
    channels_from_alerts,
    command_env,
)
from supervisor_fastapi.listener.delivery import Dispatcher, Journal, deliver
from supervisor_fastapi.listener.logfile import append_line
from supervisor_fastapi.listener.message import Message, make_message
from supervisor_fastapi.listener.redaction import redact, redact_url, url_secrets
from supervisor_fastapi.spec import HostDefaults, parse_spec

from ..helpers_alerts import SmtpReceiver, closed_port, self_signed_cert
from ._core_helpers import raw_sections

HOST = HostDefaults(python="/usr/bin/python3", cpu_count=2)
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (acts as other users)")
TOKEN = "T0KEN-sEcReT-9f8e7d"


def spec_text(extra: str = "", run_dir: str = "/srv/app/run") -> str:
    return f'[app]\nname = "shop"\nasgi = "main:app"\npython = "/usr/bin/python3"\n' \
           f'[supervisord]\nrun_dir = "{run_dir}"\n{extra}'


def parse(extra: str = "", source: str = "/srv/app/supervisor-fastapi.toml", **kw: Any) -> Any:
    return parse_spec(spec_text(extra, **kw), source, os.path.dirname(source), HOST)


def msg() -> Message:
    return make_message("open", "crash_loop", "shop:shop_00", "down", {}, "shop", 1000.0, host="h")


# --- contracts.files: what root reads from app-writable places ---------------------------


def test_readers_refuse_fifo_symlink_device_huge_and_deep_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "big").write_bytes(b"{" + b" " * (files.MAX_JSON_BYTES + 10) + b"}")
    (tmp_path / "deep").write_bytes(b"[" * 100_000)
    (tmp_path / "longint").write_bytes(b'{"pid": ' + b"9" * 100_000 + b"}")
    (tmp_path / "good").write_text('{"pid": 42, "ready": 1.5}')
    os.symlink(tmp_path / "good", tmp_path / "link")
    os.symlink("/dev/zero", tmp_path / "zero")
    started = time.monotonic()
    for name in ("fifo", "big", "deep", "longint", "link", "zero", "missing"):
        assert files.read_json(str(tmp_path / name)) is None, name
        assert files.read_worker_state(str(tmp_path / name)) is None, name
    assert files.read_small_file("/dev/zero") is None
    assert time.monotonic() - started < 2.0
    assert files.read_worker_state(str(tmp_path / "good"))["pid"] == 42
    # Expected names only: the others are not even opened.
    assert set(files.read_worker_states(str(tmp_path), ["good", "fifo", "../etc/passwd", ""])) == {"good"}


def test_worker_states_open_only_the_names_asked_for(tmp_path):
    """Thousands of planted files neither hide the named ones nor get opened (issue 16, point 6)."""
    for i in range(3000):
        (tmp_path / f"w{i:05d}").write_text('{"pid": 1}')
    (tmp_path / "web_00").write_text('{"pid": 42, "ready": 1}')
    assert files.read_worker_states(str(tmp_path), ["web_00", "web_01"]) == {
        "web_00": {"pid": 42, "ready": 1, "beat": os.stat(tmp_path / "web_00").st_mtime}}


def test_atomic_write_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "state.json"
    os.symlink(victim, f"{target}.{os.getpid()}.tmp")
    files.write_json_atomic(str(target), {"a": 1})
    assert victim.read_text() == "keep"
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


# --- the listener's own files --------------------------------------------------------------


def test_append_line_is_private_and_refuses_links_and_fifos(tmp_path):
    path = str(tmp_path / "alerts.log")
    append_line(path, {"a": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + ".lock").st_mode) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.symlink(victim, tmp_path / "linked.log")
    with pytest.raises(OSError):
        append_line(str(tmp_path / "linked.log"), {"a": 1})
    os.link(victim, tmp_path / "hard.log")
    with pytest.raises(OSError):
        append_line(str(tmp_path / "hard.log"), {"a": 1})
    assert victim.read_text() == "keep\n"
    os.mkfifo(tmp_path / "fifo.log")
    started = time.monotonic()
    with pytest.raises(OSError):
        append_line(str(tmp_path / "fifo.log"), {"a": 1})
    assert time.monotonic() - started < 1.0


def test_append_line_loops_on_short_writes_and_leaves_no_half_line(tmp_path, monkeypatch):
    path = str(tmp_path / "j.jsonl")
    append_line(path, {"first": True})
    real_write = os.write
    calls: List[int] = []

    def short(fd: int, data: Any) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))  # the kernel may take fewer bytes than asked

    monkeypatch.setattr(logfile.os, "write", short)
    append_line(path, {"second": "x" * 50})
    monkeypatch.setattr(logfile.os, "write", real_write)
    assert len(calls) > 5
    lines = open(path).read().splitlines()
    assert [json.loads(line) for line in lines] == [{"first": True}, {"second": "x" * 50}]

    def full_disk(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logfile.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        append_line(path, {"third": "y" * 50})
    monkeypatch.setattr(logfile.os, "write", real_write)
    assert open(path).read().splitlines() == lines  # cut back to the last whole line


def test_a_failed_journal_write_is_reported_lost_not_journaled(tmp_path):
    class Down(Channel):
        name, type = "down", "webhook"

        def send(self, m: Message) -> None:
            raise SendError("nope")

    results: List[Any] = []
    journal = Journal(str(tmp_path / "missing-folder" / "journal.jsonl"))
    assert journal.write(msg(), "down", "x") is False
    d = Dispatcher([Down()], journal, retries=0, on_result=lambda m, r: results.append(r)).start()
    d.submit(msg())
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        time.sleep(0.02)
    d.close()
    assert results and results[0]["down"].startswith("LOST (journal not writable): nope")


# --- secrets in errors ----------------------------------------------------------------------


@pytest.mark.parametrize("url,shown", [
    (f"https://hooks.slack.com/services/T0/B0/{TOKEN}", "https://hooks.slack.com/***"),
    (f"https://user:{TOKEN}@example.com:8443/hook?token={TOKEN}", "https://***@example.com:8443/***"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
    (f"http://h/?k={TOKEN}", "http://h/***"),
])
def test_redact_url_keeps_only_scheme_host_and_port(url, shown):
    assert redact_url(url) == shown
    assert TOKEN not in redact(f"POST {url}: failed ({url.split('//')[1]})", url_secrets(url))


def test_webhook_errors_never_carry_the_token():
    url = f"http://user:{TOKEN}@127.0.0.1:{closed_port()}/services/{TOKEN}?k={TOKEN}"
    channel = WebhookChannel("w", url, timeout=2)
    error = deliver(channel, msg(), retries=0, quiet=True)
    assert error and "Connection refused" in error and TOKEN not in error, error
    assert TOKEN not in channel.target()
    bad = WebhookChannel("w", f"http://127.0.0.1:bad/{TOKEN}")
    error = deliver(bad, msg(), retries=0, quiet=True)
    assert error and TOKEN not in error, error


def test_a_channel_bug_naming_a_secret_is_redacted_too():
    class Buggy(WebhookChannel):
        def send(self, m: Message) -> None:
            raise RuntimeError(f"boom at {self.url}")

    error = deliver(Buggy("w", f"https://h.example/{TOKEN}"), msg(), retries=0, quiet=True)
    assert error == "boom at https://h.example/***"


# --- deadlines against real slow servers -----------------------------------------------------


class Trickler:
    """A loopback server that accepts and then sends one byte every ``every`` seconds, forever
    (until closed): each byte restarts a per-operation socket timeout."""

    def __init__(self, first: bytes, every: float = 0.5) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.first, self.every = first, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            for i in range(600):  # bounded: at most 5 minutes
                if self.stop.is_set():
                    return
                try:
                    conn.recv(65536)
                except OSError:
                    pass
                try:
                    conn.sendall(self.first[i:i + 1] or b"X")
                except OSError:
                    return
                self.stop.wait(self.every)

    def __enter__(self) -> "Trickler":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def test_webhook_timeout_is_a_deadline_for_the_whole_request():
    with Trickler(b"HTTP/1.1 200 OK\r\nX-Slow: ") as server:
        started = time.monotonic()
        with pytest.raises(SendError, match="timed out: no complete answer within 1 s"):
            WebhookChannel("w", f"http://127.0.0.1:{server.port}/{TOKEN}", timeout=1).send(msg())
        took = time.monotonic() - started
    assert 0.9 < took < 2.0, took


def test_https_webhook_handshake_is_inside_the_deadline():
    with Trickler(b"\x16\x03\x01") as server:  # the start of a TLS record, then nothing useful
        started = time.monotonic()
        with pytest.raises(SendError, match="timed out"):
            WebhookChannel("w", f"https://127.0.0.1:{server.port}/", timeout=1).send(msg())
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("ssl_on", [False, True])
def test_smtp_timeout_is_a_deadline_for_the_whole_conversation(ssl_on):
    with Trickler(b"220-slow.example ESMTP\r\n" * 50) as server:
        opts = {"host": "127.0.0.1", "port": server.port, "from": "a@x", "to": ("b@x",), "timeout": 1.0,
                "starttls": False, "ssl": ssl_on}
        started = time.monotonic()
        with pytest.raises(SendError, match="timed out"):
            EmailChannel("e", opts, {}).send(msg())
        assert time.monotonic() - started < 2.0


def test_smtp_password_file_is_read_by_the_listener_and_redacted(tmp_path):
    cert, key = self_signed_cert(str(tmp_path))
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    os.environ["SSL_CERT_FILE"] = cert
    try:
        with SmtpReceiver(cert, key) as smtp:
            opts = {"host": "127.0.0.1", "port": smtp.port, "from": "a@x", "to": ("b@x",), "starttls": True,
                    "username": "alerts", "password_file": str(secret), "timeout": 10.0}
            EmailChannel("e", opts, {}).send(msg())
            assert smtp.logins == ["alerts"] and len(smtp.messages) == 1
            secret.write_text("wrong-password-XYZ\n")
            # aiosmtpd holds a failed AUTH unanswered: the deadline ends it, the password stays out.
            error = deliver(EmailChannel("e", {**opts, "timeout": 1.0}, {}), msg(), retries=0, quiet=True)
            assert error and "wrong-password-XYZ" not in error, error
    finally:
        del os.environ["SSL_CERT_FILE"]
    os.unlink(secret)
    os.symlink("/etc/hostname", secret)
    with pytest.raises(SendError, match="cannot be read"):
        EmailChannel("e", {**opts, "password_file": str(secret)}, {}).send(msg())


# --- the command channel: never root unless the spec says so ----------------------------------


def test_command_channel_as_root_needs_a_user_or_run_as_root(tmp_path):
    out = tmp_path / "who"
    cmd = f"{sys.executable} -c 'import os; open(\"{out}\", \"w\").write(str(os.getuid()))'"
    if ROOT:
        with pytest.raises(SendError, match="refusing to run the command as root"):
            CommandChannel("c", cmd).send(msg())
    CommandChannel("c", cmd, run_as_root=True).send(msg())
    assert out.read_text() == str(os.getuid())


@needs_root
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs /usr/bin/python3 for nobody")
def test_command_channel_runs_as_its_user_without_the_listeners_secrets(monkeypatch):
    folder = tempfile.mkdtemp(prefix="sf-cmd-")  # tmp_path's parents are root's only
    os.chmod(folder, 0o777)
    out = os.path.join(folder, "who.json")
    monkeypatch.setenv("SMTP_PASSWORD", TOKEN)
    cmd = ("/usr/bin/python3 -c 'import json, os; json.dump([os.getuid(), os.getgid(), "
           f"os.environ.get(\"SMTP_PASSWORD\"), os.environ.get(\"HOME\")], open(\"{out}\", \"w\"))'")
    try:
        CommandChannel("c", cmd, cwd=folder, user="nobody").send(msg())
        with open(out) as f:
            uid, gid, password, home = json.load(f)
    finally:
        shutil.rmtree(folder)
    assert (uid, password) == (65534, None) and gid != 0 and home == "/nonexistent"


LISTENER_ENVIRON = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "PAGER_KEY": "pager-1",
                    "SUPERVISOR_FASTAPI_LISTENER": "eyJhbGVydHMiOiBbXX0=" + TOKEN, "SMTP_PASSWORD": TOKEN,
                    "SUPERVISOR_SERVER_URL": "unix:///srv/run/supervisor.sock", "LC_ALL": "C", "AWS_SECRET": TOKEN}


@pytest.mark.parametrize("as_nobody", [False, True])
def test_command_channel_environment_is_an_allow_list(tmp_path, as_nobody):
    """Issue 18: the command got the listener's environment minus the SMTP names, which kept
    SUPERVISOR_FASTAPI_LISTENER (every channel's settings) for app.user to read."""
    if as_nobody and not ROOT:
        pytest.skip("runs as nobody: needs root")
    folder = tempfile.mkdtemp(prefix="sf-cmd-")  # tmp_path's parents are root's only
    os.chmod(folder, 0o777)
    out = os.path.join(folder, "env.json")
    python = "/usr/bin/python3" if as_nobody else sys.executable
    cmd = (f"{python} -c 'import json, os, sys; "
           f"json.dump([dict(os.environ), json.load(sys.stdin)], open(\"{out}\", \"w\"))'")
    try:
        CommandChannel("c", cmd, cwd=folder, user="nobody" if as_nobody else None, run_as_root=not as_nobody,
                       pass_env=["PAGER_KEY", "NOT_SET"], environ=LISTENER_ENVIRON).send(msg())
        with open(out) as f:
            env, alert = json.load(f)
    finally:
        shutil.rmtree(folder)
    env.pop("LC_CTYPE", None)  # Python's own locale coercion in the child, not ours
    expected = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "PAGER_KEY": "pager-1"}
    if as_nobody:
        expected.update(HOME="/nonexistent", USER="nobody", LOGNAME="nobody")
    assert env == expected
    assert alert == msg()  # the alert itself, on stdin


def test_command_env_is_pure():
    assert command_env({"PATH": "/p", "X": "1", "Y": "2"}, ["Y"]) == {"PATH": "/p", "Y": "2"}
    assert command_env({}, []) == {"PATH": os.defpath}


def test_command_channels_default_to_app_user():
    spec = parse_spec(spec_text('[[alerts]]\ntype = "command"\ncommand = "x"\n'
                                '[[alerts]]\ntype = "command"\nname = "r"\ncommand = "x"\nrun_as_root = true\n'
                                '[[alerts]]\ntype = "command"\nname = "n"\ncommand = "x"\nuser = "nobody"\n')
                      .replace('python = ', 'user = "www-data"\npython = '), "/srv/app/s.toml", "/srv/app", HOST)
    channels = channels_from_alerts(alert_records(spec), spec.base_dir, spec.run_dir, {})
    users = [(c.user, c.run_as_root, c.pass_env) for c in channels]  # type: ignore[attr-defined]
    assert users == [("www-data", False, ()), (None, True, ()), ("nobody", False, ())]


def test_pass_env_is_read_and_refused_where_it_names_another_channels_secret():
    spec = parse('[[alerts]]\ntype = "command"\ncommand = "x"\nuser = "nobody"\npass_env = ["PAGER_KEY", "A"]\n')
    channel = channels_from_alerts(alert_records(spec), spec.base_dir, spec.run_dir, {})[0]
    assert channel.pass_env == ("A", "PAGER_KEY")  # type: ignore[attr-defined]
    fails(EMAIL + '[[alerts]]\ntype = "command"\nname = "c"\ncommand = "x"\npass_env = ["SMTP_PASSWORD"]\n',
          "alerts[1].pass_env", "SMTP_PASSWORD is alerts[0].password_env, another channel's credential")
    fails('[[alerts]]\ntype = "command"\ncommand = "x"\npass_env = ["SUPERVISOR_FASTAPI_LISTENER"]\n',
          "alerts[0].pass_env[0]", "supervisord's or the listener's own")
    fails('[[alerts]]\ntype = "command"\ncommand = "x"\npass_env = ["A B"]\n', "alerts[0].pass_env[0]",
          "not an environment variable name")
    fails('[[alerts]]\ntype = "command"\ncommand = "x"\npass_env = "A"\n', "alerts[0].pass_env", "an array")


# --- the conf: secrets blanked, mode, duplicate sections ---------------------------------------


EMAIL = ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b@x.org"\nusername_env = "SMTP_USER"\n'
         'password_env = "SMTP_PASSWORD"\n')


def test_smtp_variables_are_blanked_for_every_program_but_the_listener():
    spec = parse(EMAIL + '[memory]\nlimit = "1GB"\n[migrate]\ncommand = "m"\n[[programs]]\nname = "q"\ncommand = "c"\n'
                 '[app.env]\nDATABASE_URL = "postgres://u:p@h/db"\n')
    sections = raw_sections(render(spec, "t"))
    for name in ("fcgi-program:shop", "program:shop_migrate", "program:shop_q", "program:shop_watchdog"):
        env = sections[name]["environment"]
        assert 'SMTP_PASSWORD=""' in env and 'SMTP_USER=""' in env, name
    assert 'SMTP_PASSWORD=""' not in sections["eventlistener:shop_listener"].get("environment", "")
    # What a command alert passes on is its own, not the workers'.
    spec = parse(EMAIL + '[[alerts]]\ntype = "command"\nname = "c"\ncommand = "x"\npass_env = ["PAGER_KEY"]\n')
    assert 'PAGER_KEY=""' in raw_sections(render(spec, "t"))["fcgi-program:shop"]["environment"]
    # Named in app.env on purpose: passed on.
    spec = parse(EMAIL + '[app.env]\nSMTP_USER = "me"\n')
    assert 'SMTP_USER="me"' in raw_sections(render(spec, "t"))["fcgi-program:shop"]["environment"]


def test_ini_refuses_duplicate_sections():
    with pytest.raises(ini.UnsafeValue, match=r"\[program:a\] would appear twice"):
        ini.render([("program:a", [("command", "x")]), ("program:a", [("command", "y")])])


def test_conf_mode_follows_secrets_and_the_spec(tmp_path):
    source = tmp_path / "supervisor-fastapi.toml"
    for env, spec_mode, expected in (("", 0o644, 0o644), ('[app.env]\nK = "v"\n', 0o644, 0o600),
                                     ("", 0o600, 0o600), ("", 0o640, 0o640)):
        source.write_text(spec_text(env, run_dir=str(tmp_path / "run")))
        os.chmod(source, spec_mode)
        spec = parse_spec(source.read_text(), str(source), str(tmp_path), HOST)
        conf = tmp_path / "supervisord.conf"
        deploy.write_atomic(str(conf), "x\n", deploy.conf_mode(spec))
        assert stat.S_IMODE(os.stat(conf).st_mode) == expected, (env, oct(spec_mode))


# --- run_dir -----------------------------------------------------------------------------------


def spec_in(folder: str, user: str = "") -> Any:
    extra = f'user = "{user}"\n' if user else ""
    text = spec_text(run_dir=os.path.join(folder, "run")).replace('python = ', extra + 'python = ')
    return parse_spec(text, os.path.join(folder, "s.toml"), folder, HOST)


@needs_root
def test_make_dirs_never_chowns_through_a_workers_symlink(tmp_path):
    os.chmod(tmp_path, 0o755)
    spec = spec_in(str(tmp_path), "www-data")
    layout = Layout(spec.run_dir)
    os.makedirs(layout.run_dir)
    rootdir = tmp_path / "root-only"
    rootdir.mkdir()
    os.symlink(rootdir, layout.state_dir)
    with pytest.raises(UserError, match="is a symlink or not a folder; remove it"):
        deploy.make_dirs(spec)
    assert os.stat(rootdir).st_uid == 0
    os.unlink(layout.state_dir)
    deploy.make_dirs(spec)
    st = os.lstat(layout.state_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 33 and stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_IMODE(os.stat(layout.run_dir).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(layout.log_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(layout.logfile).st_mode) == 0o600


@needs_root
def test_make_dirs_refuses_a_run_dir_others_can_write(tmp_path):
    os.chmod(tmp_path, 0o755)
    spec = spec_in(str(tmp_path), "www-data")
    os.makedirs(spec.run_dir)
    os.chmod(spec.run_dir, 0o777)
    with pytest.raises(UserError, match=r"run_dir: .* is writable by its group or others \(mode 0777\), "
                                        r".*; run `chmod go-w"):
        deploy.make_dirs(spec)
    os.chmod(spec.run_dir, 0o755)
    os.chown(spec.run_dir, 33, 33)
    with pytest.raises(UserError, match=r"belongs to www-data \(uid 33\).*run `chown root"):
        deploy.make_dirs(spec)
    os.chown(spec.run_dir, 0, 0)
    os.chown(tmp_path, 33, 33)  # a folder above it
    with pytest.raises(UserError, match="put supervisord.run_dir under a folder only root can write"):
        deploy.make_dirs(spec)
    os.chown(tmp_path, 0, 0)
    deploy.make_dirs(spec)


@needs_root
def test_run_dir_problem_accepts_sticky_parents(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.chmod(tmp_path, 0o755)
    assert checks.run_dir_problem(str(sticky / "run")) is None


# --- spec inputs: one line naming the file and the key -------------------------------------------


def fails(extra: str, key: str, words: str = "", **kw: Any) -> None:
    with pytest.raises(SpecError) as info:
        parse(extra, **kw)
    text = str(info.value)
    assert "\n" not in text and text.startswith("/srv/app/supervisor-fastapi.toml: ") and key in text, text
    assert words in text, text


@pytest.mark.parametrize("extra,key,words", [
    ('[[programs]]\nname = "watchdog"\ncommand = "x"\n', "programs[0].name", "reserved: supervisor-fastapi renders "
                                                                               "shop_watchdog for the watchdog"),
    ('[[programs]]\nname = "listener"\ncommand = "x"\n', "programs[0].name", "reserved"),
    ('[[programs]]\nname = "migrate"\ncommand = "x"\n', "programs[0].name", "reserved"),
    ('[[programs]]\nname = "shop"\ncommand = "x"\n', "programs[0].name", "it is app.name"),
    ('[memory]\nlimit = "1' + "0" * 400 + 'GB"\n', "memory.limit", "too large"),
    ('[memory]\nper_worker = ' + "9" * 400 + '\n', "memory.per_worker", "too large"),
    ('[crash_loop]\nwindow = ' + "9" * 400 + '\n', "crash_loop.window", "too large"),
    ('[server]\nbind = "tcp://127.0.0.1:\u0668\u0660\u0660\u0660"\n', "server.bind", "must be a number"),
    ('[server]\nbind = "tcp://127.0.0.1:\u00b2"\n', "server.bind", "must be a number"),
    ('[server.uvicorn]\nlimit_concurrency = 0\n', "server.uvicorn.limit_concurrency", "at least 1"),
    ('[[alerts]]\ntype = "webhook"\nurl = "https://h.example/x\\r\\nX-Evil: 1"\n', "alerts[0].url", "control"),
    ('[[alerts]]\ntype = "webhook"\nurl = "https://h.example:99999/x"\n', "alerts[0].url", "usable URL"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = []\n', "alerts[0].to", "is empty"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b@x.org"\nhost = "smtp\\r\\nRCPT"\n', "alerts[0].host",
     "not a host name"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b@x.org"\nsubject_prefix = "x\\nBcc: e@v"\n',
     "alerts[0].subject_prefix", "control character"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b\\u0000@x.org"\n', "alerts[0].to", "not an email"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b@x.org"\npassword_env = "P"\npassword_file = "p"\n',
     "alerts[0].password_file", "cannot both"),
    ('[[alerts]]\ntype = "command"\ncommand = "x"\nuser = "a"\nrun_as_root = true\n', "alerts[0].run_as_root",
     "cannot both"),
])
def test_hostile_inputs_are_one_line_naming_the_key(extra, key, words):
    fails(extra, key, words)


def test_deep_toml_is_one_line():
    fails("x = " + "[" * 5000 + "]" * 5000 + "\n", "", "nested too deeply")


@pytest.mark.parametrize("pyproject,words", [
    ("tool = 1\n", "tool: must be a table, not an integer"),
    ('[tool]\nsupervisor-fastapi = "x"\n', "tool.supervisor-fastapi: must be a table, not a string"),
    ("[tool.other]\nx = 1\n", "tool.supervisor-fastapi: table not found"),
])
def test_pyproject_shapes_are_one_line(pyproject, words):
    with pytest.raises(SpecError, match=words):
        parse_spec(pyproject, "/srv/app/pyproject.toml", "/srv/app", HOST, "supervisor-fastapi")


@pytest.mark.parametrize("folder", ["/srv/a ;b", "/srv/a #b", "/srv/a\nb", "/srv/a ", "/srv/a\x00b"])
def test_a_spec_folder_the_conf_cannot_carry_is_one_line(folder):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(), folder + "/supervisor-fastapi.toml", folder, HOST)
    assert "\n" not in str(info.value) and "the spec file's path" in str(info.value)


# --- check and render/up agree on every trust refusal (issue 18, point 2) ---------------------------


def _world_writable(folder: str, spec: Any) -> None:
    os.makedirs(spec.run_dir)
    os.chmod(spec.run_dir, 0o777)


def _app_user_owns(folder: str, spec: Any) -> None:
    os.makedirs(spec.run_dir)
    os.chown(spec.run_dir, 33, 33)


def _workers_link(folder: str, spec: Any) -> None:
    os.makedirs(spec.run_dir, 0o711)
    os.mkdir(os.path.join(folder, "root-only"), 0o700)
    os.symlink(os.path.join(folder, "root-only"), Layout(spec.run_dir).state_dir)


def _log_link(folder: str, spec: Any) -> None:
    os.makedirs(spec.run_dir, 0o711)
    os.symlink("/etc/shadow", Layout(spec.run_dir).logfile)


def _readable_password(folder: str, spec: Any) -> None:
    path = os.path.join(folder, "smtp-password")
    with open(path, "w") as f:
        f.write("x\n")
    os.chmod(path, 0o644)


TRUST_REFUSALS = [
    ("run", "", _world_writable, "supervisord.run_dir: {run_dir} is writable by its group or others (mode 0777)"),
    ("run", "", _app_user_owns, "supervisord.run_dir: {run_dir} belongs to www-data"),
    ("/tmp", "", None, "supervisord.run_dir: /tmp is a folder every user can write (mode 1777)"),
    ("run", "", _workers_link, "supervisord.run_dir: {run_dir}/workers is a symlink or not a folder"),
    ("run", "", _log_link, "supervisord.run_dir: {run_dir}/supervisord.log is a symlink or not a regular file"),
    ("run", '[[alerts]]\ntype = "command"\ncommand = "x"\n', None,
     "alerts[0] (command): the command would run as root: set user"),
    ("run", '[[alerts]]\ntype = "email"\nfrom = "a@x.org"\nto = "b@x.org"\npassword_file = "smtp-password"\n',
     _readable_password, "alerts[0] (email): password_file is root's alone: {folder}/smtp-password is readable by "
                         "others than root"),
]


@needs_root
@pytest.mark.parametrize("run_dir,extra,arrange,words", TRUST_REFUSALS)
def test_check_fails_where_render_and_up_refuse(tmp_path, run_dir, extra, arrange, words):
    folder = str(tmp_path)
    os.chmod(folder, 0o755)
    run_dir = os.path.join(folder, run_dir)
    source = os.path.join(folder, "supervisor-fastapi.toml")
    spec = parse_spec(spec_text(extra, run_dir=run_dir), source, folder, HOST)
    if arrange:
        arrange(folder, spec)
    words = words.format(run_dir=run_dir, folder=folder)
    # check: a FAIL line with these words.
    failed = [f"{r.what}: {r.detail}" for r in checks.trust_checks(spec, 0) if not r.ok]
    assert any(line.startswith(words) for line in failed), failed
    # render and up (make_dirs): refused with the same line, nothing created or given away.
    with pytest.raises(UserError) as info:
        deploy.make_dirs(spec)
    assert str(info.value) == f"{source}: {failed[0]}"
    assert not os.path.exists(os.path.join(run_dir, "logs")) or run_dir == "/tmp"
    assert os.stat(os.path.join(folder, "root-only") if arrange is _workers_link else folder).st_uid == 0


@needs_root
def test_check_says_ok_where_render_accepts(tmp_path):
    folder = str(tmp_path)
    os.chmod(folder, 0o755)
    spec = parse_spec(spec_text('[[alerts]]\ntype = "command"\ncommand = "x"\nuser = "nobody"\n',
                                run_dir=os.path.join(folder, "run")), os.path.join(folder, "s.toml"), folder, HOST)
    results = checks.trust_checks(spec, 0)
    assert all(r.ok for r in results), results
    assert results[0].what == "supervisord.run_dir"
    deploy.make_dirs(spec)
    assert checks.trust_refusals(spec, 0) == []


# --- limits: every value that reaches supervisord or a child (issue 18, point 3) -------------------

from supervisor_fastapi.generate.conf import program_environment  # noqa: E402
from supervisor_fastapi.spec import limits  # noqa: E402

WEB = '[[alerts]]\ntype = "webhook"\nname = "w{i}"\nurl = "https://h.example/x"\n'


def _headers(n: int, size: int) -> str:
    return "".join(f'H{j} = "{"v" * size}"\n' for j in range(n))


HOSTILE_SHAPES = [
    ('[app.env]\nX = "' + "x" * 5000 + '"\n', "app.env.X", "is 5000 characters long; a value may be at most 4096"),
    ("[app.env]\n" + "".join(f'V{i} = "v"\n' for i in range(100)), "app.env", "has 100 keys; a table may have "
                                                                              "at most 64"),
    ("".join(f'[[programs]]\nname = "p{i}"\ncommand = "x"\n' for i in range(100)), "programs",
     "has 100 items; an array may have at most 64"),
    ('[[alerts]]\ntype = "email"\nfrom = "a@b.c"\nto = [' + ", ".join(['"d@e.f"'] * 65) + "]\n", "alerts[0].to",
     "has 65 items"),
    ('[[alerts]]\ntype = "webhook"\nurl = "https://h.example/x"\n[alerts.headers]\n' + _headers(70, 1),
     "alerts[0].headers", "has 70 keys"),
    ('[crash_loop.programs.shop]\nx = {a = {b = {c = {d = {e = 1}}}}}\n', "crash_loop.programs.shop.x.a.b.c",
     "is nested 7 levels deep"),
    ('[server.uvicorn]\nheaders = [' + ", ".join([f'"X-H: {"v" * 4000}"'] * 8) + "]\n", "server.uvicorn",
     "the worker's command line comes to"),
    ('[server]\nworkers = 512\n' + "".join(f'[[programs]]\nname = "p{i}"\ncommand = "x"\nnumprocs = 512\n'
                                          for i in range(2)), "server.workers", "1538 processes in all"),
    ('[server]\nworkers = 512\n[app.env]\n' + "".join(f'V{i} = "{"v" * 1000}"\n' for i in range(4)), "app.env",
     "supervisord would split"),
    ("".join(WEB.format(i=i) + "[alerts.headers]\n" + _headers(3, 4000) for i in range(4)), "alerts",
     "the listener's settings (every [[alerts]] entry) come to"),
    ("# padding\n" * 15000, "", "(15007 lines); a spec file may be at most 128 KB"),
]


@pytest.mark.parametrize("extra,key,words", HOSTILE_SHAPES)
def test_every_value_is_bounded_and_refused_in_one_line_naming_key_and_limit(extra, key, words):
    """Issue 18: a 400 kB app.env value made check take 9.5 s (supervisord's environment= parser
    is quadratic); nothing bounded sizes or counts."""
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        parse(extra)
    took = time.monotonic() - started
    text = str(info.value)
    assert "\n" not in text and text.startswith("/srv/app/supervisor-fastapi.toml: " + (f"{key}: " if key else ""))
    assert words in text, text
    assert took < 2.0, took


def test_the_largest_accepted_spec_is_rendered_and_loaded_quickly(tmp_path):
    """Just under every limit at once: supervisord's own parser still loads it within a second or two."""
    env = "".join(f'V{i} = "{"v" * 100}"\n' for i in range(3))
    programs = "".join(f'[[programs]]\nname = "p{i}"\ncommand = "x {"a" * 4000}"\nnumprocs = 8\n'
                       '[programs.env]\n' + "".join(f'P{j} = "{"p" * 200}"\n' for j in range(2)) for i in range(8))
    alerts = "".join(WEB.format(i=i) + "[alerts.headers]\n" + _headers(2, 1000) for i in range(8))
    text = spec_text(f"[server]\nworkers = 420\n[app.env]\n{env}{programs}{alerts}", run_dir=str(tmp_path / "run"))
    assert len(text) < limits.SPEC_CHARS
    started = time.monotonic()
    spec = parse_spec(text, str(tmp_path / "s.toml"), str(tmp_path), HOST)
    assert checks.conf_problem(spec) is None
    took = time.monotonic() - started
    assert took < 2.0, took
    # It is near the environment budget: 420 workers x app.env, 64 program processes, the listener.
    env_text = sum(n * len(ini.environment(program_environment(spec, own)))
                   for n, own in [(420, ())] + [(p.numprocs, p.env) for p in spec.programs])
    assert env_text > 0.8 * limits.ENVIRONMENT_TOTAL, env_text


def test_an_oversized_file_is_named_by_its_longest_line_before_toml_reads_it():
    text = spec_text('[[programs]]\nname = "a"\ncommand = "x"\n[[programs]]\nname = "b"\ncommand = "' + "y" * 300_000
                     + '"\n')
    assert limits.oversized_text(text) == ("programs[1].command", "line 12 is 293 KB long; a value may be at most "
                                                                  "4096 characters, a spec file may be at most 128 KB")
    assert limits.oversized_text(spec_text()) is None


# --- check warnings: the app as root, a spec with secrets others can read (issue 18, point 4) -------


def _warnings(tmp_path: Any, extra: str, mode: int, user: str = "", euid: int = 0) -> List[str]:
    source = tmp_path / "supervisor-fastapi.toml"
    text = spec_text(extra, run_dir=str(tmp_path / "run"))
    if user:
        text = text.replace("python = ", f'user = "{user}"\npython = ')
    source.write_text(text)
    os.chmod(source, mode)
    spec = parse_spec(text, str(source), str(tmp_path), HOST)
    return [f"{r.what}: {r.detail}" for r in checks.trust_checks(spec, euid) if r.warn and r.ok]


HOOK = ('[[alerts]]\ntype = "webhook"\nurl = "https://hooks.example.com/services/' + TOKEN + '"\n'
        '[alerts.headers]\nAuthorization = "Bearer x"\n')


def test_check_warns_when_the_app_runs_as_root(tmp_path):
    """Issue 18: check said nothing when app.user was root."""
    assert _warnings(tmp_path, "", 0o600, user="root") == [
        "app.user = 'root' is root: the web workers, the migration and [[programs]] run as root: the app can read "
        "every secret and change anything on this host; set app.user to an unprivileged user (like www-data)"]
    assert _warnings(tmp_path, "", 0o600)[0].startswith("app.user is not set and supervisord runs as root")
    assert _warnings(tmp_path, "", 0o600, euid=1000) == []  # it runs as the operator, who is not root
    assert _warnings(tmp_path, "", 0o600, user="nobody") == []


def test_check_warns_about_a_spec_with_secrets_others_can_read(tmp_path):
    """Issue 18: a spec holding a webhook token was world-readable without a word from check."""
    source = tmp_path / "supervisor-fastapi.toml"
    assert _warnings(tmp_path, HOOK + '[app.env]\nDATABASE_URL = "postgres://u:p@h/d"\n', 0o644, user="nobody") == [
        f"spec file is readable by others: {source} (mode 0644) holds secrets (alerts[0].url, "
        f"alerts[0].headers.Authorization, app.env.DATABASE_URL); run `chmod 600 {source}`"]
    assert _warnings(tmp_path, HOOK, 0o640, user="nobody")[0].startswith("spec file is readable by its group")
    assert _warnings(tmp_path, HOOK, 0o600, user="nobody") == []
    no_token = '[[alerts]]\ntype = "webhook"\nurl = "https://hooks.example.com/"\n[[alerts]]\ntype = "log"\n'
    assert _warnings(tmp_path, no_token, 0o644, user="nobody") == []


def test_a_huge_spec_file_is_refused_without_parsing_it(tmp_path):
    """find_spec parsed a -c file whole to look for [tool.supervisor-fastapi] (5 MB: ~1 s, 60 MB: 6 s
    of CPU) before the limits; a file over the limit is now never handed to the TOML parser."""
    from supervisor_fastapi.spec import load_spec

    path = tmp_path / "spec.toml"
    path.write_text('[app]\nname = "shop"\nasgi = "main:app"\n[app.env]\nBIG = "' + "x" * 40_000_000 + '"\n')
    started = time.process_time()
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    assert time.process_time() - started < 1.0
    assert str(info.value) == (f"{path}: app.env.BIG: line 5 is over 16 MB long; a value may be at most 4096 "
                               "characters, a spec file may be at most 128 KB")
