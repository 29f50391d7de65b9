"""Machine, versions and date, printed beside the figures."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Dict

import load

PACKAGES = ("supervisor-fastapi", "uvicorn", "supervisor", "gunicorn", "uvicorn-worker", "fastapi", "starlette",
            "uvloop", "httptools", "psutil", "matplotlib")


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def git_commit(folder: str) -> str:
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stack_in_effect(stack: str) -> str:
    if stack == "asyncio-h11":
        return "asyncio loop, h11 HTTP parser (forced)"
    loop = "uvloop" if version("uvloop") != "not installed" else "asyncio"
    http = "httptools" if version("httptools") != "not installed" else "h11"
    return f"uvicorn's auto choice: {loop} loop, {http} HTTP parser"


def collect(tool: str, stack: str, repo: str) -> Dict[str, object]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(ram_gb(), 1),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "python": sys.version.split()[0],
        "packages": {p: version(p) for p in PACKAGES},
        "load_generator": load.tool_version(tool),
        "stack": stack_in_effect(stack),
        "commit": git_commit(repo),
        "loadavg_at_start": os.getloadavg(),
    }
