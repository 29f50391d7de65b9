"""A uvicorn Server that reports readiness, beats from its event loop, and drains on stop.

uvicorn's own shutdown closes every idle connection at once. On a shared socket that
loses requests: a connection this worker accepted a moment ago, whose request bytes are
still in the kernel buffer, counts as idle and is closed unanswered. So on SIGTERM this
server first stops accepting (the kernel hands new connections to the other workers),
then for ``drain_window`` seconds answers whatever arrives on the connections it already
has, each response carrying ``Connection: close``, and only then runs uvicorn's shutdown
(idle connections closed, in-flight requests given the graceful timeout, lifespan end).
"""

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

import uvicorn

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CloseWhileDraining:
    """ASGI wrapper: while the server drains, every HTTP response says ``Connection: close``.

    Both uvicorn protocols (h11 and httptools) close the connection after such a response,
    so the client's next request opens a new connection, which another worker accepts.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], server: "DrainingServer") -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hot path: no closure per request unless draining. A request already running
        # when the drain starts is covered by shutdown() setting its cycle's keep_alive.
        if not self.server.draining or scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.server.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = dict(message, headers=headers + [(b"connection", b"close")])
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server plus a ready/heartbeat file and a drain phase before shutdown."""

    def __init__(self, config: uvicorn.Config, state: Any, heartbeat_interval: float = 1.0,
                 graceful_timeout: float = 30.0, drain_window: float = 1.0) -> None:
        super().__init__(config)
        self.state = state
        self.heartbeat_interval = heartbeat_interval
        self.drain_window = min(drain_window, graceful_timeout)
        self.draining = False
        self._last_beat = 0.0

    async def startup(self, sockets: Optional[List[Any]] = None) -> None:
        # _serve() has loaded the app by now; protocols read config.loaded_app when created.
        self.config.loaded_app = CloseWhileDraining(self.config.loaded_app, self)
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
        deadline = loop.time() + self.drain_window
        while self.server_state.connections and loop.time() < deadline and not self.force_exit:
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                # A response already started cannot get the header; ask the protocol to close after it.
                if cycle is not None and not cycle.response_complete:
                    cycle.keep_alive = False
            await asyncio.sleep(0.02)
        self.state.gone()
        await super().shutdown(sockets=sockets)

