"""up / down: write the conf, start or update supervisord, wait for every worker to accept."""

import os
import tempfile
import time
from typing import Any, Callable, List, Optional

from ..errors import UserError
from ..generate.conf import render
from ..layout import Layout
from ..spec import Spec
from . import checks, control
from .ops import start_process

Progress = Callable[[str], None]


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".supervisor-fastapi-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_dirs(spec: Spec) -> None:
    """run_dir and its log and state folders: supervisord refuses a conf whose log folder is missing."""
    layout = Layout(spec.run_dir)
    for d in layout.dirs():
        os.makedirs(d, exist_ok=True)
    if spec.app.user and os.geteuid() == 0:
        # Workers run as app.user and write their ready/heartbeat files in state_dir; a
        # root-owned folder made every worker die at startup with PermissionError.
        import pwd

        try:
            entry = pwd.getpwnam(spec.app.user)
        except KeyError:
            return  # `check` and supervisord's parser report the unknown user
        os.chown(layout.state_dir, entry.pw_uid, entry.pw_gid)


def default_conf_path(spec: Spec) -> str:
    return os.path.join(spec.base_dir, "supervisord.conf")


def render_to(spec: Spec, conf_path: str, command: str, fragment: bool = False) -> str:
    """Render the spec and write it atomically; the text is loaded by supervisor's parser first."""
    text = render(spec, command, fragment=fragment)
    make_dirs(spec)
    if not fragment:
        err = checks.load_with_supervisor(text)
        if err:  # a renderer bug, not a user error: keep the old file and say so
            raise UserError(f"the generated conf does not load in supervisord ({err}); nothing was written. "
                            "Please report this with your spec.")
    write_atomic(conf_path, text)
    return text


def up(spec: Spec, conf_path: str, command: str, progress: Progress, timeout: float = 60.0) -> List[str]:
    """Render, start (or update) supervisord, wait until every worker accepts; ready names."""
    layout = Layout(spec.run_dir)
    problem = checks.preflight_problem(spec)  # what `check` checks of the app, before anything starts
    if problem:
        raise UserError(problem)
    render_to(spec, conf_path, command)
    if control.is_running(layout):
        progress("supervisord is running: applying the conf")
        apply_update(control.rpc(layout), progress)
        if spec.migrate:
            start_process(control.rpc(layout), f"{spec.app.name}_migrate")
    else:
        problem = checks.bind_problem(spec.server.bind)
        if problem:
            raise UserError(f"server.bind: {problem}")
        progress(f"starting supervisord -c {conf_path}")
        control.start_daemon(conf_path, layout)
    if spec.migrate:
        timeout += spec.migrate.timeout
    return wait_ready(spec, layout, progress, timeout)


def apply_update(proxy: Any, progress: Progress) -> None:
    """What `supervisorctl update` does: reread, then remove/replace/add the changed groups."""
    added, changed, removed = proxy.supervisor.reloadConfig()[0]
    for group in removed + changed:
        proxy.supervisor.stopProcessGroup(group, True)
        proxy.supervisor.removeProcessGroup(group)
    for group in changed + added:
        proxy.supervisor.addProcessGroup(group)
    for verb, names in (("added", added), ("changed", changed), ("removed", removed)):
        if names:
            progress(f"{verb}: {', '.join(sorted(names))}")


def wait_ready(spec: Spec, layout: Layout, progress: Progress, timeout: float) -> List[str]:
    """Poll until every web worker is ready; on a failure raise with the failing log tail."""
    proxy = control.rpc(layout)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        infos = proxy.supervisor.getAllProcessInfo()
        r = control.readiness(spec, infos, control.worker_states(layout))
        if r.failed:
            name = r.failed[0]
            full = next(f"{i['group']}:{i['name']}" for i in infos if i["name"] == name)
            tail = control.log_tail(proxy, full)
            raise UserError(f"{full} failed: {r.reasons[name]}\n--- last lines of its log ---\n{tail.rstrip()}\n"
                            f"--- fix the problem, then run `supervisor-fastapi up` again "
                            f"(supervisord is still running; `supervisor-fastapi down` stops it)")
        line = f"{len(r.ready)}/{len(r.ready) + len(r.pending)} workers ready"
        if r.migrating:
            line = f"{r.migrating} running; the workers start when it exits 0"
        if line != last:
            progress(line)
            last = line
        if r.done and r.ready:
            return r.ready
        if time.monotonic() > deadline:
            waiting = r.pending or [r.migrating or "the workers"]
            raise UserError(f"timed out after {timeout:g} s: {line}; still waiting for {', '.join(waiting)}")
        time.sleep(0.1)


def down(spec: Spec) -> bool:
    """Stop supervisord and everything it runs; False if it was not running."""
    return control.stop_daemon(Layout(spec.run_dir), timeout=spec.server.graceful_timeout + 60)


def url_of(spec: Spec) -> Optional[str]:
    b = spec.server.bind
    if b.kind == "unix":
        return f"unix:{b.path}"
    host = "127.0.0.1" if b.host == "0.0.0.0" else b.host
    return f"http://{host}:{b.port}/"
