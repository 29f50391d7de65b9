"""The deployment spec: TOML in, immutable typed records out.

``parse_spec`` is pure: it takes the text, a display name for errors, the folder that
relative paths are resolved against and the host defaults it may need (interpreter,
CPU count), so tests can pin them. Every error is a SpecError naming the key path.
"""

import dataclasses
import math
import os
import re
import sys
import urllib.parse
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from ..contracts.settings import Policy
from ..errors import SpecError, UserError, did_you_mean
from ..generate import ini
from ..layout import RESERVED_PROGRAMS, Layout, Names
from ..uvicorn_settings import UVICORN_OWNED, UVICORN_SETTINGS, UvicornSetting
from . import limits
from .https import read_https, uvicorn_defaults
from .model import (  # noqa: F401
    _SIZE_UNITS,
    SERVICE_TYPES,
    SIZE_RE,
    AlertChannel,
    App,
    Bind,
    Budget,
    CrashLoop,
    HostDefaults,
    Kubernetes,
    Listener,
    Memory,
    Metrics,
    Migrate,
    Program,
    Release,
    Server,
    Spec,
    Supervisord,
    format_size,
    parse_size,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the oldest supported Python in CI
    import tomli as tomllib

SPEC_FILENAME = "supervisor-fastapi.toml"
# Larger integers mean nothing here (2**53: exactly representable as a float; ~8 PB).
MAX_INT = 2**53
PYPROJECT_TABLE = "supervisor-fastapi"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*\Z")
ASGI_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(\))?\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]*\$?(:[a-z_][a-z0-9_.-]*)?\Z", re.IGNORECASE)
HOST_RE = re.compile(r"^[A-Za-z0-9.-]+\Z")
# What supervisorctl's serverurl takes: a unix socket path, or an inet_http_server address.
SERVERURL_RE = re.compile(r"^unix:///[^\x00-\x1f\x7f\s]+\Z|^http://[A-Za-z0-9.\[\]:-]+/?\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Names supervisor uses for its own environment; a spec overriding them would break the
# listener's RPC connection or the worker's identity.
RESERVED_ENV = ("SUPERVISOR_SERVER_URL", "SUPERVISOR_PROCESS_NAME", "SUPERVISOR_GROUP_NAME", "SUPERVISOR_ENABLED")


# uvicorn settings for which 0 parses but breaks the worker.
UVICORN_POSITIVE = {
    "limit_concurrency": "0 answers every request with 503; remove the key for no limit",
    "limit_max_requests": "0 makes each worker exit at once; remove the key for no limit",
    "ws_max_size": "0 refuses every websocket message",
    "ws_max_queue": "0 refuses every websocket message",
    "h11_max_incomplete_event_size": "0 refuses every request",
}
# No control characters (CR/LF/NUL ...) and no whitespace: in a URL, host or address they
# would only fail when an alert is sent, or split an SMTP or HTTP header.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
ADDRESS_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\Z")


# --- the table reader -------------------------------------------------------------------

_MISSING: Any = object()


class _Table:
    """Reads one TOML table, refusing unknown keys and wrong types with the key path."""

    def __init__(self, data: Any, path: str, source: str, known: Sequence[str]) -> None:
        self.path, self.source = path, source
        if not isinstance(data, dict):
            self.fail("", f"must be a table, not {_kind(data)}")
        self.data: Dict[str, Any] = data
        for key in data:
            if key not in known:
                self.fail(_show(key), "unknown key", did_you_mean(key, known) or f"known keys: {', '.join(known)}")

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str, hint: Optional[str] = None) -> NoReturn:
        raise SpecError(self.source, self.key(key) if key else self.path, problem, hint)

    def get(self, key: str, kinds: Tuple[type, ...], default: Any = _MISSING, what: str = "") -> Any:
        if key not in self.data:
            if default is _MISSING:
                self.fail(key, "is required", f"add `{key} = ...` to [{self.path}]" if self.path else None)
            return default
        value = self.data[key]
        # bool is an int in Python; a TOML `true` must not pass as a number.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(key, f"must be {what or _names(kinds)}, not {_kind(value)} {value!r}")
        # TOML has nan and inf; every comparison with nan is False, so range checks let it through.
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, not {value!r}")
        return value

    def text(self, key: str, default: Any = _MISSING, pattern: Optional["re.Pattern[str]"] = None,
             what: str = "a string") -> Any:
        value = self.get(key, (str,), default, what)
        if value is default and default is not _MISSING:
            return value
        if pattern is not None and not pattern.match(value):
            self.fail(key, f"{value!r} is not {what}")
        return value

    def number(self, key: str, default: Any = _MISSING, minimum: float = 0, integer: bool = False,
               maximum: Optional[float] = None) -> Any:
        kinds: Tuple[type, ...] = (int,) if integer else (int, float)
        value = self.get(key, kinds, default, "an integer" if integer else "a number")
        if value is default and default is not _MISSING:
            return value
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            self.fail(key, f"must be {bound}, not {value if abs(value) <= MAX_INT else 'a huge number'}")
        # TOML integers are unbounded: float() of a 400-digit one raises OverflowError.
        if abs(value) > MAX_INT:
            self.fail(key, f"is too large (at most {MAX_INT})")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.get(key, (bool,), default, "true or false"))

    def size(self, key: str, default: Any = None) -> Optional[int]:
        value = self.get(key, (str, int), default, "a size like \"1GB\"")
        if value is None or value is default:
            return value
        try:
            n = value if isinstance(value, int) else parse_size(value)
        except (ValueError, OverflowError) as exc:
            self.fail(key, str(exc) if isinstance(exc, ValueError) else "is too large")
        if n <= 0:
            self.fail(key, "must be larger than zero")
        if n > MAX_INT:
            self.fail(key, f"is too large (at most {format_size(MAX_INT)})")
        return n

    def env(self, key: str) -> Tuple[Tuple[str, str], ...]:
        table = self.get(key, (dict,), {}, "a table of NAME = \"value\"")
        pairs = []
        for name, value in table.items():
            where = f"{key}.{_show(name)}"
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", name):
                self.fail(where, "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if name in RESERVED_ENV:
                self.fail(where, "is set by supervisord itself and cannot be overridden")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            elif not isinstance(value, str):
                self.fail(where, f"must be a string, not {_kind(value)}")
            problem = ini.env_value_problem(value)
            if problem:
                self.fail(where, problem, "move the value into a file the app reads, or into the app's own settings")
            pairs.append((name, value))
        return tuple(sorted(pairs))

    def safe(self, key: str, value: str) -> str:
        """Refuse a value supervisord's parser cannot carry, naming the key."""
        problem = ini.problem_with(value)
        if problem:
            self.fail(key, problem)
        return value

    def command(self, key: str) -> str:
        value = self.text(key)
        if not value.strip():
            self.fail(key, "is empty")
        try:
            ini.raw_command(value)
        except ini.UnsafeValue as exc:
            self.fail(key, str(exc), "put complex shell in a script and run the script")
        return value

    def path_value(self, key: str, base: str, default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if value is default and default is not _MISSING:
            return value
        self.safe(key, value)
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _show(key: str) -> str:
    """A TOML key as it goes in a message: quoted when it holds a control character, so the
    message stays one line."""
    return repr(key) if _CONTROL_RE.search(key) else key


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _names(kinds: Tuple[type, ...]) -> str:
    return " or ".join(_kind(k()) if k is not dict else "a table" for k in kinds)


# --- sections ---------------------------------------------------------------------------

TOP_LEVEL = ("app", "server", "memory", "programs", "supervisord", "migrate", "crash_loop", "alerts", "listener",
             "kubernetes", "metrics", "release", "https")
HTTPS_KEYS = ("domains", "tls", "email", "https_port", "http_port", "proxy", "supervised")


def parse_spec(text: str, source: str, base_dir: str, host: Optional[HostDefaults] = None,
               table: Optional[str] = None) -> Spec:
    """Parse spec text; ``table`` selects ``[tool.<table>]`` when reading pyproject.toml."""
    host = host or HostDefaults()
    _within_limits(source, limits.oversized_text(text))
    data = _toml(text, source)
    if table:
        tool = data.get("tool", {})
        if not isinstance(tool, dict):
            raise SpecError(source, "tool", f"must be a table, not {_kind(tool)}", f"use [tool.{table}.app] tables")
        found = tool.get(table)
        if found is None:
            raise SpecError(source, f"tool.{table}", "table not found", f"add a [tool.{table}.app] table")
        if not isinstance(found, dict):
            raise SpecError(source, f"tool.{table}", f"must be a table, not {_kind(found)}",
                            f"use [tool.{table}.app] tables")
        data = found
    _within_limits(source, limits.shape_problem(data), table and f"tool.{table}")
    _check_location(source, base_dir)
    return build_spec(data, source, base_dir, host)


def _within_limits(source: str, problem: Optional[Tuple[str, str]], prefix: Optional[str] = None) -> None:
    if problem:
        key, what = problem
        key = f"{prefix}.{key}" if prefix and key else key or prefix or ""
        raise SpecError(source, key, what)


def _toml(text: str, source: str) -> Dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, "", f"is not valid TOML: {exc}",
                        "fix the syntax at the line and column shown") from None
    except RecursionError:
        raise SpecError(source, "", "is nested too deeply to read", "flatten the arrays or tables") from None
    except UnicodeError as exc:  # pragma: no cover - tomllib raises TOMLDecodeError for most of these
        raise SpecError(source, "", f"is not valid text: {exc}") from None


def _check_location(source: str, base_dir: str) -> None:
    """The spec's path reaches the conf (the listener's --spec, default folders): refuse one it cannot carry."""
    problem = ini.problem_with(base_dir) or ini.problem_with(os.path.basename(source) or source)
    if problem:
        raise SpecError(repr(source), "", f"the spec file's path {problem}",
                        "move the spec (or the folder) to a path without it")


def build_spec(data: Mapping[str, Any], source: str, base_dir: str, host: HostDefaults) -> Spec:
    """Validate parsed TOML data into a Spec."""
    top = _Table(dict(data), "", source, TOP_LEVEL)
    if "app" not in data:
        top.fail("app", "is required", "add an [app] table with name and asgi")
    app = _app(_Table(data["app"], "app", source, ("name", "asgi", "factory", "directory", "python", "env", "user")),
               base_dir, host)
    supervisord = _supervisord(_Table(data.get("supervisord", {}), "supervisord", source,
                                      ("run_dir", "log_level", "serverurl", "fragment", "plugins")), base_dir, app.name)
    server = _server(_Table(data.get("server", {}), "server", source, (
        "bind", "workers", "graceful_timeout", "uvicorn", "backlog", "socket_mode", "socket_owner",
        "heartbeat_timeout", "startup_timeout", "startsecs")), base_dir, host)
    memory = _memory(_Table(data.get("memory", {}), "memory", source, (
        "per_worker", "budget", "limit", "check_interval", "limit_checks")))
    programs = _programs(data.get("programs", []), source, base_dir, app)
    migrate = None
    if "migrate" in data:
        migrate = _migrate(_Table(data["migrate"], "migrate", source, ("command", "timeout", "env")))
    crash_loop = _crash_loop(data.get("crash_loop", {}), source, app, programs)
    alerts = _alerts(data.get("alerts", []), source, base_dir)
    lt = _Table(data.get("listener", {}), "listener", source, ("reminder_interval", "send_retries"))
    listener = Listener(reminder_interval=float(lt.number("reminder_interval", 3600.0, minimum=1)),
                        send_retries=lt.number("send_retries", 3, integer=True, maximum=20))
    env_names = {n for table in [app.env, migrate.env if migrate else ()] + [p.env for p in programs] for n, _ in table}
    kubernetes = _kubernetes(_Table(data.get("kubernetes", {}), "kubernetes", source, KUBERNETES_KEYS), env_names)
    metrics = None
    if "metrics" in data:
        metrics = _metrics(_Table(data["metrics"], "metrics", source, ("bind", "allow_remote")), base_dir, server)
    release = _release(_Table(data["release"], "release", source, ("keep", "shared", "build"))) \
        if "release" in data else None
    https = None
    if "https" in data:
        https = read_https(_Table(data["https"], "https", source, HTTPS_KEYS), base_dir)
        # Behind the proxy the app must trust its X-Forwarded-* headers; keys the spec sets win.
        given = dict(server.uvicorn)
        server = dataclasses.replace(server, uvicorn=tuple(sorted({**uvicorn_defaults(server.bind), **given}.items())))
    spec = Spec(source=source, base_dir=base_dir, app=app, server=server, supervisord=supervisord, memory=memory,
                programs=programs, migrate=migrate, crash_loop=crash_loop, alerts=alerts, listener=listener,
                kubernetes=kubernetes, metrics=metrics, release=release, https=https, keys=_key_paths(data))
    _within_limits(source, limits.process_problem(spec))
    return spec


def _metrics(t: _Table, base_dir: str, server: Server) -> Metrics:
    """``[metrics]``: ``bind`` is HOST:PORT, tcp://HOST:PORT or unix:///path; off loopback only with
    ``allow_remote = true`` (the endpoint has no authentication)."""
    raw = t.text("bind", "127.0.0.1:9150")
    try:
        bind = parse_bind(raw if "://" in raw else f"tcp://{raw}", base_dir)
    except ValueError as exc:
        t.fail("bind", str(exc))
    t.safe("bind", bind.url)
    if bind.kind == "tcp" and not (bind.host == "localhost" or bind.host.startswith("127.")) \
            and not t.flag("allow_remote", False):
        t.fail("bind", f"{bind.host} is not loopback, and /metrics has no authentication",
               "bind 127.0.0.1 (scrape through a proxy or an SSH tunnel), or add allow_remote = true")
    if bind == server.bind:
        t.fail("bind", f"is server.bind ({bind.url}): the workers listen there", "choose another port or path")
    return Metrics(bind=bind.url)


SHARED_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*\Z")


def _release(t: _Table) -> Release:
    shared = t.get("shared", (list,), [], "a list of paths like [\"data\", \".env\"]")
    seen: List[str] = []
    for i, path in enumerate(shared):
        key = f"shared[{i}]"
        if not isinstance(path, str):
            t.fail(key, f"must be a string, not {_kind(path)}")
        norm = os.path.normpath(path) if path else ""
        if not SHARED_RE.match(path) or norm != path.rstrip("/") or norm.split("/")[0] in (".", "..") \
                or ".." in norm.split("/"):
            t.fail(key, f"{path!r} is not a relative path inside the release",
                   "name a file or folder of the app, like \"data\" or \".env\"")
        if norm in seen:
            t.fail(key, f"{path!r} is listed twice")
        seen.append(norm)
    build = t.command("build") if "build" in t.data else None
    return Release(keep=t.number("keep", 5, integer=True, minimum=0, maximum=1000), shared=tuple(seen), build=build)


def _app(t: _Table, base_dir: str, host: HostDefaults) -> App:
    name = t.text("name", pattern=NAME_RE, what="a name matching [a-z][a-z0-9_-]* (lowercase, starts with a letter)")
    if len(name) > 40:
        t.fail("name", "is longer than 40 characters")
    asgi = t.text("asgi", pattern=ASGI_RE, what="an import string like 'package.module:app' (or 'module:create_app()')")
    factory = t.flag("factory", False)
    if asgi.endswith("()"):
        asgi, factory = asgi[:-2], True
    directory = t.path_value("directory", base_dir, base_dir)
    python = t.text("python", host.python)
    t.safe("python", python)
    if not python:
        t.fail("python", "is empty", "remove the key to use the interpreter running supervisor-fastapi")
    if "python" in t.data:
        python = os.path.normpath(os.path.join(base_dir, os.path.expanduser(python))) if os.sep in python else python
    # Its folder goes first on every program's PATH (generate/conf.rendered_path), inside environment=.
    folder = os.path.dirname(python)
    problem = ini.env_value_problem(folder) or ("contains ':', the PATH separator" if ":" in folder else None)
    if problem:
        t.fail("python", f"its folder {folder!r} {problem} (it goes first on the programs' PATH)",
               "move the app's virtualenv to a folder without it")
    user = t.text("user", None, pattern=USER_RE, what="a user name")
    if user and ":" in user:
        # supervisord's user= takes a name only; "name:group" fails its parser ("Invalid user name").
        t.fail("user", f"{user!r} is not a user name (supervisord's user= takes no group)",
               f"use {user.split(':')[0]!r}")
    return App(name=name, asgi=asgi, factory=factory, directory=directory, python=python, env=t.env("env"), user=user)


def _supervisord(t: _Table, base_dir: str, app: str) -> Supervisord:
    run_dir = t.path_value("run_dir", base_dir, os.path.join(base_dir, "run"))
    # The control socket path must fit in sun_path (108 bytes on Linux).
    if len(Layout(run_dir).socket) > 100:
        t.fail("run_dir", f"{run_dir!r} is too long for a unix socket path (limit about 100 bytes)",
               "choose a shorter run_dir")
    levels = ("critical", "error", "warn", "info", "debug", "trace", "blather")
    log_level = t.text("log_level", "info")
    if log_level not in levels:
        t.fail("log_level", f"must be one of {', '.join(levels)}", did_you_mean(log_level, levels))
    serverurl = t.text("serverurl", None)
    if serverurl is None:
        for key in ("fragment", "plugins"):
            if key in t.data:
                t.fail(key, "applies to a conf.d fragment only",
                       'add serverurl = "unix:///var/run/supervisor.sock" (the supervisord that runs it), '
                       "or remove the key")
        return Supervisord(run_dir=run_dir, log_level=log_level)
    if not SERVERURL_RE.match(serverurl):
        t.fail("serverurl", f"{serverurl!r} is not a supervisord address",
               "use unix:///path/to/supervisor.sock (Debian: unix:///var/run/supervisor.sock) or http://HOST:PORT")
    if "log_level" in t.data:
        t.fail("log_level", "is the running supervisord's own setting when serverurl is set",
               "set loglevel= in its supervisord.conf, and remove the key here")
    fragment = t.path_value("fragment", base_dir, Names(app).fragment)
    return Supervisord(run_dir=run_dir, serverurl=serverurl, fragment=fragment, plugins=t.flag("plugins", False))


def parse_bind(value: str, base_dir: str) -> Bind:
    """``tcp://HOST:PORT`` or ``unix:///abs/path`` (a relative unix path resolves against the spec)."""
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path:
            raise ValueError("unix:// needs a path, like unix:///run/app.sock")
        path = os.path.normpath(os.path.join(base_dir, path))
        if len(path) > 100:
            raise ValueError(f"unix socket path {path!r} is too long (limit about 100 bytes)")
        return Bind(kind="unix", path=path)
    if value.startswith("tcp://"):
        rest = value[len("tcp://"):]
        if rest.startswith("["):
            raise ValueError("IPv6 addresses are not supported by supervisor's fcgi sockets (AF_INET only); "
                             "bind 127.0.0.1 or 0.0.0.0 and let the TLS proxy speak IPv6")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port:
            raise ValueError(f"{value!r} needs a host and a port, like tcp://127.0.0.1:8000")
        if host == "*":
            raise ValueError("'*' parses but fails at bind in supervisord; use 0.0.0.0 for every interface")
        if not HOST_RE.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
        # ASCII only: int() accepts other scripts' digits ("\u0668\u0660"), isdigit() even "\u00b2".
        if not re.match(r"^[0-9]{1,5}\Z", port) or not 0 < int(port) < 65536:
            raise ValueError(f"port {port!r} must be a number from 1 to 65535")
        return Bind(kind="tcp", host=host, port=int(port))
    raise ValueError(f"{value!r} must start with tcp:// or unix://")


def _server(t: _Table, base_dir: str, host: HostDefaults) -> Server:
    try:
        bind = parse_bind(t.text("bind", "tcp://127.0.0.1:8000"), base_dir)
    except ValueError as exc:
        t.fail("bind", str(exc))
    t.safe("bind", bind.url)
    workers_value = t.get("workers", (int, str), "auto", "an integer >= 1 or \"auto\"")
    if isinstance(workers_value, str):
        if workers_value != "auto":
            t.fail("workers", f"must be an integer >= 1 or \"auto\", not {workers_value!r}")
        workers = max(1, host.cpu_count)
    else:
        workers = t.number("workers", integer=True, minimum=1, maximum=512)
    graceful = float(t.number("graceful_timeout", 30.0, minimum=0, maximum=3600))
    socket_mode = t.text("socket_mode", None, pattern=re.compile(r"^0?[0-7]{3}\Z"), what="an octal mode like \"0660\"")
    socket_owner = t.text("socket_owner", None, pattern=USER_RE, what="user or user:group")
    if bind.kind == "tcp" and (socket_mode or socket_owner):
        t.fail("socket_mode" if socket_mode else "socket_owner", "only applies to unix:// binds")
    heartbeat = t.number("heartbeat_timeout", None, minimum=2, maximum=3600)
    startup = t.number("startup_timeout", None, minimum=2, maximum=3600)
    return Server(bind=bind, workers=workers, graceful_timeout=graceful, uvicorn=_uvicorn(t),
                  backlog=t.number("backlog", 2048, integer=True, minimum=1, maximum=65535),
                  socket_mode=socket_mode, socket_owner=socket_owner,
                  heartbeat_timeout=float(heartbeat) if heartbeat is not None else None,
                  startup_timeout=float(startup) if startup is not None else None,
                  startsecs=t.number("startsecs", 1, integer=True, minimum=0, maximum=600))


def _uvicorn(parent: _Table) -> Tuple[Tuple[str, Any], ...]:
    data = parent.get("uvicorn", (dict,), {}, "a table")
    known = sorted(set(UVICORN_SETTINGS) | set(UVICORN_OWNED))
    t = _Table(data, parent.key("uvicorn"), parent.source, known)
    out = []
    for key in sorted(data):
        if key in UVICORN_OWNED:
            t.fail(key, "is managed by supervisor-fastapi", UVICORN_OWNED[key])
        out.append((key, _uvicorn_value(t, key, UVICORN_SETTINGS[key])))
    return tuple(out)


def _uvicorn_value(t: _Table, key: str, setting: UvicornSetting) -> Any:
    value = t.data[key]
    kind = setting.kind
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            t.fail(key, "must be a string or an array of strings")
        for item in items:
            t.safe(key, item)
        return tuple(items)
    expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "env": (str,)}[kind]
    value = t.get(key, expected, what={"bool": "true or false", "int": "an integer", "float": "a number",
                                       "str": "a string", "env": "the name of an environment variable"}[kind])
    if kind == "env" and not ENV_NAME_RE.match(value):
        t.fail(key, f"{value!r} is not an environment variable name",
               "name the variable that holds the value, like \"SHOP_TLS_KEY_PASSWORD\"; never the value itself")
    if kind in ("int", "float") and value < 0:
        t.fail(key, "must not be negative")
    if key in UVICORN_POSITIVE and value < 1:
        t.fail(key, f"must be at least 1, not {value!r}", UVICORN_POSITIVE[key])
    if kind == "str":
        t.safe(key, value)
        if setting.choices and value not in setting.choices:
            t.fail(key, f"must be one of {', '.join(setting.choices)}", did_you_mean(value, setting.choices))
    return value


