"""A ``[ctlplugin:fastapi]`` for supervisorctl: ``rolling_restart`` and ``fastapi_status``.

For operators who live in supervisorctl. Both commands talk XML-RPC only (the
``fastapi_<app>.`` methods of the rpcinterface plugin provide the controller's state,
ready files and RSS), so they also work against a remote supervisord. The logic is
``cli/roll.py``'s and ``cli/statusview.py``'s (over ``cli/edges.py``), shared with the CLI.

    supervisor> rolling_restart            # the app named in the [ctlplugin:fastapi] section
    supervisor> rolling_restart shop
    supervisor> fastapi_status
    supervisor> fastapi_status --json
"""

import json
import time
import xmlrpc.client
from typing import Any, Tuple

from supervisor.supervisorctl import ControllerPluginBase, LSBInitExitStatuses

from ..cli import edges, roll, statusview
from ..layout import Names


class FastAPIControllerPlugin(ControllerPluginBase):
    name = "supervisor-fastapi"

    def __init__(self, controller: Any, app: str = "", timeout: str = "60") -> None:
        super().__init__(controller)
        self.group = app  # the app's name is its web group's
        self.timeout = float(timeout)

    def _edges(self, app: str) -> edges.SupervisorEdges:
        return edges.rpc_edges(self.ctl.get_server_proxy(), app)

    def _fail(self, message: str) -> None:
        self.ctl.output(f"error: {message}")
        self.ctl.exitstatus = LSBInitExitStatuses.GENERIC

    def _group_and_flags(self, arg: str) -> Tuple[str, bool]:
        words = arg.split()
        as_json = "--json" in words
        names = [w for w in words if w != "--json"]
        return (names[0] if names else self.group), as_json

    def do_rolling_restart(self, arg: str) -> None:
        group, _ = self._group_and_flags(arg)
        if not group:
            self._fail("name the app: rolling_restart <app>")
            return
        try:
            result = roll.rolling_restart(self._edges(group), group, self.ctl.output, self.timeout)
        except (xmlrpc.client.Fault, OSError) as exc:
            self._fail(_unreachable(exc, group))
            return
        if result.ok:
            self.ctl.output(f"{group}: restarted {len(result.restarted)}"
                            + (f", skipped {len(result.skipped)}" if result.skipped else ""))
        else:
            self._fail(f"rolling restart stopped at {result.failed}: {result.reason}")

    def help_rolling_restart(self) -> None:
        self.ctl.output("rolling_restart [<app>]\tReplace the group's workers one at a time; each new worker\n"
                        "\t\t\tlistens before the next old one stops (drain on stop). Stops at a\n"
                        "\t\t\tworker that does not come up, leaving the rest serving, and alerts.")

    def do_fastapi_status(self, arg: str) -> None:
        group, as_json = self._group_and_flags(arg)
        if not group:
            self._fail("name the app: fastapi_status <app> [--json]")
            return
        try:
            proxy = self.ctl.get_server_proxy()
            status = statusview.status_of(self._edges(group), group, statusview.socket_holds(proxy, group))
        except (xmlrpc.client.Fault, OSError) as exc:
            self._fail(_unreachable(exc, group))
            return
        if as_json:
            self.ctl.output(json.dumps(status.to_json(), indent=2, default=str))
        else:
            self.ctl.output(statusview.format_status(status, time.time()))
        if not status.ok:
            self.ctl.exitstatus = LSBInitExitStatuses.GENERIC

    def help_fastapi_status(self) -> None:
        self.ctl.output("fastapi_status [<app>] [--json]\tEvery program and worker of the app: state, pid,\n"
                        "\t\t\tuptime, RSS, restarts in the last hour, open incident, last alert.")


def _unreachable(exc: Exception, app: str) -> str:
    return f"{getattr(exc, 'faultString', exc)} (is [rpcinterface:{Names(app).rpc_namespace}] loaded in supervisord?)"


def make_ctlplugin(controller: Any, **config: str) -> FastAPIControllerPlugin:
    """The ``supervisor.ctl_factory`` for ``[ctlplugin:fastapi]``; option ``app`` is the default app."""
    return FastAPIControllerPlugin(controller, config.get("app", ""), config.get("timeout", "60"))
