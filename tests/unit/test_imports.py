"""Each process imports only what it runs.

The listener, the rpcinterface plugin (inside supervisord), the supervisorctl plugin, the
watchdog and the metrics exporter live next to the workers for the whole life of a
deployment: every module they load is resident memory in a process that never serves a
request. Each entry point is imported in a fresh interpreter and its ``sys.modules`` compared
against what it must never load: the web stack (uvicorn, the app's framework, asyncio), the
operator's CLI (click) and the spec's TOML reader and writer.
"""

import json
import subprocess
import sys
import xmlrpc.client
from typing import List

import pytest

from supervisor_fastapi.contracts import rpc

# Modules none of the resident processes may load (a prefix matches its submodules).
WEB_STACK = ["uvicorn", "fastapi", "starlette", "pydantic", "anyio", "h11", "httptools", "uvloop", "websockets",
             "asyncio"]
OPERATOR_ONLY = ["click", "tomllib", "tomli", "tomli_w",
                 # Our own modules that pull those in, or exist only for the operator's CLI.
                 "supervisor_fastapi.uvicorn_settings", "supervisor_fastapi.spec.load", "supervisor_fastapi.cli.main",
                 "supervisor_fastapi.generate.conf", "supervisor_fastapi.runtime.drain",
                 "supervisor_fastapi.runtime.demo_app"]
FORBIDDEN = WEB_STACK + OPERATOR_ONLY

ENTRY_POINTS = [
    # python -m supervisor_fastapi.listener (its __main__ runs main() at import, so import what it imports)
    "supervisor_fastapi.listener.main",
    # supervisor.rpcinterface_factory, imported by supervisord
    "supervisor_fastapi.plugins.rpc",
    # supervisor.ctl_factory, imported by supervisorctl
    "supervisor_fastapi.plugins.ctl",
    # python -m supervisor_fastapi.runtime.watchdog
    "supervisor_fastapi.runtime.watchdog",
    # python -m supervisor_fastapi.runtime.metrics (the Prometheus exporter)
    "supervisor_fastapi.runtime.metrics",
    # python -m supervisor_fastapi.runtime.release_migrate (release mode's migration program)
    "supervisor_fastapi.runtime.release_migrate",
]


