"""The HTTP API and the web page (``ferkit serve``)."""

__all__ = ["create_app", "run"]


def __getattr__(name: str):
    # The app needs the serve extra (fastapi); the CLI reads .limits without it.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
