"""Spec -> supervisord.conf text: a pure, deterministic function.

``build`` turns a Spec into ordered (section, options) records; ``render`` joins them via
``ini.render``. Values reach the text only through ``ini`` (escape/command/environment),
so no spec value can inject a section or option. Nothing here touches the disk.
"""

import os
import re
import shlex
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import __version__
from ..contracts.settings import LISTENER_ENV, ControlConfig, ListenerConfig
from ..layout import Layout, Names, Releases
from ..spec import Program, Spec
from ..spec.model import Hosting
from ..uvicorn_settings import encode_setting
from . import caddy, ini

Options = List[Tuple[str, str]]

# Priorities: the listener pool is created first, so it is subscribed before any group's
# start-up events, and stopped last; the migration starts before the web workers.
PRIORITY_LISTENER = 1
PRIORITY_MIGRATE = 50
PRIORITY_WEB = 100
PRIORITY_PROGRAMS = 200
LISTENER_BUFFER = 1024
# With the plugin, the listener exits after this long with nothing to do and the plugin starts
# it again when an event needs it: a deployment at rest runs no fourth process.
LISTENER_IDLE_EXIT = 5.0
# Extra seconds beyond graceful_timeout before supervisord sends SIGKILL: the drain window
# (1 s) plus lifespan shutdown.
STOP_MARGIN = 10
RPC_NAMESPACE = "fastapi"
# The folders every program's PATH ends with: what systemd gives a service. A program must
# find its commands the same whoever started supervisord (a shell with a venv activated,
# systemd at boot, `env -i`), so PATH is rendered, never inherited.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def worker_argv(spec: Spec) -> List[str]:
    """The worker command supervisord runs for each web process."""
    s = spec.server
    argv = [spec.app.python, "-m", "supervisor_fastapi.runtime.worker", spec.app.asgi]
    if spec.app.factory:
        argv.append("--factory")
    argv += ["--graceful-timeout", f"{s.graceful_timeout:g}", "--backlog", str(s.backlog),
             "--state-dir", Layout(spec.run_dir).state_dir]
    if s.heartbeat_timeout:
        # Beat often enough that a single late beat never looks like a hang.
        argv += ["--heartbeat-interval", f"{max(0.2, min(1.0, s.heartbeat_timeout / 4)):g}"]
    if spec.metrics is not None:
        argv.append("--metrics")  # count requests into state_dir/<name>.metrics, on each beat
    for key, value in s.uvicorn:
        argv += encode_setting(key, value)
    return argv


def listener_argv(spec: Spec) -> List[str]:
    # app.python has this package (the worker needs it) and so supervisor: the conf then
    # depends on the spec alone, not on which interpreter ran the CLI.
    return [spec.app.python, "-m", "supervisor_fastapi.listener"]


def control_config(spec: Spec) -> ControlConfig:
    """What the controller inside supervisord enforces, from the spec (rendered into the plugin section)."""
    names, c = Names(spec.app.name), spec.crash_loop
    groups = (names.web,) + tuple(names.program(p.name) for p in spec.programs)
    if watchdog_argv(spec) is not None:
        groups += (names.watchdog,)
    if spec.metrics is not None:
        groups += (names.metrics,)
    if caddy.supervised(spec):
        groups += (names.proxy,)  # a crashing Caddy is held and alerted on like any program
    # [crash_loop.programs.<name>]: <name> is app.name (the web group) or a [[programs]] name.
    overrides = tuple((names.web if name == spec.app.name else names.program(name), b)
                      for name, b in c.overrides)
    return ControlConfig(app=spec.app.name, web=names.web, state_dir=Layout(spec.run_dir).state_dir,
                         migrate=names.migrate if spec.migrate else "",
                         migrate_timeout=spec.migrate.timeout if spec.migrate else 0.0,
                         groups=groups, policy=c.default, overrides=tuple(sorted(overrides)),
                         reminder_interval=spec.listener.reminder_interval,
                         current=spec.workdir if spec.release else "")


def alert_records(spec: Spec) -> Tuple[Dict[str, Any], ...]:
    """The spec's ``[[alerts]]`` as the plain records the listener's settings carry.

    A command channel's record says whom it runs as (its ``user``, else app.user; nobody
    only with ``run_as_root``); its environment is an allow-list plus its own ``pass_env``
    (listener/channels.py command_env), so it needs no list of what to hide."""
    out = []
    for a in spec.alerts:
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in a.options}
        if a.type == "command":
            options["user"] = a.get("user") or (None if a.get("run_as_root") else spec.app.user)
        out.append({"type": a.type, "name": a.name, "options": options})
    return tuple(out)