def _memory(t: _Table) -> Memory:
    budget_value = t.get("budget", (str, int), "90%", "a share like \"80%\" or a size like \"3GB\"")
    if isinstance(budget_value, str) and budget_value.strip().endswith("%"):
        try:
            pct = float(budget_value.strip()[:-1])
        except ValueError:
            t.fail("budget", f"{budget_value!r} is not a percentage like \"80%\"")
        if not 0 < pct <= 100:
            t.fail("budget", "must be a percentage between 0 and 100")
        budget = Budget(fraction=pct / 100)
    else:
        budget = Budget(bytes=t.size("budget"))
    return Memory(per_worker=t.size("per_worker"), budget=budget, limit=t.size("limit"),
                  check_interval=float(t.number("check_interval", 10.0, minimum=0.2, maximum=3600)),
                  limit_checks=t.number("limit_checks", 2, integer=True, minimum=1, maximum=100))


def _programs(data: Any, source: str, base_dir: str, app: App) -> Tuple[Program, ...]:
    if not isinstance(data, list):
        raise SpecError(source, "programs", f"must be an array of tables ([[programs]]), not {_kind(data)}")
    names = Names(app.name)
    # Full supervisor names already taken: the web group and the programs we render.
    taken = {names.web: "the web workers", names.migrate: "the migration", names.listener: "the event listener",
             names.watchdog: "the watchdog", names.metrics: "the metrics exporter",
             names.proxy: "the TLS proxy ([https])"}
    out = []
    for i, item in enumerate(data):
        t = _Table(item, f"programs[{i}]", source, ("name", "command", "numprocs", "env", "directory", "autostart"))
        name = t.text("name", pattern=NAME_RE, what="a name matching [a-z][a-z0-9_-]*")
        if name == app.name:
            # crash_loop.programs.<name> could not tell the program from the web workers.
            t.fail("name", f"{name!r} is already used: it is app.name", "give each program its own name")
        if name in RESERVED_PROGRAMS:
            t.fail("name", f"{name!r} is reserved: supervisor-fastapi renders {names.program(name)} for "
                   f"{taken[names.program(name)]}", "choose another name")
        full = names.program(name)
        if full in taken:
            t.fail("name", f"{name!r} is already used (supervisor program {full} is {taken[full]})",
                   "give each program its own name")
        taken[full] = f"programs[{i}]"
        out.append(Program(name=name, command=t.command("command"),
                           numprocs=t.number("numprocs", 1, integer=True, minimum=1, maximum=512),
                           env=t.env("env"), directory=t.path_value("directory", base_dir, None),
                           autostart=t.flag("autostart", True)))
    return tuple(out)


