"""The guide shows `systemd-unit`'s real output (issue 16, point 8: it lacked the UMask lines)."""

import os
import re

from supervisor_fastapi.generate import systemd
from supervisor_fastapi.spec import HostDefaults, parse_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_guides_systemd_unit_is_what_the_command_prints():
    with open(os.path.join(ROOT, "docs", "guide.md"), encoding="utf-8") as f:
        guide = f.read()
    shown = re.search(r"```\n\$ supervisor-fastapi systemd-unit\n(.*?)```", guide, re.S).group(1)
    # The guide's deployment: /tmp/shop's spec, its venv /tmp/v1 (the python the unit names).
    python = re.search(r"^ExecStart=(\S+) -m supervisor\.supervisord", shown, re.M).group(1)
    spec = parse_spec('[app]\nname = "shop"\nasgi = "main:app"\n[server]\nbind = "tcp://127.0.0.1:8011"\nworkers = 2\n',
                      "/tmp/shop/supervisor-fastapi.toml", "/tmp/shop", HostDefaults(python=python, cpu_count=2))
    assert shown == systemd.unit(spec, "/tmp/shop/supervisord.conf", python)
