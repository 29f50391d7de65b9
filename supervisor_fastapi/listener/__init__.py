"""The supervisor-fastapi event listener: migration gate, crash-loop backoff, alerts.

Runs as ``python -m supervisor_fastapi.listener --spec /abs/spec.toml`` under an
``[eventlistener:...]`` section; needs only the standard library and supervisor.
"""
