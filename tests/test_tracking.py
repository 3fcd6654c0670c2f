"""People over time: track ids through crossings, exits and entries on a video of real faces; smoothing; the
per-track summary; streaming outputs and Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, CAMERAMAN_FACE, iou, people_video, portraits, write_video
from PIL import Image

import ferkit.inference.faces as faces_mod
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.inference.faces import Detection
from ferkit.inference.predict import Predictor, predict_video, predict_videos
from ferkit.inference.results import Face, Result
from ferkit.inference.tracking import SMOOTH_S, LiveLog, Summary, Tracker, iou_matrix

pytest.importorskip("skimage.data")
FPS = 10.0


def id_switches(truth: list[dict], assigned: list[dict]) -> tuple[int, dict]:
    """Changes of track id within each person, and the people each track id was given to."""
    switches, last, owners = 0, {}, {}
    for seen, ids in zip(truth, assigned):
        for person in seen:
            track = ids[person]
            switches += person in last and last[person] != track
            last[person] = track
            owners.setdefault(track, set()).add(person)
    return switches, owners


def track_truth(truth: list[dict], every: int = 1, **kw) -> list[dict]:
    """The tracker fed the true boxes, as from a perfect detector; person -> track id per frame."""
    tracker = Tracker(**kw)
    assigned = []
    for i in range(0, len(truth), every):
        people = list(truth[i])
        ids = tracker.assign(i / FPS, [truth[i][p] for p in people])
        assigned.append(dict(zip(people, ids)))
    return assigned


@pytest.mark.parametrize("every", [1, 2, 3])
def test_four_people_that_cross_leave_and_enter_get_four_tracks_and_no_id_switch(every):
    _, truth = people_video()
    assert any(0 not in t and 1 in t for t in truth[30:50]), "the video must hide person 0 behind 1"
    assigned = track_truth(truth, every)
    switches, owners = id_switches(truth[::every], assigned)
    assert switches == 0
    assert len(owners) == 4 and all(len(people) == 1 for people in owners.values())


def test_without_velocity_the_crossing_would_swap_or_lose_ids():
    """What the constant-velocity prediction is for: a tracker that keeps each box where it was last seen loses
    person 0 behind 1 and gives it a new id, or swaps them."""
    _, truth = people_video()

    class Still(Tracker):
        @staticmethod
        def _move(track, box, time_s):
            track.box, track.time_s = box, time_s

    tracker, assigned = Still(), []
    for i, seen in enumerate(truth):
        people = list(seen)
        assigned.append(dict(zip(people, tracker.assign(i / FPS, [seen[p] for p in people]))))
    switches, owners = id_switches(truth, assigned)
    assert switches > 0 or len(owners) > 4


def test_a_person_missed_longer_than_max_age_gets_a_new_id():
    tracker = Tracker(max_age_s=1.0)
    first = tracker.assign(0.0, [[100, 100, 50, 50]])
    assert tracker.assign(0.9, [[100, 100, 50, 50]]) == first
    assert tracker.assign(2.0, [[100, 100, 50, 50]]) != first


def test_a_live_sources_results_stand_for_their_spacing_and_its_dropped_frames_are_counted():
    summary = Summary(CLASSES)
    summary.start("rtsp://cam/live", None)  # live: frames that came while one was read were dropped
    summary.start("clip.mp4", 1 / 30)
    for frame, time_s in ((0, 0.0), (3, 0.1), (7, 0.2), (9, 0.3)):
        for source in ("rtsp://cam/live", "clip.mp4"):
            face = Face([10, 10, 50, 50], "Happy", 0.9, dict.fromkeys(CLASSES, 1 / 7), track=1)
            face.smoothed = face.probabilities
            summary.add(Result(source, 100, 100, [face], frame=frame, time_s=time_s))
    seconds = {row["source"]: row["seconds"] for row in summary.rows()}
    # Four results a tenth of a second apart: 0.4 s in view, not four thirtieths of a second.
    assert seconds == {"rtsp://cam/live": 0.4, "clip.mp4": round(4 / 30, 3)}
    assert json.loads(summary.to_json())["live"] == [{"source": "rtsp://cam/live", "frames_read": 4, "frames_sent": 10}]
    assert summary.format_table().splitlines()[-1] == (
        "rtsp://cam/live: 4 of the 10 frames it sent were read, one every 0.10 s; the others came while one was "
        "being read"
    )


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [100, 100, 10, 10]], float)
    b = np.array([[5, 0, 10, 10]], float)
    assert iou_matrix(a, b)[:, 0] == pytest.approx([50 / 150, 0])


def crossing_busts(frames: int = 50, width: int = 640, height: int = 480):
    """Two astronauts (head and shoulders, one mirrored) walking across each other, the mirrored one in front;
    the real detector finds faces at this scale. Returns the frames and each frame's true face boxes."""
    from skimage.data import astronaut

    bust = astronaut()[0:260, 110:340]
    busts = [bust, bust[:, ::-1]]
    fx, fy, fw, fh = ASTRONAUT_FACE
    face_in = [(fx - 110, fy), (230 - (fx - 110) - fw, fy)]
    out, truth = [], []
    for i in range(frames):
        t = i / (frames - 1)
        xs = [round(10 + t * (width - 250)), round(width - 240 - t * (width - 250))]
        frame = np.full((height, width, 3), 128, np.uint8)
        for person in (0, 1):
            frame[120:380, xs[person] : xs[person] + 230] = busts[person]
        faces = {p: [xs[p] + face_in[p][0], 120 + face_in[p][1], fw, fh] for p in (0, 1)}
        if xs[1] < faces[0][0] + fw and faces[0][0] < xs[1] + 230:  # 0's face behind 1
            del faces[0]
        out.append(frame)
        truth.append(faces)
    return out, truth


