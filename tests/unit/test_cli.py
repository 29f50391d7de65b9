"""cli: thin click commands; user errors are one line on stderr and exit status 2, never a traceback."""

import os
import socket
import sys

import pytest
from click.testing import CliRunner

from supervisor_fastapi import __version__
from supervisor_fastapi.cli.main import main
from supervisor_fastapi.spec import load_spec
from tests.ports import free_port

from ._core_helpers import load, raw_sections

SPEC = """[app]
name = "shop"
asgi = "main:app"
python = "{python}"

[server]
bind = "tcp://127.0.0.1:{port}"
workers = 2
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    # A crash inside a command shows up as a non-SystemExit exception: never acceptable.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def write_spec(folder, **kw):
    text = SPEC.format(python=sys.executable, port=kw.pop("port", free_port()))
    (folder / "supervisor-fastapi.toml").write_text(text + kw.pop("extra", ""))
    if not (folder / "main.py").exists():  # asgi = "main:app": `check` imports it
        (folder / "main.py").write_text("app = object()\n")


def test_version():
    assert __version__ in run("--version").output


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(folder):
    r = run("init", "--name", "My Shop", "--asgi", "shop.main:app")
    assert r.exit_code == 0 and "wrote" in r.output
    spec = load_spec(cwd=str(folder))
    assert spec.app.name == "my-shop" and spec.app.asgi == "shop.main:app"
    before = (folder / "supervisor-fastapi.toml").read_text()
    r = run("init", "--name", "other")
    assert r.exit_code == 2 and "exists; pass --force to overwrite it" in r.output
    assert (folder / "supervisor-fastapi.toml").read_text() == before
    r = run("init", "--name", "other", "--force")
    assert r.exit_code == 0 and load_spec(cwd=str(folder)).app.name == "other"


def test_init_refuses_beside_a_pyproject_that_already_has_the_table(folder):
    (folder / "pyproject.toml").write_text('[tool.supervisor-fastapi.app]\nname = "shop"\nasgi = "main:app"\n')
    r = run("init", "--name", "other")
    assert r.exit_code == 2, r.output
    assert "pyproject.toml already has [tool.supervisor-fastapi]" in r.output and "--force" in r.output
    assert not (folder / "supervisor-fastapi.toml").exists()
    assert load_spec(cwd=str(folder)).app.name == "shop"
    r = run("init", "--name", "other", "--force")
    assert r.exit_code == 0 and load_spec(cwd=str(folder)).app.name == "other"


def test_init_beside_a_pyproject_without_the_table_is_fine(folder):
    (folder / "pyproject.toml").write_text('[project]\nname = "shop"\n')
    assert run("init", "--name", "shop").exit_code == 0


def test_check_and_render_to_stdout_create_no_run_folders(folder):
    write_spec(folder)
    assert run("render", "-o", "-").exit_code == 0
    assert run("render", "-o", "-", "--fragment", "--with-plugins").exit_code == 0
    r = run("check")
    assert r.exit_code == 0, r.output
    assert "ok   supervisord accepts the generated conf" in r.output
    assert sorted(p.name for p in folder.iterdir()) == ["main.py", "supervisor-fastapi.toml"]


def test_up_timeout_help_says_it_adds_the_migration_timeout():
    text = " ".join(run("up", "--help").output.split())
    assert "migrate.timeout" in text


def test_readme_says_which_commands_take_a_spec():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    commands = [name for name, cmd in main.commands.items()
                if not any("-c" in getattr(p, "opts", ()) for p in cmd.params)]
    assert commands == ["demo"]  # the README names the exception
    assert "Every command takes `-c PATH`" not in readme
    assert "except `demo`" in readme


def test_render_fragment_into_conf_d_does_not_say_copy_it_onto_itself(folder, monkeypatch):
    write_spec(folder)
    r = run("render", "--fragment", "-o", "shop.conf")
    assert "install: cp shop.conf /etc/supervisor/conf.d/shop.conf && supervisorctl reread && supervisorctl update" \
        in r.output, r.output
    written = []
    monkeypatch.setattr("supervisor_fastapi.cli.deploy.write_atomic", lambda path, text, *mode: written.append(path))
    r = run("render", "--fragment", "--with-plugins", "-o", "/etc/supervisor/conf.d/shop.conf")
    assert written == ["/etc/supervisor/conf.d/shop.conf"]
    assert "install: supervisorctl reread && supervisorctl update" in r.output and "cp " not in r.output, r.output


def test_init_default_name_comes_from_the_folder(tmp_path, monkeypatch):
    target = tmp_path / "9 Lives"
    target.mkdir()
    monkeypatch.chdir(target)
    assert run("init").exit_code == 0
    assert load_spec(cwd=str(target)).app.name == "app-9-lives"


def test_init_with_a_bad_asgi_string_is_a_user_error(folder):
    r = run("init", "--asgi", "not an import")
    assert r.exit_code == 2 and r.output.startswith("error: ") and "app.asgi" in r.output
    assert not (folder / "supervisor-fastapi.toml").exists()


def test_render_to_stdout(folder):
    write_spec(folder)
    r = run("render", "-o", "-")
    assert r.exit_code == 0
    assert "[fcgi-program:shop]" in r.output and "supervisor-fastapi render -o -" in r.output
    assert not (folder / "supervisord.conf").exists()


def test_render_default_path_loads_with_supervisor(folder):
    write_spec(folder)
    r = run("render")
    conf = folder / "supervisord.conf"
    assert r.exit_code == 0 and f"wrote {conf}" in r.output and "supervisorctl -c" in r.output
    text = conf.read_text()
    assert "run `supervisor-fastapi render`" in text
    assert {g.name for g in load(text).process_group_configs} >= {"shop"}
    assert os.path.isdir(folder / "run" / "logs")


def test_render_fragment(folder):
    write_spec(folder)
    r = run("render", "--fragment", "-o", "shop.conf")
    assert r.exit_code == 0 and "/etc/supervisor/conf.d/shop.conf" in r.output
    sections = raw_sections((folder / "shop.conf").read_text())
    assert "supervisord" not in sections and "fcgi-program:shop" in sections


def test_render_with_config_option_from_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "deploy").mkdir()
    write_spec(tmp_path / "deploy")
    monkeypatch.chdir(tmp_path)
    r = run("render", "-c", "deploy/supervisor-fastapi.toml")
    assert r.exit_code == 0 and (tmp_path / "deploy" / "supervisord.conf").exists()
    assert "render -c deploy/supervisor-fastapi.toml" in (tmp_path / "deploy" / "supervisord.conf").read_text()


@pytest.mark.parametrize("command", [["render"], ["render", "-o", "-"], ["check"], ["up"], ["down"],
                                     ["systemd-unit"]])
@pytest.mark.parametrize("extra, message", [
    ("[server.uvicorn]\nworkers = 4\n", "server.uvicorn.workers: is managed by supervisor-fastapi"),
    ("[sever]\n", "sever: unknown key; did you mean 'server'?"),
    ("[memory]\nper_worker = \"lots\"\n", "memory.per_worker"),
    ("[[programs]]\nname = \"x\"\ncommand = \"a\\n[program:evil]\"\n", "programs[0].command: contains a line break"),
    ("[app\n", "is not valid TOML"),
])
def test_user_errors_are_one_message_and_exit_2(folder, command, extra, message):
    write_spec(folder, extra=extra)
    r = run(*command)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert str(folder / "supervisor-fastapi.toml") in r.output


@pytest.mark.parametrize("command", [["render"], ["check"], ["up"], ["down"], ["systemd-unit"]])
def test_missing_spec_is_a_user_error(folder, command):
    r = run(*command)
    assert r.exit_code == 2 and "run `supervisor-fastapi init` or pass -c PATH" in r.output
    r = run(*command, "-c", "nope.toml")
    assert r.exit_code == 2 and "nope.toml: no such spec file" in r.output


def test_check_passes(folder):
    write_spec(folder)
    r = run("check")
    assert r.exit_code == 0, r.output
    assert "ok   supervisord accepts the generated conf" in r.output
    assert "memory.per_worker not set" in r.output


def test_check_fails_on_a_busy_port_and_on_capacity(folder):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_spec(folder, port=port, extra='[memory]\nper_worker = "1TB"\nbudget = "3TB"\n')
        r = run("check")
    assert r.exit_code == 1
    assert f"FAIL bind tcp://127.0.0.1:{port} is free: 127.0.0.1:{port} is already in use" in r.output
    assert "FAIL memory capacity: 2 workers x 1 TB = 2 TB" not in r.output  # 2 TB fits in 3 TB
    write_spec(folder, extra='[server.uvicorn]\n[memory]\nper_worker = "2TB"\nbudget = "3TB"\n')
    r = run("check")
    assert r.exit_code == 1
    assert "FAIL memory capacity: 2 workers x 2 TB = 4 TB > 3 TB budget (host has" in r.output


def test_down_when_not_running(folder):
    write_spec(folder)
    r = run("down")
    assert r.exit_code == 0 and r.output.strip() == "not running"


def test_systemd_unit(folder):
    write_spec(folder)
    r = run("systemd-unit")
    assert r.exit_code == 0
    conf = folder / "supervisord.conf"
    assert f"ExecStart={sys.executable} -m supervisor.supervisord -n -c {conf}" in r.output
    for line in ("Restart=always", "WantedBy=multi-user.target", "KillMode=mixed", "[Install]",
                 f"WorkingDirectory={folder}"):
        assert line in r.output
    assert "TimeoutStopSec=55" in r.output  # graceful 30 + margin 10 + 15


def test_demo_without_fastapi_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    r = run("demo", "--smoke")
    assert r.exit_code == 2, r.output
    assert "the demo needs FastAPI: pip install fastapi (or, in a clone, pip install '.[demo]')" in r.output


def test_help_lists_the_commands():
    out = run("--help").output
    for name in ("init", "render", "check", "up", "down", "demo", "systemd-unit"):
        assert name in out


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_render_gives_the_state_folder_to_app_user(folder):
    import pwd

    write_spec(folder, extra="")
    text = (folder / "supervisor-fastapi.toml").read_text().replace('[server]', 'user = "nobody"\n\n[server]')
    (folder / "supervisor-fastapi.toml").write_text(text)
    assert run("render").exit_code == 0
    # Workers run as app.user and write their ready/heartbeat files there.
    assert os.stat(folder / "run" / "workers").st_uid == pwd.getpwnam("nobody").pw_uid


@pytest.mark.parametrize("args, message", [
    (["render", "-o", "/nonexistent-sf/dir/x.conf"], "/nonexistent-sf/dir/"),
    (["render", "-o", "/tmp"], "error: /tmp: Is a directory"),
    (["init", "-c", "/nonexistent-sf/dir/s.toml"], "error: /nonexistent-sf/dir/s.toml: No such file or directory"),
])
def test_unwritable_paths_are_user_errors_not_tracebacks(folder, args, message):
    write_spec(folder)
    r = run(*args)
    assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output, r.output


def test_run_dir_that_cannot_be_created_is_a_user_error(folder):
    write_spec(folder, extra='[supervisord]\nrun_dir = "/proc/sf-cannot-exist"\n')
    for command in (["render"], ["up"]):
        r = run(*command)
        assert r.exit_code == 2 and "error: /proc/sf-cannot-exist" in r.output, r.output
    r = run("check")  # a failed check, like the others (exit 1), and nothing created
    assert r.exit_code == 1 and "FAIL supervisord.run_dir: cannot create /proc/sf-cannot-exist" in r.output, r.output


def test_init_writes_the_loaders_own_crash_loop_defaults(folder):
    from supervisor_fastapi.contracts.settings import Policy

    assert run("init", "--name", "shop").exit_code == 0
    assert load_spec(cwd=str(folder)).crash_loop.default == Policy()


def test_a_fault_supervisord_answers_is_one_line_not_a_traceback(capsys):
    import xmlrpc.client

    import pytest

    from supervisor_fastapi.cli.main import user_errors

    @user_errors
    def command():
        raise xmlrpc.client.Fault(70, "NOT_RUNNING: web_00")

    with pytest.raises(SystemExit) as exit_info:
        command()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: supervisord refused: NOT_RUNNING: web_00"
