"""up / down: write the conf, start or update supervisord, wait for every worker to accept."""

import contextlib
import errno
import os
import stat
import tempfile
import time
import xmlrpc.client
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ..contracts.files import read_small_file, read_worker_states
from ..contracts.rpc import control_state, printable
from ..errors import DeployError, UserError
from ..generate.conf import render
from ..layout import Layout, Names
from ..spec import Spec
from ..spec.model import Hosting
from . import checks, control
from .edges import start_process

Progress = Callable[[str], None]


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of one.

    mkstemp creates the file 0600 and it is chmodded to ``mode`` only when complete, so the
    text is never readable more widely than ``mode`` allows, not even for a moment."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".supervisor-fastapi-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def conf_mode(spec: Spec) -> int:
    """The conf's file mode: 0600 when it carries environment values (app.env, programs' and
    the migration's env: database URLs, API keys) or alert channels, else 0644; never wider
    than the spec file, which holds the same values."""
    envs = [spec.app.env] + [p.env for p in spec.programs] + ([spec.migrate.env] if spec.migrate else [])
    # The listener's settings (environment= of its section) carry the [[alerts]]: webhook
    # URLs and headers are secrets too.
    mode = 0o600 if any(envs) or spec.alerts else 0o644
    try:
        spec_mode = os.stat(spec.source).st_mode & 0o666
    except OSError:
        spec_mode = 0o600
    return (mode & spec_mode) | 0o600


