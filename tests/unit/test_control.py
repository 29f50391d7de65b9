"""readiness(): pure decisions over getAllProcessInfo records and worker state files."""

from supervisor_fastapi.cli.control import readiness
from supervisor_fastapi.spec import HostDefaults, build_spec


def spec_with_migrate():
    data = {"app": {"name": "web", "asgi": "m:app"}, "server": {"workers": 2},
            "migrate": {"command": "alembic upgrade head"}}
    return build_spec(data, "/srv/s.toml", "/srv", HostDefaults(python="/usr/bin/python3", cpu_count=2))


def info(name, group, state, pid=0, exitstatus=0, start=0):
    return {"name": name, "group": group, "statename": state, "pid": pid, "exitstatus": exitstatus,
            "start": start, "spawnerr": ""}


def test_running_migration_is_reported_and_blocks_done():
    r = readiness(spec_with_migrate(), [info("web_migrate", "web_migrate", "RUNNING", pid=5),
                                        info("web_00", "web", "STOPPED"), info("web_01", "web", "STOPPED")], {})
    assert r.migrating == "web_migrate"
    assert r.pending == ["web_00", "web_01"] and not r.failed and not r.done


def test_worker_is_ready_only_when_its_state_file_names_the_running_pid():
    infos = [info("web_migrate", "web_migrate", "EXITED", start=1), info("web_00", "web", "RUNNING", pid=10),
             info("web_01", "web", "RUNNING", pid=11)]
    r = readiness(spec_with_migrate(), infos, {"web_00": {"pid": 10}, "web_01": {"pid": 99}})
    assert r.ready == ["web_00"] and r.pending == ["web_01"] and r.migrating is None


def test_failed_migration_fails_the_deployment_with_its_status():
    r = readiness(spec_with_migrate(), [info("web_migrate", "web_migrate", "EXITED", exitstatus=3, start=1)], {})
    assert r.failed == ["web_migrate"] and "status 3" in r.reasons["web_migrate"]
