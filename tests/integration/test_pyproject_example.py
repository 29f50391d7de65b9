"""conf/pyproject-example.toml works as shipped (issue 16, point 8): copied into a project as
its pyproject.toml, with only the port changed to a free loopback one, `up` serves it; `-c`
takes the file under its own name too."""

import os
import re
import shutil
import subprocess
import sys

from .conftest import free_port, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "conf", "pyproject-example.toml")

API = '''\
import json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps({"pid": os.getpid(), "root_path": scope.get("root_path", "")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


def run(folder: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor_fastapi", *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout)


def test_the_pyproject_example_serves_as_shipped(tmp_path):
    import http.client
    import json

    folder = str(tmp_path)
    port = free_port()
    with open(EXAMPLE, encoding="utf-8") as f:
        text = f.read()
    shipped_bind = 'bind = "tcp://0.0.0.0:8080"'
    assert shipped_bind in text
    with open(os.path.join(folder, "pyproject.toml"), "w", encoding="utf-8") as f:
        f.write(text.replace(shipped_bind, f'bind = "tcp://127.0.0.1:{port}"'))
    os.makedirs(os.path.join(folder, "inventory"))
    open(os.path.join(folder, "inventory", "__init__.py"), "w").close()
    with open(os.path.join(folder, "inventory", "api.py"), "w") as f:
        f.write(API)
    os.makedirs(os.path.join(folder, ".venv", "bin"))
    python = os.path.join(folder, ".venv", "bin", "python")  # the project's venv: this test's interpreter
    with open(python, "w") as f:
        f.write(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(python, 0o755)
    shutil.copy(os.path.join(folder, "pyproject.toml"), os.path.join(folder, "pyproject-example.toml"))
    try:
        out = run(folder, "check", "-c", "pyproject-example.toml")
        print(out.stdout + out.stderr)
        assert out.returncode == 0, out.stdout + out.stderr
        out = run(folder, "up")
        print(out.stdout + out.stderr)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"inventory: 3 workers serving http://127.0.0.1:{port}/" in out.stdout
        pids = set()

        def get() -> dict:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/")
                return json.loads(conn.getresponse().read())
            finally:
                conn.close()

        for _ in range(30):
            body = get()
            assert body["root_path"] == "/inventory"
            pids.add(body["pid"])
        assert len(pids) >= 2
        assert os.path.exists(os.path.join(folder, "run", "supervisor.sock"))
    finally:
        out = run(folder, "down")
        print(out.stdout + out.stderr)
    assert out.returncode == 0 and out.stdout.strip() == "stopped"
    wait_until(lambda: not os.path.exists(os.path.join(folder, "run", "supervisord.pid")), 30, "supervisord to exit")
    assert re.search(r"^run_dir = \"run\"$", text, re.M)
