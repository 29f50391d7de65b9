"""A deployment inside a supervisord it does not own: the OS package's, named by
``supervisord.serverurl``, running the app from a conf.d fragment next to other apps.

`up` writes the fragment where that supervisord's ``[include]`` reads it and applies only
this app's groups (what `supervisorctl update` would do for them); `down` stops and
removes them and takes the fragment away, so no later `update` or reboot brings the app
back. Other apps' groups and pending changes are never touched.

The plugin (``supervisord.plugins = true``) is loaded by that supervisord only when it
starts: its Python must import this package, or it refuses to start at all (and with it
every app it runs), so `check` and `up` probe that Python before a fragment naming the
plugin is written.
"""

import os
import shutil
import subprocess
import xmlrpc.client
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .. import __version__
from ..errors import DeployError, UserError
from ..generate.conf import groups_in, render
from ..layout import Layout, Names
from ..spec import Spec
from . import checks, control, deploy, https
from .statusview import app_groups

Progress = Callable[[str], None]
PROBE_TIMEOUT = 20.0
# Processes of the web group in these states hold (or are about to hold) the shared socket.
SERVING_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


def connect(spec: Spec) -> Any:
    """A proxy to the supervisord of ``supervisord.serverurl``, which answers; else one line with the fix."""
    url = str(spec.supervisord.serverurl)
    proxy = control.proxy(url, control.rpc_timeout(spec))
    problem = control.answer_problem(proxy)
    if problem:
        raise UserError(f"{spec.source}: supervisord.serverurl: no supervisord answers at {url} ({problem}); "
                        "start it (Debian: `systemctl start supervisor`), run as a user its socket admits "
                        "(Debian's is root's), or fix the key")
    return proxy


def serving(infos: Sequence[Dict[str, Any]], web: str) -> bool:
    """Whether the app's own web workers hold the shared socket (pure)."""
    return any(i.get("group") == web and i.get("statename") in SERVING_STATES for i in infos)


def plugin_loaded(proxy: Any, app: str) -> bool:
    """Whether that supervisord loaded this app's ``[rpcinterface:fastapi_<app>]`` (at its start)."""
    try:
        return f"{Names(app).rpc_namespace}.getState" in proxy.system.listMethods()
    except (OSError, xmlrpc.client.Error):
        return False


