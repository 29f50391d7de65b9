"""A conf.d fragment with --with-plugins under a separately configured ("OS") supervisord."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Tuple

import pytest
import tomli_w

from supervisor_fastapi.cli import control
from supervisor_fastapi.contracts.rpc import notify
from supervisor_fastapi.layout import Layout

from .conftest import APPS, daemon_pid, free_port, reap, wait_until, worker_files

CLI = [sys.executable, "-m", "supervisor_fastapi"]


@pytest.fixture
def os_supervisord():
    folder = tempfile.mkdtemp(prefix="sfo-")
    procs = []
    yield folder, procs
    pid = control._read_pid(os.path.join(folder, "supervisord.pid"))  # before shutdown removes the file
    for conf in procs:
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, "shutdown"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    reap(pid)
    shutil.rmtree(folder, ignore_errors=True)


def write_os_conf(folder: str, ctl_group: str = "") -> str:
    """A main supervisord.conf as an OS package ships it, including conf.d/*.conf."""
    os.makedirs(os.path.join(folder, "conf.d"), exist_ok=True)
    sock = os.path.join(folder, "os.sock")
    main_conf = os.path.join(folder, "supervisord.conf")
    with open(main_conf, "w") as f:
        f.write(f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={folder}/supervisord.log\n"
                f"pidfile={folder}/supervisord.pid\n[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface\n"
                f"[supervisorctl]\nserverurl=unix://{sock}\n[include]\nfiles=conf.d/*.conf\n"
                # supervisorctl does not read [include]d files: the ctlplugin is added to the main conf.
                "[ctlplugin:fastapi]\nsupervisor.ctl_factory=supervisor_fastapi.plugins.ctl:make_ctlplugin\n"
                + (f"app={ctl_group}\n" if ctl_group else ""))
    return main_conf


def write_fragment(folder: str, name: str) -> Tuple[str, int]:
    """An app's spec (run_dir in ``folder/<name>-run``) and its conf.d fragment with the plugins."""
    port = free_port()
    spec_path = os.path.join(folder, f"{name}.toml")
    with open(spec_path, "w") as f:
        f.write(tomli_w.dumps({"app": {"name": name, "asgi": "testapp:app", "directory": APPS},
                               "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": 2, "graceful_timeout": 5},
                               "supervisord": {"run_dir": os.path.join(folder, f"{name}-run")}}))
    out = subprocess.run(CLI + ["render", "-c", spec_path, "--fragment", "--with-plugins",
                                "-o", os.path.join(folder, "conf.d", f"{name}.conf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return spec_path, port


# supervisorctl as an OS package runs it: its Python has supervisor and (for the ctl plugin)
# this package alone, installed --no-deps. The app's dependencies are blocked here, so a plugin
# command that reaches for one of them fails as it would on Debian.
BARE_SUPERVISORCTL = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("uvicorn", "click", "tomli_w", "tomli", "fastapi", "starlette"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the OS Python)")
sys.meta_path.insert(0, Block())
from supervisor.supervisorctl import main
main()
"""


def ctl(main_conf: str, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-c", BARE_SUPERVISORCTL, "-c", main_conf, *args],
                          capture_output=True, text=True, timeout=120)


def test_fragment_with_plugins_status_and_restart_via_serverurl(os_supervisord):
    folder, procs = os_supervisord
    main_conf = write_os_conf(folder, ctl_group="web")
    spec_path, port = write_fragment(folder, "web")
    start_os_supervisord(main_conf, procs)
    url = f"unix://{os.path.join(folder, 'os.sock')}"
    layout = Layout(os.path.join(folder, "web-run"))

    def ready():
        out = subprocess.run(CLI + ["status", "-c", spec_path, "--serverurl", url], capture_output=True, text=True)
        return out.returncode == 0 and out.stdout

    text = wait_until(ready, 30, "status to report every process up")
    assert "web:web_00" in text and f"tcp://127.0.0.1:{port}" in text, text
    before = {s["pid"] for s in worker_files(layout).values()}
    out = subprocess.run(CLI + ["restart", "-c", spec_path, "--serverurl", url], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "restarted 2" in out.stdout, out.stdout + out.stderr
    res = ctl(main_conf, "rolling_restart")
    assert "web: restarted 2" in res.stdout, res.stdout + res.stderr
    after = {s["pid"] for s in worker_files(layout).values()}
    assert not (before & after)


def test_two_apps_fragments_on_one_supervisord_each_see_their_own_workers(os_supervisord):
    # Each fragment carries its own [rpcinterface:fastapi_<app>]: one controller per app,
    # each seeing only its own groups and files, even when one app's name starts with the
    # other's ("web" and "web_admin": web_admin's groups look like web's [[programs]]).
    folder, procs = os_supervisord
    main_conf = write_os_conf(folder)
    write_fragment(folder, "web")
    write_fragment(folder, "web_admin")
    start_os_supervisord(main_conf, procs)

    def status(group):
        res = ctl(main_conf, "fastapi_status", group, "--json")
        return json.loads(res.stdout) if res.returncode == 0 else None

    def ready_workers(group):
        st = status(group)
        ready = [p for p in st["processes"] if p["group"] == group and p["ready"]] if st else []
        return st if len(ready) == 2 else None

    for group in ("web", "web_admin"):
        st = wait_until(lambda group=group: ready_workers(group), 30, f"{group}'s status to report both workers ready")
        own = {group, f"{group}_listener", f"{group}_migrate", f"{group}_watchdog"}
        assert {p["group"] for p in st["processes"]} <= own, ("another app's programs leaked in", st["processes"])
        assert st["ok"], st
    res = ctl(main_conf, "fastapi_status", "web")  # the table, as an operator reads it (no uvicorn here)
    assert res.returncode == 0 and "web:web_00" in res.stdout and "Error" not in res.stdout, res.stdout + res.stderr
    res = ctl(main_conf, "fastapi_status")  # two apps, no group= in [ctlplugin:fastapi]: say which
    assert res.returncode != 0 and "name the app" in res.stdout, res.stdout + res.stderr
    web_before = {s["pid"] for s in worker_files(Layout(os.path.join(folder, "web-run"))).values()}
    res = ctl(main_conf, "rolling_restart", "web")
    assert "web: restarted 2" in res.stdout, res.stdout + res.stderr
    admin_before = {s["pid"] for s in worker_files(Layout(os.path.join(folder, "web_admin-run"))).values()}
    res = ctl(main_conf, "rolling_restart", "web_admin")
    assert "web_admin: restarted 2" in res.stdout, res.stdout + res.stderr
    web_after = {s["pid"] for s in worker_files(Layout(os.path.join(folder, "web-run"))).values()}
    admin_after = {s["pid"] for s in worker_files(Layout(os.path.join(folder, "web_admin-run"))).values()}
    assert web_after and not (web_before & web_after), "web's roll replaced web's workers"
    assert admin_after and not (admin_before & admin_after)
    assert web_after == {s["pid"] for s in worker_files(Layout(os.path.join(folder, "web-run"))).values()}

    # Both listeners at rest; an alert for each app starts that app's listener alone and lands
    # in that app's channel alone (each plugin spools its own app's alerts, drops the other's).
    proxy = control.proxy(f"unix://{folder}/os.sock")

    def states() -> dict:
        return {i["name"]: i["statename"] for i in proxy.supervisor.getAllProcessInfo()}

    wait_until(lambda: states()["web_listener"] == states()["web_admin_listener"] == "EXITED", 30,
               "both listeners at rest")
    notify(proxy, "web", "for_web", "web_00", "web's alert")
    notify(proxy, "web_admin", "for_admin", "web_admin_00", "web_admin's alert")

    def kinds(app: str) -> list:
        try:
            with open(Layout(os.path.join(folder, f"{app}-run")).alerts_log) as f:
                return [json.loads(line)["kind"] for line in f if line.strip()]
        except OSError:
            return []

    wait_until(lambda: kinds("web") and kinds("web_admin"), 20, "each app's alert in its own channel")
    wait_until(lambda: states()["web_listener"] == states()["web_admin_listener"] == "EXITED", 30,
               "both listeners at rest again")
    assert kinds("web") == ["for_web"] and kinds("web_admin") == ["for_admin"]


def write_shared_spec(folder: str, name: str, plugins: bool, fragment: str = "", **extra) -> Tuple[str, int]:
    """A spec that names the running supervisord (supervisord.serverurl): no flags needed anywhere."""
    port = free_port()
    spec_path = os.path.join(folder, f"{name}.toml")
    data = {"app": {"name": name, "asgi": "testapp:app", "directory": APPS},
            "server": {"bind": f"tcp://127.0.0.1:{port}", "workers": 2, "graceful_timeout": 5},
            "supervisord": {"run_dir": os.path.join(folder, f"{name}-run"),
                            "serverurl": f"unix://{os.path.join(folder, 'os.sock')}",
                            "fragment": fragment or os.path.join(folder, "conf.d", f"{name}.conf"),
                            "plugins": plugins}}
    data.update(extra)
    with open(spec_path, "w") as f:
        f.write(tomli_w.dumps(data))
    return spec_path, port


def cli(spec_path: str, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(CLI + [*args, "-c", spec_path], capture_output=True, text=True, timeout=180)


def start_os_supervisord(main_conf: str, procs: list) -> None:
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", main_conf], check=True, timeout=30)
    if main_conf not in procs:
        procs.append(main_conf)
    daemon_pid(os.path.join(os.path.dirname(main_conf), "supervisord.pid"))


def restart_os_supervisord(folder: str, main_conf: str, procs: list) -> None:
    """What `systemctl restart supervisor` does, by hand: stop it, wait for its pid, start it."""
    pid = control._read_pid(os.path.join(folder, "supervisord.pid"))
    ctl(main_conf, "shutdown")
    wait_until(lambda: pid and not control.pid_alive(pid), 60, "the OS supervisord to exit")
    start_os_supervisord(main_conf, procs)


def groups_running(main_conf: str) -> set:
    out = ctl(main_conf, "status").stdout
    return {line.split()[0].split(":")[0] for line in out.splitlines() if line.strip()}


def answers(port: int) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_up_status_check_restart_down_through_supervisord_serverurl_without_flags(os_supervisord):
    """Issue 10: `up` in a running OS supervisord applies only this app's groups; `status`,
    `check`, `restart`, `down` need no --serverurl; another app's pending change stays pending."""
    folder, procs = os_supervisord
    main_conf = write_os_conf(folder)
    start_os_supervisord(main_conf, procs)
    shop, shop_port = write_shared_spec(folder, "shop", plugins=True,
                                        migrate={"command": f"{sys.executable} -c \"print('migrated')\""})
    # The plugin loads at supervisord's start only: the first `up` writes the fragment and says so.
    out = cli(shop, "up")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "loads plugins only when it starts" in out.stderr and "restart it once" in out.stderr, out.stderr
    assert os.path.exists(os.path.join(folder, "conf.d", "shop.conf"))
    assert "shop" not in groups_running(main_conf), "applied without its controller: ungated"
    restart_os_supervisord(folder, main_conf, procs)
    out = cli(shop, "up")
    assert out.returncode == 0 and "shop: 2 workers serving" in out.stdout, out.stdout + out.stderr
    assert "supervisorctl -s unix://" in out.stdout
    assert answers(shop_port)

    admin, admin_port = write_shared_spec(folder, "shop_admin", plugins=False)
    out = cli(admin, "up")
    assert out.returncode == 0 and "shop_admin: 2 workers serving" in out.stdout, out.stdout + out.stderr
    assert "added: shop_admin, shop_admin_listener" in out.stderr, out.stderr

    for spec, own in ((shop, {"shop", "shop_listener", "shop_migrate"}),
                      (admin, {"shop_admin", "shop_admin_listener"})):
        out = cli(spec, "status", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert {p["group"] for p in json.loads(out.stdout)["processes"]} == own

    # Its own workers hold the port: `check` says so instead of "already in use".
    out = cli(shop, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "held by this deployment's own workers" in out.stdout and "plugin import" in out.stdout, out.stdout
    out = cli(shop, "restart")
    assert out.returncode == 0 and "restarted 2" in out.stdout, out.stdout + out.stderr

    # Another app's fragment changes on disk: shop's `up` (twice) leaves that change pending.
    admin_pids = {i["pid"] for i in control.proxy(f"unix://{folder}/os.sock").supervisor.getAllProcessInfo()
                  if i["group"] == "shop_admin"}
    write_shared_spec(folder, "shop_admin", plugins=False, server={"bind": f"tcp://127.0.0.1:{admin_port}",
                                                                  "workers": 3, "graceful_timeout": 5})
    assert cli(admin, "render").returncode == 0
    for _ in range(2):
        out = cli(shop, "up")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "left as they are (not this app's): shop_admin" in out.stderr, out.stderr
    assert {i["pid"] for i in control.proxy(f"unix://{folder}/os.sock").supervisor.getAllProcessInfo()
            if i["group"] == "shop_admin"} == admin_pids

    # shop's plugin holds shop's socket, never shop_admin's (an app without the plugin).
    holds = control.proxy(f"unix://{folder}/os.sock").fastapi_shop.getSocketHolds()
    assert [h["url"] for h in holds] == [f"tcp://127.0.0.1:{shop_port}"], holds
    out = cli(admin, "down")
    assert out.returncode == 0 and "stopped" in out.stdout, out.stdout + out.stderr
    wait_until(lambda: port_free(admin_port), 3, "shop_admin's port to be free after its down")
    assert not os.path.exists(os.path.join(folder, "conf.d", "shop_admin.conf"))
    assert not {"shop_admin", "shop_admin_listener"} & groups_running(main_conf)
    assert ctl(main_conf, "update").returncode == 0 and "shop_admin" not in groups_running(main_conf)
    assert answers(shop_port) and not answers(admin_port)
    out = cli(admin, "down")
    assert out.returncode == 0 and "not running" in out.stdout, out.stdout + out.stderr


def test_up_refuses_a_fragment_path_the_supervisord_does_not_include(os_supervisord):
    folder, procs = os_supervisord
    main_conf = write_os_conf(folder)
    start_os_supervisord(main_conf, procs)
    os.makedirs(os.path.join(folder, "elsewhere"))
    spec, _ = write_shared_spec(folder, "shop", plugins=False, fragment=os.path.join(folder, "elsewhere", "shop.conf"))
    out = cli(spec, "up")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "does not read" in out.stderr and "[include] files=" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    out = cli(spec, "status")
    assert out.returncode == 1, out.stdout + out.stderr  # nothing of shop runs there


def test_status_names_the_fix_when_nothing_answers_at_serverurl(os_supervisord):
    folder, _ = os_supervisord
    spec, _ = write_shared_spec(folder, "shop", plugins=False)
    for args in (("status",), ("up",), ("down",), ("restart",)):
        out = cli(spec, *args)
        assert out.returncode == 2, (args, out.stdout + out.stderr)
        assert "supervisord.serverurl: no supervisord answers at unix://" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_up_says_when_another_apps_fragment_breaks_the_reread(os_supervisord):
    """On a shared supervisord the file that breaks `reread` may be somebody else's: one line, nothing applied."""
    folder, procs = os_supervisord
    main_conf = write_os_conf(folder)
    start_os_supervisord(main_conf, procs)
    with open(os.path.join(folder, "conf.d", "zz_other.conf"), "w") as f:
        f.write("[program:other]\nnumprocs=2\ncommand=/bin/sleep 60\n")  # numprocs without %(process_num)s
    spec, _ = write_shared_spec(folder, "shop", plugins=False)
    out = cli(spec, "up")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "supervisord cannot reread its conf, so nothing was applied" in out.stderr, out.stderr
    assert "process_num" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "shop" not in groups_running(main_conf)
