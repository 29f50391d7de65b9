"""The deployment spec as immutable typed records, and the size helpers they use.

Constructing a record has no side effects; ``spec.load`` builds them from TOML.
"""

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Literal, Optional, Tuple, get_args

from ..contracts.settings import Policy
from ..contracts.sizes import SIZE_UNITS as _SIZE_UNITS
from ..contracts.sizes import format_size  # noqa: F401  (format_size: re-exported)
from ..layout import Releases

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Bind:
    """Where the shared socket listens: ``tcp://HOST:PORT`` or ``unix:///abs/path``."""

    kind: str  # "tcp" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}" if self.kind == "tcp" else f"unix://{self.path}"


@dataclass(frozen=True)
class App:
    name: str
    asgi: str
    factory: bool
    directory: str
    python: str
    env: Tuple[Tuple[str, str], ...] = ()
    user: Optional[str] = None


@dataclass(frozen=True)
class Server:
    bind: Bind
    workers: int
    graceful_timeout: float = 30.0
    uvicorn: Tuple[Tuple[str, Any], ...] = ()
    backlog: int = 2048
    socket_mode: Optional[str] = None
    socket_owner: Optional[str] = None
    heartbeat_timeout: Optional[float] = None
    startup_timeout: Optional[float] = None
    startsecs: int = 1


@dataclass(frozen=True)
class Budget:
    """A share of host RAM (``fraction``) or an absolute byte count."""

    fraction: Optional[float] = None
    bytes: Optional[int] = None

    def of(self, total: int) -> int:
        return int(total * self.fraction) if self.fraction is not None else int(self.bytes or 0)

    def describe(self) -> str:
        return f"{self.fraction * 100:g}% of RAM" if self.fraction is not None else format_size(self.bytes or 0)


@dataclass(frozen=True)
class Memory:
    per_worker: Optional[int] = None
    budget: Budget = Budget(fraction=0.9)
    limit: Optional[int] = None
    check_interval: float = 10.0
    limit_checks: int = 2


@dataclass(frozen=True)
class Program:
    name: str
    command: str
    numprocs: int = 1
    env: Tuple[Tuple[str, str], ...] = ()
    directory: Optional[str] = None
    autostart: bool = True


@dataclass(frozen=True)
class Hosting:
    """Whose supervisord runs the app, and what the rendered conf is for it.

    Chosen in one place (``Supervisord.hosting``) and asked everywhere else: the CLI commands,
    the renderer, the checks and the Caddy decision never look at ``serverurl`` themselves.
    """

    # An existing supervisord (the OS package's, supervisord.serverurl) runs the app from a
    # conf.d fragment beside other apps: `up`/`down` apply this app's groups there and never
    # start or stop that supervisord, which logs where its own conf says.
    shared: bool
    # The conf is a conf.d fragment (programs only) for a supervisord whose conf is not ours:
    # always when shared, and for `render --fragment` (installed by hand).
    fragment: bool
    # The conf names our plugins (the controller, supervisorctl's commands): the supervisord
    # that reads it must import this package, or it refuses to start.
    plugins: bool

    @property
    def own(self) -> bool:
        """A whole supervisord.conf for the supervisord the deployment starts (and may add programs to)."""
        return not self.shared and not self.fragment


@dataclass(frozen=True)
class Supervisord:
    run_dir: str
    log_level: str = "info"
    # An existing supervisord (the OS package's) that runs this app from a conf.d fragment;
    # None: the deployment starts and owns its own supervisord. Ask ``hosting()``, not this.
    serverurl: Optional[str] = None
    fragment: Optional[str] = None  # where `up` writes the fragment (with serverurl only)
    plugins: bool = False  # that supervisord imports supervisor_fastapi (the controller)

    def hosting(self, fragment: bool = False, with_plugins: bool = False) -> Hosting:
        """The one own-or-shared decision; ``fragment``/``with_plugins`` are `render`'s and
        `check`'s flags, which ask for a fragment of an own supervisord's spec (a shared one
        always is one)."""
        shared = self.serverurl is not None
        fragment = fragment or shared
        # A whole conf is read by the supervisord we start with this package's Python: plugins
        # on. A fragment goes to someone else's supervisord: only when the spec or flag says its
        # Python has the package.
        plugins = with_plugins or (self.plugins if shared else not fragment)
        return Hosting(shared=shared, fragment=fragment, plugins=plugins)


@dataclass(frozen=True)
class Migrate:
    command: str
    timeout: float = 600.0
    env: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Release:
    """``[release]``: immutable releases under app.directory (docs/releases.md)."""

    keep: int = 5  # old releases kept besides the current and the previous one
    shared: Tuple[str, ...] = ()  # paths (relative) linked from shared/ into every release
    build: Optional[str] = None  # a command run in the new release's folder before its pre-flight


