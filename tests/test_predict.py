"""Prediction on real photos, folders of FER2013 crops and a video; ONNX export parity."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, iou, save_sideways, write_animation, write_video
from PIL import Image

from ferkit.checkpoint import load_model
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.data.images import read_image
from ferkit.errors import FerkitError
from ferkit.inference.predict import Predictor, predict_images, predict_source, stream_video
from ferkit.inference.results import COLOURS, Face, Result, draw_faces, face_colour, face_name, format_table
from ferkit.inference.video import Video
from ferkit.model import count_parameters

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint) -> Path:
    return untrained_checkpoint


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.coffee()).save(folder / "coffee.jpg")
    return folder


def test_astronaut_has_exactly_one_face_on_her_face(checkpoint, photos):
    predictor = Predictor.from_checkpoint(checkpoint)
    result = predictor.predict(photos / "astronaut.png")
    assert result.error is None and (result.width, result.height) == (512, 512)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert iou(face.box, ASTRONAUT_FACE) > 0.6
    assert set(face.probabilities) == set(CLASSES)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert face.label == max(face.probabilities, key=face.probabilities.get)


def test_large_photo_is_detected_on_a_downscaled_copy_with_boxes_mapped_back(checkpoint):
    big = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((2048, 2048)))
    result = Predictor.from_checkpoint(checkpoint).predict(big)
    assert len(result.faces) == 1  # no false face on the helmet at high resolution
    assert iou([v / 4 for v in result.faces[0].box], ASTRONAUT_FACE) > 0.6


def test_path_pil_and_numpy_inputs_agree(checkpoint, photos):
    predictor = Predictor.from_checkpoint(checkpoint)
    path = photos / "astronaut.png"
    by_path = predictor.predict(path)
    by_pil = predictor.predict(Image.open(path))
    by_array = predictor.predict(np.asarray(Image.open(path)))
    for other in (by_pil, by_array):
        assert other.faces[0].box == by_path.faces[0].box
        assert other.faces[0].probabilities == pytest.approx(by_path.faces[0].probabilities, abs=1e-6)


@pytest.mark.realdata
def test_batched_prediction_equals_one_by_one(checkpoint, real_data):
    files = sorted((real_data / "test" / "happy").glob("PrivateTest_*"))[:5]
    predictor = Predictor.from_checkpoint(checkpoint, batch_size=2)
    batched = predictor.predict_batch(files, detect=False)
    for f, r in zip(files, batched):
        single = predictor.predict(f, detect=False)
        assert r.faces[0].probabilities == pytest.approx(single.faces[0].probabilities, abs=1e-5)


def test_a_folder_from_python_as_from_the_command_line(checkpoint, photos, tmp_path):
    results = predict_source(Predictor.from_checkpoint(checkpoint), photos, annotate=tmp_path / "drawn")
    assert [(Path(r.source).name, len(r.faces)) for r in results] == [("astronaut.png", 1), ("coffee.jpg", 0)]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["astronaut.png", "coffee.jpg"]


def test_image_without_a_face_gives_an_empty_result_and_says_so(checkpoint, photos, capsys):
    assert Predictor.from_checkpoint(checkpoint).predict(photos / "coffee.jpg").faces == []
    assert main(["predict", str(photos / "coffee.jpg"), "--checkpoint", str(checkpoint)]) == 0
    assert "coffee.jpg: no face found" in capsys.readouterr().out


def test_non_image_gives_a_clear_error(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    with pytest.raises(FerkitError, match=r"cannot read .*notes\.jpg: not an image"):
        read_image(bad)


def test_a_model_where_the_photos_go_is_refused_in_one_line_naming_the_fix(checkpoint, capsys):
    # The run folder (it holds best.pth) and the checkpoint itself: both point to --checkpoint.
    for source in (checkpoint.parent, checkpoint):
        with pytest.raises(FerkitError, match=f"^{source} is a model, not a photo; give it as --checkpoint {source}"):
            predict_source(Predictor.from_checkpoint(checkpoint), source)
    assert main(["predict", str(checkpoint)]) == 2
    assert capsys.readouterr().err.strip().endswith("and the photos, folder or video to read")


@pytest.mark.realdata
def test_folder_of_fer2013_crops_without_detection_one_prediction_per_file(checkpoint, real_data, tmp_path, capsys):
    folder = tmp_path / "crops"
    folder.mkdir()
    for cls in ("angry", "happy", "surprise"):
        for f in sorted((real_data / "test" / cls).glob("PrivateTest_*"))[:3]:
            (folder / f"{cls}_{f.name}").write_bytes(f.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out_json = tmp_path / "out.json"
    code = main(["predict", str(folder), "--checkpoint", str(checkpoint), "--no-detect", "--json", str(out_json)])
    assert code == 1  # one file failed; the others were still processed
    results = json.loads(out_json.read_text())["results"]
    assert len(results) == 10
    good = [r for r in results if r["error"] is None]
    assert len(good) == 9 and all(len(r["faces"]) == 1 and r["faces"][0]["box"] == [0, 0, 48, 48] for r in good)
    broken = [r for r in results if r["error"]]
    assert len(broken) == 1 and "broken.jpg" in broken[0]["error"]
    out = capsys.readouterr().out
    assert "broken.jpg: error: cannot read" in out
    # Several images end with a line over them all, each expression counted.
    last = re.fullmatch(r"10 images: 9 faces \((.*)\); 1 not read", out.splitlines()[-1])
    assert last and sum(int(part.split()[1]) for part in last[1].split(", ")) == 9


def test_csv_and_annotated_image(checkpoint, photos, tmp_path, capsys):
    annotated = tmp_path / "annotated.png"
    assert (
        main(
            [
                "predict",
                str(photos / "astronaut.png"),
                "--checkpoint",
                str(checkpoint),
                "--csv",
                "--annotate",
                str(annotated),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["label"] in CLASSES
    assert sum(float(rows[0][f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    drawn = np.asarray(Image.open(annotated))
    original = skimage_data.astronaut()
    assert drawn.shape == original.shape and (drawn != original).any()


def test_drawn_faces_are_numbered_and_coloured_as_the_page_draws_them():
    probabilities = {c: 1 / len(CLASSES) for c in CLASSES}
    faces = [
        Face(box=[10, 40, 80, 80], label="Happy", confidence=0.9, probabilities=probabilities),
        Face(box=[110, 40, 60, 60], label="Sad", confidence=0.5, probabilities=probabilities),
        Face(box=[180, 120, 18, 18], label="Neutral", confidence=0.4, probabilities=probabilities),  # at the right edge
    ]
    grey = np.full((200, 200, 3), 128, np.uint8)
    drawn = draw_faces(grey, faces)
    # Each box's left edge, halfway down, in its face's colour: the page's first, second and third.
    assert [tuple(int(v) for v in drawn[y + h // 2, x]) for x, y, w, h in (f.box for f in faces)] == list(COLOURS[:3])
    # A tab above each box: the third's, too wide for the box near the edge, is moved left inside the picture.
    assert (drawn[30, 10:20] == COLOURS[0]).all(axis=1).any() and (drawn[110:118, -3:] == COLOURS[2]).all(axis=2).any()
    assert (grey == 128).all()  # drawn on a copy
    # In a video a face is named and coloured by its track, so a person keeps both from frame to frame.
    tracked = Face(box=[10, 40, 80, 80], label="Happy", confidence=0.9, probabilities=probabilities, track=10)
    assert face_name(tracked, 0) == "#10" and face_colour(tracked, 0) == COLOURS[1]
    assert [face_name(f, i) for i, f in enumerate(faces)] == ["1", "2", "3"]
    table = format_table([Result(source="group.jpg", width=200, height=200, faces=faces)])
    assert [line.split(" at ")[0] for line in table.splitlines()] == [f"group.jpg: face {n}" for n in (1, 2, 3)]


def test_annotated_folder_mirrors_the_input_and_decodes_each_image_once(
    checkpoint, photos, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.open(photos / "astronaut.png").save(folder / "sub" / "astronaut.jpg")
    Image.open(photos / "coffee.jpg").save(folder / "coffee.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **kw: opened.append(str(fp)) or real_open(fp, *a, **kw))
    out = tmp_path / "drawn"
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--annotate", str(out)]) == 1  # broken.jpg
    monkeypatch.undo()
    assert [opened.count(str(folder / n)) for n in ("coffee.jpg", "sub/astronaut.jpg")] == [1, 1]
    # Photos (JPEG) are drawn as JPEG, which a phone's photo takes a fortieth of the time to write as PNG.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["coffee.jpg", "sub", "sub/astronaut.jpg"]
    assert {Image.open(p).format for p in out.rglob("*.jpg")} == {"JPEG"}
    drawn = np.asarray(Image.open(out / "sub" / "astronaut.jpg"))
    assert drawn.shape == (512, 512, 3) and (drawn != np.asarray(Image.open(folder / "sub" / "astronaut.jpg"))).any()
    out = capsys.readouterr().out
    assert "broken.jpg: error: cannot read" in out
    # Several images end with a line over them all.
    assert re.fullmatch(
        r"3 images: 1 face \((Angry|Disgust|Fear|Happy|Neutral|Sad|Surprise) 1\); 1 without a face; 1 not read",
        out.splitlines()[-1],
    )


def test_a_folder_drawn_holds_few_decoded_photos_at_a_time(checkpoint, photos, tmp_path, monkeypatch):
    folder = tmp_path / "DCIM"
    folder.mkdir()
    for i in range(10):
        (folder / f"IMG_{i}.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    held, real = [], Predictor.predict_batch
    monkeypatch.setattr(
        Predictor,
        "predict_batch",
        lambda self, images, *a, **kw: (
            held.append(sum(isinstance(i, np.ndarray) for i in images)) or real(self, images, *a, **kw)
        ),
    )
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--annotate", str(tmp_path / "drawn")]
    assert main(argv) == 0
    assert held == [8, 2]  # decoded photos held at once: a phone's 12-MP photo is 36 MB decoded
    assert len(list((tmp_path / "drawn").iterdir())) == 10
    held.clear()
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint)]) == 0
    assert held == [0]  # without drawing, one batch of paths, each decoded as it is read


def test_one_image_drawn_into_a_folder_under_its_own_name(checkpoint, photos, tmp_path):
    out = tmp_path / "drawn"
    out.mkdir()
    assert (
        main(["predict", str(photos / "astronaut.png"), "--checkpoint", str(checkpoint), "--annotate", str(out)]) == 0
    )
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]
    drawn = np.asarray(Image.open(out / "astronaut.png"))
    assert drawn.shape == (512, 512, 3) and (drawn != skimage_data.astronaut()).any()
    # A folder not made yet, named with a trailing slash, is a folder too.
    assert (
        main(["predict", str(photos / "coffee.jpg"), "--checkpoint", str(checkpoint), "--annotate", f"{out}/new/"]) == 0
    )
    assert Image.open(out / "new" / "coffee.jpg").format == "JPEG"  # a photo drawn as one
    assert Image.open(out / "astronaut.png").format == "PNG"  # a PNG as a PNG


def test_several_inputs_each_image_once_drawn_under_the_folder_holding_them_all(checkpoint, photos, tmp_path):
    # As a shell glob gives them: files from two folders, and a folder whose file was also named alone.
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "sub").mkdir(parents=True)
    Image.open(photos / "astronaut.png").save(tmp_path / "a" / "astronaut.jpg")
    Image.open(photos / "coffee.jpg").save(tmp_path / "a" / "coffee.jpg")
    Image.open(photos / "astronaut.png").save(tmp_path / "b" / "sub" / "astronaut.png")
    inputs = [tmp_path / "a" / "coffee.jpg", tmp_path / "b", tmp_path / "a" / "astronaut.jpg", tmp_path / "b" / "sub"]
    out_json, drawn = tmp_path / "out.json", tmp_path / "drawn"
    argv = ["predict", *map(str, inputs), "--checkpoint", str(checkpoint), "--json", str(out_json)]
    assert main([*argv, "--annotate", str(drawn)]) == 0
    sources = [Path(r["source"]).relative_to(tmp_path).as_posix() for r in json.loads(out_json.read_text())["results"]]
    assert sources == ["a/coffee.jpg", "b/sub/astronaut.png", "a/astronaut.jpg"]
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.*")) == [
        "a/astronaut.jpg",
        "a/coffee.jpg",
        "b/sub/astronaut.png",
    ]
    # From Python, a list reads the same.
    results = predict_source(Predictor.from_checkpoint(checkpoint), inputs)
    assert [Path(r.source).relative_to(tmp_path).as_posix() for r in results] == sources


def test_several_videos_are_tracked_in_one_run_and_drawn_into_a_mirror(checkpoint, tmp_path):
    frames = [skimage_data.astronaut()] * 3
    (tmp_path / "x").mkdir()
    videos = [write_video(frames, tmp_path / "x" / "one.avi"), write_video(frames, tmp_path / "two.avi")]
    summary, drawn = tmp_path / "people.json", tmp_path / "drawn"
    argv = ["predict", *map(str, videos), "--checkpoint", str(checkpoint), "--summary", str(summary)]
    assert main([*argv, "--annotate", str(drawn)]) == 0
    assert [Path(t["source"]).name for t in json.loads(summary.read_text())["tracks"]] == ["one.avi", "two.avi"]
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.mp4")) == ["two.mp4", "x/one.mp4"]


def test_a_video_that_cannot_be_read_is_reported_and_the_others_are_read(checkpoint, tmp_path, caplog, capsys):
    frames = [skimage_data.astronaut()] * 3
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "a_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")  # a download cut short
    write_video(frames, folder / "b_fine.avi")
    out, summary = tmp_path / "out.csv", tmp_path / "people.json"
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--csv", str(out), "--summary", str(summary)]
    caplog.set_level(logging.WARNING, logger="ferkit")
    assert main(argv) == 1  # as for a photo that cannot be read
    broken = str(folder / "a_broken.mp4")
    why = f"cannot read {broken} as a video: damaged, or encoded in a way OpenCV cannot decode; convert it"
    assert [r.getMessage() for r in caplog.records if r.name == "ferkit"] == [
        why + f" (e.g. ffmpeg -i {broken} converted.mp4)"
    ]  # at once, before the next video is read
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["source"] == broken and rows[0]["error"].startswith(why)
    assert [r["frame"] for r in rows[1:]] == ["0", "1", "2"]  # the fine one read whole
    document = json.loads(summary.read_text())
    assert [Path(t["source"]).name for t in document["tracks"]] == ["b_fine.avi"]
    assert [(n["source"], n["error"][: len(why)]) for n in document["not_read"]] == [(broken, why)]
    printed = capsys.readouterr()
    assert f"{broken}: not read: {why}" in printed.out  # and again under the summary's table
    assert "moov atom" not in printed.err  # FFmpeg's own line stays out of ferkit's output


def test_a_photo_given_as_bytes_or_an_open_file_reads_as_its_path_does(checkpoint, photos):
    predictor = Predictor.from_checkpoint(checkpoint)
    path = photos / "astronaut.png"
    with path.open("rb") as opened:
        by_path, by_bytes, by_file = (predictor.predict(x) for x in (path, path.read_bytes(), opened))
    for result in (by_bytes, by_file):
        assert [(f.box, f.probabilities) for f in result.faces] == [(f.box, f.probabilities) for f in by_path.faces]
    assert (by_bytes.source, by_file.source) == ("image 0", str(path))
    assert predictor.predict(b"not a picture").error == (
        "cannot read the image's bytes: not an image format PIL can decode; pass a JPEG, PNG, BMP, GIF, TIFF, WebP, "
        "AVIF or HEIC image"
    )


def test_a_folder_of_photos_and_videos_is_read_in_one_run_photos_first_then_each_video_tracked(
    checkpoint, tmp_path, capsys
):
    phone = tmp_path / "DCIM"  # as a phone's folder holds them
    (phone / "later").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(phone / "IMG_0001.png")
    (phone / "notes.txt").write_text("not a photo")
    write_video([skimage_data.astronaut()] * 3, phone / "later" / "IMG_0002.avi")
    out = {name: tmp_path / name for name in ("all.json", "all.csv", "people.json", "drawn")}
    argv = ["predict", str(phone), "--checkpoint", str(checkpoint), "--json", str(out["all.json"])]
    argv += ["--csv", str(out["all.csv"]), "--summary", str(out["people.json"]), "--annotate", str(out["drawn"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "IMG_0001.png: face 1 at" in printed and re.search(r"IMG_0002\.avi +1 ", printed)  # its track's row
    results = json.loads(out["all.json"].read_text())["results"]
    assert [(Path(r["source"]).name, r.get("frame")) for r in results] == [
        ("IMG_0001.png", None),
        *(("IMG_0002.avi", i) for i in range(3)),
    ]
    photo, frame = results[0]["faces"][0], results[1]["faces"][0]
    assert "track" not in photo and frame["track"] == 1 and set(frame["smoothed"]) == set(CLASSES)
    rows = list(csv.DictReader(out["all.csv"].open()))
    assert len(rows) == 4 and rows[0]["track"] == rows[0]["smooth_Happy"] == "" and rows[1]["track"] == "1"
    assert rows[0]["face"] == rows[1]["face"] == "1"  # counted from 1, as the page and the drawings number them
    assert [t["source"] for t in json.loads(out["people.json"].read_text())["tracks"]] == [results[1]["source"]]
    drawn = sorted(p.relative_to(out["drawn"]).as_posix() for p in out["drawn"].rglob("*.*"))
    assert drawn == ["IMG_0001.png", "later/IMG_0002.mp4"]  # both mirror the folder
    # From Python, a photo and a video give the photo's result, then the video's frames.
    read = predict_source(Predictor.from_checkpoint(checkpoint), [phone / "IMG_0001.png", phone / "later"])
    assert [(Path(r.source).name, r.frame) for r in read] == [(Path(r["source"]).name, r.get("frame")) for r in results]


def test_a_folder_of_photos_prints_each_as_its_batch_is_read_and_ctrl_c_keeps_those_read(
    checkpoint, photos, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes((photos / "astronaut.png").read_bytes())
    read = Predictor.predict_batch
    printed_before = []

    def predict_batch(self, images, *args, **kwargs):
        printed_before.append(capsys.readouterr().out.count("face 1 "))  # lines out before this batch is read
        if len(printed_before) == 4:
            raise KeyboardInterrupt
        return read(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)
    out = tmp_path / "out.json"
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--batch-size", "1", "--json", str(out)]
    assert main([*argv, "--csv", str(tmp_path / "out.csv")]) == 130
    assert printed_before == [0, 1, 1, 1]  # each photo's line came before the next was read
    assert [Path(r["source"]).name for r in json.loads(out.read_text())["results"]] == ["0.png", "1.png", "2.png"]
    assert len(list(csv.DictReader((tmp_path / "out.csv").open()))) == 3
    printed = capsys.readouterr()
    assert printed.out.startswith("3 images: 3 faces")
    assert printed.err.strip().endswith("ferkit: interrupted; the outputs hold the photos and frames done so far")


def test_photos_sharing_a_name_in_a_folder_are_drawn_side_by_side_not_over_each_other(checkpoint, photos, tmp_path):
    folder = tmp_path / "export"  # as phones and editors leave them: IMG_1.JPG beside IMG_1.jpeg, both drawn as JPEG
    folder.mkdir()
    for name in ("IMG_1.JPG", "IMG_1.jpeg", "IMG_1.png", "IMG_2.png"):
        Image.open(photos / "astronaut.png").convert("RGB").save(folder / name)
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--annotate", str(tmp_path / "drawn")]) == 0
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["IMG_1.JPG.jpg", "IMG_1.jpeg.jpg", "IMG_1.png", "IMG_2.png"]


def test_a_bad_drawing_path_for_a_video_is_refused_before_the_model_loads_or_an_output_is_touched(
    checkpoint, tmp_path, monkeypatch, capsys
):
    video = write_video([skimage_data.astronaut()] * 2, tmp_path / "clip.avi")
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"from": "an earlier run"}')
    monkeypatch.setattr(Predictor, "from_checkpoint", lambda *a, **kw: pytest.fail("the model was loaded"))
    argv = ["predict", str(video), "--checkpoint", str(checkpoint), "--json", str(earlier)]
    assert main([*argv, "--annotate", str(tmp_path / "drawn.jpg")]) == 2
    assert f"--annotate {tmp_path / 'drawn.jpg'}: name a .mp4" in capsys.readouterr().err
    assert earlier.read_text() == '{"from": "an earlier run"}'


def test_files_beside_a_camera_or_a_file_to_draw_photos_and_videos_into_are_one_line_errors_before_the_model_loads(
    checkpoint, photos, tmp_path, monkeypatch, capsys
):
    video = write_video([skimage_data.astronaut()] * 2, tmp_path / "clip.avi")
    monkeypatch.setattr(Predictor, "from_checkpoint", lambda *a, **kw: pytest.fail("the model was loaded"))
    for argv, message in (
        (
            [str(photos / "astronaut.png"), str(video), "--annotate", str(tmp_path / "drawn.png")],
            f"--annotate {tmp_path / 'drawn.png'} names a file; photos and videos read together are drawn into a "
            f"folder: name one, e.g. {tmp_path / 'drawn'}/",
        ),
        ([str(video), "--camera", "0"], "--camera reads a camera instead of files; give one or the other"),
        ([], "give an image, folder or video to predict on, or --camera N"),
        ([str(video), "--start", "2", "--end", "1"], "--end 1 is not after --start 2; give a later end"),
        ([str(video), "--start", "-1"], "--start -1: a time from the video's start, 0 or more seconds"),
        ([str(photos / "astronaut.png"), "--end", "1"], "--start and --end apply to video files, not to photos"),
        (["--camera", "0", "--start", "5"], "--start and --end apply to video files, not to a camera or a live stream"),
        ([str(video), "--every", "0"], "--every 0: every Nth frame is read, N 1 or more (1: every frame)"),
        ([str(video), "--every", "-2"], "--every -2: every Nth frame is read"),
        ([str(video), "--smooth", "-1"], "--smooth -1: a half-life in seconds, 0 (no smoothing) or more"),
    ):
        assert main(["predict", *argv, "--checkpoint", str(checkpoint)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ferkit: error: ") and message in err and "\n" not in err
    with pytest.raises(FerkitError, match="2 videos given: track them with predict_videos"):
        predict_source(object(), [video, write_video([skimage_data.astronaut()] * 2, tmp_path / "other.avi")])
    monkeypatch.undo()
    # From Python too, before a frame is read.
    with pytest.raises(FerkitError, match="--batch-size 0: 1 or more images a batch"):
        Predictor.from_checkpoint(checkpoint, batch_size=0)
    with pytest.raises(FerkitError, match="--margin -0.2: a fraction of the face box added on every side, 0 or more"):
        Predictor.from_checkpoint(checkpoint, margin=-0.2)
    for kw, message in (({"every": 0}, "--every 0"), ({"smooth": -0.5}, "--smooth -0.5")):
        with pytest.raises(FerkitError, match=message):
            next(stream_video(Predictor.from_checkpoint(checkpoint), str(video), **kw))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--json", "{tmp}/folder"], "--json {tmp}/folder is a folder; give a file name, e.g. {tmp}/folder/out"),
        (["--csv", "{tmp}/folder"], "--csv {tmp}/folder is a folder"),
        (["--annotate", "{tmp}/drawn.foo"], "--annotate {tmp}/drawn.foo: name a .png, .jpg"),
        (["--annotate", "{input}"], "is the input itself"),
        (["--json", "{input}"], "--json {input} is an input; name another file"),
        (["--plot", "{tmp}/timeline.png"], "--plot applies to videos and cameras"),
        (["--plot", "{tmp}/timeline.doc"], "--plot {tmp}/timeline.doc: name a .png, "),
        (["--summary", "{tmp}/people.json"], "--summary applies to videos and cameras"),
    ],
)
def test_bad_output_paths_are_one_line_errors_before_any_photo_is_read(
    checkpoint, photos, tmp_path, monkeypatch, capsys, flags, message
):
    (tmp_path / "folder").mkdir()
    photo = tmp_path / "astronaut.png"
    photo.write_bytes((photos / "astronaut.png").read_bytes())
    monkeypatch.setattr(Predictor, "predict_batch", lambda *a, **kw: pytest.fail("a photo was read"))
    fill = {"tmp": tmp_path, "input": photo}
    argv = ["predict", str(photo), "--checkpoint", str(checkpoint), *(f.format(**fill) for f in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ferkit: error: ") and message.format(**fill) in err and "\n" not in err
    assert photo.read_bytes() == (photos / "astronaut.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png", "folder"]


def test_a_folder_is_never_drawn_over_itself_or_into_a_file(checkpoint, photos, tmp_path, capsys):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"mine")
    for out, message in ((photos, "is the input folder"), (taken, "is a file")):
        assert main(["predict", str(photos), "--checkpoint", str(checkpoint), "--annotate", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert taken.read_bytes() == b"mine" and sorted(p.name for p in photos.iterdir()) == ["astronaut.png", "coffee.jpg"]


def test_video_gives_per_frame_csv_plot_and_annotated_video(checkpoint, tmp_path):
    photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (512, 512))
    for i in range(12):
        frame = np.roll(photo, 4 * i, axis=1) if i < 8 else np.full_like(photo, 128)  # last frames: no face
        writer.write(frame)
    writer.release()
    out_csv, plot, out_video = tmp_path / "frames.csv", tmp_path / "timeline.png", tmp_path / "annotated.avi"
    assert (
        main(
            [
                "predict",
                str(video),
                "--checkpoint",
                str(checkpoint),
                "--every",
                "2",
                "--csv",
                str(out_csv),
                "--plot",
                str(plot),
                "--annotate",
                str(out_video),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8, 10]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(r["label"] in CLASSES for r in rows[:4])
    assert rows[4]["error"] == "no face found" and rows[4]["label"] == ""
    assert plot.stat().st_size > 0
    capture = cv2.VideoCapture(str(out_video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()


def test_a_video_read_from_start_until_end_gives_those_frames_at_their_own_times(checkpoint, tmp_path):
    frames = [np.roll(skimage_data.astronaut(), 4 * i, axis=1) for i in range(12)]
    video = str(write_video(frames, tmp_path / "clip.avi"))  # 10 frames a second
    out = tmp_path / "frames.csv"
    argv = ["predict", video, "--checkpoint", str(checkpoint), "--csv", str(out), "--every", "2"]
    assert main([*argv, "--start", "0.45", "--end", "0.9"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["frame"]) for r in rows] == [5, 7]  # the first at or after 0.45 s, then every 2nd before 0.9 s
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.5, 0.7])
    whole = {r.frame: r for r in stream_video(Predictor.from_checkpoint(checkpoint), video)}
    predictor = Predictor.from_checkpoint(checkpoint)
    later = list(stream_video(predictor, video, start=1.0))
    assert [r.frame for r in later] == [10, 11]
    # The frames are the file's own: the same pixels, so the same boxes as when read from the start.
    assert [r.faces[0].box for r in later] == [whole[10].faces[0].box, whole[11].faces[0].box]
    assert list(stream_video(predictor, video, start=5.0)) == []  # past the end: nothing


def _turned_mp4(rgb: np.ndarray, path: Path, frames: int = 3) -> Path:
    """An MP4 storing ``rgb`` sideways with the 90-degree turn in its track header's matrix, as a phone held upright
    records a video."""
    import struct

    sideways = np.ascontiguousarray(np.rot90(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, sideways.shape[1::-1])
    for _ in range(frames):
        writer.write(sideways)
    writer.release()
    data = bytearray(path.read_bytes())
    # tkhd (version 0): size, type, version and flags, 5 fields of 4 bytes, 8 reserved, layer, group, volume and 2
    # reserved bytes, then the 3x3 matrix in 16.16 fixed point (the last column 2.30).
    matrix = data.index(b"tkhd") + 4 + 4 + 20 + 8 + 8
    assert struct.unpack(">9i", data[matrix : matrix + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(data)
    return path


def _uneven_mp4(path: Path, frames: int = 12) -> Path:
    """An MP4 of ``frames`` frames over 1.2 s whose first half last 0.15 s each and the second 0.05 s (a variable
    rate, as phones record in dim light): OpenCV's 10-fps file with its time-to-sample table (stts) made two rows."""
    import struct

    frame = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (512, 512))
    for i in range(frames):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    data = bytearray(path.read_bytes())
    moov = data.index(b"moov")
    assert data.index(b"mdat") < moov  # the table can grow without moving the frames it points at
    stts = data.index(b"stts", moov) - 4
    _, _, _, rows, count, delta = struct.unpack(">I4sIIII", data[stts : stts + 24])
    assert (rows, count) == (1, frames)
    half = frames // 2
    data[stts : stts + 24] = struct.pack(">I4sIIIIII", 32, b"stts", 0, 2, half, delta * 3 // 2, half, delta // 2)
    for box in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):  # each holds the table: 8 bytes longer
        at = data.index(box, moov - 4) - 4
        data[at : at + 4] = struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] + 8)
    path.write_bytes(data)
    return path


