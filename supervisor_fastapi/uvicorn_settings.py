"""The uvicorn settings a spec may set under ``[server.uvicorn]``: one table for the spec
loader (validation), the conf generator (command-line words) and the worker (decoding).

Derived from the installed ``uvicorn.config`` where uvicorn lists the choices, so it cannot
drift from the uvicorn that runs the workers. The worker imports it under the app's
interpreter (which has uvicorn); nothing inside supervisord does.
"""

from typing import Any, Dict, List, NamedTuple, Tuple


class UvicornSetting(NamedTuple):
    kind: str  # "bool" | "int" | "float" | "str" | "list" | "env" (the name of an environment variable)
    choices: Tuple[str, ...] = ()


# Settings whose choices uvicorn itself lists (uvicorn.config), by the name of its table
# then the older name: the spec accepts exactly what the installed uvicorn accepts.
_CHOICE_TABLES = {
    "loop": ("LOOP_FACTORIES", "LOOP_SETUPS"),
    "http": ("HTTP_PROTOCOLS",),
    "ws": ("WS_PROTOCOLS",),
    "lifespan": ("LIFESPAN",),
    "log_level": ("LOG_LEVELS",),
    "interface": ("INTERFACES",),
}

# Every uvicorn.Config keyword a spec may set under [server.uvicorn] and its kind. The
# worker decodes command-line strings with the same table the spec loader validates with.
_KINDS: Dict[str, str] = {
    "loop": "str", "http": "str", "http2": "bool", "ws": "str", "ws_max_size": "int", "ws_max_queue": "int",
    "ws_ping_interval": "float", "ws_ping_timeout": "float", "ws_per_message_deflate": "bool", "lifespan": "str",
    "log_level": "str", "log_config": "str", "access_log": "bool", "use_colors": "bool", "interface": "str",
    "proxy_headers": "bool", "server_header": "bool", "date_header": "bool", "forwarded_allow_ips": "list",
    "root_path": "str", "limit_concurrency": "int", "limit_max_requests": "int", "limit_max_requests_jitter": "int",
    "timeout_keep_alive": "int", "ssl_keyfile": "str", "ssl_certfile": "str", "ssl_ca_certs": "str",
    "ssl_ciphers": "str",
    # The key's password never goes in the spec or on a command line (ps shows both): the
    # worker reads it from this environment variable, set in supervisord's environment.
    "ssl_keyfile_password_env": "env",
    "ssl_cert_reqs": "int", "ssl_version": "int", "headers": "list", "h11_max_incomplete_event_size": "int",
    "reset_contextvars": "bool",
}

# uvicorn.Config keywords the worker sets itself: the spec sets them elsewhere, or they cannot apply.
UVICORN_OWNED = {
    "app": "set app.asgi",
    "factory": "set app.factory, or end app.asgi with '()'",
    "host": "set server.bind",
    "port": "set server.bind",
    "uds": "set server.bind to unix:///path",
    "fd": "the worker always serves the socket supervisord passes as fd 0",
    "workers": "set server.workers",
    "reload": "reload is for development; use `supervisor-fastapi restart` for a rolling restart",
    "timeout_graceful_shutdown": "set server.graceful_timeout",
    "app_dir": "set app.directory",
    "backlog": "set server.backlog",
}
# Keywords no spec can set, and why (a test fails when uvicorn adds one not listed anywhere).
NOT_OFFERED = {
    "env_file": "supervisord sets the environment: use app.env",
    "reload_dirs": "reload is for development", "reload_delay": "reload is for development",
    "reload_includes": "reload is for development", "reload_excludes": "reload is for development",
    "timeout_notify": "uvicorn's own process manager only", "callback_notify": "a Python callable",
    "timeout_worker_healthcheck": "uvicorn's own process manager only",
    "ssl_keyfile_password": "set ssl_keyfile_password_env (the name of a variable), never the password",
    "ssl_context_factory": "a Python callable",
}


def config_keywords() -> Tuple[str, ...]:
    """The keywords of the installed ``uvicorn.Config``."""
    import inspect

    import uvicorn.config

    return tuple(p for p in inspect.signature(uvicorn.config.Config.__init__).parameters if p != "self")


def _table() -> Dict[str, UvicornSetting]:
    import uvicorn.config

    known = set(config_keywords())
    out: Dict[str, UvicornSetting] = {}
    for key, kind in _KINDS.items():
        if (key[: -len("_env")] if kind == "env" else key) not in known:
            continue  # an older uvicorn: the spec refuses the key like any unknown one
        choices: Tuple[str, ...] = ()
        for table in _CHOICE_TABLES.get(key, ()):
            if hasattr(uvicorn.config, table):
                choices = tuple(str(c) for c in getattr(uvicorn.config, table))
                break
        out[key] = UvicornSetting(kind, choices)
    return out


UVICORN_SETTINGS: Dict[str, UvicornSetting] = _table()


def encode_setting(key: str, value: Any) -> List[str]:
    """Command-line words for one setting: ``--set key=value``, repeated for lists."""
    if isinstance(value, bool):
        return ["--set", f"{key}={'true' if value else 'false'}"]
    if isinstance(value, (list, tuple)):
        return [word for item in value for word in ("--set", f"{key}={item}")]
    return ["--set", f"{key}={value}"]


# Booleans uvicorn's own command line takes as a value (``--ws-per-message-deflate false``);
# the others are ``--x`` / ``--no-x`` pairs.
_CLI_VALUE_BOOLS = ("ws_per_message_deflate",)
# Booleans uvicorn's command line has only an ``--x`` for (off by default there).
_CLI_FLAG_ONLY = ("http2", "reset_contextvars")


def cli_words(key: str, value: Any) -> List[str]:
    """``uvicorn`` command-line words for one setting, for targets that run uvicorn's own CLI.

    An ``env`` setting gives no words: uvicorn's CLI reads ``UVICORN_<NAME>`` from the
    environment (``ssl_keyfile_password_env`` -> ``UVICORN_SSL_KEYFILE_PASSWORD``), which the
    caller sets from the variable the setting names, so the value never reaches argv.
    """
    setting = UVICORN_SETTINGS[key]
    flag = "--" + key.replace("_", "-")
    if setting.kind == "env":
        return []
    if setting.kind == "bool":
        if key in _CLI_VALUE_BOOLS:
            return [flag, "true" if value else "false"]
        if key in _CLI_FLAG_ONLY:
            return [flag] if value else []
        return [flag if value else f"--no-{flag[2:]}"]
    if key == "forwarded_allow_ips":
        return [flag, ",".join(value)]
    if key == "headers":
        # The worker strips around the colon; uvicorn's CLI does not.
        return [word for h in value for word in ("--header", ":".join(p.strip() for p in h.split(":", 1)))]
    if setting.kind == "float":
        return [flag, repr(float(value))]
    return [flag, str(value)]


def cli_env_name(key: str) -> str:
    """The variable uvicorn's CLI reads an ``env`` setting from (``UVICORN_SSL_KEYFILE_PASSWORD``)."""
    return "UVICORN_" + key[: -len("_env")].upper()
