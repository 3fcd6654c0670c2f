"""The HTTP API and the web page (``ferkit serve``)."""

from .app import create_app, run

__all__ = ["create_app", "run"]
