"""conf/: the example specs and their generated confs, reproduced byte for byte.

The renderer is deterministic, but three inputs come from the machine: the spec's own path
(header, listener ``--spec``, listener folder), the listener's interpreter and, for unset keys,
the host defaults. The examples set app.python, directory, run_dir and workers explicitly, and
this test renders each as if the spec were installed at its deploy location (``DEPLOYED``),
with the app's interpreter for the listener, so the output is the same on every machine.

Regenerate after a renderer change:  python -m tests.unit.test_conf_examples
"""

import os
import pwd
import sys

import pytest

from supervisor_fastapi.generate.conf import render
from supervisor_fastapi.spec import PYPROJECT_TABLE, HostDefaults, parse_spec

from ._core_helpers import load, raw_sections

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")
# example -> where its spec file lives once deployed
DEPLOYED = {
    "minimal": "/srv/hello/supervisor-fastapi.toml",
    "production": "/srv/shop/supervisor-fastapi.toml",
    "pyproject-example": "/srv/inventory/pyproject.toml",
    "releases": "/srv/store/supervisor-fastapi.toml",
}
# No host default may leak into the examples: a value taken from here would be wrong on purpose.
NO_HOST = HostDefaults(python="/HOST-DEFAULT-LEAKED/python", cpu_count=97)


def rendered(example: str) -> str:
    with open(os.path.join(CONF, f"{example}.toml"), encoding="utf-8") as f:
        text = f.read()
    source = DEPLOYED[example]
    table = PYPROJECT_TABLE if source.endswith("pyproject.toml") else None
    spec = parse_spec(text, source, os.path.dirname(source), NO_HOST, table)
    return render(spec, "supervisor-fastapi render")


def regenerate() -> None:
    for example in DEPLOYED:
        with open(os.path.join(CONF, f"{example}.conf"), "w", encoding="utf-8") as f:
            f.write(rendered(example))
        print(f"wrote conf/{example}.conf")


@pytest.mark.parametrize("example", sorted(DEPLOYED))
def test_committed_conf_is_reproduced_byte_for_byte(example):
    with open(os.path.join(CONF, f"{example}.conf"), encoding="utf-8") as f:
        committed = f.read()
    assert rendered(example) == committed, f"conf/{example}.conf is stale: python -m tests.unit.test_conf_examples"
    assert "HOST-DEFAULT-LEAKED" not in committed
    assert not [s for s in raw_sections(committed).values() if s.get("numprocs") == "97"]


@pytest.mark.parametrize("example", sorted(DEPLOYED))
def test_committed_conf_loads_with_supervisor(example, tmp_path):
    with open(os.path.join(CONF, f"{example}.conf"), encoding="utf-8") as f:
        text = f.read()
    run_dir = os.path.join(os.path.dirname(DEPLOYED[example]), "run")
    for sub in ("logs", "workers"):
        (tmp_path / sub).mkdir()
    text = text.replace(run_dir, str(tmp_path))
    users = {line.split("=", 1)[1].split(":")[0] for line in text.splitlines()
             if line.startswith(("user=", "socket_owner="))}
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"user {user!r} does not exist on this host")
    options = load(text)
    name = {"minimal": "hello", "production": "shop", "pyproject-example": "inventory", "releases": "store"}[example]
    assert name in {g.name for g in options.process_group_configs}


def test_every_example_spec_has_a_conf():
    specs = {f[:-5] for f in os.listdir(CONF) if f.endswith(".toml")}
    assert specs == set(DEPLOYED)


if __name__ == "__main__":
    regenerate()
    sys.exit(0)
