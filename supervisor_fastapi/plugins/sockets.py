"""The socket that never closes (loaded inside supervisord by the rpcinterface plugin).

supervisord closes an fcgi-program's listening socket as soon as no process of the group
is alive (``restart web:*``, one worker restarting, every worker crashing): connections
that arrive in that window are refused. This plugin keeps its own descriptor of every
fcgi socket supervisord binds, so the kernel socket stays open and queues connections in
its backlog while no worker accepts.

Holding a descriptor alone is not enough: the next spawn would bind the address again and
fail with EADDRINUSE. So the plugin wraps ``create_and_bind`` of supervisor's socket
configs: when it already holds a socket for that URL, supervisord gets a duplicate of it
("adoption") instead of a new bind. That also carries the socket across
``supervisorctl update`` of a changed group (stop, remove, add: the new group adopts the
socket the old one used) and across ``supervisorctl reload`` (supervisord rebuilds every
group in the same process; this module, and the held sockets, survive).

A socket no group serves any more (the program was removed, its ``socket=`` changed, or
every process of the group is STOPPED/EXITED/FATAL, e.g. ``supervisorctl stop web:*``)
is released after ``release_after`` seconds, checked on supervisord's TICK_5 and on group
changes; the grace period lets the add that follows the remove in an ``update`` adopt it.

A TCP socket is bound with SO_REUSEPORT as well (``share_tcp_ports``): when supervisord is
killed with -9 its workers live on and keep the port; a new supervisord (``up``, or systemd
restarting it) then binds beside them instead of failing with EADDRINUSE, and the old
workers drain once their successors are ready (runtime/worker.py ``Succession``). This must
be in place before supervisord creates its groups, which is before any factory runs: it is
installed when supervisord imports the plugin module (rpc.py), while it reads its conf.

Only the sockets of web groups whose app has a controller here are held (``wanted``): on a
shared supervisord another app's fcgi-program, rendered without the plugin or not ours at
all, keeps supervisord's own behaviour (its socket closes when its last process stops, and
is gone when its group is removed).
"""

import fcntl
import os
import resource
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Set

DEFAULT_RELEASE_AFTER = 10.0

Clock = Callable[[], float]
Log = Callable[[str], None]


class SocketHolds:
    """URL -> a descriptor of the listening socket held by the plugin; adopt instead of re-binding.

    Pure bookkeeping around two injected edges (the original bind, the clock), so it is
    unit-tested without supervisord.
    """

    def __init__(self, release_after: float = DEFAULT_RELEASE_AFTER, clock: Clock = time.monotonic,
                 log: Optional[Log] = None) -> None:
        self.release_after = release_after
        self.clock = clock
        self.log_to = log or (lambda message: None)
        self.held: Dict[str, socket.socket] = {}
        self.unused_since: Dict[str, float] = {}
        self.identity: Dict[str, Any] = {}
        self.floor = 0
        # Whether to hold the socket of this socket config (rpc.py: an app with a controller).
        self.wanted: Callable[[Any], bool] = lambda config: True

    def log(self, message: str) -> None:
        # After `reload` supervisord has closed the logger we were given; a failed log
        # line must never turn into a failed bind.
        try:
            self.log_to(message)
        except Exception:
            pass

    def bind(self, config: Any, original: Callable[[Any], socket.socket]) -> socket.socket:
        """What supervisord's ``create_and_bind`` returns: a duplicate of the held socket, or a new one."""
        url = str(config.url)
        if url in self.held and not self._intact(url):
            self.log(f"supervisor-fastapi: the held descriptor of {url} was closed; binding anew")
            self._forget(url)
        held = self.held.get(url)
        if held is None and not self._wants(config):
            return original(config)  # not ours: supervisord binds and closes it as it always does
        if held is not None:
            self.unused_since.pop(url, None)
            # Ownership and mode are applied at bind time; re-apply them so a changed
            # socket_owner/socket_mode still takes effect on an adopted unix socket.
            for name in ("_chown", "_chmod"):
                method = getattr(config, name, None)
                if method is not None:
                    method()
            self.log(f"supervisor-fastapi: reusing held socket {url}")
            return held.dup()
        sock = original(config)
        self.held[url] = self._keep(sock)
        self.identity[url] = _identity(self.held[url].fileno())
        self.unused_since.pop(url, None)
        self.log(f"supervisor-fastapi: holding socket {url} (fd {self.held[url].fileno()})")
        return sock

    def _wants(self, config: Any) -> bool:
        try:
            return bool(self.wanted(config))
        except Exception as exc:  # never fail a bind over it: supervisord's own behaviour then
            self.log(f"supervisor-fastapi: could not tell whose socket {config.url} is ({exc!r}); not holding it")
            return False

    def _keep(self, sock: socket.socket) -> socket.socket:
        """Our own descriptor at or above ``floor``: supervisord's ``reload`` closes every fd in
        5..minfds (options.cleanup_fds), and a held socket must survive that."""
        fd = -1
        if self.floor:
            try:
                _ensure_fd_limit(self.floor + 64)
                fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, self.floor)
            except OSError as exc:
                self.log(f"supervisor-fastapi: cannot hold the socket above fd {self.floor} ({exc}); "
                         "it will be held across restarts and updates but not across reload")
        if fd == -1:
            return sock.dup()
        return socket.socket(fileno=fd)

    def _intact(self, url: str) -> bool:
        held = self.held[url]
        return held.fileno() != -1 and _identity(held.fileno()) == self.identity.get(url)

    def _forget(self, url: str) -> None:
        held = self.held.pop(url)
        self.identity.pop(url, None)
        self.unused_since.pop(url, None)
        if held.fileno() != -1:
            held.detach()  # the number may belong to another file now: never close it

    def reconcile(self, wanted: List[str]) -> List[str]:
        """Release sockets no group has used for ``release_after`` seconds; the URLs released."""
        now = self.clock()
        released = []
        for url in list(self.held):
            if url in wanted:
                self.unused_since.pop(url, None)
                continue
            since = self.unused_since.setdefault(url, now)
            if now - since >= self.release_after:
                if self._intact(url):
                    self.held[url].close()
                self._forget(url)
                released.append(url)
                self.log(f"supervisor-fastapi: released socket {url} (no program uses it)")
        return released

    def describe(self) -> List[Dict[str, Any]]:
        return [{"url": url, "fd": s.fileno(), "unused_since": self.unused_since.get(url, 0.0)}
                for url, s in sorted(self.held.items())]


