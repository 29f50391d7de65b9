"""The settings supervisord hands our other processes, and their encodings: the controller's
(``ControlConfig``, the options of ``[rpcinterface:fastapi_<app>]``, with each group's
crash-loop ``Policy``) and the listener's (``ListenerConfig``, one environment variable).

The generator encodes them into the conf; the controller and the listener decode what
supervisord loaded, never the spec. Standard library only: supervisord and the listener
import it.
"""

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

# --- the controller's settings: rendered as the options of [rpcinterface:fastapi_<app>] ----
#
# supervisord hands a plugin section's options to its factory exactly as loaded (and, after
# `reread`, keeps the new ones in options.rpcinterface_factories), so the controller never
# reads the spec: what it enforces is what supervisord loaded.

POLICY_KEYS = ("restarts", "window", "backoff_initial", "backoff_max", "backoff_reset", "jitter", "retry_fatal")


@dataclass(frozen=True)
class Policy:
    """Crash-loop settings of one supervisor group (the spec's ``[crash_loop]``)."""

    restarts: int = 3
    window: float = 60.0
    # The kubelet's CrashLoopBackOff starts at 10 s too; each retry is one spawn (the hold is
    # enforced inside supervisord, plugins/controller.py).
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    backoff_reset: float = 60.0
    jitter: float = 0.1
    retry_fatal: bool = True

    def encode(self) -> str:
        return " ".join(f"{k}={_word(getattr(self, k))}" for k in POLICY_KEYS)

    @classmethod
    def decode(cls, text: str) -> "Policy":
        values: Dict[str, Any] = {}
        for word in text.split():
            key, sep, raw = word.partition("=")
            if not sep or key not in POLICY_KEYS:
                raise ValueError(f"bad crash-loop setting {word!r}")
            values[key] = raw == "true" if key == "retry_fatal" else int(raw) if key == "restarts" else float(raw)
        return cls(**values)


@dataclass(frozen=True)
class ControlConfig:
    """What the controller inside supervisord enforces for one app."""

    app: str
    web: str  # the fcgi group of the web workers
    state_dir: str  # the workers' ready files (read safely: the app user writes them)
    migrate: str = ""  # the migration program, "" for none
    migrate_timeout: float = 0.0
    groups: Tuple[str, ...] = ()  # groups under crash-loop control (web, [[programs]], watchdog)
    policy: Policy = Policy()
    overrides: Tuple[Tuple[str, Policy], ...] = ()  # by group name
    reminder_interval: float = 3600.0
    current: str = ""  # release mode: the `current` symlink (which release a worker was started from)

    def policy_for(self, group: str) -> Policy:
        return dict(self.overrides).get(group, self.policy)

    def to_options(self) -> List[Tuple[str, str]]:
        """The plugin section's options (values are plain words; the INI writer escapes them)."""
        opts = [("app", self.app), ("web", self.web), ("state_dir", self.state_dir)]
        if self.migrate:
            opts += [("migrate", self.migrate), ("migrate_timeout", _word(self.migrate_timeout))]
        opts += [("groups", " ".join(self.groups)), ("crash_loop", self.policy.encode())]
        opts += [(f"crash_loop.{group}", policy.encode()) for group, policy in self.overrides]
        opts.append(("reminder_interval", _word(self.reminder_interval)))
        if self.current:
            opts.append(("current", self.current))
        return opts

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> "ControlConfig":
        """The inverse of ``to_options``; ValueError names what is wrong."""
        try:
            overrides = tuple(sorted((key[len("crash_loop."):], Policy.decode(value))
                                     for key, value in options.items() if key.startswith("crash_loop.")))
            return cls(app=options["app"], web=options.get("web") or options["app"], state_dir=options["state_dir"],
                       migrate=options.get("migrate", ""),
                       migrate_timeout=float(options.get("migrate_timeout") or 0.0),
                       groups=tuple(options.get("groups", "").split()),
                       policy=Policy.decode(options.get("crash_loop", "")), overrides=overrides,
                       reminder_interval=float(options.get("reminder_interval") or 3600.0),
                       current=options.get("current", ""))
        except KeyError as exc:
            raise ValueError(f"missing option {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- the listener's settings: one environment variable of its program ---------------------
#
# Alert channels carry secrets (webhook URLs are credentials), so they go neither on the
# command line (ps shows it to every local user) nor in a file the app could read: the
# conf (root-only when it holds secrets) gives them to the listener's environment, which
# only root and the listener's own user can read.

LISTENER_ENV = "SUPERVISOR_FASTAPI_LISTENER"


@dataclass(frozen=True)
class ListenerConfig:
    app: str
    web: str
    migrate: str = ""
    controller: bool = True  # the plugin enforces the gate and holds; False: the listener starts the web group
    groups: Tuple[str, ...] = ()
    state_path: str = ""
    journal_path: str = ""
    base_dir: str = ""  # where `command` channels run
    run_dir: str = ""
    alerts: Tuple[Dict[str, Any], ...] = ()  # {"type", "name", "options": {...}} per [[alerts]]
    send_retries: int = 3
    # > 0: the plugin starts the listener when an event needs it (plugins/controller.py), so it
    # exits after this many seconds with nothing to do; 0 (no plugin, or a conf rendered before
    # this setting): it stays, as supervisord would restart it at once.
    idle_exit: float = 0.0
    spool_path: str = ""  # events the plugin kept for it while it was not running (plugins/ondemand.py)

    def to_env(self) -> str:
        import base64

        body = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        return base64.urlsafe_b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).decode()

    @classmethod
    def from_env(cls, value: str) -> "ListenerConfig":
        import base64

        try:
            body = json.loads(base64.urlsafe_b64decode(value.encode()).decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not an object")
            body["groups"] = tuple(body.get("groups") or ())
            body["alerts"] = tuple(body.get("alerts") or ())
            return cls(**body)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{LISTENER_ENV} is not a supervisor-fastapi listener setting ({exc})") from None
