"""The core issue end to end: real supervisord from a generated conf, real HTTP to real uvicorn workers."""

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from supervisor_fastapi.cli import control
from supervisor_fastapi.cli import deploy as deploy_mod
from supervisor_fastapi.layout import Layout

from .conftest import APPS, wait_until, worker_files

CORE = {"app": {"asgi": "coreapp:app", "directory": APPS}}


def merge(*dicts):
    from .conftest import merge as m

    out = {}
    for d in dicts:
        out = m(out, d)
    return out


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def request(conn, path="/", headers=None):
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp, json.loads(resp.read())


def get(d, path="/", headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
    try:
        return request(conn, path, headers)
    finally:
        conn.close()


def run_cli(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "supervisor_fastapi", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_unix_socket_bind_serves_http_from_every_worker(deploy):
    d = deploy(merge(CORE, {"server": {"bind": "unix://web.sock", "workers": 2}}))
    path = d.spec.server.bind.path
    assert path == os.path.join(d.folder, "web.sock") and os.path.exists(path)
    pids = set()

    def both():
        conn = UnixHTTPConnection(path)
        try:
            resp, body = request(conn, "/hello")
        finally:
            conn.close()
        assert resp.status == 200 and body["path"] == "/hello"
        pids.add(body["pid"])
        return len(pids) == 2

    wait_until(both, 20, "both workers to answer on the unix socket")
    assert pids == {i["pid"] for i in d.infos() if i["group"] == "web"}


def test_uvicorn_settings_reach_uvicorn(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 1, "uvicorn": {
        "root_path": "/api", "server_header": False, "proxy_headers": True,
        "forwarded_allow_ips": ["127.0.0.1"], "headers": ["X-Served-By: supervisor-fastapi"]}}}))
    resp, body = get(d, "/x", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert resp.status == 200
    assert body["root_path"] == "/api"
    assert body["client"][0] == "203.0.113.7" and body["scheme"] == "https"
    assert resp.getheader("server") is None
    assert resp.getheader("x-served-by") == "supervisor-fastapi"


def test_proxy_headers_are_ignored_from_untrusted_peers(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 1, "uvicorn": {"proxy_headers": True,
                                                                  "forwarded_allow_ips": ["10.9.9.9"]}}}))
    resp, body = get(d, "/", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert body["client"][0] == "127.0.0.1" and body["scheme"] == "http"
    assert resp.getheader("server") == "uvicorn"  # the default stays on


@pytest.mark.parametrize("allow, trusted", [("*", True), (["127.0.0.1"], False)])
def test_proxy_headers_over_a_unix_socket_need_forwarded_allow_ips_star(deploy, allow, trusted):
    # A unix-socket peer has no address, so only "*" lets uvicorn honour X-Forwarded-*;
    # the socket's mode and owner are what restrict who can connect.
    d = deploy(merge(CORE, {"server": {"bind": "unix://web.sock", "workers": 1, "socket_mode": "0660",
                                       "uvicorn": {"proxy_headers": True, "forwarded_allow_ips": allow}}}))
    assert oct(os.stat(d.spec.server.bind.path).st_mode & 0o777) == "0o660"
    conn = UnixHTTPConnection(d.spec.server.bind.path)
    try:
        _, body = request(conn, "/", {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    finally:
        conn.close()
    if trusted:
        assert body["scheme"] == "https" and body["client"][0] == "203.0.113.7"
    else:
        assert body["scheme"] == "http" and body["client"] is None


def test_tcp_nodelay_is_set_on_accepted_connections(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 1}}))
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        request(conn, "/")  # connect; keep-alive
        local_port = conn.sock.getsockname()[1]
        _, body = request(conn, "/nodelay")
        mine = [s for s in body["sockets"] if s["peer"][1] == local_port]
        assert mine and mine[0]["nodelay"] != 0, body
        # The symptom the issue measured: ~44 ms per keep-alive request without TCP_NODELAY.
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            request(conn, "/")
            times.append(time.perf_counter() - t0)
        assert statistics.median(times) < 0.02, times
    finally:
        conn.close()


