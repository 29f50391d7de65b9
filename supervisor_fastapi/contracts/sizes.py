"""Sizes as people read them, with the units the spec's ``parse_size`` accepts: status
tables, alerts, the watchdog's messages, supervisorctl's plugin. Standard library only.
"""

SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def format_size(n: float) -> str:
    """Bytes as a short human size: '1 GB', '512 MB' (powers of 1024, as parse_size)."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = SIZE_UNITS[unit[0]]
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"
