"""App output is bytes supervisord hands back raw over XML-RPC: control characters there must
neither crash `up` nor cost the alert its log tail (issue 16, point 5)."""

import sys

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until

# Colour codes, a SOH byte, a bell, a lone carriage return, bytes that are not UTF-8 and a
# two-byte character: what a real migration tool's output can hold.
MIGRATION = r"""
import sys
out = sys.stdout.buffer
out.write(b"migrating: step 1\n")
out.write(b"\x1b[31mERROR: relation users already exists\x1b[0m\n")
out.write(b"\x01SOH and a bell\x07 and a CR\rhere, latin-1 \xe9t\xe9, utf-8 \xc3\xa9t\xc3\xa9\n")
out.write(b"migration failed\n")
out.flush()
sys.exit(3)
"""


def test_control_bytes_in_a_failed_migrations_log_give_a_readable_tail_and_the_alert_keeps_it(deploy, tmp_path):
    script = tmp_path / "migrate.py"
    script.write_text(MIGRATION)
    with WebhookReceiver() as hook:
        d = deploy({"migrate": {"command": f"{sys.executable} {script}"},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, start=False)
        out = d.cli("up", "--timeout", "30")
        d.started = True  # teardown stops what up started
        print(out.stdout + out.stderr)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and "Error" not in out.stderr.replace("ERROR: relation", "")
        assert "web_migrate:web_migrate failed: migration exited with status 3" in out.stderr
        assert "ERROR: relation users already exists\n" in out.stderr  # colour codes gone, text kept
        assert "\\x01SOH and a bell\\x07" in out.stderr and "utf-8 \u00e9t\u00e9" in out.stderr
        assert "migration failed" in out.stderr
        assert not any(ch in out.stderr for ch in "\x1b\x01\x07\r")
        [(_, alert)] = wait_until(lambda: hook.alerts("migration_failed", "open"), 20, "the migration alert")
        tail = alert["details"]["log_tail"]
        assert "ERROR: relation users already exists" in tail and "migration failed" in tail, tail
        assert not any(ch in tail for ch in "\x1b\x01\x07\r"), tail
        # status reads the same answers: one table, no traceback.
        out = d.cli("status")
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
