"""Secrets out of what the listener prints: webhook URLs (their path, query and userinfo are
credentials) and any other secret a channel names, replaced before an error reaches a log
line, the journal or the state file.

Pure string functions; standard library only (``urllib.parse``, no network client).
"""

import urllib.parse
from typing import List, Sequence

REDACTED = "***"


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` with the rest hidden: a webhook's path and query are its
    password (Slack, Discord, Teams...), and ``user:password@`` is one."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.split(':', 1)[0]}://{REDACTED}"
    if ":" in host:
        host = f"[{host}]"
    userinfo = f"{REDACTED}@" if parts.username is not None or parts.password is not None else ""
    rest = "/" + REDACTED if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{userinfo}{host}{port}{rest}"


def url_secrets(url: str) -> List[str]:
    """The secret pieces of ``url``, longest first (the whole URL, its path and query, its password)."""
    out = [url]
    try:
        parts = urllib.parse.urlsplit(url)
        out += [p for p in (parts.netloc.rpartition("@")[0] if "@" in parts.netloc else "",
                            parts.password or "", parts.path + ("?" + parts.query if parts.query else ""),
                            parts.path, parts.query) if p and p.strip("/")]
        # urllib may report the unquoted form.
        out += [urllib.parse.unquote(p) for p in list(out)]
    except ValueError:
        pass
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced (whole URLs by their redacted form)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3 and secret in text:
            text = text.replace(secret, redact_url(secret) if "://" in secret else REDACTED)
    return text