def test_a_video_of_variable_rate_is_timed_by_its_frames_own_times(checkpoint, tmp_path):
    video = str(_uneven_mp4(tmp_path / "dim.mp4"))
    real = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15]
    with Video(video) as opened:
        assert opened.fps == 10.0  # the average rate, which would put frame 5 at 0.5 s
        assert [t for _, t, _ in opened.frames()] == real
    # A part of it: the first frame at or after 0.7 s (0.75), where OpenCV's seek by the average rate lands on
    # frame 7 (0.95 s), until 1.0 s.
    with Video(video, start=0.7, end=1.0) as opened:
        assert [(i, t) for i, t, _ in opened.frames()] == [(5, 0.75), (6, 0.9), (7, 0.95)]
    results = list(stream_video(Predictor.from_checkpoint(checkpoint), video, every=2))
    assert [r.time_s for r in results] == real[::2]
    # Drawn at 10 frames a second, each frame held until the next one's time: it plays as the video does.
    drawn = tmp_path / "drawn.avi"
    list(stream_video(Predictor.from_checkpoint(checkpoint), video, annotate=drawn))
    capture, shown = cv2.VideoCapture(str(drawn)), []
    sources = [np.roll(skimage_data.astronaut(), 4 * i, axis=1)[400:] for i in range(12)]  # below the face's box
    while (frame := capture.read())[0]:
        rgb = cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB)[400:].astype(float)
        shown.append(int(np.argmin([np.abs(rgb - source).mean() for source in sources])))
    capture.release()
    assert shown == [0, 1, 1, 2, 3, 3, 4, 5, 5, 7, 9, 11]  # the 0.15-s frames twice, three of the 0.05-s ones


