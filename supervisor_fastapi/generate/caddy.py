"""Spec -> Caddyfile text, and the supervisord program that runs Caddy on it: pure functions.

Every value reaches the Caddyfile through ``token``, which writes it bare when it holds
nothing the Caddyfile lexer reads as syntax, quotes it when the only extra is a space, and
refuses it (naming the spec key) otherwise: a brace opens a block or a placeholder, a quote
or a backslash changes tokens, a '#' starts a comment. Nothing here touches the disk.
"""

import hashlib
import os
import re
from typing import List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import UserError
from ..layout import Layout, Names
from ..spec import Spec
from ..spec.model import Hosting
from . import ini

_BARE = re.compile(r"^[A-Za-z0-9._/@+=:~%*-]+\Z")
_QUOTABLE = re.compile(r"^[A-Za-z0-9._/@+=:~%*\- ]+\Z")
# How long Caddy keeps retrying a request whose connection to the workers could not be made
# (the socket closed: no worker and no plugin holding it): longer than a worker's restart.
LB_TRY_DURATION = "10s"
LB_TRY_INTERVAL = "100ms"
# A worker that stops closes each connection it has seen idle for its drain window (1 s,
# at most graceful_timeout); a proxy that sent a request on such a connection at that
# moment would fail it (a POST is never sent again). So the proxy closes its own idle
# connections to the workers first, after half that window.
DRAIN_WINDOW = 1.0  # runtime/drain.py's default


def upstream_idle_ms(spec: Spec) -> int:
    """How long the proxy keeps an idle connection to the workers, in ms; 0: no keep-alive."""
    window = min(DRAIN_WINDOW, spec.server.graceful_timeout)
    ms = int(window * 1000 / 2)
    return ms if ms >= 50 else 0


# The program starts after the web workers (100) and, supervisord stopping in reverse
# order, stops before them: no new requests reach workers that are going away.
PRIORITY_PROXY = 150
# An environment variable of the program that changes with the Caddyfile: supervisord
# then sees the program as changed, and `up` (reread + update) restarts Caddy on the new
# file. admin is off, so nothing else could reload it.
CONFIG_DIGEST_ENV = "SUPERVISOR_FASTAPI_CADDYFILE_SHA256"


def token(value: str, key: str, spec: Spec) -> str:
    """``value`` as one Caddyfile token, or a UserError naming the spec key it came from."""
    if _BARE.match(value):
        return value
    if _QUOTABLE.match(value) and value == value.strip():
        return f'"{value}"'
    raise UserError(f"{spec.source}: {key}: {value!r} cannot be written into a Caddyfile (it holds a quote, brace, "
                    "'#', '$', backslash or control character); use a plain path")


def supervised(spec: Spec, hosting: Optional[Hosting] = None) -> bool:
    """Whether this deployment runs Caddy itself: proxy = "caddy" in a supervisord it owns.

    With ``https.supervised = false``, in a shared (OS-packaged) supervisord, or with
    ``--fragment``, Caddy is the OS's: the deployment renders a site snippet for it to import
    instead of a program. ``hosting``: the spec's own unless `render`/`check` flags changed it."""
    h = spec.https
    return h is not None and h.proxy == "caddy" and h.supervised and (hosting or spec.supervisord.hosting()).own


def caddyfile_path(spec: Spec) -> str:
    """Where the Caddyfile goes: beside the spec, like the default conf."""
    return os.path.join(spec.base_dir, Names(spec.app.name).caddyfile)


def snippet_path(spec: Spec) -> str:
    return os.path.join(spec.base_dir, Names(spec.app.name).caddy_snippet)


def upstream(spec: Spec) -> str:
    """The workers' socket as Caddy dials it."""
    b = spec.server.bind
    if b.kind == "unix":
        return token(f"unix/{b.path}", "server.bind", spec)
    host = "127.0.0.1" if b.host == "0.0.0.0" else b.host
    return token(f"{host}:{b.port}", "server.bind", spec)


def global_options(spec: Spec) -> List[str]:
    """The options block of a Caddyfile that this deployment's own Caddy runs."""
    h, layout = spec.https, Layout(spec.run_dir)
    assert h is not None
    lines = [
        "{",
        # No admin endpoint: nothing may reconfigure this Caddy but the file (and a restart).
        "\tadmin off",
        f"\tstorage file_system {token(layout.proxy_storage, 'supervisord.run_dir', spec)}",
        # Never touch the system trust store (that needs root, and tls internal would try).
        "\tskip_install_trust",
    ]
    # No https_port option: the site addresses carry a port other than 443. With the option,
    # Caddy assumes 443 is forwarded to it and its redirect would name no port.
    if h.http_port:
        lines.append(f"\thttp_port {h.http_port}")
    else:
        lines.append("\tauto_https disable_redirects")
    if h.email:
        lines.append(f"\temail {token(h.email, 'https.email', spec)}")
    # On SIGTERM, requests in flight get as long as the workers give theirs.
    lines.append(f"\tgrace_period {max(1, int(spec.server.graceful_timeout))}s")
    lines.append("}")
    return lines


