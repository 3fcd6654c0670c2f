"""People over time: a track id per face across video frames, smoothed probabilities, and a summary per track.

Tracking works on boxes alone ([x, y, w, h]), so it does not depend on which detector found them: each track's
box is carried forward at its centre's last velocity, predictions and detections are paired by IoU with the optimal
assignment (:func:`scipy.optimize.linear_sum_assignment`), and a track survives unmatched up to ``max_age_s``.
Everything is in seconds, not frames, so ``--every N`` and a camera's irregular frame rate need no special case.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from ..errors import FerkitError
from .results import Face, Result, format_table

MAX_AGE_S = 1.0
# Low, because a face coming out from behind another is detected by its visible part only, which lags behind
# where its track predicts the whole face.
MIN_IOU = 0.1
SMOOTH_S = 0.5
# Shortest run of one label that the summary lists as a segment.
SEGMENT_S = 1.0


def check_smooth(smooth_s: float) -> None:
    """``smooth_s`` as ``--smooth`` allows it: a half-life of 0 (off) or more seconds."""
    if not smooth_s >= 0:
        raise FerkitError(f"--smooth {smooth_s:g}: a half-life in seconds, 0 (no smoothing) or more")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N x 4, x y w h) with every box in ``b`` (M x 4)."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(axis=2)
    union = a[:, None, 2:].prod(axis=2) + b[None, :, 2:].prod(axis=2) - inter
    return inter / np.maximum(union, 1e-9)


@dataclass
class _Track:
    id: int
    box: np.ndarray
    time_s: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # of the box's centre, pixels a second
    dt: float = 0.0
    probs: np.ndarray | None = None

    def predicted(self, time_s: float) -> np.ndarray:
        # The centre moves on, the size stays: a face half hidden while it leaves shrinks, and extrapolating
        # that shrinking would leave nothing to match when it comes out again.
        shift = self.velocity * (time_s - self.time_s)
        return np.concatenate([self.box[:2] + shift, self.box[2:]])


class Tracker:
    """Track ids for the boxes of successive frames, and each track's exponentially smoothed probabilities.

    ``smooth_s`` is the half-life in seconds (0: no smoothing): a frame ``dt`` seconds after the track's last
    one moves the smoothed probabilities ``1 - 0.5 ** (dt / smooth_s)`` of the way to the new ones. A person
    missed for longer than ``max_age_s`` (or who leaves and comes back) gets a new id.
    """

    def __init__(self, max_age_s: float = MAX_AGE_S, min_iou: float = MIN_IOU, smooth_s: float = SMOOTH_S) -> None:
        check_smooth(smooth_s)
        self.max_age_s, self.min_iou, self.smooth_s = max_age_s, min_iou, smooth_s
        self.tracks: list[_Track] = []
        self._next_id = 1

    def assign(self, time_s: float, boxes: Sequence[Sequence[float]]) -> list[int]:
        """The track id of each box seen at ``time_s``; new ids for boxes no live track explains."""
        self.tracks = [t for t in self.tracks if time_s - t.time_s <= self.max_age_s]
        found = np.asarray(boxes, dtype=float).reshape(-1, 4)
        ids = [0] * len(found)
        matched = set()
        if self.tracks and len(found):
            # Imported at the first pairing, not with the module: a third of a second that photos need not pay.
            from scipy.optimize import linear_sum_assignment

            predicted = np.stack([t.predicted(time_s) for t in self.tracks])
            overlap = iou_matrix(predicted, found)
            for ti, bi in zip(*linear_sum_assignment(overlap, maximize=True)):
                if overlap[ti, bi] >= self.min_iou:
                    self._move(self.tracks[ti], found[bi], time_s)
                    ids[bi] = self.tracks[ti].id
                    matched.add(bi)
        for bi in range(len(found)):
            if bi not in matched:
                self.tracks.append(_Track(self._next_id, found[bi], time_s))
                ids[bi] = self._next_id
                self._next_id += 1
        return ids

    @staticmethod
    def _move(track: _Track, box: np.ndarray, time_s: float) -> None:
        track.dt = time_s - track.time_s
        if track.dt > 0:
            # Half old, half new: one jittery detection should not throw the prediction off.
            moved = (box[:2] + box[2:] / 2) - (track.box[:2] + track.box[2:] / 2)
            track.velocity = 0.5 * track.velocity + 0.5 * moved / track.dt
        track.box, track.time_s = box, time_s

    def update(self, time_s: float, faces: Sequence[Face]) -> None:
        """Sets each face's ``track`` and ``smoothed``, and its label and confidence from the smoothed probabilities."""
        ids = self.assign(time_s, [f.box for f in faces])
        by_id = {t.id: t for t in self.tracks}
        for face, track_id in zip(faces, ids):
            track = by_id[track_id]
            classes = list(face.probabilities)
            raw = np.array([face.probabilities[c] for c in classes])
            if track.probs is None or self.smooth_s <= 0:
                track.probs = raw
            else:
                weight = 1 - 0.5 ** (track.dt / self.smooth_s)
                track.probs = track.probs + weight * (raw - track.probs)
            face.track = track_id
            face.smoothed = {c: float(p) for c, p in zip(classes, track.probs)}
            face.label = classes[int(track.probs.argmax())]
            face.confidence = float(track.probs.max())