def test_a_video_cut_short_is_read_as_far_as_it_goes_and_said_to_be(checkpoint, tmp_path, caplog):
    whole = write_video([np.roll(skimage_data.astronaut(), 4 * i, axis=1) for i in range(40)], tmp_path / "a.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a download that did not finish
    caplog.set_level(logging.WARNING, logger="ferkit")
    with Video(str(cut)) as video:
        read = [index for index, _, _ in video.frames()]
    assert video.length == 40 and 10 < len(read) < 30 and read == list(range(len(read)))
    assert [r.getMessage() for r in caplog.records] == [
        f"{cut} ended after frame {len(read)} of the 40 its header states: the file may be cut short (a download "
        "or copy that did not finish); the frames read are kept"
    ]
    caplog.clear()  # read whole, or until an --end it reaches: nothing to say
    for kw in ({}, {"end": 1.0}):
        with Video(str(whole), **kw) as video:
            list(video.frames())
    with Video(str(cut), end=1.0) as video:
        list(video.frames())
    assert caplog.records == []


def test_a_phones_portrait_video_is_read_upright_by_its_rotation_metadata(checkpoint, tmp_path):
    video = _turned_mp4(skimage_data.astronaut(), tmp_path / "IMG_0001.mp4")
    with Video(str(video)) as opened:
        frame = next(opened.frames())[2]
    assert frame.shape == (512, 512, 3)
    # Upright: the frame is the photo (within mp4v's loss), not its sideways copy.
    upright, sideways = (
        np.abs(frame.astype(float) - p).mean()
        for p in (skimage_data.astronaut(), np.rot90(skimage_data.astronaut(), 1))
    )
    assert upright < 12 < sideways
    [result, *_] = stream_video(Predictor.from_checkpoint(checkpoint), str(video))
    assert iou(result.faces[0].box, ASTRONAUT_FACE) > 0.6  # the box where a viewer sees her face


def test_one_video_drawn_into_a_folder_or_refused_as_an_image(checkpoint, tmp_path, monkeypatch, capsys):
    video = write_video([skimage_data.astronaut()] * 3, tmp_path / "clip.avi")
    out = tmp_path / "drawn"
    out.mkdir()
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--annotate", str(out)]) == 0
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    monkeypatch.setattr(Predictor, "predict_frames", lambda *a, **kw: pytest.fail("a frame was read"))
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--annotate", str(tmp_path / "x.jpg")]) == 2
    assert "--annotate " + str(tmp_path / "x.jpg") + ": name a .mp4, .avi" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("suffix", "codecs"),
    [(".mp4", {"MP4V", "FMP4"}), (".avi", {"MJPG"}), (".webm", {"VP80"})],  # as FFmpeg names them
)
def test_a_drawn_video_is_written_in_the_codec_its_suffix_takes(checkpoint, tmp_path, capfd, suffix, codecs):
    video = write_video([skimage_data.astronaut()] * 3, tmp_path / "clip.avi")
    drawn = tmp_path / f"drawn{suffix}"
    capfd.readouterr()
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--annotate", str(drawn)]) == 0
    assert "OpenCV" not in capfd.readouterr().err  # no line from the library that reads as an error
    capture = cv2.VideoCapture(str(drawn))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().upper()
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    assert fourcc in codecs and len(frames) == 3 and frames[0].shape == (512, 512, 3)
    assert np.abs(frames[0][:20, :20].astype(int) - frames[2][:20, :20]).mean() < 5  # a picture, not noise