def test_the_real_detector_keeps_two_crossing_people_apart(untrained_checkpoint, tmp_path):
    frames, truth = crossing_busts()
    # At 25 fps the 18 frames where 0 is hidden are 0.72 s, within the tracker's 1 s.
    video = write_video(frames, tmp_path / "crossing.avi", 25.0)
    results = predict_video(Predictor.from_checkpoint(untrained_checkpoint), str(video))
    assigned, found = [], 0
    for seen, result in zip(truth, results):
        ids = {}
        for person, box in seen.items():
            match = [f.track for f in result.faces if iou(f.box, box) > 0.3]
            if match:
                ids[person] = match[0]
                found += 1
        assigned.append(ids)
    assert found >= 0.8 * sum(len(t) for t in truth), "the detector should find most faces"
    switches, owners = id_switches(assigned, assigned)
    assert switches == 0 and len(owners) == 2


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    return write_video(crossing_busts()[0], tmp_path_factory.mktemp("video") / "crossing.avi", 25.0)


def test_outputs_carry_tracks_and_the_summary_sums_each_person_up(untrained_checkpoint, crossing, tmp_path, capsys):
    out = {k: tmp_path / f"out.{k}" for k in ("csv", "json", "summary.json", "png", "mp4")}
    argv = ["predict", str(crossing), "--checkpoint", str(untrained_checkpoint), "--csv", str(out["csv"])]
    argv += ["--json", str(out["json"]), "--summary", str(out["summary.json"]), "--plot", str(out["png"])]
    assert main(argv + ["--annotate", str(out["mp4"])]) == 0
    rows = list(csv.DictReader(out["csv"].open()))
    assert {r["track"] for r in rows} == {"1", "2"} and len({r["frame"] for r in rows}) == 50
    assert all(r["label"] == max(CLASSES, key=lambda c: float(r[f"smooth_{c}"])) for r in rows)
    document = json.loads(out["json"].read_text())
    frames = document["results"]
    assert document["prior"] == "model" and document["tta"] == "none"  # auto, for a file without its training mix
    assert len(frames) == 50 and frames[0]["faces"][0]["track"] in (1, 2)
    assert set(frames[0]["faces"][0]["smoothed"]) == set(CLASSES)
    summary = json.loads(out["summary.json"].read_text())
    assert summary["smooth_s"] == SMOOTH_S and summary["classes"] == list(CLASSES) and summary["prior"] == "model"
    assert summary["tta"] == "none"
    tracks = {t["track"]: t for t in summary["tracks"]}
    assert tracks[1]["first_s"] == 0.0 and tracks[2]["last_s"] == pytest.approx(49 / 25)
    assert tracks[2]["seconds"] == pytest.approx(tracks[2]["frames"] / 25)
    for t in tracks.values():
        assert sum(t["share"].values()) == pytest.approx(1, abs=1e-3)
        assert t["share"][t["dominant"]] == max(t["share"].values())
        assert all(s["end_s"] - s["start_s"] >= 1.0 and s["label"] in CLASSES for s in t["segments"])
    table = capsys.readouterr().out
    assert "track" in table and "dominant" in table and len(table.strip().splitlines()) == 1 + len(tracks)
    assert out["png"].stat().st_size > 0 and out["mp4"].stat().st_size > 0


