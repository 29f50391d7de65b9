"""The Debian walk: the `supervisor` package's own supervisord, two apps as conf.d fragments.

What docs/guide.md ("supervisord from the OS package") shows, run for real: /usr/bin/supervisord
(Debian's package, its /usr/bin/python3) started by hand, not by systemd, from a main conf
modelled on /etc/supervisor/supervisord.conf with its socket, logs and conf.d in tmp; the apps
`shop` (with the plugin) and `shop_admin` (without) name it in `supervisord.serverurl`, so
`check`, `up`, `status` and `down` take no flags; `up` writes each fragment and applies it.

The plugins are made importable for /usr/bin/python3 the documented way (a .pth line naming a
folder that holds only this package), here through PYTHONPATH on the supervisord and
supervisorctl processes so that the test changes nothing outside tmp.
"""

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from typing import Tuple

import pytest
import tomli_w

from supervisor_fastapi.cli import control
from supervisor_fastapi.layout import Layout
from tests.ports import free_port

from .conftest import APPS, daemon_pid, reap, wait_until, worker_files

pytestmark = pytest.mark.integration

SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"
PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/supervisor_fastapi"


def debian_supervisor() -> str:
    """Why the walk cannot run here, or '' when Debian's supervisor package is installed."""
    if not os.path.exists(SUPERVISORD):
        return f"{SUPERVISORD} is absent: install Debian's package (apt-get install supervisor) to run the Debian walk"
    if subprocess.run(["dpkg", "-S", SUPERVISORD], capture_output=True).returncode != 0:
        return f"{SUPERVISORD} does not come from a Debian package"
    return ""


pytestmark = [pytestmark, pytest.mark.skipif(bool(debian_supervisor()), reason=debian_supervisor() or "-")]

MAIN_CONF = """; modelled on Debian's /etc/supervisor/supervisord.conf, everything in {folder}
[unix_http_server]
file={folder}/supervisor.sock
chmod=0700

[supervisord]
logfile={folder}/log/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}/log

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/supervisor.sock

; supervisorctl never reads [include]d files: the ctlplugin goes in the main conf
[ctlplugin:fastapi]
supervisor.ctl_factory=supervisor_fastapi.plugins.ctl:make_ctlplugin

[include]
files = {folder}/conf.d/*.conf
"""


@pytest.fixture
def debian():
    folder = tempfile.mkdtemp(prefix="sfd-")  # short: the socket path must fit a unix address
    os.makedirs(os.path.join(folder, "conf.d"))
    os.makedirs(os.path.join(folder, "log"))
    plugins = os.path.join(folder, "plugins")
    os.makedirs(plugins)
    os.symlink(PACKAGE, os.path.join(plugins, "supervisor_fastapi"))
    main_conf = os.path.join(folder, "supervisord.conf")
    with open(main_conf, "w") as f:
        f.write(MAIN_CONF.format(folder=folder))
    env = dict(os.environ, PYTHONPATH=plugins)
    yield folder, main_conf, env
    pid = control._read_pid(os.path.join(folder, "supervisord.pid"))  # before shutdown removes the file
    subprocess.run([SUPERVISORCTL, "-c", main_conf, "shutdown"], env=env, capture_output=True, timeout=60)
    reap(pid)
    shutil.rmtree(folder, ignore_errors=True)


CLI = [sys.executable, "-m", "supervisor_fastapi"]


def write_spec(folder: str, name: str, plugins: bool) -> Tuple[str, int]:
    """The spec docs/guide.md shows: supervisord.serverurl names Debian's supervisord."""
    port = free_port()
    spec_path = os.path.join(folder, f"{name}.toml")
    with open(spec_path, "w") as f:
        f.write(tomli_w.dumps({"app": {"name": name, "asgi": "testapp:app", "directory": APPS,
                                       "python": sys.executable},
                               "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": 2, "graceful_timeout": 5},
                               "supervisord": {"run_dir": os.path.join(folder, f"{name}-run"),
                                               "serverurl": f"unix://{os.path.join(folder, 'supervisor.sock')}",
                                               "fragment": os.path.join(folder, "conf.d", f"{name}.conf"),
                                               "plugins": plugins}}))
    return spec_path, port