def _moving(count: int = 6) -> list[np.ndarray]:
    return [np.roll(skimage_data.astronaut(), 6 * i, axis=1) for i in range(count)]


def _closest(frames: list[np.ndarray], sources: list[np.ndarray]) -> list[int]:
    """Which of ``sources`` each frame shows (below the face, where no box is drawn)."""
    return [int(np.argmin([np.abs(f[400:].astype(float) - s[400:]).mean() for s in sources])) for f in frames]


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_an_animated_image_is_read_as_a_video_at_its_frames_own_delays(checkpoint, tmp_path, suffix):
    # A delay under 20 ms (a GIF's 0) is shown for 100 ms, as browsers do.
    path = str(write_animation(_moving(), tmp_path / f"reaction{suffix}", [100, 200, 0, 300, 100, 100]))
    with Video(path) as video:
        assert (video.length, video.size, video.fps) == (6, (512, 512), pytest.approx(6 / 0.9))
        read = list(video.frames())
    assert [(i, t) for i, t, _ in read] == [(0, 0.0), (1, 0.1), (2, 0.3), (3, 0.4), (4, 0.7), (5, 0.8)]
    # Whole frames, each its own: a GIF stores the later ones as patches over the first, composed on reading.
    assert _closest([rgb for _, _, rgb in read], _moving()) == list(range(6))
    assert all(rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8 for _, _, rgb in read)
    with Video(path, start=0.35, end=0.8) as video:
        assert [(i, t) for i, t, _ in video.frames()] == [(3, 0.4), (4, 0.7)]
    results = list(stream_video(Predictor.from_checkpoint(checkpoint), path, every=2))
    assert [(r.frame, r.time_s, len(r.faces)) for r in results] == [(0, 0.0, 1), (2, 0.3, 1), (4, 0.7, 1)]


