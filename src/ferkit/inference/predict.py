"""Which faces show which expression: photos, folders, video and camera frames.

Each image goes through face detection (or is taken as one face crop with ``detect=False``), each
face is turned upright and framed as FER2013's faces are (:mod:`.align`), preprocessed exactly as the
checkpoint's test transform, and all faces are classified in batches by a PyTorch or onnxruntime
model (:mod:`.loading`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..atomic import output_names
from ..checkpoint import is_model_path
from ..config import MARGIN, PREDICT_BATCH_SIZE, Config
from ..data.images import IMAGE_SUFFIXES, ImageInput, is_animated, list_images, read_image
from ..data.loaders import check_batching
from ..data.preprocess import build_test_transform
from ..data.urls import as_local, is_url, url_name
from ..errors import FerkitError
from ..evaluation.predictions import predict_probs
from ..evaluation.prior import PHOTO_PRIOR
from ..runtime import resolve_device
from .align import face_crop
from .faces import Detection, Detector, build_detector, check_margin
from .loading import load_for_inference
from .results import (
    DRAWN_IMAGE_SUFFIXES,
    Face,
    Result,
    ResultStream,
    draw_faces,
    drawing_folder,
    drawing_target,
    drawn_suffix,
    mixed_drawing_folder,
    save_drawing,
)
from .tracking import SMOOTH_S, Summary, Tracker, check_smooth
from .video import (
    WRITABLE_VIDEO_SUFFIXES,
    Video,
    check_every,
    check_span,
    drawn_video_suffix,
    frame_count,
    is_animated_url,
    is_live,
    is_video,
    is_video_url,
    list_videos,
    source_name,
    video_writer,
)

log = logging.getLogger("ferkit")

DRAWN_AT_ONCE = 8  # photos read together when each is also drawn


class Predictor:
    """Per-face expression probabilities from a trained model.

    >>> predictor = Predictor.from_checkpoint("runs/quick/best.pth")
    >>> result = predictor.predict("photo.jpg")   # or a PIL image / numpy array
    >>> [(face.label, face.confidence) for face in result.faces]
    """

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        classes: Sequence[str],
        device: str = "auto",
        tta: str = "none",
        detector: Detector | None = None,
        margin: float = MARGIN,
        batch_size: int = PREDICT_BATCH_SIZE,
        precision: str = "fp32",
        source: Path | None = None,
        record: dict | None = None,
        prior: str = "model",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config, self.classes = config, tuple(classes)
        self.transform = build_test_transform(config)
        # fp32 by default: bf16 rounding moves probabilities users read (``precision="bf16"`` to trade that).
        self.precision = precision
        check_batching(batch_size)
        check_margin(margin)
        self.tta, self.margin, self.batch_size = tta, margin, batch_size
        self._detector = detector
        # Where the model came from and what training recorded with it, for whoever describes it (the server).
        self.source, self.record = source, record or {}
        self.prior = prior  # the class mix ``model``'s probabilities are read for (ferkit.evaluation.prior)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike | None = None, backend: str = "auto", prior: str = PHOTO_PRIOR, **kw
    ) -> Predictor:
        """A ``.pth`` from ``ferkit train``, ``.safetensors`` or ``.onnx`` from ``ferkit export``;
        ``None`` is the model bundled with ferkit.

        ``backend="onnxruntime"`` with PyTorch weights exports them in memory first. ``prior``: the class mix to
        read the photos for (:mod:`ferkit.evaluation.prior`); ``auto`` reads everyday photos' when it can.
        """
        loaded = load_for_inference(path, backend, kw.pop("device", "auto"), prior)
        return cls(
            loaded.model,
            loaded.config,
            loaded.classes,
            device=loaded.device,
            source=loaded.source,
            record=loaded.record,
            prior=loaded.prior,
            **kw,
        )

    @classmethod
    def default(cls, **kw) -> Predictor:
        """The FER2013 model that ships inside the package (MODEL_CARD.md); no download."""
        return cls.from_checkpoint(None, **kw)

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = build_detector()
        return self._detector

    def classify(self, crops: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Probabilities (N x classes) for face crops, preprocessed as the checkpoint's test transform."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([self.transform(c) for c in crops[start : start + self.batch_size]])
            out.append(predict_probs(self.model, batch.to(self.device), self.precision, self.tta).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def _faces(self, rgb: np.ndarray, detect: bool) -> tuple[list[Detection], list[np.ndarray]]:
        if not detect:
            return [Detection((0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])))], [rgb]
        found = self.detector.detect(rgb)
        return found, [face_crop(rgb, face, self.margin) for face in found]

    def _to_faces(self, found: list[Detection], probs: np.ndarray) -> list[Face]:
        return [
            Face(
                [round(v) for v in face.box],
                self.classes[int(p.argmax())],
                float(p.max()),
                {c: float(v) for c, v in zip(self.classes, p)},
                landmarks=None if face.landmarks is None else np.round(face.landmarks.astype(float), 1).tolist(),
                score=None if face.score is None else round(face.score, 4),
            )
            for face, p in zip(found, probs)
        ]

    def predict(self, image: ImageInput, detect: bool = True) -> Result:
        return self.predict_batch([image], detect)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], detect: bool = True, names: Sequence[str] | None = None
    ) -> list[Result]:
        """One result per image; the faces of all images are classified together in batches.

        Images that cannot be read get ``error`` set instead of stopping the others.
        """
        results, boxes_of, crops = [], [], []
        for i, image in enumerate(images):
            given = source_name(image) if isinstance(image, (str, os.PathLike)) else getattr(image, "name", None)
            name = names[i] if names else (given or f"image {i}")  # an open file by its name
            try:
                rgb = read_image(image)
            except FerkitError as e:
                results.append(Result(name, error=str(e)))
                boxes_of.append([])
                continue
            boxes, face_crops = self._faces(rgb, detect)
            results.append(Result(name, width=rgb.shape[1], height=rgb.shape[0]))
            boxes_of.append(boxes)
            crops.extend(face_crops)
        probs = self.classify(crops)
        start = 0
        for result, boxes in zip(results, boxes_of):
            result.faces = self._to_faces(boxes, probs[start : start + len(boxes)])
            start += len(boxes)
        return results

    def predict_frames(
        self,
        frames: Iterable[tuple[int, float, np.ndarray]],
        detect: bool = True,
        source: str = "",
        tracker: Tracker | None = None,
    ) -> Iterator[tuple[Result, np.ndarray]]:
        """Results for (index, time, RGB frame) tuples, yielded with their frame for annotation; with a
        ``tracker``, each face carries its track id and smoothed probabilities."""
        for index, time_s, rgb in frames:
            boxes, crops = self._faces(rgb, detect)
            faces = self._to_faces(boxes, self.classify(crops))
            if tracker is not None:
                tracker.update(time_s, faces)
            yield Result(source, rgb.shape[1], rgb.shape[0], faces, frame=index, time_s=round(time_s, 3)), rgb


# Paths of files and folders, and addresses: a photo's (http, https) or a video's or live stream's (rtsp, say).
Sources = str | os.PathLike | Sequence[str | os.PathLike]
Input = Path | str  # a path, or an address kept as given


def predict_source(
    predictor: Predictor,
    source: Sources | None = None,
    camera: int | None = None,
    *,
    detect: bool = True,
    every: int = 1,
    smooth: float = SMOOTH_S,
    annotate: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    on_frame: Callable[[Result], None] | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> list[Result]:
    """Results for image files and folders of images (one path or several), a video file, or camera number
    ``camera`` (until Ctrl-C).

    ``annotate`` draws the boxes and labels: to an image file for one image, else to a folder mirroring the
    inputs (photos as JPEG, other images as PNG), a video file for a video. Video only: faces are tracked,
    ``smooth`` is the half-life in seconds of each track's smoothed probabilities (0: off), ``every`` takes every
    N-th frame, ``plot`` draws each track's probabilities over time, ``on_frame`` is called with each frame's
    result as it comes, and a file is read from ``start`` until ``end`` seconds.
    """
    video_kw = {"plot": plot, "on_frame": on_frame, "start": start, "end": end}
    if camera is not None:
        return predict_video(predictor, camera, detect, every, smooth, annotate, **video_kw)
    if source is None:
        raise FerkitError("give an image, folder or video to predict on, or --camera N")
    images, videos = split_sources(source)
    if len(videos) > 1:
        # A list of every frame of several videos grows without bound; predict_videos streams them.
        raise FerkitError(f"{len(videos)} videos given: track them with predict_videos, which streams each frame")
    if images and videos and annotate:
        annotate = mixed_drawing_folder(annotate)
    files, read = stream_images(predictor, images, detect, annotate, videos=videos) if images else ([], iter(()))
    results = list(read)
    if videos:
        # Beside photos, drawn into one folder mirroring the inputs, as `ferkit predict` draws them.
        beside = {"root": mirrored_root(as_inputs(source)), "photos": files} if images and annotate else {}
        results += predict_video(predictor, videos[0], detect, every, smooth, annotate, **video_kw, **beside)
    return results


def as_inputs(source: Sources) -> list[Input]:
    """One input or several as a list of paths and addresses, each once (a shell glob and its folder may name a
    file twice)."""
    single = isinstance(source, (str, os.PathLike))
    inputs = _once([source] if single else source)
    if not inputs:
        raise FerkitError("give an image, folder or video to predict on, or --camera N")
    return inputs


def _once(inputs: Iterable[str | os.PathLike]) -> list[Input]:
    first: dict[Input, Input] = {}
    for given in inputs:
        item = given if is_url(given) else Path(as_local(given))
        first.setdefault(item if isinstance(item, str) else item.resolve(), item)
    return list(first.values())


def mirrored_root(inputs: Sequence[Input]) -> Path:
    """The folder whose layout drawings of ``inputs`` repeat: the input folder, or the deepest one holding all the
    local ones (addresses are drawn at its top, by their names)."""
    paths = [Path(p) for p in inputs if not is_url(p)] or [Path.cwd()]
    return Path(os.path.commonpath([os.path.abspath(p if p.is_dir() else p.parent) for p in paths]))


def mirrored_drawings(
    out: Path, root: Path, photos: Sequence[Input], videos: Sequence[str | int]
) -> tuple[list[Path], list[Path]]:
    """Where each of ``photos`` and of ``videos`` is drawn in a mirror of ``root`` under ``out``, all named together
    (:func:`output_names`): a still ``x.gif`` and an animated ``x.png`` are both drawn as PNG, and one must not
    replace the other."""
    sources = [*photos, *videos]
    suffixes = [drawn_suffix(_drawn_as(p)) for p in photos] + [drawn_video_suffix(v) for v in videos]
    names = [Path(url_name(s)) if is_url(s) else Path(os.path.abspath(s)).relative_to(root) for s in sources]
    targets = [out / name for name in output_names(names, suffixes)]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    return targets[: len(photos)], targets[len(photos) :]


def list_photos(folder: Path) -> list[Path]:
    """The images anywhere under ``folder``, sorted, but for animated ones: those are its videos."""
    return [p for p in list_images(folder) if not is_animated(p)]


def image_files(path: Input) -> list[Input]:
    """``path`` itself (or a photo's address), or the images in a folder (any depth)."""
    if isinstance(path, str):
        return [path]
    # A model where the photos go is the commonest slip after a photo where the model goes.
    if is_model_path(path):
        raise FerkitError(
            f"{path} is a model, not a photo; give it as --checkpoint {path} and the photos, folder or video to read"
        )
    if path.is_dir():
        files = list_photos(path)
        if not files and list_images(path):
            raise FerkitError(
                f"{path} holds only animated images, which are read as videos: give it to predict_source (or "
                "`ferkit predict`), which tracks the faces in them"
            )
        if not files:
            raise FerkitError(f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if not path.exists():
        raise FerkitError(f"{path} does not exist")
    return [path]


def predict_images(
    predictor: Predictor, source: Sources, detect: bool = True, annotate: str | os.PathLike | None = None
) -> list[Result]:
    """One result per image of ``source`` (image files, folders and photos' web addresses, one or several), read and
    classified a batch at a time; each image once, in the order given (a folder's sorted)."""
    return list(stream_images(predictor, source, detect, annotate)[1])


def stream_images(
    predictor: Predictor,
    source: Sources,
    detect: bool = True,
    annotate: str | os.PathLike | None = None,
    videos: Sequence[str] = (),
) -> tuple[list[Input], Iterator[Result]]:
    """The image files (and addresses) :func:`predict_images` reads, and their results as each batch is read (a
    progress bar can follow them, and an interruption keeps those read). The inputs are listed and the drawings'
    paths checked here, before any image is read. ``videos``: those read beside the photos and drawn into the same
    folder (:func:`predict_videos` with ``photos``), whose names the photos' drawings leave to them."""
    paths = as_inputs(source)
    files = _once(f for p in paths for f in image_files(p))
    targets = _image_drawings(annotate, paths, files, videos) if annotate else None
    return files, _read_images(predictor, files, detect, targets)


def _read_images(
    predictor: Predictor, files: list[Input], detect: bool, targets: list[Path] | None
) -> Iterator[Result]:
    # Drawing holds a chunk's decoded photos until their faces are read: 8 of a phone's 12-MP photos are 290 MB, a
    # batch of 64 would be 2.3 GB.
    step = min(predictor.batch_size, DRAWN_AT_ONCE) if targets else predictor.batch_size
    for start in range(0, len(files), step):
        chunk, names = files[start : start + step], [source_name(f) for f in files[start : start + step]]
        if not targets:
            yield from predictor.predict_batch(chunk, detect, names=names)
            continue
        # Decoded once, for prediction and drawing alike; one that cannot be read is reported as it is, not read
        # (or fetched) again.
        decoded = [_decoded(f) for f in chunk]
        readable = [i for i, image in enumerate(decoded) if not isinstance(image, str)]
        read = iter(predictor.predict_batch([decoded[i] for i in readable], detect, names=[names[i] for i in readable]))
        for name, image, target in zip(names, decoded, targets[start:]):
            if isinstance(image, str):
                yield Result(name, error=image)
                continue
            result = next(read)
            if not result.error:
                save_drawing(draw_faces(image, result.faces), target)
            yield result


def _image_drawings(
    annotate: str | os.PathLike, paths: list[Input], files: list[Input], videos: Sequence[str]
) -> list[Path]:
    """Where each of ``files`` is drawn: ``annotate`` itself for one image file read alone, else a mirror of the
    inputs (``videos`` among them)."""
    if len(paths) == 1 and not videos and not Path(paths[0]).is_dir():
        name = _drawn_as(paths[0])
        kind = drawn_suffix(name)  # what a folder given as OUT gets; a file's name says its own
        return [drawing_target(annotate, name, (kind, *(x for x in DRAWN_IMAGE_SUFFIXES if x != kind)))]
    root = mirrored_root([*paths, *videos])
    return mirrored_drawings(drawing_folder(annotate, root), root, files, videos)[0]


def _drawn_as(source: Input) -> Input:
    """The name a drawing of ``source`` is given: an address's file name (a query or a port would make a poor one)."""
    return url_name(source) if is_url(source) else source


def _decoded(path: Input) -> np.ndarray | str:
    """The image's pixels, or why it cannot be read."""
    try:
        return read_image(path)
    except FerkitError as e:
        return str(e)


def stream_video(
    predictor: Predictor,
    source: str | int,
    detect: bool = True,
    every: int = 1,
    smooth: float = SMOOTH_S,
    annotate: str | os.PathLike | None = None,
    *,
    start: float = 0.0,
    end: float | None = None,
) -> Iterator[Result]:
    """Tracked results for every ``every``-th frame of a video file (from ``start`` until ``end`` seconds), a
    stream's address or a camera (by number), one at a time.

    Frames in between are not read as results: the tracks age by their time, so ``every`` changes neither how
    long a missed person is kept nor the smoothing's half-life.
    """
    with Video(source, start, end) as video:
        yield from _tracked(predictor, video, detect, every, smooth, annotate)


def _tracked(
    predictor: Predictor, video: Video, detect: bool, every: int, smooth: float, annotate: str | os.PathLike | None
) -> Iterator[Result]:
    # Each drawn frame is held until the next one's time: the drawing keeps the pace of a file of variable rate
    # and of a live source, whose frames that came while one was read are dropped.
    writer = video_writer(Path(annotate), video, every) if annotate else None
    tracker = Tracker(smooth_s=smooth)
    try:
        for result, rgb in predictor.predict_frames(video.frames(every), detect, video.name, tracker):
            if writer:
                writer.write(draw_faces(rgb, result.faces), at=result.time_s)
            yield result
    finally:
        if writer:
            writer.close()


def predict_video(
    predictor: Predictor,
    source: str | int,
    detect: bool = True,
    every: int = 1,
    smooth: float = SMOOTH_S,
    annotate: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    on_frame: Callable[[Result], None] | None = None,
    *,
    start: float = 0.0,
    end: float | None = None,
    root: str | os.PathLike | None = None,
    photos: Sequence[Input] = (),
) -> list[Result]:
    """All tracked results of a video file (from ``start`` until ``end`` seconds) or a camera as a list; Ctrl-C
    ends a camera's stream. ``root`` and ``photos``: as for :func:`predict_videos`.

    A long video is better streamed (:func:`stream_video`, or :func:`predict_videos` as ``ferkit predict`` does).
    """
    results = []

    def keep(result: Result) -> None:
        results.append(result)
        if on_frame:
            on_frame(result)

    predict_videos(
        predictor,
        [source],
        detect=detect,
        every=every,
        smooth=smooth,
        annotate=annotate,
        plot=plot,
        on_frame=keep,
        start=start,
        end=end,
        root=root,
        photos=photos,
    )
    if not results:
        raise FerkitError(f"no frames could be read from {source_name(source)}")
    return results


def split_sources(source: Sources) -> tuple[list[Input], list[str]]:
    """The inputs of ``source`` (one or several) to read as images, and the videos to track: a video file, an
    animated image (a reaction GIF) and a video's or stream's address are videos, a folder gives its videos (each
    once) and is read for its still images too where it holds any; a PNG's or WebP's address is asked for its first
    bytes, which say whether it is animated; anything else is read as an image (so a missing path or an empty folder is
    reported as one, and an address is fetched as a photo)."""
    images, videos = [], []
    for path in as_inputs(source):
        if isinstance(path, str):
            (videos if is_video_url(path) or is_animated_url(path) else images).append(path)
            continue
        if path.is_file() and is_video(path):
            videos.append(str(path))
            continue
        found = list_videos(path) if path.is_dir() else []
        videos.extend(str(v) for v in found)
        if not found or list_photos(path):
            images.append(path)
    return images, list(dict.fromkeys(videos))


def video_drawings(
    annotate: str | os.PathLike, sources: Sequence[str | int], root: str | os.PathLike | None = None
) -> tuple[Path, Path | None]:
    """Where ``annotate`` draws ``sources``, checked before anything is written: a video file for one source given
    without ``root`` (root None), else a folder and the folder it mirrors (``root``, by default the deepest folder
    holding the sources)."""
    if len(sources) == 1 and root is None:
        first = _drawn_as(sources[0]) if isinstance(sources[0], str) else f"camera{sources[0]}"
        kind = drawn_video_suffix(sources[0])  # what a folder given as OUT gets; a file's name says its own
        return drawing_target(annotate, first, (kind, *(x for x in WRITABLE_VIDEO_SUFFIXES if x != kind))), None
    root = Path(os.path.abspath(root)) if root else mirrored_root([s for s in sources if isinstance(s, str)])
    return drawing_folder(annotate, root), root


def predict_videos(
    predictor: Predictor,
    sources: Sequence[str | int],
    *,
    detect: bool = True,
    every: int = 1,
    smooth: float = SMOOTH_S,
    annotate: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    json_to: str | None = None,
    csv_to: str | None = None,
    on_frame: Callable[[Result], None] | None = None,
    root: str | os.PathLike | None = None,
    out: ResultStream | None = None,
    start: float = 0.0,
    end: float | None = None,
    photos: Sequence[Input] = (),
) -> tuple[Summary, bool]:
    """Videos (or a camera) streamed frame by frame into ``json_to`` / ``csv_to`` and a per-track summary, with a
    progress bar over all the files' frames; memory does not grow with the length of a video.

    Returns the summary and whether Ctrl-C ended it early; what was done so far is written either way. A video
    that cannot be opened is a warning, a result with its error and a line of the summary (``summary.not_read``);
    the others are read.
    ``out``: a tracked stream the caller opened (holding photos' results before the frames, say) and closes, in
    place of ``json_to`` / ``csv_to``.
    ``annotate``: a video file for one source given without ``root``, else a folder mirroring ``root`` (an .mp4 per
    video; default: the deepest folder holding them all). ``photos``: those drawn into the same folder
    (:func:`stream_images` with ``videos``), whose names the videos' drawings leave to them. ``start`` / ``end``:
    each file from and until these seconds.
    """
    check_span(start, end)  # before any output is opened
    check_every(every)
    check_smooth(smooth)
    from tqdm import tqdm

    if annotate:  # before the outputs are opened, so a bad path leaves them as they were
        annotate, root = video_drawings(annotate, sources, root)
    reading = {"prior": predictor.prior, "tta": predictor.tta}
    summary = Summary(predictor.classes, smooth, timelines=bool(plot), **reading)
    own = out is None
    out = ResultStream(predictor.classes, json_to, csv_to, tracked=True, **reading) if own else out
    files = [s for s in sources if not is_live(s)]  # a camera's or stream's frames have no end to count towards
    bar = tqdm(
        total=sum(frame_count(f, start, end) for f in files) or None, unit="frame", disable=None if files else True
    )
    interrupted = False
    targets = [annotate] * len(sources)
    if annotate and root is not None:  # a folder mirroring root
        targets = mirrored_drawings(annotate, root, photos, sources)[1]
    try:
        for i, (source, target) in enumerate(zip(sources, targets)):
            try:
                video = Video(source, start, end)
            except FerkitError as e:  # one video that cannot be read stops none of the others
                if i < len(sources) - 1:  # said now, not only in the summary at the end
                    log.warning("%s", e)
                summary.fail(source_name(source), str(e))
                out.write(Result(source_name(source), error=str(e)))
                continue
            with video, closing(_tracked(predictor, video, detect, every, smooth, target)) as stream:
                summary.start(video.name, None if video.live else every / video.fps)
                if is_url(source) and video.span_frames:  # an address's length is known once it is open
                    bar.total = (bar.total or 0) + video.span_frames
                    bar.refresh()
                for result in stream:
                    out.write(result)
                    summary.add(result)
                    bar.update(every)
                    if on_frame:
                        on_frame(result)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if own:
            out.close()
        if plot:
            from ..plots import plot_timeline  # matplotlib's import is half a second that a run without --plot skips

            plot_timeline(summary.tracks(), predictor.classes, Path(plot))
    return summary, interrupted
