"""run_dir's operation lock: one `up`/`down`/`deploy`/`rollback` at a time, reentrant in one process."""

import os
import subprocess
import sys

import pytest

from supervisor_fastapi.cli.deploy import operation_lock
from supervisor_fastapi.errors import DeployError
from supervisor_fastapi.layout import Layout

OTHER = """
import sys
from supervisor_fastapi.cli.deploy import operation_lock
from supervisor_fastapi.errors import DeployError
from supervisor_fastapi.layout import Layout
try:
    with operation_lock(Layout(sys.argv[1]), "down"):
        print("got it")
except DeployError as exc:
    print(exc)
"""


def other_process(run_dir: str) -> str:
    return subprocess.run([sys.executable, "-c", OTHER, run_dir], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_a_second_process_is_refused_with_the_holder_and_a_nested_take_is_fine(tmp_path):
    layout = Layout(str(tmp_path))
    with operation_lock(layout, "deploy"):
        with operation_lock(layout, "up"):  # `deploy` runs `up` when supervisord is not running
            pass
        assert other_process(str(tmp_path)) == (
            f"another supervisor-fastapi command is working on this deployment (`deploy` pid {os.getpid()}; "
            f"lock {layout.operation_lock}); wait for it to finish (or interrupt it), then run `down` again")
    assert other_process(str(tmp_path)) == "got it"


def test_a_link_at_the_lock_name_is_never_followed(tmp_path):
    (tmp_path / "victim").write_text("keep")
    os.symlink(tmp_path / "victim", tmp_path / "operation.lock")
    with pytest.raises(OSError):
        with operation_lock(Layout(str(tmp_path)), "up"):
            pass
    assert (tmp_path / "victim").read_text() == "keep"
    assert DeployError.exit_code == 1
