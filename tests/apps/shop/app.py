"""The release test app: a raw ASGI app on SQLite whose schema alembic migrates (tests/integration/test_releases.py).

Each release answers with its own marker (release.txt beside this file), so a test can tell
which release served a request. COLUMNS says which columns its code writes: r1's code
knows `name` only, later releases also `note` (added by migration 0002).
"""

import json
import os
import sqlite3

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "release.txt")) as f:
    RELEASE = f.read().strip()
with open(os.path.join(HERE, "columns.txt")) as f:
    COLUMNS = f.read().split()
DB = os.path.join(HERE, "data", "app.db")  # data/ is a [release] shared path


def insert() -> None:
    conn = sqlite3.connect(DB, timeout=10)
    try:
        values = {"name": "item", "note": RELEASE}
        conn.execute(f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                     [values[c] for c in COLUMNS])
        conn.commit()
    finally:
        conn.close()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # read the whole request body
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        insert()
    body = json.dumps({"release": RELEASE, "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
