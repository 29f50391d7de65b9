"""The control plane inside supervisord against real faults: every scenario of issue #8.

A real supervisord from a generated conf, real uvicorn workers, real HTTP, a real webhook
receiver; faults are real too (kill -9, an app that fails at import, a failing migration,
supervisord shut down or killed, operator commands in an unexpected order).
"""

import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from typing import List

import pytest

from ..helpers_alerts import WebhookReceiver
from .conftest import wait_until
from .test_migrate import migration_script


def spawns(d, name: str = "web_00") -> List[float]:
    return list(d.process_state(name).get("spawns") or [])


def held(d, name: str = "web_00") -> dict:
    return d.process_state(name).get("held") or {}


def status_line(d, name: str) -> str:
    out = d.ctl("status").stdout
    return next((line for line in out.splitlines() if f":{name} " in line or line.startswith(f"{name} ")), out)


def ready_pids(d) -> List[int]:
    """Pids of web workers that serve; [] while supervisord does not answer (a reload, say)."""
    try:
        states, infos = d.rpc.fastapi_web.getWorkerStates(), d.infos()
    except (xmlrpc.client.Fault, OSError):
        return []
    return sorted(i["pid"] for i in infos
                  if i["group"] == "web" and i["statename"] == "RUNNING" and states.get(i["name"], {}).get("pid") ==
                  i["pid"])


# --- 1 and 5: capacity first; one spawn per retry -------------------------------------------


def test_an_app_dying_after_each_start_spawns_once_per_retry_with_growing_gaps_and_one_alert(deploy):
    """Done means: dying 1.5 s after each start, restarts 3, window 60, backoff_initial 2:
    at most 7 spawns in 40 s, one per retry, growing gaps, one open alert."""
    with WebhookReceiver() as hook:
        d = deploy({"server": {"workers": 1}, "app": {"env": {"CRASH_AFTER": "1.5"}},
                    "crash_loop": {"restarts": 3, "window": 60, "backoff_initial": 2, "jitter": 0},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, wait=False)
        first = wait_until(lambda: spawns(d), 15, "the first spawn")[0]
        wait_until(lambda: held(d), 20, "the crash-loop hold")
        line = status_line(d, "web_00")
        assert "BACKOFF" in line and "held by supervisor-fastapi until" in line, line
        time.sleep(max(0.0, first + 40 - time.time()))
        got = [t for t in spawns(d) if t <= first + 40]
        assert len(got) <= 7, [round(t - first, 1) for t in got]
        gaps = [round(b - a, 1) for a, b in zip(got, got[1:])]
        # After the incident opens (3 failures), every retry waits longer than the one before.
        held_gaps = gaps[2:]
        assert len(held_gaps) >= 2 and all(b > a for a, b in zip(held_gaps, held_gaps[1:])), gaps
        assert len(hook.alerts("crash_loop", "open")) == 1


def test_workers_killed_after_serving_are_restarted_at_once_and_alerted_once(deploy):
    with WebhookReceiver() as hook:
        d = deploy({"crash_loop": {"restarts": 3, "window": 60, "backoff_initial": 30},
                    "alerts": [{"type": "webhook", "url": hook.url}]})
        for n in range(6):
            old = next(i["pid"] for i in d.infos() if i["name"] == "web_00")
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_until(lambda old=old: [p for p in ready_pids(d) if p != old and p in
                                        [i["pid"] for i in d.infos() if i["name"] == "web_00"]], 10,
                       f"kill {n}: a new web_00 to be ready")
            assert time.monotonic() - t0 < 5.0
            assert not held(d), "a worker killed after it served must never be held"
        [opened] = wait_until(lambda: hook.alerts("killed", "open"), 5, "the kill alert")
        assert "web_00 killed by SIGKILL" in opened[1]["text"] and "out of memory?" in opened[1]["text"]
        assert hook.alerts("crash_loop") == []
        assert d.process_state("web_00")["kill_incident"]["kind"] == "killed"
        assert d.get("/")[0] == 200


def test_a_worker_that_fails_at_import_is_backed_off_but_a_healthy_one_keeps_serving(deploy, tmp_path):
    flag = tmp_path / "broken"
    d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "backoff_initial": 30}})
    flag.write_text("")
    os.kill(next(i["pid"] for i in d.infos() if i["name"] == "web_00"), signal.SIGKILL)
    wait_until(lambda: held(d, "web_00"), 20, "web_00 to be held")
    assert d.state_of("web_01") == "RUNNING" and d.get("/")[1]["worker"] == "web_01"