def modules_after_import(module: str) -> List[str]:
    """``sys.modules`` of a fresh interpreter (no site customisation of ours) after ``import module``."""
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def heavy(modules: List[str], forbidden: List[str]) -> List[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_heavy_matches_whole_names_and_submodules():
    assert heavy(["click", "click.core", "clickhouse", "asyncio.events", "tomli_w"], ["click", "asyncio", "tomli"]) \
        == ["asyncio.events", "click", "click.core"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_resident_process_imports_no_web_stack_cli_or_toml(module):
    assert heavy(modules_after_import(module), FORBIDDEN) == []


# The listener at rest: TLS, HTTP, SMTP, email and XML-RPC load on the first alert that needs
# them (listener/transport.py, the RPC client), subprocess on the first command alert. OpenSSL
# alone is ~5 MB of resident memory in a process that may never send anything.
LISTENER_ON_FIRST_ALERT = ["ssl", "_ssl", "http.client", "smtplib", "email", "xmlrpc", "urllib.request", "subprocess",
                           "supervisor", "supervisor_fastapi.listener.transport"]


def test_listener_loads_its_network_clients_on_the_first_alert_only():
    assert heavy(modules_after_import("supervisor_fastapi.listener.main"), LISTENER_ON_FIRST_ALERT) == []


# The web worker (under app.python, which may not even have supervisor installed), its request
# counters and the migration program only read and write files: the settings, XML-RPC and size
# halves of contracts are not theirs to load, nor is XML-RPC itself.
FILES_ONLY = ["supervisor_fastapi.runtime.worker", "supervisor_fastapi.runtime.reqcount",
              "supervisor_fastapi.runtime.release_migrate"]
NOT_FOR_FILES_ONLY = ["supervisor_fastapi.contracts.settings", "supervisor_fastapi.contracts.rpc",
                      "supervisor_fastapi.contracts.sizes", "xmlrpc", "supervisor"]


@pytest.mark.parametrize("module", FILES_ONLY)
def test_file_only_processes_load_no_settings_or_xmlrpc(module):
    modules = modules_after_import(module)
    assert "supervisor_fastapi.contracts.files" in modules  # else this test checks nothing
    assert heavy(modules, NOT_FOR_FILES_ONLY) == []


def test_the_contracts_package_loads_no_submodule():
    """A re-export in contracts/__init__ would load every submodule into every process."""
    assert [m for m in modules_after_import("supervisor_fastapi.contracts")
            if m.startswith("supervisor_fastapi.contracts.")] == []


# contracts.rpc imports xmlrpc.client inside the two functions that talk to the controller; both
# must still take a Fault or a refused connection as "nobody listens".
class _Refusing:
    def __init__(self, exc):
        self.exc = exc

    def __getattr__(self, name):
        return self

    def __call__(self, *args):
        raise self.exc


@pytest.mark.parametrize("exc", [xmlrpc.client.Fault(1, "UNKNOWN_METHOD"), ConnectionRefusedError()])
def test_calls_to_the_controller_without_it_are_quiet(exc):
    assert rpc.control_state(_Refusing(exc), "shop") is None
    rpc.announce_restart(_Refusing(exc), "shop", "shop:shop_00", "memory")


def test_the_supervisorctl_plugin_loads_only_the_roll_and_the_status_view_of_the_cli():
    # Not cli.control, cli.deploy or cli.main: those are the operator's, and bring more with them.
    cli = [m for m in modules_after_import("supervisor_fastapi.plugins.ctl") if m.startswith("supervisor_fastapi.cli.")]
    assert cli == ["supervisor_fastapi.cli.edges", "supervisor_fastapi.cli.roll", "supervisor_fastapi.cli.statusview"]


def _run(code: str) -> List[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.splitlines()[-1])


# What the worker process loads before it serves, as `python -m supervisor_fastapi.runtime.worker`
# does (lean_uvicorn first, then the module, its server, the app and uvicorn's protocols).
WORKER_READY = """
import json, sys
from supervisor_fastapi.runtime import lean_uvicorn
lean_uvicorn.install()
from supervisor_fastapi.runtime import worker
server = worker.build_server(worker.parse_args(["supervisor_fastapi.runtime.demo_app:app", "--state-dir", ""]))
server.config.load()
assert server.config.loaded
print(json.dumps(sorted(sys.modules)))
"""


def test_the_worker_serves_without_uvicorns_command_line():
    modules = _run(WORKER_READY)
    assert "uvicorn.server" in modules and "uvicorn.lifespan.on" in modules  # else this test checks nothing
    # uvicorn's CLI and process manager; click itself only where uvicorn.config does not load it
    # too (older releases, 0.30 among them, style their log lines with click).
    assert heavy(modules, ["uvicorn.main", "uvicorn.supervisors", "multiprocessing"]) == []


def test_an_app_that_asks_for_more_of_uvicorn_gets_the_package_uvicorn_ships():
    code = """
import json, sys
from supervisor_fastapi.runtime import lean_uvicorn
lean_uvicorn.install()
import uvicorn
from uvicorn import Config, Server
assert Config.__module__ == "uvicorn.config" and Server.__module__ == "uvicorn.server"
assert "uvicorn.main" not in sys.modules
assert callable(uvicorn.run) and uvicorn.__version__ and uvicorn.Config is Config
assert sorted(uvicorn.__all__) == ["Config", "Server", "main", "run"]
try:
    uvicorn.no_such_name
except AttributeError:
    pass
else:
    raise SystemExit("no AttributeError")
print(json.dumps(sorted(sys.modules)))
"""
    assert "uvicorn.main" in _run(code)
