"""Shared helpers for the core unit tests: pinned host defaults, spec builders, and
supervisor's own parser as the judge of every conf a test generates."""

import os
from typing import Any, Dict, List, Optional, Tuple

from supervisor.options import ServerOptions, UnhosedConfigParser

from supervisor_fastapi.cli.checks import supervisor_options
from supervisor_fastapi.generate.conf import render
from supervisor_fastapi.layout import Layout
from supervisor_fastapi.spec import HostDefaults, Spec, build_spec

HOST = HostDefaults(python="/opt/app/bin/python", cpu_count=4)


def data(**tables: Any) -> Dict[str, Any]:
    """A minimal valid spec as data, with ``tables`` merged one level deep."""
    out: Dict[str, Any] = {"app": {"name": "web", "asgi": "main:app"}}
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def spec_of(d: Dict[str, Any], base_dir: str = "/srv/app", run_dir: Optional[str] = None) -> Spec:
    """build_spec with pinned host defaults; ``run_dir`` (absolute) overrides supervisord.run_dir."""
    if run_dir is not None:
        d = {**d, "supervisord": {**d.get("supervisord", {}), "run_dir": run_dir}}
    return build_spec(d, os.path.join(base_dir, "supervisor-fastapi.toml"), base_dir, HOST)


def conf_of(spec: Spec, fragment: bool = False) -> str:
    return render(spec, "supervisor-fastapi render", spec.supervisord.hosting(fragment))


def make_dirs(spec: Spec) -> None:
    for d in Layout(spec.run_dir).dirs():
        os.makedirs(d, exist_ok=True)


def raw_sections(text: str) -> Dict[str, Dict[str, str]]:
    """Sections and raw options exactly as supervisor's INI parser sees them."""
    parser = UnhosedConfigParser()
    parser.read_string(text)
    return {name: dict(parser.items(name)) for name in parser.sections()}


def load(text: str) -> ServerOptions:
    """Load conf text with supervisor's ``process_config``; fails the test with its message."""
    return supervisor_options(text)


def expected_sections(spec: Spec, fragment: bool = False) -> List[str]:
    names = [] if fragment else ["unix_http_server", "supervisord", "rpcinterface:supervisor", "supervisorctl"]
    names.append(f"eventlistener:{spec.app.name}_listener")
    if spec.migrate:
        names.append(f"program:{spec.app.name}_migrate")
    names.append(f"fcgi-program:{spec.app.name}")
    names += [f"program:{spec.app.name}_{p.name}" for p in spec.programs]
    return names


def program_configs(options: ServerOptions) -> Dict[str, List[Tuple[str, Any]]]:
    """Group name -> [(process name, ProcessConfig)] from a loaded ServerOptions."""
    return {g.name: [(p.name, p) for p in g.process_configs] for g in options.process_group_configs}