def test_an_animated_gif_cut_short_keeps_the_frames_before_the_break(tmp_path, caplog):
    whole = write_animation(_moving(), tmp_path / "whole.gif", [100] * 6)
    cut = tmp_path / "cut.gif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    caplog.set_level(logging.WARNING, logger="ferkit")
    with Video(str(cut)) as video:
        read = [index for index, _, _ in video.frames()]
    assert 0 < len(read) < 6 and read == list(range(len(read)))
    assert caplog.records[0].getMessage().startswith(f"{cut}: the frames after frame {len(read)} cannot be decoded")


def test_a_folder_reads_its_animated_images_as_videos_drawn_as_animations_and_its_still_ones_as_photos(
    checkpoint, tmp_path, capsys
):
    folder = tmp_path / "chat"
    folder.mkdir()
    write_animation(_moving(), folder / "reaction.gif", [100, 200, 100, 300, 100, 100])
    write_animation(_moving(), folder / "sticker.webp", [100] * 6)
    Image.fromarray(skimage_data.astronaut()).save(folder / "still.gif")
    Image.fromarray(skimage_data.astronaut()).save(folder / "photo.jpg")
    rows, summary, drawn = tmp_path / "rows.json", tmp_path / "summary.json", tmp_path / "drawn"
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--json", str(rows), "--summary", str(summary)]
    assert main([*argv, "--annotate", str(drawn)]) == 0
    photos = {Path(r["source"]).name for r in json.loads(rows.read_text())["results"] if r.get("frame") is None}
    assert photos == {"photo.jpg", "still.gif"}
    assert [Path(t["source"]).name for t in json.loads(summary.read_text())["tracks"]] == [
        "reaction.gif",
        "sticker.webp",
    ]
    assert sorted(p.name for p in drawn.iterdir()) == ["photo.jpg", "reaction.gif", "sticker.webp", "still.png"]
    with Image.open(drawn / "reaction.gif") as image:
        delays = []
        for index in range(image.n_frames):
            image.seek(index)
            delays.append(image.info["duration"])
    # Each drawn frame shown until the next one's time; the last for a frame of the average rate (900 ms / 6).
    assert delays == [100, 200, 100, 300, 100, 150]
    with Video(str(drawn / "sticker.webp")) as video:
        assert _closest([rgb for _, _, rgb in video.frames()], _moving()) == list(range(6))
    for still in ("still.gif", "photo.jpg"):
        (folder / still).unlink()
    with pytest.raises(FerkitError, match="holds only animated images, which are read as videos"):
        predict_images(Predictor.from_checkpoint(checkpoint), folder)
    capsys.readouterr()


