"""The demo app `supervisor-fastapi demo` serves: it answers with the pid of the worker."""

import os

from fastapi import FastAPI

app = FastAPI(title="supervisor-fastapi demo")


@app.get("/")
def index() -> dict:
    """Which worker answered: repeat the request to see the pids change."""
    return {"message": "Hello from supervisor-fastapi", "worker_pid": os.getpid(),
            "worker": os.environ.get("SUPERVISOR_PROCESS_NAME", "")}


@app.get("/health")
def health() -> dict:
    return {"ok": True}
