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


def test_up_refuses_workers_that_check_says_do_not_fit_unless_told(deploy):
    d = deploy({"memory": {"per_worker": "64TB"}}, start=False)
    out = d.cli("check")
    [line] = [ln for ln in out.stdout.splitlines() if "memory capacity" in ln]
    assert out.returncode == 1 and line.startswith("FAIL memory capacity: 2 workers x 64 TB = 128 TB > "), line
    problem = line.split("memory capacity: ", 1)[1]
    out = d.cli("up", "--timeout", "30")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip() == (f"error: {d.spec_path}: memory capacity: {problem}; nothing was started "
                                  "(`up --over-capacity` starts them anyway)"), out.stderr
    assert not os.path.exists(d.layout.socket) and not os.path.exists(d.layout.pidfile)
    out = d.cli("up", "--timeout", "30", "--over-capacity")
    d.started = True
    assert out.returncode == 0, out.stdout + out.stderr
    assert "over capacity, starting anyway (--over-capacity): 2 workers x 64 TB" in out.stderr
    assert d.get("/")[0] == 200
