"""A raw ASGI app for integration tests (no framework: workers start fast).

Behaviour is steered by environment variables set in the test's spec:
- CRASH_AFTER=S: the worker exits with status 1 S seconds after start;
- CRASH_WHILE=PATH: ... but only while PATH exists (delete it to "fix" the app);
- HANG_STARTUP_WHILE=PATH: lifespan start-up does not finish while PATH exists (a database
  that does not answer); the loop stays free, the worker never listens;
- FAIL_IMPORT_WHILE=PATH: importing the app raises while PATH exists (a bad deploy);
- IMPORT_FAILS_UNDER_SUPERVISOR=MESSAGE: importing the app raises RuntimeError(MESSAGE) in a
  process supervisord started (SUPERVISOR_ENABLED), so `check`'s import passes and the workers fail;
- EXIT_UNDER_SUPERVISOR=MESSAGE: the same, but it prints one short line and exits 1 (a failure
  whose log is shorter than any tail, so a tail that reached back would show an earlier run).
"""

import asyncio
import json
import os
import threading
import time
from urllib.parse import parse_qs

_hoard = []

if os.environ.get("FAIL_IMPORT_WHILE") and os.path.exists(os.environ["FAIL_IMPORT_WHILE"]):
    raise RuntimeError("testapp: import failed (FAIL_IMPORT_WHILE exists)")


def _crash_timer() -> None:
    after = os.environ.get("CRASH_AFTER")
    if not after:
        return
    flag = os.environ.get("CRASH_WHILE")

    def die() -> None:
        time.sleep(float(after))
        if flag is None or os.path.exists(flag):
            os._exit(1)

    threading.Thread(target=die, daemon=True).start()


_crash_timer()
if os.environ.get("EXIT_UNDER_SUPERVISOR") and os.environ.get("SUPERVISOR_ENABLED"):
    print(os.environ["EXIT_UNDER_SUPERVISOR"], flush=True)
    os._exit(1)
if os.environ.get("IMPORT_FAILS_UNDER_SUPERVISOR") and os.environ.get("SUPERVISOR_ENABLED"):
    raise RuntimeError(os.environ["IMPORT_FAILS_UNDER_SUPERVISOR"])


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                hang = os.environ.get("HANG_STARTUP_WHILE")
                while hang and os.path.exists(hang):
                    await asyncio.sleep(0.1)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    path = scope["path"]
    received = 0
    # ?unread=1: answer at once, the body unread (an early 401 or 413 does that)
    if scope["method"] == "POST" and not query.get("unread"):  # read the whole body, as a real handler would
        more = True
        while more:
            message = await receive()
            received += len(message.get("body", b""))
            more = message.get("more_body", False) and message["type"] == "http.request"
    extra = {"received": received} if scope["method"] == "POST" else {}
    if path == "/stack":  # the event loop and the uvicorn HTTP implementation this worker runs
        import sys

        extra = {"loop": type(asyncio.get_running_loop()).__module__,
                 "http": sorted(m.rsplit(".", 1)[1] for m in sys.modules
                                if m.startswith("uvicorn.protocols.http.") and m.endswith("_impl"))}
    if path == "/stream":  # a response whose headers go out at once and whose body takes S seconds
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(10):
            await asyncio.sleep(float(query.get("s", "1")) / 10)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", "1")))
    elif path == "/block":
        time.sleep(float(query.get("s", "5")))  # blocks the event loop on purpose
    elif path == "/grow":
        _hoard.append(bytearray(int(float(query.get("mb", "50")) * 1024 * 1024)))
    body = json.dumps({"pid": os.getpid(), "worker": os.environ.get("SUPERVISOR_PROCESS_NAME", ""),
                       "path": path, **extra}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