@pytest.mark.parametrize("via", ["cli", "python"])
def test_a_still_image_and_an_animated_one_drawn_under_one_name_both_keep_their_drawing(checkpoint, tmp_path, via):
    # A still x.gif is drawn as PNG, and so is an animated x.png: named together, neither replaces the other.
    folder = tmp_path / "chat"
    (folder / "later").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(folder / "x.gif")
    write_animation(_moving(3), folder / "x.png", [100] * 3)
    write_animation(_moving(2), folder / "later" / "clip.gif", [100] * 2)
    drawn = tmp_path / "drawn"
    if via == "cli":
        assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--annotate", str(drawn)]) == 0
        assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.*")) == [
            "later/clip.gif",
            "x.gif.png",
            "x.png.png",
        ]
    else:
        predictor = Predictor.from_checkpoint(checkpoint)
        predict_source(predictor, [folder / "x.gif", folder / "x.png"], annotate=drawn / "top")
        predict_source(predictor, [folder / "x.gif", folder / "later"], annotate=drawn / "nested")
        # The video of a folder is drawn where the folder mirrors it, as `ferkit predict` draws it.
        assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.*")) == [
            "nested/later/clip.gif",
            "nested/x.png",
            "top/x.gif.png",
            "top/x.png.png",
        ]
        drawn = drawn / "top"
    with Image.open(drawn / "x.gif.png") as still, Image.open(drawn / "x.png.png") as animated:
        assert (getattr(still, "n_frames", 1), animated.n_frames) == (1, 3)
    assert not (drawn / "x.png").exists()


