"""A conf.d fragment with --with-plugins under a separately configured ("OS") supervisord."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import tomli_w

from supervisor_fastapi import control
from supervisor_fastapi.render import Layout

from .conftest import APPS, free_port, wait_until


@pytest.fixture
def os_supervisord():
    folder = tempfile.mkdtemp(prefix="sfo-")
    procs = []
    yield folder, procs
    for conf in procs:
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, "shutdown"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    pidfile = os.path.join(folder, "supervisord.pid")
    pid = control._read_pid(pidfile)
    if pid:
        wait_until(lambda: not control._alive(pid), 60, "supervisord to exit")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def test_fragment_with_plugins_status_and_restart_via_serverurl(os_supervisord):
    folder, procs = os_supervisord
    port = free_port()
    spec_path = os.path.join(folder, "supervisor-fastapi.toml")
    with open(spec_path, "w") as f:
        f.write(tomli_w.dumps({"app": {"name": "web", "asgi": "testapp:app", "directory": APPS},
                               "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": 2, "graceful_timeout": 5},
                               "supervisord": {"run_dir": os.path.join(folder, "run")}}))
    os.makedirs(os.path.join(folder, "conf.d"))
    sock = os.path.join(folder, "os.sock")
    main_conf = os.path.join(folder, "supervisord.conf")
    with open(main_conf, "w") as f:
        f.write(f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={folder}/supervisord.log\n"
                f"pidfile={folder}/supervisord.pid\n[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface\n"
                f"[supervisorctl]\nserverurl=unix://{sock}\n[include]\nfiles=conf.d/*.conf\n"
                # supervisorctl does not read [include]d files: the ctlplugin is added to the main conf.
                "[ctlplugin:fastapi]\nsupervisor.ctl_factory=supervisor_fastapi.ctlplugin:make_ctlplugin\n"
                "group=web\n")
    cli = [sys.executable, "-m", "supervisor_fastapi"]
    out = subprocess.run(cli + ["render", "-c", spec_path, "--fragment", "--with-plugins",
                                "-o", os.path.join(folder, "conf.d", "web.conf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", main_conf], check=True, timeout=30)
    procs.append(main_conf)
    url = f"unix://{sock}"
    layout = Layout(os.path.join(folder, "run"))

    def ready():
        out = subprocess.run(cli + ["status", "-c", spec_path, "--serverurl", url], capture_output=True, text=True)
        return out.returncode == 0 and out.stdout

    text = wait_until(ready, 30, "status to report every process up")
    assert "web:web_00" in text and f"tcp://127.0.0.1:{port}" in text, text
    before = {s["pid"] for s in control.worker_states(layout).values()}
    out = subprocess.run(cli + ["restart", "-c", spec_path, "--serverurl", url], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "restarted 2" in out.stdout, out.stdout + out.stderr
    ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", main_conf, "rolling_restart"],
                         capture_output=True, text=True, timeout=120)
    assert "web: restarted 2" in ctl.stdout, ctl.stdout + ctl.stderr
    after = {s["pid"] for s in control.worker_states(layout).values()}
    assert not (before & after)
