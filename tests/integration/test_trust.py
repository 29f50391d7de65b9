"""The trust boundary with a real supervisord as root and ``app.user = "www-data"``: what the app
user plants in run_dir/workers/ hangs nothing, and no secret is readable by another user.

Acting as www-data and nobody goes through ``runuser``. The workers run under a small wrapper
around /usr/bin/python3 (the test venv lives under /root, which www-data cannot enter) that
puts this checkout and the venv's site-packages on PYTHONPATH.
"""

import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any, Iterator, List

import pytest

from supervisor_fastapi.contracts.rpc import notify

from .conftest import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="acts as www-data and nobody: needs root"),
              pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser"),
              pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs /usr/bin/python3")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "WEBHOOKTOKEN-4f1c9b2e"
SMTP_PASSWORD = "SMTPPASS-77d0e1aa"
DB_PASSWORD = "DBPASS-c3a5b6f0"


def as_user(user: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def app_python() -> Iterator[str]:
    """An interpreter www-data can run, with this package, supervisor and uvicorn importable."""
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "www-data"],
                       check=True, timeout=30)
    probe = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=30)
    if probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"/usr/bin/python3 is {probe.stdout.strip()}, the test venv {sys.version_info[:2]}")
    folder = tempfile.mkdtemp(prefix="sf-py-")
    os.chmod(folder, 0o755)
    wrapper = os.path.join(folder, "python")
    path = f"{REPO}:{sysconfig.get_paths()['purelib']}"
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH="{path}" exec /usr/bin/python3 "$@"\n')
    os.chmod(wrapper, 0o755)
    check = as_user("www-data", wrapper, "-c", "import supervisor_fastapi.runtime.worker, uvicorn, supervisor")
    if check.returncode != 0:
        shutil.rmtree(folder)
        pytest.skip(f"www-data cannot import the worker: {check.stderr.strip()[-200:]}")
    yield wrapper
    shutil.rmtree(folder, ignore_errors=True)


def open_for_others(path: str) -> None:
    """mkdtemp makes the folder 0700; the workers (www-data) must reach run_dir/workers in it."""
    os.chmod(path, 0o755)


def base(app_python: str, **extra: Any) -> dict:
    return {"app": {"user": "www-data", "python": app_python}, **extra}


def worker_pid(d: Any, name: str) -> int:
    return next(i["pid"] for i in d.infos() if i["name"] == name)


def serving_pid(d: Any, name: str) -> int:
    """The pid of worker ``name`` once it is RUNNING and its ready file names that pid, else 0."""
    info = next(i for i in d.infos() if i["name"] == name)
    ready = d.rpc.fastapi_web.getWorkerStates().get(name, {})
    return info["pid"] if info["statename"] == "RUNNING" and ready.get("pid") == info["pid"] else 0


