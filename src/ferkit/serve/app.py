"""``ferkit serve``: an HTTP API and a web page for expression recognition.

``POST /predict`` takes a multipart image upload and answers the JSON of ``ferkit predict --json``; ``POST /video``
tracks the people in an uploaded video; ``POST /preview`` gives an upload back as a JPEG, for the page to show
formats its browser cannot (HEIC, TIFF);
``GET /health`` and ``GET /model`` describe the server and the model; ``GET /`` is a page that
uploads photos or webcam snapshots and draws the results. Uploads are bounded in bytes and pixels
before they are decoded, decoding runs in worker threads, and the images of concurrent requests
are classified together (micro-batching) in one inference thread, so the event loop never waits
on the model.

    app = create_app(Predictor.from_checkpoint("runs/quick/best.pth"))   # any ASGI server
"""

import asyncio
import base64
import io
import json
import math
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..data.images import (
    ANIMATED_SUFFIXES,
    FORMATS,
    TooManyPixels,
    UndecodableImage,
    is_animated,
    is_image_file,
    open_image,
    to_rgb,
)
from ..errors import FerkitError
from ..evaluation.prior import PHOTO_PRIOR
from ..inference.faces import Detector
from ..inference.modelinfo import describe_model
from ..inference.predict import Predictor
from ..inference.results import Face, Result, results_json
from ..inference.tracking import SMOOTH_S, Summary, Tracker
from ..inference.video import VIDEO_SUFFIXES, Video
from .limits import (
    HOST,
    MAX_BATCH,
    MAX_PIXELS,
    MAX_QUEUE,
    MAX_SESSIONS,
    MAX_UPLOAD_MB,
    MAX_VIDEO_FRAMES,
    MAX_VIDEO_MB,
    PORT,
    SESSION_IDLE_S,
)

STATIC = Path(__file__).parent / "static"
MB = 1024 * 1024
# A frame sent back with /video?frames=true: enough for a phone's view of a reaction GIF, 20-40 kB as a JPEG.
FRAME_SIDE = 480
HOW_TO_SEND = "send the image as multipart/form-data field 'file' (curl -F file=@photo.jpg URL/predict)"


class Predictions(BaseModel):
    """The JSON of ``ferkit predict --json`` for the one uploaded image."""

    classes: list[str]
    prior: str = Field(description="the class mix the probabilities were read for (ferkit.evaluation.prior)")
    tta: str = Field(description="the test-time augmentation each face was read with: none, flip or scales")
    results: list[Result]


class VideoPredictions(BaseModel):
    """The JSON of ``ferkit predict VIDEO --json`` for the uploaded video, with the per-person rows of its
    ``--summary`` and how the video was read."""

    classes: list[str]
    prior: str = Field(description="the class mix the probabilities were read for (ferkit.evaluation.prior)")
    tta: str = Field(description="the test-time augmentation each face was read with: none, flip or scales")
    fps: float = Field(description="the video's frame rate (25 where the file does not say)")
    every: int = Field(description="every Nth frame was read")
    start: float = Field(description="read from this time, in seconds")
    end: float | None = Field(description="read until this time, in seconds (null: until the video ends)")
    smooth_s: float = Field(description="half-life of each track's smoothed probabilities, which give its label")
    truncated: bool = Field(description="true: the server's --max-video-frames were read before the video ended")
    tracks: list[dict[str, Any]] = Field(
        description="one row per person tracked, as `ferkit predict VIDEO --summary` writes them: first and last "
        "time, seconds in view, the share of time per expression, the dominant one, label changes and segments"
    )
    results: list[Result] = Field(
        description="one per frame read, in order; faces carry track and smoothed; with ?frames=true each also has "
        f"`image`, the frame as a JPEG data URL at most {FRAME_SIDE} pixels a side (boxes stay in the frame's own "
        "pixels)"
    )


