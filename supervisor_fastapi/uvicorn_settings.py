"""The uvicorn settings a spec may set under ``[server.uvicorn]``: one table for the spec
loader (validation), the conf generator (command-line words) and the worker (decoding).

Standard library only: the worker imports it under the app's interpreter.
"""

from typing import Any, Dict, List, NamedTuple, Tuple


class UvicornSetting(NamedTuple):
    kind: str  # "bool" | "int" | "float" | "str" | "list" | "env" (the name of an environment variable)
    choices: Tuple[str, ...] = ()


# The uvicorn.Config keywords a spec may set under [server.uvicorn]; the spec loader
# validates against this same table and the worker coerces command-line strings with it.
UVICORN_SETTINGS: Dict[str, UvicornSetting] = {
    "loop": UvicornSetting("str", ("auto", "asyncio", "uvloop")),
    "http": UvicornSetting("str", ("auto", "h11", "httptools")),
    "ws": UvicornSetting("str", ("auto", "none", "websockets", "websockets-sansio", "wsproto")),
    "ws_max_size": UvicornSetting("int"),
    "ws_max_queue": UvicornSetting("int"),
    "ws_ping_interval": UvicornSetting("float"),
    "ws_ping_timeout": UvicornSetting("float"),
    "ws_per_message_deflate": UvicornSetting("bool"),
    "lifespan": UvicornSetting("str", ("auto", "on", "off")),
    "log_level": UvicornSetting("str", ("critical", "error", "warning", "info", "debug", "trace")),
    "log_config": UvicornSetting("str"),
    "access_log": UvicornSetting("bool"),
    "use_colors": UvicornSetting("bool"),
    "proxy_headers": UvicornSetting("bool"),
    "server_header": UvicornSetting("bool"),
    "date_header": UvicornSetting("bool"),
    "forwarded_allow_ips": UvicornSetting("list"),
    "root_path": UvicornSetting("str"),
    "limit_concurrency": UvicornSetting("int"),
    "limit_max_requests": UvicornSetting("int"),
    "timeout_keep_alive": UvicornSetting("int"),
    "ssl_keyfile": UvicornSetting("str"),
    "ssl_certfile": UvicornSetting("str"),
    "ssl_ca_certs": UvicornSetting("str"),
    "ssl_ciphers": UvicornSetting("str"),
    # The key's password never goes in the spec or on a command line (ps shows both): the
    # worker reads it from this environment variable, set in supervisord's environment.
    "ssl_keyfile_password_env": UvicornSetting("env"),
    "ssl_cert_reqs": UvicornSetting("int"),
    "headers": UvicornSetting("list"),
    "h11_max_incomplete_event_size": UvicornSetting("int"),
}


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
