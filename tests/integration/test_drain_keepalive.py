"""Rolling restarts under keep-alive clients, on both uvicorn HTTP stacks: 0 failed requests.

A draining worker ends each keep-alive connection cleanly: the response that is the
connection's last says ``Connection: close``, or the connection closes while idle. A
connection the server closes right after a response that did not say so is the bug this
guards against (h11 did that: the client's next request met a dead socket, and a POST is
never retried). The load generator reuses a connection unless the response said close; a
connection it finds closed by the peer before reusing it counts as ``stale``, a request that
meets a closed socket counts as failed.
"""

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.loadgen import Load

from .conftest import wait_until
from .test_restart_socket import ready_pids

# The two stacks uvicorn can run: a plain `pip install fastapi` (h11 + asyncio) and
# `uvicorn[standard]` (httptools + uvloop).
STACKS = {
    "h11-asyncio": ({"http": "h11", "loop": "asyncio"}, ["h11_impl"], "asyncio"),
    "httptools-uvloop": ({"http": "httptools", "loop": "uvloop"}, ["httptools_impl"], "uvloop"),
}


def stack_for(stack):
    """STACKS[stack], or a skip where uvloop and httptools are not installed."""
    settings, impl, loop = STACKS[stack]
    if loop == "uvloop":
        pytest.importorskip("uvloop")
        pytest.importorskip("httptools")
    return settings, impl, loop


