"""The app every contender serves: a small FastAPI app.

``/`` returns a small JSON document (the throughput and latency endpoint); ``/pid`` returns
the worker's pid, which the benchmark uses to tell workers apart (readiness, replacement
after ``kill -9``, restarts).
"""

import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict:
    return {"message": "Hello World"}


@app.get("/pid")
async def pid() -> dict:
    return {"pid": os.getpid()}
