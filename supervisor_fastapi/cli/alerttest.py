"""`supervisor-fastapi alert-test`: one test alert through every channel, and a line for each."""

from typing import List, Tuple

from ..generate.conf import listener_config
from ..listener.channels import channels_from_alerts
from ..listener.delivery import send_test
from ..spec import Spec


def test_report(spec: Spec) -> Tuple[List[str], bool]:
    """Lines for `alert-test` and whether every channel took the test alert."""
    settings = listener_config(spec)
    channels = channels_from_alerts(settings.alerts, settings.base_dir, settings.run_dir)
    results = send_test(channels, spec.app.name, spec.source)
    lines = []
    if not spec.alerts:
        lines.append(f"no [[alerts]] in {spec.source}: alerts go to the default log file only")
    for channel, error in results:
        where = {"webhook": "url", "email": "to", "command": "command", "log": "path"}[channel.type]
        target = channel.target()  # a webhook's secret path and query shown as ***
        status = "sent" if error is None else f"FAILED: {error}"
        lines.append(f"{channel.name} ({channel.type}, {where} {target}): {status}")
    return lines, all(error is None for _, error in results)
