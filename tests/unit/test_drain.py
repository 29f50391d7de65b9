"""The drain's pure parts (headers, the idle closer) and its hook into uvicorn's real protocols."""

import asyncio
import socket
import time
from types import SimpleNamespace

import pytest

from supervisor_fastapi.runtime.drain import CloseWhileDraining, IdleCloser, busy, closing_headers, read_rest, tracking


def test_closing_headers_replace_any_connection_header_and_keep_the_rest():
    headers = [(b"content-type", b"text/plain"), (b"Connection", b"keep-alive"), (b"x-a", b"1"),
               (b"connection", b"Upgrade")]
    assert closing_headers(headers) == [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"connection", b"close")]
    assert closing_headers([]) == [(b"connection", b"close")]


def _asgi(scope_type, server, start_drain_before_response=False):
    """Run one request through CloseWhileDraining; return the messages the server was sent."""
    sent = []

    async def app(scope, receive, send):
        if start_drain_before_response:
            server.draining = True  # the drain starts while this request runs
        await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(CloseWhileDraining(app, server)({"type": scope_type}, receive, send))
    return sent


def test_responses_say_close_only_while_draining():
    server = SimpleNamespace(draining=False)
    assert _asgi("http", server)[0]["headers"] == [(b"connection", b"keep-alive")]
    server.draining = True
    assert _asgi("http", server)[0]["headers"] == [(b"connection", b"close")]


def test_a_request_running_when_the_drain_starts_keeps_its_connection():
    # No Connection: close it did not announce: the connection stays open after this
    # response, and the next request on it is answered with close.
    sent = _asgi("http", SimpleNamespace(draining=False), start_drain_before_response=True)
    assert sent[0]["headers"] == [(b"connection", b"keep-alive")]


def test_non_http_scopes_pass_through():
    sent = _asgi("websocket", SimpleNamespace(draining=True))
    assert sent[0]["headers"] == [(b"connection", b"keep-alive")]


def _upload(chunks, reads=0, headers=()):
    """A POST whose body comes in ``chunks`` through a draining CloseWhileDraining; the app reads
    ``reads`` messages, then answers in two parts. Returns what happened, in order."""
    events = []
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def app(scope, receive, send):
        for _ in range(reads):
            await receive()
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        message = pending.pop(0) if pending else {"type": "http.disconnect"}
        events.append(("received", message.get("body")))
        return message

    async def send(message):
        events.append(("sent", message["type"], message.get("more_body", False)))

    scope = {"type": "http", "headers": list(headers)}
    asyncio.run(CloseWhileDraining(app, SimpleNamespace(draining=True))(scope, receive, send))
    return events


def test_a_closing_response_ends_only_once_the_unread_body_is_in():
    events = _upload([b"a", b"b", b"c"])
    # The response's start and its first part go out at once; its end only after the body.
    assert events == [("sent", "http.response.start", False), ("sent", "http.response.body", True),
                      ("received", b"a"), ("received", b"b"), ("received", b"c"),
                      ("sent", "http.response.body", False)]


def test_a_body_the_app_read_or_one_it_will_not_get_is_not_read_again():
    read_all = _upload([b"a", b"b"], reads=2)
    assert [e for e in read_all if e[0] == "received"] == [("received", b"a"), ("received", b"b")]
    assert read_all[-1] == ("sent", "http.response.body", False)
    # Expect: 100-continue: the client sends the body only when asked; asking now would only waste it.
    waiting = _upload([b"a", b"b"], headers=[(b"Expect", b"100-continue")])
    assert not [e for e in waiting if e[0] == "received"]


def test_read_rest_is_bounded_in_bytes_and_time():
    async def endless():
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def stalled():
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    assert asyncio.run(read_rest(endless, limit=10_000, timeout=5)) is False
    started = time.monotonic()
    assert asyncio.run(read_rest(stalled, limit=10_000, timeout=0.2)) is False
    assert time.monotonic() - started < 5
    parts = iter([{"type": "http.request", "body": b"x", "more_body": True},
                  {"type": "http.request", "body": b"", "more_body": False}])

    async def finite():
        return next(parts)

    assert asyncio.run(read_rest(finite)) is True


