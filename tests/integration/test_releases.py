"""Releases (issue 17) with a real supervisord, real workers and real HTTP; and the in-place
mode's STILL_RUNNING fix."""

import sys
import time

import tomli_w

from .conftest import merge, wait_until

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

MIGRATION = """\
import os, sys
flag = os.environ.get("MIGRATE_FAIL_WHILE", "")
if flag and os.path.exists(flag):
    print("ERROR: migration failed", flush=True)
    sys.exit(3)
print("migrating: done", flush=True)
"""


def rewrite_spec(d, overrides):
    """Change the deployment's spec file as an operator would (deep-merged over what it says)."""
    with open(d.spec_path, "rb") as f:
        data = tomllib.load(f)
    with open(d.spec_path, "w") as f:
        f.write(tomli_w.dumps(merge(data, overrides)))


def test_up_replaces_a_group_the_gate_holds_fix_and_more_workers_serve_within_10s(deploy, tmp_path):
    """In-place mode: a failed migration holds the workers; fixing it and changing workers 2 -> 3
    in one `up` must not fail with supervisord's STILL_RUNNING Fault (issue 17)."""
    script, flag = tmp_path / "migrate.py", tmp_path / "broken"
    script.write_text(MIGRATION)
    flag.write_text("")
    d = deploy({"migrate": {"command": f"{sys.executable} {script}", "env": {"MIGRATE_FAIL_WHILE": str(flag)}}},
               wait=False)
    wait_until(lambda: d.control_state()["gate"]["state"] == "failed", 20, "the migration to fail")
    wait_until(lambda: {i["statename"] for i in d.infos() if i["group"] == "web"} == {"BACKOFF"}, 10,
               "the workers to be held")
    flag.unlink()
    rewrite_spec(d, {"server": {"workers": 3}})
    t0 = time.monotonic()
    r = d.cli("up", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "STILL_RUNNING" not in r.stdout + r.stderr
    wait_until(lambda: d.get("/")[0] == 200, 10, "the site to serve")
    took = time.monotonic() - t0
    web = [i for i in d.infos() if i["group"] == "web"]
    assert len(web) == 3 and {i["statename"] for i in web} == {"RUNNING"}, web
    assert took < 10, f"serving {took:.1f} s after up"