# --- 3: holds belong to one supervisord run ---------------------------------------------------


def crash_looping(d) -> None:
    wait_until(lambda: held(d, "web_00") and held(d, "web_01"), 30, "both workers held by the crash loop")


def test_down_fix_up_starts_every_worker_at_once_and_the_old_incident_is_closed(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    with WebhookReceiver() as hook:
        d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                    "crash_loop": {"restarts": 2, "backoff_initial": 120},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, wait=False)
        crash_looping(d)
        assert d.cli("down").returncode == 0
        # Closing the run's incidents at shutdown is best effort: supervisord stops the listener
        # right after the workers, and events still buffered for it then are dropped. What is
        # guaranteed is below: the new supervisord carries no old incident or hold.
        flag.unlink()
        t0 = time.monotonic()
        r = d.cli("up", "--timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 < 20 and len(ready_pids(d)) == 2
        assert d.process_state("web_00").get("incident") is None  # a new supervisord: no old incident


def test_shutdown_and_a_new_supervisord_start_every_worker_at_once(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "backoff_initial": 120}}, wait=False)
    crash_looping(d)
    d.ctl("shutdown")
    wait_until(lambda: not os.path.exists(d.layout.pidfile), 30, "supervisord to exit")
    flag.unlink()
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", d.conf_path], check=True, timeout=30)
    wait_until(lambda: len(ready_pids(d)) == 2, 20, "both workers to serve at once")


