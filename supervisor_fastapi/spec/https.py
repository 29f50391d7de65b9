"""``[https]``: the TLS termination proxy's table, read into ``model.Https``.

Kept apart from ``load`` (which calls ``read_https`` with its table reader) so the proxy's
rules live in one place. Every value that reaches a Caddyfile or an nginx site is held to
``PROXY_SAFE`` here, with the key named; the generators refuse anything else again.
"""

import os
import re
from typing import Any, Dict, Tuple, cast

from .model import PROXIES, Bind, Https, TlsMode

DEFAULT_HTTPS_PORT = 443
DEFAULT_HTTP_PORT = 80
# A DNS name (a leading "*." for a wildcard), or an IPv4 address; nothing a proxy config
# could read as syntax.
DOMAIN_RE = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# What a path or an address may hold to be written bare into a Caddyfile and an nginx
# site: no whitespace, quotes, braces, ';', '#', '$', '\\' or control characters.
PROXY_SAFE = re.compile(r"^[A-Za-z0-9._/@+=,:~%-]+\Z")
TLS_CHOICES = ("auto", "internal")
# Where certbot puts the certificate of its first name: what nginx with tls = "auto" reads.
CERTBOT_LIVE = "/etc/letsencrypt/live"


def certbot_paths(domain: str) -> Tuple[str, str]:
    """(fullchain, privkey) of certbot's certificate for ``domain``."""
    base = f"{CERTBOT_LIVE}/{domain.lstrip('*.')}"
    return f"{base}/fullchain.pem", f"{base}/privkey.pem"


def read_https(t: Any, base_dir: str) -> Https:
    """The ``[https]`` table (``t``: spec.load's table reader) as an Https record."""
    raw = t.get("domains", (list, str), what="an array of domain names")
    domains = [raw] if isinstance(raw, str) else raw
    if not domains:
        t.fail("domains", "is empty", 'name the site, like domains = ["shop.example.com"]')
    for i, d in enumerate(domains):
        if not isinstance(d, str) or len(d) > 253 or not DOMAIN_RE.match(d):
            t.fail(f"domains[{i}]", f"{d!r} is not a domain name or IPv4 address",
                   'use names like "shop.example.com" (a wildcard: "*.example.com")')
    if len({d.lower() for d in domains}) != len(domains):
        t.fail("domains", "names a domain twice")
    proxy = t.text("proxy", "caddy")
    if proxy not in PROXIES:
        t.fail("proxy", f"must be one of {', '.join(PROXIES)}, not {proxy!r}")
    tls, cert, key = _tls(t, base_dir, proxy, domains[0])
    email = t.text("email", None)
    if email is not None and ("@" not in email or not PROXY_SAFE.match(email)):
        t.fail("email", f"{email!r} is not an email address (the ACME account's)")
    https_port = t.number("https_port", DEFAULT_HTTPS_PORT, integer=True, minimum=1, maximum=65535)
    http_port = t.number("http_port", DEFAULT_HTTP_PORT, integer=True, minimum=0, maximum=65535)
    if http_port == https_port:
        t.fail("http_port", f"is https_port too ({https_port})", "use another port, or 0 for no plain HTTP")
    supervised = t.flag("supervised", True)
    if proxy == "nginx" and "supervised" in t.data:
        t.fail("supervised", "is for proxy = \"caddy\": nginx is the OS's, serving the site file "
               "`render --target nginx` writes", "remove the key")
    return Https(domains=tuple(domains), tls=cast(TlsMode, tls), cert=cert, key=key, email=email, https_port=https_port,
                 http_port=http_port, proxy=proxy, supervised=supervised)


def _tls(t: Any, base_dir: str, proxy: str, first: str) -> Tuple[str, Any, Any]:
    value = t.get("tls", (str, dict), "auto", '"auto", "internal" or { cert = "...", key = "..." }')
    if isinstance(value, str):
        if value not in TLS_CHOICES:
            t.fail("tls", f'must be "auto", "internal" or {{ cert = "...", key = "..." }}, not {value!r}')
        if proxy == "nginx" and value == "internal":
            t.fail("tls", '"internal" is Caddy\'s own certificate authority; nginx needs files',
                   'use tls = { cert = "...", key = "..." }, or "auto" for certbot\'s files')
        if proxy == "nginx" and value == "auto":
            # nginx cannot get certificates: it reads the ones certbot keeps renewed.
            cert, key = certbot_paths(first)
            return "auto", cert, key
        return value, None, None
    files: Dict[str, str] = {}
    for name in ("cert", "key"):
        where = f"tls.{name}"
        if name not in value:
            t.fail(where, "is required", 'tls = { cert = "/path/fullchain.pem", key = "/path/privkey.pem" }')
        for extra in sorted(set(value) - {"cert", "key"}):
            t.fail(f"tls.{extra}", "unknown key", "tls takes cert and key")
        files[name] = _path(t, where, value[name], base_dir)
    return "files", files["cert"], files["key"]


def _path(t: Any, where: str, value: Any, base_dir: str) -> str:
    if not isinstance(value, str) or not value:
        t.fail(where, "must be a file path")
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
    if not PROXY_SAFE.match(path):
        t.fail(where, f"{path!r} holds a character a proxy config cannot carry bare (space, quote, brace, ;, #, $)",
               "move the file to a plain path")
    return path


def uvicorn_defaults(bind: Bind) -> Dict[str, Any]:
    """What the workers need behind the proxy so the app sees https and the client's address.

    On a unix socket the proxy's peer has no address, so only "*" trusts it (the socket's
    mode keeps others out); on TCP the proxy connects from 127.0.0.1."""
    return {"proxy_headers": True, "forwarded_allow_ips": ("*",) if bind.kind == "unix" else ("127.0.0.1",)}