class TrueBoxes:
    """A detector that finds exactly the pasted faces of successive frames, independent of the real detector."""

    def __init__(self, truth: list[dict]) -> None:
        self.frames = iter(truth)

    def detect(self, rgb):
        return [Detection(tuple(box)) for box in next(self.frames).values()]


def label_changes(video: Path, truth: list[dict], smooth: float) -> float:
    predictor = Predictor.from_checkpoint("fer2013_resnet18.int8", detector=TrueBoxes(truth))
    summary, _ = predict_videos(predictor, [str(video)], smooth=smooth)
    return summary.changes_per_second()


def flicker_video(frames: int = 30, every: int = 3) -> tuple[tuple, tuple]:
    """One person standing still whose face is the astronaut's (Happy to the bundled model) but the cameraman's
    (Sad) on every ``every``-th frame: what a glance away or a passing shadow does to a frame-by-frame reading."""
    from skimage.data import camera

    size = 120
    x, y, w, h = CAMERAMAN_FACE
    sad = np.repeat(camera()[y - 10 : y + h + 10, x - 10 : x + w + 10, None], 3, axis=2)
    faces = [portraits(size)[0], np.asarray(Image.fromarray(sad).resize((size, size), Image.BICUBIC))]
    box = [100, 80, size, size]
    out = []
    for i in range(frames):
        frame = np.full((320, 320, 3), 128, np.uint8)
        frame[80 : 80 + size, 100 : 100 + size] = faces[i % every == every - 1]
        out.append(frame)
    return tuple(out), tuple({0: box} for _ in range(frames))


def test_smoothing_cuts_label_changes_and_zero_turns_it_off(tmp_path):
    frames, truth = flicker_video()
    video = write_video(frames, tmp_path / "flicker.avi", FPS)
    changes = {smooth: label_changes(video, truth, smooth) for smooth in (SMOOTH_S, 0.0)}
    print(f"label changes per track-second, --smooth {SMOOTH_S} vs 0: {changes[SMOOTH_S]:.3f} vs {changes[0.0]:.3f}")
    # Unsmoothed, the label follows every flicker: nine Happy -> Sad -> Happy and a last Sad, 19 changes in 3 s.
    # Smoothed, the one odd frame in three moves the probabilities 13% of the way and the label holds.
    assert changes[0.0] == pytest.approx(19 / 3)
    assert changes[SMOOTH_S] == 0


def test_ctrl_c_writes_the_frames_done_so_far(untrained_checkpoint, crossing, tmp_path, monkeypatch, capsys):
    real = faces_mod.build_detector()

    class InterruptedAtFrame10:
        calls = 0

        def __init__(self, *args):
            pass

        def detect(self, rgb):
            self.calls += 1
            if self.calls == 11:
                raise KeyboardInterrupt
            return real.detect(rgb)

    monkeypatch.setattr(faces_mod, "build_detector", InterruptedAtFrame10)
    out_csv, out_json, summary = tmp_path / "f.csv", tmp_path / "f.json", tmp_path / "s.json"
    argv = ["predict", str(crossing), "--checkpoint", str(untrained_checkpoint), "--csv", str(out_csv)]
    assert main(argv + ["--json", str(out_json), "--summary", str(summary)]) == 130
    assert {int(r["frame"]) for r in csv.DictReader(out_csv.open())} == set(range(10))
    assert len(json.loads(out_json.read_text())["results"]) == 10
    assert {t["last_s"] for t in json.loads(summary.read_text())["tracks"]} == {0.36}
    assert "interrupted" in capsys.readouterr().err


