"""A systemd unit that starts supervisord at boot and restarts it if it dies."""

from ..spec import Spec
from .conf import STOP_MARGIN


def unit(spec: Spec, conf_path: str, python: str) -> str:
    """The unit text; supervisord runs in the foreground (-n) so systemd supervises it."""
    ctl = f"{python} -m supervisor.supervisorctl -c {conf_path}"
    stop = int(spec.server.graceful_timeout) + STOP_MARGIN + 15
    user_note = ("# Programs run as app.user; supervisord itself runs as root to switch to it."
                 if spec.app.user else
                 "# app.user is not set: add User= below (or app.user in the spec) to avoid running as root.")
    return f"""# supervisor-fastapi: {spec.app.name}
# Install: save as /etc/systemd/system/{spec.app.name}.service, then
#   systemctl daemon-reload && systemctl enable --now {spec.app.name}
{user_note}
[Unit]
Description=supervisor-fastapi {spec.app.name} ({spec.server.bind.url})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={python} -m supervisor.supervisord -n -c {conf_path}
ExecReload={ctl} update
# supervisord stops its programs in order on SIGTERM; KillMode=mixed keeps systemd from
# signalling the workers directly at the same moment.
KillMode=mixed
TimeoutStopSec={stop}
Restart=always
RestartSec=2
LimitNOFILE=65536
# supervisord's own log and the listener's files are root's alone; the app's programs set
# umask=022 in the conf.
UMask=0077
WorkingDirectory={spec.base_dir}

[Install]
WantedBy=multi-user.target
"""
