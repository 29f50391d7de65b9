"""checks: pre-flight results for `supervisor-fastapi check`; none of them exits."""

import socket
import sys

import pytest

from supervisor_fastapi.cli import checks
from supervisor_fastapi.spec import Bind, Budget, Memory
from tests.ports import free_port

from ._core_helpers import conf_of, data, make_dirs, spec_of

GB = 1024**3


def test_capacity_message_in_the_spirit_of_the_issue():
    problem = checks.capacity_problem(4, Memory(per_worker=GB, budget=Budget(bytes=3 * GB)), 16 * GB)
    assert problem.startswith("4 workers x 1 GB = 4 GB > 3 GB budget (host has 16 GB RAM)")
    assert "lower server.workers to 3 or raise memory.budget" in problem


def test_capacity_with_a_share_of_ram():
    problem = checks.capacity_problem(4, Memory(per_worker=GB, budget=Budget(fraction=0.75)), 4 * GB)
    assert problem.startswith("4 workers x 1 GB = 4 GB > 3 GB budget (75% of 4 GB RAM)")


def test_capacity_fits_or_is_not_checked():
    assert checks.capacity_problem(2, Memory(per_worker=GB, budget=Budget(bytes=3 * GB)), GB) is None
    assert checks.capacity_problem(64, Memory(), GB) is None


def test_capacity_when_not_even_one_worker_fits():
    problem = checks.capacity_problem(1, Memory(per_worker=8 * GB, budget=Budget(fraction=0.5)), 4 * GB)
    assert "lower memory.per_worker" in problem