def listener_config(spec: Spec, controller: bool = True) -> ListenerConfig:
    names, layout = Names(spec.app.name), Layout(spec.run_dir)
    return ListenerConfig(app=spec.app.name, web=names.web, migrate=names.migrate if spec.migrate else "",
                          controller=controller, groups=control_config(spec).groups,
                          state_path=layout.listener_state, journal_path=layout.alert_journal,
                          base_dir=spec.base_dir, run_dir=spec.run_dir, alerts=alert_records(spec),
                          send_retries=spec.listener.send_retries,
                          idle_exit=LISTENER_IDLE_EXIT if controller else 0.0,
                          spool_path=layout.listener_spool if controller else "")


def listener_only_env(spec: Spec) -> List[str]:
    """Variables only the listener may see: the SMTP credentials named by email alerts and
    what command alerts pass on (``pass_env``: a channel's settings, not the app's).

    supervisord passes its whole environment to every child; ``NAME=""`` in a program's
    environment= is the only way a conf can take one back."""
    names: Set[str] = set()
    for a in spec.alerts:
        if a.type == "email":
            names.update(n for n in (a.get("username_env"), a.get("password_env")) if n)
        if a.type == "command":
            names.update(a.get("pass_env") or ())
    return sorted(names)


def rendered_path(spec: Spec) -> str:
    """PATH for every program: app.python's folder (the venv's bin/) first, then SYSTEM_PATH.

    So `python`, `alembic` or any console script installed beside the app's interpreter
    resolves under systemd's bare PATH as it does in an activated venv."""
    folder = os.path.dirname(spec.app.python)
    return f"{folder}:{SYSTEM_PATH}" if folder and folder not in SYSTEM_PATH.split(":") else SYSTEM_PATH


def program_environment(spec: Spec, env: Tuple[Tuple[str, str], ...] = ()) -> Dict[str, str]:
    """The environment= of an app program (web, migrate, [[programs]]): what it adds to supervisord's."""
    merged = {n: "" for n in listener_only_env(spec)}
    merged["PATH"] = rendered_path(spec)
    # The spec's own env wins: naming a variable there (PATH too) passes it on deliberately.
    merged.update(spec.app.env)
    merged.update(env)
    return merged


def _blanked(spec: Spec) -> Options:
    return [("environment", ini.environment({n: "" for n in listener_only_env(spec)}))] \
        if listener_only_env(spec) else []


def _common(spec: Spec, log: str, env: Tuple[Tuple[str, str], ...], directory: Optional[str] = None) -> Options:
    opts: Options = [("directory", ini.escape(directory or spec.workdir))]
    if spec.app.user:
        opts.append(("user", ini.escape(spec.app.user)))
    # The app's own files keep the usual 022 whatever supervisord's (077, see daemon_sections).
    opts.append(("umask", "022"))
    opts.append(("environment", ini.environment(program_environment(spec, env))))
    # ``log`` is INI text already: it may carry %(process_num)02d.
    opts += [("redirect_stderr", "true"), ("stdout_logfile", log),
             ("stdout_logfile_maxbytes", "10MB"), ("stdout_logfile_backups", "5")]
    return opts


def web_section(spec: Spec, controller: bool = True) -> ini.Section:
    s, name = spec.server, spec.app.name
    layout = Layout(spec.run_dir)
    opts: Options = [
        ("socket", ini.escape(s.bind.url)),
        ("socket_backlog", str(s.backlog)),
    ]
    if s.socket_mode:
        opts.append(("socket_mode", s.socket_mode))
    if s.socket_owner:
        opts.append(("socket_owner", ini.escape(s.socket_owner)))
    opts += [
        ("command", ini.command(worker_argv(spec))),
        ("process_name", "%(program_name)s_%(process_num)02d"),
        ("numprocs", str(s.workers)),
        ("priority", str(PRIORITY_WEB)),
        # The controller in supervisord holds them until the migration exits 0; without it
        # the listener starts them then.
        ("autostart", ini.boolean(controller or spec.migrate is None)),
        # uvicorn exits 0 after limit_max_requests: that worker must come back too.
        ("autorestart", "true"),
        ("startsecs", str(s.startsecs)),
        ("startretries", "3"),
        ("stopsignal", "TERM"),
        ("stopwaitsecs", str(int(s.graceful_timeout) + STOP_MARGIN)),
        ("stopasgroup", "true"),
        ("killasgroup", "true"),
    ]
    log = ini.logfile(os.path.join(layout.log_dir, name)) + "_%(process_num)02d.log"
    return f"fcgi-program:{name}", opts + _common(spec, log, ())


