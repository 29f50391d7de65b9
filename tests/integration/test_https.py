"""[https]: a real Caddy supervised next to the workers, and a real nginx on the generated site.

Both: HTTPS answers, the app sees https and 127.0.0.1 (a client's own X-Forwarded-For does not
pass), plain HTTP redirects, a websocket is upgraded, keep-alive GETs and POSTs lose nothing
across rolling restarts.

Caddy runs with `tls internal` (its own CA, in run_dir) on loopback ports above 1024, in
front of the workers' unix socket; nginx runs from the generated site file inside a minimal
nginx.conf, with a self-signed certificate. Skipped only when the binary is absent (CI
installs Debian's `caddy` and `nginx` packages).
"""

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from typing import Any, Dict, Optional, Tuple

import pytest

from supervisor_fastapi.generate import nginx
from supervisor_fastapi.layout import Layout
from tests.loadgen import Load
from tests.ports import free_port

from ..helpers_alerts import self_signed_cert
from .conftest import merge, wait_until
from .test_alerts import read_lines
from .test_control_plane import ready_pids

CADDY = shutil.which("caddy")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
needs_caddy = pytest.mark.skipif(CADDY is None, reason="caddy is not installed (Debian: apt-get install caddy)")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)")
POST_BODY = b"order=" + b"x" * 2000


def https_spec(https: Dict[str, Any], **more: Any) -> Dict[str, Any]:
    spec = {"app": {"asgi": "coreapp:app"},
            "server": {"bind": "unix://web.sock", "workers": 2, "graceful_timeout": 5},
            "https": {"domains": ["localhost", "127.0.0.1"], **https}}
    spec.update(more)
    return spec


def caddy_ca(d) -> str:
    return os.path.join(Layout(d.spec.run_dir).proxy_storage, "pki", "authorities", "local", "root.crt")


def request(port: int, path: str = "/", context: Optional[ssl.SSLContext] = None, method: str = "GET",
            headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context) if context
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def answers(port: int, context: ssl.SSLContext) -> bool:
    try:
        return request(port, "/", context)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def sees_https_and_the_client(port: int, context: ssl.SSLContext) -> None:
    # A client's own X-Forwarded-For must not pass: the proxy replaces it with the peer's address.
    status, _, body = request(port, "/orders?id=1", context, headers={"X-Forwarded-For": "203.0.113.9"})
    seen = json.loads(body)
    assert status == 200 and seen["scheme"] == "https" and seen["client"][0] == "127.0.0.1", seen
    assert seen["path"] == "/orders"


