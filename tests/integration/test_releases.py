"""Releases (issue 17) with a real supervisord, real workers and real HTTP; and the in-place
mode's STILL_RUNNING fix."""

import json
import os
import shutil
import signal
import sys
import tarfile
import time
import xmlrpc.client
from typing import Any, Dict, List, Tuple

import tomli_w

from supervisor_fastapi.contracts.files import read_json, read_worker_states
from supervisor_fastapi.contracts.rpc import is_ready

from ..helpers_alerts import WebhookReceiver
from ..loadgen import Load
from .conftest import APPS, merge, wait_until

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

MIGRATION = """\
import os, sys
flag = os.environ.get("MIGRATE_FAIL_WHILE", "")
if flag and os.path.exists(flag):
    print("ERROR: migration failed", flush=True)
    sys.exit(3)
print("migrating: done", flush=True)
"""


def rewrite_spec(d, overrides):
    """Change the deployment's spec file as an operator would (deep-merged over what it says)."""
    with open(d.spec_path, "rb") as f:
        data = tomllib.load(f)
    with open(d.spec_path, "w") as f:
        f.write(tomli_w.dumps(merge(data, overrides)))


def test_up_replaces_a_group_the_gate_holds_fix_and_more_workers_serve_within_10s(deploy, tmp_path):
    """In-place mode: a failed migration holds the workers; fixing it and changing workers 2 -> 3
    in one `up` must not fail with supervisord's STILL_RUNNING Fault (issue 17)."""
    script, flag = tmp_path / "migrate.py", tmp_path / "broken"
    script.write_text(MIGRATION)
    flag.write_text("")
    d = deploy({"migrate": {"command": f"{sys.executable} {script}", "env": {"MIGRATE_FAIL_WHILE": str(flag)}}},
               wait=False)
    wait_until(lambda: d.control_state()["gate"]["state"] == "failed", 20, "the migration to fail")
    wait_until(lambda: {i["statename"] for i in d.infos() if i["group"] == "web"} == {"BACKOFF"}, 10,
               "the workers to be held")
    flag.unlink()
    rewrite_spec(d, {"server": {"workers": 3}})
    t0 = time.monotonic()
    r = d.cli("up", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "STILL_RUNNING" not in r.stdout + r.stderr
    wait_until(lambda: d.get("/")[0] == 200, 10, "the site to serve")
    took = time.monotonic() - t0
    web = [i for i in d.infos() if i["group"] == "web"]
    assert len(web) == 3 and {i["statename"] for i in web} == {"RUNNING"}, web
    assert took < 10, f"serving {took:.1f} s after up"


# --- release mode: a real alembic + SQLite app -------------------------------------------------

SHOP = os.path.join(APPS, "shop")
VERSIONS = {"r1": ["0001_items.py"], "r2": ["0001_items.py", "0002_note.py"],
            "r3": ["0001_items.py", "0002_note.py", "0003_broken.py"]}
COLUMNS = {"r1": "name", "r2": "name note", "r3": "name note"}


def release_source(tmp_path, rid: str, archive: bool = False) -> str:
    """The app as its repository would be at release ``rid``: its code marker, columns and migrations."""
    src = tmp_path / f"src-{rid}"
    (src / "migrations" / "versions").mkdir(parents=True)
    for name in ("app.py", "alembic.ini", os.path.join("migrations", "env.py")):
        shutil.copy(os.path.join(SHOP, name), src / name)
    for name in VERSIONS[rid]:
        shutil.copy(os.path.join(SHOP, "migrations", "versions", name), src / "migrations" / "versions" / name)
    (src / "release.txt").write_text(rid + "\n")
    (src / "columns.txt").write_text(COLUMNS[rid] + "\n")
    if not archive:
        return str(src)
    path = tmp_path / f"{rid}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(str(src), arcname=f"shop-{rid}")  # one top folder, as `git archive --prefix` makes
    return str(path)


def migration_runs(root: str) -> List[str]:
    """The release of each migration run, in order (migrations/env.py logs it from the release's folder)."""
    try:
        with open(os.path.join(root, "shared", "data", "migration-runs.log")) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    return [line for line in lines if line]


def serving(d, release: str) -> bool:
    try:
        status, body = d.get("/", timeout=2)
    except OSError:
        return False
    return status == 200 and body.get("release") == release


def all_workers_serve(d, release: str, count: int) -> bool:
    """Every web worker RUNNING and ready, each started from ``release`` (the controller says which)."""
    try:
        return _all_workers_serve(d, release, count)
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):  # supervisord reloading
        return False


