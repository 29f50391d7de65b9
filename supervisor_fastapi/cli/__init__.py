"""The operator's side: the ``supervisor-fastapi`` click commands (cli.main) and what they drive.

Runs in the operator's ``supervisor-fastapi`` process (a shell, CI, a systemd ExecStartPre),
never beside the workers. It may import anything in this package and click, the TOML reader
(spec.load) and the generators. The exception is what the supervisorctl plugin
(plugins/ctl.py) loads inside the OS supervisorctl's Python, which has supervisor and this
package but not click (or uvicorn): ``edges``, ``roll`` and ``statusview`` import only the
standard library, supervisor, ``contracts`` and ``layout`` at module level
(tests/unit/test_imports.py). Nothing is imported here, so loading those three loads no other.
"""
