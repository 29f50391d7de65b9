"""The one authority for names and paths: every supervisor program and group name and every
file under run_dir is built here and nowhere else.

The generator renders these names into the conf; each running process gets the ones it
needs from the conf (its command line, or the options of its plugin section), never by
rebuilding them. Standard library only: supervisord, the listener and the worker import it.
"""

import os
from dataclasses import dataclass
from typing import List, Optional

# File names under run_dir (and its workers/ folder), each written by one process.
SOCKET_FILE = "supervisor.sock"  # supervisord's control socket
PIDFILE = "supervisord.pid"
LOGFILE = "supervisord.log"
LOG_DIR = "logs"
STATE_DIR = "workers"  # the workers' ready/heartbeat files; the only folder the app user writes
LISTENER_STATE = "listener-state.json"  # the listener: last alert and its results
ALERT_JOURNAL = "alerts-undelivered.jsonl"  # the listener: alerts no channel took
LISTENER_SPOOL = "listener-spool.jsonl"  # the plugin: events for a listener that is not running
ALERTS_LOG = "alerts.log"  # the `log` alert channel's default file
WATCHDOG_MEMO = "watchdog-state.json"  # the watchdog: consecutive over-limit counts
# The releases' record (builds, migration results, which one was current): written by the
# operator's CLI (root) only; the migration program reads it (run_dir/ is root's, so the app
# user cannot forge it).
RELEASE_RECORD = "releases.json"
# Release mode, under app.directory: one folder per deploy, the serving one, the shared files.
RELEASES_DIR = "releases"
CURRENT_LINK = "current"
SHARED_DIR = "shared"
PROXY_DIR = "proxy"  # the supervised TLS proxy's own files (Caddy: certificates, keys, autosave)
OPERATION_LOCK = "operation.lock"  # the CLI: held by `up` and `down` while they run (flock)
# Where Debian's and Ubuntu's `supervisor` package includes conf.d fragments from.
OS_CONF_D = "/etc/supervisor/conf.d"


@dataclass(frozen=True)
class Names:
    """Program and group names of one app; the web group is the app's own name."""

    app: str

    @property
    def web(self) -> str:
        return self.app

    @property
    def migrate(self) -> str:
        return f"{self.app}_migrate"

    @property
    def listener(self) -> str:
        return f"{self.app}_listener"

    @property
    def watchdog(self) -> str:
        return f"{self.app}_watchdog"

    @property
    def metrics(self) -> str:
        """The Prometheus exporter ([metrics])."""
        return f"{self.app}_metrics"

    def release_log(self, release_id: str) -> str:
        """The log name (under logs/) of the migration and build `deploy` runs for one release."""
        return f"{self.migrate}.{release_id}"

    @property
    def proxy(self) -> str:
        """The supervised TLS proxy (``[https]`` with proxy = "caddy")."""
        return f"{self.app}_proxy"

    @property
    def caddyfile(self) -> str:
        """File name of the Caddyfile, beside the spec (and the default conf)."""
        return f"{self.app}.Caddyfile"

    @property
    def caddy_snippet(self) -> str:
        """File name of the Caddy site block an OS-packaged Caddy imports."""
        return f"{self.app}.caddy"

    @property
    def nginx_site(self) -> str:
        """File name of the nginx site file (``render --target nginx``)."""
        return f"{self.app}.nginx.conf"

    def program(self, name: str) -> str:
        """The group of a ``[[programs]]`` entry."""
        return f"{self.app}_{name}"

    @property
    def fragment(self) -> str:
        """The default path of this app's conf.d fragment for an OS-packaged supervisord."""
        return os.path.join(OS_CONF_D, f"{self.app}.conf")

    @property
    def rpc_namespace(self) -> str:
        """The XML-RPC namespace of this app's ``[rpcinterface:...]`` section."""
        return f"fastapi_{self.app}"

    @staticmethod
    def numbered(group: str) -> str:
        """supervisord's ``process_name`` for a numbered program: ``<group>_00`` ..."""
        return "%(program_name)s_%(process_num)02d"


# Program names a [[programs]] entry may not take: they collide with the ones above.
RESERVED_PROGRAMS = ("migrate", "listener", "watchdog", "metrics", "proxy")


@dataclass(frozen=True)
class Layout:
    """Where the files a deployment writes live, all under run_dir."""

    run_dir: str

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, SOCKET_FILE)

    @property
    def pidfile(self) -> str:
        return os.path.join(self.run_dir, PIDFILE)

    @property
    def operation_lock(self) -> str:
        return os.path.join(self.run_dir, OPERATION_LOCK)

    @property
    def logfile(self) -> str:
        return os.path.join(self.run_dir, LOGFILE)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.run_dir, LOG_DIR)

    @property
    def state_dir(self) -> str:
        """Worker ready/heartbeat files."""
        return os.path.join(self.run_dir, STATE_DIR)

    @property
    def listener_state(self) -> str:
        return os.path.join(self.run_dir, LISTENER_STATE)

    @property
    def listener_spool(self) -> str:
        return os.path.join(self.run_dir, LISTENER_SPOOL)

    @property
    def alert_journal(self) -> str:
        return os.path.join(self.run_dir, ALERT_JOURNAL)

    @property
    def alerts_log(self) -> str:
        return os.path.join(self.run_dir, ALERTS_LOG)

    @property
    def watchdog_memo(self) -> str:
        return os.path.join(self.run_dir, WATCHDOG_MEMO)

    @property
    def release_record(self) -> str:
        return os.path.join(self.run_dir, RELEASE_RECORD)

    @property
    def proxy_dir(self) -> str:
        """The supervised proxy's HOME, storage and config autosave (its user's alone, 0700)."""
        return os.path.join(self.run_dir, PROXY_DIR)

    @property
    def proxy_storage(self) -> str:
        """Caddy's certificate storage (``storage file_system``)."""
        return os.path.join(self.proxy_dir, "data")

    def program_log(self, program: str) -> str:
        return os.path.join(self.log_dir, f"{program}.log")

    def dirs(self) -> List[str]:
        """Folders that must exist before supervisord starts (it checks log folders)."""
        return [self.run_dir, self.log_dir, self.state_dir]


@dataclass(frozen=True)
class Releases:
    """Release mode's folders under app.directory (``root``): ``releases/<id>/``, the ``current``
    symlink (the serving release) and ``shared/`` (paths linked into every release)."""

    root: str

    @property
    def releases_dir(self) -> str:
        return os.path.join(self.root, RELEASES_DIR)

    @property
    def current(self) -> str:
        """The symlink the workers' directory goes through: supervisord resolves it at each spawn."""
        return os.path.join(self.root, CURRENT_LINK)

    @property
    def shared(self) -> str:
        return os.path.join(self.root, SHARED_DIR)

    def release(self, release_id: str) -> str:
        return os.path.join(self.releases_dir, release_id)

    def link_target(self, release_id: str) -> str:
        """What ``current`` holds: relative, so the whole folder can be moved."""
        return os.path.join(RELEASES_DIR, release_id)

    def current_id(self) -> Optional[str]:
        """The id of the release ``current`` points at, None when there is none."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        head, name = os.path.split(os.path.normpath(target))
        return name if os.path.basename(head) == RELEASES_DIR and name else None

    def id_of(self, path: str) -> Optional[str]:
        """The release a (resolved) working folder belongs to, None when it is not one of ours."""
        real = os.path.realpath(path)
        head, name = os.path.split(real)
        return name if head == os.path.realpath(self.releases_dir) else None
