"""Pre-flight checks for `supervisor-fastapi check`: each returns a Result, none exits."""

import dataclasses
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import did_you_mean
from ..layout import Layout
from ..spec import App, Bind, Memory, Spec, format_size, parse_bind
from ..spec.model import Hosting

# Importing the app may open connections or read big files; long enough for that, short enough
# that a hang at import (a database that does not answer) is reported instead of waited out.
IMPORT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    ok: bool
    what: str
    detail: str = ""
    warn: bool = False  # ok, but worth changing: `check` prints it as "warn" and still exits 0


def supervisor_options(conf_text: str) -> Any:
    """Conf text loaded by supervisor's own parser (``ServerOptions.process_config``).

    Raises ValueError with supervisor's message when it does not load.
    """
    from supervisor.options import ServerOptions

    fd, path = tempfile.mkstemp(suffix=".conf", prefix="supervisor-fastapi-check-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(conf_text)
        options = ServerOptions()
        options.configfile = path
        options.process_config(do_usage=False)
        return options
    finally:
        os.unlink(path)


def load_with_supervisor(conf_text: str) -> Optional[str]:
    """Load conf text with supervisor's own parser; the error message, or None if it loads."""
    try:
        supervisor_options(conf_text)
    except ValueError as exc:
        return str(exc)
    return None

def capacity_problem(workers: int, memory: Memory, total_ram: int) -> Optional[str]:
    """'4 workers x 1 GB = 4 GB > 3 GB budget ...' when the workers do not fit, else None."""
    if memory.per_worker is None:
        return None
    need = workers * memory.per_worker
    budget = memory.budget.of(total_ram)
    if need <= budget:
        return None
    fit = budget // memory.per_worker
    fix = (f"lower server.workers to {fit}" if fit >= 1 else "lower memory.per_worker") + \
        " or raise memory.budget"
    share = f"{memory.budget.fraction * 100:g}% of " if memory.budget.fraction is not None else "host has "
    return (f"{workers} workers x {format_size(memory.per_worker)} = {format_size(need)} > "
            f"{format_size(budget)} budget ({share}{format_size(total_ram)} RAM); {fix}")


def total_ram(meminfo: str = "/proc/meminfo") -> int:
    """This host's RAM in bytes."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def bind_problem(bind: Bind, key: str = "server.bind") -> Optional[str]:
    """Why ``bind`` could not be bound now (supervisord, or the program behind ``key``, would
    exit at start), or None."""
    if bind.kind == "unix":
        if not os.path.exists(bind.path):
            parent = os.path.dirname(bind.path)
            return None if os.path.isdir(parent) else f"folder {parent} does not exist"
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(bind.path)
            return f"{bind.path} is in use: something accepts connections on it"
        except OSError:
            return None  # a stale file: supervisord unlinks it before binding
        finally:
            probe.close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as supervisord does
    try:
        probe.bind((bind.host, bind.port))
        return None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{bind.host}:{bind.port} is already in use; stop what listens there or change {key}"
        if exc.errno == errno.EACCES:
            return f"no permission to bind port {bind.port}; ports below 1024 need root"
        return f"cannot bind {bind.host}:{bind.port}: {exc.strerror}"
    finally:
        probe.close()


class Demoted:
    """How to run a child as app.user (root only): the preexec step and who it is, or as the caller."""

    def __init__(self, user: Optional[str]) -> None:
        self.user = user if user and os.geteuid() == 0 else None
        self.preexec: Optional[Callable[[], None]] = None
        if self.user:
            import pwd

            entry = pwd.getpwnam(self.user)  # an unknown user fails the conf check first
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name

            def preexec() -> None:  # what supervisord does before exec: groups, gid, then uid
                os.initgroups(name, gid)
                os.setgid(gid)
                os.setuid(uid)

            self.preexec = preexec

    @property
    def who(self) -> str:
        return f"app.user {self.user!r}" if self.user else "this user"


def run_python(python: str, args: Sequence[str], demoted: Demoted, env: Dict[str, str],
               timeout: float) -> Tuple[Optional[int], str]:
    """Run ``python args`` as app.user in its own session; (exit status or None on timeout, output).

    Raises OSError when app.python cannot be executed at all.
    """
    proc = subprocess.Popen([python, *args], cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=demoted.preexec, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the app may have started children of its own
        out, _ = proc.communicate()
        return None, out.decode(errors="replace")


def exec_problem(python: str, exc: BaseException, demoted: Demoted) -> str:
    """One line for an app.python that cannot even be started."""
    if isinstance(exc, FileNotFoundError):
        return f"app.python {python!r} does not exist"
    if isinstance(exc, PermissionError) and demoted.user:
        return (f"app.python: {demoted.who} cannot execute {python} (permission denied); use an environment "
                f"{demoted.user} can read, e.g. python3 -m venv /opt/<app>-venv, or give it access to the folders "
                f"on the way")
    return f"app.python {python!r} cannot run: {exc}"


def directory_problem(directory: str, user: Optional[str] = None) -> Optional[str]:
    """Whether app.user can enter and list app.directory (supervisord chdirs there as app.user)."""
    demoted = Demoted(user)
    if not demoted.user:
        return None if os.access(directory, os.R_OK | os.X_OK) else f"this user cannot enter or list {directory}"
    try:  # as the user, with the shell rather than app.python: this must not depend on that check
        rc, out = run_python("/bin/sh", ["-c", 'cd "$1" && ls -a . >/dev/null', "sh", directory], demoted,
                             {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot check it as {demoted.who}: {exc}"
    if rc == 0:
        return None
    return f"{demoted.who} cannot enter or list {directory}; give {demoted.user} read and search (r-x) access to it"


def app_environ(spec: Spec, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment a check runs the app's code in, as app.user: what a worker gets (this
    shell's environment standing in for supervisord's, plus the worker's environment=: the
    listener's variables blanked, the rendered PATH, app.env)."""
    from ..generate.conf import program_environment

    env = dict(os.environ if environ is None else environ)
    env.update(program_environment(spec))
    return env


def python_problem(python: str, directory: str, asgi: str, user: Optional[str] = None,
                   env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Whether app.python, run as app.user, can run the worker (supervisor_fastapi and uvicorn importable)."""
    code = "import supervisor_fastapi.runtime.worker, uvicorn"
    demoted = Demoted(user)
    try:
        rc, out = run_python(python, ["-c", code], demoted, dict(os.environ) if env is None else env, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return exec_problem(python, exc, demoted)
    if rc is None:
        return f"app.python {python!r} did not import the worker within 60 s"
    if rc != 0:
        last = out.strip().splitlines()[-1:] or ["no output"]
        return (f"app.python {python!r} cannot import the worker ({last[0]}); "
                f"install supervisor-fastapi into the app's environment")
    return None


def run_dir_problem(path: str, uid: int = 0) -> Optional[str]:
    """Why someone other than ``uid`` (root) could replace or write ``path`` or a folder above it,
    or None. A folder is safe when ``uid`` owns it and group and others cannot write it; a
    sticky folder (like /tmp) is safe above it, since nobody else may rename what is in it."""
    real = os.path.realpath(path)
    chain = []
    cur = real
    while True:
        chain.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    for i, folder in enumerate(chain):
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            continue  # created below by make_dirs, as root, 0711
        except OSError as exc:
            return f"cannot inspect {folder}: {exc.strerror}"
        own = path if i == 0 else folder
        if i > 0 and st.st_mode & stat.S_ISVTX:
            continue
        if i == 0 and st.st_mode & stat.S_ISVTX and st.st_mode & 0o002:
            # /tmp itself: `chmod go-w` would be the wrong advice.
            return (f"{own} is a folder every user can write (mode {stat.S_IMODE(st.st_mode):04o}), who could "
                    f"plant the files root reads there; choose a supervisord.run_dir of its own, like /run/<app> "
                    f"or /var/lib/<app>/run")
        if st.st_uid != uid:
            owner = _user_name(st.st_uid)
            return (f"{own} belongs to {owner}, who could swap the files root reads there; "
                    + (f"run `chown root {folder}`" if i == 0 else
                       "put supervisord.run_dir under a folder only root can write, like /run/<app> or /var/lib/<app>"))
        if st.st_mode & 0o022:
            return (f"{folder} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):04o}), who could "
                    f"swap the files root reads there; run `chmod go-w {folder}`"
                    + ("" if i == 0 else " or choose a supervisord.run_dir under a folder only root can write"))
    return None


def run_files_problem(layout: Layout, hosting: Hosting) -> Optional[str]:
    """A folder or file under run_dir that is a symlink or the wrong kind: make_dirs opens them
    without following a link and refuses (or would give a folder away), so `check` says so too."""
    # A shared supervisord logs where its own conf says: run_dir has no supervisord.log then.
    paths = layout.dirs() + ([] if hosting.shared else [layout.logfile])
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot inspect {path}: {exc.strerror}"
        is_dir = path in layout.dirs()
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISDIR(st.st_mode) != is_dir):
            return (f"{path} is a symlink or not a {'folder' if is_dir else 'regular file'}; remove it "
                    f"(`rm {path}`) and run again; supervisor-fastapi creates it")
    return None


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def secret_file_problem(path: str) -> Optional[str]:
    """Why a password_file is not root's alone (the listener reads it as root), or None."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file (a symlink is not followed)"
    if st.st_uid != 0 or st.st_mode & 0o077:
        return (f"{path} is readable by others than root (owner {_user_name(st.st_uid)}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chown root {path} && chmod 600 {path}`")
    return None


def command_user(spec: Spec, alert: Any) -> Optional[str]:
    """Whom a command alert runs as: its user, else app.user; None (the listener's own user) only
    with run_as_root."""
    return alert.get("user") or (None if alert.get("run_as_root") else spec.app.user)


def trust_refusals(spec: Spec, euid: int) -> List[Result]:
    """What `render` and `up` refuse before they write anything, and `check` fails on: one
    list, so the three never disagree. As root: a run_dir someone else could write, a command
    alert that would run as root unasked, a password_file others can read; as anyone: a
    symlink where a run_dir folder or supervisord's log goes."""
    out: List[Result] = []
    layout = Layout(spec.run_dir)
    problem = (run_dir_problem(layout.run_dir) if euid == 0 else None) or \
        run_files_problem(layout, spec.supervisord.hosting())
    if problem:
        out.append(Result(False, "supervisord.run_dir", problem))
    if euid != 0:
        return out
    for i, a in enumerate(spec.alerts):
        key = f"alerts[{i}] ({a.name})"
        if a.type == "command" and not command_user(spec, a) and not a.get("run_as_root"):
            out.append(Result(False, f"{key}: the command would run as root",
                              "set user = \"...\" on the alert (or app.user), or run_as_root = true"))
        path = a.get("password_file") if a.type == "email" else None
        # A missing file is not a trust problem (a systemd credential exists only while the
        # service runs); `check` reports it on its own.
        if path and os.path.lexists(path):
            problem = secret_file_problem(path)
            if problem:
                out.append(Result(False, f"{key}: password_file is root's alone", problem))
    return out


def spec_secret_keys(spec: Spec) -> List[str]:
    """The keys of ``spec`` that hold secrets: a webhook URL with a token (its path, query or
    ``user:password@``), webhook headers, environment values (the conf is 0600 for them)."""
    import urllib.parse

    keys = []
    for i, a in enumerate(spec.alerts):
        if a.type != "webhook":
            continue
        parts = urllib.parse.urlsplit(a.get("url"))
        if "@" in parts.netloc or parts.path.strip("/") or parts.query:
            keys.append(f"alerts[{i}].url")
        keys += [f"alerts[{i}].headers.{name}" for name, _ in a.get("headers") or ()]
    keys += [f"app.env.{name}" for name, _ in spec.app.env]
    keys += [f"migrate.env.{name}" for name, _ in (spec.migrate.env if spec.migrate else ())]
    keys += [f"programs[{i}].env.{name}" for i, p in enumerate(spec.programs) for name, _ in p.env]
    return keys


def trust_warnings(spec: Spec, euid: int) -> List[Result]:
    """What `check` warns about and `up` allows: the app running as root, a spec file holding
    secrets that others can read."""
    out = []
    if spec.app.user:
        import pwd

        try:
            root = pwd.getpwnam(spec.app.user).pw_uid == 0
        except KeyError:
            root = False  # app_results names the unknown user
        if root:
            out.append(Result(True, f"app.user = {spec.app.user!r} is root", "the web workers, the migration and "
                              "[[programs]] run as root: the app can read every secret and change anything on this "
                              "host; set app.user to an unprivileged user (like www-data)", warn=True))
    elif euid == 0:
        out.append(Result(True, "app.user is not set and supervisord runs as root", "the web workers, the migration "
                          "and [[programs]] run as root; set app.user to an unprivileged user (like www-data)",
                          warn=True))
    try:
        st = os.stat(spec.source)
    except OSError:
        return out
    keys = spec_secret_keys(spec)
    if keys and st.st_mode & 0o044:
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        out.append(Result(True, f"spec file is readable by {'others' if st.st_mode & 0o004 else 'its group'}",
                          f"{spec.source} (mode {stat.S_IMODE(st.st_mode):04o}) holds secrets ({shown}); run "
                          f"`chmod 600 {spec.source}`", warn=True))
    return out


def trust_checks(spec: Spec, euid: int) -> List[Result]:
    """Who runs as whom, and whether secrets and run_dir are root's alone: the refusals of
    `render`/`up` as FAIL lines, what holds as ok lines (as root only), and the warnings."""
    refused = trust_refusals(spec, euid)
    if euid != 0:
        return refused + trust_warnings(spec, euid)
    failed = {r.what.split(":")[0] for r in refused}
    out = list(refused)
    if "supervisord.run_dir" not in failed:
        out.insert(0, Result(True, "supervisord.run_dir", f"{spec.run_dir}: only root can write it"))
    warnings = trust_warnings(spec, euid)
    out += warnings
    if spec.app.user and not any(w.what.startswith("app.user") for w in warnings):
        out.append(Result(True, f"app.user {spec.app.user} runs the web workers, the migration and [[programs]]",
                          "the event listener and the watchdog run as root: they hold the alert credentials and "
                          "talk to supervisord's control socket, neither of which app.user may reach "
                          "(see docs/security.md)"))
    for i, a in enumerate(spec.alerts):
        key = f"alerts[{i}] ({a.name})"
        if key in failed:
            continue
        if a.type == "command":
            user = command_user(spec, a)
            out.append(Result(True, f"{key}: the command runs as {user}") if user else
                       Result(True, f"{key}: the command runs as root", "run_as_root = true"))
        if a.type == "email" and a.get("password_file"):
            problem = secret_file_problem(a.get("password_file"))
            out.append(Result(problem is None, f"{key}: password_file is root's alone",
                              problem or a.get("password_file")))
    return out


# Runs in app.python (any supported Python, standard library only), in app.directory, as
# app.user: what the worker does before it serves (sys.path[0] = app.directory, import,
# getattr). The verdict is the last line, after whatever the app printed while importing.
PROBE_MARK = "supervisor-fastapi-probe:"
PROBE = r"""
import importlib, json, os, sys, traceback
def say(kind, **detail):
    sys.stdout.flush()
    detail["kind"] = kind
    os.write(1, ("\n" + MARK + json.dumps(detail) + "\n").encode())
    os._exit(0)
directory, target = sys.argv[1], sys.argv[2]
try:
    os.chdir(directory)
    os.listdir(".")
except OSError as exc:
    say("directory", error=exc.strerror or str(exc))
sys.path.insert(0, os.getcwd())
module, _, attrs = target.partition(":")
def where(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename).startswith(os.getcwd() + os.sep)]
    f = (mine or frames or [None])[-1]
    return "" if f is None else "%s, line %s" % (os.path.relpath(f.filename), f.lineno)
try:
    obj = importlib.import_module(module)
except BaseException as exc:
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if isinstance(exc, ModuleNotFoundError) and name and (module == name or module.startswith(name + ".")):
        say("module", name=name)
    say("error", error="%s: %s" % (type(exc).__name__, exc), where=where(exc))
for part in attrs.split("."):
    try:
        obj = getattr(obj, part)
    except BaseException:
        say("attribute", owner=getattr(obj, "__name__", module), name=part,
            choices=[n for n in dir(obj) if not n.startswith("_")])
say("ok")
""".replace("MARK", repr(PROBE_MARK))


def probe_verdict(output: str) -> Optional[Dict[str, Any]]:
    """The probe's verdict from its output (the last marked line), or None if it printed none."""
    for line in reversed(output.splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                verdict = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
            return verdict if isinstance(verdict, dict) else None
    return None


def import_message(app: App, verdict: Optional[Dict[str, Any]], output: str, who: str) -> Optional[str]:
    """One line for what the probe found (None when the app imports), naming the key and the fix."""
    target = f"app.asgi = {app.asgi!r}"
    if verdict is None:
        last = output.strip().splitlines()[-1:] or ["no output"]
        return f"{target}: importing it stopped the interpreter ({last[0]})"
    kind = verdict.get("kind")
    if kind == "ok":
        return None
    if kind == "directory":
        return f"app.directory: {who} cannot read {app.directory} ({verdict.get('error')})"
    if kind == "module":
        return (f"{target}: no module named {verdict.get('name')!r} in {app.directory} (app.directory) or on "
                f"app.python's path; fix app.asgi or app.directory")
    if kind == "attribute":
        name = str(verdict.get("name"))
        hint = did_you_mean(name, [str(c) for c in verdict.get("choices") or []])
        return (f"{target}: module {verdict.get('owner')!r} has no attribute {name!r}; "
                + (hint or "fix the part after ':'"))
    where = f" ({verdict['where']})" if verdict.get("where") else ""
    return (f"{target}: importing it fails: {verdict.get('error')}{where}; fix the app or install what it "
            f"needs into app.python's environment")


def import_problem(app: App, timeout: float = IMPORT_TIMEOUT, env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Import app.asgi as the worker would (app.python, app.user, app.directory, ``env``: by
    default this shell's and app.env); the problem, or None."""
    demoted = Demoted(app.user)
    env = dict(env) if env is not None else {**os.environ, **dict(app.env)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a check leaves nothing behind, not even __pycache__
    try:
        rc, out = run_python(app.python, ["-c", PROBE, app.directory, app.asgi], demoted, env, timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return exec_problem(app.python, exc, demoted)
    if rc is None:
        return (f"app.asgi = {app.asgi!r}: importing it did not finish within {timeout:g} s (does it wait for "
                f"something at import?)")
    return import_message(app, probe_verdict(out), out, demoted.who)


def app_results(spec: Spec) -> List[Result]:
    """app.directory, app.python and the app's import, as app.user; each later check needs the one before.

    In release mode the app is the current release (the ``current`` symlink)."""
    app = spec.app
    if spec.release:
        if not os.path.isdir(spec.workdir):
            return [Result(False, "release", f"{spec.workdir} does not exist: no release is deployed yet; run "
                           "`supervisor-fastapi deploy SRC` (a folder or a .tar.gz of the app)")]
        app = dataclasses.replace(app, directory=spec.workdir)
    if not os.path.isdir(app.directory):
        return [Result(False, "app.directory", f"{app.directory} does not exist")]
    if app.user and os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(app.user)
        except KeyError:
            return [Result(False, "app.user", f"no user {app.user!r} on this host; create it or fix app.user")]
    problem = directory_problem(app.directory, app.user)
    if problem:
        return [Result(False, "app.directory", problem)]
    # The app's code runs as app.user here: it must not see the alert credentials an operator's
    # shell may hold (SMTP_PASSWORD exported for alert-test), as the workers do not.
    env = app_environ(spec)
    problem = python_problem(app.python, app.directory, app.asgi, app.user, env)
    results = [Result(problem is None, "app.python runs the worker", problem or app.python)]
    if problem is None:
        problem = import_problem(app, env=env)
        who = (f" as {app.user}" if os.geteuid() == 0 else " as this user (not root: supervisord cannot "
               "switch to app.user either)") if app.user else ""
        results.append(Result(problem is None, "app.asgi imports", problem or f"{app.asgi} in {app.directory}{who}"))
    return results


def command_problem(key: str, command: str, path: str) -> Tuple[bool, str]:
    """Whether ``command``'s program resolves on ``path`` (the PATH its program is rendered with).

    supervisord looks a bare command up in the program's environment= PATH before it forks;
    that PATH is rendered (generate.conf.rendered_path), so a command found only through the
    shell that runs `check` (an activated venv, pyenv shims) would not be found under systemd."""
    try:
        argv0 = shlex.split(command)[0]
    except (ValueError, IndexError):
        return False, f"{key} = {command!r} cannot be split into arguments"
    if "/" in argv0:
        if os.path.isabs(argv0) and not os.access(argv0, os.X_OK):
            return False, f"{key} = {command!r}: {argv0} is not an executable file"
        return True, argv0
    found = shutil.which(argv0, path=path)
    if found:
        return True, found
    here = shutil.which(argv0)
    where = f" (this shell finds {here}, through a PATH supervisord does not use)" if here else ""
    return False, (f"{key} = {command!r}: {argv0!r} is not on the PATH its program gets, {path}, whoever "
                   f"starts supervisord (systemd too){where}; write its full path, or install it beside app.python")


def command_results(spec: Spec) -> List[Result]:
    """The migration's and each [[programs]] command's program, found on the PATH it will run with."""
    from ..generate.conf import program_environment

    commands = [("migrate.command", spec.migrate.command, spec.migrate.env)] if spec.migrate else []
    commands += [(f"programs[{i}].command", p.command, p.env) for i, p in enumerate(spec.programs)]
    results = []
    for key, command, env in commands:
        ok, detail = command_problem(key, command, program_environment(spec, env)["PATH"])
        results.append(Result(ok, f"{key} resolves", detail))
    return results


def preflight_problem(spec: Spec) -> Optional[str]:
    """What `up` checks before it starts anything: the first failing app check, as one line."""
    for r in app_results(spec) + command_results(spec):
        if not r.ok:
            named = re.match(r"[a-z_]+(\[\d+\])?\.\w+( =|:)", r.detail)  # the detail names its key, or gets the check's
            detail = r.detail if named else f"{r.what}: {r.detail}"
            return f"{spec.source}: {detail}; `supervisor-fastapi check` runs every check"
    return None


def conf_problem(spec: Spec, command: str = "check") -> Optional[str]:
    """supervisord's parser on the rendered conf, its run_dir moved to a scratch folder.

    The parser wants every log folder to exist; creating them in run_dir made `check` leave
    run/logs and run/workers behind. Paths in run_dir are checked on their own (run_checks).
    """
    from ..generate.conf import render

    with tempfile.TemporaryDirectory(prefix="sf-check-") as scratch:
        moved = dataclasses.replace(spec, supervisord=dataclasses.replace(spec.supervisord,
                                                                          run_dir=os.path.join(scratch, "run")))
        for d in Layout(moved.run_dir).dirs():
            os.makedirs(d, exist_ok=True)
        # supervisor's parser loads whole confs only: a fragment is checked inside daemon
        # (and plugin) sections of its own, as it always was.
        whole = dataclasses.replace(moved.supervisord.hosting(), fragment=False, plugins=True)
        return load_with_supervisor(render(moved, command, whole))


def run_checks(spec: Spec, running: bool, ram: int, conf_text: Optional[str] = None) -> List[Result]:
    """Every check for ``spec``; the CLI prints them. ``conf_text``: load this instead of rendering."""
    results = [Result(True, "spec", spec.source)]
    err = conf_problem(spec) if conf_text is None else load_with_supervisor(conf_text)
    results.append(Result(err is None, "supervisord accepts the generated conf", err or ""))
    if running:
        results.append(Result(True, f"bind {spec.server.bind.url}", "held by this deployment's own workers"))
    else:
        problem = bind_problem(spec.server.bind)
        results.append(Result(problem is None, f"bind {spec.server.bind.url} is free", problem or ""))
        if spec.metrics is not None:  # the exporter exits at start on a bind it cannot take
            problem = bind_problem(parse_bind(spec.metrics.bind, spec.base_dir), "[metrics] bind")
            results.append(Result(problem is None, f"metrics bind {spec.metrics.bind} is free", problem or ""))
    problem = capacity_problem(spec.server.workers, spec.memory, ram)
    if spec.memory.per_worker is None:
        detail = "memory.per_worker not set: capacity not checked"
    else:
        detail = problem or (f"{spec.server.workers} x {format_size(spec.memory.per_worker)} within "
                             f"{format_size(spec.memory.budget.of(ram))} budget")
    results.append(Result(problem is None, "memory capacity", detail))
    results.append(release_mode_result(spec))
    results += app_results(spec)
    results += command_results(spec)
    results += trust_checks(spec, os.geteuid())
    problem = run_dir_creation_problem(Layout(spec.run_dir).run_dir)
    return results + ([Result(False, "supervisord.run_dir", problem)] if problem else [])


# What in-place mode cannot do: `check` says it (docs/releases.md says more).
IN_PLACE_LIMITS = ("off: the code in app.directory is changed in place and is the only copy, so a failed migration "
                   "cannot keep full capacity (a worker that exits meanwhile would start the new code, so it is held "
                   "until a migration succeeds) and there is no rollback; add a [release] table for immutable "
                   "releases (docs/releases.md)")


def release_mode_result(spec: Spec) -> Result:
    if spec.release is None:
        return Result(True, "release mode", IN_PLACE_LIMITS)
    from ..layout import Releases

    current = Releases(spec.app.directory).current_id()
    return Result(True, "release mode", f"on: current release {current or '(none yet)'}, keep {spec.release.keep}"
                  + (f", shared {', '.join(spec.release.shared)}" if spec.release.shared else ""))


def plugin_checks(hosting: Hosting, why: str = "fragment without --with-plugins") -> List[Result]:
    """What the deployment loses without the plugin (a fragment rendered without it, ``why``)."""
    from ..generate.conf import NO_PLUGIN_LOSSES

    if hosting.plugins:
        return [Result(True, "plugin", "the controller runs inside supervisord: gate, crash-loop holds, socket hold")]
    return [Result(True, "plugin", f"none ({why}): " + "; ".join(NO_PLUGIN_LOSSES))]


def run_dir_creation_problem(run_dir: str) -> Optional[str]:
    """Why run_dir could not be created (tried with a scratch folder in its nearest existing parent), or None."""
    if os.path.isdir(run_dir):
        return None if os.access(run_dir, os.W_OK) else f"{run_dir} is not writable"
    parent = os.path.dirname(os.path.abspath(run_dir))
    for _ in range(64):  # bounded: a path has fewer levels than this
        if os.path.exists(parent) or parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".sf-check-"))  # os.access says yes to root even in /proc
    except OSError as exc:
        return f"cannot create {run_dir} ({exc.strerror or exc})"
    return None


def kubernetes_checks(spec: Spec) -> List[Result]:
    """`check --target kubernetes`: the keys it needs, the manifests, the Secret, and the keys it ignores."""
    from ..errors import SpecError
    from ..generate import kubernetes

    results = [Result(True, "spec", spec.source)]
    if not spec.kubernetes.image:
        fix = 'is required here; add image = "registry.example.com/app:1.0" to [kubernetes]'
        return results + [Result(False, "kubernetes.image", fix)]
    results.append(Result(True, "kubernetes.image", spec.kubernetes.image))
    try:
        docs = kubernetes.manifests(spec)
    except SpecError as exc:
        return results + [Result(False, "manifests", str(exc))]
    results.append(Result(True, "manifests", ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in docs)))
    secrets = sorted(kubernetes.secret_env_names(spec))
    if secrets:
        results.append(Result(True, f"env from Secret {kubernetes.secret_name(spec)}", ", ".join(secrets)
                              + " (create it before applying; the values are not in the manifests)"))
    for keys, why in kubernetes.ignored_keys(spec):
        results.append(Result(True, f"ignored: {keys}", why))
    return results
