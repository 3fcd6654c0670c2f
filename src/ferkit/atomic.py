"""The one way ferkit writes a file it keeps: whoever reads the path finds the old file or the new one, never a part.

Checkpoints, safetensors weights, ONNX models and the decode cache all go through :func:`write_atomically`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import FerkitError


def write_atomically(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    advice: str = "the file that was there is unchanged; check the folder's permissions and space",
) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary file sits in the same folder because a rename is atomic only within one file system, and
    is synced first so that a crash just after the rename cannot leave an empty file under the new name.
    An OSError (full disk, no permission) removes it and becomes one FerkitError line ending in ``advice``.
    """
    path = Path(path)
    # A hidden name ending in .tmp: `ferkit train --resume` clears such leftovers of a killed process.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FerkitError(f"cannot write {path}: {e.strerror or e}; {advice}") from None
        raise