def _migrate(t: _Table) -> Migrate:
    return Migrate(command=t.command("command"), timeout=float(t.number("timeout", 600.0, minimum=1, maximum=86400)),
                   env=t.env("env"))


BACKOFF_KEYS = ("restarts", "window", "backoff_initial", "backoff_max", "backoff_reset", "jitter", "retry_fatal")


def _policy(t: _Table, base: Policy) -> Policy:
    b = Policy(
        restarts=t.number("restarts", base.restarts, integer=True, minimum=1, maximum=1000),
        window=float(t.number("window", base.window, minimum=1)),
        backoff_initial=float(t.number("backoff_initial", base.backoff_initial, minimum=0.1)),
        backoff_max=float(t.number("backoff_max", base.backoff_max, minimum=0.1)),
        backoff_reset=float(t.number("backoff_reset", base.backoff_reset, minimum=1)),
        jitter=float(t.number("jitter", base.jitter, minimum=0, maximum=1)),
        retry_fatal=t.flag("retry_fatal", base.retry_fatal),
    )
    if b.backoff_max < b.backoff_initial:
        t.fail("backoff_max", f"({b.backoff_max:g}) must be >= backoff_initial ({b.backoff_initial:g})")
    return b


def _crash_loop(data: Any, source: str, app: App, programs: Tuple[Program, ...]) -> CrashLoop:
    t = _Table(data, "crash_loop", source, BACKOFF_KEYS + ("programs",))
    default = _policy(t, Policy())
    overrides_data = t.get("programs", (dict,), {}, "a table of program name = { ... }")
    names = [app.name] + [p.name for p in programs]
    overrides = []
    for name, item in sorted(overrides_data.items()):
        if name not in names:
            t.fail(f"programs.{name}", "is not a program of this spec", did_you_mean(name, names))
        overrides.append((name, _policy(_Table(item, f"crash_loop.programs.{name}", source, BACKOFF_KEYS), default)))
    return CrashLoop(default=default, overrides=tuple(overrides))


