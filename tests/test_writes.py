"""Every file ferkit keeps goes through one atomic writer: a failed write leaves the file that was there."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ferkit.atomic import output_file, output_folder, write_atomically
from ferkit.checkpoint import atomic_save, read_checkpoint, save_weights
from ferkit.data import batched as fastdata
from ferkit.data.batched import decode_once
from ferkit.data.datasets import load_splits
from ferkit.errors import FerkitError
from ferkit.inference import export
from ferkit.inference.results import ResultStream


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _write_checkpoint(source: Path, target: Path) -> None:
    atomic_save(read_checkpoint(source), target)


def _write_weights(source: Path, target: Path) -> None:
    save_weights(read_checkpoint(source), target)


def _write_onnx(source: Path, target: Path) -> None:
    export.export_onnx(source, target)


WRITERS = {
    "checkpoint": (_write_checkpoint, "best.pth"),
    "safetensors": (_write_weights, "best.safetensors"),
    "onnx": (_write_onnx, "best.onnx"),
}


@pytest.mark.parametrize("writer", WRITERS, ids=list(WRITERS))
def test_a_failed_write_leaves_the_earlier_file_and_no_temporary_one(
    writer, untrained_checkpoint, tmp_path, monkeypatch
):
    write, name = WRITERS[writer]
    monkeypatch.setattr(
        export, "to_onnx_bytes", lambda loaded: b"an ONNX graph"
    )  # the export itself is tested elsewhere
    target = tmp_path / name
    target.write_bytes(b"the earlier file")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(FerkitError, match=rf"cannot write .*{name}: No space left on device; "):
        write(untrained_checkpoint, target)
    assert target.read_bytes() == b"the earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    monkeypatch.undo()
    monkeypatch.setattr(export, "to_onnx_bytes", lambda loaded: b"an ONNX graph")
    write(untrained_checkpoint, target)
    assert target.read_bytes() != b"the earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_decode_cache_is_skipped_with_a_warning_when_it_cannot_be_written(image_folder, tmp_path, monkeypatch):
    samples = load_splits(image_folder).train
    warnings = []
    # Recorded here rather than through logging: a training run earlier in the session owns the logger's handlers.
    monkeypatch.setattr(fastdata.log, "warning", warnings.append)
    monkeypatch.setattr(os, "fsync", _no_space)
    decoded = decode_once(samples, tmp_path / "cache")
    assert len(decoded.images) == len(samples)
    assert len(warnings) == 1 and "could not write the decode cache" in warnings[0]
    assert list((tmp_path / "cache").iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_atomically(tmp_path / "model.onnx", lambda f: f.write(b"graph"))
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o666 & ~umask


def test_an_error_inside_the_write_is_raised_as_it_is(tmp_path):
    def broken(f):
        raise ValueError("not serialisable")

    with pytest.raises(ValueError, match="not serialisable"):
        write_atomically(tmp_path / "x.pth", broken)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_says_an_earlier_file_is_unchanged_only_where_there_was_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _no_space)
    (tmp_path / "old.onnx").write_bytes(b"graph")
    with pytest.raises(FerkitError, match="; the file that was there is unchanged; check the folder's permissions"):
        write_atomically(tmp_path / "old.onnx", lambda f: f.write(b"new graph"))
    with pytest.raises(FerkitError, match=r"No space left on device; check the folder's permissions and space$"):
        write_atomically(tmp_path / "new.onnx", lambda f: f.write(b"graph"))


def test_an_output_path_that_cannot_be_made_or_written_is_one_line_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "photo.jpg").write_bytes(b"a file where a folder would go")
    with pytest.raises(FerkitError, match=r"^--json .*photo\.jpg/sub/x\.json: cannot make the folder .*/sub "):
        output_file(tmp_path / "photo.jpg" / "sub" / "x.json", "--json")
    with pytest.raises(FerkitError, match=r"\(.*photo\.jpg is a file\); name another$"):
        output_folder(tmp_path / "photo.jpg" / "drawn", "--annotate")
    assert output_folder(tmp_path / "new" / "drawn", "--annotate").is_dir()  # made now
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a folder of another user's
    with pytest.raises(FerkitError, match=r"^--summary .*people\.json: the folder .* is not writable; name another$"):
        output_file(tmp_path / "people.json", "--summary")
    with pytest.raises(FerkitError, match=r"^cannot write .*: Is a directory; name another file$"):
        ResultStream(["Happy"], json_to=str(tmp_path))