@dataclass(frozen=True)
class CrashLoop:
    # The crash-loop settings are one record on both sides: the spec reads them into
    # contracts.settings.Policy and the controller inside supervisord reads the same record back from the conf.
    default: Policy = Policy()
    overrides: Tuple[Tuple[str, Policy], ...] = ()

    def for_program(self, name: str) -> Policy:
        return dict(self.overrides).get(name, self.default)


@dataclass(frozen=True)
class AlertChannel:
    """One ``[[alerts]]`` entry: a channel's type, name and settings (``options``: the type's own
    validated keys). The listener builds its live ``listener.channels.Channel`` from it."""

    type: str  # "webhook" | "email" | "command" | "log"
    name: str
    options: Tuple[Tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Listener:
    reminder_interval: float = 3600.0
    send_retries: int = 3


@dataclass(frozen=True)
class Metrics:
    """``[metrics]``: where the exporter serves /metrics (tcp://HOST:PORT or unix:///path)."""

    bind: str = "tcp://127.0.0.1:9150"


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
SERVICE_TYPES: Tuple[str, ...] = get_args(ServiceType)


@dataclass(frozen=True)
class Kubernetes:
    """``[kubernetes]``: what the kubernetes render target needs beyond the shared keys."""

    image: Optional[str] = None  # required by the kubernetes target only
    replicas: int = 2
    namespace: Optional[str] = None
    service_type: ServiceType = "ClusterIP"
    port: int = 8000
    service_port: int = 80
    python: str = "python"  # the interpreter inside the image
    directory: Optional[str] = None  # working folder inside the image (default: its WORKDIR)
    secret: Optional[str] = None  # the Secret's name (default: <app>-env)
    secret_env: Tuple[str, ...] = ()
    run_as_user: int = 10001
    health_path: Optional[str] = None
    prestop_delay: int = 5


ProxyKind = Literal["caddy", "nginx"]
PROXIES: Tuple[str, ...] = get_args(ProxyKind)
# "auto": ACME (Caddy itself; for nginx, certbot's files); "internal": Caddy's own CA;
# "files": the cert and key given.
TlsMode = Literal["auto", "internal", "files"]


@dataclass(frozen=True)
class Https:
    """``[https]``: a TLS termination proxy in front of the workers (generate/caddy.py, nginx.py)."""

    domains: Tuple[str, ...]
    tls: TlsMode = "auto"
    cert: Optional[str] = None  # with tls = "files" (and nginx with "auto": certbot's paths)
    key: Optional[str] = None
    email: Optional[str] = None
    https_port: int = 443
    http_port: int = 80  # 0: no plain-HTTP listener, so no redirect
    proxy: ProxyKind = "caddy"
    # Caddy only: false when the OS's Caddy serves the site (a snippet to import, no program).
    supervised: bool = True


@dataclass(frozen=True)
class Spec:
    source: str  # absolute path of the spec file
    base_dir: str
    app: App
    server: Server
    supervisord: Supervisord
    memory: Memory = Memory()
    programs: Tuple[Program, ...] = ()
    migrate: Optional[Migrate] = None
    crash_loop: CrashLoop = CrashLoop()
    alerts: Tuple[AlertChannel, ...] = ()
    listener: Listener = Listener()
    kubernetes: Kubernetes = Kubernetes()
    metrics: Optional[Metrics] = None  # None: no [metrics] table, no exporter, no request counting
    release: Optional[Release] = None  # release mode; None: the code in app.directory is changed in place
    https: Optional[Https] = None
    # Dotted paths of the keys the file sets ("server.bind", "programs[0].env", "alerts"),
    # so a target can name the ones it ignores.
    keys: FrozenSet[str] = frozenset()

    @property
    def run_dir(self) -> str:
        return self.supervisord.run_dir

    @property
    def workdir(self) -> str:
        """Where the app's processes run: app.directory, or in release mode its ``current`` symlink
        (supervisord chdirs through it at each spawn, so every start path starts the current release)."""
        return Releases(self.app.directory).current if self.release else self.app.directory


@dataclass(frozen=True)
class HostDefaults:
    """What a spec may default to from the host; injected so parsing stays pure."""

    python: str = field(default_factory=lambda: sys.executable)
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)


# --- sizes and durations ----------------------------------------------------------------


def parse_size(text: str) -> int:
    """'1GB', '512MiB', '1.5G' or '2048' (bytes) to bytes; K/M/G/T are powers of 1024."""
    match = SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like '512MB' or '1.5GB'")
    number, unit = match.groups()
    unit = (unit or "").upper().replace("I", "").rstrip("B") or ("B" if unit else "")
    return int(float(number) * _SIZE_UNITS[unit])
