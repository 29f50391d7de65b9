"""Programs supervisord runs next to the app, each in a process of its own.

- ``worker`` (with ``drain`` and ``reqcount``): each ``[fcgi-program:<app>]`` process, uvicorn
  serving the app on the shared socket; the only place the web stack (uvicorn, asyncio, the
  app's framework) is loaded.
- ``watchdog`` (``[program:<app>_watchdog]``), ``metrics`` (the ``[metrics]`` exporter) and
  ``release_migrate`` (release mode's migration program): resident processes that serve no
  request, so the standard library, supervisor's XML-RPC client, ``contracts`` and ``layout``
  only; no web stack, click or TOML parser (tests/unit/test_imports.py).
- ``demo_app``: the app `supervisor-fastapi demo` serves.

Nothing is imported here: each program loads only its own module.
"""