def websocket_echoes(port: int, context: ssl.SSLContext) -> None:
    """A websocket through the proxy: upgraded, and the worker sees it as wss."""
    from websockets.sync.client import connect

    with connect(f"wss://127.0.0.1:{port}/ws", ssl=context, open_timeout=10, close_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "wss:hello"


def redirects(http_port: int, https_port: int) -> None:
    status, headers, _ = request(http_port, "/orders?id=1")
    assert status in (301, 308), (status, headers)
    assert headers["location"] == f"https://127.0.0.1:{https_port}/orders?id=1"


def zero_loss_across_restarts(d, port: int, context: ssl.SSLContext, restarts: int = 2) -> None:
    """Keep-alive GETs and POSTs through the proxy while `supervisor-fastapi restart` runs ``restarts`` times."""
    before = set(ready_pids(d))
    get = Load("127.0.0.1", port, mode="keepalive", threads=3, ssl_context=context)
    post = Load("127.0.0.1", port, mode="keepalive", threads=3, method="POST", body=POST_BODY, ssl_context=context)
    with get, post:
        get.wait_requests(50)
        post.wait_requests(50)
        for _ in range(restarts):
            out = d.cli("restart")
            assert out.returncode == 0, out.stdout + out.stderr
        n, m = get.result.requests, post.result.requests
        get.wait_requests(n + 50)
        post.wait_requests(m + 50)
    print(f"\nthrough the proxy, rolling restarts: {restarts}; GET {get.result.summary()}; "
          f"POST {post.result.summary()}")
    assert not set(ready_pids(d)) & before, "every worker was replaced"
    assert get.result.failures == 0, get.result.summary()
    assert post.result.failures == 0, post.result.summary()


@needs_caddy
def test_caddy_serves_https_redirects_http_and_hides_two_rolling_restarts(deploy):
    https_port, http_port = free_port(), free_port()
    d = deploy(https_spec({"tls": "internal", "https_port": https_port, "http_port": http_port}))
    context = ssl.create_default_context(cafile=wait_until(lambda: os.path.exists(caddy_ca(d)) and caddy_ca(d), 20,
                                                           "Caddy's internal CA"))
    wait_until(lambda: answers(https_port, context), 20, "Caddy to answer HTTPS")
    sees_https_and_the_client(https_port, context)
    redirects(http_port, https_port)
    websocket_echoes(https_port, context)
    zero_loss_across_restarts(d, https_port, context)


@needs_caddy
def test_caddy_killed_is_restarted_by_supervisord_and_alerted(deploy, tmp_path):
    https_port, alerts = free_port(), str(tmp_path / "alerts.log")
    # restarts = 2: the second kill within the window opens the incident (the default: the third).
    d = deploy(https_spec({"tls": "internal", "https_port": https_port, "http_port": 0},
                          alerts=[{"type": "log", "path": alerts}], crash_loop={"restarts": 2}))
    context = ssl.create_default_context(cafile=wait_until(lambda: os.path.exists(caddy_ca(d)) and caddy_ca(d), 20,
                                                           "Caddy's internal CA"))
    wait_until(lambda: answers(https_port, context), 20, "Caddy to answer HTTPS")

    def proxy_pid() -> int:
        return next((i["pid"] for i in d.infos() if i["name"] == "web_proxy" and i["statename"] == "RUNNING"), 0)

    for n in range(2):
        old = proxy_pid()
        assert old
        os.kill(old, signal.SIGKILL)
        wait_until(lambda old=old: proxy_pid() not in (0, old), 15, f"kill {n}: supervisord to start Caddy again")
        wait_until(lambda: answers(https_port, context), 20, f"kill {n}: the new Caddy to answer HTTPS")
    [alert] = wait_until(lambda: [a for a in read_lines(alerts) if a.get("kind") == "killed"], 15, "the kill alert")
    assert "web_proxy killed by SIGKILL 2 times" in alert["text"], alert
    # http_port = 0: nothing listens for plain HTTP.
    assert "http_port" not in open(os.path.join(d.folder, "web.Caddyfile")).read()


@needs_caddy
def test_check_validates_the_caddyfile_with_caddy_and_names_where_to_get_it(deploy, tmp_path):
    d = deploy(https_spec({"tls": {"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.key")},
                           "https_port": free_port(), "http_port": free_port()}), start=False)
    out = d.cli("check")
    line = next(x for x in out.stdout.splitlines() if "caddy validate" in x)
    assert out.returncode == 1 and line.startswith("FAIL") and "missing.pem" in line, out.stdout
    cert, key = self_signed_cert(str(tmp_path))
    d2 = deploy(https_spec({"tls": {"cert": cert, "key": key}, "https_port": free_port(), "http_port": free_port()}),
                start=False)
    assert "ok   caddy validate accepts the Caddyfile" in d2.cli("check").stdout
    assert not os.listdir(Layout(d2.spec.run_dir).proxy_dir), "check must write nothing into run_dir"
    # No caddy on the programs' PATH (app.env sets it, here to the venv's bin/ alone): one line
    # that says where to get it.
    bare = os.path.dirname(sys.executable)
    d3 = deploy(merge(https_spec({"tls": "internal", "https_port": free_port(), "http_port": 0}),
                      {"app": {"env": {"PATH": bare}}}), start=False)
    out = d3.cli("check")
    assert out.returncode == 1, out.stdout
    assert f"FAIL caddy: not found on the programs' PATH ({bare}); install it: `apt-get install caddy`" in out.stdout


@pytest.fixture
def nginx_proc(tmp_path):
    """Start nginx from the site file in a minimal nginx.conf (every file under tmp_path); stopped at teardown."""
    procs = []

    def start(site: str) -> None:
        prefix = str(tmp_path / "nginx")
        os.makedirs(prefix, exist_ok=True)
        main = os.path.join(prefix, "nginx.conf")
        with open(main, "w") as f:
            # As root, nginx's workers would run as nobody, who cannot open the 0700 socket.
            f.write(nginx.wrapper(site, prefix, user="root" if os.geteuid() == 0 else None))
        procs.append(subprocess.Popen([NGINX, "-e", "stderr", "-p", prefix, "-c", main, "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield start
    for p in procs:
        p.send_signal(signal.SIGQUIT)  # graceful: the workers exit with the master
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@needs_nginx
def test_nginx_site_passes_nginx_t_and_serves_https_across_a_rolling_restart(deploy, tmp_path, nginx_proc):
    cert, key = self_signed_cert(str(tmp_path))
    https_port, http_port = free_port(), free_port()
    d = deploy(https_spec({"proxy": "nginx", "tls": {"cert": cert, "key": key}, "https_port": https_port,
                           "http_port": http_port}))
    out = d.cli("render", "--target", "nginx")
    site = os.path.join(d.folder, "web.nginx.conf")
    assert out.returncode == 0 and f"wrote {site}" in out.stderr, out.stderr
    out = d.cli("check", "--target", "nginx")
    assert out.returncode == 0 and "ok   nginx -t accepts the site file" in out.stdout, out.stdout + out.stderr
    nginx_proc(site)
    context = ssl.create_default_context(cafile=cert)
    wait_until(lambda: answers(https_port, context), 20, "nginx to answer HTTPS")
    sees_https_and_the_client(https_port, context)
    redirects(http_port, https_port)
    websocket_echoes(https_port, context)
    zero_loss_across_restarts(d, https_port, context, restarts=1)


@needs_caddy
def test_up_fails_with_caddys_log_when_caddy_cannot_serve(deploy):
    import socket

    https_port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", https_port))
    blocker.listen(1)
    try:
        d = deploy(https_spec({"tls": "internal", "https_port": https_port, "http_port": 0}), start=False)
        out = d.cli("up")
        d.started = True  # whatever happened, the fixture stops what `up` started
    finally:
        blocker.close()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "web_proxy:web_proxy is not serving" in out.stderr and "address already in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