def _all_workers_serve(d, release: str, count: int) -> bool:
    web = [i for i in d.infos() if i["group"] == "web"]
    states = read_worker_states(d.layout.state_dir, [i["name"] for i in web])
    if len(web) != count or not all(i["statename"] == "RUNNING" and is_ready(i, states) for i in web):
        return False
    return all(d.process_state(i["name"]).get("release") == release for i in web)


def timed(check, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    wait_until(check, timeout, what, interval=0.02)
    return time.monotonic() - t0


def test_deploy_rollback_kill_reload_update_with_a_real_alembic_app(deploy, tmp_path):
    root = str(tmp_path / "srv")
    with WebhookReceiver() as hook:
        d = deploy({"app": {"asgi": "app:app", "directory": root, "python": sys.executable},
                    "migrate": {"command": f"{sys.executable} -m alembic upgrade head", "timeout": 60},
                    "release": {"keep": 5, "shared": ["data"]},
                    # One kill opens the `killed` incident, so the kill below raises an alert.
                    "crash_loop": {"programs": {"web": {"restarts": 1}}},
                    "alerts": [{"type": "webhook", "url": hook.url}]}, start=False)
        d.started = True  # deploy starts supervisord: the fixture stops it
        figures: Dict[str, Any] = {}
        phases: List[Tuple[float, str]] = []  # (wall clock, what began): where a failed request happened

        # r1: the first deploy on the host starts the deployment, like `up`.
        r = d.cli("deploy", release_source(tmp_path, "r1", archive=True), "--id", "r1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.readlink(os.path.join(root, "current")) == os.path.join("releases", "r1")
        assert os.path.islink(os.path.join(root, "releases", "r1", "data"))
        wait_until(lambda: all_workers_serve(d, "r1", 2), 10, "r1's two workers")
        assert migration_runs(root) == [f"r1 {os.path.join(root, 'releases', 'r1')}"], "r1 migrated from its folder"

        gets = Load("127.0.0.1", d.port, mode="keepalive", threads=2, pause=0.01)
        posts = Load("127.0.0.1", d.port, mode="keepalive", threads=2, pause=0.01, method="POST", path="/items",
                     body=b'{"name": "item"}')
        with gets, posts:
            gets.wait_requests(20)
            posts.wait_requests(20)

            phases.append((time.time(), "deploy r2"))
            # r2 adds a column: migrated from its own folder, then the workers roll onto it. Its
            # deploy also changes [migrate] (supervisord's migration program comes back, and the
            # roll waits for it to find r2 migrated already).
            rewrite_spec(d, {"migrate": {"command": f"{sys.executable} -m alembic -c alembic.ini upgrade head"}})
            t0 = time.time()
            r = d.cli("deploy", release_source(tmp_path, "r2"), "--id", "r2")
            assert r.returncode == 0, r.stdout + r.stderr
            figures["deploy r2 (s)"] = round(time.time() - t0, 1)
            wait_until(lambda: all_workers_serve(d, "r2", 2), 10, "r2's workers")
            record = read_json(d.layout.release_record)
            r2_migrated = record["releases"]["r2"]["migrated_at"]

            phases.append((time.time(), "deploy r3"))
            # r3's migration raises: nothing switches, r2 keeps serving with both workers, exit 1, an alert.
            r = d.cli("deploy", release_source(tmp_path, "r3"), "--id", "r3")
            assert r.returncode == 1, r.stdout + r.stderr
            assert "release r3: its migration exited with status 1" in r.stderr
            assert "release r2 keeps serving with all its workers" in r.stderr
            assert "0003: cannot backfill" in r.stderr
            assert os.readlink(os.path.join(root, "current")) == os.path.join("releases", "r2")
            alert = wait_until(lambda: hook.alerts("release_failed"), 10, "the release_failed alert")[0][1]
            assert "release r3" in alert["text"] and alert["details"]["release"] == "r3"
            assert "0003: cannot backfill" in alert["details"]["log_tail"]
            assert all_workers_serve(d, "r2", 2)
            assert d.control_state()["gate"]["state"] == "open"

            phases.append((time.time(), "kill -9"))
            # kill -9 of a worker while r3 is refused: back serving r2 within 3 s.
            victim = next(i for i in d.infos() if i["name"] == "web_00")
            with gets.quiet(), posts.quiet():  # no request in flight: one would be lost with the process
                os.kill(victim["pid"], signal.SIGKILL)
                t0 = time.monotonic()
                # kill() returns before the kernel has closed the process's sockets: the clients
                # resume once supervisord has reaped it (its idle connections are closed by then).
                wait_until(lambda: next(i for i in d.infos() if i["name"] == "web_00")["pid"] != victim["pid"],
                           5, "supervisord to reap the killed worker", interval=0.005)
            def replaced():
                info = next(i for i in d.infos() if i["name"] == "web_00")
                states = read_worker_states(d.layout.state_dir, ["web_00"])
                return info["pid"] not in (0, victim["pid"]) and info["statename"] == "RUNNING" \
                    and is_ready(info, states) and d.process_state("web_00").get("release") == "r2"
            wait_until(replaced, 10, "the killed worker's replacement", interval=0.02)
            figures["kill -9 -> back serving r2 (s)"] = round(time.monotonic() - t0, 2)
            assert figures["kill -9 -> back serving r2 (s)"] < 3.0, figures
            # The alert about it names the release that worker ran.
            killed = wait_until(lambda: hook.alerts("killed", "open"), 10, "the killed alert")[0][1]
            assert killed["details"]["release"] == "r2", killed

            phases.append((time.time(), "rollback"))
            # rollback: the previous release (r1), no migration.
            r = d.cli("rollback")
            assert r.returncode == 0, r.stdout + r.stderr
            wait_until(lambda: all_workers_serve(d, "r1", 2), 10, "r1's workers after the rollback")
            time.sleep(0.3)
        lost = gets.result.failures + posts.result.failures
        figures["GET"] = gets.result.summary()
        figures["POST"] = posts.result.summary()
        figures["failures at"] = [(e, max((p for p in phases if p[0] <= t), default=(0, "start"))[1])
                                  for t, e in gets.result.failed_at + posts.result.failed_at]
        assert lost == 0, figures
        served = gets.result.releases + posts.result.releases
        assert set(served) == {"r1", "r2"}, served  # never r3
        assert min(gets.result.first_seen["r2"], posts.result.first_seen["r2"]) >= r2_migrated, \
            "r2 served before its migration succeeded"

        # supervisorctl reload while r3 is refused: the current release (r1) serves again within 15 s.
        t0 = time.monotonic()
        d.ctl("reload")
        wait_until(lambda: all_workers_serve(d, "r1", 2) and serving(d, "r1"), 15, "r1 after reload", interval=0.05)
        figures["reload -> current serves (s)"] = round(time.monotonic() - t0, 2)

        # supervisorctl update of a changed web group (workers 2 -> 3) while r3 is refused.
        rewrite_spec(d, {"server": {"workers": 3}})
        assert d.cli("render").returncode == 0
        t0 = time.monotonic()
        d.ctl("update")
        wait_until(lambda: all_workers_serve(d, "r1", 3) and serving(d, "r1"), 15, "r1 after update", interval=0.05)
        figures["update -> current serves (s)"] = round(time.monotonic() - t0, 2)

        # supervisord stopped and started again (a reboot, `down` then `up`): the current release.
        assert d.cli("down").returncode == 0
        r = d.cli("up")
        assert r.returncode == 0, r.stdout + r.stderr
        assert all_workers_serve(d, "r1", 3) and serving(d, "r1")

        # Each release's migration ran exactly once (r3's failed run included), each from its own folder;
        # neither the rollback, the reload nor the update ran one again.
        runs = migration_runs(root)
        assert [line.split()[0] for line in runs] == ["r1", "r2", "r3"], runs
        assert all(line.split()[1] == os.path.join(root, "releases", line.split()[0]) for line in runs), runs
        assert "already succeeded" in d.log("web_migrate")

        r = d.cli("releases")
        assert r.returncode == 0, r.stderr
        lines = {line[2:].split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert "ok" in lines.get("r1", "") and "(current)" in lines["r1"] and lines["r1"].startswith("*")
        assert "ok" in lines.get("r2", "") and "failed" in lines.get("r3", ""), r.stdout
        status = d.cli("status")
        assert "release r1" in status.stdout and "current release: r1" in status.stdout, status.stdout
        print("figures:", json.dumps(figures, indent=1))
