"""Real alert receivers on loopback for tests: an HTTP webhook receiver and an SMTP server.

Both run in threads of the test process; use them as context managers so they stop.
"""

import http.server
import json
import os
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from tests.ports import free_port


class WebhookReceiver:
    """Records every POSTed JSON body with its arrival time; can answer slowly or with an error."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.received: List[Tuple[float, Dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {"raw": body.decode(errors="replace")}
                with receiver._lock:
                    receiver.received.append((time.time(), data))
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender gave up waiting (slow-receiver tests)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def alerts(self, kind: Optional[str] = None, event: Optional[str] = None) -> List[Tuple[float, Dict[str, Any]]]:
        with self._lock:
            return [(t, a) for t, a in self.received
                    if (kind is None or a.get("kind") == kind) and (event is None or a.get("event") == event)]

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def self_signed_cert(folder: str, password: Optional[str] = None) -> Tuple[str, str]:
    """A certificate for 127.0.0.1 (SAN IP) and its key, made with the openssl command; the key
    is encrypted with ``password`` when one is given."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    protect = ["-passout", f"pass:{password}"] if password is not None else ["-nodes"]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", *protect, "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return cert, key


class SmtpReceiver:
    """aiosmtpd on 127.0.0.1 with STARTTLS required and AUTH PLAIN/LOGIN checked against one user."""

    def __init__(self, cert: str, key: str, user: str = "alerts", password: str = "s3cret") -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: List[Tuple[float, Any]] = []
        self.logins: List[str] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                import email
                import email.policy

                parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
                receiver.messages.append((time.time(), parsed))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            if ok:
                receiver.logins.append(user)
            return AuthResult(success=ok)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator, auth_require_tls=True)
        self.port = port

    def __enter__(self) -> "SmtpReceiver":
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()
