"""The one way ferkit writes a file it keeps: whoever reads the path finds the old file or the new one, never a part.

Checkpoints, safetensors weights, ONNX models and the decode cache all go through :func:`write_atomically`;
:func:`output_file` and :func:`output_folder` check a path a command will write before it does its work, and
:func:`output_names` names the files written for a folder of inputs.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import FerkitError


def write_atomically(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    advice: str | None = None,
) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary file sits in the same folder because a rename is atomic only within one file system, and
    is synced first so that a crash just after the rename cannot leave an empty file under the new name.
    An OSError (full disk, no permission) removes it and becomes one FerkitError line ending in ``advice``.
    """
    path = Path(path)
    if advice is None:
        kept = "the file that was there is unchanged; " if path.exists() else ""
        advice = f"{kept}check the folder's permissions and space"
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


def output_file(
    path: str | os.PathLike, what: str, suffixes: Sequence[str] = (), default_name: str | None = None
) -> Path:
    """``path`` checked as a file to write ``what`` (an option's name) to, its folder made.

    With ``default_name``, a folder (one that exists, or a path ending in a slash) takes a file of that name.
    Called before any work: a folder or a kind of file nothing here writes would otherwise fail only when the
    results are written, after every photo or frame has been read.
    """
    if default_name and (Path(path).is_dir() or str(path).endswith(("/", os.sep))):
        path = Path(path) / default_name
    path = Path(path)
    if path.is_dir():
        example = path / f"out{suffixes[0] if suffixes else ''}"
        raise FerkitError(f"{what} {path} is a folder; give a file name, e.g. {example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise FerkitError(f"{what} {path}: name a {', '.join(suffixes)} file")
    _make_folder(path.parent, what, path)
    if not os.access(path.parent, os.W_OK):  # found now, not when the results are written at the end
        raise FerkitError(f"{what} {path}: the folder {path.parent} is not writable; name another")
    return path


def output_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` checked, before any work, as a folder to write ``what`` (an option's name) into, and made."""
    path = Path(path)
    if path.is_file():
        raise FerkitError(f"{what} {path} is a file; name a folder for it to write into")
    _make_folder(path, what, path)
    return path


def outside_inputs(out: Path, inputs: Path, joining: str) -> None:
    """Refuse ``--out`` at or inside the folder of ``inputs``, where ``joining`` (what it writes would join them)."""
    if out.resolve() == inputs.resolve() or out.resolve().is_relative_to(inputs.resolve()):
        raise FerkitError(f"--out {out} is inside {inputs}: {joining}; name a folder outside it")


def new_folder(out: Path, otherwise: str = "") -> None:
    """Refuse ``--out`` where a folder to fill exists with something in it (``otherwise``: another way on)."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise FerkitError(
            f"--out {out} exists and is not an empty folder; name a new one (nothing is replaced){otherwise}"
        )


def _make_folder(folder: Path, what: str, path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, no permission, a read-only or virtual file system
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker else e.strerror or str(e)
        raise FerkitError(f"{what} {path}: cannot make the folder {folder} ({why}); name another") from None


def output_names(inputs: Sequence[Path], suffix: str | Sequence[str]) -> list[Path]:
    """The names of the files written for ``inputs`` (paths relative to their folder): each input's with its
    ``suffix`` (one for all, or one per input) for its own, or, where two would share a name (``a.jpg`` and ``a.png``
    both written as ``a.png``), its full name and suffix (``a.jpg.png``), so that no output replaces another."""
    suffixes = [suffix] * len(inputs) if isinstance(suffix, str) else list(suffix)
    named = Counter(p.with_suffix(x) for p, x in zip(inputs, suffixes))
    return [
        p.with_suffix(x) if named[p.with_suffix(x)] == 1 else p.parent / (p.name + x) for p, x in zip(inputs, suffixes)
    ]