def test_a_video_drawn_as_an_animated_image_unless_it_holds_too_many_pixels(checkpoint, tmp_path, monkeypatch, capsys):
    video = write_video(_moving(4), tmp_path / "clip.avi")
    argv = ["predict", str(video), "--checkpoint", str(checkpoint), "--annotate"]
    assert main([*argv, str(tmp_path / "clip.gif")]) == 0
    with Video(str(tmp_path / "clip.gif")) as drawn:
        assert [t for _, t, _ in drawn.frames()] == [0.0, 0.1, 0.2, 0.3]
    monkeypatch.setattr("ferkit.inference.video.MAX_ANIMATION_PIXELS", 3 * 512 * 512)
    monkeypatch.setattr(Predictor, "predict_frames", lambda *a, **kw: pytest.fail("a frame was read"))
    assert main([*argv, str(tmp_path / "long.webp")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ferkit: error: --annotate {tmp_path / 'long.webp'}: an animated image holds every frame until it is "
        f"written, too many for 4 frames of 512x512; draw it as a video ({tmp_path / 'long.mp4'}, or .webm for "
        "browsers)"
    )
    assert not (tmp_path / "long.webp").exists()
    # An animated image too large to hold is drawn as MP4 when no name says otherwise.
    monkeypatch.undo()
    gif = write_animation(_moving(4), tmp_path / "reaction.gif", [100] * 4)
    monkeypatch.setattr("ferkit.inference.video.MAX_ANIMATION_PIXELS", 3 * 512 * 512)
    assert (
        main(["predict", str(gif), "--checkpoint", str(checkpoint), "--annotate", str(tmp_path / "drawn") + "/"]) == 0
    )
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["reaction.mp4"]


def test_missing_camera_is_a_clear_error(checkpoint, capsys):
    assert main(["predict", "--camera", "9", "--checkpoint", str(checkpoint)]) == 1
    assert "camera 9: not read: cannot open camera 9; check that it is connected" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.realdata
def test_onnx_export_matches_pytorch_and_runs_alone_on_real_fer2013_images(checkpoint, real_data, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_path)]) == 0
    assert "opset" in capsys.readouterr().out
    files = [f for cls in CLASSES for f in sorted((real_data / "test" / cls.lower()).glob("PrivateTest_*"))[:10]]
    torch_probs = Predictor.from_checkpoint(checkpoint).classify([Image.open(f) for f in files])
    onnx_predictor = Predictor.from_checkpoint(onnx_path)
    assert onnx_predictor.classes == CLASSES and onnx_predictor.config.image_size == 32
    # For runtimes other than ferkit, the file states its preprocessing, derived from the config.
    assert json.loads(onnx_predictor.model.model.meta["ferkit_preprocess"]) == {
        "image_size": 32,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "grey": False,
        "equalize": False,
    }
    onnx_probs = onnx_predictor.classify([Image.open(f) for f in files])
    assert onnx_probs.shape == (len(files), 7)  # dynamic batch: 70 faces in one call
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    # The command line takes the .onnx file alone, for prediction and evaluation.
    assert main(["predict", str(files[0]), "--no-detect", "--checkpoint", str(onnx_path), "--json"]) == 0
    face = json.loads(capsys.readouterr().out)["results"][0]["faces"][0]
    assert [face["probabilities"][c] for c in CLASSES] == pytest.approx(onnx_probs[0], abs=1e-6)
    assert (
        main(
            ["evaluate", str(onnx_path), "--data", str(real_data), "--limit-per-class", "4", "--workers", "0", "--json"]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 28 and metrics["precision"] == "fp32"
    assert main(["predict", str(files[0]), "--checkpoint", str(onnx_path), "--device", "cuda"]) == 2
    assert "onnxruntime back end runs on the CPU" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
def test_int8_export_keeps_the_bundled_models_predictions(real_data, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    int8_path = tmp_path / "bundled.int8.onnx"
    assert (
        main(
            [
                "export",
                "--int8",
                "--calibration-data",
                str(real_data),
                "--calibration-images",
                "128",
                "--out",
                str(int8_path),
            ]
        )
        == 0
    )
    assert "int8" in capsys.readouterr().out
    proto = onnx.load(int8_path)
    assert "ferkit_quantization" in {p.key for p in proto.metadata_props}
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") >= 20  # weights and activations of the 20 inner convolutions
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    # Nearly all of the bundled model's weights: only the first convolution and the classifier stay fp32.
    assert sum(np.prod(t.dims) for t in int8_weights) > 0.95 * count_parameters(load_model().model)
    files = [f for cls in CLASSES for f in sorted((real_data / "test" / cls.lower()).glob("PrivateTest_*"))[:10]]
    fp32 = Predictor.default().classify([Image.open(f) for f in files])
    int8 = Predictor.from_checkpoint(int8_path).classify([Image.open(f) for f in files])
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    assert np.abs(fp32 - int8).mean() < 0.02
    assert (
        main(
            ["evaluate", str(int8_path), "--data", str(real_data), "--limit-per-class", "2", "--workers", "0", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"


def test_int8_export_without_calibration_data_says_what_to_pass(checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FERKIT_DATA", raising=False)
    assert main(["export", str(checkpoint), "--int8"]) == 2
    err = capsys.readouterr().err
    assert "int8 calibration needs training images" in err and "--calibration-data PATH" in err
    assert not list(tmp_path.glob("*.onnx")) and not list(checkpoint.parent.glob("*.onnx"))


@pytest.mark.slow
def test_int8_export_on_synthetic_data_skips_a_corrupt_calibration_image(checkpoint, image_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    (image_folder / "train" / "happy" / "Training_corrupt.png").write_bytes(b"\x89PNG truncated")

    def export_int8(images: int, out: Path) -> int:
        return main(
            ["export", str(checkpoint), "--int8", "--calibration-data", str(image_folder)]
            + ["--calibration-images", str(images), "--out", str(out)]
        )

    out = tmp_path / "tiny.int8.onnx"
    assert export_int8(64, out) == 0  # 28 good images, 1 bad
    crops = [Image.open(f) for f in sorted((image_folder / "test").rglob("*.png"))]
    int8 = Predictor.from_checkpoint(out)
    assert int8.model.precision == "int8"
    assert np.abs(int8.classify(crops) - Predictor.from_checkpoint(checkpoint).classify(crops)).max() < 0.05
    assert export_int8(0, tmp_path / "none.onnx") == 2
    assert "--calibration-images must be at least 1" in capsys.readouterr().err


def test_exif_rotated_photo_is_read_upright(checkpoint, photos, tmp_path):
    upright = Predictor.from_checkpoint(checkpoint).predict(photos / "astronaut.png")
    save_sideways(skimage_data.astronaut(), tmp_path / "phone.jpg")
    result = Predictor.from_checkpoint(checkpoint).predict(tmp_path / "phone.jpg")
    assert len(result.faces) == 1
    assert iou(result.faces[0].box, upright.faces[0].box) > 0.8


@pytest.mark.slow
def test_onnx_backend_from_a_pth_and_wrong_backend_errors(checkpoint, photos, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    via_ort = Predictor.from_checkpoint(checkpoint, backend="onnxruntime").predict(photos / "astronaut.png")
    via_torch = Predictor.from_checkpoint(checkpoint).predict(photos / "astronaut.png")
    assert via_ort.faces[0].probabilities == pytest.approx(via_torch.faces[0].probabilities, abs=1e-4)
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"garbage")
    assert main(["predict", str(photos / "astronaut.png"), "--checkpoint", str(not_onnx)]) == 2
    assert "cannot load ONNX model" in capsys.readouterr().err