def test_what_the_app_user_plants_in_workers_hangs_nothing(deploy, app_python):
    d = deploy(base(app_python, server={"workers": 2, "heartbeat_timeout": 4, "graceful_timeout": 5},
                    alerts=[{"type": "log"}]), start=False)
    open_for_others(d.folder)
    d.start(wait=True, timeout=60)
    workers = d.layout.state_dir
    assert os.stat(workers).st_uid == pwd.getpwnam("www-data").pw_uid
    # As www-data: web_01's own state file becomes a FIFO; more hostile entries beside it.
    script = (f"cd {workers} && rm -f web_01 && mkfifo web_01 && mkfifo zz_fifo && ln -s /dev/zero zero && "
              f"truncate -s 200M huge && python3 -c 'open(\"deep\", \"w\").write(\"[\" * 100000)' && "
              f"ln -s /etc/shadow shadow")
    out = as_user("www-data", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    # A hung worker must still be killed on time: stop web_00's event loop.
    victim = worker_pid(d, "web_00")
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for _ in range(3):
            started = time.monotonic()
            status = d.cli("status", timeout=30)
            assert time.monotonic() - started < 10, "status took too long"
            assert "Traceback" not in status.stdout + status.stderr, status.stderr
            ctl = d.ctl("status", timeout=30)
            assert "web:web_00" in ctl.stdout, ctl.stdout
            assert time.monotonic() - started < 15
        plugin = d.ctl("fastapi_status", timeout=30)
        assert "Traceback" not in plugin.stdout, plugin.stdout
        # The watchdog kills the stopped worker within heartbeat_timeout plus a tick or two.
        wait_until(lambda: worker_pid(d, "web_00") not in (0, victim) or d.state_of("web_00") != "RUNNING",
                   20, "the watchdog to kill the hung worker")
        took = time.monotonic() - stopped
        assert took < 4 + 6, f"killed after {took:.1f} s"
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # The listener took the watchdog's alert: it is answering too.
    log_path = d.layout.alerts_log
    wait_until(lambda: os.path.exists(log_path) and "hung_worker" in open(log_path).read(), 15, "the hung_worker alert")
    listener = next(i for i in d.infos() if i["name"] == "web_listener")
    assert d.state_of("web_watchdog") == "RUNNING" and listener["statename"] in ("RUNNING", "EXITED")
    assert listener["exitstatus"] == 0  # running, or at rest after its idle exit: never crashed
    assert "BACKOFF" not in d.ctl("status").stdout


def test_a_run_dir_the_app_user_can_write_is_refused(deploy, app_python):
    d = deploy(base(app_python), start=False)
    os.chmod(d.layout.run_dir, 0o777)
    out = d.cli("render")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "supervisord.run_dir" in lines[0] and "chmod go-w" in lines[0], lines
    os.chmod(d.layout.run_dir, 0o711)
    # The app user swaps workers/ for a link to a root folder: render refuses, gives nothing away.
    shutil.rmtree(d.layout.state_dir)
    target = os.path.join(d.folder, "root-only")
    os.mkdir(target, 0o700)
    os.symlink(target, d.layout.state_dir)
    out = d.cli("render")
    assert out.returncode == 2 and "is a symlink" in out.stderr, out.stderr
    assert os.stat(target).st_uid == 0


def all_files(*roots: str) -> List[str]:
    out = []
    for root in roots:
        if os.path.isfile(root):
            out.append(root)
        for folder, _, files in os.walk(root):
            out += [os.path.join(folder, f) for f in files]
    return out


def test_no_secret_is_readable_by_nobody_or_reaches_the_workers(deploy, app_python, monkeypatch):
    from ..helpers_alerts import closed_port

    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)  # supervisord inherits it, as under systemd
    dead = closed_port()
    d = deploy(base(app_python, app={"user": "www-data", "python": app_python,
                                     "env": {"DATABASE_URL": f"postgres://shop:{DB_PASSWORD}@db/shop"}},
                    server={"workers": 2, "heartbeat_timeout": 10},
                    programs=[{"name": "helper", "command": "sleep 600"}],
                    listener={"send_retries": 0},
                    alerts=[{"type": "webhook", "name": "hook",
                             "url": f"http://ops:{TOKEN}@127.0.0.1:{dead}/services/{TOKEN}?token={TOKEN}",
                             "timeout": 1},
                            {"type": "email", "name": "mail", "host": "127.0.0.1", "port": dead, "from": "a@b.example",
                             "to": "ops@b.example", "username": "alerts", "password_env": "SMTP_PASSWORD",
                             "starttls": False, "timeout": 1},
                            {"type": "log"}]), start=False)
    open_for_others(d.folder)
    d.start(wait=True, timeout=60)
    notify(d.rpc, "web", "memory_recycle", "web_01", "test alert", {})
    wait_until(lambda: (d.listener_state().get("last_alert") or {}).get("results", {}).get("hook"), 20,
               "the webhook failure in the listener state")
    results = d.listener_state()["last_alert"]["results"]
    assert results["hook"].startswith("journaled: POST http://***@127.0.0.1:") and "/***" in results["hook"]
    assert "journaled" in results["mail"]
    wait_until(lambda: os.path.exists(d.layout.alert_journal), 10, "the journal")
    files = all_files(d.layout.run_dir, d.conf_path)
    # Even root finds the webhook token and the SMTP password nowhere under run_dir.
    for path in all_files(d.layout.run_dir):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue  # the control socket
        assert TOKEN.encode() not in data and SMTP_PASSWORD.encode() not in data, path
    # nobody can read none of it: the conf (app.env) and every file with content.
    for secret in (TOKEN, SMTP_PASSWORD, DB_PASSWORD):
        out = as_user("nobody", "grep", "-rl", secret, d.layout.run_dir, d.conf_path)
        assert out.stdout == "", out.stdout
    readable = [p for p in files if as_user("nobody", "head", "-c", "1", p).returncode == 0]
    assert readable == [], readable
    with open(d.conf_path) as f:
        assert DB_PASSWORD in f.read()  # the conf has it, and is 0600
    assert os.stat(d.conf_path).st_mode & 0o077 == 0
    # The SMTP password reaches no program but the listener.
    infos = {i["name"]: i["pid"] for i in d.infos() if i["pid"]}
    assert {"web_00", "web_01", "web_helper", "web_watchdog", "web_listener"} <= set(infos)
    for name, pid in infos.items():
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        has = f"SMTP_PASSWORD={SMTP_PASSWORD}".encode() in env
        assert has == (name == "web_listener"), name
    # And www-data cannot read the listener's environment (it runs as root).
    out = as_user("www-data", "cat", f"/proc/{infos['web_listener']}/environ")
    assert out.returncode != 0 and SMTP_PASSWORD not in out.stdout