def test_sigterm_lets_an_in_flight_request_finish(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 1, "graceful_timeout": 10}}))
    result = {}

    def slow():
        t0 = time.monotonic()
        try:
            resp, body = get(d, "/sleep?s=3", timeout=30)
            result.update(status=resp.status, body=body)
        except Exception as exc:  # reported below
            result["error"] = repr(exc)
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: get(d, "/inflight")[1]["inflight"] >= 1, 10, "the slow request to be in flight")
    t0 = time.monotonic()
    out = d.ctl("stop", "web:*")
    stop_took = time.monotonic() - t0
    thread.join(30)
    assert "stopped" in out.stdout, out.stdout
    assert result.get("status") == 200, result
    assert result["elapsed"] >= 2.9
    assert stop_took < 10 + 10, stop_took  # within graceful_timeout + margin, no SIGKILL needed
    assert d.state_of("web_00") == "STOPPED"
    assert "Waiting for application shutdown" in d.log("web_00") or "Shutting down" in d.log("web_00")


def test_supervisorctl_restart_one_worker(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 2}}))
    before = {i["name"]: i["pid"] for i in d.infos() if i["group"] == "web"}
    out = d.ctl("restart", "web:web_00")
    assert "web:web_00: started" in out.stdout, out.stdout
    after = {i["name"]: i["pid"] for i in d.infos() if i["group"] == "web"}
    assert after["web_00"] != before["web_00"] and after["web_01"] == before["web_01"]
    status = d.ctl("status")
    assert status.stdout.count("RUNNING") >= 2, status.stdout


def test_up_fails_with_the_log_tail_when_the_app_does_not_start(deploy):
    # up's pre-flight import passes; under supervisord the import fails: only the log knows why.
    d = deploy({"app": {"env": {"IMPORT_FAILS_UNDER_SUPERVISOR": "no_such_database_xyz"}}}, start=False)
    r = d.cli("up", "--timeout", "60")
    d.started = True  # supervisord is left running for inspection; the fixture stops it
    assert r.returncode == 1, r.stdout + r.stderr  # the deployment failed; 2 is for a bad spec
    assert "web:web_0" in r.stderr and "failed" in r.stderr
    assert "--- last lines of its log ---" in r.stderr
    assert "no_such_database_xyz" in r.stderr
    assert not r.stderr.startswith("Traceback")
    down = d.cli("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    d.started = False


def test_the_log_tail_up_prints_starts_at_this_run(deploy):
    """Issue 10 point 4: the tail `up` prints holds this run's lines only, not the last run's
    error (which was the first thing on screen for a different problem)."""
    d = deploy({"app": {"env": {"IMPORT_FAILS_UNDER_SUPERVISOR": "first_run_error_abc"}}}, start=False)
    r = d.cli("up", "--timeout", "60")
    d.started = True
    assert r.returncode == 1 and "first_run_error_abc" in r.stderr, r.stderr
    assert d.cli("down").returncode == 0
    with open(d.spec_path) as f:
        text = f.read()
    with open(d.spec_path, "w") as f:
        # A short failure: a tail reaching back before this run would show the first run's traceback.
        f.write(text.replace("IMPORT_FAILS_UNDER_SUPERVISOR", "EXIT_UNDER_SUPERVISOR")
                .replace("first_run_error_abc", "second_run_error_xyz"))
    assert "first_run_error_abc" in d.log("web_00") + d.log("web_01"), "the log file keeps the earlier run"
    r = d.cli("up", "--timeout", "60")
    assert r.returncode == 1 and "second_run_error_xyz" in r.stderr, r.stderr
    assert "first_run_error_abc" not in r.stderr, r.stderr


def test_up_then_up_again_then_down(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 2}}), start=False)
    r = d.cli("up")
    d.started = True
    assert r.returncode == 0, r.stderr
    assert f"web: 2 workers serving http://127.0.0.1:{d.port}/" in r.stdout
    assert get(d)[0].status == 200
    r = d.cli("up")  # already running: applies the (unchanged) conf and waits again
    assert r.returncode == 0 and "supervisord is running" in r.stderr, r.stderr
    r = d.cli("down")
    assert r.returncode == 0 and r.stdout.strip() == "stopped"
    assert not control.is_running(d.layout)
    d.started = False


