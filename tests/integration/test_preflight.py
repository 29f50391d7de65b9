"""`check` imports the app as the worker would, and `up` refuses to start what `check` fails.

Each case runs the real CLI in a subprocess against a small app written into tmp_path.
"""

import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import tomli_w

from supervisor_fastapi.cli import control
from supervisor_fastapi.layout import Layout
from supervisor_fastapi.spec import load_spec
from tests.ports import free_port

from .conftest import wait_until

pytestmark = pytest.mark.integration


def cli(*args, cwd=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "supervisor_fastapi", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def app_folder(tmp_path, source="app = object()\n", asgi="main:app", **app):
    """A folder with main.py and a spec for it; its path."""
    (tmp_path / "main.py").write_text(source)
    data = {"app": {"name": "shop", "asgi": asgi, "python": sys.executable, **app},
            "server": {"bind": f"tcp://127.0.0.1:{free_port()}", "workers": 1, "graceful_timeout": 5}}
    (tmp_path / "supervisor-fastapi.toml").write_text(tomli_w.dumps(data))
    return tmp_path


def failing_line(out, what):
    lines = [line for line in out.splitlines() if line.startswith(f"FAIL {what}")]
    assert len(lines) == 1, out
    return lines[0]


def assert_up_starts_nothing(folder, message):
    r = cli("up", "--timeout", "30", cwd=str(folder))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    spec = load_spec(cwd=str(folder))
    assert not control.is_running(Layout(spec.run_dir))
    assert not os.path.exists(os.path.join(str(folder), "supervisord.conf"))
    assert not os.path.exists(spec.run_dir)


def test_a_missing_attribute_is_one_line_with_a_suggestion(tmp_path):
    folder = app_folder(tmp_path, asgi="main:ap")
    r = cli("check", cwd=str(folder))
    assert r.returncode == 1
    assert failing_line(r.stdout, "app.asgi imports") == \
        "FAIL app.asgi imports: app.asgi = 'main:ap': module 'main' has no attribute 'ap'; did you mean 'app'?"
    assert_up_starts_nothing(folder, "module 'main' has no attribute 'ap'; did you mean 'app'?")


def test_a_missing_module_names_the_folder_it_looked_in(tmp_path):
    folder = app_folder(tmp_path, asgi="mian:app")
    r = cli("check", cwd=str(folder))
    assert r.returncode == 1
    line = failing_line(r.stdout, "app.asgi imports")
    assert f"no module named 'mian' in {folder} (app.directory)" in line, line


def test_an_import_error_inside_the_app_names_the_line(tmp_path):
    folder = app_folder(tmp_path, source="import os\nimport no_such_dependency_xyz\napp = object()\n")
    r = cli("check", cwd=str(folder))
    assert r.returncode == 1
    line = failing_line(r.stdout, "app.asgi imports")
    assert "importing it fails: ModuleNotFoundError: No module named 'no_such_dependency_xyz' (main.py, line 2)" \
        in line, line
    assert_up_starts_nothing(folder, "No module named 'no_such_dependency_xyz'")


def test_the_import_sees_app_env_and_the_app_may_print(tmp_path):
    source = "import os\nprint('hello from the app')\nif os.environ['SHOP_DB'] != 'x':\n    raise SystemExit(3)\n" \
             "app = object()\n"
    folder = app_folder(tmp_path, source=source, env={"SHOP_DB": "x"})
    r = cli("check", cwd=str(folder))
    assert r.returncode == 0, r.stdout
    assert f"ok   app.asgi imports: main:app in {folder}" in r.stdout
    assert not (folder / "__pycache__").exists() and not (folder / "run").exists()


def test_an_import_that_hangs_is_reported_after_the_timeout(tmp_path):
    from supervisor_fastapi.cli import checks
    from supervisor_fastapi.spec import App

    (tmp_path / "slow.py").write_text("import time\ntime.sleep(600)\napp = object()\n")
    app = App(name="shop", asgi="slow:app", factory=False, directory=str(tmp_path), python=sys.executable)
    started = time.monotonic()
    problem = checks.import_problem(app, timeout=2)
    assert problem == "app.asgi = 'slow:app': importing it did not finish within 2 s (does it wait for something " \
                      "at import?)"
    assert time.monotonic() - started < 30


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to app.user needs root")
def test_an_app_python_the_app_user_cannot_execute(tmp_path):
    # As root with a pyenv Python under /root and app.user = "www-data": supervisord said EACCES.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    python = locked / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    # The app's folder itself must be open to nobody: pytest's tmp_path is not (0700 parents).
    folder = tempfile.mkdtemp(prefix="sf-pre-")
    try:
        os.chmod(folder, 0o755)
        app_folder(pathlib.Path(folder), python=str(python), user="nobody")
        r = cli("check", cwd=folder)
        assert r.returncode == 1
        line = failing_line(r.stdout, "app.python runs the worker")
        assert f"app.python: app.user 'nobody' cannot execute {python} (permission denied)" in line, line
        assert_up_starts_nothing(folder, "app.user 'nobody' cannot execute")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to app.user needs root")
def test_an_app_directory_the_app_user_cannot_read(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir(mode=0o700)
    folder = app_folder(folder, user="nobody")
    r = cli("check", cwd=str(folder))
    assert r.returncode == 1
    assert failing_line(r.stdout, "app.directory") == \
        f"FAIL app.directory: app.user 'nobody' cannot enter or list {folder}; give nobody read and search (r-x) " \
        "access to it"
    assert_up_starts_nothing(folder, "supervisor-fastapi.toml: app.directory: app.user 'nobody' cannot enter or list")


def test_an_unknown_app_user(tmp_path):
    folder = app_folder(tmp_path, user="no-such-user-xyz")
    r = cli("check", cwd=str(folder))
    assert r.returncode == 1
    if os.geteuid() == 0:
        assert "FAIL app.user: no user 'no-such-user-xyz' on this host" in r.stdout, r.stdout


def test_demo_with_zero_workers_is_one_line_and_leaves_no_folder(tmp_path):
    # A temp folder of its own (TMPDIR): the shared one gets other suites' demo folders meanwhile.
    r = cli("demo", "--workers", "0", env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip() == "error: demo --workers: must be 1 or more (got 0)"
    assert os.listdir(tmp_path) == []


def _stderr_until(proc, text, timeout):
    """Read the process's stderr until a line holds ``text`` (bounded); whether it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stderr.readline() if ready else ""
        if text in line:
            return True
        if ready and not line:
            return False  # EOF
    return False


@pytest.mark.parametrize("signals", ["HUP", "INT INT INT"], ids=["terminal-closes", "ctrl-c-pressed-again"])
def test_demo_stops_cleanly_when_its_terminal_closes_or_ctrl_c_comes_again(signals):
    proc = subprocess.Popen([sys.executable, "-m", "supervisor_fastapi", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    started: list = []
    try:
        conf = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("demo: conf "):
                conf = line.split("demo: conf ", 1)[1].strip()
            if "press Ctrl-C" in line:
                break
        assert conf, "the demo did not start"
        folder = os.path.dirname(conf)
        layout = Layout(load_spec(os.path.join(folder, "supervisor-fastapi.toml")).run_dir)
        supervisord = control._read_pid(layout.pidfile)
        children = [i["pid"] for i in control.rpc(layout).supervisor.getAllProcessInfo() if i["pid"]]
        assert supervisord and children
        started = [supervisord, *children]
        first, *again = signals.split()
        proc.send_signal(getattr(signal, "SIG" + first))
        if again:
            # The next ones come while the demo tears down: they stopped the teardown half-way.
            assert _stderr_until(proc, "stopping the demo", 60)
            for name in again:
                proc.send_signal(getattr(signal, "SIG" + name))
                time.sleep(0.2)
        proc.wait(timeout=90)
        if again:
            assert proc.returncode == 0, proc.stderr.read()
        wait_until(lambda: not any(control.pid_alive(p) for p in [supervisord, *children]), 30,
                   "supervisord and its workers to exit")
        assert not os.path.exists(folder)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in started:  # what a failed teardown left running (the bug this guards against)
            if control.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_check_and_up_name_a_migration_command_only_this_shell_finds(tmp_path):
    # Found in a venv a shell activated, not beside app.python nor on systemd's PATH: under
    # systemd the migration could not start and the app stayed down after a reboot.
    shell_bin = tmp_path / "shell-bin"
    shell_bin.mkdir()
    (shell_bin / "migrate-tool").write_text("#!/bin/sh\nexit 0\n")
    (shell_bin / "migrate-tool").chmod(0o755)
    folder = tmp_path / "app"
    folder.mkdir()
    app_folder(folder)
    spec_path = folder / "supervisor-fastapi.toml"
    spec_path.write_text(spec_path.read_text() + '\n[migrate]\ncommand = "migrate-tool upgrade"\n')
    env = {**os.environ, "PATH": f"{shell_bin}:{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "check"], cwd=str(folder), capture_output=True,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr
    line = failing_line(r.stdout, "migrate.command resolves")
    assert "'migrate-tool' is not on the PATH its program gets" in line and \
        f"this shell finds {shell_bin}/migrate-tool" in line, line