def test_check_fails_on_every_run_dir_up_refuses(deploy, app_python):
    """Issue 18: check vouched for a 0777 run_dir and for run_dir = "/tmp" (exit 0) while up refused them."""
    d = deploy(base(app_python), start=False)
    open_for_others(d.folder)
    assert d.cli("check").returncode == 0
    os.chmod(d.layout.run_dir, 0o777)
    tmp_spec = os.path.join(d.folder, "tmp-run.toml")
    with open(d.spec_path) as f, open(tmp_spec, "w") as out:
        out.write(f.read().replace(d.layout.run_dir, "/tmp"))
    for spec_path, words in ((d.spec_path, f"{d.layout.run_dir} is writable by its group or others (mode 0777)"),
                             (tmp_spec, "/tmp is a folder every user can write (mode 1777)")):
        check = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "check", "-c", spec_path],
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 1, check.stdout + check.stderr
        failed = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
        assert failed == [f"FAIL supervisord.run_dir: {words}" + failed[0].split(words, 1)[1]], check.stdout
        assert "ok   supervisord.run_dir" not in check.stdout
        up = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "up", "-c", spec_path],
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 2, up.stdout + up.stderr
        assert up.stderr.strip() == f"error: {spec_path}: {failed[0][len('FAIL '):]}", up.stderr
        assert "Traceback" not in check.stdout + check.stderr + up.stdout + up.stderr


HEADER_SECRET = "HEADERSECRET-0b9e4d21"
PAGER_KEY = "PAGERKEY-5a6c7d8e"


