"""The listener's state file: JSON in run_dir, replaced atomically, read by `status` and on restart."""

from typing import Any, Dict, Mapping, Optional

from ..contracts.files import read_json, write_json_atomic


def load(path: str) -> Optional[Dict[str, Any]]:
    """The saved state, or None when there is none (or it is unreadable: start fresh)."""
    data = read_json(path)
    return data if data is not None and data.get("version") == 1 else None


def save(path: str, state: Mapping[str, Any]) -> None:
    """Write atomically (contracts.files.write_json_atomic), so a reader never sees half a file."""
    write_json_atomic(path, state)