def test_check_reports_a_busy_port(deploy):
    d = deploy(start=False)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", d.port))
        busy.listen()
        r = d.cli("check")
        up = d.cli("up", "--timeout", "20")
    assert r.returncode == 1
    assert f"FAIL bind tcp://127.0.0.1:{d.port} is free: 127.0.0.1:{d.port} is already in use" in r.stdout
    assert "ok   supervisord accepts the generated conf" in r.stdout
    assert up.returncode == 2 and "server.bind" in up.stderr and "already in use" in up.stderr
    assert not control.is_running(d.layout)


def test_check_capacity_message(deploy):
    d = deploy({"server": {"workers": 4}, "memory": {"per_worker": "1GB", "budget": "3GB"}}, start=False)
    r = d.cli("check")
    assert r.returncode == 1
    assert "FAIL memory capacity: 4 workers x 1 GB = 4 GB > 3 GB budget" in r.stdout
    assert "lower server.workers to 3 or raise memory.budget" in r.stdout


def test_check_passes_on_a_good_spec(deploy):
    d = deploy(start=False)
    r = d.cli("check")
    assert r.returncode == 0, r.stdout
    assert "FAIL" not in r.stdout and "ok   app.python runs the worker" in r.stdout


def test_fragment_included_from_a_main_conf_that_supervisord_runs(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 2}}), start=False)
    confd = os.path.join(d.folder, "conf.d")
    os.makedirs(confd)
    r = d.cli("render", "--fragment", "-o", os.path.join(confd, "web.conf"))
    assert r.returncode == 0, r.stderr
    layout = d.layout
    main = os.path.join(d.folder, "main.conf")
    with open(main, "w") as f:
        f.write(f"""; an OS-packaged style main conf
[unix_http_server]
file={layout.socket}
chmod=0700

[supervisord]
logfile={os.path.join(d.folder, "main.log")}
pidfile={layout.pidfile}
childlogdir={layout.log_dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{layout.socket}

[include]
files = conf.d/*.conf
""")
    d.conf_path = main
    d.start(wait=True, timeout=60)
    pids = set()
    wait_until(lambda: pids.add(get(d)[1]["pid"]) or len(pids) == 2, 20, "both workers via the fragment")
    out = d.ctl("status")
    assert "web:web_00" in out.stdout and "web:web_01" in out.stdout, out.stdout


def test_fcgi_program_inside_a_group_fails_with_a_clear_message(deploy):
    # The trap docs/supervisorctl.md warns about: inside [group:] supervisord passes a pipe as fd 0.
    d = deploy(merge(CORE, {"server": {"workers": 1}}), start=False)
    with open(d.conf_path, "a") as f:
        f.write("\n[group:everything]\nprograms=web\n")
    d.start(wait=False)
    log = os.path.join(d.layout.log_dir, "web_00.log")

    def message():
        try:
            with open(log) as f:
                return "fd 0 is not a socket" in f.read()
        except OSError:
            return False

    wait_until(message, 30, "the worker to explain that fd 0 is not a socket")
    with open(log) as f:
        assert "never inside [group:]" in f.read()


def test_run_dir_with_percent_logs_to_the_literal_path(deploy):
    d = deploy(merge(CORE, {"server": {"workers": 1}, "supervisord": {"run_dir": "r%un"}}))
    assert d.layout.run_dir.endswith("/r%un")
    assert get(d)[0].status == 200
    assert os.path.exists(os.path.join(d.folder, "r%un", "logs", "web_00.log"))
    out = d.ctl("tail", "web:web_00")
    assert out.returncode == 0 and "Application startup complete" in out.stdout, out.stdout


