"""The socket hold's bookkeeping: adopt instead of re-bind, release what no group uses."""

import socket

from supervisor_fastapi.plugins.rpc import xmlrpc_safe
from supervisor_fastapi.plugins.sockets import SocketHolds


class Cfg:
    def __init__(self, url):
        self.url = url
        self.chmods = 0

    def _chmod(self):
        self.chmods += 1


def listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_first_bind_binds_and_holds_then_adopts():
    binds = []

    def original(cfg):
        binds.append(cfg.url)
        return listening()

    clock = [0.0]
    holds = SocketHolds(release_after=10, clock=lambda: clock[0])
    a = holds.bind(Cfg("tcp://x:1"), original)
    port = a.getsockname()[1]
    a.close()  # supervisord closes its copy when the last worker exits...
    cfg = Cfg("tcp://x:1")
    b = holds.bind(cfg, original)  # ...and the next spawn adopts the held socket
    assert binds == ["tcp://x:1"] and b.getsockname()[1] == port and cfg.chmods == 1
    # The kernel socket kept listening while nobody else held it: a client connects.
    b.close()
    c = socket.create_connection(("127.0.0.1", port), timeout=2)
    c.close()
    for s in holds.held.values():
        s.close()


def test_unused_socket_is_released_after_the_grace_period_only():
    clock = [0.0]
    holds = SocketHolds(release_after=10, clock=lambda: clock[0])
    holds.bind(Cfg("tcp://x:1"), lambda cfg: listening()).close()
    assert holds.reconcile(["tcp://x:1"]) == []
    assert holds.reconcile([]) == []  # removed: the grace period starts
    clock[0] = 5
    assert holds.reconcile([]) == []
    clock[0] = 10
    held = holds.held["tcp://x:1"]
    assert holds.reconcile([]) == ["tcp://x:1"] and held.fileno() == -1 and not holds.held


def test_readded_group_cancels_the_release():
    clock = [0.0]
    holds = SocketHolds(release_after=10, clock=lambda: clock[0])
    holds.bind(Cfg("tcp://x:1"), lambda cfg: listening()).close()
    holds.reconcile([])
    clock[0] = 3
    holds.bind(Cfg("tcp://x:1"), lambda cfg: listening()).close()  # `update` adds it back
    clock[0] = 30
    assert holds.reconcile(["tcp://x:1"]) == []
    holds.held["tcp://x:1"].close()


def test_a_descriptor_closed_behind_our_back_is_forgotten_not_closed():
    holds = SocketHolds()
    holds.bind(Cfg("tcp://x:1"), lambda cfg: listening()).close()
    import os

    os.close(holds.held["tcp://x:1"].fileno())  # what supervisord's cleanup_fds would do
    fresh = []
    s = holds.bind(Cfg("tcp://x:1"), lambda cfg: fresh.append(1) or listening())
    assert fresh == [1]
    s.close()
    holds.held["tcp://x:1"].close()


def test_listener_state_fits_xmlrpc():
    import xmlrpc.client

    data = {"last_alert": None, "incidents": {"web_00": {"next_retry": None, "opened": 1.5, "delay": 2**40}},
            "spawns": {"web_00": [1, 2]}}
    safe = xmlrpc_safe(data)
    assert safe == {"incidents": {"web_00": {"opened": 1.5, "delay": float(2**40)}}, "spawns": {"web_00": [1, 2]}}
    xmlrpc.client.dumps((safe,))


def test_a_socket_of_another_app_is_bound_as_supervisord_would_and_never_held():
    binds = []

    def original(cfg):
        binds.append(cfg.url)
        return listening()

    holds = SocketHolds()
    holds.wanted = lambda cfg: cfg.url == "tcp://ours:1"
    holds.bind(Cfg("tcp://theirs:2"), original).close()
    holds.bind(Cfg("tcp://theirs:2"), original).close()
    holds.bind(Cfg("tcp://ours:1"), original).close()
    holds.bind(Cfg("tcp://ours:1"), original).close()
    assert binds == ["tcp://theirs:2", "tcp://theirs:2", "tcp://ours:1"] and list(holds.held) == ["tcp://ours:1"]

    def broken(cfg):
        raise RuntimeError("no options")

    holds.wanted = broken  # a failing question never fails the bind: not held
    holds.bind(Cfg("tcp://other:3"), original).close()
    assert "tcp://other:3" not in holds.held
    for s in holds.held.values():
        s.close()


def _bytes_a_poke_puts_in_a_file_reusing_its_number(waker):
    """Put a new pipe under ``waker.w`` (what supervisord opens next under a freed number),
    poke, and return what that pipe received. Closes the pipe and that number."""
    import os

    r, w = os.pipe()
    try:
        os.dup2(w, waker.w)
        waker.poke()
        os.set_blocking(r, False)
        try:
            return os.read(r, 16)
        except BlockingIOError:
            return b""
    finally:
        for fd in {r, w, waker.w}:
            os.close(fd)


def test_a_closed_waker_never_writes_to_the_descriptor_that_reuses_its_number():
    # supervisord's reload: the waker is closed at SupervisorStoppingEvent, then workers exit
    # while the RPC server still accepts; an accepted client socket takes the freed number.
    # A poke from the old run must not put a byte in front of that client's HTTP answer
    # (seen in CI as BadStatusLine '\x00HTTP/1.1 200 OK' during `reload`).
    from supervisor_fastapi.plugins.controller import Waker

    waker = Waker(lambda: None, lambda message: None)
    waker.close()
    assert _bytes_a_poke_puts_in_a_file_reusing_its_number(waker) == b""


def test_a_run_that_ended_without_a_stopping_event_leaves_a_waker_that_never_writes():
    # Registry.start_run for a new Supervisor object without SupervisorStoppingEvent before
    # it: the old waker's numbers may be reused already, so they are neither closed nor
    # written; the old run's controllers still hold its poke.
    import os

    from supervisor import events

    from supervisor_fastapi.plugins.controller import Registry

    class Options:
        def __init__(self):
            self.socket_map = {}

        def get_socket_map(self):
            return self.socket_map

    class Supervisord:
        def __init__(self):
            self.options = Options()

    callbacks = list(events.callbacks)
    registry = Registry()
    try:
        registry.start_run(Supervisord(), lambda message: None)
        old = registry.waker
        registry.start_run(Supervisord(), lambda message: None)
        try:
            assert _bytes_a_poke_puts_in_a_file_reusing_its_number(old) == b""
        finally:
            os.close(old.r)
    finally:
        registry._on_stopping(None)
        events.callbacks[:] = callbacks


def test_a_tcp_port_held_by_a_killed_supervisords_workers_is_bound_beside_them_listening_later():
    import socket

    from supervisor.datatypes import InetStreamSocketConfig

    from supervisor_fastapi.plugins.sockets import _bind_shared, _ListenLater

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = _bind_shared(InetStreamSocketConfig("127.0.0.1", port))
    try:
        first.listen(8)
        assert type(first) is socket.socket
        second = _bind_shared(InetStreamSocketConfig("127.0.0.1", port))
        try:
            # Beside the old socket, not listening until a new worker calls listen() itself.
            assert isinstance(second, _ListenLater)
            second.listen(8)
            client = socket.create_connection(("127.0.0.1", port), timeout=2)
            client.close()
            assert second.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        finally:
            second.close()
    finally:
        first.close()