def daemon_python(proxy: Any) -> Optional[Dict[str, Any]]:
    """supervisord's interpreter and environment, from /proc (root, or its owner), or None.

    The interpreter is its argv[0] (``/usr/bin/python3 /usr/bin/supervisord``, or a venv's
    ``bin/python``), not /proc/PID/exe: a venv's python is a symlink to the base
    interpreter, which does not see the venv's packages."""
    try:
        pid = int(proxy.supervisor.getPID())
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read(1 << 16).split(b"\0")[0].decode("utf-8", "replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError, xmlrpc.client.Error):
        return None
    env = dict(entry.decode("utf-8", "replace").partition("=")[::2] for entry in raw.split(b"\0") if b"=" in entry)
    if "/" in argv0:
        python = os.path.join(cwd, argv0)
    else:
        python = shutil.which(argv0, path=env.get("PATH", os.defpath)) or exe
    return {"python": os.path.normpath(python), "env": env}


PLUGIN_PROBE = "import supervisor_fastapi.plugins.rpc, supervisor_fastapi as p; print(p.__version__)"


def plugin_import_problem(daemon: Dict[str, Any], timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """Whether supervisord's own Python (its environment, its PYTHONPATH) imports this release's plugin."""
    python = str(daemon["python"])
    try:
        # cwd "/": a clone in the current folder must not make the probe pass.
        out = subprocess.run([python, "-c", PLUGIN_PROBE], cwd="/", env=daemon["env"], capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not run supervisord's Python {python} ({exc})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"supervisord's Python {python} cannot import supervisor_fastapi ({last}): a restart of that "
                "supervisord would fail and stop every program it runs; make the package importable there "
                "(docs/guide.md, \"supervisord from the OS package\") or set supervisord.plugins = false")
    found = out.stdout.strip()
    if found != __version__:
        return (f"supervisord's Python {python} has supervisor_fastapi {found}, this command is {__version__}: "
                "install the same release in both (the plugin reads options this release renders)")
    return None


def host_checks(spec: Spec) -> Tuple[bool, List[checks.Result]]:
    """`check` for a fragment deployment: whether this app's workers hold its port there (the
    bind line), and that supervisord answers and can run the plugin."""
    s, names = spec.supervisord, Names(spec.app.name)
    proxy = control.proxy(str(s.serverurl))
    problem = control.answer_problem(proxy)
    if problem:
        return False, [checks.Result(False, "supervisord.serverurl",
                                     f"no supervisord answers at {s.serverurl} ({problem})")]
    infos = proxy.supervisor.getAllProcessInfo()
    version = proxy.supervisor.getSupervisorVersion()
    results = [checks.Result(True, "supervisord.serverurl", f"{s.serverurl} answers (supervisord {version})")]
    folder = os.path.dirname(str(s.fragment))
    results.append(checks.Result(os.path.isdir(folder), "supervisord.fragment",
                                 str(s.fragment) if os.path.isdir(folder) else f"{folder} does not exist; set the "
                                 "key to a path that supervisord's [include] files= covers"))
    hosting = s.hosting()
    if not hosting.plugins:
        return serving(infos, names.web), results + checks.plugin_checks(hosting, "supervisord.plugins = false")
    daemon = daemon_python(proxy)
    if daemon is None:
        results.append(checks.Result(True, "plugin import", "not checked: run as root to see supervisord's Python"))
    else:
        problem = plugin_import_problem(daemon)
        results.append(checks.Result(problem is None, "plugin import", problem or f"{daemon['python']} imports "
                                     f"supervisor_fastapi {__version__}"))
    loaded = plugin_loaded(proxy, spec.app.name)
    present = any(i["group"] == names.web for i in infos)
    if loaded:
        detail = f"{names.rpc_namespace} is loaded: gate, crash-loop holds, socket hold"
    elif present:
        detail = (f"{names.web} runs without its controller ({names.rpc_namespace} is not loaded; plugins load "
                  "when supervisord starts): restart that supervisord once (Debian: `systemctl restart supervisor`)")
    else:
        detail = f"{names.rpc_namespace} not loaded yet: `up` writes the fragment and says how to load it"
    return serving(infos, names.web), results + [checks.Result(loaded or not present, "plugin", detail)]


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        return ""


def own_groups(spec: Spec, fragment_text: str) -> Set[str]:
    """This app's groups: the spec's, and those its current fragment names (a [[programs]]
    entry removed from the spec is still running under its old name)."""
    return set(app_groups(spec.app.name, [p.name for p in spec.programs])) | groups_in(fragment_text)


def up(spec: Spec, command: str, progress: Progress, timeout: float) -> List[str]:
    """Write the fragment, apply this app's groups in that supervisord, wait until every worker accepts."""
    s, names, layout = spec.supervisord, Names(spec.app.name), Layout(spec.run_dir)
    hosting = s.hosting()
    fragment = str(s.fragment)
    proxy = connect(spec)
    since = deploy.log_sizes(layout)
    if not os.path.isdir(os.path.dirname(fragment)):
        raise UserError(f"{spec.source}: supervisord.fragment: {os.path.dirname(fragment)} does not exist; set the "
                        "key to a path that supervisord's [include] files= covers")
    if hosting.plugins:
        daemon = daemon_python(proxy)
        problem = plugin_import_problem(daemon) if daemon else None
        if problem:
            raise UserError(f"{spec.source}: supervisord.plugins: {problem}; nothing was written")
    if not serving(proxy.supervisor.getAllProcessInfo(), names.web):
        problem = checks.bind_problem(spec.server.bind)
        if problem:
            raise UserError(f"server.bind: {problem}")
    old = _read(fragment)
    text = render(spec, command, hosting)
    deploy.make_dirs(spec)
    https.write_files(spec, command, hosting)  # [https]: a site snippet for the OS's Caddy
    if text == old:
        progress(f"{fragment} is up to date")
    else:
        deploy.write_atomic(fragment, text, deploy.conf_mode(spec))
        progress(f"wrote {fragment}")
    if hosting.plugins and not plugin_loaded(proxy, spec.app.name):
        # Applied now, the web group would start with nothing to gate it or hold a crash loop.
        raise UserError(f"supervisord at {s.serverurl} loads plugins only when it starts, and has not loaded "
                        f"{names.rpc_namespace}: restart it once (Debian: `systemctl restart supervisor`; every "
                        "program it runs restarts), then run `supervisor-fastapi up` again")
    deploy.apply_update(proxy, progress, only=own_groups(spec, old) | groups_in(text))
    present = {i["group"] for i in proxy.supervisor.getAllProcessInfo()}
    missing = sorted(groups_in(text) - present)
    if missing:
        raise UserError(f"supervisord at {s.serverurl} does not read {fragment} (no {', '.join(missing)} after "
                        "reread): set supervisord.fragment to a path its [include] files= covers")
    deploy.resume(proxy, spec, progress)
    if spec.migrate:
        timeout += spec.migrate.timeout
    ready = deploy.wait_ready(spec, proxy, layout, progress, timeout, since)
    deploy.wait_exporter(spec, proxy, progress, since)
    return ready


def down(spec: Spec, progress: Progress) -> bool:
    """Stop and remove this app's groups in that supervisord, and its fragment; False if there were none."""
    fragment = str(spec.supervisord.fragment)
    proxy = connect(spec)
    ours = own_groups(spec, _read(fragment))
    present = sorted({i["group"] for i in proxy.supervisor.getAllProcessInfo()} & ours)
    # The fragment first: an `update` by anyone meanwhile must not bring a group back.
    try:
        os.unlink(fragment)
        progress(f"removed {fragment} (`supervisor-fastapi up` writes it again)")
        removed = True
    except FileNotFoundError:
        removed = False
    listener = Names(spec.app.name).listener
    # The listener last: it sends the alerts the others' stops raise.
    left = []
    for group in sorted(present, key=lambda g: g == listener):
        progress(f"stopping {group}")
        try:
            proxy.supervisor.stopProcessGroup(group, True)
            proxy.supervisor.removeProcessGroup(group)
        except xmlrpc.client.Fault as exc:
            progress(f"{group}: {exc.faultString}")
            left.append(group)
    if left:
        raise DeployError(f"could not stop and remove {', '.join(left)} in supervisord at "
                          f"{spec.supervisord.serverurl}; see its log, then run `supervisor-fastapi down` again")
    return bool(present) or removed