ALERT_KEYS: Dict[str, Tuple[str, ...]] = {
    "webhook": ("url", "timeout", "headers"),
    "email": ("host", "port", "starttls", "ssl", "from", "to", "username", "username_env", "password_env",
              "password_file", "timeout", "subject_prefix"),
    "command": ("command", "timeout", "user", "run_as_root", "pass_env"),
    "log": ("path",),
}


def _alerts(data: Any, source: str, base_dir: str) -> Tuple[AlertChannel, ...]:
    if not isinstance(data, list):
        raise SpecError(source, "alerts", f"must be an array of tables ([[alerts]]), not {_kind(data)}")
    out, names = [], set()
    for i, item in enumerate(data):
        path = f"alerts[{i}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(kind, str) or kind not in ALERT_KEYS:
            hint = did_you_mean(str(kind), ALERT_KEYS) or f"use one of: {', '.join(ALERT_KEYS)}"
            raise SpecError(source, f"{path}.type", f"{kind!r} is not an alert type", hint)
        t = _Table(item, path, source, ("type", "name") + ALERT_KEYS[kind])
        name = t.text("name", kind, pattern=NAME_RE, what="a name matching [a-z][a-z0-9_-]*")
        if name in names:
            t.fail("name", f"{name!r} is used by two alerts", "give each [[alerts]] its own name")
        names.add(name)
        out.append(AlertChannel(type=kind, name=name, options=tuple(sorted(_alert_options(t, kind, base_dir).items()))))
    _other_channels_secrets(out, source)
    return tuple(out)