def test_init_refuses_to_overwrite(tmp_path):
    r = run_cli("init", "--name", "shop", cwd=str(tmp_path))
    assert r.returncode == 0 and (tmp_path / "supervisor-fastapi.toml").exists()
    before = (tmp_path / "supervisor-fastapi.toml").read_text()
    r = run_cli("init", "--name", "other", cwd=str(tmp_path))
    assert r.returncode == 2 and "exists; pass --force to overwrite it" in r.stderr
    assert (tmp_path / "supervisor-fastapi.toml").read_text() == before
    assert run_cli("init", "--force", "--name", "other", cwd=str(tmp_path)).returncode == 0
    assert 'name = "other"' in (tmp_path / "supervisor-fastapi.toml").read_text()


@pytest.mark.parametrize("args, spec, message", [
    (["render"], None, "run `supervisor-fastapi init` or pass -c PATH"),
    (["check", "-c", "missing.toml"], None, "missing.toml: no such spec file"),
    (["up"], '[app]\nname = "web"\nasgi = "m:app"\n[server]\nworker = 2\n', "did you mean 'workers'?"),
    (["render", "-o", "-"], '[app]\nname = "web"\nasgi = "m:app"\nenv = {A = "x ; y"}\n', "app.env.A"),
    (["systemd-unit"], "[app\n", "is not valid TOML"),
    (["down"], '[app]\nname = "Web"\nasgi = "m:app"\n', "app.name"),
])
def test_cli_user_errors_never_print_a_traceback(tmp_path, args, spec, message):
    if spec is not None:
        (tmp_path / "supervisor-fastapi.toml").write_text(spec)
    r = run_cli(*args, cwd=str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_systemd_unit(tmp_path):
    (tmp_path / "supervisor-fastapi.toml").write_text('[app]\nname = "shop"\nasgi = "m:app"\n')
    r = run_cli("systemd-unit", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "supervisord.conf"
    assert f"ExecStart={sys.executable} -m supervisor.supervisord -n -c {conf}" in r.stdout
    assert f"ExecReload={sys.executable} -m supervisor.supervisorctl -c {conf} update" in r.stdout
    assert "Restart=always" in r.stdout and "WantedBy=multi-user.target" in r.stdout
    assert "systemctl daemon-reload && systemctl enable --now shop" in r.stdout


def test_demo_smoke():
    r = run_cli("demo", "--smoke", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo: 2 workers serving http://127.0.0.1:" in r.stdout
    # The kernel decides which worker accepts; the demo asks until both answered (bounded).
    assert re.search(r"\(2 distinct worker pids answered \d+ requests\)", r.stdout), r.stdout
    assert "stopping the demo" in r.stderr
    assert "try  curl" not in r.stdout  # the smoke run has stopped the demo when it exits


def test_ready_means_accepting(deploy):
    # `up` says ready only when every worker wrote its state file after uvicorn's startup.
    d = deploy(merge(CORE, {"server": {"workers": 3}}))
    states = worker_files(d.layout)
    web = {i["name"]: i["pid"] for i in d.infos() if i["group"] == "web"}
    assert {n: states[n]["pid"] for n in web} == web
    assert deploy_mod.url_of(d.spec) == f"http://127.0.0.1:{d.port}/"
    assert Layout(d.spec.run_dir).state_dir == os.path.join(d.spec.run_dir, "workers")


def test_commands_give_up_on_a_stopped_supervisord_with_one_line(deploy):
    """A supervisord that does not answer (SIGSTOP, swapping) must not hang status/restart/up/down."""
    d = deploy()
    pid = control._read_pid(d.layout.pidfile)
    os.kill(pid, signal.SIGSTOP)
    try:
        for args in (("status",), ("restart",), ("up",), ("down",)):
            started = time.monotonic()
            r = d.cli(*args, timeout=90)
            took = time.monotonic() - started
            assert r.returncode == 1, (args, r.stdout + r.stderr)
            assert "did not answer within 10 s" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
            assert took < 30, (args, took)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert d.cli("status").returncode == 0
