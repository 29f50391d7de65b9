"""placeholder"""
from typing import Any


def make_ctlplugin(controller: Any, **config: str) -> Any:
    from supervisor.supervisorctl import ControllerPluginBase

    return ControllerPluginBase(controller)
