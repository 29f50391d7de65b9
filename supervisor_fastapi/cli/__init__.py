"""The operator's side: the ``supervisor-fastapi`` click commands and what they drive."""

from .main import main

__all__ = ["main"]