def test_a_command_alert_fired_by_a_real_incident_gets_no_other_channels_secret(deploy, app_python, monkeypatch):
    """Issue 18: the command ran as app.user with the listener's environment minus the SMTP
    variables, SUPERVISOR_FASTAPI_LISTENER included (every channel's settings: the webhook URL
    with its token, its headers), readable in /proc/<pid>/environ by the app user, who can
    fire an alert at will by killing its own worker three times."""
    from ..helpers_alerts import closed_port

    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)  # supervisord inherits these, as under systemd
    monkeypatch.setenv("PAGER_KEY", PAGER_KEY)
    dead = closed_port()
    out_dir = tempfile.mkdtemp(prefix="sf-cmd-")
    os.chown(out_dir, pwd.getpwnam("www-data").pw_uid, 0)
    os.chmod(out_dir, 0o700)
    try:
        d = deploy(base(app_python, server={"workers": 2}, listener={"send_retries": 0},
                        crash_loop={"restarts": 3, "window": 60},
                        alerts=[{"type": "webhook", "name": "hook", "timeout": 1,
                                 "url": f"http://ops:{TOKEN}@127.0.0.1:{dead}/services/{TOKEN}?token={TOKEN}",
                                 "headers": {"Authorization": f"Bearer {HEADER_SECRET}"}},
                                {"type": "email", "name": "mail", "host": "127.0.0.1", "port": dead,
                                 "from": "a@b.example", "to": "ops@b.example", "username": "alerts",
                                 "password_env": "SMTP_PASSWORD", "starttls": False, "timeout": 1},
                                {"type": "command", "name": "script", "pass_env": ["PAGER_KEY"],
                                 "command": f"sh -c 'cat /proc/$$/environ > {out_dir}/environ; "
                                            f"cat > {out_dir}/alert.json; id -u > {out_dir}/uid'"}]), start=False)
        open_for_others(d.folder)
        d.start(wait=True, timeout=60)
        # The app user's own move: kill its worker three times (a "killed" incident opens).
        for n in range(3):
            # Killed once it serves (its ready file names it): a "killed" incident, not a start failure.
            old = wait_until(lambda: serving_pid(d, "web_00"), 30, f"kill {n}: web_00 serving")
            as_user("www-data", "kill", "-KILL", str(old))
            wait_until(lambda old=old: worker_pid(d, "web_00") != old, 20, f"kill {n}: web_00 gone")
        alert_file = os.path.join(out_dir, "alert.json")
        uid_file = os.path.join(out_dir, "uid")
        # The command writes uid last: once it has a line, environ and alert.json are complete.
        uid = wait_until(lambda: os.path.exists(uid_file) and open(uid_file).read().strip(), 30, "the command alert")
        assert int(uid) == pwd.getpwnam("www-data").pw_uid
        with open(alert_file) as f:
            alert = json.load(f)
        assert (alert["event"], alert["kind"]) == ("open", "killed"), alert
        with open(os.path.join(out_dir, "environ"), "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        names = sorted(k.decode() for k in env)
        # The allow-list and its own pass_env; nothing of the listener's.
        assert set(names) <= {"PATH", "HOME", "LANG", "USER", "LOGNAME", "PAGER_KEY", "PWD"}, names
        assert env[b"PAGER_KEY"] == PAGER_KEY.encode() and env[b"USER"] == b"www-data"
        dump = b"\0".join(b"=".join(kv) for kv in env.items())
        for secret in (TOKEN, HEADER_SECRET, SMTP_PASSWORD, "SUPERVISOR_FASTAPI_LISTENER"):
            assert secret.encode() not in dump, secret
        # Through any child: every process supervisord runs whose environment www-data can read.
        readable = 0
        for info in d.infos():
            if not info["pid"]:
                continue
            got = as_user("www-data", "cat", f"/proc/{info['pid']}/environ", f"/proc/{info['pid']}/cmdline")
            if got.returncode != 0:
                assert info["name"] in ("web_listener", "web_watchdog"), info["name"]  # root's
                continue
            readable += 1
            for secret in (TOKEN, HEADER_SECRET, SMTP_PASSWORD, PAGER_KEY, "SUPERVISOR_FASTAPI_LISTENER"):
                assert secret not in got.stdout, (info["name"], secret)
        assert readable >= 2  # the web workers
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.mark.parametrize("command", ["check", "render"])
def test_a_5_mb_env_value_is_one_line_exit_2_within_2_s(tmp_path, command):
    """Issue 18: a 400 kB app.env value made check take 9.5 s, 5 MB ran past 5 minutes at 100 % CPU
    (supervisord's environment= parser); now refused before any parser sees it."""
    spec = tmp_path / "supervisor-fastapi.toml"
    spec.write_text('[app]\nname = "web"\nasgi = "main:app"\n\n[app.env]\nBIG = "' + "x" * 5_000_000 + '"\n')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "supervisor_fastapi", command, "-c", str(spec)],
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr == (f"error: {spec}: app.env.BIG: line 6 is 4.77 MB long; a value may be at most 4096 "
                          "characters, a spec file may be at most 128 KB\n")
    # CPU time is what the command costs; the wall clock on a machine shared by parallel test
    # runs adds waiting for a core (1.8 s seen at load 9, 0.3 s of it CPU).
    assert cpu < 2.0, f"{command} used {cpu:.2f} s of CPU"
    assert took < 6.0, f"{command} took {took:.2f} s"