def _webhook_options(t: _Table, base_dir: str) -> Dict[str, Any]:
    url = t.text("url")
    if not re.match(r"^https?://[^\s/]+", url) or re.search(r"\s", url) or _CONTROL_RE.search(url):
        t.fail("url", "is not an http:// or https:// URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        t.fail("url", f"is not a usable URL ({exc})")
    if not parts.hostname:
        t.fail("url", "has no host name")
    headers = t.get("headers", (dict,), {}, "a table of header = \"value\"")
    for h, v in headers.items():
        if not isinstance(v, str) or not re.match(r"^[A-Za-z0-9-]+\Z", h) or ini.problem_with(v):
            t.fail(f"headers.{h}", "must be a header name with a one-line string value")
    return {"url": url, "timeout": float(t.number("timeout", 5.0, minimum=0.1, maximum=120)),
            "headers": tuple(sorted(headers.items()))}


def _email_addresses(t: _Table) -> Tuple[str, ...]:
    to = t.get("to", (str, list), what="an address or an array of addresses")
    to_list = [to] if isinstance(to, str) else to
    if not to_list:
        t.fail("to", "is empty", "give at least one address")
    if not ADDRESS_RE.match(t.text("from")):
        t.fail("from", f"{t.data['from']!r} is not an email address")
    for addr in to_list:
        if not isinstance(addr, str) or not ADDRESS_RE.match(addr):
            t.fail("to", f"{addr!r} is not an email address")
    return tuple(to_list)


def _email_credentials(t: _Table, base_dir: str) -> Dict[str, Any]:
    if "password_env" in t.data and "password_file" in t.data:
        t.fail("password_file", "password_env and password_file cannot both be set", "keep one")
    if "username" in t.data and "username_env" in t.data:
        t.fail("username", "username and username_env cannot both be set", "keep one")
    username = t.text("username", None)
    if username is not None and (not username or _CONTROL_RE.search(username)):
        t.fail("username", "must be a non-empty string without control characters")
    return {"username_env": t.text("username_env", None, pattern=ENV_NAME_RE, what="an environment variable name"),
            "password_env": t.text("password_env", None, pattern=ENV_NAME_RE, what="an environment variable name"),
            "username": username, "password_file": t.path_value("password_file", base_dir, None)}


def _email_options(t: _Table, base_dir: str) -> Dict[str, Any]:
    to = _email_addresses(t)
    prefix = t.text("subject_prefix", "[supervisor-fastapi]")
    if _CONTROL_RE.search(prefix):
        t.fail("subject_prefix", "contains a control character (a line break would end the Subject header)")
    opts = {"host": t.text("host", "127.0.0.1", pattern=HOST_RE, what="a host name or IPv4 address"),
            "port": t.number("port", 587, integer=True, minimum=1, maximum=65535),
            "starttls": t.flag("starttls", True), "ssl": t.flag("ssl", False), "from": t.data["from"],
            "to": to, "timeout": float(t.number("timeout", 10.0, minimum=0.1, maximum=120)),
            **_email_credentials(t, base_dir), "subject_prefix": prefix}
    if opts["ssl"] and opts["starttls"] and "starttls" in t.data:
        t.fail("ssl", "ssl (implicit TLS) and starttls cannot both be on")
    if opts["ssl"]:
        opts["starttls"] = False
    return opts


def _command_options(t: _Table, base_dir: str) -> Dict[str, Any]:
    user = t.text("user", None, pattern=USER_RE, what="a user name")
    if user and ":" in user:
        t.fail("user", f"{user!r} is not a user name (no group)", f"use {user.split(':')[0]!r}")
    run_as_root = t.flag("run_as_root", False)
    if run_as_root and user:
        t.fail("run_as_root", "run_as_root = true and user cannot both be set", "keep one")
    return {"command": t.command("command"), "timeout": float(t.number("timeout", 10.0, minimum=0.1, maximum=600)),
            "user": user, "run_as_root": run_as_root, "pass_env": _pass_env(t)}


def _pass_env(t: _Table) -> Tuple[str, ...]:
    """The variables a command alert takes from the listener's environment (besides PATH, HOME, LANG)."""
    names = t.get("pass_env", (list,), [], "an array of environment variable names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            t.fail(f"pass_env[{i}]", f"{name!r} is not an environment variable name")
        if name.startswith("SUPERVISOR_"):
            t.fail(f"pass_env[{i}]", f"{name} is supervisord's or the listener's own (it may hold every channel's "
                   "settings)", "pass only the variables the command itself needs")
    return tuple(sorted(set(names)))


def _other_channels_secrets(alerts: Sequence[AlertChannel], source: str) -> None:
    """A command alert may not pass on another channel's credentials (an email's username_env
    or password_env): it usually runs as app.user, who could read them."""
    owned = {a.get(k): (i, k) for i, a in enumerate(alerts) if a.type == "email"
             for k in ("username_env", "password_env") if a.get(k)}
    for i, a in enumerate(alerts):
        for name in (a.get("pass_env") or ()) if a.type == "command" else ():
            if name in owned:
                other, key = owned[name]
                raise SpecError(source, f"alerts[{i}].pass_env", f"{name} is alerts[{other}].{key}, another "
                                "channel's credential", "a command alert gets only what its own channel needs")


def _log_options(t: _Table, base_dir: str) -> Dict[str, Any]:
    return {"path": t.path_value("path", base_dir, None)}


# One reader per [[alerts]] type; the keys each accepts are ALERT_KEYS[type].
ALERT_READERS = {"webhook": _webhook_options, "email": _email_options, "command": _command_options,
                 "log": _log_options}


def _alert_options(t: _Table, kind: str, base_dir: str) -> Dict[str, Any]:
    return ALERT_READERS[kind](t, base_dir)


KUBERNETES_KEYS = ("image", "replicas", "namespace", "service_type", "port", "service_port", "python", "directory",
                   "secret", "secret_env", "run_as_user", "health_path", "prestop_delay")
IMAGE_RE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]*\Z")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")


