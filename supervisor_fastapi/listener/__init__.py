"""The supervisor-fastapi event listener: delivers alerts.

Runs as ``python -m supervisor_fastapi.listener`` under an ``[eventlistener:...]`` section,
its settings in the ``SUPERVISOR_FASTAPI_LISTENER`` variable of its environment; needs only
the standard library and supervisor. The decisions (gate, crash-loop holds) are made inside
supervisord (plugins/controller.py); without the plugin, the listener starts the web group
once the migration exits 0 (``state.Fallback``).
"""
