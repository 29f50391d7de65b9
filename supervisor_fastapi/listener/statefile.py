"""The listener's state file: JSON in run_dir, replaced atomically, read by `status` and on restart."""

import json
import os
from typing import Any, Dict, Mapping, Optional


def load(path: str) -> Optional[Dict[str, Any]]:
    """The saved state, or None when there is none (or it is unreadable: start fresh)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == 1 else None


def save(path: str, state: Mapping[str, Any]) -> None:
    """Write via a temporary file and os.replace, so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)