def _kubernetes(t: _Table, env_names: "set[str]") -> Kubernetes:
    word = re.compile(r"^\S+\Z")
    service_type = t.text("service_type", "ClusterIP")
    if service_type not in SERVICE_TYPES:
        t.fail("service_type", f"must be one of {', '.join(SERVICE_TYPES)}", did_you_mean(service_type, SERVICE_TYPES))
    secret = t.text("secret", None, pattern=DNS_SUBDOMAIN_RE,
                    what="a Secret name (lowercase letters, digits, '-', '.')")
    if secret and len(secret) > 253:
        t.fail("secret", "is longer than 253 characters")
    secret_env = t.get("secret_env", (list,), [], "an array of environment variable names")
    for i, name in enumerate(secret_env):
        if not isinstance(name, str) or name not in env_names:
            t.fail(f"secret_env[{i}]", f"{name!r} is not in app.env, migrate.env or programs[].env",
                   did_you_mean(str(name), env_names) or "list the names of env entries to take from the Secret")
    directory = t.text("directory", None, pattern=re.compile(r"^/\S*\Z"), what="an absolute path inside the image")
    uid = t.number("run_as_user", 10001, integer=True, minimum=0, maximum=2**31 - 1)
    if uid == 0:
        t.fail("run_as_user", "0 is root", "use the numeric id of an unprivileged user in the image, like 10001")
    port = t.get("port", (int,), 8000, "an integer")
    if not 1024 <= port <= 65535:
        t.fail("port", f"must be between 1024 and 65535, not {port!r}",
               "a non-root container cannot bind ports below 1024; set service_port = 80 instead")
    return Kubernetes(
        image=t.text("image", None, pattern=IMAGE_RE,
                     what="an image reference like \"registry.example.com/shop:1.4.2\""),
        replicas=t.number("replicas", 2, integer=True, minimum=0, maximum=1000),
        namespace=t.text("namespace", None, pattern=DNS_LABEL_RE,
                         what="a namespace name (lowercase letters, digits and '-', at most 63)"),
        service_type=service_type,  # checked against SERVICE_TYPES above
        port=port, service_port=t.number("service_port", 80, integer=True, minimum=1, maximum=65535),
        python=t.text("python", "python", pattern=word, what="an interpreter path or name without spaces"),
        directory=directory, secret=secret, secret_env=tuple(sorted(set(secret_env))), run_as_user=uid,
        health_path=t.text("health_path", None, pattern=re.compile(r"^/[\x21-\x7e]*\Z"),
                           what="a URL path like \"/healthz\""),
        prestop_delay=t.number("prestop_delay", 5, integer=True, minimum=0, maximum=300))