def test_a_folder_of_videos_gives_a_summary_row_per_track_per_video(untrained_checkpoint, tmp_path):
    folder = tmp_path / "videos"
    (folder / "b").mkdir(parents=True)
    start = crossing_busts()[0][:8]  # both people in view, apart
    write_video(start, folder / "a.avi", 25.0)
    shutil.copy(folder / "a.avi", folder / "b" / "c.avi")
    summary = tmp_path / "s.json"
    argv = ["predict", str(folder), "--checkpoint", str(untrained_checkpoint), "--summary", str(summary)]
    assert main(argv + ["--annotate", str(tmp_path / "annotated")]) == 0
    tracks = json.loads(summary.read_text())["tracks"]
    rows = [(Path(t["source"]).name, t["track"]) for t in tracks]
    assert rows == [(name, i) for name in ("a.avi", "c.avi") for i in (1, 2)]
    assert (tmp_path / "annotated" / "b" / "c.mp4").stat().st_size > 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _seen(time_s: float, *people: tuple[int, str, float]) -> Result:
    faces = [Face([10 * k, 0, 10, 10], label, p, {label: p, "Sad": 1 - p}, track=k) for k, label, p in people]
    return Result("camera 0", faces=faces, frame=round(time_s * 10), time_s=time_s)


def _shown(text: str) -> tuple[list[str], str]:
    """What a terminal shows after ``text``: its finished lines, and the line the cursor is on (each carriage return
    and erase-line starting that line again)."""
    *lines, current = text.split("\n")
    return [line.split("\r\x1b[K")[-1] for line in lines], current.split("\r\x1b[K")[-1]


def test_a_live_source_at_a_terminal_says_who_comes_changes_and_leaves_over_one_status_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    terminal = _Terminal()
    log = LiveLog(terminal)
    log(_seen(0.0, (1, "Neutral", 0.6)))
    log(_seen(0.1, (1, "Neutral", 0.7), (2, "Happy", 0.8)))
    assert _shown(terminal.getvalue()) == (
        ["     0.0s  #1 in view: Neutral 60%", "     0.1s  #2 in view: Happy 80%"],
        "     0.1s  #1 Neutral 70%  #2 Happy 80%",
    )
    log(_seen(0.2, (1, "Happy", 0.55), (2, "Happy", 0.81)))
    log(_seen(0.9, (2, "Happy", 0.9)))  # #1 unseen for 0.7 s: still a track the tracker keeps
    log(_seen(1.3, (2, "Happy", 0.9), (3, "Surprise", 0.5)))  # 1.1 s: gone
    log(_seen(1.4))
    lines, status = _shown(terminal.getvalue())
    assert lines[2:] == [
        "     0.2s  #1 Neutral -> Happy 55%",
        "     1.3s  #3 in view: Surprise 50%",
        "     1.3s  #1 out of view (last read Happy)",
    ]
    assert status == "     1.4s  no face"
    log(_seen(1.5, *[(k, "Neutral", 0.5) for k in range(2, 9)]))
    assert len(_shown(terminal.getvalue())[1]) == 39  # cut to the terminal's width, so that it never wraps
    log.close()
    assert terminal.getvalue().endswith("\n")  # what is printed next starts on a line of its own


def test_a_warning_during_a_live_stream_gets_a_line_of_its_own_above_the_status_line(monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in the command: no handler but Python's last resort
    terminal = _Terminal()
    live = LiveLog(terminal, warnings_to=terminal)
    live(_seen(0.0, (1, "Happy", 0.8)))
    # From the reader's thread, as a live stream's warnings come.
    reader = threading.Thread(
        target=logging.getLogger("ferkit").warning, args=("camera 0 stopped; connecting again in 1 s (1/5)",)
    )
    reader.start()
    reader.join()
    live(_seen(0.1, (1, "Happy", 0.7)))
    lines, status = _shown(terminal.getvalue())
    assert lines == ["     0.0s  #1 in view: Happy 80%", "camera 0 stopped; connecting again in 1 s (1/5)"]
    assert status == "     0.1s  #1 Happy 70%"
    live.close()
    assert logging.getLogger("ferkit").handlers == []  # after the stream, warnings print as before


def test_a_live_log_leaves_the_warnings_to_logging_a_program_set_up(monkeypatch):
    own = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(logging.getLogger(), "handlers", [own])
    live = LiveLog(_Terminal())
    assert logging.getLogger("ferkit").handlers == []
    live.close()


def test_a_live_source_to_a_pipe_gives_each_frames_lines():
    piped = io.StringIO()
    log = LiveLog(piped)
    log(_seen(0.5, (1, "Happy", 0.8)))
    log(_seen(0.6))
    log.close()
    assert piped.getvalue().splitlines() == [
        "camera 0 frame 5 (0.50s): track 1 at (10, 0, 10, 10): Happy 80.0% (then Sad 20%)",
        "camera 0 frame 6 (0.60s): no face found",
    ]
