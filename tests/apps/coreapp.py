"""A raw ASGI app for the core integration tests: it reports what uvicorn handed it.

- ``/`` and any path: pid, worker name, path, root_path, scheme, client, server;
- ``/sleep?s=S``: answer after S seconds (counted in ``/inflight`` meanwhile);
- ``/inflight``: how many /sleep requests this worker is serving right now;
- ``/nodelay``: TCP_NODELAY of every connected TCP socket this worker holds;
- a websocket on any path: accepted, then each text message is sent back with the scheme
  the worker saw (``wss`` behind a TLS proxy) prefixed.
"""

import asyncio
import json
import os
import socket
from urllib.parse import parse_qs

_inflight = 0


def _connected_tcp_sockets():
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                try:
                    peer = s.getpeername()
                except OSError:
                    continue  # the listener itself
                out.append({"fd": fd, "peer": list(peer)[:2],
                            "nodelay": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)})
        finally:
            s.close()
    return out


async def app(scope, receive, send):
    global _inflight
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _echo(scope, receive, send)
        return
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    path = scope["path"]
    body = {"pid": os.getpid(), "worker": os.environ.get("SUPERVISOR_PROCESS_NAME", ""), "path": path,
            "root_path": scope.get("root_path", ""), "scheme": scope.get("scheme"),
            "client": list(scope["client"]) if scope.get("client") else None,
            "server": list(scope["server"]) if scope.get("server") else None}
    if path.endswith("/sleep"):
        _inflight += 1
        try:
            await asyncio.sleep(float(query.get("s", "1")))
        finally:
            _inflight -= 1
    elif path.endswith("/inflight"):
        body["inflight"] = _inflight
    elif path.endswith("/nodelay"):
        body["sockets"] = _connected_tcp_sockets()
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _echo(scope, receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{scope.get('scheme')}:{message.get('text')}"})
