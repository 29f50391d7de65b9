"""Alert channels, retries, the dispatcher and the journal (real loopback receivers, fake sleep)."""

import json
import os
import sys
import threading
import time
from typing import Any, Dict, List

import pytest

from supervisor_fastapi.generate.conf import listener_config
from supervisor_fastapi.listener.channels import (
    Channel,
    CommandChannel,
    EmailChannel,
    LogChannel,
    SendError,
    WebhookChannel,
    channels_from_alerts,
)
from supervisor_fastapi.listener.delivery import Dispatcher, Journal, deliver
from supervisor_fastapi.listener.logfile import append_line
from supervisor_fastapi.listener.message import full_text, make_message
from supervisor_fastapi.spec import HostDefaults, parse_spec

from ..helpers_alerts import SmtpReceiver, WebhookReceiver, closed_port, self_signed_cert


def msg(kind: str = "crash_loop", **details: Any) -> Dict[str, Any]:
    return make_message("open", kind, "web_00", "web_00 crashed 3 times in 4 s", details, "web", 1000.0, host="h")


def test_message_has_a_slack_text_and_structured_fields():
    m = msg(exits=3, log_tail="line 1\nTraceback")
    assert m["text"] == "[web@h] OPEN crash_loop: web_00 crashed 3 times in 4 s"
    assert (m["event"], m["kind"], m["process"], m["app"], m["at_iso"]) == (
        "open", "crash_loop", "web_00", "web", "1970-01-01T00:16:40Z")
    body = full_text(m)
    assert "exits: 3" in body and body.endswith("--- last lines of the log ---\nline 1\nTraceback\n")


class Flaky(Channel):
    name, type = "flaky", "log"

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def send(self, m: Dict[str, Any]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise SendError(f"failure {self.calls}")


def test_deliver_retries_with_doubling_delays_then_reports_the_last_error():
    sleeps: List[float] = []
    assert deliver(Flaky(2), msg(), 3, sleeps.append) is None
    assert sleeps == [1.0, 2.0]
    sleeps.clear()
    assert deliver(Flaky(9), msg(), 3, sleeps.append) == "failure 4"
    assert sleeps == [1.0, 2.0, 4.0]


def wait_for(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return check()


def test_dispatcher_journals_what_cannot_be_delivered_and_reports_per_channel(tmp_path):
    results: List[Any] = []
    ok, bad = Flaky(0), Flaky(99)
    ok.name, bad.name = "ok", "bad"
    d = Dispatcher([ok, bad], Journal(str(tmp_path / "j.jsonl")), retries=2, sleep=lambda s: None,
                   on_result=lambda m, r: results.append(r)).start()
    d.submit(msg("a"))
    d.submit(msg("b"))
    wait_for(lambda: len(results) == 2)
    d.close()
    assert results[0] == {"ok": "sent", "bad": "journaled: failure 3"}
    # The first failure used the retries; while the channel stays down the next gets one try.
    assert bad.calls == 3 + 1
    journal = [json.loads(line) for line in open(tmp_path / "j.jsonl")]
    assert [(e["channel"], e["alert"]["kind"]) for e in journal] == [("bad", "a"), ("bad", "b")]


def test_submit_never_blocks_on_a_hung_channel_and_close_journals_the_backlog(tmp_path):
    gate = threading.Event()

    class Hung(Channel):
        name, type = "hung", "webhook"

        def send(self, m: Dict[str, Any]) -> None:
            gate.wait(10)
            raise SendError("gave up")

    d = Dispatcher([Hung()], Journal(str(tmp_path / "j.jsonl")), retries=0).start()
    t0 = time.perf_counter()
    for i in range(200):
        d.submit(msg(f"k{i}"))
    assert time.perf_counter() - t0 < 0.1
    d.close(timeout=0.3)
    journal = [json.loads(line) for line in open(tmp_path / "j.jsonl")]
    gate.set()
    # Every alert is journaled when close returns: the queued ones, and the one mid-send
    # (it may or may not have arrived; better twice than never).
    assert sorted(e["alert"]["kind"] for e in journal) == sorted(f"k{i}" for i in range(200))
    errors = {e["alert"]["kind"]: e["error"] for e in journal}
    assert errors["k0"].startswith("listener stopped while sending")
    assert errors["k199"] == "listener stopped before the alert was sent"


def test_webhook_posts_json_with_text_and_headers_and_fails_on_http_errors():
    with WebhookReceiver() as hook:
        WebhookChannel("w", hook.url, 2.0, (("X-Token", "t"),)).send(msg())
        _, body = hook.received[0]
        assert body["text"].startswith("[web@h] OPEN") and body["kind"] == "crash_loop"
    with WebhookReceiver(status=500) as hook, pytest.raises(SendError, match="HTTP 500"):
        WebhookChannel("w", hook.url).send(msg())
    with pytest.raises(SendError, match="Connection refused"):
        WebhookChannel("w", f"http://127.0.0.1:{closed_port()}/").send(msg())
    with WebhookReceiver(delay=2.0) as hook, pytest.raises(SendError, match="timed out"):
        WebhookChannel("w", hook.url, timeout=0.3).send(msg())


def test_command_gets_the_alert_json_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    CommandChannel("c", f"{sys.executable} -c 'import sys; open(\"{out}\", \"w\").write(sys.stdin.read())'",
                   run_as_root=True).send(msg())
    assert json.loads(out.read_text())["process"] == "web_00"
    with pytest.raises(SendError, match="exited with status 3"):
        CommandChannel("c", f"{sys.executable} -c 'import sys; sys.exit(3)'", run_as_root=True).send(msg())
    with pytest.raises(SendError, match="No such file"):
        CommandChannel("c", "/nonexistent/notify", run_as_root=True).send(msg())
    with pytest.raises(SendError, match="did not finish within 0.2 s"):
        CommandChannel("c", "sleep 5", timeout=0.2, run_as_root=True).send(msg())


def test_log_channel_appends_json_lines(tmp_path):
    c = LogChannel("l", str(tmp_path / "alerts.log"))
    c.send(msg("a"))
    c.send(msg("b"))
    assert [json.loads(x)["kind"] for x in open(tmp_path / "alerts.log")] == ["a", "b"]
    with pytest.raises(SendError):
        LogChannel("l", str(tmp_path / "missing" / "alerts.log")).send(msg())


def test_append_line_rotates_at_the_size_limit_and_keeps_the_newest_files(tmp_path):
    path = str(tmp_path / "alerts.log")
    for i in range(10):
        append_line(path, {"i": i, "pad": "x" * 80}, max_bytes=250, keep=2)  # two ~100-byte lines a file
    files = [path, path + ".1", path + ".2"]
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(f) for f in files] + ["alerts.log.lock"])
    lines = [[json.loads(x)["i"] for x in open(f)] for f in files]
    assert lines == [[8, 9], [6, 7], [4, 5]]
    assert all(os.path.getsize(f) <= 250 for f in files)


