"""Spec -> supervisord.conf text: a pure, deterministic function.

``build`` turns a Spec into ordered (section, options) records; ``render`` joins them via
``ini.render``. Values reach the text only through ``ini`` (escape/command/environment),
so no spec value can inject a section or option. Nothing here touches the disk.
"""

import os
from typing import List, Optional, Tuple

from .. import __version__
from ..layout import Layout
from ..spec import Program, Spec
from ..uvicorn_settings import encode_setting
from . import ini

Options = List[Tuple[str, str]]

# Priorities: the listener pool must exist before the groups it watches, or their
# PROCESS_GROUP_ADDED events are lost; the migration starts before the web workers.
PRIORITY_LISTENER = 1
PRIORITY_MIGRATE = 50
PRIORITY_WEB = 100
PRIORITY_PROGRAMS = 200
LISTENER_BUFFER = 1024
# Extra seconds beyond graceful_timeout before supervisord sends SIGKILL: the drain window
# (1 s) plus lifespan shutdown.
STOP_MARGIN = 10
RPC_NAMESPACE = "fastapi"


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
    for key, value in s.uvicorn:
        argv += encode_setting(key, value)
    return argv


def listener_argv(spec: Spec) -> List[str]:
    # app.python has this package (the worker needs it) and so supervisor: the conf then
    # depends on the spec alone, not on which interpreter ran the CLI.
    return [spec.app.python, "-m", "supervisor_fastapi.listener", "--spec", spec.source]


def _common(spec: Spec, log: str, env: Tuple[Tuple[str, str], ...], directory: Optional[str] = None) -> Options:
    opts: Options = [("directory", ini.escape(directory or spec.app.directory))]
    if spec.app.user:
        opts.append(("user", ini.escape(spec.app.user)))
    merged = dict(spec.app.env)
    merged.update(env)
    if merged:
        opts.append(("environment", ini.environment(merged)))
    # ``log`` is INI text already: it may carry %(process_num)02d.
    opts += [("redirect_stderr", "true"), ("stdout_logfile", log),
             ("stdout_logfile_maxbytes", "10MB"), ("stdout_logfile_backups", "5")]
    return opts


def web_section(spec: Spec) -> ini.Section:
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
        # With a migration the listener starts the workers once it has exited 0.
        ("autostart", ini.boolean(spec.migrate is None)),
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


def migrate_section(spec: Spec) -> Optional[ini.Section]:
    m = spec.migrate
    if m is None:
        return None
    name = f"{spec.app.name}_migrate"
    opts: Options = [
        ("command", ini.raw_command(m.command)),
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
    name = f"{spec.app.name}_{p.name}"
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


def listener_section(spec: Spec) -> ini.Section:
    name = f"{spec.app.name}_listener"
    layout = Layout(spec.run_dir)
    opts: Options = [
        ("command", ini.command(listener_argv(spec))),
        ("events", "PROCESS_STATE,PROCESS_GROUP,REMOTE_COMMUNICATION"),
        # The default buffer of 10 overflows at startup and silently drops events.
        ("buffer_size", str(LISTENER_BUFFER)),
        ("priority", str(PRIORITY_LISTENER)),
        ("autostart", "true"),
        ("autorestart", "true"),
        ("startsecs", "1"),
        ("stopwaitsecs", "10"),
        ("directory", ini.escape(spec.base_dir)),
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


def plugin_sections(spec: Spec, fragment: bool = False) -> List[ini.Section]:
    """supervisor-fastapi's plugins: loaded by supervisord and supervisorctl, which must import this package.

    ``[rpcinterface:fastapi]`` holds the fcgi socket open across restarts (rpcplugin.py);
    ``[ctlplugin:fastapi]`` adds ``rolling_restart`` and ``fastapi_status`` to supervisorctl.
    supervisorctl does not read ``[include]`` files, so a fragment carries only the first.
    """
    run_dir = ini.escape(Layout(spec.run_dir).run_dir)
    sections: List[ini.Section] = [
        (f"rpcinterface:{RPC_NAMESPACE}", [
            ("supervisor.rpcinterface_factory", "supervisor_fastapi.plugins.rpc:make_rpcinterface"),
            ("run_dir", run_dir),
        ]),
    ]
    if not fragment:
        sections.append((f"ctlplugin:{RPC_NAMESPACE}", [
            ("supervisor.ctl_factory", "supervisor_fastapi.plugins.ctl:make_ctlplugin"),
            ("group", ini.escape(spec.app.name)),
        ]))
    return sections


def watchdog_argv(spec: Spec) -> Optional[List[str]]:
    """The memory/heartbeat/startup watchdog command, or None when no limit is set."""
    s, m = spec.server, spec.memory
    if m.limit is None and not s.heartbeat_timeout and not s.startup_timeout:
        return None
    argv = [spec.app.python, "-m", "supervisor_fastapi.runtime.watchdog", "--group", spec.app.name,
            "--workers", str(s.workers), "--state-dir", Layout(spec.run_dir).state_dir]
    if m.limit is not None:
        argv += ["--memory-limit", str(m.limit), "--check-interval", f"{m.check_interval:g}",
                 "--limit-checks", str(m.limit_checks)]
    if s.heartbeat_timeout:
        argv += ["--heartbeat-timeout", f"{s.heartbeat_timeout:g}"]
    if s.startup_timeout:
        argv += ["--startup-timeout", f"{s.startup_timeout:g}"]
    return argv


def watchdog_section(spec: Spec) -> Optional[ini.Section]:
    argv = watchdog_argv(spec)
    if argv is None:
        return None
    name = f"{spec.app.name}_watchdog"
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
    return f"program:{name}", opts


def build(spec: Spec, fragment: bool = False, with_plugins: Optional[bool] = None) -> List[ini.Section]:
    """Every section of the generated conf, in a fixed order.

    The plugin sections make supervisord and supervisorctl refuse to start when they cannot
    import this package, so a ``fragment`` (for an OS-packaged supervisord) leaves them out
    unless ``with_plugins`` says that Python has the package.
    """
    sections: List[ini.Section] = [] if fragment else daemon_sections(spec)
    if with_plugins if with_plugins is not None else not fragment:
        sections += plugin_sections(spec, fragment)
    sections.append(listener_section(spec))
    migrate = migrate_section(spec)
    if migrate:
        sections.append(migrate)
    sections.append(web_section(spec))
    sections += [program_section(spec, p) for p in spec.programs]
    watchdog = watchdog_section(spec)
    if watchdog:
        sections.append(watchdog)
    return sections


def header(spec: Spec, command: str) -> List[str]:
    return [
        f"Generated by supervisor-fastapi {__version__} from {spec.source}.",
        f"Do not edit: change the spec and run `{command}`.",
    ]


def render(spec: Spec, command: str, fragment: bool = False, with_plugins: Optional[bool] = None) -> str:
    """The conf text for ``spec``; ``command`` is how the user regenerates it (for the header)."""
    return ini.render(build(spec, fragment, with_plugins), header(spec, command))