# What each folder under run_dir may be: run_dir is traversable (the workers reach workers/
# through it) but not listable; logs/ is root's; workers/ is the app user's own.
RUN_DIR_MODE = 0o711
LOG_DIR_MODE = 0o700
STATE_DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _own_dir(path: str, mode: int, owner: Optional[Tuple[int, int]] = None) -> None:
    """Create ``path`` (or take the existing one) without following a symlink at its name, then
    set its mode and owner through the open descriptor: a ``workers`` symlink to a root
    folder is refused, never given away."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UserError(f"{path} is a symlink or not a folder; remove it (`rm {path}`) and run again; "
                            "supervisor-fastapi creates it") from None
        raise
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        if owner is not None or os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_dirs(spec: Spec) -> None:
    """run_dir and its log and state folders: supervisord refuses a conf whose log folder is missing.

    As root (supervisord then runs as root), run_dir must be root's alone: root reads and
    writes files there at fixed names, so whoever can write it could make root follow a
    link or give away a folder. Every trust refusal is `check`'s too (checks.trust_refusals)."""
    layout = Layout(spec.run_dir)
    root = os.geteuid() == 0
    for refused in checks.trust_refusals(spec, os.geteuid()):
        raise UserError(f"{spec.source}: {refused.what}: {refused.detail}")
    parent = os.path.dirname(layout.run_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    _own_dir(layout.run_dir, RUN_DIR_MODE)
    _own_dir(layout.log_dir, LOG_DIR_MODE)
    owner = None
    if spec.app.user and root:
        # Workers run as app.user and write their ready/heartbeat files in state_dir; a
        # root-owned folder made every worker die at startup with PermissionError.
        import pwd

        try:
            entry = pwd.getpwnam(spec.app.user)
            owner = (entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass  # `check` and supervisord's parser report the unknown user
    _own_dir(layout.state_dir, STATE_DIR_MODE, owner)
    if spec.supervisord.hosting().shared:
        return  # that supervisord logs where its own conf says (Debian: /var/log/supervisor)
    # supervisord appends to its log with the umask it inherits (022 under systemd): made
    # here first, the file is root's alone from the start.
    try:
        os.close(os.open(layout.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0),
                         0o600))
    except OSError as exc:
        raise UserError(f"{layout.logfile}: {exc.strerror}; remove it and run again") from None


STILL_RUNNING = ("supervisord is still running with what it started; `supervisor-fastapi status` shows it, "
                 "`supervisor-fastapi up` again continues, `supervisor-fastapi down` stops it")


_HELD_LOCKS: Set[str] = set()  # operation locks this process holds


@contextlib.contextmanager
def operation_lock(layout: Layout, what: str) -> Iterator[None]:
    """Hold run_dir's operation lock while ``what`` (`up`, `down`) runs: a second one, or a `down`
    during an `up`, stops at once with one line instead of racing the first in supervisord
    (whose raw answers, ALREADY_STARTED or a refused connection, said nothing useful). The lock
    is a flock: a killed holder releases it. Reentrant in one process (`deploy` runs `up`)."""
    import fcntl

    if layout.operation_lock in _HELD_LOCKS:
        yield
        return
    fd = os.open(layout.operation_lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = (read_small_file(layout.operation_lock, 256) or b"").decode("utf-8", "replace").strip()
            raise DeployError(f"another supervisor-fastapi command is working on this deployment "
                              f"({printable(holder) or 'its pid is unknown'}; lock {layout.operation_lock}); "
                              f"wait for it to finish (or interrupt it), then run `{what}` again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{what}` pid {os.getpid()}\n".encode(), 0)
        _HELD_LOCKS.add(layout.operation_lock)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(layout.operation_lock)
    finally:
        os.close(fd)


def default_conf_path(spec: Spec) -> str:
    return os.path.join(spec.base_dir, "supervisord.conf")


def render_to(spec: Spec, conf_path: str, command: str, hosting: Optional[Hosting] = None) -> str:
    """Render the spec and write it atomically; a whole conf is loaded by supervisor's parser first.
    ``hosting``: the spec's own unless `render`'s flags changed it."""
    from . import https

    hosting = hosting or spec.supervisord.hosting()
    text = render(spec, command, hosting)
    make_dirs(spec)
    if not hosting.fragment:
        err = checks.load_with_supervisor(text)
        if err:  # a renderer bug, not a user error: keep the old file and say so
            raise UserError(f"the generated conf does not load in supervisord ({err}); nothing was written. "
                            "Please report this with your spec.")
    https.write_files(spec, command, hosting)  # [https]: the Caddyfile (or snippet) the conf's program reads
    write_atomic(conf_path, text, conf_mode(spec))
    return text


# How long `up` waits for the metrics exporter: it serves within a second of its start, and a
# bind it cannot take (a port in use) fails it at once, which the controller then retries.
EXPORTER_TIMEOUT = 15.0


def wait_exporter(spec: Spec, proxy: Any, progress: Progress, since: Optional[Dict[str, int]] = None) -> None:
    """[metrics]: after the workers, wait until the exporter runs; one that cannot serve fails `up`
    (exit 1) with its log's tail instead of `up` saying all is well while /metrics is down."""
    if spec.metrics is None:
        return
    name = Names(spec.app.name).metrics
    control.wait_running(proxy, name, "the metrics exporter", f"fix what its log says ([metrics] bind "
                         f"{spec.metrics.bind}; `supervisor-fastapi check` tests that it is free)", since,
                         EXPORTER_TIMEOUT)
    progress(f"{name}: /metrics on {spec.metrics.bind}")


def up(spec: Spec, conf_path: str, command: str, progress: Progress, timeout: float = 60.0,
       over_capacity: bool = False) -> List[str]:
    """Render, start (or update) supervisord, wait until every worker accepts; ready names.
    ``over_capacity``: start them although the workers do not fit memory.budget.

    With ``supervisord.serverurl`` the app runs in that supervisord instead (host.up)."""
    layout = Layout(spec.run_dir)
    problem = checks.preflight_problem(spec)  # what `check` checks of the app, before anything starts
    if problem:
        raise UserError(problem)
    problem = checks.capacity_problem(spec.server.workers, spec.memory, checks.total_ram())
    if problem and not over_capacity:
        # `check` fails on it: starting anyway is how a host ends up swapping or OOM-killing.
        raise UserError(f"{spec.source}: memory capacity: {problem}; nothing was started "
                        "(`up --over-capacity` starts them anyway)")
    if problem:
        progress(f"over capacity, starting anyway (--over-capacity): {problem}")
    make_dirs(spec)
    with operation_lock(layout, "up"):
        return _up(spec, conf_path, command, progress, timeout)


def _up(spec: Spec, conf_path: str, command: str, progress: Progress, timeout: float) -> List[str]:
    layout = Layout(spec.run_dir)
    if spec.supervisord.hosting().shared:
        from . import host

        return host.up(spec, command, progress, timeout)
    since = log_sizes(layout)  # log tails start at this run: the files may hold earlier runs'
    render_to(spec, conf_path, command)
    proxy = control.rpc(layout, control.rpc_timeout(spec))
    if control.is_running(layout):
        progress("supervisord is running: applying the conf")
        apply_update(proxy, progress)
        resume(proxy, spec, progress)
    else:
        orphans = control.find_orphans(layout)
        if orphans:
            start_beside(spec, conf_path, layout, orphans, progress)
        else:
            problem = checks.bind_problem(spec.server.bind)
            if problem:
                raise UserError(f"server.bind: {problem}")
            progress(f"starting supervisord -c {conf_path}")
            control.start_daemon(conf_path, layout)
    if spec.migrate:
        timeout += spec.migrate.timeout
    ready = wait_ready(spec, proxy, layout, progress, timeout, since)
    retire_orphans(spec, layout, progress)
    from . import https

    https.wait_proxy(spec, proxy, progress, since)  # [https]: Caddy serving too, or why not
    wait_exporter(spec, proxy, progress, since)
    return ready


def start_beside(spec: Spec, conf_path: str, layout: Layout, orphans: List[control.Orphan],
                 progress: Progress) -> None:
    """Start supervisord while the workers of a killed one still serve (they hold the port).

    The other programs it left (watchdog, [[programs]], a migration) are stopped first: two of
    them must not run at once. The web workers keep serving: the new supervisord binds the port
    beside them (SO_REUSEPORT, plugins/sockets.py), and each drains and exits once a new
    worker of its name is ready (runtime/worker.py Succession). A port bound without
    SO_REUSEPORT (workers of an older release) frees only when they exit: then they are
    stopped first, and clients are refused until the new workers listen."""
    names = Names(spec.app.name)
    web = [o for o in orphans if o.group == names.web]
    others = [o for o in orphans if o.group != names.web]
    progress(f"supervisord is not running (killed?); its workers keep serving until new ones are ready: "
             f"{control.describe_orphans(web) or 'none'}")
    if others:
        progress(f"stopping the other processes it left running: {control.describe_orphans(others)}")
        control.stop_orphans(others, spec.server.graceful_timeout + 10)
    progress(f"starting supervisord -c {conf_path}")
    try:
        control.start_daemon(conf_path, layout)
    except UserError as exc:
        if not web or "in use" not in str(exc):
            raise
        progress(f"the port is not shared by the old workers (an older release?); stopping them first: "
                 f"{control.describe_orphans(web)}")
        control.stop_orphans(web, spec.server.graceful_timeout + 10)
        control.start_daemon(conf_path, layout)


def retire_orphans(spec: Spec, layout: Layout, progress: Progress) -> None:
    """After `up` is ready: wait for the old workers to drain on their own (each one's successor
    is ready), then stop whatever is left (a worker whose number no longer exists)."""
    orphans = control.find_orphans(layout)
    if not orphans:
        return
    grace = spec.server.graceful_timeout + 10
    deadline = time.monotonic() + grace
    while orphans and time.monotonic() < deadline:
        time.sleep(0.2)
        orphans = [o for o in orphans if control.pid_alive(o.pid)]
    if orphans:
        progress(f"stopping what the killed supervisord left running: {control.describe_orphans(orphans)}")
        control.stop_orphans(orphans, grace)


def log_sizes(layout: Layout) -> Dict[str, int]:
    """The size of each log file under run_dir now: where the next run's lines begin."""
    sizes: Dict[str, int] = {}
    try:
        entries = list(os.scandir(layout.log_dir))
    except OSError:
        return sizes
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[entry.path] = st.st_size
    return sizes


def apply_update(proxy: Any, progress: Progress, only: Optional[Set[str]] = None) -> List[str]:
    """What `supervisorctl update` does: reread, then remove/replace/add the changed groups;
    with ``only``, just those groups (a shared supervisord: other apps' changes are theirs).
    Returns the groups it (re)added."""
    try:
        added, changed, removed = proxy.supervisor.reloadConfig()[0]
    except xmlrpc.client.Fault as exc:
        # On a shared supervisord the file at fault may be another app's fragment.
        raise UserError(f"supervisord cannot reread its conf, so nothing was applied: {exc.faultString}; "
                        "fix that file (`supervisorctl reread` shows the same), then run `supervisor-fastapi up` "
                        "again") from None
    if only is not None:
        others = sorted(set(added + changed + removed) - only)
        if others:
            progress(f"left as they are (not this app's): {', '.join(others)}")
        added, changed, removed = ([g for g in names if g in only] for names in (added, changed, removed))
    for group in removed + changed:
        proxy.supervisor.stopProcessGroup(group, True)
        proxy.supervisor.removeProcessGroup(group)
    for group in changed + added:
        proxy.supervisor.addProcessGroup(group)
    for verb, names in (("added", added), ("changed", changed), ("removed", removed)):
        if names:
            progress(f"{verb}: {', '.join(sorted(names))}")
    return list(changed) + list(added)


def resume(proxy: Any, spec: Spec, progress: Progress) -> None:
    """`up` on a running supervisord: the operator may have fixed what failed. Clear the
    controller's crash-loop holds, start every web worker that is not running (FATAL,
    EXITED, STOPPED) and run the migration again, which gates them until it exits 0."""
    names = Names(spec.app.name)
    try:
        released = getattr(proxy, names.rpc_namespace).resume()
    except xmlrpc.client.Fault:
        released = []  # no plugin in this supervisord: nothing holds them
    if released:
        progress(f"cleared crash-loop holds: {', '.join(released)}")
    if spec.migrate:
        start_process(proxy, names.migrate)
    for info in proxy.supervisor.getAllProcessInfo():
        if info["group"] == names.web and info["statename"] in ("FATAL", "EXITED", "STOPPED"):
            try:
                start_process(proxy, f"{info['group']}:{info['name']}")
            except xmlrpc.client.Fault as exc:
                # The gate refused (the migration runs again): it starts them when it exits 0.
                if "SPAWN_ERROR" not in exc.faultString:
                    raise


def wait_ready(spec: Spec, proxy: Any, layout: Layout, progress: Progress, timeout: float,
               since: Optional[Dict[str, int]] = None) -> List[str]:
    """Poll until every web worker is ready; on a failure raise with the failing log's tail,
    from the sizes in ``since`` on (this run's lines only)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        held = control_state(proxy, spec.app.name)  # first: a hold it lists is in the infos too
        infos = proxy.supervisor.getAllProcessInfo()
        # Only the files of processes supervisord names: state_dir is the app user's.
        states = read_worker_states(layout.state_dir, [str(i.get("name")) for i in infos])
        r = control.readiness(spec, infos, states, held)
        if r.failed:
            name = r.failed[0]
            info = next(i for i in infos if i["name"] == name)
            full = f"{info['group']}:{info['name']}"
            tail = control.log_tail(proxy, full, (since or {}).get(str(info.get("stdout_logfile")), 0),
                                    app=spec.app.name)
            raise DeployError(f"{full} failed: {r.reasons[name]}\n--- last lines of its log ---\n{tail.rstrip()}\n"
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
            raise DeployError(f"timed out after {timeout:g} s: {line}; still waiting for {', '.join(waiting)}; "
                              + (STILL_RUNNING if not spec.supervisord.hosting().shared else
                                 "its programs stay in that supervisord; `supervisor-fastapi down` removes them"))
        time.sleep(0.1)


def down(spec: Spec, progress: Progress = lambda message: None) -> bool:
    """Stop supervisord and everything it runs, or what a killed supervisord left running;
    False if there was nothing to stop. With ``supervisord.serverurl``: this app's groups there (host.down)."""
    if spec.supervisord.hosting().shared:
        from . import host

        return host.down(spec, progress)
    layout = Layout(spec.run_dir)
    if not os.path.isdir(layout.run_dir):
        return _down(spec, layout, progress)
    with operation_lock(layout, "down"):
        return _down(spec, layout, progress)


def _down(spec: Spec, layout: Layout, progress: Progress) -> bool:
    if control.stop_daemon(layout, timeout=spec.server.graceful_timeout + 60):
        return True
    orphans = control.find_orphans(layout)
    if not orphans:
        return False
    progress(f"supervisord is not running; stopping what it left running: {control.describe_orphans(orphans)}")
    control.stop_orphans(orphans, spec.server.graceful_timeout + 10)
    left = [o for o in orphans if control.pid_alive(o.pid)]
    if left:
        raise UserError(f"could not stop {control.describe_orphans(left)}")
    return True


def url_of(spec: Spec) -> Optional[str]:
    b = spec.server.bind
    if b.kind == "unix":
        return f"unix:{b.path}"
    host = "127.0.0.1" if b.host == "0.0.0.0" else b.host
    return f"http://{host}:{b.port}/"
