import json

import numpy as np
import pytest
from conftest import make_csv, make_image_folder, make_photo_folder
from PIL import Image

from ferkit.cli import main
from ferkit.data.datasets import CLASSES, FerDataset, canonical_class, check_dataset, load_splits, resolve_data_path
from ferkit.data.split import split_folder
from ferkit.errors import FerkitError


def test_image_folder_spec_protocol(image_folder):
    splits = load_splits(image_folder, "spec")
    assert splits.classes == CLASSES
    assert len(splits.train) == 28 and len(splits.select) == 28 and splits.report is splits.select
    labels = sorted({s.label for s in splits.train})
    assert labels == list(range(7))
    # labels follow the canonical order, whatever the folder listing order
    happy = [s for s in splits.train if "/happy/" in s.name]
    assert {s.label for s in happy} == {CLASSES.index("Happy")}


def test_image_folder_clean_protocol_uses_file_name_prefixes(image_folder):
    splits = load_splits(image_folder, "clean")
    assert all("PublicTest_" in s.name for s in splits.select)
    assert all("PrivateTest_" in s.name for s in splits.report)
    assert len(splits.select) == len(splits.report) == 14
    assert splits.names == {"select": "PublicTest", "report": "PrivateTest"}


def test_clean_protocol_without_prefixes_or_val_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", test_prefixes=("img_", "img_"))
    with pytest.raises(FerkitError, match="--protocol spec"):
        load_splits(root, "clean")
    assert len(load_splits(root, "spec").report) == 28


def test_aliases_and_case_are_accepted(tmp_path):
    names = ["Anger", "DISGUST", "fearful", "Happiness", "neutral", "Sadness", "surprised"]
    splits = load_splits(make_image_folder(tmp_path / "d", folder_names=names), "spec")
    assert splits.classes == CLASSES
    assert canonical_class(" Joy ") == "Happy" and canonical_class("contempt") is None


def test_unknown_class_folder_is_listed(tmp_path):
    root = make_image_folder(tmp_path / "d")
    (root / "train" / "contempt").mkdir()
    with pytest.raises(FerkitError, match=r"unknown class folders \['contempt'\]"):
        load_splits(root)


def test_wrong_layout_says_what_is_expected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FerkitError, match="expected train/<class>/\\* and test/<class>/\\*"):
        load_splits(tmp_path)


def test_missing_data_explains_where_to_get_fer2013(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FERKIT_DATA", raising=False)
    with pytest.raises(FerkitError, match="Kaggle"):
        resolve_data_path(None)
    monkeypatch.setenv("FERKIT_DATA", str(make_image_folder(tmp_path / "env")))
    assert resolve_data_path(None) == tmp_path / "env"


def test_corrupt_image_names_the_file(image_folder):
    bad = image_folder / "train" / "happy" / "Training_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = FerDataset([s for s in load_splits(image_folder).train if s.name == str(bad)])
    with pytest.raises(FerkitError, match="Training_broken.png"):
        dataset[0]


def test_csv_format(tmp_path):
    csv_path = make_csv(tmp_path / "fer2013.csv")
    spec = load_splits(csv_path, "spec")
    assert len(spec.train) == 21 and len(spec.report) == 42
    clean = load_splits(csv_path, "clean")
    assert len(clean.select) == 21 and len(clean.report) == 21
    image, label = FerDataset(clean.train)[0]
    assert image.size == (48, 48) and label == 0
    assert np.asarray(image).dtype == np.uint8


def test_csv_bad_row_is_an_error(tmp_path):
    p = tmp_path / "fer2013.csv"
    p.write_text("emotion,pixels,Usage\n9,1 2 3 4,Training\n")
    with pytest.raises(FerkitError, match="fer2013.csv:2"):
        load_splits(p)


def test_limit_per_class(image_folder):
    splits = load_splits(image_folder, "spec", limit_per_class=2)
    assert len(splits.train) == 14 and len(splits.report) == 14


def test_empty_class_is_an_error(image_folder):
    for f in (image_folder / "train" / "sad").iterdir():
        f.unlink()
    with pytest.raises(FerkitError, match=r"\['Sad'\] have no training images"):
        load_splits(image_folder)


def test_check_finds_black_and_unreadable(image_folder, capsys):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image_folder / "test" / "fear" / "PublicTest_black.png")
    (image_folder / "train" / "sad" / "Training_bad.jpg").write_bytes(b"nope")
    report = check_dataset(image_folder)
    assert report["splits"]["train"]["Sad"] == 5 and report["splits"]["test"]["Fear"] == 5
    assert [b["file"].endswith("Training_bad.jpg") for b in report["unreadable"]] == [True]
    assert len(report["black"]) == 1 and report["black"][0].endswith("PublicTest_black.png")
    assert main(["data", "check", str(image_folder)]) == 0
    out = capsys.readouterr().out
    assert "all-black images: 1" in out and "unreadable files: 1" in out


def test_a_folder_of_class_folders_is_checked_whole_and_refused_for_training(image_folder, capsys):
    # CK+48's layout: class folders, no splits, one folder (contempt) that is no FER2013 class.
    whole = image_folder / "train"
    (whole / "contempt").mkdir()
    sad = sorted((whole / "sad").iterdir())
    for f in sad[:2]:
        f.rename(whole / "contempt" / f.name)
    report = check_dataset(whole)
    assert list(report["splits"]) == ["all"] and report["splits"]["all"]["Sad"] == len(sad) - 2
    assert report["left_out"] == ["train/contempt: no FER2013 class; its 2 images are left out"]
    assert main(["data", "check", str(whole)]) == 0
    assert "train/contempt: no FER2013 class" in capsys.readouterr().out
    with pytest.raises(FerkitError, match=r"holds class folders but no train/ and test/ split: `ferkit evaluate"):
        load_splits(whole)