def test_append_line_loses_no_line_when_threads_rotate_together(tmp_path):
    path = str(tmp_path / "journal.jsonl")

    def writer(t: int) -> None:
        for i in range(200):
            append_line(path, {"t": t, "i": i}, max_bytes=2000, keep=1000)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    seen = [json.loads(line) for f in os.listdir(tmp_path) if not f.endswith(".lock") for line in open(tmp_path / f)]
    assert len(seen) == 800 and {(e["t"], e["i"]) for e in seen} == {(t, i) for t in range(4) for i in range(200)}
    assert all(os.path.getsize(tmp_path / f) <= 2000 for f in os.listdir(tmp_path))


def email_opts(port: int, **over: Any) -> Dict[str, Any]:
    opts = {"host": "127.0.0.1", "port": port, "starttls": True, "ssl": False, "from": "sf@example.com",
            "to": ("ops@example.com", "dev@example.com"), "username_env": "U", "password_env": "P", "timeout": 5.0,
            "subject_prefix": "[sf]"}
    opts.update(over)
    return opts


def test_email_uses_starttls_verifies_the_server_and_takes_credentials_from_the_environment(tmp_path, monkeypatch):
    cert, key = self_signed_cert(str(tmp_path))
    with SmtpReceiver(cert, key) as smtp:
        env = {"U": "alerts", "P": "s3cret"}
        # Without trusting the test CA, verification fails: STARTTLS is not opportunistic.
        with pytest.raises(SendError, match="CERTIFICATE_VERIFY_FAILED"):
            EmailChannel("e", email_opts(smtp.port), env).send(msg())
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        EmailChannel("e", email_opts(smtp.port), env).send(msg(log_tail="Traceback: boom"))
        got = wait_for(lambda: smtp.messages)[0][1]
        assert got["Subject"] == "[sf] [web@h] OPEN crash_loop: web_00 crashed 3 times in 4 s"
        assert got["To"] == "ops@example.com, dev@example.com"
        assert "Traceback: boom" in got.get_content()
        with pytest.raises(SendError, match="environment variable P is not set"):
            EmailChannel("e", email_opts(smtp.port), {"U": "alerts"}).send(msg())
        with pytest.raises(SendError, match="SMTP 127.0.0.1"):  # 535, or a closed session, per mechanism
            EmailChannel("e", email_opts(smtp.port, timeout=1.0), {"U": "alerts", "P": "wrong"}).send(msg())
        assert len(smtp.messages) == 1


def test_channels_default_to_a_log_file_in_run_dir(tmp_path):
    spec = parse_spec('[app]\nname = "web"\nasgi = "m:app"\n', str(tmp_path / "s.toml"), str(tmp_path),
                      HostDefaults(python="python3", cpu_count=2))
    settings = listener_config(spec)
    [c] = channels_from_alerts(settings.alerts, settings.base_dir, settings.run_dir, {})
    assert isinstance(c, LogChannel) and c.path == os.path.join(spec.run_dir, "alerts.log")


def test_the_listener_settings_carry_every_channel_through_the_conf(tmp_path):
    from supervisor_fastapi.contracts.settings import ListenerConfig

    text = ('[app]\nname = "web"\nasgi = "m:app"\n[[alerts]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/h"\n'
            'headers = { X-Token = "t" }\n[[alerts]]\ntype = "email"\nhost = "127.0.0.1"\nfrom = "a@b.c"\n'
            'to = ["o@b.c", "d@b.c"]\n')
    spec = parse_spec(text, str(tmp_path / "s.toml"), str(tmp_path), HostDefaults(python="python3", cpu_count=2))
    settings = ListenerConfig.from_env(listener_config(spec).to_env())
    hook, mail = channels_from_alerts(settings.alerts, settings.base_dir, settings.run_dir, {})
    assert isinstance(hook, WebhookChannel) and hook.url == "http://127.0.0.1:9/h" and hook.headers == {"X-Token": "t"}
    assert isinstance(mail, EmailChannel) and list(mail.opts["to"]) == ["o@b.c", "d@b.c"]