class Health(BaseModel):
    status: Literal["ok"]
    in_progress: int = Field(description="prediction requests being decoded, queued or classified")
    max_upload_bytes: int = Field(description="largest request body, except at /video")
    max_video_bytes: int = Field(description="largest request body at /video")
    max_pixels: int
    max_batch: int = Field(description="most images classified in one batch")
    max_queue: int = Field(description="requests in progress beyond which /predict and /video answer 503")
    max_video_frames: int = Field(description="most frames /video reads; a longer video is read every Nth frame")


class Preprocess(BaseModel):
    image_size: int
    mean: list[float]
    std: list[float]


class Member(BaseModel):
    source: str = Field(description="the file the network came from (a run's best.pth is named with its run folder)")
    arch: str
    width: int
    epoch: int | None = Field(description="the epoch it was saved after, when recorded")
    metrics: dict[str, Any] | None = Field(description="its selection-split metrics, recorded when it was chosen")
    select_split: str | None = Field(description="the split those metrics were measured on")
    pflop: float | None = Field(description="the training compute behind its weights, when recorded")
    init_from: str | None = Field(description="the model file its training started from, when it was fine-tuned")
    weight: float | None = Field(description="its share of a weighted average (the shares sum to 1); null: all alike")


class ModelInfo(BaseModel):
    checkpoint: str | None = Field(description="the file's name")
    classes: list[str]
    arch: str
    config: dict[str, Any] = Field(description="the training configuration (ferkit.Config)")
    preprocess: Preprocess
    epoch: int | None = Field(description="the epoch the checkpoint was saved after, when recorded")
    metrics: dict[str, Any] | None = Field(description="selection-split metrics recorded with the checkpoint")
    select_split: str | None = Field(description="the split those metrics were measured on")
    pflop: float | None = Field(
        description="the training compute behind the weights (PFLOP; an ensemble's, its members' summed), when recorded"
    )
    init_from: str | None = Field(description="the model file its training started from, when it was fine-tuned")
    members: list[Member] = Field(description="an ensemble's networks, what training recorded of each; empty for one")
    temperature: float = Field(description="what the logits are divided by (fitted by ferkit calibrate; 1: none)")
    prior: str = Field(description="the class mix the probabilities are read for (ferkit.evaluation.prior)")
    tta: str = Field(description="the test-time augmentation each face is read with: none, flip or scales")


class Error(BaseModel):
    detail: str = Field(description="what was wrong, in one line")


class _BodyLimit:
    """Answers 413 to request bodies over ``limit`` bytes (``video_limit`` at /video) before they are parsed or
    spooled to disk.

    The declared Content-Length is checked first; a chunked body, which declares none, is counted
    as it arrives. Once the 413 is sent, the app is told the client left and its reply is dropped.
    """

    def __init__(self, app: ASGIApp, limit: int, video_limit: int) -> None:
        self.app, self.limit, self.video_limit = app, limit, video_limit

    async def _refuse(self, scope: Scope, send: Send, limit: int, flag: str) -> None:
        message = f"upload is larger than the {limit / MB:.3g} MB limit; send a smaller file (or start the server "
        message += f"with a larger {flag})"
        response = JSONResponse({"detail": message}, status_code=413, headers={"Connection": "close"})
        await response(scope, _client_gone, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        video = scope["path"].rstrip("/").endswith("/video")
        limit, flag = (self.video_limit, "--max-video-mb") if video else (self.limit, "--max-upload-mb")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, send, limit, flag)
        received, refused = 0, False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                refused = True
                await self._refuse(scope, send, limit, flag)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _client_gone() -> Message:
    return {"type": "http.disconnect"}


def _too_many_pixels(name: str, max_pixels: int, size: tuple[int, int] | None, used: int) -> HTTPException:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too large to decode"
    before = f", and the images before it in this request take {used:,}" if used else ""
    return HTTPException(
        413,
        f"{name!r} is {what}; the limit is {max_pixels:,} pixels{before}: send a smaller image "
        "(or start the server with a larger --max-pixels)",
    )


