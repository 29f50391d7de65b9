"""A uvicorn Server that reports readiness, beats from its event loop, and drains on stop.

uvicorn's own shutdown closes every idle connection at once. On a shared socket that
loses requests: a connection this worker accepted a moment ago, whose request bytes are
still in the kernel buffer, counts as idle and is closed unanswered. So on SIGTERM this
server first stops accepting (the kernel hands new connections to the other workers),
then ends each connection it already has cleanly, the same way on every uvicorn HTTP
implementation (h11 and httptools):

- every request that arrives from then on is answered with ``Connection: close`` (the header
  goes into the ASGI response itself, so h11 and httptools both read it and close after
  that response: the client knows the connection ends and sends its next request elsewhere);
  a request already running keeps its connection open after its response;
- a connection is closed by the server only when it has been seen idle (no request in
  flight, no bytes of a next one received) for ``drain_window`` seconds;
- nothing is cut under a request: one in flight gets its response, bounded by the graceful
  timeout, after which uvicorn's own shutdown takes what is left.

Marking a running request "not keep-alive" instead (what uvicorn's shutdown does) makes h11
close the connection after the response without saying so; a keep-alive client's next
request then meets a dead socket.
"""

import asyncio
import math
import time
from typing import Any, Awaitable, Callable, Dict, Generic, Hashable, List, Mapping, Optional, Tuple, TypeVar

import uvicorn

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
K = TypeVar("K", bound=Hashable)


def closing_headers(headers: Any) -> List[Tuple[bytes, bytes]]:
    """The response headers with every ``Connection`` header replaced by ``Connection: close``."""
    return [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]