def _identity(fd: int) -> Any:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise OSError(f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# One registry per supervisord process: it must outlive the Supervisor object that
# `reload` replaces, and the factory runs once per HTTP server (unix and inet).
HOLDS = SocketHolds()
_SUPERVISORD: Dict[str, Any] = {}


def install_bind_hook() -> None:
    """Route supervisor's socket binds through ``HOLDS`` (idempotent)."""
    from supervisor import datatypes

    for cls in (datatypes.InetStreamSocketConfig, datatypes.UnixStreamSocketConfig):
        current = cls.__dict__["create_and_bind"]
        original = getattr(current, "supervisor_fastapi_original", current)

        def create_and_bind(self: Any, _original: Callable[[Any], socket.socket] = original) -> socket.socket:
            return HOLDS.bind(self, _original)

        create_and_bind.supervisor_fastapi_original = original  # type: ignore[attr-defined]
        cls.create_and_bind = create_and_bind


class _ListenLater(socket.socket):
    """A port bound beside the workers of a killed supervisord: supervisord's ``listen()`` is
    skipped, so the kernel hands no connection to this socket (where none accepts yet) until
    the first new worker serves: uvicorn calls ``listen()`` on fd 0 itself (asyncio's
    create_server). Until then every connection goes to the old workers."""

    def listen(self, *args: Any) -> None:
        return None


def _port_taken(addr: Any) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
        return False
    except OSError:
        return True
    finally:
        probe.close()


def _bind_shared(self: Any) -> socket.socket:
    """supervisor's ``InetStreamSocketConfig.create_and_bind``, plus SO_REUSEPORT.

    Linux lets a second socket bind a port only when both set SO_REUSEPORT (and belong to one
    uid), so this changes nothing for a port anything else holds."""
    if not hasattr(socket, "SO_REUSEPORT"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        beside = _port_taken(self.addr())
        sock = (_ListenLater if beside else socket.socket)(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(self.addr())
    except BaseException:
        sock.close()
        raise
    return sock


def share_tcp_ports() -> None:
    """Bind supervisord's TCP fcgi sockets with SO_REUSEPORT (idempotent; before install_bind_hook,
    which then wraps this bind as the original)."""
    from supervisor import datatypes

    cls = datatypes.InetStreamSocketConfig
    current = cls.__dict__["create_and_bind"]
    if current is _bind_shared or getattr(current, "supervisor_fastapi_original", None) is not None:
        return
    cls.create_and_bind = _bind_shared


def fcgi_urls(supervisord: Any, groups: Optional[Set[str]] = None) -> List[str]:
    """The socket URLs of fcgi groups (of ``groups``, when given) that are meant to serve: some
    process is starting, running, backing off or stopping. A group stopped by hand or FATAL
    everywhere lets its socket go after the grace period, so clients are refused instead of
    left waiting."""
    from supervisor.states import ProcessStates

    active = (ProcessStates.STARTING, ProcessStates.RUNNING, ProcessStates.BACKOFF, ProcessStates.STOPPING)
    urls = []
    for group in list(getattr(supervisord, "process_groups", {}).values()):
        manager = getattr(group, "socket_manager", None)
        if manager is None or (groups is not None and group.config.name not in groups):
            continue
        # A worker the migration gate holds (controller.py marks it) is not going to accept:
        # refuse clients rather than queue them behind a failed migration.
        if any(p.get_state() in active and not getattr(p, "supervisor_fastapi_gated", False)
               for p in group.processes.values()):
            urls.append(str(manager.config().url))
    return urls


def _on_event(event: Any) -> None:
    from supervisor import events

    if isinstance(event, events.SupervisorStoppingEvent):
        # supervisord closes its logger before a reload rebuilds the groups (and adopts
        # our sockets); the next factory call gives us the new one.
        HOLDS.log_to = lambda message: None
        return
    supervisord = _SUPERVISORD.get("current")
    if supervisord is not None:
        HOLDS.reconcile(fcgi_urls(supervisord, _SUPERVISORD.get("groups", lambda: None)()))


def subscribe(supervisord: Any, groups: Callable[[], Optional[Set[str]]] = lambda: None) -> None:
    """Reconcile the holds on TICK_5 and group changes of this supervisord run; ``groups``: the
    web groups whose sockets are held."""
    from supervisor import events

    _SUPERVISORD["current"] = supervisord
    _SUPERVISORD["groups"] = groups
    # events.clear() at every (re)start drops our subscription; subscribe once per run.
    if not any(callback is _on_event for _kind, callback in events.callbacks):
        events.subscribe(events.Tick5Event, _on_event)
        events.subscribe(events.ProcessGroupEvent, _on_event)
        events.subscribe(events.SupervisorStoppingEvent, _on_event)