def migrate_command(spec: Spec) -> str:
    """The migration program's command: the spec's own; in release mode wrapped so that a
    release whose migration `deploy` already ran (and recorded) is not migrated again."""
    assert spec.migrate is not None
    if not spec.release:
        return ini.raw_command(spec.migrate.command)
    argv = [spec.app.python, "-m", "supervisor_fastapi.runtime.release_migrate",
            "--record", Layout(spec.run_dir).release_record, "--releases", Releases(spec.app.directory).releases_dir,
            "--", *shlex.split(spec.migrate.command)]
    return ini.command(argv)


def migrate_section(spec: Spec) -> Optional[ini.Section]:
    m = spec.migrate
    if m is None:
        return None
    name = Names(spec.app.name).migrate
    opts: Options = [
        ("command", migrate_command(spec)),
        ("priority", str(PRIORITY_MIGRATE)),
        ("autostart", "true"),
        ("autorestart", "false"),
        # One-shot: with startsecs=0 any exit is EXITED (expected or not), never BACKOFF/FATAL.
        ("startsecs", "0"),
        ("startretries", "0"),
        ("stopwaitsecs", "10"),
        ("stopasgroup", "true"),
        ("killasgroup", "true"),
    ]
    return f"program:{name}", opts + _common(spec, ini.logfile(Layout(spec.run_dir).program_log(name)), m.env)


def program_section(spec: Spec, p: Program) -> ini.Section:
    name = Names(spec.app.name).program(p.name)
    opts: Options = [("command", ini.raw_command(p.command))]
    if p.numprocs > 1:
        opts += [("process_name", "%(program_name)s_%(process_num)02d"), ("numprocs", str(p.numprocs))]
    opts += [
        ("priority", str(PRIORITY_PROGRAMS)),
        ("autostart", ini.boolean(p.autostart)),
        ("autorestart", "unexpected"),
        ("startsecs", "1"),
        ("stopasgroup", "true"),
        ("killasgroup", "true"),
    ]
    log = ini.logfile(os.path.join(Layout(spec.run_dir).log_dir, name))
    log += "_%(process_num)02d.log" if p.numprocs > 1 else ".log"
    return f"program:{name}", opts + _common(spec, log, p.env, p.directory)


def listener_section(spec: Spec, controller: bool = True) -> ini.Section:
    name = Names(spec.app.name).listener
    layout = Layout(spec.run_dir)
    opts: Options = [
        ("command", ini.command(listener_argv(spec))),
        ("events", "PROCESS_STATE,REMOTE_COMMUNICATION"),
        # The default buffer of 10 overflows at startup and silently drops events.
        ("buffer_size", str(LISTENER_BUFFER)),
        ("priority", str(PRIORITY_LISTENER)),
        ("autostart", "true"),
        # With the plugin, exit 0 is the listener's idle exit and the plugin starts it again
        # when an event needs it; a crash is restarted by supervisord either way.
        ("autorestart", "unexpected" if controller else "true"),
        ("startsecs", "1"),
        ("stopwaitsecs", "10"),
        ("directory", ini.escape(spec.base_dir)),
        # Its settings, alert channels included: not on the command line, which ps shows to everyone.
        # PATH as the app's programs get it: a `command` alert channel finds its command the same way.
        ("environment", ini.environment({LISTENER_ENV: listener_config(spec, controller).to_env(),
                                         "PATH": rendered_path(spec)})),
        # stdout is the event protocol; the listener logs to stderr only. NONE: without it
        # supervisord copies the protocol (READY, RESULT 2 OK) into an AUTO child log.
        ("stdout_logfile", "NONE"),
        ("stderr_logfile", ini.logfile(layout.program_log(name))),
        ("stderr_logfile_maxbytes", "10MB"),
        ("stderr_logfile_backups", "5"),
    ]
    return f"eventlistener:{name}", opts


