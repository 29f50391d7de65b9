"""`init`: a starter spec, written with tomli-w so it is always valid TOML."""

import os
import re
from typing import Any, Dict

import tomli_w

from ..contracts.settings import Policy
from ..errors import UserError
from ..spec import PYPROJECT_TABLE, SPEC_FILENAME, HostDefaults, build_spec, pyproject_with_table
from ..spec.load import tomllib

_POLICY = Policy()


def starter(name: str, asgi: str) -> Dict[str, Any]:
    """The starter spec as data: what most deployments change first, with safe defaults."""
    return {
        "app": {"name": name, "asgi": asgi, "env": {}},
        "server": {"bind": "tcp://127.0.0.1:8000", "workers": "auto", "graceful_timeout": 30,
                   "uvicorn": {"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}},
        "memory": {"budget": "90%"},
        # The loader's own defaults, written out so users see the knobs (a copy here went stale).
        "crash_loop": {"restarts": _POLICY.restarts, "window": _POLICY.window,
                       "backoff_initial": _POLICY.backoff_initial, "backoff_max": _POLICY.backoff_max},
        "alerts": [{"type": "log"}],
    }


def safe_name(folder: str) -> str:
    """A program name from a folder name: lowercase, [a-z][a-z0-9_-]*."""
    name = re.sub(r"[^a-z0-9_-]+", "-", folder.lower()).strip("-_") or "app"
    return name if name[0].isalpha() else f"app-{name}"


def write_starter(path: str, name: str, asgi: str, force: bool) -> str:
    """Write the starter spec to ``path``; refuses to overwrite unless ``force``."""
    path = os.path.abspath(path)
    data = starter(safe_name(name), asgi)
    # The starter must itself be valid, as the text written, not only as data.
    build_spec(tomllib.loads(starter_text(data)), path, os.path.dirname(path), HostDefaults())
    if os.path.exists(path) and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    pyproject = pyproject_with_table(os.path.dirname(path))
    if pyproject and os.path.basename(path) == SPEC_FILENAME and not force:
        # find_spec prefers supervisor-fastapi.toml: the new file would hide the table without a word.
        raise UserError(f"{pyproject} already has [tool.{PYPROJECT_TABLE}], the spec used here; a {SPEC_FILENAME} "
                        f"beside it would take precedence over it. Edit that table, or pass --force to write "
                        f"{SPEC_FILENAME} and use it instead")
    with open(path, "w", encoding="utf-8") as f:
        f.write(starter_text(data))
    return path


def starter_text(data: Dict[str, Any]) -> str:
    """The starter spec as TOML. ``alerts`` goes last as ``[[alerts]]`` blocks, never as an inline
    ``alerts = [...]``: the docs show channels as ``[[alerts]]`` blocks to append, and a block
    appended after an inline array is a TOML error (the key is defined twice)."""
    rest = {k: v for k, v in data.items() if k != "alerts"}
    blocks = "".join("\n[[alerts]]\n" + tomli_w.dumps(alert) for alert in data.get("alerts", []))
    return ("# supervisor-fastapi deployment spec. Reference: docs/spec.md\n"
            "# Validate: supervisor-fastapi check   Start: supervisor-fastapi up\n\n"
            + tomli_w.dumps(rest) + blocks
            + "\n# More channels: append [[alerts]] blocks (webhook, email, command), see docs/listener.md\n")
