"""Code that supervisor itself loads, in the Python of whoever runs it (often the OS package's).

Inside supervisord: ``rpc`` (the ``[rpcinterface:fastapi_<app>]`` factory) and what it
installs, ``controller`` with its pure decisions ``gate`` and ``crashloop``, and ``sockets``
(the held and shared sockets). Inside supervisorctl: ``ctl`` (``[ctlplugin:fastapi]``), which
drives cli/roll.py and cli/statusview.py over XML-RPC.

A plugin that fails to import stops supervisord (and every app it runs) from starting, and
everything loaded stays resident for its whole life: the standard library, supervisor,
``contracts`` and ``layout`` only (``ctl`` also cli.edges, cli.roll, cli.statusview); never
click, uvicorn or a TOML parser (tests/unit/test_imports.py). Nothing is imported here.
"""
