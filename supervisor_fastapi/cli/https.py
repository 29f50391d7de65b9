"""[https] at the CLI's edge: writing the proxy's files, and checking them with the proxy itself.

The texts come from the pure generators (generate/caddy.py, generate/nginx.py); here they
are written beside the spec, and `check` hands them to `caddy validate` / `nginx -t`.
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import UserError
from ..generate import caddy, nginx
from ..generate.conf import program_environment
from ..layout import Layout, Names
from ..spec import Spec
from ..spec.model import Hosting
from . import control
from .checks import Result
from .deploy import _own_dir, write_atomic

Echo = Callable[[str], None]
PROXY_DIR_MODE = 0o700  # Caddy's certificates and keys: supervisord's user's alone
VALIDATE_TIMEOUT = 60.0
# How long `up` waits for Caddy to be RUNNING (startsecs=1 after it bound its ports).
PROXY_TIMEOUT = 30.0
CADDY_INSTALL = ("install it: `apt-get install caddy` (Debian 12, Ubuntu 22.04 and later) or see "
                 "https://caddyserver.com/docs/install")


def proxy_files(spec: Spec, command: str, hosting: Optional[Hosting] = None) -> List[Tuple[str, str]]:
    """(path, text) of the proxy files this render writes beside the spec: the Caddyfile its own
    Caddy runs, or, for an OS Caddy (a shared supervisord or a fragment), a site snippet."""
    h = spec.https
    if h is None or h.proxy != "caddy":
        return []
    if caddy.supervised(spec, hosting):
        return [(caddy.caddyfile_path(spec), caddy.render(spec, command))]
    return [(caddy.snippet_path(spec), caddy.render_snippet(spec, command))]


def write_files(spec: Spec, command: str, hosting: Optional[Hosting] = None) -> List[str]:
    """Write the proxy's files (before the conf: supervisord must find the new file when it
    restarts Caddy) and create Caddy's folder under run_dir; the paths written."""
    written = []
    for path, text in proxy_files(spec, command, hosting):
        write_atomic(path, text, 0o644)  # no secrets: paths of the key files at most
        written.append(path)
    if caddy.supervised(spec, hosting):
        _own_dir(Layout(spec.run_dir).proxy_dir, PROXY_DIR_MODE)
    return written


def _scratch(spec: Spec, folder: str) -> Spec:
    """``spec`` with run_dir in a scratch folder: checking writes nothing into the real one."""
    return dataclasses.replace(spec, supervisord=dataclasses.replace(spec.supervisord,
                                                                     run_dir=os.path.join(folder, "run")))


def _run(argv: List[str], env: Optional[dict] = None) -> Tuple[Optional[int], str]:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env, timeout=VALIDATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"did not finish within {VALIDATE_TIMEOUT:g} s"
    except OSError as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout.decode(errors="replace")


def _last_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "emerg" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()


def caddy_problem(spec: Spec, caddy_bin: str, hosting: Optional[Hosting] = None) -> Optional[str]:
    """`caddy validate` on the Caddyfile (or the snippet, wrapped in a file of its own); None if valid.

    Its storage, HOME and XDG folders are a scratch folder: validating provisions the
    internal CA there, which must not land in run_dir or root's home."""
    with tempfile.TemporaryDirectory(prefix="sf-caddy-") as scratch:
        moved = _scratch(spec, scratch)
        path = os.path.join(scratch, "Caddyfile")
        if caddy.supervised(moved, hosting):
            text = caddy.render(moved, "check")
        else:
            text = "{\n\tadmin off\n\tskip_install_trust\n}\n\n" + caddy.render_snippet(moved, "check")
        with open(path, "w") as f:
            f.write(text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch,
               "XDG_CONFIG_HOME": os.path.join(scratch, "config"), "XDG_DATA_HOME": os.path.join(scratch, "data")}
        rc, out = _run([caddy_bin, "validate", "--config", path, "--adapter", "caddyfile"], env)
    return None if rc == 0 else _last_error(out)


def nginx_problem(spec: Spec, nginx_bin: str) -> Optional[str]:
    """`nginx -t` on the site file inside a minimal nginx.conf of its own; None if it passes."""
    with tempfile.TemporaryDirectory(prefix="sf-nginx-") as scratch:
        site = os.path.join(scratch, "site.conf")
        with open(site, "w") as f:
            f.write(nginx.render(spec, "check"))
        main = os.path.join(scratch, "nginx.conf")
        with open(main, "w") as f:
            f.write(nginx.wrapper(site, scratch))
        rc, out = _run([nginx_bin, "-t", "-q", "-e", "stderr", "-p", scratch, "-c", main])
    return None if rc == 0 else _last_error(out)


