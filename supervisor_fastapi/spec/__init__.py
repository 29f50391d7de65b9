"""The deployment spec: ``model`` holds the typed records, ``load`` reads TOML into them."""

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
                    Alert,
                    App,
                    Backoff,
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
           "Alert", "App", "Backoff", "Bind", "Budget", "CrashLoop", "HostDefaults", "Https", "Listener", "Memory",
           "Metrics", "Migrate", "Program", "Release", "Server", "Spec", "Supervisord", "Kubernetes", "SERVICE_TYPES",
           "format_size", "parse_size"]