def decode_image(data: bytes, name: str, max_pixels: int, used: int = 0) -> np.ndarray:
    """RGB pixels of an upload, upright as browsers show it; a 4xx for anything that is not a usable image.

    ``max_pixels`` bounds a whole request, ``used`` of them taken by its images before this one: several images in
    one request decode to no more memory than one image may.
    """
    if not data:
        raise HTTPException(400, f"the uploaded file {name!r} is empty; choose an image file")
    try:
        # The header gives the size, so an oversized image is refused before its pixels are decoded.
        image = open_image(io.BytesIO(data), max_pixels=max_pixels - used)
    except TooManyPixels as e:
        raise _too_many_pixels(name, max_pixels, e.size, used) from None
    except UndecodableImage as e:
        if Path(name).suffix.lower() in VIDEO_SUFFIXES:  # by name alone: the name is the client's, not a file here
            raise HTTPException(
                415,
                f"{name!r} is a video; send it to /video, which tracks the people in it (or read it with "
                f"`ferkit predict {name}`)",
            ) from None
        raise HTTPException(415, f"cannot decode {name!r} as an image ({e.reason}); send a {FORMATS} file") from None
    return np.asarray(to_rgb(image))  # upright: the page draws photos rotated by their EXIF, so boxes match


def decode_photo(data: bytes, name: str, max_pixels: int, used: int = 0) -> np.ndarray:
    """:func:`decode_image` for ``/predict``: an animated GIF, WebP or PNG is refused, naming ``/video``, rather than
    read as its first frame with the rest of its frames dropped unsaid (``ferkit predict`` tracks it as a video)."""
    if is_animated(io.BytesIO(data)):
        raise HTTPException(
            415,
            f"{name!r} is an animated image; send it to /video, which tracks the people in it frame by frame (or read "
            f"it with `ferkit predict {name}`)",
        )
    return decode_image(data, name, max_pixels, used)


def preview_jpeg(data: bytes, name: str, max_pixels: int, side: int) -> bytes:
    """An upload as a JPEG at most ``side`` pixels a side, upright, for a browser that cannot show its format; the
    same refusals as :func:`decode_image`."""
    return jpeg(decode_image(data, name, max_pixels), side)


def jpeg(rgb: np.ndarray, side: int) -> bytes:
    """RGB pixels as a JPEG at most ``side`` pixels a side (never enlarged)."""
    image = Image.fromarray(rgb)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def frame_image(rgb: np.ndarray) -> str:
    """A video frame as a JPEG data URL, for a client that cannot decode the file's frames itself."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg(rgb, FRAME_SIDE)).decode()


class MicroBatcher:
    """Classifies the images of requests that arrive while a batch runs together, one batch at a time.

    One inference thread: torch and OpenCV already spread one batch over every core, so parallel
    batches would only slow each other, while one forward pass over many faces is cheaper than one
    pass per face (with 8 clients on the 2-core CPU: 15-25% more requests/s, BENCHMARKS.md).
    """

    def __init__(self, predictor: Predictor, max_batch: int) -> None:
        self.predictor, self.max_batch = predictor, max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def predict(self, rgb: np.ndarray, detect: bool):
        if self._task is None:
            raise RuntimeError(
                "the app's lifespan did not run; serve it with uvicorn (or use TestClient as a context manager)"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rgb, detect, future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for detect in (True, False):
                # A cancelled request (server shutdown, a timeout) has a done future: skip its work.
                group = [item for item in batch if item[1] is detect and not item[2].done()]
                if group:
                    await self._run(group, detect)

    async def _run(self, group: list, detect: bool) -> None:
        try:
            results = await asyncio.to_thread(self.predictor.predict_batch, [rgb for rgb, _, _ in group], detect)
        except Exception as e:
            for _, _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, _, future), result in zip(group, results):
            if not future.done():
                future.set_result(result)


class Sessions:
    """A face tracker per live session (the page: one per browser tab), so tabs do not share tracks.

    A session is dropped after ``idle_s`` without a frame, and the least recently used beyond ``limit``, so
    tabs closed without a word cost nothing for long. Times are the server's clock at each frame's arrival.
    """

    def __init__(
        self, idle_s: float = SESSION_IDLE_S, limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_s, self.limit, self.clock = idle_s, limit, clock
        self._trackers: OrderedDict[str, tuple[Tracker, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._trackers)

    def track(self, session: str, faces: list[Face]) -> None:
        now = self.clock()
        while self._trackers and now - next(iter(self._trackers.values()))[1] > self.idle_s:
            self._trackers.popitem(last=False)
        tracker = self._trackers.pop(session, (Tracker(), now))[0]
        tracker.update(now, faces)
        self._trackers[session] = (tracker, now)
        while len(self._trackers) > self.limit:
            self._trackers.popitem(last=False)


def _is_empty(request: Request) -> bool:
    return request.headers.get("content-length") == "0" or (
        "content-length" not in request.headers and "transfer-encoding" not in request.headers
    )


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors, as one line that says what to send instead."""
    content_type = request.headers.get("content-type", "")
    about_file = any(tuple(e["loc"][:2]) == ("body", "file") for e in exc.errors())
    if about_file and _is_empty(request):
        status, detail = 400, f"empty request body; {HOW_TO_SEND}"
    elif about_file and not content_type.startswith("multipart/form-data"):
        got = content_type or "none"
        status, detail = 415, f"expected multipart/form-data, got Content-Type {got!r}; {HOW_TO_SEND}"
    elif about_file:
        status, detail = 422, f"no uploaded file in form field 'file'; {HOW_TO_SEND}"
    else:
        status, detail = 422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": detail}, status_code=status)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}: {first}); see the server log"}, status_code=500
    )


