"""ferkit: facial expression recognition with the specified ResNet18-style recipe."""

from .config import Config
from .errors import FerkitError

__version__ = "0.1.0"
__all__ = ["CLASSES", "Config", "FerkitError", "__version__"]


def __getattr__(name: str):
    # CLASSES lives beside the datasets, which import PyTorch: loaded when asked for, so that `ferkit --help` and
    # `import ferkit` do not pay a second and a half for it.
    if name == "CLASSES":
        from .data.datasets import CLASSES

        return CLASSES
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")