def site_block(spec: Spec) -> List[str]:
    """The site: TLS as asked, then every request to the workers."""
    h = spec.https
    assert h is not None
    # A port other than 443 goes in the address: Caddy listens there, and its HTTP->HTTPS
    # redirect names it.
    suffix = "" if h.https_port == 443 else f":{h.https_port}"
    names = ", ".join(token(d + suffix, f"https.domains[{i}]", spec) for i, d in enumerate(h.domains))
    lines = [f"{names} {{"]
    if h.tls == "internal":
        lines.append("\ttls internal")
    elif h.tls == "files":
        lines.append(f"\ttls {token(str(h.cert), 'https.tls.cert', spec)} {token(str(h.key), 'https.tls.key', spec)}")
    # X-Forwarded-For (replaced, not appended: Caddy trusts no proxy before it), -Proto and
    # -Host are Caddy's defaults; websocket upgrades pass through reverse_proxy as they are.
    lines += [
        f"\treverse_proxy {upstream(spec)} {{",
        # A request whose connection could not be made is tried again until this passes;
        # Caddy retries only GETs after a connection was made, never a POST.
        f"\t\tlb_try_duration {LB_TRY_DURATION}",
        f"\t\tlb_try_interval {LB_TRY_INTERVAL}",
        "\t\ttransport http {",
        f"\t\t\tkeepalive {upstream_idle_ms(spec)}ms" if upstream_idle_ms(spec) else "\t\t\tkeepalive off",
        "\t\t}",
        "\t}",
        "}",
    ]
    return lines


def header(spec: Spec, command: str, lines: Sequence[str] = ()) -> List[str]:
    out = [f"Generated by supervisor-fastapi {__version__} from {spec.source}.",
           f"Do not edit: change the spec and run `{command}`."] + list(lines)
    for line in out:
        if "\n" in line or "\r" in line:
            raise UserError(f"{spec.source}: a path holds a line break and cannot go into a Caddyfile comment")
    return [f"# {line}" for line in out]


def body(spec: Spec) -> str:
    """The Caddyfile without its header: what the program's digest covers."""
    return "\n".join(global_options(spec) + [""] + site_block(spec)) + "\n"


def render(spec: Spec, command: str) -> str:
    """The Caddyfile this deployment's Caddy runs on."""
    return "\n".join(header(spec, command)) + "\n" + body(spec)


def render_snippet(spec: Spec, command: str) -> str:
    """A site block for an OS-packaged Caddy to ``import`` (its global options are its own)."""
    notes = [f"Import it in /etc/caddy/Caddyfile: import {snippet_path(spec)}",
             f"That Caddy's user must be able to open {spec.server.bind.url} (server.socket_owner / socket_mode)."
             if spec.server.bind.kind == "unix" else f"It proxies to {spec.server.bind.url}."]
    return "\n".join(header(spec, command, notes) + site_block(spec)) + "\n"


def install_steps(spec: Spec, path: str) -> List[str]:
    """What to do with the snippet for an OS-packaged Caddy (Debian's layout)."""
    steps = [f"install: echo 'import {path}' >> /etc/caddy/Caddyfile && caddy validate --config "
             "/etc/caddy/Caddyfile && systemctl reload caddy"]
    if spec.server.bind.kind == "unix":
        steps.append(f"Caddy's user (Debian: caddy) must be able to open {spec.server.bind.path}: "
                     'server.socket_owner = "caddy:caddy" or a group it is in, socket_mode = "0660"')
    return steps


def caddy_argv(spec: Spec) -> List[str]:
    """Caddy's command line: ``caddy`` from the program's PATH (Debian's package: /usr/bin/caddy)."""
    return ["caddy", "run", "--config", caddyfile_path(spec), "--adapter", "caddyfile"]


def environment(spec: Spec, hidden: Sequence[str] = (), path: str = "") -> List[Tuple[str, str]]:
    """Caddy's environment: its HOME and XDG folders under run_dir (it writes an autosave and
    a .step folder there, never in root's home), the digest of its file, the PATH supervisord
    finds ``caddy`` on (the one every program gets), and the names only the listener may see,
    blanked."""
    d = Layout(spec.run_dir).proxy_dir
    env = {n: "" for n in hidden}
    if path:
        env["PATH"] = path
    env.update({"HOME": d, "XDG_CONFIG_HOME": os.path.join(d, "config"), "XDG_DATA_HOME": os.path.join(d, "data"),
                CONFIG_DIGEST_ENV: hashlib.sha256(body(spec).encode()).hexdigest()[:16]})
    return sorted(env.items())


def proxy_section(spec: Spec, hidden: Sequence[str] = (), path: str = "") -> Optional[ini.Section]:
    """``[program:<app>_proxy]``: Caddy on the Caddyfile, restarted by supervisord when it dies."""
    if not supervised(spec):
        return None
    name, layout = Names(spec.app.name).proxy, Layout(spec.run_dir)
    opts: List[Tuple[str, str]] = [
        ("command", ini.command(caddy_argv(spec))),
        ("priority", str(PRIORITY_PROXY)),
        ("autostart", "true"),
        ("autorestart", "true"),
        ("startsecs", "1"),
        ("startretries", "3"),
        # Caddy stops gracefully on TERM: it closes its listeners, then lets requests finish.
        ("stopsignal", "TERM"),
        ("stopwaitsecs", str(max(1, int(spec.server.graceful_timeout)) + 10)),
        ("stopasgroup", "true"),
        ("killasgroup", "true"),
        ("directory", ini.escape(layout.proxy_dir)),
        ("umask", "077"),
        ("environment", ini.environment(dict(environment(spec, hidden, path)))),
        ("redirect_stderr", "true"),
        ("stdout_logfile", ini.logfile(layout.program_log(name))),
        ("stdout_logfile_maxbytes", "10MB"),
        ("stdout_logfile_backups", "5"),
    ]
    return f"program:{name}", opts
