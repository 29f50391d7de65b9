"""The network side of the webhook and email channels: every socket of one request under one deadline.

Imported by ``WebhookChannel.send`` and ``EmailChannel.send`` on their first alert, not by
``channels``: TLS, HTTP and SMTP are most of what the listener would otherwise load at start
(with OpenSSL ~10 MB of its ~26 MB RSS), and a listener whose channels never fire, or that
has none over the network, never needs them (tests/unit/test_imports.py).
"""

import http.client
import smtplib
import socket
import ssl
import threading
import urllib.request
from typing import Any, Callable, List, Optional, TypeVar

T = TypeVar("T")


class Deadline:
    """Shuts down every socket of one request when ``seconds`` have passed, so a server that
    trickles one byte at a time (each byte restarting the socket timeout) is cut off too.

    Sockets are tracked as objects: shutdown(2) goes to the descriptor the object still
    owns, and an object already closed (or detached into an SSL socket) has none, so a
    descriptor number reused elsewhere is never touched."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._socks: List[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def track(self, sock: T) -> T:
        with self._lock:
            self._socks.append(sock)  # type: ignore[arg-type]
            if self.expired:
                _shutdown(sock)  # type: ignore[arg-type]
        return sock

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket method, also for an SSLSocket: its own shutdown() would tear down
        # the TLS state under the thread that is reading.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class TrackingContext(ssl.SSLContext):
    """An SSL context whose sockets are tracked by a Deadline, the TLS handshake included."""

    deadline: Optional[Deadline] = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        handshake = kwargs.get("do_handshake_on_connect", True)
        kwargs["do_handshake_on_connect"] = False
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        if self.deadline is not None:
            self.deadline.track(wrapped)
        if handshake:
            wrapped.do_handshake()
        return wrapped


def tls_context(deadline: Deadline) -> ssl.SSLContext:
    """The default client context (certificates and host names verified), tracked by ``deadline``."""
    ctx = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_default_certs()
    ctx.deadline = deadline
    return ctx


def tracked_connection(cls: Any, deadline: Deadline) -> Callable[..., Any]:
    def make(host: str, **kwargs: Any) -> Any:
        conn = cls(host, **kwargs)
        create = conn._create_connection
        conn._create_connection = lambda *a, **k: deadline.track(create(*a, **k))
        return conn

    return make


class HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._make = tracked_connection(http.client.HTTPConnection, deadline)

    def http_open(self, req: Any) -> Any:
        return self.do_open(self._make, req)


class HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline
        self._make = tracked_connection(http.client.HTTPSConnection, deadline)

    def https_open(self, req: Any) -> Any:
        # Made here, not in __init__: loading the CA store costs ~50 ms, wasted on http:// URLs.
        return self.do_open(self._make, req, context=tls_context(self._deadline))


class SMTP(smtplib.SMTP):
    deadline: Optional[Deadline] = None

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        return self.deadline.track(sock) if self.deadline else sock


class SMTP_SSL(smtplib.SMTP_SSL):
    deadline: Optional[Deadline] = None

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        # The raw socket is tracked before the TLS handshake; the context tracks the TLS one.
        raw = socket.create_connection((host, port), timeout, self.source_address)
        if self.deadline:
            self.deadline.track(raw)
        return self.context.wrap_socket(raw, server_hostname=host)