def _key_paths(data: Mapping[str, Any]) -> "frozenset[str]":
    """The dotted key paths the file sets: ``server.bind``, ``programs[0].env``; a table's name when it is empty."""
    out = set()
    for top, value in data.items():
        if isinstance(value, dict):
            out |= {f"{top}.{k}" for k in value} or {top}
        elif isinstance(value, list):
            out |= {f"{top}[{i}].{k}" for i, item in enumerate(value) if isinstance(item, dict) for k in item} or {top}
        else:
            out.add(top)
    return frozenset(out)


# --- finding and loading the file -------------------------------------------------------


def pyproject_with_table(folder: str) -> Optional[str]:
    """``folder``/pyproject.toml if it has a [tool.supervisor-fastapi] table, else None."""
    pyproject = os.path.join(folder, "pyproject.toml")
    try:
        if os.path.getsize(pyproject) > limits.SPEC_CHARS:
            return pyproject  # too large to parse here: the loader says so in one line
        with open(pyproject, "rb") as f:
            tool = tomllib.load(f).get("tool", {})
        # `tool = 1` or a hostile file: not ours to read, the loader reports it if it is chosen
        if isinstance(tool, dict) and PYPROJECT_TABLE in tool:
            return pyproject
    except (OSError, tomllib.TOMLDecodeError, RecursionError, UnicodeError):
        pass
    return None