# What an upload endpoint (/predict, /preview, /video) may answer instead of its result.
UPLOAD_REFUSALS = (400, 413, 415, 422, 503, 500)


def _errors(*codes: int) -> dict:
    why = {
        400: "empty body or empty file",
        413: "upload or image too large",
        415: "not a decodable image (for /video: not a decodable video)",
        422: "no file in form field 'file', or a bad query parameter",
        503: "too many requests in progress",
        500: "unexpected server error",
    }
    return {code: {"model": Error, "description": why[code]} for code in codes}


def _warm_up(predictor: Predictor) -> None:
    """The first calls pay for lazy set-up (the face cascade, torch's kernels): pay it before serving."""
    blank = np.zeros((64, 64, 3), np.uint8)
    predictor.predict(blank)  # finds no face, so the model itself has not run yet
    predictor.predict(blank, detect=False)


def _undecodable_video(name: str) -> HTTPException:
    return HTTPException(
        415, f"cannot decode {name!r} as a video; send a video file OpenCV reads (MP4, WebM, MOV, AVI)"
    )


def create_app(
    predictor: Predictor,
    model_info: dict | None = None,
    *,
    max_upload_bytes: int = MAX_UPLOAD_MB * MB,
    max_video_bytes: int = MAX_VIDEO_MB * MB,
    max_pixels: int = MAX_PIXELS,
    max_batch: int = MAX_BATCH,
    max_queue: int = MAX_QUEUE,
    max_video_frames: int = MAX_VIDEO_FRAMES,
    sessions: Sessions | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The ASGI app; ``model_info`` (what /model answers) defaults to ``describe_model(predictor)``, ``sessions``
    (the live page's trackers) to :class:`Sessions` with its defaults; ``cors_origins``: the web pages (scheme, host
    and port, or ``*``) whose scripts may call the API from another origin."""
    info = ModelInfo(**(model_info or describe_model(predictor)))
    batcher = MicroBatcher(predictor, max_batch)
    sessions = Sessions() if sessions is None else sessions
    in_progress = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(_warm_up, predictor)
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="ferkit",
        version=__version__,
        lifespan=lifespan,
        description="Facial expression recognition: upload a photo, get every face's box and "
        f"the probabilities of {', '.join(predictor.classes)}.",
    )

    @contextmanager
    def counted():
        """A request in progress; beyond ``max_queue`` of them, a 503 that says when to come back."""
        nonlocal in_progress
        if in_progress >= max_queue:
            raise HTTPException(
                503, f"server busy: {in_progress} requests in progress; retry shortly", headers={"Retry-After": "1"}
            )
        in_progress += 1
        try:
            yield
        finally:
            in_progress -= 1

    app.add_middleware(_BodyLimit, limit=max_upload_bytes, video_limit=max_video_bytes)
    if cors_origins:  # outermost, so that a refusal (413, 503) reaches the calling page readable too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)

    @app.post(
        "/predict",
        response_model=Predictions,
        responses=_errors(*UPLOAD_REFUSALS),
        operation_id="predict",
        summary="Expressions of the faces in uploaded images",
    )
    async def predict(
        file: Annotated[
            list[UploadFile],
            File(
                description=f"the image ({FORMATS}; an animated GIF, WebP or PNG goes to /video); repeat the field "
                "for several, one result each, in order"
            ),
        ],
        detect: Annotated[bool, Query(description="false: the image is already one face crop")] = True,
        session: Annotated[
            str | None,
            Query(
                description="a live session's id (the page: one per tab): its faces get track ids and smoothed "
                f"labels across requests; forgotten after {SESSION_IDLE_S:.0f} s without a frame",
                max_length=64,
                pattern=r"^[A-Za-z0-9_-]+$",
            ),
        ] = None,
    ):
        if session and len(file) > 1:
            raise HTTPException(400, f"a session tracks one frame a request, not {len(file)}; send them one by one")
        with counted():
            names = [f.filename or "upload" for f in file]
            # Every image is checked before any is classified: a bad one refuses the request, naming it.
            images, used = [], 0
            for f, name in zip(file, names):
                images.append(await run_in_threadpool(decode_photo, await f.read(), name, max_pixels, used))
                used += images[-1].shape[0] * images[-1].shape[1]
            # Queued together, so they share a batch with each other and with other requests' images.
            results = await asyncio.gather(*(batcher.predict(rgb, detect) for rgb in images))
        for result, name in zip(results, names):
            result.source = name
        if session:
            sessions.track(session, results[0].faces)
        # The very JSON of `ferkit predict --json`; the response model documents it.
        document = results_json(results, predictor.classes, predictor.prior, predictor.tta)
        return Response(document, media_type="application/json")

    @app.post(
        "/preview",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "the image as a JPEG"}}
        | _errors(*UPLOAD_REFUSALS),
        operation_id="preview",
        summary="An uploaded image as a JPEG, for browsers that cannot show its format (HEIC, TIFF)",
    )
    async def preview(
        file: Annotated[UploadFile, File(description=f"the image ({FORMATS})")],
        side: Annotated[int, Query(ge=16, le=4096, description="the JPEG's longer side at most, in pixels")] = 1600,
    ):
        with counted():
            name = file.filename or "upload"
            jpeg = await run_in_threadpool(preview_jpeg, await file.read(), name, max_pixels, side)
        return Response(jpeg, media_type="image/jpeg")

    @app.post(
        "/video",
        response_model=VideoPredictions,
        responses=_errors(*UPLOAD_REFUSALS),
        operation_id="video",
        summary="Expressions of the people in an uploaded video, tracked over its frames",
    )
    async def video(
        request: Request,
        file: Annotated[
            UploadFile,
            File(description="the video (MP4, WebM, MOV, AVI: what OpenCV reads) or an animated GIF, WebP or PNG"),
        ],
        every: Annotated[
            int | None,
            Query(
                ge=1,
                description=f"read every Nth frame; default: 1, or enough that at most {max_video_frames} frames "
                "are read from start until end",
            ),
        ] = None,
        start: Annotated[float, Query(ge=0, description="read from this time, in seconds")] = 0.0,
        end: Annotated[
            float | None, Query(gt=0, description="read until this time, in seconds; default: the video's end")
        ] = None,
        smooth: Annotated[
            float, Query(ge=0, description="half-life in seconds of the smoothed labels; 0: off")
        ] = SMOOTH_S,
        frames: Annotated[
            bool,
            Query(
                description="true: each result also carries its frame as a JPEG, for a client that cannot decode "
                "the file's frames itself (the page in Safari, which has no ImageDecoder, plays an animated GIF so)"
            ),
        ] = False,
    ):
        name = file.filename or "upload"
        # A GIF, WebP or PNG may be animated: its frames tell, once it is here.
        if is_image_file(Path(name)) and Path(name).suffix.lower() not in ANIMATED_SUFFIXES:
            raise HTTPException(415, f"{name!r} is a photo; send it to /predict (this endpoint reads videos)")
        if end is not None and end <= start:
            raise HTTPException(422, f"end {end:g} is not after start {start:g}; give a later end")
        # OpenCV reads videos from files: the upload lives in a temporary one while it is read, copied a megabyte at
        # a time (a phone's clip is not held in memory).
        with counted(), tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".mp4") as copy:
            await run_in_threadpool(shutil.copyfileobj, file.file, copy, MB)
            if not copy.tell():
                raise HTTPException(400, f"the uploaded file {name!r} is empty; choose a video file")
            copy.flush()
            if is_image_file(Path(name)) and not is_animated(copy.name):
                raise HTTPException(415, f"{name!r} is a still image; send it to /predict (this endpoint reads videos)")
            document = await _read_video(copy.name, name, every, smooth, (start, end), request.is_disconnected, frames)
        return Response(json.dumps(document), media_type="application/json")

    async def _read_video(
        path: str,
        name: str,
        every: int | None,
        smooth: float,
        span: tuple[float, float | None],
        gone: Callable[[], Any],
        with_frames: bool,
    ) -> dict:
        """Frames through the batcher, as photo requests go, so a video and photos share the one inference thread
        and the video waits its turn frame by frame; tracked and summarised as `ferkit predict VIDEO` does."""
        try:
            video = await run_in_threadpool(Video, path, *span)
        except FerkitError:
            raise _undecodable_video(name) from None
        fps = video.fps
        every = every or max(1, math.ceil(video.span_frames / max_video_frames))
        tracker = Tracker(smooth_s=smooth)
        summary = Summary(predictor.classes, smooth, prior=predictor.prior, tta=predictor.tta)
        summary.start(name, every / fps)
        frames, results, images = video.frames(every), [], []
        try:
            while len(results) < max_video_frames:
                item = await run_in_threadpool(next, frames, None)
                if item is None or await gone():  # nobody waits for the rest: the server's time goes to others
                    break
                index, time_s, rgb = item
                height, width = rgb.shape[:2]
                if width * height > max_pixels:
                    raise HTTPException(
                        413,
                        f"{name!r} has {width}x{height} frames = {width * height:,} pixels; the limit is "
                        f"{max_pixels:,} pixels: send a smaller video (or start the server with a larger --max-pixels)",
                    )
                result = await batcher.predict(rgb, True)
                if with_frames:
                    images.append(await run_in_threadpool(frame_image, rgb))
                tracker.update(time_s, result.faces)
                result.source, result.frame, result.time_s = name, index, round(time_s, 3)
                summary.add(result)
                results.append(result)
            truncated = len(results) == max_video_frames and await run_in_threadpool(next, frames, None) is not None
        except FerkitError:
            results = []
        finally:
            frames.close()
            video.close()
        if not results:
            raise _undecodable_video(name)
        return {
            "classes": list(predictor.classes),
            "prior": predictor.prior,
            "tta": predictor.tta,
            "fps": fps,
            "every": every,
            "start": span[0],
            "end": span[1],
            "smooth_s": smooth,
            "truncated": truncated,
            "tracks": summary.rows(),
            "results": [r.to_dict() | ({"image": images[i]} if images else {}) for i, r in enumerate(results)],
        }

    @app.get("/health", response_model=Health, operation_id="health", summary="Liveness and the server's limits")
    async def health():
        return Health(
            status="ok",
            in_progress=in_progress,
            max_upload_bytes=max_upload_bytes,
            max_video_bytes=max_video_bytes,
            max_pixels=max_pixels,
            max_batch=max_batch,
            max_queue=max_queue,
            max_video_frames=max_video_frames,
        )

    @app.get(
        "/model",
        response_model=ModelInfo,
        operation_id="model",
        summary="Classes, architecture, training config and metrics",
    )
    async def model():
        return info

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def check_port(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on before the model loads: uvicorn would say so only after its
    startup, in a log line among others, and exit 3."""
    if not 0 < port < 65536:
        raise FerkitError(f"--port must be 1-65535 (got {port}); 8000 is the default")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: a port left in TIME_WAIT by an earlier server is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise FerkitError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); "
            "pass another --port or --host, or stop what uses the port"
        ) from None


