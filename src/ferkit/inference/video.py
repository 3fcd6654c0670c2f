"""Video files, streams and cameras: which inputs are videos, their frames as RGB, and annotated frames to a file."""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..data.images import ANIMATED_FORMATS, announces_frames, is_animated, to_rgb
from ..data.urls import fetch, is_stream_url, is_url, shown, url_path
from ..errors import FerkitError
from .opencv import require_cv2

log = logging.getLogger("ferkit")

# A live stream that stops (a camera's network dropping, say) is connected to again this many times, waiting 1, 2, 4,
# 8 and 8 s, before it is taken as ended.
RECONNECTS = 5

# A file that ends before this share of the frames its header states is said to be cut short (headers estimate
# the count from the duration and rate, a few frames off).
CUT_SHORT = 0.9

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


# The shortest delay browsers honour between an animation's frames: most show a frame given less (a GIF's 0 or
# 10 ms) for 100 ms, the pace its author saw.
MIN_FRAME_MS = 20
SHOWN_FRAME_MS = 100


# An animated image's address is told by its first bytes (asked for alone): a still one is fetched as a photo.
ANIMATABLE = {".gif": "GIF", ".png": "PNG", ".webp": "WebP"}
HEAD_BYTES = 64 * 1024  # an APNG's frame count and an animated WebP's flag come well before; a GIF's second image
# mostly does, and where it does not, the GIF is read as an animation (one frame, if it is still)


def is_video(path: Path) -> bool:
    """A video file by its suffix, or an animated image (GIF, WebP or PNG of several frames)."""
    return path.suffix.lower() in VIDEO_SUFFIXES or is_animated(path)


def is_video_url(source: object) -> bool:
    """Whether an address names a video or a live stream (OpenCV reads it), by its suffix; an animated image's
    address is told by :func:`is_animated_url`."""
    if is_stream_url(source):
        return True
    return is_url(source) and url_path(source).suffix.lower() in (*VIDEO_SUFFIXES, ".m3u8")


def is_animated_url(source: object) -> bool:
    """Whether a GIF's, PNG's or WebP's address serves an animation, by the first bytes it serves (asked for alone);
    one that cannot be fetched is left to be read as a photo, which says why."""
    if not is_url(source) or url_path(source).suffix.lower() not in ANIMATABLE:
        return False
    try:
        return announces_frames(fetch(source, first=HEAD_BYTES))
    except FerkitError:
        return False


def is_live(source: str | int) -> bool:
    """A camera or a live stream: read until Ctrl-C, its frames shown as they come."""
    return isinstance(source, int) or is_stream_url(source)


def source_name(source: str | os.PathLike | int) -> str:
    """How results and messages name an input: its path, its address without a password, or ``camera N``."""
    if isinstance(source, int):
        return f"camera {source}"
    return shown(source) if is_url(source) else str(source)


