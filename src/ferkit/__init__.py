"""ferkit: facial expression recognition with the specified ResNet18-style recipe."""

from .config import Config
from .data.datasets import CLASSES
from .errors import FerkitError

__version__ = "0.1.0"
__all__ = ["CLASSES", "Config", "FerkitError", "__version__"]
