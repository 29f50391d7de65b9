"""Run FastAPI/ASGI apps under Supervisor: replicated Uvicorn workers on one shared socket."""

__version__ = "0.1.0"
