"""The deployment spec: ``model`` holds the typed records, ``load`` reads TOML into them.

``load`` runs in the operator's ``supervisor-fastapi`` process only; ``model`` records are
also read by the listener, so ``model`` imports the standard library, ``contracts`` and
``layout`` only. ``model`` also holds the decisions that follow from the spec alone, such as
whose supervisord runs the app (``Supervisord.hosting``).

``load`` is imported on first use of one of its names (``__getattr__`` below): it brings the
TOML parser and uvicorn's settings table, and the listener, which reads ``model`` records,
must not carry them (tests/unit/test_imports.py).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .load import (
                        PYPROJECT_TABLE,
                        SPEC_FILENAME,
                        build_spec,
                        find_spec,
                        load_spec,
                        parse_bind,
                        parse_spec,
                        pyproject_with_table,
    )
from .model import (
                    SERVICE_TYPES,
                    AlertChannel,
                    App,
                    Bind,
                    Budget,
                    CrashLoop,
                    HostDefaults,
                    Https,
                    Kubernetes,
                    Listener,
                    Memory,
                    Metrics,
                    Migrate,
                    Program,
                    Release,
                    Server,
                    Spec,
                    Supervisord,
                    format_size,
                    parse_size,
)

__all__ = ["PYPROJECT_TABLE", "SPEC_FILENAME", "build_spec", "find_spec", "load_spec", "parse_bind", "parse_spec",
           "pyproject_with_table",
           "AlertChannel", "App", "Bind", "Budget", "CrashLoop", "HostDefaults", "Https", "Listener", "Memory",
           "Metrics", "Migrate", "Program", "Release", "Server", "Spec", "Supervisord", "Kubernetes", "SERVICE_TYPES",
           "format_size", "parse_size"]

# The names above read from ``load`` (the TYPE_CHECKING import tells mypy their types).
_FROM_LOAD = frozenset(("PYPROJECT_TABLE", "SPEC_FILENAME", "build_spec", "find_spec", "load_spec", "parse_bind",
                        "parse_spec", "pyproject_with_table"))


def __getattr__(name: str) -> Any:
    """PEP 562: ``from supervisor_fastapi.spec import load_spec`` imports ``spec.load`` then."""
    if name in _FROM_LOAD:
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
