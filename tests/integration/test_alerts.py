"""Alert delivery through the real listener: slow and dead webhooks, email over STARTTLS, alert-test."""

import json
import re
import time
from datetime import datetime

from supervisor_fastapi.contracts.rpc import notify
from supervisor_fastapi.listener.redaction import redact_url

from ..helpers_alerts import SmtpReceiver, WebhookReceiver, closed_port, self_signed_cert
from .conftest import wait_until


def read_lines(path: str) -> list:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def ack_times(d) -> list:
    """Seconds from each event handed to the listener to its result, from supervisord's debug log."""
    sent, out = None, []
    with open(d.layout.logfile, errors="replace") as f:
        for line in f:
            m = re.match(r"^(\S+ \S+) DEBG (event \d+ sent to listener web_listener|web_listener: BUSY -> "
                         r"ACKNOWLEDGED)", line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if m.group(2).startswith("event"):
                sent = t
            elif sent is not None:
                out.append(t - sent)
                sent = None
    return out


def test_slow_and_dead_webhooks_never_delay_acks_and_undelivered_alerts_are_journaled(deploy):
    with WebhookReceiver(delay=3.0) as slow:
        dead = f"http://127.0.0.1:{closed_port()}/hook"
        d = deploy({"supervisord": {"log_level": "debug"}, "listener": {"send_retries": 1},
                    "alerts": [{"type": "webhook", "name": "slow", "url": slow.url, "timeout": 10},
                               {"type": "webhook", "name": "dead", "url": dead},
                               {"type": "log", "name": "file"}]})
        kinds = [f"hung_worker_{i}" for i in range(5)]
        sent = time.time()
        for kind in kinds:
            notify(d.rpc, "web", kind, "web_01", f"{kind} happened", {"n": 1})
        d.rpc.supervisor.stopProcess("web:web_00")
        d.rpc.supervisor.startProcess("web:web_00", False)
        # The log channel has every alert at once, although the slow webhook holds 3 s each.
        log_path = f"{d.layout.run_dir}/alerts.log"
        wait_until(lambda: len(read_lines(log_path)) >= 5, 5, "5 alerts in the log channel")
        assert sorted(a["kind"] for a in read_lines(log_path)) == kinds
        assert time.time() - sent < 3.0
        # Dead channel: one retry for the first alert, single tries while it stays down, all journaled.
        journal = wait_until(lambda: [e for e in read_lines(d.layout.alert_journal) if e["channel"] == "dead"]
                             if len(read_lines(d.layout.alert_journal)) >= 5 else None, 15, "5 journal entries")
        assert sorted(e["alert"]["kind"] for e in journal) == kinds
        assert all("Connection refused" in e["error"] for e in journal), journal[0]["error"]
        wait_until(lambda: slow.alerts(kinds[0]), 10, "the first alert at the slow webhook")
        # Every event, including the 5 REMOTE_COMMUNICATION ones and the restart's state
        # changes, was acknowledged promptly while the channels were slow or down.
        times = ack_times(d)
        assert len(times) >= 10, times
        assert max(times) < 0.5, times
        print(f"ack times: n={len(times)} max={max(times) * 1000:.1f} ms")
        # The state file reports per-channel results once every channel is done with an alert.
        last = wait_until(lambda: json.load(open(d.layout.listener_state))["last_alert"], 10, "last_alert")
        assert last["results"]["slow"] == "sent"
        assert last["results"]["dead"].startswith("journaled: ")
        assert last["results"]["file"] == "sent"


def test_email_over_starttls_with_credentials_from_the_environment(deploy, tmp_path, monkeypatch):
    cert, key = self_signed_cert(str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the listener verifies the server like any other
    monkeypatch.setenv("ALERT_SMTP_USER", "alerts")
    monkeypatch.setenv("ALERT_SMTP_PASSWORD", "s3cret")
    with SmtpReceiver(cert, key) as smtp:
        d = deploy({"alerts": [{"type": "email", "host": "127.0.0.1", "port": smtp.port, "from": "sf@example.com",
                                "to": ["ops@example.com"], "username_env": "ALERT_SMTP_USER",
                                "password_env": "ALERT_SMTP_PASSWORD"}]})
        notify(d.rpc, "web", "memory_recycle", "web_01", "web_01 used 1.2 GB; recycled", {"rss_mb": 1229})
        wait_until(lambda: smtp.messages, 10, "the alert email")
        msg = smtp.messages[0][1]
        assert "EVENT memory_recycle: web_01 used 1.2 GB; recycled" in msg["Subject"]
        assert msg["To"] == "ops@example.com"
        assert "rss_mb: 1229" in msg.get_content()
        assert smtp.logins == ["alerts"]
        # alert-test from the shell reports the channel.
        out = d.cli("alert-test")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "email (email, to ops@example.com): sent" in out.stdout
        wait_until(lambda: len(smtp.messages) == 2, 10, "the test email")
        # A wrong password fails, and alert-test says so and exits 1.
        monkeypatch.setenv("ALERT_SMTP_PASSWORD", "wrong")
        out = d.cli("alert-test")
        assert out.returncode == 1
        assert "email (email, to ops@example.com): FAILED: SMTP 127.0.0.1" in out.stdout


def test_alert_test_reports_each_channel(deploy, tmp_path):
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "name": "up", "url": hook.url},
                               {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{closed_port()}/"},
                               {"type": "command", "name": "script", "command": f"tee {tmp_path}/alert.json",
                                "run_as_root": True},
                               {"type": "log", "name": "file", "path": str(tmp_path / "alerts.log")}]},
                   start=False)
        out = d.cli("alert-test")
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"up (webhook, url {redact_url(hook.url)}): sent")
        assert lines[1].startswith("down (webhook, url http://127.0.0.1:") and "FAILED" in lines[1]
        assert lines[2] == f"script (command, command tee {tmp_path}/alert.json): sent"
        assert lines[3] == f"file (log, path {tmp_path}/alerts.log): sent"
        assert hook.alerts("test", "test")[0][1]["text"].startswith("[web@")
        assert json.load(open(tmp_path / "alert.json"))["event"] == "test"