def test_total_ram_reads_meminfo(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       16384 kB\nMemFree: 1 kB\n")
    assert checks.total_ram(str(tmp_path / "meminfo")) == 16384 * 1024
    assert checks.total_ram(str(tmp_path / "missing")) > 0


def test_busy_port_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        problem = checks.bind_problem(Bind("tcp", "127.0.0.1", port))
    assert problem == f"127.0.0.1:{port} is already in use; stop what listens there or change server.bind"


def test_free_port_is_fine():
    port = free_port()
    assert checks.bind_problem(Bind("tcp", "127.0.0.1", port)) is None


def test_unresolvable_host_is_reported():
    assert checks.bind_problem(Bind("tcp", "no-such-host.invalid", 8000)).startswith("cannot bind")


def test_unix_socket_states(tmp_path):
    path = str(tmp_path / "a.sock")
    assert checks.bind_problem(Bind("unix", path=path)) is None
    assert "does not exist" in checks.bind_problem(Bind("unix", path=str(tmp_path / "no" / "a.sock")))
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    assert "is in use" in checks.bind_problem(Bind("unix", path=path))
    live.close()
    # The file stays behind (stale): supervisord unlinks it before binding.
    assert checks.bind_problem(Bind("unix", path=path)) is None


def test_load_with_supervisor_reports_the_parser_error(tmp_path):
    assert "Invalid user name" in checks.load_with_supervisor(
        f"[supervisord]\nlogfile={tmp_path}/x.log\n[program:a]\ncommand=x\nuser=no-such-user-xyz\n")
    spec = spec_of(data(), run_dir=str(tmp_path / "run"))
    make_dirs(spec)
    assert checks.load_with_supervisor(conf_of(spec)) is None


def test_python_problem(tmp_path):
    assert checks.python_problem(sys.executable, str(tmp_path), "m:app") is None
    assert "does not exist" in checks.python_problem(str(tmp_path / "nope"), str(tmp_path), "m:app")
    bare = tmp_path / "bare"
    bare.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no uvicorn' >&2\nexit 1\n")
    bare.chmod(0o755)
    problem = checks.python_problem(str(bare), str(tmp_path), "m:app")
    assert "cannot import the worker (ModuleNotFoundError: no uvicorn)" in problem


def app_in(folder, source="app = object()\n", name="main"):
    """A module the import probe can find in app.directory."""
    (folder / f"{name}.py").write_text(source)
    return str(folder)


def test_run_checks_collects_results(tmp_path):
    app_in(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = data(app={"python": sys.executable, "directory": str(tmp_path)},
                 server={"bind": f"tcp://127.0.0.1:{port}", "workers": 4},
                 memory={"per_worker": "1GB", "budget": "3GB"})
        spec = spec_of(d, base_dir=str(tmp_path), run_dir=str(tmp_path / "run"))
        make_dirs(spec)
        results = {r.what: r for r in checks.run_checks(spec, running=False, ram=16 * GB, conf_text=conf_of(spec))}
    assert results["supervisord accepts the generated conf"].ok
    assert not results[f"bind tcp://127.0.0.1:{port} is free"].ok
    assert results["memory capacity"].detail.startswith("4 workers x 1 GB = 4 GB > 3 GB budget")
    assert results["app.python runs the worker"].ok


def test_run_checks_when_running_skips_the_bind_probe(tmp_path):
    app_in(tmp_path)
    spec = spec_of(data(app={"python": sys.executable, "directory": str(tmp_path)}), base_dir=str(tmp_path),
                   run_dir=str(tmp_path / "run"))
    make_dirs(spec)
    results = checks.run_checks(spec, running=True, ram=16 * GB, conf_text=conf_of(spec))
    assert any("held by this deployment" in r.detail for r in results)
    assert [r.what for r in results if not r.ok] == []


@pytest.mark.parametrize("missing", ["directory"])
def test_run_checks_reports_a_missing_app_directory(tmp_path, missing):
    spec = spec_of(data(app={"python": sys.executable, "directory": str(tmp_path / "gone")}),
                   base_dir=str(tmp_path), run_dir=str(tmp_path / "run"))
    make_dirs(spec)
    results = checks.run_checks(spec, running=True, ram=16 * GB, conf_text=conf_of(spec))
    assert [r.what for r in results if not r.ok] == ["app.directory"]


APP = checks.App(name="shop", asgi="main:ap", factory=False, directory="/srv/shop", python="/venv/bin/python")


def test_probe_verdict_is_the_last_marked_line():
    out = f"hello\n{checks.PROBE_MARK}{{\"kind\": \"x\"}}\nnoise\n{checks.PROBE_MARK}{{\"kind\": \"ok\"}}\n"
    assert checks.probe_verdict(out) == {"kind": "ok"}
    assert checks.probe_verdict("no verdict\n") is None
    assert checks.probe_verdict(f"{checks.PROBE_MARK}not json\n") is None
    assert checks.probe_verdict(f"{checks.PROBE_MARK}[1]\n") is None


@pytest.mark.parametrize("verdict, line", [
    ({"kind": "ok"}, None),
    ({"kind": "attribute", "owner": "main", "name": "ap", "choices": ["app", "os"]},
     "app.asgi = 'main:ap': module 'main' has no attribute 'ap'; did you mean 'app'?"),
    ({"kind": "attribute", "owner": "main", "name": "zzz", "choices": ["app"]},
     "app.asgi = 'main:ap': module 'main' has no attribute 'zzz'; fix the part after ':'"),
    ({"kind": "module", "name": "main"},
     "app.asgi = 'main:ap': no module named 'main' in /srv/shop (app.directory) or on app.python's path; "
     "fix app.asgi or app.directory"),
    ({"kind": "error", "error": "ImportError: cannot import name 'x'", "where": "main.py, line 3"},
     "app.asgi = 'main:ap': importing it fails: ImportError: cannot import name 'x' (main.py, line 3); "
     "fix the app or install what it needs into app.python's environment"),
    ({"kind": "directory", "error": "Permission denied"},
     "app.directory: app.user 'www-data' cannot read /srv/shop (Permission denied)"),
])
def test_import_message(verdict, line):
    assert checks.import_message(APP, verdict, "", "app.user 'www-data'") == line


def test_import_message_when_the_interpreter_stopped_without_a_verdict():
    assert checks.import_message(APP, None, "x\nSegmentation fault\n", "this user") == \
        "app.asgi = 'main:ap': importing it stopped the interpreter (Segmentation fault)"


def test_run_dir_creation_problem_creates_nothing(tmp_path):
    assert checks.run_dir_creation_problem(str(tmp_path / "a" / "b" / "run")) is None
    assert list(tmp_path.iterdir()) == []
    assert checks.run_dir_creation_problem(str(tmp_path)) is None
    assert "cannot create /proc/sf-nope/run" in checks.run_dir_creation_problem("/proc/sf-nope/run")


def test_conf_problem_leaves_run_dir_alone(tmp_path):
    spec = spec_of(data(), base_dir=str(tmp_path), run_dir=str(tmp_path / "run"))
    assert checks.conf_problem(spec) is None
    assert not (tmp_path / "run").exists()


def test_a_command_is_looked_up_on_the_path_its_program_gets_not_this_shells(tmp_path, monkeypatch):
    venv, elsewhere = tmp_path / "venv" / "bin", tmp_path / "shell-only"
    for folder in (venv, elsewhere):
        folder.mkdir(parents=True)
    for tool in (venv / "alembic", elsewhere / "migrate-tool"):
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    path = f"{venv}:/usr/bin"
    monkeypatch.setenv("PATH", f"{elsewhere}:/usr/bin")
    assert checks.command_problem("migrate.command", "alembic upgrade head", path) == (True, str(venv / "alembic"))
    ok, detail = checks.command_problem("migrate.command", "migrate-tool up", path)
    assert not ok
    assert detail.startswith(f"migrate.command = 'migrate-tool up': 'migrate-tool' is not on the PATH its program "
                             f"gets, {path}, whoever starts supervisord (systemd too) (this shell finds "
                             f"{elsewhere / 'migrate-tool'}")
    assert checks.command_problem("programs[0].command", "/no/such/tool x", path) == \
        (False, "programs[0].command = '/no/such/tool x': /no/such/tool is not an executable file")


def test_the_apps_import_in_check_does_not_see_the_alert_credentials(tmp_path, monkeypatch):
    """check runs the app's code (as app.user under root): an SMTP password in the operator's
    shell (exported for alert-test) must not reach it, as it does not reach the workers."""
    seen = tmp_path / "seen"
    (tmp_path / "main.py").write_text(
        "import os\n"
        f"open({str(seen)!r}, 'w').write(repr([os.environ.get(k) for k in ('SMTP_PASSWORD', 'PAGER_KEY', 'DB')]))\n"
        "app = object()\n")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-secret")
    monkeypatch.setenv("PAGER_KEY", "pager-secret")
    d = data(app={"python": sys.executable, "directory": str(tmp_path), "env": {"DB": "db"}},
             alerts=[{"type": "email", "from": "a@b.c", "to": "d@e.f", "password_env": "SMTP_PASSWORD"},
                     {"type": "command", "command": "x", "run_as_root": True, "pass_env": ["PAGER_KEY"]}])
    spec = spec_of(d, base_dir=str(tmp_path), run_dir=str(tmp_path / "run"))
    results = {r.what: r for r in checks.app_results(spec)}
    assert results["app.asgi imports"].ok, results
    assert seen.read_text() == repr(["", "", "db"])