def test_up_while_running_clears_the_hold_and_starts_at_once(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "backoff_initial": 120}}, wait=False)
    crash_looping(d)
    flag.unlink()
    t0 = time.monotonic()
    r = d.cli("up", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cleared crash-loop holds" in r.stdout + r.stderr
    assert time.monotonic() - t0 < 20 and len(ready_pids(d)) == 2
    # Twice in a row is fine too.
    r = d.cli("up", "--timeout", "30")
    assert r.returncode == 0 and len(ready_pids(d)) == 2


def test_up_applies_a_changed_crash_loop_policy_to_the_running_controller(deploy, tmp_path):
    """A changed [crash_loop] changes no group (only the plugin section's options), so no
    `update` event carries it: `up` must still make the running controller use it."""
    # Fails under supervisord only, so `up`'s pre-flight import passes and it gets to apply the conf.
    d = deploy({"app": {"env": {"IMPORT_FAILS_UNDER_SUPERVISOR": "still broken"}},
                "crash_loop": {"restarts": 2, "backoff_initial": 120, "jitter": 0}}, wait=False)
    crash_looping(d)
    assert d.control_state()["settings"]["crash_loop"].startswith("restarts=2 window=60 backoff_initial=120 ")
    with open(d.spec_path) as f:
        text = f.read()
    with open(d.spec_path, "w") as f:
        f.write(text.replace("backoff_initial = 120", "backoff_initial = 2"))
    r = d.cli("up", "--timeout", "20")
    assert r.returncode == 1, r.stdout + r.stderr  # still broken: held again, now with the new policy
    state = d.control_state()
    assert state["settings"]["crash_loop"].startswith("restarts=2 window=60 backoff_initial=2 "), state["settings"]

    def held_soon():
        st = d.control_state()
        holds = [p["held"]["until"] - st["now"] for ns, p in st["processes"].items()
                 if ns.startswith("web:") and p.get("held") and p["held"].get("until")]
        return holds

    holds = wait_until(held_soon, 30, "a new crash-loop hold")
    assert max(holds) < 10, f"held for {max(holds):.0f} s: the old 120 s policy"


def test_a_listener_restart_keeps_the_hold_and_the_incident(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy({"app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "backoff_initial": 120}}, wait=False)
    crash_looping(d)
    before = d.process_state("web_00")["incident"]
    listener = d.running_listener()
    os.kill(listener["pid"], signal.SIGKILL)
    wait_until(lambda: next((i for i in d.infos() if i["name"] == "web_listener" and i["statename"] == "RUNNING"
                             and i["pid"] != listener["pid"]), None), 15, "the listener to come back")
    assert held(d, "web_00") and d.process_state("web_00")["incident"]["opened"] == before["opened"]
    assert d.state_of("web_00") == "BACKOFF"


# --- 4: the gate holds on every start path ----------------------------------------------------


def failing_migration(tmp_path, flag, hook_url: str = "") -> dict:
    over = {"migrate": {"command": migration_script(tmp_path), "env": {"MIGRATE_FAIL_WHILE": str(flag)}}}
    if hook_url:
        over["alerts"] = [{"type": "webhook", "url": hook_url}]
    return over


def refused(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def gate_holds(d) -> bool:
    return all(d.state_of(n) == "BACKOFF" and held(d, n).get("kind") == "gate" for n in ("web_00", "web_01"))


def test_no_start_path_brings_up_a_worker_while_the_migration_failed(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy(failing_migration(tmp_path, flag), wait=False)
    wait_until(lambda: d.control_state()["gate"]["state"] == "failed", 20, "the gate to fail")
    wait_until(lambda: gate_holds(d), 10, "both workers held by the gate")
    assert "held by supervisor-fastapi: web_migrate exited with status 3" in status_line(d, "web_00")
    # Nobody is going to accept: the plugin lets the socket go, so clients are refused, not queued.
    wait_until(lambda: refused(d.port), 25, "connections to be refused while the gate is shut")
    r = d.cli("restart")
    assert r.returncode == 1 and "the migration gate is shut" in r.stdout + r.stderr
    for args in (["start", "web:*"], ["restart", "web:*"], ["start", "web:web_00"], ["update"],
                 ["rolling_restart"]):
        d.ctl(*args)
        time.sleep(1.5)  # a spawn would be STARTING or RUNNING by now
        assert gate_holds(d), (args, d.ctl("status").stdout)
    d.ctl("reload")  # the migration runs again (autostart) and fails again
    time.sleep(2)
    wait_until(lambda: d.control_state()["gate"]["state"] == "failed", 30, "the gate to fail after reload")
    time.sleep(1.5)
    assert gate_holds(d), d.ctl("status").stdout
    assert all(i["pid"] == 0 for i in d.infos() if i["group"] == "web")


def test_a_failed_rerun_keeps_running_workers_serving_and_starts_none(deploy, tmp_path):
    flag = tmp_path / "broken"
    with WebhookReceiver() as hook:
        d = deploy(failing_migration(tmp_path, flag, hook.url))
        flag.write_text("")
        d.ctl("start", "web_migrate")
        [opened] = wait_until(lambda: hook.alerts("migration_failed", "open"), 20, "the migration alert")
        assert "the 2 worker(s) already running keep serving the previous release" in opened[1]["text"]
        assert d.get("/")[0] == 200
        old = next(i["pid"] for i in d.infos() if i["name"] == "web_00")
        os.kill(old, signal.SIGKILL)  # a crash respawn would bring up the new code
        wait_until(lambda: d.state_of("web_00") == "BACKOFF", 10, "web_00 held by the gate")
        time.sleep(1.5)
        assert d.state_of("web_00") == "BACKOFF" and held(d, "web_00")["kind"] == "gate"
        assert d.get("/")[1]["worker"] == "web_01"
        status = d.cli("status")
        assert "migration gate: failed" in status.stdout and status.returncode == 1


# --- 5: the gate opens in every legitimate flow -----------------------------------------------


def test_render_and_update_with_a_changed_group_starts_it(deploy, tmp_path):
    d = deploy({"migrate": {"command": migration_script(tmp_path)}, "server": {"workers": 3}})
    text = open(d.spec_path).read().replace("workers = 3", "workers = 2")
    with open(d.spec_path, "w") as f:
        f.write(text)
    assert d.cli("render").returncode == 0
    out = d.ctl("update").stdout
    assert "web: updated process group" in out or "web: stopped" in out, out
    wait_until(lambda: len(ready_pids(d)) == 2, 20, "the re-added group to serve")


def test_reload_reruns_the_migration_and_then_starts_the_workers(deploy, tmp_path):
    d = deploy({"migrate": {"command": migration_script(tmp_path), "env": {"MIGRATE_SECONDS": "1"}}})
    d.ctl("reload")
    time.sleep(2)
    wait_until(lambda: len(ready_pids(d)) == 2, 30, "the workers after reload")
    assert d.control_state()["gate"]["state"] == "open"


def test_up_at_once_after_a_failed_up_opens_the_gate(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    d = deploy(failing_migration(tmp_path, flag), start=False)
    r = d.cli("up", "--timeout", "20")
    d.started = True
    assert r.returncode != 0 and "web_migrate" in r.stdout + r.stderr
    flag.unlink()
    r = d.cli("up", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(ready_pids(d)) == 2


# --- 6: faults of the host -------------------------------------------------------------------


def test_supervisord_killed_with_9_down_stops_the_orphans_and_up_replaces_them(deploy):
    # up alone also recovers (test_recovery.py); it names the old workers it replaces.
    d = deploy()
    from supervisor_fastapi.contracts.files import pid_alive as _alive

    workers = [i["pid"] for i in d.infos() if i["group"] == "web"]
    supervisord = int(open(d.layout.pidfile).read())
    os.kill(supervisord, signal.SIGKILL)
    wait_until(lambda: not _alive(supervisord), 10, "supervisord to be gone")
    r = d.cli("down")
    assert r.returncode == 0, r.stderr
    assert not any(_alive(pid) for pid in workers)
    r = d.cli("up", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    workers = [i["pid"] for i in d.infos() if i["group"] == "web"]
    os.kill(int(open(d.layout.pidfile).read()), signal.SIGKILL)
    r = d.cli("up", "--timeout", "30")
    assert r.returncode == 0 and "web_00" in r.stderr and str(workers[0]) in r.stderr, r.stdout + r.stderr
    wait_until(lambda: not any(_alive(pid) for pid in workers), 30, "the old workers to be replaced")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_run_dir_loses_no_incident_and_the_state_is_saved_once_there_is_room(deploy, tmp_path):
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(run_dir)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    d = None
    try:
        flag = tmp_path / "broken"
        with WebhookReceiver() as hook:
            d = deploy({"supervisord": {"run_dir": str(run_dir)}, "app": {"env": {"FAIL_IMPORT_WHILE": str(flag)}},
                        "crash_loop": {"restarts": 2, "backoff_initial": 120},
                        "alerts": [{"type": "webhook", "url": hook.url}, {"type": "log"}]})
            filler = run_dir / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
            # Killed workers are still replaced at once, and serve, though no file can grow.
            for _ in range(3):
                old = next(i["pid"] for i in d.infos() if i["name"] == "web_00")
                os.kill(old, signal.SIGKILL)
                wait_until(lambda old=old: [p for p in ready_pids(d) if p != old and p in
                                            [i["pid"] for i in d.infos() if i["name"] == "web_00"]], 10,
                           "a new web_00 to serve on a full disk")
            assert not held(d, "web_00") and d.process_state("web_00")["kill_incident"]["kind"] == "killed"
            flag.write_text("")
            for name in ("web_00", "web_01"):
                os.kill(next(i["pid"] for i in d.infos() if i["name"] == name), signal.SIGKILL)
            wait_until(lambda: hook.alerts("crash_loop", "open"), 30, "the crash-loop alert, disk full")
            listener = d.running_listener()
            os.kill(listener["pid"], signal.SIGKILL)
            wait_until(lambda: next((i for i in d.infos() if i["name"] == "web_listener" and
                                     i["statename"] == "RUNNING" and i["pid"] != listener["pid"]), None), 20,
                       "the listener to come back on a full disk")
            assert held(d, "web_00") and d.process_state("web_00")["incident"]["kind"] == "crash_loop"
            filler.unlink()
            flag.unlink()
            r = d.cli("up", "--timeout", "30")
            assert r.returncode == 0, r.stdout + r.stderr
            wait_until(lambda: (d.listener_state().get("last_alert") or {}).get("kind") == "crash_loop", 15,
                       "the listener state saved again")
            for path in (d.layout.alerts_log, d.layout.alert_journal):
                if os.path.exists(path):
                    for line in open(path).read().splitlines():
                        assert line.startswith("{") and line.endswith("}"), f"a partial line in {path}: {line!r}"
    finally:
        if d is not None:
            d.stop()
        subprocess.run(["umount", "-l", str(run_dir)])
