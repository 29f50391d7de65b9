"""The status view: rows, problems and the table, from supervisord's answers as data."""

import json

from supervisor_fastapi.cli.statusview import app_groups, collect_status, format_status

INFOS = [
    {"name": "web_00", "group": "web", "statename": "RUNNING", "pid": 10, "start": 1000, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
    {"name": "web_01", "group": "web", "statename": "STOPPED", "pid": 0, "start": 1000, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
    {"name": "web_listener", "group": "web_listener", "statename": "RUNNING", "pid": 9, "start": 900,
     "now": 4600, "spawnerr": "", "exitstatus": 0},
    {"name": "web_migrate", "group": "web_migrate", "statename": "EXITED", "pid": 0, "start": 900,
     "now": 4600, "spawnerr": "", "exitstatus": 0},
    {"name": "other", "group": "other", "statename": "FATAL", "pid": 0, "start": 0, "now": 4600,
     "spawnerr": "", "exitstatus": 0},
]
INFOS += [{"name": "web_admin_00", "group": "web_admin", "statename": "FATAL", "pid": 0, "start": 0, "now": 4600,
           "spawnerr": "", "exitstatus": 0}]  # another app, named like this one's programs
LISTENER = {"last_alert": {"at": 4500.0, "kind": "crash_loop", "summary": "web_01 crashed 3 times in 60 s",
                           "results": {"log": "ok"}}}
CONTROL = {"since": 100.0, "gate": {"state": "open", "detail": "web_migrate exited 0"},
           "processes": {"web:web_01": {"state": "BACKOFF",
                                        "incident": {"kind": "crash_loop", "opened": 4500.0, "next_retry": 4660.0,
                                                     "delay": 60, "summary": "web_01 failed 3 times in 60 s"},
                                        "spawns": [4000.0, 4400.0, 4500.0], "first_spawn": 100.0},
                         "web:web_00": {"state": "RUNNING", "spawns": [4000.0], "first_spawn": 4000.0}}}


def test_status_rows_cover_every_program_of_the_app_only():
    s = collect_status(INFOS, {"web_00": {"pid": 10, "beat": 4599.0}}, LISTENER, {10: 60 * 1024 * 1024}, 4600.0,
                       "web", control=CONTROL, groups=app_groups("web", [], CONTROL))
    rows = {r.name: r for r in s.rows}
    assert list(rows) == ["web:web_00", "web:web_01", "web_listener", "web_migrate"]
    web0 = rows["web:web_00"]
    assert (web0.state, web0.pid, web0.uptime, web0.rss, web0.ready, web0.restarts_1h) == \
        ("RUNNING", 10, 3600, 60 * 1024 * 1024, True, 0)  # its one spawn is the first start
    web1 = rows["web:web_01"]
    assert web1.restarts_1h == 3 and web1.incident["next_retry"] == 4660.0 and web1.problem
    assert rows["web_migrate"].problem == ""  # a one-shot that exited 0 is fine
    assert s.down == ["web:web_01"] and not s.ok
    data = json.loads(json.dumps(s.to_json()))
    assert data["last_alert"]["kind"] == "crash_loop" and data["down"] == ["web:web_01"]
    text = format_status(s, 4600.0)
    assert "next retry" in text and "(in 60 s)" in text and "last alert:" in text and "DOWN: web:web_01" in text


def test_status_without_listener_data_is_graceful():
    s = collect_status(INFOS[:1], {"web_00": {"pid": 10, "beat": 4599.0}}, None, {}, 4600.0, "web")
    assert s.ok and s.rows[0].rss is None and s.rows[0].restarts_1h is None  # nobody counted them
    text = format_status(s, 4600.0)
    assert "listener: no state file yet" in text and text.endswith("ok")
    assert "controller: none ([rpcinterface:fastapi_web] is not loaded" in text
    assert "restart counts unknown" in text and text.splitlines()[1].split()[5] == "-"


def test_status_of_an_app_with_no_process_in_supervisord_is_down():
    s = collect_status([], {}, None, {}, 4600.0, "web")
    assert not s.ok
    assert "DOWN: none of this app's programs" in format_status(s, 4600.0)