def _holds_tool_table(path: str) -> bool:
    """Whether the TOML file at ``path`` is a pyproject: [tool.supervisor-fastapi] and no [app]."""
    try:
        # A file over the limit is not parsed here (5 MB took seconds): the loader refuses it in one line.
        if os.path.getsize(path) > limits.SPEC_CHARS:
            return False
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, RecursionError, UnicodeError):
        return False  # the loader reads it as a spec and reports what is wrong
    tool = data.get("tool")
    return isinstance(tool, dict) and PYPROJECT_TABLE in tool and "app" not in data


def find_spec(config: Optional[str], cwd: str) -> Tuple[str, Optional[str]]:
    """The spec file to read and, for pyproject.toml, the tool table name."""
    if config:
        path = os.path.abspath(os.path.join(cwd, config))
        if not os.path.isfile(path):
            raise UserError(f"{config}: no such spec file; create one with `supervisor-fastapi init`")
        # A pyproject.toml by another name (conf/pyproject-example.toml, a copy) is one too: a
        # spec file has no [tool] table, and reading it as a spec only said "project: unknown key".
        named = os.path.basename(path) == "pyproject.toml"
        return path, (PYPROJECT_TABLE if named or _holds_tool_table(path) else None)
    own = os.path.join(cwd, SPEC_FILENAME)
    if os.path.isfile(own):
        return own, None
    pyproject = pyproject_with_table(cwd)
    if pyproject:
        return pyproject, PYPROJECT_TABLE
    raise UserError(f"no {SPEC_FILENAME} here ({cwd}) and no [tool.{PYPROJECT_TABLE}] in pyproject.toml; "
                    "run `supervisor-fastapi init` or pass -c PATH")


def load_spec(config: Optional[str] = None, cwd: Optional[str] = None, host: Optional[HostDefaults] = None) -> Spec:
    """Find, read and parse the spec (the only place that reads it from disk)."""
    path, table = find_spec(config, cwd or os.getcwd())
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # Enough to name the longest line of an oversized file, never a whole huge one.
            data = f.read(limits.SCAN_BYTES)
        if max(size, len(data)) > limits.SPEC_CHARS:
            _within_limits(path, limits.oversized_text(data.decode("utf-8", "replace"), max(size, len(data))))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    return parse_spec(text, path, os.path.dirname(path), host, table)