def test_idle_closer_closes_a_connection_quiet_for_the_window_and_never_a_busy_one():
    c = IdleCloser(quiet=1.0, limit=30.0)
    # t=0: the drain starts with an idle connection "a" and a request in flight on "b".
    assert c.step(0.0, {"a": False, "b": True}) == ([], False)
    assert c.step(0.5, {"a": False, "b": True}) == ([], False)
    assert c.step(1.0, {"a": False, "b": True}) == (["a"], False)
    # "b" finishes at 1.2 (its response, started before the drain, could not say close): it
    # is idle from then on and gets the whole quiet time for its client to send again.
    assert c.step(1.2, {"b": False}) == ([], False)
    assert c.step(2.1, {"b": False}) == ([], False)
    assert c.step(2.2, {"b": False}) == (["b"], False)
    assert c.step(2.3, {}) == ([], True)


def test_idle_closer_restarts_the_quiet_time_when_a_connection_gets_busy_again():
    c = IdleCloser(quiet=1.0, limit=30.0)
    c.step(0.0, {"a": False})
    assert c.step(0.9, {"a": True}) == ([], False)  # bytes of a request arrived
    assert c.step(1.5, {"a": False}) == ([], False)
    assert c.step(2.4, {"a": False}) == ([], False)
    assert c.step(2.5, {"a": False}) == (["a"], False)


def test_idle_closer_forgets_connections_that_left_and_stops_at_its_limit():
    c = IdleCloser(quiet=1.0, limit=5.0)
    c.step(0.0, {"a": True})
    c.step(0.5, {})  # "a" closed itself (its last response said close)
    assert c.step(0.6, {"a": False}) == ([], False)  # a new connection object with the same key
    assert c.step(1.5, {"a": False}) == ([], False)
    assert c.step(5.0, {"b": True}) == ([], True)


def test_a_drain_with_no_connection_is_not_over_before_it_settles():
    # A connection accepted just before the listener closed is not among the connections for
    # a few loop passes; a drain over at once let uvicorn's shutdown close it unread.
    c = IdleCloser(quiet=1.0, limit=30.0, settle=0.1)
    assert c.step(0.0, {}) == ([], False)
    assert c.step(0.05, {"late": True}) == ([], False)  # it arrived: its request is answered
    assert c.step(0.3, {}) == ([], True)  # its response said close
    assert IdleCloser(quiet=1.0, limit=30.0, settle=0.1).step(0.1, {}) == ([], True)


def test_zero_quiet_time_closes_idle_connections_at_once():
    assert IdleCloser(quiet=0.0, limit=0.0).step(7.0, {"a": False, "b": True}) == (["a"], True)


# -- the hook into uvicorn's real protocols, over a real socket pair ---------------------------

HTTP_IMPLS = ["h11", "httptools"]


async def _until(check, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _walk_one_request(http):
    import uvicorn
    from uvicorn.server import ServerState

    release = asyncio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, http=http, lifespan="off", log_level="warning")
    config.load()
    protocol_class = tracking(config.http_protocol_class)
    assert issubclass(protocol_class, config.http_protocol_class)
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    seen = []
    try:
        _, protocol = await loop.connect_accepted_socket(
            lambda: protocol_class(config=config, server_state=ServerState(), app_state={}), ours)
        seen.append(("connected", busy(protocol)))
        await loop.sock_sendall(theirs, b"GET / HTTP/1.1\r\nHost: x\r\n")
        await _until(lambda: busy(protocol), "half a request to make the connection busy")
        seen.append(("half a request", busy(protocol)))
        await loop.sock_sendall(theirs, b"X-A: 1\r\n\r\n")
        await asyncio.sleep(0.05)
        seen.append(("request in flight", busy(protocol)))
        release.set()
        answer = b""
        while b"ok" not in answer:
            answer += await asyncio.wait_for(loop.sock_recv(theirs, 4096), 5)
        await _until(lambda: not busy(protocol), "the connection to be idle after the response")
        seen.append(("response sent", busy(protocol)))
        assert answer.startswith(b"HTTP/1.1 200")
        protocol.transport.close()
    finally:
        theirs.close()
    return seen


@pytest.mark.parametrize("http", HTTP_IMPLS)
def test_a_connection_is_busy_from_the_first_byte_of_a_request_to_its_response(http):
    if http == "httptools":
        pytest.importorskip("httptools")
    assert asyncio.run(_walk_one_request(http)) == [
        ("connected", False), ("half a request", True), ("request in flight", True), ("response sent", False)]
