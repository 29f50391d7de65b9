"""The kubernetes render target at the CLI's edge: where the manifests go and what to run next."""

import os
from typing import Callable, List, Optional

from ..generate import kubernetes
from ..spec import Spec
from .deploy import write_atomic

# The render targets; `render` and `check` take their --target choices from here. nginx and
# caddy: the [https] site for an OS-packaged proxy (cli/https.py).
TARGETS = ("supervisord", "kubernetes", "nginx", "caddy")

Echo = Callable[[str], None]


def default_path(spec: Spec) -> str:
    return os.path.join(spec.base_dir, file_name(spec))


def file_name(spec: Spec) -> str:
    return f"{spec.app.name}-kubernetes.yaml"


def render(spec: Spec, output: Optional[str], command: str, out: Echo, err: Echo) -> None:
    """Write the manifests to ``output`` (``-``: stdout) and tell the user the kubectl steps."""
    # On stdout the manifests get the default file name, the one the steps then apply.
    shown = file_name(spec) if output == "-" else (output or default_path(spec))
    text = kubernetes.render(spec, command, shown)
    if output == "-":
        out(text)
    else:
        write_atomic(shown, text)
        err(f"wrote {shown}")
    steps: List[str] = kubernetes.kubectl_steps(spec, shown)
    err(("save it as " + shown + ", then: " if output == "-" else "apply: ") + steps[0])
    for step in steps[1:]:
        err(f"       {step}")
