"""Pre-flight checks for `supervisor-fastapi check`: each returns a Result, none exits."""

import errno
import os
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional

from ..layout import Layout
from ..spec import Bind, Memory, Spec, format_size


@dataclass(frozen=True)
class Result:
    ok: bool
    what: str
    detail: str = ""


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


def bind_problem(bind: Bind) -> Optional[str]:
    """Why supervisord could not bind ``bind`` now (it would exit at start), or None."""
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
            return f"{bind.host}:{bind.port} is already in use; stop what listens there or change server.bind"
        if exc.errno == errno.EACCES:
            return f"no permission to bind port {bind.port}; ports below 1024 need root"
        return f"cannot bind {bind.host}:{bind.port}: {exc.strerror}"
    finally:
        probe.close()


def python_problem(python: str, directory: str, asgi: str) -> Optional[str]:
    """Whether app.python can run the worker (supervisor_fastapi and uvicorn importable)."""
    code = "import supervisor_fastapi.runtime.worker, uvicorn"
    try:
        proc = subprocess.run([python, "-c", code], cwd=directory if os.path.isdir(directory) else None,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    except FileNotFoundError:
        return f"app.python {python!r} does not exist"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"app.python {python!r} cannot run: {exc}"
    if proc.returncode != 0:
        last = proc.stdout.strip().splitlines()[-1:] or ["no output"]
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


def trust_checks(spec: Spec, euid: int) -> List[Result]:
    """Who runs as whom, and whether secrets and run_dir are root's alone (as root only)."""
    if euid != 0:
        return []
    out = [Result(True, "supervisord.run_dir", f"{spec.run_dir}: only root can write it")]
    if spec.app.user:
        out.append(Result(True, f"app.user {spec.app.user} runs the web workers, the migration and [[programs]]",
                          "the event listener and the watchdog run as root: they hold the alert credentials and "
                          "talk to supervisord's control socket, neither of which app.user may reach "
                          "(see docs/security.md)"))
    for i, a in enumerate(spec.alerts):
        key = f"alerts[{i}] ({a.name})"
        if a.type == "command":
            user = a.get("user") or (None if a.get("run_as_root") else spec.app.user)
            if user:
                out.append(Result(True, f"{key}: the command runs as {user}"))
            elif a.get("run_as_root"):
                out.append(Result(True, f"{key}: the command runs as root", "run_as_root = true"))
            else:
                out.append(Result(False, f"{key}: the command would run as root",
                                  "set user = \"...\" on the alert (or app.user), or run_as_root = true"))
        if a.type == "email" and a.get("password_file"):
            problem = secret_file_problem(a.get("password_file"))
            out.append(Result(problem is None, f"{key}: password_file is root's alone",
                              problem or a.get("password_file")))
    return out


def run_checks(spec: Spec, conf_text: str, running: bool, ram: int) -> List[Result]:
    """Every check for ``spec``; the CLI prints them."""
    results = [Result(True, "spec", spec.source)]
    err = load_with_supervisor(conf_text)
    results.append(Result(err is None, "supervisord accepts the generated conf", err or ""))
    if running:
        results.append(Result(True, f"bind {spec.server.bind.url}", "held by this deployment's running supervisord"))
    else:
        problem = bind_problem(spec.server.bind)
        results.append(Result(problem is None, f"bind {spec.server.bind.url} is free", problem or ""))
    problem = capacity_problem(spec.server.workers, spec.memory, ram)
    if spec.memory.per_worker is None:
        detail = "memory.per_worker not set: capacity not checked"
    else:
        detail = problem or (f"{spec.server.workers} x {format_size(spec.memory.per_worker)} within "
                             f"{format_size(spec.memory.budget.of(ram))} budget")
    results.append(Result(problem is None, "memory capacity", detail))
    if not os.path.isdir(spec.app.directory):
        results.append(Result(False, "app.directory", f"{spec.app.directory} does not exist"))
    problem = python_problem(spec.app.python, spec.app.directory, spec.app.asgi)
    results.append(Result(problem is None, "app.python runs the worker", problem or spec.app.python))
    results += trust_checks(spec, os.geteuid())
    run_parent = Layout(spec.run_dir).run_dir
    return results + ([] if os.access(os.path.dirname(run_parent) or "/", os.W_OK) or os.path.isdir(run_parent)
                      else [Result(False, "supervisord.run_dir", f"cannot create {run_parent}")])


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
