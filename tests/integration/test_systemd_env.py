"""Started as systemd starts it: supervisord with a bare PATH and nothing else in its environment.

systemd gives a service PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin and no venv; a
migration command `python migrate.py` must still find the app's interpreter (issue 16, point 2).
"""

import os
import shutil
import subprocess
import sys

import pytest

from supervisor_fastapi.cli import control
from supervisor_fastapi.cli.deploy import wait_ready

from .conftest import daemon_pid

pytestmark = pytest.mark.integration

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def bare_python_is_the_venvs_only() -> bool:
    venv_python = os.path.join(os.path.dirname(sys.executable), "python")
    return os.path.exists(venv_python) and shutil.which("python", path=SYSTEMD_PATH) is None


@pytest.mark.skipif(not bare_python_is_the_venvs_only(),
                    reason="needs a venv whose bin/ has `python` and a host without it on systemd's PATH")
def test_a_supervisord_started_with_systemds_path_serves_with_a_bare_python_migration(deploy, tmp_path):
    script = tmp_path / "migrate.py"
    script.write_text("print('migrated', flush=True)\n")
    d = deploy({"app": {"python": sys.executable}, "migrate": {"command": f"python {script}"}}, start=False)
    os.makedirs(d.layout.log_dir, exist_ok=True)
    os.makedirs(d.layout.state_dir, exist_ok=True)
    supervisord = [sys.executable, "-m", "supervisor.supervisord", "-c", d.conf_path]
    r = subprocess.run(["env", "-i", f"PATH={SYSTEMD_PATH}", *supervisord], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    d.started = True
    daemon_pid(d.layout.pidfile)
    control.wait_for(lambda: control.is_running(d.layout), 30, "supervisord's control socket")
    wait_ready(d.spec, d.rpc, d.layout, lambda m: None, 30)
    m = next(i for i in d.infos() if i["name"] == "web_migrate")
    assert m["statename"] == "EXITED" and m["exitstatus"] == 0, m
    assert "migrated" in d.log("web_migrate")
    assert d.get("/")[0] == 200
