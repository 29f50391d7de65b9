"""The migration program of a release-mode app: ``python -m supervisor_fastapi.runtime.release_migrate
--record PATH --releases DIR -- COMMAND...``.

supervisord starts it at every start, `reload` and `update` that re-adds it, from the
``current`` symlink (so in the serving release's folder). A release's migration runs once:
`deploy` ran it before it switched ``current``, and recorded the result in the root-written
record. When the record says it succeeded for this release, this exits 0 at once (the gate
opens, the workers start); otherwise it runs the command (exec, as supervisord would).

Standard library only (plus contracts.files): it runs in app.python as app.user.
"""

import argparse
import os
import sys
from typing import List, Optional

from ..contracts.files import migration_succeeded, read_release_record


def release_of(cwd: str, releases_dir: str) -> Optional[str]:
    """The release folder ``cwd`` is (supervisord chdir'd through ``current``: it is resolved)."""
    head, name = os.path.split(os.path.realpath(cwd))
    return name if head == os.path.realpath(releases_dir) else None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor_fastapi.runtime.release_migrate")
    parser.add_argument("--record", required=True)
    parser.add_argument("--releases", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no migration command after --")
    release = release_of(os.getcwd(), args.releases)
    if release is not None and migration_succeeded(read_release_record(args.record), release):
        print(f"release {release}: its migration already succeeded (recorded by deploy); not running it again",
              flush=True)
        return 0
    print(f"release {release or os.getcwd()}: no successful migration on record; running {' '.join(command)}",
          flush=True)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