def daemon_sections(spec: Spec) -> List[ini.Section]:
    """The sections that make a standalone conf work with supervisorctl."""
    layout = Layout(spec.run_dir)
    return [
        ("unix_http_server", [("file", ini.escape(layout.socket)), ("chmod", "0700")]),
        ("supervisord", [
            ("logfile", ini.escape(layout.logfile)),
            ("logfile_maxbytes", "10MB"),
            ("logfile_backups", "5"),
            ("loglevel", spec.supervisord.log_level),
            ("pidfile", ini.escape(layout.pidfile)),
            ("childlogdir", ini.escape(layout.log_dir)),
            # Its logs, and the listener's and watchdog's files, are root's alone (when it
            # daemonizes; under systemd the unit sets UMask=).
            ("umask", "077"),
            ("identifier", ini.escape(f"supervisor-fastapi:{spec.app.name}")),
            # Workers hold the shared socket plus their own connections; listeners and
            # workers must not inherit more than that.
            ("minfds", "4096"),
        ]),
        ("rpcinterface:supervisor", [
            ("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface"),
        ]),
        ("supervisorctl", [("serverurl", ini.escape(f"unix://{layout.socket}"))]),
    ]


def plugin_sections(spec: Spec, hosting: Hosting) -> List[ini.Section]:
    """supervisor-fastapi's plugins: loaded by supervisord and supervisorctl, which must import this package.

    ``[rpcinterface:fastapi_<app>]`` is the controller inside supervisord (the gate, crash-loop
    holds, the socket that stays open; plugins/rpc.py), one section per app so several apps'
    fragments can share a supervisord; ``[ctlplugin:fastapi]`` adds ``rolling_restart`` and
    ``fastapi_status`` to supervisorctl, which does not read ``[include]`` files, so a fragment
    carries only the first.
    """
    names = Names(spec.app.name)
    opts = [("supervisor.rpcinterface_factory", "supervisor_fastapi.plugins.rpc:make_rpcinterface"),
            ("run_dir", ini.escape(Layout(spec.run_dir).run_dir))]
    opts += [(key, ini.escape(value)) for key, value in control_config(spec).to_options()]
    sections: List[ini.Section] = [(f"rpcinterface:{names.rpc_namespace}", opts)]
    if not hosting.fragment:
        sections.append((f"ctlplugin:{RPC_NAMESPACE}", [
            ("supervisor.ctl_factory", "supervisor_fastapi.plugins.ctl:make_ctlplugin"),
            ("app", ini.escape(spec.app.name)),
        ]))
    return sections


def watchdog_argv(spec: Spec) -> Optional[List[str]]:
    """The memory/heartbeat/startup watchdog command, or None when no limit is set."""
    s, m = spec.server, spec.memory
    if m.limit is None and not s.heartbeat_timeout and not s.startup_timeout:
        return None
    argv = [spec.app.python, "-m", "supervisor_fastapi.runtime.watchdog", "--group", spec.app.name,
            "--workers", str(s.workers), "--state-dir", Layout(spec.run_dir).state_dir,
            "--memo", Layout(spec.run_dir).watchdog_memo]
    if m.limit is not None:
        argv += ["--memory-limit", str(m.limit), "--check-interval", f"{m.check_interval:g}",
                 "--limit-checks", str(m.limit_checks)]
    if s.heartbeat_timeout:
        argv += ["--heartbeat-timeout", f"{s.heartbeat_timeout:g}"]
    if s.startup_timeout:
        argv += ["--startup-timeout", f"{s.startup_timeout:g}"]
    return argv


def _resident_section(spec: Spec, name: str, argv: List[str]) -> ini.Section:
    """A program of ours that runs as supervisord's user beside the app (the watchdog, the
    metrics exporter): restarted whenever it exits, its log beside the others."""
    opts: Options = [
        ("command", ini.command(argv)),
        ("priority", str(PRIORITY_PROGRAMS)),
        ("autostart", "true"),
        ("autorestart", "true"),
        ("startsecs", "1"),
        ("stopwaitsecs", "10"),
        ("directory", ini.escape(spec.base_dir)),
        ("redirect_stderr", "true"),
        ("stdout_logfile", ini.logfile(Layout(spec.run_dir).program_log(name))),
        ("stdout_logfile_maxbytes", "10MB"),
        ("stdout_logfile_backups", "5"),
    ]
    return f"program:{name}", opts + _blanked(spec)


def watchdog_section(spec: Spec) -> Optional[ini.Section]:
    argv = watchdog_argv(spec)
    return None if argv is None else _resident_section(spec, Names(spec.app.name).watchdog, argv)