def stack_of(port):
    """What one worker runs: (its uvicorn HTTP implementation modules, its event loop's module)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/stack", headers={"Connection": "close"})
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return data["http"], data["loop"].split(".")[0]


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_two_rolling_restarts_lose_no_keepalive_request(deploy, stack):
    settings, impl, loop = stack_for(stack)
    d = deploy({"server": {"workers": 2, "uvicorn": settings}})
    assert stack_of(d.port) == (impl, loop)
    port = d.port
    loads = {
        # A client that checks an idle connection before reusing it (urllib3, requests).
        "GET": Load("127.0.0.1", port, mode="keepalive", threads=3),
        # Clients that do not (wrk; a proxy forwarding a POST, which it never retries).
        "POST": Load("127.0.0.1", port, mode="keepalive", threads=3, method="POST", body=b"x" * 2000,
                     probe_idle=False),
        # Each of these threads always has a 0.3 s request in flight, so every drain starts
        # with requests under way on the worker it stops.
        "slow": Load("127.0.0.1", port, path="/sleep?s=0.3", mode="keepalive", threads=4, probe_idle=False),
    }
    outs = []
    try:
        for load in loads.values():
            load.start()
        for load in loads.values():
            load.wait_requests(10)
        for _ in range(2):
            before = ready_pids(d)
            outs.append(d.cli("restart"))
            assert outs[-1].returncode == 0, outs[-1].stdout + outs[-1].stderr
            after = ready_pids(d)
            assert after and not (after & before), (before, after)
            for load in loads.values():  # the new workers serve every kind of request
                load.wait_requests(load.result.requests + 10)
    finally:
        results = {name: load.stop() for name, load in loads.items()}
    report = "; ".join(f"{name}: {r.summary()}" for name, r in results.items())
    print(f"\ntwo rolling restarts, {stack}, keep-alive: {report}")
    assert stack_of(d.port) == (impl, loop)
    for name, r in results.items():
        assert r.failures == 0, f"{name}: {r.summary()}"
        # Every connection the server ended was ended by a response that said so.
        assert r.stale == 0, f"{name}: {r.summary()}"
        assert r.ok > 20, f"{name}: {r.summary()}"


@contextlib.contextmanager
def restart_draining(d):
    """`supervisor-fastapi restart` in the background, entered once the old worker drains; it
    must end with exit status 0 (it is killed if the test fails first)."""
    restart = subprocess.Popen([sys.executable, "-m", "supervisor_fastapi", "restart", "-c", d.spec_path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: d.state_of("web_00") == "STOPPING", 20, "the old worker to drain")
        yield
        out, _ = restart.communicate(timeout=120)
        assert restart.returncode == 0, out
    finally:
        if restart.poll() is None:
            restart.kill()
            restart.wait(10)


def _response(sock):
    """Read one response from ``sock``: (status, body, whether it said the connection ends)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.read(), resp.will_close


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_a_drain_cuts_neither_an_arriving_request_nor_a_connection_whose_response_began_before(deploy, stack):
    settings, impl, loop = stack_for(stack)
    # graceful_timeout bounds the drain: 10 s leaves room for the 4 s stream under a slow CI.
    d = deploy({"server": {"workers": 1, "graceful_timeout": 10, "uvicorn": settings}})
    old = ready_pids(d)
    streaming = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    arriving = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    after_stream = []

    def finish_stream_then_ask_again():
        # A busy keep-alive client: the moment the response ends, the next request goes out.
        try:
            body = first.read()
            streaming.sendall(b"GET /?a=2 HTTP/1.1\r\nHost: t\r\n\r\n")
            after_stream.append((body, first.will_close) + _response(streaming))
        except OSError as exc:
            after_stream.append(repr(exc))

    try:
        # A response under way when the drain starts: its headers are out, without "close".
        streaming.sendall(b"GET /stream?s=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        first = http.client.HTTPResponse(streaming)
        first.begin()
        began = time.monotonic()
        assert first.status == 200 and not first.will_close
        # A request whose first bytes arrived before the drain and the rest after its window.
        arriving.sendall(b"GET /?a=1 HTTP/1.1\r\nHost: t\r\n")
        assert d.get("/")[0] == 200  # the worker has accepted both connections by now
        with restart_draining(d):
            assert time.monotonic() - began < 3.5, "the drain began after the stream ended: nothing was tested"
            reader = threading.Thread(target=finish_stream_then_ask_again)
            reader.start()
            # Past the drain window (1 s), where a drain that counted this connection as idle closed it.
            time.sleep(1.5)
            arriving.sendall(b"X-Late: 1\r\n\r\n")
            status, body, closes = _response(arriving)
            assert status == 200 and json.loads(body)["pid"] in old and closes, (status, body, closes)
            # The response begun before the drain could not say close: the connection stays open
            # after it, and the next request on it is answered with close.
            reader.join(30)
            assert after_stream and after_stream[0][:3] == (b"x" * 10, False, 200) and after_stream[0][4], after_stream
    finally:
        streaming.close()
        arriving.close()


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_a_draining_worker_closes_no_connection_before_the_request_body_is_in(deploy, stack):
    """A proxy's POST on a draining worker: the app answers before the body is in, the client
    still writes it. The response says close; the connection must not end (a reset, which the
    proxy reports as "broken pipe" and answers 502) until the body it is writing is in."""
    settings, impl, loop = stack_for(stack)
    d = deploy({"server": {"workers": 1, "graceful_timeout": 10, "uvicorn": settings}})
    old = ready_pids(d)
    # Big enough that the rest cannot wait in the socket buffers when the worker closes.
    size, first = 4 * 1024 * 1024, 4096
    client = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    held = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    try:
        held.sendall(b"GET /sleep?s=5 HTTP/1.1\r\nHost: t\r\n\r\n")  # keeps the worker draining
        # A keep-alive request under way when the drain starts: the POST follows its response at
        # once, so it is the connection's next request on a worker that drains (SIGTERM reaches
        # uvicorn's loop a moment after supervisord says STOPPING; this does not race it).
        client.sendall(b"GET /sleep?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert d.get("/")[0] == 200  # the worker has accepted both connections by now
        with restart_draining(d):
            assert _response(client)[0] == 200
            client.sendall(b"POST /upload?unread=1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Length: %d\r\n\r\n" % size + b"x" * first)
            time.sleep(0.3)  # the app has answered by now, its body unread
            sent, error = first, None
            try:
                for _ in range((size - first) // 65536 + 1):
                    chunk = min(65536, size - sent)
                    if chunk <= 0:
                        break
                    client.sendall(b"x" * chunk)
                    sent += chunk
                status, body, closes = _response(client)
            except OSError as exc:
                error = exc
            assert error is None, f"the connection was reset after {sent} of {size} body bytes: {error!r}"
            assert status == 200 and json.loads(body)["pid"] in old and closes, (status, body, closes)
    finally:
        client.close()
        held.close()