class CloseWhileDraining:
    """ASGI wrapper: while the server drains, every HTTP response says ``Connection: close``.

    Both uvicorn protocols (h11 and httptools) read the header and close the connection after
    such a response, so the client's next request opens a new connection, which another worker
    accepts.

    Such a response ends only once the request's body is in. A connection closed with unread
    bytes in its receive buffer is reset by the kernel (RST), and a client still writing the
    body (a proxy forwarding a POST: Caddy logs ``write unix ...: broken pipe``) loses the
    response and fails the request, which it never retries. So when the app answers before it
    has read the whole body (an early 401 or 413, a handler that ignores the body), the rest
    is read and dropped before the response's last part goes out, within ``REST_LIMIT`` bytes
    and ``REST_TIMEOUT`` seconds (past them the connection is closed as before).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], server: "DrainingServer") -> None:
        self.app = app
        self.server = server

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # The hot path: a plain function that hands back the app's own coroutine, so serving
        # costs no closure and no coroutine of ours per request unless draining (the closure
        # cost ~6% CPU per request, the extra coroutine ~0.2 us). A request already running when
        # the drain starts answers without the header; its connection stays open, and the next
        # request on it gets a response that says close (or the connection is closed once idle).
        if not self.server.draining or scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._closing(scope, receive, send)

    async def _closing(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_in = False
        # A client that waits for "100 Continue" sends no body unless asked: nothing to read.
        expects = any(k.lower() == b"expect" for k, _ in scope.get("headers", []))

        async def receive_noting() -> Message:
            nonlocal body_in
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_in = True
            return message

        async def send_closing(message: Message) -> None:
            nonlocal body_in
            if message["type"] == "http.response.start":
                message = dict(message, headers=closing_headers(message.get("headers", [])))
            elif (message["type"] == "http.response.body" and not message.get("more_body", False)
                  and not body_in and not expects):
                body_in = True
                await read_rest(receive)
            await send(message)

        await self.app(scope, receive_noting, send_closing)


# How much of an unread request body a draining worker reads before its closing response ends,
# and for how long (see CloseWhileDraining): a slow or endless upload cannot hold the drain.
REST_LIMIT = 16 * 1024 * 1024
REST_TIMEOUT = 5.0


async def read_rest(receive: Receive, limit: int = REST_LIMIT, timeout: float = REST_TIMEOUT) -> bool:
    """Read and drop the rest of a request body: whether all of it came within the bounds."""

    async def drain() -> bool:
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return True
            seen += len(message.get("body", b""))
        return False

    try:
        return await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        return False


class IdleCloser(Generic[K]):
    """Which connections of a draining worker to close, and when the drain is over (pure).

    ``step(now, busy)`` gets every open connection and whether it is busy (a request in flight,
    or bytes of a next one received). A connection is closed once it has been seen idle for
    ``quiet`` seconds in a row (at the earliest ``quiet`` seconds after the drain's start): a keep-alive
    client that sends again within that time gets a response that says close instead, which
    ends the connection without a race. Busy connections are never closed here. The drain is
    over when no connection is left, but not before ``settle``, or at ``limit`` (what is still
    running then is uvicorn's shutdown's business).

    ``settle``: a connection the kernel handed over just before the listener closed is still
    being set up on the event loop (asyncio accepts, then makes the protocol a few loop passes
    later), so it is not yet among the connections. A drain that ended at once on "none
    left" let uvicorn's shutdown close it as idle, its request unread: a proxy's POST on it
    failed (HTTP 502).
    """

    def __init__(self, quiet: float, limit: float, settle: float = 0.0) -> None:
        self.quiet, self.limit, self.settle = quiet, limit, settle
        self._idle_since: Dict[K, float] = {}

    def step(self, now: float, busy: Mapping[K, bool]) -> Tuple[List[K], bool]:
        """(connections to close now, whether the drain is over)."""
        for key in [k for k in self._idle_since if k not in busy]:
            del self._idle_since[key]  # gone: closed by its own last response, or by the client
        close: List[K] = []
        for key, is_busy in busy.items():
            if is_busy:
                self._idle_since.pop(key, None)
                continue
            # Idle from the first step that saw it idle: it may have got idle just before.
            since = self._idle_since.setdefault(key, now)
            if now - since >= self.quiet:
                close.append(key)
        return close, (not busy and now >= self.settle) or now >= self.limit


def _in_flight(cycle: Any) -> bool:
    # uvicorn's own shutdown() tells idle from busy by these two names, in every release.
    return cycle is not None and not getattr(cycle, "response_complete", False)


def tracking(protocol_class: Any) -> Any:
    """A subclass of a uvicorn HTTP protocol that remembers whether the bytes it last received
    began a request that has not started yet (``awaiting_request``).

    uvicorn creates a request (its ``cycle``) only once the headers are complete; until then a
    connection whose last response is complete looks idle although a request is arriving.
    ``data_received`` is the asyncio Protocol interface, the same in every uvicorn release.
    """

    class Tracking(protocol_class):
        awaiting_request = False

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Bytes that made a request (or the body of the running one) leave a request in
            # flight; bytes that did not are the start of the next request.
            self.awaiting_request = not _in_flight(getattr(self, "cycle", None))

    Tracking.__name__ = Tracking.__qualname__ = f"Tracking{protocol_class.__name__}"
    return Tracking


def busy(connection: Any) -> bool:
    """A request in flight on ``connection``, or bytes of one received (as far as uvicorn tells)."""
    return _in_flight(getattr(connection, "cycle", None)) or bool(getattr(connection, "awaiting_request", False))


def _closing(connection: Any) -> bool:
    transport = getattr(connection, "transport", None)
    return transport is None or transport.is_closing()


# How long a drain lasts at least: enough loop passes for connections accepted just before the
# listener closed to become uvicorn connections (see IdleCloser).
SETTLE = 0.1


class DrainingServer(uvicorn.Server):
    """uvicorn.Server plus a ready/heartbeat file and a drain phase before shutdown."""

    def __init__(self, config: uvicorn.Config, state: Any, heartbeat_interval: float = 1.0,
                 graceful_timeout: float = 30.0, drain_window: float = 1.0) -> None:
        super().__init__(config)
        self.state = state
        self.heartbeat_interval = heartbeat_interval
        self.graceful_timeout = graceful_timeout
        self.drain_window = min(drain_window, graceful_timeout)
        self.draining = False
        self._last_beat = 0.0

    async def startup(self, sockets: Optional[List[Any]] = None) -> None:
        # _serve() has loaded the app by now; protocols read config.loaded_app and
        # config.http_protocol_class when each connection is made.
        self.config.loaded_app = CloseWhileDraining(self.config.loaded_app, self)
        self.config.http_protocol_class = tracking(self.config.http_protocol_class)
        await super().startup(sockets=sockets)
        if self.started:
            self.state.ready()
            self._last_beat = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        # Runs on the event loop every 0.1 s: a blocked loop stops the beats.
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_interval:
            self._last_beat = now
            self.state.beat()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Optional[List[Any]] = None) -> None:
        for server in self.servers:
            server.close()
        self.draining = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        closer: IdleCloser[Any] = IdleCloser(quiet=self.drain_window, limit=start + self.graceful_timeout,
                                             settle=start + SETTLE)
        while not self.force_exit:
            # A connection whose transport is closing is leaving (after a response that said close).
            open_ = [c for c in list(self.server_state.connections) if not _closing(c)]
            close, done = closer.step(loop.time(), {c: busy(c) for c in open_})
            for connection in close:
                connection.shutdown()  # idle: uvicorn closes it (and ends h11's state machine)
            if done:
                break
            await asyncio.sleep(0.02)
        self.state.gone()
        # uvicorn's shutdown gives what still runs its own graceful timeout: only what is left
        # of ours, so the whole stop stays within the graceful timeout supervisord waits for.
        if self.config.timeout_graceful_shutdown:
            left = start + self.graceful_timeout - loop.time()
            self.config.timeout_graceful_shutdown = max(1, math.ceil(left))
        await super().shutdown(sockets=sockets)
