"""uvicorn without its command line, for the web worker.

``import uvicorn`` runs ``uvicorn/__init__.py``, which imports ``uvicorn.main``: the click
command line and uvicorn's own process manager (``uvicorn.supervisors``: multiprocessing,
concurrent.futures). A worker serves with ``Config`` and ``Server`` only, and that import costs
every worker start about 15 ms and 1.8 MB USS that serve nothing (uvicorn 0.55, Python 3.11;
older uvicorn releases load click from ``uvicorn.config`` too, so less is saved there).

``install`` registers the package without running its ``__init__``. Submodules import as
usual; ``Config`` and ``Server``, which the worker and uvicorn's own modules take from the
package (``from uvicorn import Config`` in ``uvicorn.lifespan``), resolve to their modules; any
other name (``uvicorn.run``, ``uvicorn.__version__`` for an app that asks) runs the real
``__init__`` first, so the app sees the package uvicorn ships. tests/unit/test_imports.py
keeps the worker without click and checks that ``uvicorn.run`` still resolves.
"""

import importlib.util
import sys
from typing import Any, List


def install() -> None:
    """Register a lazy ``uvicorn`` package, unless uvicorn is already imported (or missing)."""
    if "uvicorn" in sys.modules:
        return
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # not installed as a package: the worker's own import says what is wrong
    package = importlib.util.module_from_spec(spec)
    ran: List[bool] = []  # the real __init__ ran (or is running): never twice

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562's module __getattr__
        if name == "Config":
            from uvicorn.config import Config

            return Config
        if name == "Server":
            from uvicorn.server import Server

            return Server
        if not ran:
            ran.append(True)
            spec.loader.exec_module(package)  # type: ignore[union-attr]
            if name in package.__dict__:
                return package.__dict__[name]
        raise AttributeError(f"module 'uvicorn' has no attribute {name!r}")

    setattr(package, "__getattr__", __getattr__)  # noqa: B010 - PEP 562 reads it from the module's namespace
    sys.modules["uvicorn"] = package