@dataclass
class _Run:
    """What the summary keeps of one track: O(1) in its length but for the segments (and the timeline, on request)."""

    source: str
    track: int
    first_s: float
    last_s: float
    frames: int = 0
    changes: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    segments: list[dict] = field(default_factory=list)
    label: str = ""
    since_s: float = 0.0
    timeline: list[tuple[float, list[float]]] = field(default_factory=list)


def _held(run: _Run, step: float) -> list[dict]:
    """The run's current label as a segment, if it held long enough (a one-frame step counts to its end)."""
    end = run.last_s + step
    if end - run.since_s < SEGMENT_S - 1e-9:
        return []
    return [{"label": run.label, "start_s": round(run.since_s, 3), "end_s": round(end, 3)}]


class Summary:
    """Per track of every video: first and last time, seconds in view, share of time per expression, the dominant
    one, and the segments where one (smoothed) label held for at least :data:`SEGMENT_S`.

    Fed one result at a time (:meth:`add`), so a long video costs a few numbers per track. A source's ``step_s``
    (:meth:`start`) is the time one result stands for (``every`` frames); ``timelines`` keeps each track's smoothed
    probabilities for a plot.
    """

    def __init__(
        self,
        classes: Sequence[str],
        smooth_s: float = SMOOTH_S,
        timelines: bool = False,
        prior: str = "model",
        tta: str = "none",
    ) -> None:
        self.classes, self.smooth_s, self.timelines = list(classes), smooth_s, timelines
        self.prior = prior  # the class mix the probabilities were read for (ferkit.evaluation.prior)
        self.tta = tta  # the views of each face they average
        self._runs: dict[tuple[str, int], _Run] = {}
        self._steps: dict[str, float | None] = {}
        self._read: dict[str, list] = {}  # source: [results, first time, last time, last frame index]
        self.not_read: dict[str, str] = {}  # source: why it could not be read

    def start(self, source: str, step_s: float | None) -> None:
        """A source's results to come, each standing for ``step_s`` seconds; None for a live source, whose frames
        that came while one was read are dropped: its results' mean spacing, measured as they come."""
        self._steps[source] = step_s

    def _step(self, source: str) -> float:
        step = self._steps.get(source, 0.0)
        if step is not None:
            return step
        count, first_s, last_s, _ = self._read.get(source, (0, 0.0, 0.0, -1))
        return (last_s - first_s) / (count - 1) if count > 1 else 0.0

    def fail(self, source: str, error: str) -> None:
        self.not_read[source] = error

    def add(self, result: Result) -> None:
        read = self._read.setdefault(result.source, [0, result.time_s, result.time_s, -1])
        read[0], read[2], read[3] = read[0] + 1, result.time_s, result.frame
        step = self._step(result.source)
        for face in result.faces:
            if face.track is None:
                continue
            run = self._runs.get((result.source, face.track))
            if run is None:
                run = self._runs[(result.source, face.track)] = _Run(
                    result.source, face.track, result.time_s, result.time_s, label=face.label, since_s=result.time_s
                )
            elif face.label != run.label:
                run.segments += _held(run, step)
                run.changes += 1
                run.label, run.since_s = face.label, result.time_s
            run.last_s = result.time_s
            run.frames += 1
            run.per_label[face.label] = run.per_label.get(face.label, 0) + 1
            if self.timelines:
                run.timeline.append((result.time_s, [face.smoothed[c] for c in self.classes]))

    def rows(self) -> list[dict]:
        out = []
        for run in self._runs.values():
            step = self._step(run.source)
            seconds = run.frames * step
            segments = run.segments + _held(run, step)
            share = {c: round(run.per_label.get(c, 0) / run.frames, 4) for c in self.classes}
            out.append(
                {
                    "source": run.source,
                    "track": run.track,
                    "first_s": round(run.first_s, 3),
                    "last_s": round(run.last_s, 3),
                    "seconds": round(seconds, 3),
                    "frames": run.frames,
                    "dominant": max(share, key=share.get),
                    "share": share,
                    "label_changes": run.changes,
                    "segments": segments,
                }
            )
        return out

    def tracks(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(title, times, smoothed probabilities) per track, longest first, for :func:`ferkit.plots.plot_timeline`."""
        runs = sorted(self._runs.values(), key=lambda r: r.frames, reverse=True)
        return [
            (f"{r.source} track {r.track}", np.array([t for t, _ in r.timeline]), np.array([p for _, p in r.timeline]))
            for r in runs
        ]

    def changes_per_second(self) -> float:
        """Label changes per track-second over all tracks: how much labels flicker."""
        rows = self.rows()
        seconds = sum(r["seconds"] for r in rows)
        return sum(r["label_changes"] for r in rows) / seconds if seconds else 0.0

    def to_json(self) -> str:
        document = {
            "classes": self.classes,
            "prior": self.prior,
            "tta": self.tta,
            "smooth_s": self.smooth_s,
            "tracks": self.rows(),
            "not_read": [{"source": k, "error": v} for k, v in self.not_read.items()],
            "live": [
                {"source": source, "frames_read": read, "frames_sent": sent} for source, read, sent in self._live()
            ],
        }
        return json.dumps(document, indent=2)

    def _live(self) -> list[tuple[str, int, int]]:
        """(source, frames read, frames it sent) of each live source."""
        return [
            (source, self._read[source][0], self._read[source][3] + 1)
            for source, step in self._steps.items()
            if step is None and source in self._read
        ]

    def format_table(self) -> str:
        rows = self.rows()
        notes = [f"{source}: not read: {error}" for source, error in self.not_read.items()]
        notes += [
            f"{source}: {read} of the {sent} frames it sent were read, one every {self._step(source):.2f} s; the "
            "others came while one was being read"
            for source, read, sent in self._live()
            if sent > read
        ]
        if not rows:
            return "\n".join(["no face was tracked", *notes])
        head = f"{'source':<24} {'track':>5} {'first':>8} {'last':>8} {'in view':>8}  {'dominant':<16} then  segments"
        lines = [head]
        for r in rows:
            ranked = sorted(r["share"].items(), key=lambda kv: kv[1], reverse=True)
            others = ", ".join(f"{c} {p:.0%}" for c, p in ranked[1:3] if p > 0) or "-"
            held = [f"{s['label']} {s['start_s']:.1f}-{s['end_s']:.1f}s" for s in r["segments"]]
            more = f" +{len(held) - 3} more" if len(held) > 3 else ""
            lines.append(
                f"{r['source'][-24:]:<24} {r['track']:>5} {r['first_s']:>7.2f}s {r['last_s']:>7.2f}s "
                f"{r['seconds']:>7.1f}s  {r['dominant'] + f' {ranked[0][1]:.0%}':<16} {others}  "
                f"{', '.join(held[:3]) or '-'}{more}"
            )
        return "\n".join(lines + notes)


class LiveLog:
    """A camera's or live stream's results as they come. For a person watching a terminal: a line when someone comes
    into view, when their expression (the smoothed label) changes and when they leave, and below those one status
    line, rewritten in place, with everyone in view; a line per face per frame (over a hundred a second with 8 faces
    here) would scroll past faster than anyone reads. To a pipe or a file, which a program reads: each frame's lines
    (:func:`format_table`). A person is out of view once their track has gone unseen for ``gone_after_s`` (the
    tracker's ``max_age_s``: after that, one who comes back is a new track). At a terminal, ferkit's warnings (a
    stream lost and connected again) are printed above the status line until :meth:`close`, not into it."""

    def __init__(self, out: TextIO, gone_after_s: float = MAX_AGE_S, warnings_to: TextIO | None = None) -> None:
        self.out, self.gone_after_s, self.terminal = out, gone_after_s, out.isatty()
        self._seen: dict[int, tuple[str, float]] = {}  # track: its label and when it was last seen
        self._status = ""
        # A live stream's warnings come from its reader thread, the status line from this one: one writes at a time.
        self._writing = threading.Lock()
        # Only where Python's last-resort handler would print them: a program that set up logging keeps its own.
        quiet = not logging.getLogger("ferkit").hasHandlers()
        self._warnings = warnings_to or sys.stderr
        self._handler = _AboveStatus(self) if self.terminal and quiet else None
        if self._handler:
            logging.getLogger("ferkit").addHandler(self._handler)

    def __call__(self, result: Result) -> None:
        if not self.terminal:
            print(format_table([result]), file=self.out, flush=True)
            return
        now = result.time_s or 0.0
        in_view = {f.track: f for f in result.faces if f.track is not None}
        events = []
        for track, face in sorted(in_view.items()):
            said = f"{face.label} {face.confidence:.0%}"
            if track not in self._seen:
                events.append(f"#{track} in view: {said}")
            elif self._seen[track][0] != face.label:
                events.append(f"#{track} {self._seen[track][0]} -> {said}")
            self._seen[track] = face.label, now
        for track, (label, last) in sorted(self._seen.items()):
            if track not in in_view and now - last > self.gone_after_s:
                events.append(f"#{track} out of view (last read {label})")
                del self._seen[track]
        people = "  ".join(f"#{t} {f.label} {f.confidence:.0%}" for t, f in sorted(in_view.items()))
        width = shutil.get_terminal_size().columns - 1  # a status line that wraps could not be rewritten
        status = f"{now:8.1f}s  {people or 'no face'}"[:width]
        with self._writing:
            self.out.write("".join(f"\r\x1b[K{now:8.1f}s  {event}\n" for event in events) + f"\r\x1b[K{status}")
            self.out.flush()
            self._status = status

    def warn(self, line: str) -> None:
        """``line`` to the warnings' stream, with the status line cleared first and shown again after."""
        with self._writing:
            if self._status:
                self.out.write("\r\x1b[K")
                self.out.flush()
            self._warnings.write(line + "\n")
            self._warnings.flush()
            if self._status:
                self.out.write(self._status)
                self.out.flush()

    def close(self) -> None:
        """Ends the status line, so that what is printed next starts on a line of its own."""
        if self._handler:
            logging.getLogger("ferkit").removeHandler(self._handler)
            self._handler = None
        with self._writing:
            if self._status:
                self.out.write("\n")
                self.out.flush()
                self._status = ""


class _AboveStatus(logging.Handler):
    """Prints a warning as Python's last-resort handler would (its message alone, to stderr), but through
    :meth:`LiveLog.warn`, on a line of its own above the status line; it holds that handler's place while installed."""

    def __init__(self, live: LiveLog) -> None:
        super().__init__(logging.WARNING)
        self.live = live

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.live.warn(self.format(record))
        except Exception:  # as logging's own handlers do: a bad record must not stop the stream
            self.handleError(record)