def cli(spec_path: str, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(CLI + [*args, "-c", spec_path], capture_output=True, text=True, timeout=180)


def get(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else {}
    except OSError:
        return {}
    finally:
        conn.close()


def workers_answering(port: int, group: str, timeout: float = 20.0) -> bool:
    """Whether both workers of ``group`` answer on ``port`` within ``timeout``. Which worker
    accepts a connection is the kernel's choice: on a busy machine (three suites side by side
    in CI) one worker took 40 in a row, so a fixed number of probes failed now and then."""
    want, seen = {f"{group}_00", f"{group}_01"}, set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.add(get(port).get("worker"))
        if want <= seen:
            return True
    return False


def test_two_apps_as_fragments_under_debians_own_supervisord(debian):
    folder, main_conf, env = debian

    def ctl(*args: str) -> str:
        out = subprocess.run([SUPERVISORCTL, "-c", main_conf, *args], env=env, capture_output=True, text=True,
                             timeout=120)
        return out.stdout + out.stderr

    def start_supervisord() -> int:
        subprocess.run([SUPERVISORD, "-c", main_conf], env=env, check=True, timeout=60)
        return daemon_pid(os.path.join(folder, "supervisord.pid"))

    pid = start_supervisord()
    # It is Debian's supervisord, under /usr/bin/python3.
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"/usr/bin/python3", SUPERVISORD.encode()]

    shop, shop_port = write_spec(folder, "shop", plugins=True)
    out = cli(shop, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plugin import: /usr/bin/python3 imports supervisor_fastapi" in out.stdout, out.stdout
    # The plugin loads when supervisord starts: the first `up` writes the fragment and asks for one restart.
    out = cli(shop, "up")
    assert out.returncode == 2 and "restart it once" in out.stderr, out.stdout + out.stderr
    ctl("shutdown")
    wait_until(lambda: not control.pid_alive(pid), 60, "Debian's supervisord to exit")
    start_supervisord()
    out = cli(shop, "up")
    assert out.returncode == 0 and "shop: 2 workers serving" in out.stdout, out.stdout + out.stderr
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport("", "", f"unix://{os.path.join(folder, 'supervisor.sock')}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    assert proxy.fastapi_shop.getAPIVersion()  # the controller runs inside Debian's supervisord
    assert workers_answering(shop_port, "shop")

    # The second app joins the running supervisord without the plugin: `up` runs reread/update for it.
    def shop_pids() -> dict:
        return {i["name"]: i["pid"] for i in proxy.supervisor.getAllProcessInfo() if i["group"] == "shop"}

    before = shop_pids()
    admin, admin_port = write_spec(folder, "shop_admin", plugins=False)
    out = cli(admin, "up")
    assert out.returncode == 0 and "shop_admin: 2 workers serving" in out.stdout, out.stdout + out.stderr
    assert shop_pids() == before  # the other app's workers were not touched
    assert workers_answering(admin_port, "shop_admin") and workers_answering(shop_port, "shop")
    # shop_admin has no plugin: its listener stays. shop's is started by its plugin when an event
    # needs it, so it may be at rest (EXITED after its idle exit) by now.
    names = ("shop:shop_00", "shop:shop_01", "shop_admin:shop_admin_00", "shop_admin:shop_admin_01",
             "shop_admin_listener")

    def all_running() -> bool:
        # A worker answers before supervisord calls it RUNNING (startsecs): wait for the state asserted.
        lines = ctl("status").splitlines()
        return (all(any(line.startswith(name + " ") and "RUNNING" in line for line in lines) for name in names)
                and any(line.startswith("shop_listener ") and ("RUNNING" in line or "EXITED" in line)
                        for line in lines))

    wait_until(all_running, 15, "every process RUNNING in supervisorctl status")
    for spec, own in ((shop, {"shop", "shop_listener"}), (admin, {"shop_admin", "shop_admin_listener"})):
        out = cli(spec, "status", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert {p["group"] for p in json.loads(out.stdout)["processes"]} == own
    out = cli(shop, "check")
    assert out.returncode == 0 and "held by this deployment's own workers" in out.stdout, out.stdout
    # Debian's supervisorctl, with the package alone (no uvicorn, click or tomli-w) on its path.
    text = ctl("fastapi_status", "shop")
    assert "shop:shop_00" in text and "RUNNING" in text and "Error" not in text, text
    assert "shop: restarted 2" in ctl("rolling_restart", "shop")
    # Each app's workers write their state into their own run_dir.
    for name in ("shop", "shop_admin"):
        states = worker_files(Layout(os.path.join(folder, f"{name}-run")))
        assert set(states) == {f"{name}_00", f"{name}_01"}, states
    out = cli(admin, "down")
    assert out.returncode == 0 and "stopped" in out.stdout, out.stdout + out.stderr
    assert "shop_admin" not in ctl("status") and workers_answering(shop_port, "shop")
