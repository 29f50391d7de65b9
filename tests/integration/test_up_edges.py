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


def up_in_background(d):
    import subprocess
    import sys

    # SIGINT as a terminal's Ctrl-C delivers it: a test run in the background (`pytest &`) has
    # it ignored, which its children would inherit, and Python then installs no handler.
    return subprocess.Popen([sys.executable, "-m", "supervisor_fastapi", "up", "-c", d.spec_path, "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_second_up_and_a_down_during_up_say_so_in_one_line_and_ctrl_c_says_what_is_left(deploy, tmp_path):
    hang = tmp_path / "db-down"
    hang.write_text("")  # lifespan start-up waits for a database that does not answer
    d = deploy({"app": {"env": {"HANG_STARTUP_WHILE": str(hang)}}}, start=False)
    first = up_in_background(d)
    d.started = True
    try:
        wait_until(lambda: os.path.exists(d.layout.socket) and d.infos(), 30, "supervisord to answer")
        for command in ("up", "down"):
            out = d.cli(command, timeout=30)
            print(out.stdout + out.stderr)
            assert out.returncode == 1, out.stdout + out.stderr
            [line] = out.stderr.splitlines()
            assert line.startswith(f"error: another supervisor-fastapi command is working on this deployment "
                                   f"(`up` pid {first.pid}; lock {d.layout.operation_lock}); wait for it"), line
        assert first.poll() is None and d.state_of("web_00") in ("STARTING", "RUNNING")
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    print(err)
    assert first.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == ("interrupted: supervisord is still running with what it started; "
                                    "`supervisor-fastapi status` shows it, `supervisor-fastapi up` again continues, "
                                    "`supervisor-fastapi down` stops it")
    out = d.cli("up", "--timeout", "3")
    assert out.returncode == 1 and "timed out after 3 s" in out.stderr, out.stderr
    assert out.stderr.rstrip().endswith("`supervisor-fastapi down` stops it"), out.stderr
    hang.unlink()
    out = d.cli("up", "--timeout", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert d.cli("down").stdout.strip() == "stopped"
