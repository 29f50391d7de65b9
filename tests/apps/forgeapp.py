"""A hostile app for the backoff-bypass test (issue 16, point 7): under supervisord, at import,
it writes its own pid into its ready file, as a worker that listens would, then kills itself
with SIGKILL before uvicorn ever listens, as if the OOM killer had killed a serving worker."""

import os
import signal
import sys
import time

from supervisor_fastapi.contracts.files import write_worker_state

if os.environ.get("SUPERVISOR_ENABLED"):
    state_dir = sys.argv[sys.argv.index("--state-dir") + 1]
    write_worker_state(os.path.join(state_dir, os.environ["SUPERVISOR_PROCESS_NAME"]), os.getpid(), time.time())
    time.sleep(float(os.environ.get("FORGE_LINGER", "0")))
    os.kill(os.getpid(), signal.SIGKILL)


async def app(scope, receive, send):  # never reached under supervisord
    raise RuntimeError("forgeapp serves nothing")
