"""`ferkit data faces`: a folder of photos made a dataset of the faces `ferkit predict` classifies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, iou
from PIL import Image

from ferkit.cli import main
from ferkit.data.datasets import check_dataset
from ferkit.inference.facecrops import crop_faces, largest_face
from ferkit.inference.faces import build_detector

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """train/ and test/ of class folders: the astronaut (one face), a flat grey picture (none) and a broken file."""
    root = tmp_path_factory.mktemp("photos") / "mine"
    for split in ("train", "test"):
        (root / split / "happy").mkdir(parents=True)
        Image.fromarray(skimage_data.astronaut()).save(root / split / "happy" / "astronaut.png")
    (root / "test" / "sad").mkdir()
    (root / "train" / "sad").mkdir()
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(root / "train" / "sad" / "flat.png")
    (root / "test" / "sad" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_each_photo_becomes_the_face_predict_classifies_at_its_own_path(photos, tmp_path, capsys):
    out = tmp_path / "faces"
    assert main(["data", "faces", str(photos), "--out", str(out), "--format", "png"]) == 0
    said = capsys.readouterr().out.strip()
    assert said == (
        f"4 photos: 2 faces written into {out} (the largest of each photo), no face found in 1, 1 unreadable (each "
        f"crop's box, or a photo's problem: {out / 'faces.csv'})"
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "faces.csv",
        "faces.json",
        "test/happy/astronaut.png",
        "train/happy/astronaut.png",
    ]
    expected, face = largest_face(skimage_data.astronaut(), build_detector())
    np.testing.assert_array_equal(np.asarray(Image.open(out / "train/happy/astronaut.png")), expected)
    rows = {row["photo"]: row for row in csv.DictReader((out / "faces.csv").open())}
    assert rows["train/sad/flat.png"]["problem"] == "no face found" and rows["train/sad/flat.png"]["crop"] == ""
    assert rows["train/happy/astronaut.png"]["face"] == "0"
    assert rows["test/sad/broken.jpg"]["problem"].startswith("unreadable: ")
    box = tuple(float(rows["train/happy/astronaut.png"][k]) for k in ("x", "y", "width", "height"))
    assert iou(box, ASTRONAUT_FACE) > 0.5 and box == pytest.approx(face.box, abs=0.05)
    # The crops are a dataset as the photos were: the classes that got a face, in both splits.
    assert check_dataset(str(out))["splits"]["train"]["Happy"] == 1


def test_jpeg_by_default_and_a_json_summary(photos, tmp_path, capsys):
    out = tmp_path / "faces"
    assert main(["data", "faces", str(photos), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "photos": 4,
        "faces": 2,
        "no_face": ["train/sad/flat.png"],
        "unreadable": ["test/sad/broken.jpg"],
    }
    assert Image.open(out / "test/happy/astronaut.jpg").format == "JPEG"


def test_photos_differing_only_in_suffix_keep_their_full_names(tmp_path):
    src = tmp_path / "src" / "happy"
    src.mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(src / "a.png")
    Image.fromarray(skimage_data.astronaut()).save(src / "a.jpg")
    Image.fromarray(skimage_data.astronaut()).save(src / "b.v2.png")
    done = crop_faces(tmp_path / "src", tmp_path / "out", build_detector())
    assert done.faces == 3
    assert sorted(p.name for p in (tmp_path / "out" / "happy").iterdir()) == ["a.jpg.jpg", "a.png.jpg", "b.v2.jpg"]


def test_every_face_of_a_group_photo_largest_first(tmp_path, capsys):
    # Two faces side by side: the astronaut, and beside her a copy at 60% of her size.
    astronaut = skimage_data.astronaut()
    smaller = np.asarray(Image.fromarray(astronaut).resize((307, 307)))
    group = np.zeros((512, 830, 3), np.uint8)
    group[:, :512], group[:307, 512:819] = astronaut, smaller
    (tmp_path / "src").mkdir()
    Image.fromarray(group).save(tmp_path / "src" / "group.png")
    out = tmp_path / "out"
    assert main(["data", "faces", str(tmp_path / "src"), "--out", str(out), "--all-faces"]) == 0
    said = capsys.readouterr().out
    assert "2 faces written into" in said and "(every face of each photo)" in said
    rows = list(csv.DictReader((out / "faces.csv").open()))
    assert [(r["face"], r["crop"]) for r in rows] == [("0", "group_0.jpg"), ("1", "group_1.jpg")]
    boxes = [[float(r[k]) for k in ("x", "y", "width", "height")] for r in rows]
    assert boxes[0][2] > boxes[1][2] and iou(boxes[0], ASTRONAUT_FACE) > 0.5


@pytest.mark.parametrize("case", ["inside", "not empty", "a file", "no photos folder", "no images"])
def test_a_bad_destination_or_source_is_one_line_and_nothing_is_touched(photos, tmp_path, capsys, case):
    src, out = photos, tmp_path / "out"
    if case == "inside":
        out = photos / "crops"
    elif case == "not empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "a file":
        out.write_text("keep")
    elif case == "no photos folder":
        src = tmp_path / "missing"
    else:
        src = tmp_path / "empty"
        (src / "happy").mkdir(parents=True)
    before = sorted(p for p in photos.rglob("*"))
    assert main(["data", "faces", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ferkit: error: ")
    expected = {
        "inside": "the crops would join the photos",
        "not empty": "exists and is not an empty folder; name a new one (nothing is replaced)",
        "a file": "exists and is not an empty folder",
        "no photos folder": "is not a folder; give the folder of photos",
        "no images": "no images in",
    }[case]
    assert expected in err
    assert sorted(p for p in photos.rglob("*")) == before
    if case == "not empty":
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    if case == "a file":
        assert out.read_text() == "keep"


class StopsAt:
    """The default detector, with Ctrl-C pressed at its ``at``-th photo (0: never); it counts the photos it sees."""

    def __init__(self, at: int = 0) -> None:
        self.detector, self.at, self.calls = build_detector(), at, 0

    @property
    def settings(self):
        return self.detector.settings

    def detect(self, rgb):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.detector.detect(rgb)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stopped_run_keeps_its_record_and_resume_finishes_it_as_one_run_would(photos, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert main(["data", "faces", str(photos), "--out", str(whole)]) == 0
    capsys.readouterr()
    out, argv = tmp_path / "out", ["data", "faces", str(photos), "--out", str(tmp_path / "out")]
    # Stopped on the third photo: the first two (a face; a broken file, which never reaches the detector) are done.
    monkeypatch.setattr("ferkit.cli._built_detector", lambda args: StopsAt(2))
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"ferkit: interrupted; {out / 'faces.csv'} records the photos done; continue with: ferkit " + (
        f"data faces {photos} --out {out} --resume"
    )
    rows = list(csv.DictReader((out / "faces.csv").open()))
    assert [r["photo"] for r in rows] == ["test/happy/astronaut.png", "test/sad/broken.jpg"]
    assert sorted(files(out)) == ["faces.csv", "faces.json", "test/happy/astronaut.jpg"]  # every crop recorded
    detector = StopsAt()
    monkeypatch.setattr("ferkit.cli._built_detector", lambda args: detector)
    assert main([*argv, "--resume"]) == 0
    assert detector.calls == 2  # the photos already recorded are not read again
    # The summary counts the whole folder, what the first run did too.
    assert capsys.readouterr().out.startswith("4 photos: 2 faces written into")
    assert files(out) == files(whole)


def test_resume_refuses_other_crop_settings_and_a_folder_it_did_not_make(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "faces", str(photos), "--out", str(out)]) == 0
    before = files(out)
    assert main(["data", "faces", str(photos), "--out", str(out), "--resume", "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test/happy/astronaut.jpg, these options test/happy/astronaut.png" in err
    assert "give the --format and --all-faces it was made with" in err
    assert main(["data", "faces", str(photos), "--out", str(out), "--resume", "--all-faces"]) == 2
    assert "these options test/happy/astronaut_0.jpg" in capsys.readouterr().err
    # Faces found by another detector, or the same with other options, would join the crops unmarked.
    assert json.loads((out / "faces.json").read_text()) == {"detector": build_detector().settings}
    assert main(["data", "faces", str(photos), "--out", str(out), "--resume", "--min-face", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "faces.json records detector retinaface, score_threshold 0.6" in err
    assert "min_face 24.0" in err and "min_face 40.0" in err and "give the --detector, --min-face and" in err
    assert files(out) == before
    for damaged in ('{"detector": ', "[]", "{}"):  # a hand edit, a truncated copy: one line, not a traceback
        (out / "faces.json").write_text(damaged)
        assert main(["data", "faces", str(photos), "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "faces.json does not hold the detector settings" in err
        assert (out / "faces.json").read_text() == damaged
    (tmp_path / "mine").mkdir()
    assert main(["data", "faces", str(photos), "--out", str(tmp_path / "mine"), "--resume"]) == 2
    assert "has no faces.csv, so it is not a folder of crops to go on with" in capsys.readouterr().err


def test_a_record_line_cut_short_by_a_crash_is_done_again(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "faces", str(photos), "--out", str(out)]) == 0
    whole = (out / "faces.csv").read_text()
    lines = whole.splitlines(keepends=True)
    (out / "faces.csv").write_text("".join(lines[:-1]) + lines[-1][:10])  # the last photo's line half written
    assert main(["data", "faces", str(photos), "--out", str(out), "--resume"]) == 0
    assert (out / "faces.csv").read_text() == whole


def test_evaluate_reads_detected_faces_as_the_crops_are_cut(photos, tmp_path):
    # evaluate --faces detected and data faces share largest_face: the same pixels for the same photo.
    from ferkit.data.datasets import Sample
    from ferkit.inference.evaluate import detected_faces

    shutil.copytree(photos / "train" / "happy", tmp_path / "happy")
    [sample], found = detected_faces([Sample(tmp_path / "happy" / "astronaut.png", 3, "a")], build_detector())
    crop, _ = largest_face(skimage_data.astronaut(), build_detector())
    assert found == 1 and np.array_equal(sample.source, crop)
