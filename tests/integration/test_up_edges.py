"""The smaller operator edges of issue 16, point 8, on a real supervisord."""

import os
import signal

from .conftest import wait_until
from .test_control_plane import held


def test_restart_with_every_worker_held_fails_with_one_clear_line(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "backoff_initial": 120}}, wait=False)
    wait_until(lambda: held(d, "web_00") and held(d, "web_01"), 40, "both workers held by the crash loop")
    out = d.cli("restart")
    print(out.stdout + out.stderr)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "web: restarted 0, skipped 2; FAILED at web: no worker was restarted" in out.stdout
    assert "Traceback" not in out.stderr