def test_cli_reports_one_line_errors(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ferkit: error: dataset path") and "\n" not in err
    # A folder of loose photos: both layouts ferkit reads are named, as `evaluate` names them.
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "photo.png")
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no class folders and no train/ and test/" in err and "folders named for the classes" in err


# slow: decodes all 35,887 files.
@pytest.mark.slow
@pytest.mark.realdata
def test_real_fer2013_counts_and_quirks(real_data):
    report = check_dataset(real_data)
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert sum(train.values()) == 28709 and sum(test.values()) == 7178
    assert train["Disgust"] == 436 and test["Happy"] == 1774
    assert report["unreadable"] == []
    assert len(report["black"]) == 12
    clean = load_splits(real_data, "clean")
    assert len(clean.select) == 3589 and len(clean.report) == 3589


def test_class_mismatch_between_train_and_test_is_an_error(image_folder):
    import shutil

    shutil.rmtree(image_folder / "train" / "disgust")
    with pytest.raises(FerkitError, match=r"test/ has classes \['Disgust'\] that train/ lacks"):
        load_splits(image_folder)


def test_missing_split_is_an_error(image_folder):
    import shutil

    shutil.rmtree(image_folder / "test")
    with pytest.raises(FerkitError, match=r"found folders \['train'\]"):
        load_splits(image_folder)


def test_a_folder_of_class_folders_is_split_class_by_class_by_a_seed_and_trains(tmp_path, capsys):
    photos = make_photo_folder(tmp_path / "mine", {"happy": 10, "anger": 20, "sad": 1, "contempt": 3})
    done = split_folder(photos, tmp_path / "split", test=0.2, val=0.1, seed=0)
    assert done.counts == {
        "train": {"anger": 14, "happy": 7, "sad": 1},
        "val": {"anger": 2, "happy": 1, "sad": 0},
        "test": {"anger": 4, "happy": 2, "sad": 0},  # a lone image stays in train/
    }
    assert done.left_out == ["mine/contempt: no FER2013 class; its 3 images are left out"]
    record = json.loads((tmp_path / "split" / "split.json").read_text())
    placed = [name for files in record["files"].values() for name in files]
    assert sorted(placed) == sorted(
        f"{p.parent.name}/{p.name}" for p in photos.rglob("*.jpg") if "contempt" not in str(p)
    )
    for name in placed:  # the same pixels, linked where the file system allows
        split = next(s for s, files in record["files"].items() if name in files)
        assert (tmp_path / "split" / split / name).read_bytes() == (photos / name).read_bytes()
    # Training reads it, choosing on val/ under the clean protocol; the class folders keep their own names.
    splits = load_splits(tmp_path / "split", "clean")
    assert (len(splits.train), len(splits.select), len(splits.report)) == (22, 3, 6)
    # The same seed draws the same split; another seed another one.
    assert split_folder(photos, tmp_path / "again", seed=0).counts == done.counts
    assert json.loads((tmp_path / "again" / "split.json").read_text())["files"] == record["files"]
    split_folder(photos, tmp_path / "other", seed=1)
    other = json.loads((tmp_path / "other" / "split.json").read_text())
    assert other["files"]["test"] != record["files"]["test"]
    # From the command line, without val/.
    assert main(["data", "split", str(photos), "--out", str(tmp_path / "cli"), "--val", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"{tmp_path / 'cli'}: train 25, test 6 images, each class split alike (")
    assert out[2] == f"train on it: ferkit train --data {tmp_path / 'cli'}"
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["split.json", "test", "train"]


def test_a_split_refuses_what_would_mix_or_replace_files(tmp_path, image_folder):
    photos = make_photo_folder(tmp_path / "mine", {"happy": 4})
    twice = make_photo_folder(tmp_path / "twice", {"anger": 2, "angry": 2})
    empty = make_photo_folder(tmp_path / "empty", {"happy": 0, "contempt": 2})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for src, out, kwargs, message in [
        (photos, photos / "split", {}, r"--out .*/mine/split is inside .*mine: the split would join the images"),
        (photos, tmp_path / "full", {}, r"--out .*full exists and is not an empty folder; name a new one"),
        (image_folder, tmp_path / "x", {}, r"has train/ and test/ already: train on it as it is"),
        (tmp_path / "full", tmp_path / "x", {}, r"is not a folder of class folders \(angry/, happy/, ...\)"),
        (photos, tmp_path / "x", {"test": 0.0}, r"^--test 0 and --val 0.1: each a fraction of every class"),
        (photos, tmp_path / "x", {"test": 0.6, "val": 0.4}, r"together under 1$"),
        (twice, tmp_path / "x", {}, r"folders 'anger' and 'angry' in .*twice both mean Angry; merge them"),
        (empty, tmp_path / "x", {}, r"has no images in folders named for the classes; nothing to split$"),
    ]:
        with pytest.raises(FerkitError, match=message):
            split_folder(src, out, **kwargs)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()
