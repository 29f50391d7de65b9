"""The app user owns run_dir/workers/: whatever it plants there changes nothing that `status`
and `restart` decide. Readers open only the names supervisord reports (issue 16, point 6)."""

import os
import time

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until

# The 3,000 files hid a worker's ready file behind the 1,024-entry listing cap with a
# probability of ~2/3 per worker on a hash-ordered ext4 folder; 10,000 make the old listing miss
# at least one of two workers' files in ~99 runs of 100.
PLANTED = 10_000


def test_ten_thousand_planted_files_change_neither_status_nor_restart(deploy):
    with WebhookReceiver() as hook:
        d = deploy({"alerts": [{"type": "webhook", "url": hook.url}]})
        for n in range(PLANTED):
            with open(os.path.join(d.layout.state_dir, f"junk-{n:05d}"), "w") as f:
                f.write('{"pid": 1, "ready": 1}')
        out = d.cli("status")
        print("\n" + out.stdout)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not listening yet" not in out.stdout and out.stdout.rstrip().endswith("ok")
        out = d.cli("restart", timeout=120)
        print(out.stdout + out.stderr)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "web: restarted 2" in out.stdout
        assert d.cli("status").returncode == 0
        time.sleep(1.0)  # an alert would be on its way by now (the listener sends within ms)
        assert hook.alerts() == [], hook.alerts()
        wait_until(lambda: d.get("/")[0] == 200, 5, "an answer")
