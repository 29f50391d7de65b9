"""`init`'s spec stays valid when the channels the docs show are appended (issue 16, point 8)."""

import os
import re

from supervisor_fastapi.generate.starter import write_starter
from supervisor_fastapi.spec import load_spec

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs")


def documented_alert_block(kind: str) -> str:
    """The ``[[alerts]]`` block of channel ``kind`` as docs/listener.md shows it."""
    with open(os.path.join(DOCS, "listener.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```toml\n(.*?)```", f.read(), re.S)
    for block in blocks:
        for part in block.split("[[alerts]]")[1:]:
            if re.match(rf'\s*type = "{kind}"', part):
                return "[[alerts]]" + part
    raise AssertionError(f"docs/listener.md shows no {kind} block")


def test_the_documented_alerts_appended_to_the_starter_spec_load(tmp_path):
    path = write_starter(str(tmp_path / "supervisor-fastapi.toml"), "shop", "main:app", force=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + documented_alert_block("webhook") + "\n" + documented_alert_block("email"))
    spec = load_spec(path)
    assert [a.type for a in spec.alerts] == ["log", "webhook", "email"]