def metrics_argv(spec: Spec) -> Optional[List[str]]:
    """The Prometheus exporter's command ([metrics]), or None without the table."""
    if spec.metrics is None:
        return None
    names, layout = Names(spec.app.name), Layout(spec.run_dir)
    argv = [spec.app.python, "-m", "supervisor_fastapi.runtime.metrics", "--app", spec.app.name, "--web", names.web,
            "--state-dir", layout.state_dir, "--listener-state", layout.listener_state, "--bind", spec.metrics.bind]
    if spec.memory.limit is not None:
        argv += ["--memory-limit", str(spec.memory.limit)]
    if spec.release and spec.migrate:
        # Release mode: `deploy` runs each release's migration and records it there; the
        # supervisord program only re-checks that record at each start.
        argv += ["--release-record", layout.release_record]
    return argv + (["--migrate", names.migrate] if spec.migrate else [])


def metrics_section(spec: Spec) -> Optional[ini.Section]:
    """``[program:<app>_metrics]``: runs as supervisord's user, like the watchdog (it reads root's
    listener state and asks supervisord over its socket); it imports supervisor and the stdlib only."""
    argv = metrics_argv(spec)
    return None if argv is None else _resident_section(spec, Names(spec.app.name).metrics, argv)


def build(spec: Spec, hosting: Optional[Hosting] = None) -> List[ini.Section]:
    """Every section of the generated conf, in a fixed order; ``hosting``: the spec's own by default.

    The plugin sections make supervisord and supervisorctl refuse to start when they cannot
    import this package, so a fragment (for an OS-packaged supervisord) leaves them out
    unless ``hosting.plugins`` says that Python has the package.
    """
    hosting = hosting or spec.supervisord.hosting()
    sections: List[ini.Section] = [] if hosting.fragment else daemon_sections(spec)
    plugins = hosting.plugins
    if plugins:
        sections += plugin_sections(spec, hosting)
    sections.append(listener_section(spec, plugins))
    migrate = migrate_section(spec)
    if migrate:
        sections.append(migrate)
    sections.append(web_section(spec, plugins))
    sections += [program_section(spec, p) for p in spec.programs]
    watchdog = watchdog_section(spec)
    if watchdog:
        sections.append(watchdog)
    metrics = metrics_section(spec)
    if metrics:
        sections.append(metrics)
    proxy = None if hosting.fragment else caddy.proxy_section(spec, listener_only_env(spec),
                                                       program_environment(spec)["PATH"])
    if proxy:
        sections.append(proxy)
    return sections


# What a conf rendered without the plugin sections gives up (the header says it, so does `check`).
NO_PLUGIN_LOSSES = (
    "no crash-loop holds: supervisord restarts a crashed worker at once, forever, and gives up (FATAL) after "
    "3 quick start failures",
    "the migration gate is only autostart=false: the listener starts the workers after the migration exits 0, "
    "but `supervisorctl start`, `restart` and a rolling restart bring them up whatever the migration did",
    "the shared socket closes whenever no worker runs (`restart <app>:*` refuses connections for ~1 s)",
    "status shows no incidents or restart counts",
)


def header(spec: Spec, command: str, hosting: Hosting) -> List[str]:
    lines = [
        f"Generated by supervisor-fastapi {__version__} from {spec.source}.",
        f"Do not edit: change the spec and run `{command}`.",
    ]
    if not hosting.plugins:
        why = "supervisord.plugins = false" if hosting.shared else "no --with-plugins"
        lines += [f"Rendered without the supervisor-fastapi plugin ({why}), so this deployment has:"]
        lines += [f"- {loss}" for loss in NO_PLUGIN_LOSSES]
    return lines


def render(spec: Spec, command: str, hosting: Optional[Hosting] = None) -> str:
    """The conf text for ``spec``; ``command`` is how the user regenerates it (for the header);
    ``hosting``: the spec's own (``Supervisord.hosting``) unless given."""
    hosting = hosting or spec.supervisord.hosting()
    return ini.render(build(spec, hosting), header(spec, command, hosting))


_PROGRAM_HEADER = re.compile(r"^\[(?:program|fcgi-program|eventlistener):([^\]\s]+)\][ \t]*$", re.MULTILINE)


def groups_in(text: str) -> Set[str]:
    """The supervisor groups a conf rendered here defines (each program is its own group)."""
    return set(_PROGRAM_HEADER.findall(text))
