"""`supervisor-fastapi status` and the supervisorctl plugin commands on a real deployment."""

import json

from .conftest import wait_until
from .test_restart_socket import ready_pids


def test_status_text_json_and_exit_code(deploy):
    d = deploy({"memory": {"limit": "1GB"}})
    wait_until(lambda: d.state_of("web_watchdog") == "RUNNING", 20, "the watchdog to run")
    out = d.cli("status")
    print("\n" + out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("web:web_00", "web:web_01", "web_listener", "web_watchdog"):
        assert name in out.stdout
    assert "last alert:" in out.stdout and out.stdout.rstrip().endswith("ok")

    data = json.loads(d.cli("status", "--json").stdout)
    rows = {r["name"]: r for r in data["processes"]}
    web0 = rows["web:web_00"]
    assert web0["state"] == "RUNNING" and web0["pid"] > 0 and web0["ready"] is True
    assert web0["rss"] > 1024 * 1024 and web0["uptime"] >= 0 and web0["restarts_1h"] >= 0
    assert data["ok"] is True and data["socket_holds"][0]["url"] == f"tcp://127.0.0.1:{d.port}"

    # At rest the listener has exited (the plugin starts it for the next event that needs it):
    # that is not a problem, and status says what it is.
    wait_until(lambda: d.state_of("web_listener") == "EXITED", 30, "the listener's idle exit")
    out = d.cli("status")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("ok"), out.stdout
    assert "idle: started for the next event that needs it" in out.stdout, out.stdout

    d.ctl("stop", "web:web_01")
    out = d.cli("status")
    assert out.returncode == 1 and "DOWN: web:web_01" in out.stdout, out.stdout
    assert json.loads(d.cli("status", "--json").stdout)["down"] == ["web:web_01"]


def test_supervisorctl_plugin_commands(deploy):
    d = deploy()
    out = d.ctl("fastapi_status")
    print("\n" + out.stdout)
    assert "web:web_00" in out.stdout and "RUNNING" in out.stdout
    before = ready_pids(d)
    out = d.ctl("rolling_restart")
    print(out.stdout)
    assert "web: restarted 2" in out.stdout, out.stdout
    after = ready_pids(d)
    assert after and not (after & before)
    out = d.ctl("help", "rolling_restart")
    assert "one at a time" in out.stdout


def test_status_shows_a_crash_loop_incident_with_its_next_retry(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.touch()
    d = deploy({"server": {"workers": 2},
                "app": {"env": {"CRASH_AFTER": "1.5", "CRASH_WHILE": str(flag)}},
                "crash_loop": {"restarts": 2, "window": 60, "backoff_initial": 30, "backoff_max": 60, "jitter": 0}},
               wait=False)

    def incident_shown():
        out = d.cli("status")
        return out.returncode == 1 and "next retry" in out.stdout and out

    out = wait_until(incident_shown, 60, "status to show the crash-loop incident")
    print("\n" + out.stdout)
    data = json.loads(d.cli("status", "--json").stdout)
    held = [r for r in data["processes"] if r["incident"]]
    assert held and held[0]["incident"]["kind"] == "crash_loop" and held[0]["incident"]["next_retry"]
    assert held[0]["restarts_1h"] >= 1
    # The incident comes from the controller at once; the last alert from the listener's state
    # file, written once the channel has answered: wait for the state asserted (issue #10).
    data = wait_until(lambda: (lambda j: j if (j.get("last_alert") or {}).get("kind") == "crash_loop" else None)(
        json.loads(d.cli("status", "--json").stdout)), 15, "the last alert in status")
    assert data["last_alert"]["kind"] == "crash_loop"