class Video:
    """A video file, an animated image (a GIF, WebP or PNG file, or such an animation's address), a stream's address
    or a camera (by number), opened once: its frame rate, the length its container states, and its frames as RGB; of
    a file, optionally only those from ``start`` until ``end`` seconds.

    >>> with Video("clip.mp4", start=60, end=90) as video:
    ...     for index, time_s, rgb in video.frames(every=2): ...
    """

    def __init__(self, source: str | int, start: float = 0.0, end: float | None = None) -> None:
        check_span(start, end)
        cv2 = require_cv2()
        self.source, self.name, self.start, self.end = source, source_name(source), start, end
        self.live = is_live(source)
        if (start or end is not None) and self.live:
            raise FerkitError(f"--start and --end apply to video files; {self.name} is live, with no timeline")
        self._cv2, self._capture = cv2, _capture(source)
        if not self._capture.isOpened():
            raise FerkitError(unopened(source))
        self._reported_fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        # Live sources state no length (or a meaningless one).
        self.length = 0 if self.live else max(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self._reader: _Reader | None = None

    @property
    def span_frames(self) -> int:
        """The frames from ``start`` until ``end`` as the stated length and rate put them (0 when unknown)."""
        last = self.length if self.end is None else min(self.length, math.ceil(self.end * self.fps))
        return max(last - math.ceil(self.start * self.fps), 0)

    @property
    def size(self) -> tuple[int, int]:
        """A frame's width and height as the video states them (0, 0 when it does not)."""
        get, cv2 = self._capture.get, self._cv2
        return int(get(cv2.CAP_PROP_FRAME_WIDTH)), int(get(cv2.CAP_PROP_FRAME_HEIGHT))

    @property
    def fps(self) -> float:
        """Frames a second, for the tracks' clock and an annotated copy. A camera's reported rate is often wrong or
        zero, so cameras and files that state none get 25, what most webcams deliver indoors."""
        if isinstance(self.source, int) or not 0 < self._reported_fps <= 1000:
            return 25.0
        return self._reported_fps

    def frames(self, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
        """(frame index, seconds, RGB frame) for every ``every``-th frame, until the video ends. A live source gives
        its newest frame each time one is asked for, at least ``every`` frames after the last: frames that came
        while one was classified are dropped, not queued, so the results keep up with what the camera sees. A live
        stream that stops is connected to again (``RECONNECTS`` tries, waiting longer each time) before it is taken
        as ended."""
        check_every(every)
        if self.live:
            yield from self._newest(every)
            return
        cv2, first, index = self._cv2, None, -1
        for index, time_s in self._grabbed():
            if self.end is not None and time_s >= self.end:
                return
            first = index if first is None else first
            if (index - first) % every:
                continue  # a skipped frame is only grabbed: no image, nothing for the tracker
            ok, bgr = self._capture.retrieve()
            if not ok:
                break
            yield index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if index + 1 < CUT_SHORT * self.length and self.length - index > 2:
            # An MP4 whose index follows its frames (as phones write them) needs the server to send parts of it.
            why = (
                "the file may be cut short, or its server may not send parts of a file (HTTP Range), which an MP4 "
                "whose index comes last needs: download it and give the file"
                if is_url(self.source)
                else "the file may be cut short (a download or copy that did not finish)"
            )
            log.warning(
                "%s ended after frame %d of the %d its header states: %s; the frames read are kept",
                self.name,
                index + 1,
                self.length,
                why,
            )

    def _newest(self, every: int) -> Iterator[tuple[int, float, np.ndarray]]:
        if self._reader is not None:  # its thread owns the capture, and releases it when it ends
            raise FerkitError(f"{self.name} is read once per opening; open it again (Video(...)) to read it again")
        reader = self._reader = _Reader(self)
        wanted = 0
        try:
            while (item := reader.take(wanted)) is not None:
                index, time_s, bgr = item
                wanted = index + every
                yield index, time_s, self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
        finally:
            reader.stop()

    def _grabbed(self) -> Iterator[tuple[int, float]]:
        """(index, seconds) of each frame of a file grabbed from the first at or after ``start`` on."""
        if self.start:
            if (found := self._seek()) is None:
                return
            index, time_s = found
        else:
            if not self._capture.grab():
                return
            index, time_s = 0, self._time(0)
        while True:
            if time_s >= self.start:
                yield index, time_s
            index += 1
            if not self._capture.grab():
                return
            time_s = self._time(index)

    def _seek(self) -> tuple[int, float] | None:
        """The frame grabbed at or before ``start`` (index, seconds); None when the file ends first.

        OpenCV seeks by a frame number it reckons from the average rate, so in a video of variable rate (most
        phones') it can land after ``start``, or past the end: then it seeks again, earlier (by twice the overshoot
        and a second; to half the time less a second).
        """
        cv2, capture, target = self._cv2, self._capture, self.start
        while True:
            capture.set(cv2.CAP_PROP_POS_MSEC, target * 1000)
            index = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
            if capture.grab():
                time_s = self._time(index)
                if time_s <= self.start or target == 0:
                    return index, time_s
                target = max(0.0, target - 2 * (time_s - self.start) - 1)
            elif target == 0:
                return None
            else:  # past the end, where a variable rate can put a time that the video holds: from earlier
                target = max(0.0, target / 2 - 1)

    def _time(self, index: int) -> float:
        """Seconds into a file of the frame just grabbed: its own timestamp, which a variable rate makes uneven
        (a phone's video in dim light); where the file gives none, its index at the stated rate (else 25 a second).
        A live source's clock is the wall clock (:class:`_Reader`)."""
        ms = self._capture.get(self._cv2.CAP_PROP_POS_MSEC)
        return round(ms / 1000, 4) if ms > 0 else index / self.fps

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        else:
            self._capture.release()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _capture(source: str | int):
    """What reads ``source``'s frames: PIL for an animated image (an address fetched first, with the login, retries
    and size limit of a photo's), OpenCV for the rest."""
    if is_url(source) and url_path(source).suffix.lower() in ANIMATABLE:
        return _Animation(io.BytesIO(fetch(source)), shown(source))
    if isinstance(source, str | os.PathLike) and is_animated(source):
        return _Animation(source, str(source))
    return require_cv2().VideoCapture(source)


class _Animation:
    """An animated image's frames through the part of ``cv2.VideoCapture``'s interface that :class:`Video` uses.
    PIL, not OpenCV, decodes them: it composes each frame over the last as its file says (a GIF's frames are often
    patches over the one before) and reads animated WebP, which OpenCV's FFmpeg does only in recent builds. Each
    frame starts when the delays of the frames before it have passed."""

    def __init__(self, file: str | os.PathLike | BinaryIO, name: str) -> None:
        cv2 = require_cv2()
        self._props = cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_POS_MSEC, cv2.CAP_PROP_POS_FRAMES
        self._sizes = cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT
        self._image, self._starts, self._next, elapsed = None, [], 0, 0
        try:
            self._image = Image.open(file)
            for index in range(self._image.n_frames):
                self._image.seek(index)
                self._image.load()  # a WebP frame's delay is known once it is decoded
                self._starts.append(elapsed)
                delay = self._image.info.get("duration") or 0
                elapsed += delay if delay >= MIN_FRAME_MS else SHOWN_FRAME_MS
        except Exception as e:  # decoders fail on damaged bytes in many ways; the frames before the damage are kept
            if not self._starts:
                self.release()
                self._image = None
                return
            log.warning(
                "%s: the frames after frame %d cannot be decoded (%s); the file may be cut short, the frames before "
                "are read",
                name,
                len(self._starts),
                str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
            )
        self._duration_ms = elapsed

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self._image is not None

    def get(self, prop: int) -> float:
        fps, count, msec, position = self._props
        if prop == fps:
            return 1000 * len(self._starts) / self._duration_ms
        if prop == count:
            return float(len(self._starts))
        if prop == msec:
            return float(self._starts[self._next - 1]) if self._next else 0.0
        if prop == position:
            return float(self._next)
        if prop in self._sizes:
            return float(self._image.size[self._sizes.index(prop)])
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        """Seeks (by ``CAP_PROP_POS_MSEC``) to the frame shown at that time: the next one grabbed."""
        if prop != self._props[2]:
            return False
        self._next = max(bisect.bisect_right(self._starts, value) - 1, 0)
        return True

    def grab(self) -> bool:
        if self._next >= len(self._starts):
            return False
        self._next += 1
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        if not self._next:
            return False, None
        self._image.seek(self._next - 1)
        rgb = np.asarray(to_rgb(self._image))
        return True, np.ascontiguousarray(rgb[..., ::-1])  # BGR, as OpenCV gives frames

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        if self._image is not None:
            self._image.close()


def unopened(source: str | int) -> str:
    """Why OpenCV could not open a video, a stream or a camera, and what to do."""
    if isinstance(source, int):
        return f"cannot open camera {source}; check that it is connected and that no other program is using it"
    if is_url(source) and url_path(source).suffix.lower() in ANIMATABLE:
        kind = ANIMATABLE[url_path(source).suffix.lower()]
        return f"{shown(source)} did not give an image PIL can decode (a web page?); give the {kind}'s own address"
    if is_url(source):
        return f"cannot open {shown(source)}; check the address and that the camera or server answers"
    if not Path(source).is_file():
        return f"{source} does not exist"
    return (
        f"cannot read {source} as a video: damaged, or encoded in a way OpenCV cannot decode; "
        f"convert it (e.g. ffmpeg -i {source} converted.mp4)"
    )


class _Reader:
    """A live source's frames read in a thread as fast as they come, the newest kept. Read in turn with the
    classifier instead, a network camera's frames would queue while each is classified, and the results would fall
    ever further behind what it sees. A frame's time is when it was read, by the wall clock: what a live source
    reports of its rate is often wrong (an RTSP camera may give its 90-kHz clock)."""

    def __init__(self, video: Video) -> None:
        self._video, self._changed, self._stopping = video, threading.Condition(), threading.Event()
        self._newest: tuple[int, float, np.ndarray] | None = None
        self._ended = False
        self._thread = threading.Thread(target=self._read, name=f"ferkit reader: {video.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        video, index, lost, started = self._video, 0, 0, time.monotonic()
        try:
            while not self._stopping.is_set():
                ok, bgr = video._capture.read()
                if ok:
                    lost = 0
                    with self._changed:
                        self._newest = (index, time.monotonic() - started, bgr)
                        self._changed.notify()
                    index += 1
                elif self._stopping.is_set() or not self._reconnected(lost):
                    break
                else:
                    lost += 1
        except Exception as e:  # OpenCV's own error: the frames read so far stay, and the source has ended
            log.warning("%s: reading stopped: %s", video.name, e)
        finally:
            video._capture.release()  # from the start, this thread alone used it
            with self._changed:
                self._ended = True
                self._changed.notify()

    def _reconnected(self, lost: int) -> bool:
        """Whether a live stream that stopped was opened again (``lost`` tries ago it last gave a frame); a camera
        that stops, or a stream after ``RECONNECTS`` tries or once the reading is stopped, has ended."""
        video = self._video
        if not is_stream_url(video.source):
            return False
        if lost == RECONNECTS:
            log.warning("%s: no frame after %d tries to connect again; stopping", video.name, RECONNECTS)
            return False
        wait = min(2**lost, 8)
        log.warning("%s stopped; connecting again in %d s (%d/%d)", video.name, wait, lost + 1, RECONNECTS)
        if self._pause(wait):
            return False
        video._capture.release()
        video._capture = video._cv2.VideoCapture(video.source)  # one that does not open fails its first read: a try
        return True

    def _pause(self, seconds: float) -> bool:
        """Waits ``seconds``, or less if the reading is stopped meanwhile (then True)."""
        return self._stopping.wait(seconds)

    def take(self, at_least: int) -> tuple[int, float, np.ndarray] | None:
        """The newest frame whose index is at least ``at_least``, once there is one; None when the source ended."""
        with self._changed:
            # A timed wait, so that Ctrl-C reaches the main thread however long the source keeps still.
            while not self._ended and (self._newest is None or self._newest[0] < at_least):
                self._changed.wait(0.1)
            newest, self._newest = self._newest, None
        return newest if newest is not None and newest[0] >= at_least else None

    def stop(self) -> None:
        """Ends the reading, as soon as a read that is under way returns (the thread then releases the source)."""
        self._stopping.set()
        self._thread.join(timeout=2)


def list_videos(folder: Path) -> list[Path]:
    """The video files in a folder (any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_video(p))


def frame_count(source: str, start: float = 0.0, end: float | None = None) -> int:
    """The frames a video file's container states from ``start`` until ``end`` seconds (0 when it does not, and for
    addresses, which are not opened twice), for a progress bar over several files."""
    if is_url(source):
        return 0
    try:
        with Video(source, start, end) as video:
            return video.span_frames
    except FerkitError:  # said when its turn comes
        return 0


def check_every(every: int) -> None:
    """``every`` as ``--every`` allows it: a whole number of frames, 1 or more."""
    if every < 1:
        raise FerkitError(f"--every {every}: every Nth frame is read, N 1 or more (1: every frame)")


def check_span(start: float, end: float | None) -> None:
    """``start`` and ``end`` (seconds into a video) as ``--start`` and ``--end`` allow them."""
    if start < 0:
        raise FerkitError(f"--start {start:g}: a time from the video's start, 0 or more seconds")
    if end is not None and end <= start:
        raise FerkitError(f"--end {end:g} is not after --start {start:g}; give a later end")


# What VideoWriter writes, by suffix, the first the default. MPEG-4 Part 2 plays in desktop players and phones'
# galleries but in few browsers; VP8 in WebM plays in every browser, at 43 ms a 720p frame against mp4v's 4 (VP9,
# which OpenCV's wheels also write, 200 ms; benchmarks/video_codecs.py); H.264 is not in them.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".m4v": "mp4v", ".webm": "VP80"}
# AnimationWriter writes an animated image (ANIMATED_FORMATS), which plays wherever an image shows (a chat, a page),
# so a reaction GIF is drawn as one.
WRITABLE_VIDEO_SUFFIXES = (*VIDEO_CODECS, *ANIMATED_FORMATS)
# An animated image is written whole when it is closed, its frames held until then: at most this many pixels of
# them (1.5 GB; 1,000 frames of 720p).
MAX_ANIMATION_PIXELS = 2**29


def drawn_video_suffix(source: str | int) -> str:
    """What a video is drawn as by default: an animated image as one of its own kind (as MP4 where its frames
    would hold more than ``MAX_ANIMATION_PIXELS``), anything else as MP4."""
    if isinstance(source, str) and not is_url(source) and is_animated(source):
        with Image.open(source) as image:
            if image.n_frames * image.width * image.height <= MAX_ANIMATION_PIXELS:
                return Path(source).suffix.lower()
    return WRITABLE_VIDEO_SUFFIXES[0]


def video_writer(path: Path, video: Video, every: int) -> VideoWriter | AnimationWriter:
    """The writer of ``video``'s drawing (read every ``every``-th frame) to ``path``, by its suffix; an animated
    image that would hold more than ``MAX_ANIMATION_PIXELS`` is refused before any frame is read."""
    fps = video.fps if video.live else video.fps / every
    if path.suffix.lower() not in ANIMATED_FORMATS:
        return VideoWriter(path, fps)
    width, height = video.size
    frames = video.span_frames / every
    if video.live or frames * width * height > MAX_ANIMATION_PIXELS:
        what = "a live source" if video.live else f"{frames:.0f} frames of {width}x{height}"
        raise FerkitError(
            f"--annotate {path}: an animated image holds every frame until it is written, too many for {what}; "
            f"draw it as a video ({path.with_suffix('.mp4')}, or .webm for browsers)"
        )
    return AnimationWriter(path, fps)


class AnimationWriter:
    """Annotated frames to an animated GIF, WebP or PNG (:data:`ANIMATED_FORMATS`), each shown until the next
    one's time: the format gives every frame its own delay, so the drawing keeps the video's pace exactly."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.written = path, fps, 0
        self._frames: list[Image.Image] = []
        self._times: list[float] = []

    def write(self, rgb: np.ndarray, at: float) -> None:
        self._frames.append(Image.fromarray(rgb))
        self._times.append(at)
        self.written += 1

    def close(self) -> None:
        if not self._frames:
            return
        # The last frame is shown for one frame of the video's rate; GIF counts delays in hundredths of a second.
        ends = [*self._times[1:], self._times[-1] + 1 / self.fps]
        delays = [max(round((end - at) * 1000), 10) for at, end in zip(self._times, ends)]
        first, *rest = self._frames
        try:
            first.save(
                self.path,
                ANIMATED_FORMATS[self.path.suffix.lower()],
                save_all=True,
                append_images=rest,
                duration=delays,
                loop=0,
            )
        except OSError as e:
            raise FerkitError(f"cannot write {self.path}: {e}") from None
        finally:
            self._frames, self._times = [], []


class VideoWriter:
    """Annotated frames to a video file, in the codec its suffix takes (:data:`VIDEO_CODECS`)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._writer, self.written = path, fps, None, 0
        self._held: tuple[np.ndarray, int] | None = None  # the last frame and its slot, shown until the next one's

    def write(self, rgb: np.ndarray, at: float) -> None:
        """The frame seen ``at`` seconds, in the 1/fps slot of that time, the frame before held until then, so that
        the drawing plays at the pace the video was seen (a live source's dropped frames, a file's variable rate):
        a frame that comes later than the next slot is held longer, one in the slot of the frame before replaces
        it."""
        cv2 = require_cv2()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        slot = math.floor(at * self.fps + 1e-6)  # frame k of a file at fps, k / fps seconds, in slot k
        if self._held is None:
            self._held = (bgr, slot)  # the drawing starts with the first frame
        elif slot <= self._held[1]:
            self._held = (bgr, self._held[1])
        else:
            self._put(self._held[0], slot - self._held[1])
            self._held = (bgr, slot)

    def _put(self, bgr: np.ndarray, times: int) -> None:
        if self._writer is None:
            cv2, codec = require_cv2(), VIDEO_CODECS.get(self.path.suffix.lower(), "mp4v")
            # WebM's muxer takes no four-character codes, so OpenCV prints that it "is not supported" before it
            # writes VP8 all the same: a line on the C library's stderr that would read as an error.
            with _stderr_hidden() if codec == "VP80" else contextlib.nullcontext():
                self._writer = cv2.VideoWriter(
                    str(self.path), cv2.VideoWriter_fourcc(*codec), self.fps, (bgr.shape[1], bgr.shape[0])
                )
            if not self._writer.isOpened():
                raise FerkitError(f"cannot write video {self.path} ({codec}); use a .mp4 or .avi file name")
        for _ in range(times):
            self._writer.write(bgr)
        self.written += times

    def close(self) -> None:
        if self._held is not None:
            self._put(self._held[0], 1)
            self._held = None
        if self._writer is not None:
            self._writer.release()


@contextlib.contextmanager
def _stderr_hidden() -> Iterator[None]:
    """File descriptor 2 (what C libraries print to) sent to the null device while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