def forwarding_problem(spec: Spec) -> Optional[str]:
    """Why the workers would ignore the proxy's X-Forwarded-* headers (the app then sees http
    and no client, and FastAPI's redirects point at http://), or None. [https] sets both keys;
    this is for a spec that sets them itself (the starter spec does)."""
    uv = dict(spec.server.uvicorn)
    if uv.get("proxy_headers") is False:
        return ("server.uvicorn.proxy_headers = false: the app sees http and the proxy's address, never the "
                "client's; remove the key")
    allow = list(uv.get("forwarded_allow_ips") or ())
    if "*" in allow:
        return None
    if spec.server.bind.kind == "unix":
        return (f"server.uvicorn.forwarded_allow_ips = {allow}: a unix-socket peer has no address, so uvicorn "
                "ignores the proxy's headers and the app sees http and no client; remove the key ([https] sets "
                '"*"; the socket\'s mode keeps others out) or set it to "*"')
    if "127.0.0.1" not in allow:
        return (f"server.uvicorn.forwarded_allow_ips = {allow} leaves out 127.0.0.1, where the proxy connects "
                "from: the app sees http and the proxy's address; remove the key or add \"127.0.0.1\"")
    return None


def check_results(spec: Spec, hosting: Optional[Hosting] = None) -> List[Result]:
    """The proxy's own verdict on its config (or where to get the proxy), and whether the
    workers trust its headers."""
    h = spec.https
    if h is None:
        return []
    problem = forwarding_problem(spec)
    return [Result(problem is None, "the app sees https and the client's address", problem or
                   "the workers trust the proxy's X-Forwarded-For/-Proto")] + _proxy_results(spec, hosting)


def _proxy_results(spec: Spec, hosting: Optional[Hosting]) -> List[Result]:
    h = spec.https
    assert h is not None
    if h.proxy == "nginx":
        found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
        if not found:
            return [Result(True, "nginx -t", "nginx is not installed here: the site file was not checked "
                                             "(`apt-get install nginx`)")]
        problem = nginx_problem(spec, found)
        return [Result(problem is None, "nginx -t accepts the site file", problem or found)]
    path = program_environment(spec)["PATH"]  # where supervisord will look for it
    found = shutil.which("caddy", path=path)
    if not found:
        return [Result(False, "caddy", f"not found on the programs' PATH ({path}); {CADDY_INSTALL}")]
    problem = caddy_problem(spec, found, hosting)
    what = "caddy validate accepts the " + ("Caddyfile" if caddy.supervised(spec, hosting) else "site snippet")
    return [Result(problem is None, what, problem or found)]


def _needs(spec: Spec, target: str) -> None:
    h = spec.https
    if h is None:
        raise UserError(f"{spec.source}: --target {target} renders the [https] site; add an [https] table "
                        '(domains = ["..."])')
    if target == "nginx" and h.proxy != "nginx":
        raise UserError(f"{spec.source}: https.proxy is {h.proxy!r}; set proxy = \"nginx\" for --target nginx")
    if target == "caddy" and h.proxy != "caddy":
        raise UserError(f"{spec.source}: https.proxy is {h.proxy!r}; --target caddy renders a Caddy site")


def site_path(spec: Spec, target: str) -> str:
    """Where `render --target nginx|caddy` writes the site, beside the spec."""
    return os.path.join(spec.base_dir, nginx.file_name(spec)) if target == "nginx" else caddy.snippet_path(spec)


def site_text(spec: Spec, target: str, command: str) -> str:
    return nginx.render(spec, command) if target == "nginx" else caddy.render_snippet(spec, command)


def render_site(spec: Spec, target: str, output: Optional[str], command: str, out: Echo, err: Echo) -> None:
    """`render --target nginx|caddy`: the site for an OS-packaged proxy (``-``: stdout), and how to enable it."""
    _needs(spec, target)
    text = site_text(spec, target, command)
    if output == "-":
        out(text)
        return
    path = output or site_path(spec, target)
    write_atomic(path, text, 0o644)
    err(f"wrote {path}")
    steps = nginx.install_steps(spec, path) if target == "nginx" else caddy.install_steps(spec, path)
    for step in steps:
        err(step)


def site_checks(spec: Spec, target: str) -> List[Result]:
    """`check --target nginx|caddy`: the site, validated by the proxy itself."""
    _needs(spec, target)
    return check_results(spec, spec.supervisord.hosting(fragment=True))  # the OS's proxy: a site snippet


def site_url(spec: Spec) -> str:
    h = spec.https
    assert h is not None
    return f"https://{h.domains[0]}" + ("" if h.https_port == 443 else f":{h.https_port}") + "/"


def wait_proxy(spec: Spec, proxy: Any, progress: Echo, since: Optional[Dict[str, int]] = None,
               timeout: float = PROXY_TIMEOUT) -> None:
    """After the workers: wait until this deployment's Caddy is RUNNING; a Caddy that exits
    (a port in use, a certificate file it cannot read) fails `up` with its log's tail."""
    if not caddy.supervised(spec):
        return
    name = Names(spec.app.name).proxy
    control.wait_running(proxy, name, "Caddy", "fix the problem (`supervisor-fastapi check` runs caddy validate)",
                         since, timeout)
    progress(f"{name}: Caddy serving {site_url(spec)}")