def network_address() -> str | None:
    """This machine's IPv4 address on its network, where a phone finds the page; None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a documentation address: no packet is sent, the route picks the interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def check_certificate(certfile: str | os.PathLike | None, keyfile: str | os.PathLike | None) -> None:
    """Refuse a certificate and key that TLS cannot use, before the model loads (uvicorn would stop with a
    traceback)."""
    if certfile is None:
        if keyfile is not None:
            raise FerkitError("--keyfile is the key of a --certfile: give the certificate too, or neither for http://")
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except OSError as e:  # ssl.SSLError among them, whose own words name a line of OpenSSL's source
        given = f"--certfile {certfile}" + (f" and --keyfile {keyfile}" if keyfile else "")
        why = "not a PEM certificate with its own private key" if isinstance(e, ssl.SSLError) else e.strerror or e
        raise FerkitError(
            f"cannot serve https:// with {given} ({why}); give a PEM certificate and its key (README: Serving)"
        ) from None


def run(
    checkpoint: str | os.PathLike | None = None,
    host: str = HOST,
    port: int = PORT,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_video_mb: float = MAX_VIDEO_MB,
    max_pixels: int = MAX_PIXELS,
    max_batch: int = MAX_BATCH,
    max_queue: int = MAX_QUEUE,
    max_video_frames: int = MAX_VIDEO_FRAMES,
    backend: str = "auto",
    device: str = "auto",
    detector: Detector | None = None,
    prior: str = PHOTO_PRIOR,
    tta: str = "none",
    cors_origins: Sequence[str] = (),
    certfile: str | os.PathLike | None = None,
    keyfile: str | os.PathLike | None = None,
) -> None:
    """Load the checkpoint (default: the model bundled with ferkit) and serve it with uvicorn until Ctrl-C; over
    HTTPS with ``certfile`` (PEM; ``keyfile`` its key, where the certificate's file does not hold it)."""
    for flag, value in (
        ("--max-upload-mb", max_upload_mb),
        ("--max-video-mb", max_video_mb),
        ("--max-pixels", max_pixels),
        ("--max-batch", max_batch),
        ("--max-queue", max_queue),
        ("--max-video-frames", max_video_frames),
    ):
        if value <= 0:
            raise FerkitError(f"{flag} must be positive, got {value}")
    check_port(host, port)
    check_certificate(certfile, keyfile)
    predictor = Predictor.from_checkpoint(
        checkpoint, backend=backend, device=device, detector=detector, prior=prior, tta=tta
    )
    app = create_app(
        predictor,
        max_upload_bytes=round(max_upload_mb * MB),
        max_video_bytes=round(max_video_mb * MB),
        max_pixels=max_pixels,
        max_batch=max_batch,
        max_queue=max_queue,
        max_video_frames=max_video_frames,
        cors_origins=cors_origins,
    )
    everywhere = host in ("0.0.0.0", "::")
    scheme = "https" if certfile else "http"
    url = f"{scheme}://{'localhost' if everywhere else host}:{port}"
    lan = network_address() if everywhere else None
    print(
        f"ferkit serve: {predictor.config.arch} ({len(predictor.classes)} classes) from {predictor.source}; "
        f"page at {url}/ "
        + (f"(from other devices: {scheme}://{lan}:{port}/) " if lan else "")
        + f", API docs at {url}/docs",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile)
