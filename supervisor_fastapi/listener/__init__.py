"""The supervisor-fastapi event listener: delivers alerts.

Runs as ``python -m supervisor_fastapi.listener`` under an ``[eventlistener:...]`` section,
its settings in the ``SUPERVISOR_FASTAPI_LISTENER`` variable of its environment; needs only
the standard library and supervisor, and loads its network clients (``transport``: HTTP, SMTP,
TLS; supervisor's XML-RPC client) on the first alert that needs them, so it runs at ~15 MB
RSS (tests/unit/test_imports.py keeps it so). With the plugin it exits when idle and the plugin
starts it again for the next event that needs it (plugins/ondemand.py): at rest, it does not
run. The decisions (gate, crash-loop holds) are made inside supervisord (plugins/controller.py);
without the plugin, the listener starts the web group once the migration exits 0 (``state.Fallback``).
"""
