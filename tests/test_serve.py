"""``ferkit serve``: the real server on a loopback port, called over HTTP and from headless Chromium."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, LiveServer, iou, save_sideways, write_animation, write_video
from PIL import Image

import ferkit.checkpoint as checkpoint_mod
import ferkit.serve
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.data.images import IMAGE_SUFFIXES
from ferkit.inference.ensemble import combine_checkpoints
from ferkit.inference.predict import Predictor, predict_video, stream_video
from ferkit.inference.results import Face, Result
from ferkit.inference.tracking import SMOOTH_S
from ferkit.inference.video import VIDEO_SUFFIXES

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("multipart")
skimage_data = pytest.importorskip("skimage.data")

from ferkit.serve import app as serve_app  # noqa: E402  (needs the serve extra checked above)
from ferkit.serve.app import Sessions, create_app, describe_model  # noqa: E402  (needs the serve extra checked above

MAX_UPLOAD = 600_000  # the astronaut PNG is about 425 kB
MAX_PIXELS = 320_000  # the astronaut has 262,144, a webcam frame 307,200
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def png(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def tiff(array: np.ndarray) -> bytes:
    """A TIFF (which Chromium cannot decode), deflated to fit the test server's upload limit."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF", compression="tiff_deflate")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint) -> Path:
    return untrained_checkpoint


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    path.write_bytes(png(skimage_data.astronaut()))
    return path


@pytest.fixture(scope="module")
def server(predictor, checkpoint):
    app = create_app(predictor, describe_model(predictor), max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_astronaut_gives_one_face_on_her_face_as_predict_json_does(client, checkpoint, astronaut, tmp_path):
    response = client.post("/predict", files={"file": ("astronaut.png", astronaut.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["classes"] == list(CLASSES) and served["prior"] == "model"  # a file without its training mix
    [result] = served["results"]
    assert (result["source"], result["width"], result["height"], result["error"]) == ("astronaut.png", 512, 512, None)
    [face] = result["faces"]
    assert iou(face["box"], ASTRONAUT_FACE) > 0.6
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    cli_json = tmp_path / "cli.json"
    assert main(["predict", str(astronaut), "--checkpoint", str(checkpoint), "--json", str(cli_json)]) == 0
    expected = json.loads(cli_json.read_text())
    [cli_result] = expected["results"]
    assert set(served) == set(expected) and set(result) == set(cli_result)
    assert result["faces"][0]["box"] == cli_result["faces"][0]["box"]
    assert result["faces"][0]["probabilities"] == pytest.approx(cli_result["faces"][0]["probabilities"], abs=1e-5)


def test_several_files_in_one_request_give_one_result_each_in_order_as_alone(client):
    # JPEGs and a small second photo, so the two fit the test server's upload and pixel limits together.
    small_coffee = np.asarray(Image.fromarray(skimage_data.coffee()).resize((150, 100)))
    photo, coffee = png(skimage_data.astronaut(), "JPEG"), png(small_coffee, "JPEG")
    files = [("file", ("coffee.jpg", coffee, "image/jpeg")), ("file", ("astronaut.jpg", photo, "image/jpeg"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["source"], len(r["faces"])) for r in results] == [("coffee.jpg", 0), ("astronaut.jpg", 1)]
    assert iou(results[1]["faces"][0]["box"], ASTRONAUT_FACE) > 0.6
    alone = client.post("/predict", files={"file": ("astronaut.jpg", photo, "image/jpeg")}).json()["results"][0]
    assert results[1]["faces"][0]["box"] == alone["faces"][0]["box"]
    assert results[1]["faces"][0]["probabilities"] == pytest.approx(alone["faces"][0]["probabilities"], abs=1e-5)


@pytest.mark.parametrize(
    ("files", "params", "status", "message"),
    [
        (
            [("a.jpg", "photo"), ("notes.png", b"not a picture")],
            {},
            415,
            "cannot decode 'notes.png' as an image",
        ),
        (
            [("a.jpg", "photo"), ("b.jpg", "photo")],
            {"session": "tab1"},
            400,
            "a session tracks one frame a request, not 2",
        ),
        (
            [("a.jpg", "photo"), ("b.jpg", "photo")],
            {},
            413,
            "'b.jpg' is 512x512 = 262,144 pixels; the limit is 320,000 pixels, and the images before it in this "
            "request take 262,144: send a smaller image",
        ),
    ],
)
def test_several_files_are_refused_whole_naming_the_bad_one_or_a_session(client, files, params, status, message):
    photo = png(skimage_data.astronaut(), "JPEG")
    parts = [("file", (name, photo if data == "photo" else data, "image/jpeg")) for name, data in files]
    response = client.post("/predict", files=parts, params=params)
    assert response.status_code == status and message in response.json()["detail"]
    assert "\n" not in response.json()["detail"]


def multipart_chunks(name: str, data: bytes, boundary: str = "ferkit-test"):
    """A multipart body sent with chunked transfer encoding, so no Content-Length announces its size."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for start in range(0, len(data), 64_000):
        yield data[start : start + 64_000]
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """12 frames at 10 fps of the astronaut moving right, as WebM (VP8), which Chromium plays too."""
    cv2 = pytest.importorskip("cv2")
    path = tmp_path_factory.mktemp("video") / "clip.webm"
    frame = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), 10, (512, 512))
    for i in range(12):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    return path


def test_a_video_is_tracked_frame_by_frame_as_predict_reads_it(client, predictor, clip):
    response = client.post("/video", files={"file": ("clip.webm", clip.read_bytes(), "video/webm")})
    assert response.status_code == 200, response.text
    got = response.json()
    expected = predict_video(predictor, str(clip))
    assert (got["fps"], got["every"], got["smooth_s"], got["truncated"]) == (10.0, 1, SMOOTH_S, False)
    assert [r["frame"] for r in got["results"]] == list(range(12)) and {r["source"] for r in got["results"]} == {
        "clip.webm"
    }
    for result, want in zip(got["results"], expected, strict=True):
        assert result["time_s"] == want.time_s
        assert [(f["box"], f["track"], f["label"]) for f in result["faces"]] == [
            (f.box, f.track, f.label) for f in want.faces
        ]
        for face, want_face in zip(result["faces"], want.faces):
            assert face["smoothed"] == pytest.approx(want_face.smoothed, abs=1e-5)
    # one person, tracked over the whole clip, as `ferkit predict clip.webm --summary` counts them
    (track,) = got["tracks"]
    assert (track["track"], track["frames"], track["first_s"], track["last_s"]) == (1, 12, 0.0, 1.1)
    assert track["dominant"] == max(track["share"], key=track["share"].get) and sum(track["share"].values()) == 1


def test_part_of_a_video_is_read_from_start_until_end_as_predict_reads_it(client, predictor, clip):
    upload = {"file": ("clip.webm", clip.read_bytes(), "video/webm")}
    got = client.post("/video", params={"start": 0.45, "end": 0.9}, files=upload).json()
    expected = list(stream_video(predictor, str(clip), start=0.45, end=0.9))
    assert [r["frame"] for r in got["results"]] == [r.frame for r in expected] == [5, 6, 7, 8]
    assert [r["time_s"] for r in got["results"]] == [r.time_s for r in expected]
    assert [r["faces"][0]["box"] for r in got["results"]] == [r.faces[0].box for r in expected]
    assert (got["start"], got["end"], got["tracks"][0]["first_s"], got["tracks"][0]["last_s"]) == (0.45, 0.9, 0.5, 0.8)
    refused = client.post("/video", params={"start": 2, "end": 1}, files=upload)
    assert refused.status_code == 422 and refused.json()["detail"] == "end 1 is not after start 2; give a later end"


def test_an_animated_gif_is_read_as_a_video_and_a_still_one_is_sent_to_predict(client, predictor, tmp_path):
    frames = [np.roll(skimage_data.astronaut(), 6 * i, axis=1) for i in range(4)]
    gif = write_animation(frames, tmp_path / "reaction.gif", [100, 300, 100, 100])
    got = client.post("/video", files={"file": ("reaction.gif", gif.read_bytes(), "image/gif")})
    assert got.status_code == 200, got.text
    expected = predict_video(predictor, str(gif))
    assert [(r["frame"], r["time_s"]) for r in got.json()["results"]] == [(0, 0.0), (1, 0.1), (2, 0.4), (3, 0.5)]
    assert [r["faces"][0]["box"] for r in got.json()["results"]] == [r.faces[0].box for r in expected]
    assert all("image" not in r for r in got.json()["results"])
    # With ?frames=true each result carries its frame, for a page that cannot decode the GIF's frames (Safari).
    shown = client.post("/video", params={"frames": True}, files={"file": ("reaction.gif", gif.read_bytes())}).json()
    assert [r["faces"][0]["box"] for r in shown["results"]] == [r["faces"][0]["box"] for r in got.json()["results"]]
    for result, frame in zip(shown["results"], frames, strict=True):
        prefix, data = result["image"].split(",", 1)
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert prefix == "data:image/jpeg;base64" and image.format == "JPEG" and image.size == (480, 480)
        assert np.abs(np.asarray(image.resize((512, 512)), float) - frame).mean() < 12  # this frame, not another
    still = client.post("/video", files={"file": ("still.gif", png(frames[0], "GIF"), "image/gif")})
    assert still.status_code == 415
    assert still.json()["detail"] == "'still.gif' is a still image; send it to /predict (this endpoint reads videos)"


def test_predict_refuses_an_animation_naming_video_and_reads_still_and_multi_page_images(client, tmp_path):
    frames = [np.roll(skimage_data.astronaut()[::2, ::2], 3 * i, axis=1) for i in range(3)]  # under MAX_UPLOAD
    for suffix in (".gif", ".webp", ".png"):
        moving = write_animation(frames, tmp_path / f"moving{suffix}", [100, 100, 100]).read_bytes()
        # The client's name says nothing: the bytes tell.
        refused = client.post("/predict", files=[("file", ("a.jpg", png(frames[0]))), ("file", ("clip.bin", moving))])
        assert refused.status_code == 415
        assert refused.json()["detail"] == (
            "'clip.bin' is an animated image; send it to /video, which tracks the people in it frame by frame (or "
            "read it with `ferkit predict clip.bin`)"
        )
    pages = io.BytesIO()
    Image.fromarray(frames[0]).save(pages, "TIFF", save_all=True, append_images=[Image.fromarray(frames[1])])
    read = client.post(
        "/predict", files=[("file", ("still.gif", png(frames[0], "GIF"))), ("file", ("scan.tif", pages.getvalue()))]
    )
    assert read.status_code == 200, read.text
    assert [len(r["faces"]) for r in read.json()["results"]] == [1, 1]


def test_a_videos_frames_take_turns_with_photos_so_a_photo_is_not_held_up_by_a_video(predictor, clip):
    gated = GatedPredictor(predictor)
    photo = {"file": ("photo.png", png(skimage_data.astronaut()[:400, :400]))}  # 400x400: told from a frame
    with (
        LiveServer(create_app(gated)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
        ThreadPoolExecutor(2) as pool,
    ):
        video = pool.submit(c.post, "/video", files={"file": ("clip.webm", clip.read_bytes())})
        assert gated.entered.wait(timeout=30)  # the video's first frame holds the model
        read = pool.submit(c.post, "/predict", files=photo)
        deadline = time.monotonic() + 30
        while c.get("/health").json()["in_progress"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the photo is decoded and queued while the frame holds the model
        gated.gate.set()
        assert read.result().status_code == 200 and video.result().status_code == 200
    frames = [[shape == (512, 512, 3) for shape in batch] for batch in gated.shapes]
    assert sum(map(sum, frames)) == 12  # every frame read once
    with_photo = next(i for i, batch in enumerate(gated.shapes) if (400, 400, 3) in batch)
    assert with_photo <= 2  # at once (the next batch, or the one after), not after the video's other 11 frames


def test_a_video_whose_client_has_gone_is_read_no_further(predictor, clip):
    gated = GatedPredictor(predictor)
    with LiveServer(create_app(gated)) as live:
        with ThreadPoolExecutor(1) as pool:
            # The client gives up after a second, while the video's first frame holds the model, and hangs up.
            post = pool.submit(
                httpx.post, f"{live.url}/video", files={"file": ("clip.webm", clip.read_bytes())}, timeout=1
            )
            assert gated.entered.wait(timeout=30)
            with pytest.raises(httpx.TimeoutException):
                post.result()
        gated.gate.set()
        deadline = time.monotonic() + 30
        while httpx.get(f"{live.url}/health").json()["in_progress"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{live.url}/health").json()["in_progress"] == 0
    assert len(gated.batches) <= 2  # of the video's 12 frames: the one held, and at most the one after it


def test_a_long_video_is_read_every_nth_frame_to_fit_the_frame_budget(predictor, clip):
    with LiveServer(create_app(predictor, max_video_frames=5)) as live, httpx.Client(base_url=live.url) as client:
        assert client.get("/health").json()["max_video_frames"] == 5
        auto = client.post("/video", files={"file": ("clip.webm", clip.read_bytes())}).json()
        given = client.post("/video", params={"every": 1}, files={"file": ("clip.webm", clip.read_bytes())}).json()
    assert auto["every"] == 3 and [r["frame"] for r in auto["results"]] == [0, 3, 6, 9] and not auto["truncated"]
    assert auto["tracks"][0]["seconds"] == pytest.approx(4 * 0.3)  # each frame read stands for 3 frames' time
    assert [r["frame"] for r in given["results"]] == [0, 1, 2, 3, 4] and given["truncated"]


def test_videos_have_their_own_upload_limit_and_each_413_names_its_flag(predictor, clip):
    size = len(clip.read_bytes())  # about 100 kB
    app = create_app(predictor, max_upload_bytes=20_000, max_video_bytes=size + 1000)
    # Each on its own connection, and just over its limit, so the refused body is sent whole before the 413 comes.
    with LiveServer(app) as live:
        read = httpx.post(f"{live.url}/video", files={"file": ("clip.webm", clip.read_bytes())}, timeout=60)
        assert read.status_code == 200 and len(read.json()["results"]) == 12  # a video over the photos' limit
        photo = httpx.post(f"{live.url}/predict", files={"file": ("big.png", bytes(20_100))}, timeout=60)
        assert photo.status_code == 413 and "--max-upload-mb" in photo.json()["detail"]
        longer = httpx.post(f"{live.url}/video", files={"file": ("long.webm", clip.read_bytes() + bytes(900))})
        assert longer.status_code == 413 and longer.json()["detail"] == (
            f"upload is larger than the {(size + 1000) / 1024**2:.3g} MB limit; send a smaller file (or start the "
            "server with a larger --max-video-mb)"
        )


def test_pages_of_the_origins_the_server_is_told_may_call_it_and_others_may_not(client, predictor, astronaut):
    page, other = {"Origin": "http://localhost:3000"}, {"Origin": "http://elsewhere.example"}
    photo = {"file": ("a.png", astronaut.read_bytes())}
    allowed = "access-control-allow-origin"
    assert allowed not in client.post("/predict", files=photo, headers=page).headers  # by default, none
    app = create_app(predictor, max_upload_bytes=600_000, cors_origins=["http://localhost:3000"])
    with LiveServer(app) as live:
        asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        preflight = httpx.options(f"{live.url}/predict", headers={**page, **asked})
        assert preflight.status_code == 200 and preflight.headers[allowed] == "http://localhost:3000"
        answer = httpx.post(f"{live.url}/predict", files=photo, headers=page, timeout=60)
        assert answer.status_code == 200 and answer.headers[allowed] == "http://localhost:3000"
        assert allowed not in httpx.post(f"{live.url}/predict", files=photo, headers=other, timeout=60).headers
        # A refusal reaches the calling page readable: the body limit answers inside the CORS layer.
        refused = httpx.post(f"{live.url}/predict", files={"file": ("b.png", bytes(600_100))}, headers=page)
        assert refused.status_code == 413 and refused.headers[allowed] == "http://localhost:3000"


def test_a_video_of_frames_over_the_pixel_limit_gets_a_413(predictor, clip):
    with LiveServer(create_app(predictor, max_pixels=200_000)) as live:
        response = httpx.post(f"{live.url}/video", files={"file": ("clip.webm", clip.read_bytes())}, timeout=60)
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "'clip.webm' has 512x512 frames = 262,144 pixels; the limit is 200,000 pixels: send a smaller video (or start "
        "the server with a larger --max-pixels)"
    )


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("photo.jpg", png(np.zeros((8, 8, 3), np.uint8), "JPEG"), 415, "'photo.jpg' is a photo; send it to /predict"),
        ("clip.mp4", b"not a video", 415, "cannot decode 'clip.mp4' as a video; send a video file OpenCV reads"),
        ("clip.mp4", b"", 400, "the uploaded file 'clip.mp4' is empty; choose a video file"),
    ],
)
def test_a_video_that_cannot_be_read_gets_a_4xx_naming_it(client, name, data, status, message):
    response = client.post("/video", files={"file": (name, data, "video/mp4")})
    assert response.status_code == status and response.json()["detail"].startswith(message)


def _jpeg_head() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="JPEG")
    return buffer.getvalue()[:3000]


BAD_INPUTS = {
    "empty body": (dict(), 400, "empty request body"),
    "empty file": (dict(files={"file": ("photo.jpg", b"", "image/jpeg")}), 400, "'photo.jpg' is empty"),
    "not an image": (
        dict(files={"file": ("notes.jpg", b"this is not a picture", "image/jpeg")}),
        415,
        "cannot decode 'notes.jpg' as an image (not an image format PIL can decode)",
    ),
    "truncated JPEG": (dict(files={"file": ("cut.jpg", _jpeg_head(), "image/jpeg")}), 415, "cannot decode 'cut.jpg'"),
    "a video": (
        dict(files={"file": ("clip.MP4", b"\0\0\0\x18ftypmp42", "video/mp4")}),
        415,
        "'clip.MP4' is a video; send it to /video, which tracks the people in it (or read it with `ferkit predict "
        "clip.MP4`)",
    ),
    "missing file field": (dict(files={"photo": ("a.png", b"x", "image/png")}), 422, "form field 'file'"),
    "not multipart": (
        dict(content=b'{"image": "a.png"}', headers={"Content-Type": "application/json"}),
        415,
        "expected multipart/form-data",
    ),
    "bad query parameter": (
        dict(files={"file": ("a.png", b"x", "image/png")}, params={"detect": "maybe"}),
        422,
        "query.detect",
    ),
    "too large": (
        dict(files={"file": ("big.png", os.urandom(MAX_UPLOAD + 1), "image/png")}),
        413,
        "larger than the 0.572 MB limit",
    ),
    "too large, chunked": (
        dict(
            content=multipart_chunks("big.png", os.urandom(3 * MAX_UPLOAD)),
            headers={"Content-Type": "multipart/form-data; boundary=ferkit-test"},
        ),
        413,
        "--max-upload-mb",
    ),
    "too many pixels": (
        dict(files={"file": ("wide.png", png(np.zeros((300, 1100), np.uint8)), "image/png")}),
        413,
        "'wide.png' is 1100x300 = 330,000 pixels; the limit is 320,000 pixels",
    ),
    "decompression bomb": (
        dict(files={"file": ("bomb.png", png_claiming(30_000, 30_000), "image/png")}),
        413,
        "--max-pixels",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_with_a_clear_message_and_the_server_answers_after(client, case):
    kwargs, status, message = BAD_INPUTS[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail
    assert client.get("/health").json()["status"] == "ok"


def test_preview_gives_a_photo_back_as_an_upright_jpeg_its_longer_side_bounded(client, tmp_path):
    photo = skimage_data.astronaut()[:, :400]  # 512 high, 400 wide
    response = client.post("/preview", params={"side": 100}, files={"file": ("a.tif", tiff(photo))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    jpeg = Image.open(io.BytesIO(response.content))
    assert jpeg.format == "JPEG" and jpeg.size == (78, 100)
    smaller = np.asarray(Image.fromarray(photo).resize(jpeg.size, Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(jpeg, dtype=float) - smaller).mean() < 6
    unbounded = client.post("/preview", files={"file": ("a.tif", tiff(photo))})
    assert Image.open(io.BytesIO(unbounded.content)).size == (400, 512)  # never enlarged
    sideways = save_sideways(photo, tmp_path / "phone.jpg")  # upright, as /predict's boxes are
    turned = client.post("/preview", files={"file": ("phone.jpg", sideways.read_bytes())})
    assert Image.open(io.BytesIO(turned.content)).size == (400, 512)
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (in ferkit[dev]) writes HEIC files")
    heic = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(photo)).save(heic, quality=90)
    answer = client.post("/preview", files={"file": ("IMG_0001.HEIC", heic.getvalue())})
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (400, 512)


@pytest.mark.parametrize("case", ["empty file", "not an image", "a video", "too large", "too many pixels"])
def test_preview_refuses_what_predict_refuses_with_the_same_message(client, case):
    kwargs, status, message = BAD_INPUTS[case]
    response = client.post("/preview", **kwargs)
    assert response.status_code == status and message in response.json()["detail"]


def test_the_server_still_predicts_after_every_bad_input(client, astronaut):
    response = client.post("/predict", files={"file": ("again.png", astronaut.read_bytes())})
    assert response.status_code == 200 and len(response.json()["results"][0]["faces"]) == 1


def test_health_and_model_describe_the_server_and_the_checkpoint(client):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "in_progress": 0,
        "max_upload_bytes": MAX_UPLOAD,
        "max_video_bytes": 200 * 1024 * 1024,
        "max_pixels": MAX_PIXELS,
        "max_batch": 8,
        "max_queue": 32,
        "max_video_frames": 300,
    }
    model = client.get("/model").json()
    assert model["checkpoint"] == "best.pth" and model["classes"] == list(CLASSES) and model["arch"] == "resnet18"
    assert model["config"]["image_size"] == 32 and model["config"]["label_smoothing"] == 0.1
    assert model["preprocess"] == {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert (model["epoch"], model["metrics"], model["select_split"]) == (
        3,
        {"accuracy": 0.5, "macro_f1": 0.25},
        "PublicTest",
    )
    assert model["members"] == [] and model["init_from"] is None  # one network, trained from scratch
    assert model["temperature"] == 1.0  # never calibrated
    assert model["prior"] == "model"  # auto: this file records no training mix to read photos away from
    assert model["tta"] == "none"


def test_a_server_reads_faces_with_its_predictors_tta_and_says_which(checkpoint, astronaut):
    scaled = Predictor.from_checkpoint(checkpoint, tta="scales")
    with LiveServer(create_app(scaled, describe_model(scaled))) as live, httpx.Client(base_url=live.url) as c:
        assert c.get("/model").json()["tta"] == "scales"
        response = c.post("/predict", files={"file": ("astronaut.png", astronaut.read_bytes())}, timeout=60)
    assert response.json()["tta"] == "scales"
    [served] = response.json()["results"][0]["faces"]
    [local] = scaled.predict(astronaut).faces
    [plain] = Predictor.from_checkpoint(checkpoint).predict(astronaut).faces
    assert served["probabilities"] == pytest.approx(local.probabilities, abs=1e-5)
    assert served["probabilities"] != pytest.approx(plain.probabilities, abs=1e-4)


def test_openapi_schema_documents_what_the_endpoints_do(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/predict", "/video", "/preview", "/health", "/model"}
    ref = "#/components/schemas/"

    def response_ref(path, method, code):
        return schema["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]["$ref"]

    assert response_ref("/predict", "post", "200") == ref + "Predictions"
    assert response_ref("/video", "post", "200") == ref + "VideoPredictions"
    for code in ("400", "413", "415", "422", "503", "500"):
        for path in ("/predict", "/video", "/preview"):
            assert response_ref(path, "post", code) == ref + "Error"
    assert list(schema["paths"]["/preview"]["post"]["responses"]["200"]["content"]) == ["image/jpeg"]
    video = schema["paths"]["/video"]["post"]
    assert {p["name"] for p in video["parameters"]} == {"every", "smooth", "start", "end", "frames"}
    assert "tracks" in schema["components"]["schemas"]["VideoPredictions"]["required"]
    assert response_ref("/health", "get", "200") == ref + "Health"
    assert response_ref("/model", "get", "200") == ref + "ModelInfo"
    body = schema["paths"]["/predict"]["post"]["requestBody"]
    form = schema["components"]["schemas"][body["content"]["multipart/form-data"]["schema"]["$ref"].removeprefix(ref)]
    assert form["required"] == ["file"]
    files = form["properties"]["file"]  # the field repeated: one file or several
    assert files["type"] == "array" and "repeat the field for several" in files["description"]
    file = files["items"]  # OpenAPI 3.1 (newer FastAPI) or 3.0 spelling of "a file's bytes"
    assert file.get("contentMediaType") == "application/octet-stream" or file.get("format") == "binary"
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # 422s are Error, as served
    face = schema["components"]["schemas"]["Face"]
    assert set(face["required"]) == {"box", "label", "confidence", "probabilities"}


def test_the_api_documents_the_very_face_and_result_types_predict_returns(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for kind in (Face, Result):
        properties = schemas[kind.__name__]["properties"]
        assert list(properties) == [f.name for f in fields(kind)]
    assert schemas["Face"]["properties"]["box"]["description"] == "[x, y, width, height] in the input image's pixels"


class GatedPredictor(Predictor):
    """Holds every batch until the test opens the gate, and records the batch sizes and their images' shapes."""

    def __init__(self, base: Predictor) -> None:
        super().__init__(base.model, base.config, base.classes, device="cpu")
        self.entered, self.gate, self.batches, self.shapes = threading.Event(), threading.Event(), [], []

    def predict_batch(self, images, detect=True, names=None):
        if len(images) == 1 and images[0].shape == (64, 64, 3):  # the start-up warm-up call
            return super().predict_batch(images, detect, names)
        self.batches.append(len(images))
        self.shapes.append([image.shape for image in images])
        self.entered.set()
        self.gate.wait(timeout=60)
        return super().predict_batch(images, detect, names)


def test_inference_runs_off_the_event_loop_and_concurrent_requests_are_batched_and_bounded(predictor, astronaut):
    gated = GatedPredictor(predictor)
    image = {"file": ("astronaut.png", astronaut.read_bytes())}
    with (
        LiveServer(create_app(gated, max_queue=3)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
        ThreadPoolExecutor(3) as pool,
    ):
        first = pool.submit(c.post, "/predict", files=image)
        assert gated.entered.wait(timeout=30)
        queued = [pool.submit(c.post, "/predict", files=image) for _ in range(2)]
        deadline = time.monotonic() + 30
        while c.get("/health").json()["in_progress"] < 3:  # answered while a batch holds the model
            assert time.monotonic() < deadline
            time.sleep(0.05)
        busy = c.post("/predict", files=image)
        assert busy.status_code == 503 and "server busy" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "1"
        gated.gate.set()
        responses = [f.result() for f in [first, *queued]]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert gated.batches == [1, 2]  # the two requests that waited were classified together
    boxes = {tuple(r.json()["results"][0]["faces"][0]["box"]) for r in responses}
    assert len(boxes) == 1


def test_page_is_served_with_its_script(client):
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="file-input"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and 'send("predict"' in script.text
    assert '"video?frames=true" : "video"' in script.text and "await videoRequest(" in script.text


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium); Playwright's own browser is not downloaded")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        # The fake camera lets the webcam path run headless; it shows a test pattern, not a face.
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        yield browser
        browser.close()


def open_page(browser, server):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(server.url)
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('Model:')")
    return page, errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("weights", "kind", "shares"), [(None, "average", ("", "")), ([1, 3], "weighted average", (" 0.25", " 0.75"))]
)
def test_page_names_an_ensembles_networks_with_their_selection_accuracy(
    browser, checkpoint, tmp_path, weights, kind, shares
):
    checkpoint_mod.atomic_save(combine_checkpoints([checkpoint, checkpoint], weights), tmp_path / "pair.pth")
    predictor = Predictor.from_checkpoint(tmp_path / "pair.pth")
    with LiveServer(create_app(predictor, describe_model(predictor))) as live:
        page, errors = open_page(browser, live)
        summary, more = (page.locator(f"#model-{part}").text_content() for part in ("summary", "more"))
        folded = page.locator("#model-details").get_attribute("open") is None
        page.close()
    first, second = (
        f"{checkpoint.parent.name}/best.pth{f' (weight{w})' if w else ''}: PublicTest 50.0%" for w in shares
    )
    # One line in view; each network, the classes and the upload limits folded under it.
    assert summary == "Model: pair.pth (2 networks) at 32x32, read for its training data's class mix." and folded
    assert more.startswith(f" the {kind} of 2 networks ({first}; {second})") and "; classes Angry, " in more
    assert more.endswith("Uploads up to 10.0 MB, videos 200.0 MB.")
    assert errors == []


@pytest.mark.slow
def test_page_says_when_faces_are_read_through_several_framings(browser, checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, tta="scales")
    with LiveServer(create_app(predictor, describe_model(predictor))) as live:
        page, errors = open_page(browser, live)
        info = page.locator("#model-summary").text_content()
        page.close()
    assert info.startswith("Model: ") and info.endswith(
        "read for its training data's class mix, each face framed at 85%, 100% and 115%."
    )
    assert errors == []


@pytest.mark.slow
def test_page_uploads_a_photo_and_draws_the_box_and_seven_bars(browser, server, astronaut):
    page, errors = open_page(browser, server)
    assert "read for its training data's class mix" in page.locator("#model-info").text_content()
    page.set_input_files("[data-testid=file-input]", str(astronaut))
    face = page.locator("[data-testid=face]")
    face.wait_for(timeout=30_000)
    assert face.count() == 1
    box = json.loads(face.get_attribute("data-box"))
    assert iou(box, ASTRONAUT_FACE) > 0.6
    bars = face.locator("[data-testid=prob-bar]")
    assert bars.count() == 7
    assert [bars.nth(i).get_attribute("data-class") for i in range(7)] == list(CLASSES)
    shares = [float(bars.nth(i).get_attribute("data-p")) for i in range(7)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    widths = [bars.nth(i).bounding_box()["width"] for i in range(7)]
    assert widths.index(max(widths)) == shares.index(max(shares))  # the bars are drawn to scale
    size, left_edge, inside = page.evaluate(
        """([x, y, w, h]) => {
        const canvas = document.querySelector('[data-testid=canvas]');
        const pixel = (px, py) => Array.from(canvas.getContext('2d').getImageData(px, py, 1, 1).data);
        return [[canvas.width, canvas.height], pixel(x, y + h / 2), pixel(x + w / 2, y + h / 2)];
    }""",
        box,
    )
    assert size == [512, 512]
    assert left_edge == [0, 220, 0, 255]  # the box's stroke, in the first face's colour
    assert inside != left_edge  # the photo itself is drawn under the box
    assert "1 face in astronaut.png" in page.locator("[data-testid=status]").text_content()
    assert errors == []
    page.close()


@pytest.mark.slow
def test_page_numbers_a_crowds_small_faces_and_counts_their_expressions(browser, server, astronaut, tmp_path):
    small = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((170, 170)))
    crowd = tmp_path / "crowd.png"
    crowd.write_bytes(png(np.vstack([np.hstack([small] * 3)] * 2)))  # six faces about 32 pixels wide
    page, errors = open_page(browser, server)
    page.set_input_files("[data-testid=file-input]", str(crowd))
    page.wait_for_function("document.querySelectorAll('[data-testid=face]').length === 6", timeout=30_000)
    labels = page.eval_on_selector_all("[data-testid=face]", "cards => cards.map((c) => c.dataset.label)")
    tabs = json.loads(page.locator("[data-testid=canvas]").get_attribute("data-tabs"))
    # A full label would be three faces wide: each tab says the face's number, its card the rest.
    assert [t["text"] for t in tabs] == [str(i) for i in range(1, 7)]
    for tab, box in zip(tabs, page.eval_on_selector_all("[data-testid=face]", "cs => cs.map((c) => c.dataset.box)")):
        x, y, w, h = json.loads(box)
        assert tab["width"] <= w + 2 and 0 <= tab["left"] and tab["left"] + tab["width"] <= 510  # over its own face
    counts = ", ".join(f"{label} {n}" for label, n in Counter(labels).most_common())
    assert page.locator("[data-testid=status]").text_content() == f"6 faces in crowd.png (510x340): {counts}"
    # A card pointed at brings its face forward, whole label and all; a click on a face goes to its card.
    cards = page.locator("[data-testid=face]")
    cards.nth(4).hover()
    tabs = json.loads(page.locator("[data-testid=canvas]").get_attribute("data-tabs"))
    assert tabs[4]["text"] == f"5: {labels[4]} " + cards.nth(4).locator("h2").text_content().rsplit(" ", 1)[1]
    assert [t["text"] for t in tabs[:4] + tabs[5:]] == ["1", "2", "3", "4", "6"]
    page.mouse.move(0, 0)
    canvas = page.locator("[data-testid=canvas]")
    x, y, w, h = json.loads(cards.nth(2).get_attribute("data-box"))
    shown = canvas.bounding_box()
    canvas.click(position={"x": (x + w / 2) * shown["width"] / 510, "y": (y + h / 2) * shown["height"] / 340})
    page.wait_for_function("document.activeElement.dataset.testid === 'face'")
    assert page.evaluate("[...document.querySelectorAll('[data-testid=face]')].indexOf(document.activeElement)") == 2
    assert json.loads(canvas.get_attribute("data-tabs"))[2]["text"].startswith(f"3: {labels[2]} ")
    # The same among several photos, shown from its thumbnail.
    page.set_input_files("[data-testid=file-input]", [str(astronaut), str(crowd)])
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('2 photos')", timeout=60_000
    )
    page.click("[data-name='crowd.png']")
    page.wait_for_function("document.querySelectorAll('[data-testid=face]').length === 6", timeout=30_000)
    cards.nth(1).hover()
    assert json.loads(canvas.get_attribute("data-tabs"))[1]["text"].startswith(f"2: {labels[1]} ")
    page.mouse.move(0, 0)
    # One face keeps its whole label on the picture.
    page.set_input_files("[data-testid=file-input]", str(astronaut))
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('1 face')")
    [tab] = json.loads(page.locator("[data-testid=canvas]").get_attribute("data-tabs"))
    face = page.locator("[data-testid=face]")
    confidence = page.locator("[data-testid=face] h2").text_content().rsplit(" ", 1)[1]
    assert tab["text"] == f"1: {face.get_attribute('data-label')} {confidence}"
    assert errors == []
    page.close()


def hand_over(page, how: str, *files: tuple[str, bytes, str]) -> None:
    """Files (name, bytes, type) dropped on the page or pasted into it, as a browser delivers them."""
    page.evaluate(
        """([how, files]) => {
        const data = new DataTransfer();
        files.forEach(([name, b64, kind]) =>
          data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: kind })));
        const init = { bubbles: true, cancelable: true };
        document.querySelector("main").dispatchEvent(how === "drop"
          ? new DragEvent("drop", { ...init, dataTransfer: data })
          : new ClipboardEvent("paste", { ...init, clipboardData: data }));
    }""",
        [how, [[name, base64.b64encode(data).decode(), kind] for name, data, kind in files]],
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["drop", "paste"])
def test_page_reads_a_photo_dropped_on_it_or_pasted_into_it(browser, server, astronaut, how):
    page, errors = open_page(browser, server)
    hand_over(page, how, ("astronaut.png", astronaut.read_bytes(), "image/png"))
    face = page.locator("[data-testid=face]")
    face.wait_for(timeout=30_000)
    assert face.count() == 1 and iou(json.loads(face.get_attribute("data-box")), ASTRONAUT_FACE) > 0.6
    assert "1 face in astronaut.png" in page.locator("[data-testid=status]").text_content()
    assert errors == []
    page.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["button", "drop"])
def test_page_reads_several_photos_each_on_its_own_with_a_thumbnail_and_a_line_over_them(
    browser, server, astronaut, how
):
    files = [
        ("astronaut.png", astronaut.read_bytes(), "image/png"),
        ("grey.png", png(np.full((120, 160, 3), 128, np.uint8)), "image/png"),
        ("notes.png", b"not a picture", "text/plain"),
        ("big.jpg", bytes(MAX_UPLOAD + 100_000), "image/jpeg"),  # refused by the page before it is sent
    ]
    page, errors = open_page(browser, server)
    posts = []  # to /predict: a thumbnail the browser cannot show asks /preview besides
    page.on("request", lambda request: posts.append(request.url) if "/predict" in request.url else None)
    if how == "button":
        page.set_input_files(
            "[data-testid=file-input]", files=[{"name": n, "mimeType": t, "buffer": b} for n, b, t in files]
        )
    else:
        hand_over(page, how, *files)
    line = page.locator("[data-testid=gallery-line]")
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('4 photos')", timeout=60_000
    )
    thumbs = page.locator("[data-testid=thumb]")
    assert [thumbs.nth(i).get_attribute("data-name") for i in range(4)] == [name for name, _, _ in files]
    assert [thumbs.nth(i).get_attribute("data-state") for i in range(4)] == ["ok", "ok", "error", "error"]
    assert len(posts) == 3  # one request a photo; the oversized one never leaves the page
    captions = page.locator("[data-testid=thumb-caption]")
    label, confidence = captions.nth(0).text_content().split(" ")  # one face: its label and confidence
    assert label in CLASSES and confidence.endswith("%")
    assert [captions.nth(i).text_content() for i in (1, 2, 3)] == ["no face", "not read", "not read"]
    assert line.text_content() == (
        f"4 photos: 1 face ({label} 1); 1 without a face; 2 not read; "
        "click a photo to see its faces or why it was not read"
    )
    status = page.locator("[data-testid=status]")

    def click(i: int, says: str) -> None:  # the photo is decoded when shown, so its line comes a moment later
        thumbs.nth(i).click()
        page.wait_for_function(
            "(s) => document.querySelector('[data-testid=status]').textContent.includes(s)", arg=says
        )

    click(0, "1 face in astronaut.png")
    face = page.locator("[data-testid=face]")
    assert face.count() == 1 and iou(json.loads(face.get_attribute("data-box")), ASTRONAUT_FACE) > 0.6
    assert face.get_attribute("data-label") == label
    assert thumbs.nth(0).get_attribute("aria-pressed") == "true"
    assert thumbs.nth(2).get_attribute("aria-pressed") == "false"
    assert page.evaluate("document.querySelector('[data-testid=canvas]').width") == 512
    click(1, "No face found in grey.png")
    assert face.count() == 0
    click(2, "cannot decode 'notes.png' as an image")
    assert status.get_attribute("data-state") == "error" and face.count() == 0
    click(3, "big.jpg is 0.7 MB; this server accepts up to 0.6 MB")
    # Saved as `ferkit predict --json` writes them, in the order given; each photo as the API reads it alone.
    with page.expect_download() as download:
        page.click("[data-testid=save-results]")
    assert download.value.suggested_filename == "ferkit-results.json"
    saved = json.loads(Path(download.value.path()).read_text())
    alone = httpx.post(f"{server.url}/predict", files={"file": files[0][:2]}, timeout=60).json()
    assert {k: saved[k] for k in ("classes", "prior", "tta")} == {k: alone[k] for k in ("classes", "prior", "tta")}
    assert [r["source"] for r in saved["results"]] == [name for name, _, _ in files]
    assert saved["results"][0] == alone["results"][0] and saved["results"][1]["faces"] == []
    assert "cannot decode 'notes.png'" in saved["results"][2]["error"] and saved["results"][3]["faces"] == []
    page.set_input_files("[data-testid=file-input]", str(astronaut))  # one photo again: no gallery
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('1 face')")
    assert page.locator("[data-testid=gallery]").is_hidden() and thumbs.count() == 0
    assert errors == []
    page.close()


@pytest.mark.slow
def test_page_shows_photos_its_browser_cannot_decode_through_the_servers_preview(browser, server, astronaut):
    photo = skimage_data.astronaut()[:400, :400]  # her face, in a TIFF within the test server's upload limit
    tif = {"name": "astronaut.tif", "mimeType": "image/tiff", "buffer": tiff(photo)}
    page, errors = open_page(browser, server)
    previews = []
    page.on("request", lambda request: "/preview" in request.url and previews.append(request.url))
    decodes = """(b64) => createImageBitmap(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]))
        .then(() => true, () => false)"""
    assert not page.evaluate(decodes, base64.b64encode(tif["buffer"]).decode())  # Chromium does not read TIFF
    page.set_input_files("[data-testid=file-input]", files=[tif])
    face = page.locator("[data-testid=face]")
    face.wait_for(timeout=30_000)
    x, y, w, h = json.loads(face.get_attribute("data-box"))
    page.wait_for_function("document.querySelector('[data-testid=canvas]').width === 400")
    drawn = page.evaluate(
        """([px, py]) => Array.from(document.querySelector('[data-testid=canvas]').getContext('2d')
            .getImageData(px, py, 1, 1).data)""",
        [x + w // 2, y + h // 2],
    )
    assert np.abs(np.array(drawn[:3], dtype=int) - photo[y + h // 2, x + w // 2]).max() < 12  # the photo, not grey
    assert len(previews) == 1
    previews.clear()
    page.set_input_files(
        "[data-testid=file-input]",
        files=[tif, {"name": "astronaut.png", "mimeType": "image/png", "buffer": astronaut.read_bytes()}],
    )
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('2 photos')", timeout=60_000
    )
    page.wait_for_function(  # its thumbnail is the server's JPEG
        "document.querySelector('[data-name=\"astronaut.tif\"] img')?.naturalWidth === 400", timeout=30_000
    )
    for name in ("astronaut.tif", "astronaut.png", "astronaut.tif"):  # shown, and shown again
        page.click(f"[data-name='{name}']")
        page.wait_for_function(
            "document.querySelector('[data-testid=canvas]').width === " + ("400" if "tif" in name else "512")
        )
    # Asked once for the thumbnail and the view together, and not again when shown again.
    assert len(previews) == 1 and "side=1600" in previews[0]
    assert errors == []
    page.close()


@pytest.mark.parametrize(("name", "suffixes"), [("IMAGE_SUFFIXES", IMAGE_SUFFIXES), ("VIDEO_SUFFIXES", VIDEO_SUFFIXES)])
def test_the_page_knows_images_and_videos_by_the_endings_predict_knows(name, suffixes):
    script = (Path(ferkit.serve.__file__).parent / "static" / "app.js").read_text()
    listed = re.search(rf"const {name} = \[(.*?)\];", script).group(1)
    assert sorted(json.loads(f"[{listed}]")) == sorted(suffixes)


@pytest.mark.slow
def test_page_tracks_the_people_in_a_video_and_draws_them_as_it_plays(browser, server, clip, predictor, astronaut):
    page, errors = open_page(browser, server)
    asked = []
    page.on("request", lambda request: asked.append(request.url))
    page.set_input_files("[data-testid=file-input]", str(clip))
    page.wait_for_function(
        "document.querySelector('[data-testid=status]').textContent.includes('tracked in clip.webm')", timeout=60_000
    )
    status = page.locator("[data-testid=status]").text_content()
    assert status == "1 person tracked in clip.webm over 1.1 s (12 frames read)"
    card = page.locator("[data-testid=face]")
    expected = predict_video(predictor, str(clip))
    dominant = max(CLASSES, key=lambda c: sum(f.label == c for r in expected for f in r.faces))
    assert (
        card.count() == 1 and card.get_attribute("data-track") == "1" and card.get_attribute("data-label") == dominant
    )
    assert card.locator("[data-testid=prob-bar]").count() == 7
    assert "in view 0.0-1.1 s" in card.text_content()
    assert page.locator("[data-testid=canvas]").is_hidden() and page.locator("[data-testid=clip]").is_visible()
    assert f"{server.url}/video" in asked and f"{server.url}/video?frames=true" not in asked  # the browser plays it
    # Seeked to 0.55 s, the overlay shows frame 5's box (read at 0.5 s), in person 1's colour.
    page.evaluate("document.querySelector('[data-testid=clip]').currentTime = 0.55")
    page.wait_for_function("document.querySelector('[data-testid=clip-boxes]').dataset.frame === '5'", timeout=30_000)
    x, y, w, h = expected[5].faces[0].box
    pixel = page.evaluate(
        """([px, py]) => Array.from(document.querySelector('[data-testid=clip-boxes]').getContext('2d')
            .getImageData(px, py, 1, 1).data)""",
        [x, y + h // 2],
    )
    assert pixel == [0, 220, 0, 255]
    # A person's card takes the video to where they first appear, paused.
    page.evaluate("document.querySelector('[data-testid=clip]').currentTime = 0.95")
    page.wait_for_function("document.querySelector('[data-testid=clip-boxes]').dataset.frame === '9'", timeout=30_000)
    card.click()
    page.wait_for_function("document.querySelector('[data-testid=clip-boxes]').dataset.frame === '0'", timeout=30_000)
    assert page.evaluate("(c => [c.currentTime, c.paused])(document.querySelector('[data-testid=clip]'))") == [0, True]
    with page.expect_download() as download:  # saved as /video answers
        page.click("[data-testid=save-results]")
    saved = json.loads(Path(download.value.path()).read_text())
    assert [r["frame"] for r in saved["results"]] == list(range(12)) and saved["tracks"][0]["track"] == 1
    assert saved["tracks"][0]["dominant"] == dominant
    page.set_input_files("[data-testid=file-input]", str(astronaut))  # a photo again: no video
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('1 face')")
    assert page.locator("[data-testid=clip]").is_hidden() and page.locator("[data-testid=canvas]").is_visible()
    assert page.locator("[data-testid=save-results]").is_hidden()  # one photo's result is on show whole
    page.set_input_files("[data-testid=file-input]", [str(astronaut), str(clip)])  # a video among photos
    line = page.locator("[data-testid=gallery-line]")
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('1 photo: 1 face')", timeout=60_000
    )
    thumbs, captions = page.locator("[data-testid=thumb]"), page.locator("[data-testid=thumb-caption]")
    label = captions.nth(0).text_content().split(" ")[0]
    assert captions.nth(1).text_content() == f"1 person: {dominant} 1"
    assert line.text_content() == (
        f"1 photo: 1 face ({label} 1); 1 video: 1 person ({dominant} 1); click a photo or video to see its faces"
    )
    assert thumbs.nth(1).locator("video").count() == 1  # its first frame as the thumbnail
    thumbs.nth(1).click()  # the video on show as when given alone, from the answer already read
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.includes('tracked in clip')")
    assert page.locator("[data-testid=status]").text_content() == status
    assert page.locator("[data-testid=clip]").is_visible() and page.locator("[data-testid=canvas]").is_hidden()
    assert card.count() == 1 and card.get_attribute("data-track") == "1"
    thumbs.nth(0).click()
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('1 face')")
    assert page.locator("[data-testid=clip]").is_hidden() and page.locator("[data-testid=canvas]").is_visible()
    with page.expect_download() as download:  # the photo's result, then the video's frames and its people
        page.click("[data-testid=save-results]")
    both = json.loads(Path(download.value.path()).read_text())
    assert [(r["source"], r.get("frame")) for r in both["results"]] == [("astronaut.png", None)] + [
        ("clip.webm", i) for i in range(12)
    ]
    assert both["tracks"] == saved["tracks"]
    assert errors == []
    page.close()


def _moving(count: int) -> list[np.ndarray]:
    return [np.roll(skimage_data.astronaut(), 6 * i, axis=1) for i in range(count)]


def test_the_page_counts_an_images_frames_as_pil_does(browser, server, tmp_path):
    page, errors = open_page(browser, server)
    files = {}
    for suffix in (".gif", ".png", ".webp"):
        files[f"moving{suffix}"] = write_animation(_moving(3), tmp_path / f"moving{suffix}", [100, 0, 300])
        files[f"still{suffix}"] = tmp_path / f"still{suffix}"
        Image.fromarray(skimage_data.astronaut()).save(files[f"still{suffix}"])
    # A GIF whose second frame comes after a comment and a frame with its own colour table.
    local = tmp_path / "local.gif"
    first, second = (Image.fromarray(f).quantize(64) for f in _moving(2))
    first.save(local, save_all=True, append_images=[second], duration=100, comment=b"made by a test")
    files["local.gif"] = local
    several = page.evaluate(
        """(all) => Object.fromEntries(Object.entries(all).map(([name, b64]) =>
            [name, hasSeveralFrames(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)))]))""",
        {name: base64.b64encode(path.read_bytes()).decode() for name, path in files.items()},
    )
    expected = {}
    for name, path in files.items():
        with Image.open(path) as image:
            expected[name] = getattr(image, "n_frames", 1) > 1
    assert several == expected and sum(expected.values()) == 4
    assert errors == []
    page.close()


@pytest.mark.slow
def _plays_frame_by_frame_with_boxes(page, expected) -> None:
    page.wait_for_selector("[data-testid=anim]", state="visible")  # once its frames are decoded
    assert page.locator("[data-testid=clip]").is_hidden()
    # It plays: each frame shown in turn, with the boxes of the same frame over it.
    seen = set()
    for _ in range(100):
        seen.add(
            page.evaluate(
                "(a => [a.dataset.frame, document.querySelector('[data-testid=clip-boxes]')"
                ".dataset.frame])(document.querySelector('[data-testid=anim]'))"
            )[0]
        )
        if len(seen) == 4:
            break
        page.wait_for_timeout(50)
    assert seen == {"0", "1", "2", "3"}
    page.click("[data-testid=anim]")  # paused
    shown = page.evaluate("document.querySelector('[data-testid=anim]').dataset.frame")
    page.wait_for_timeout(500)
    frames = page.evaluate(
        "[document.querySelector('[data-testid=anim]').dataset.frame,"
        " document.querySelector('[data-testid=clip-boxes]').dataset.frame]"
    )
    assert frames == [shown, shown]
    x, y, w, h = expected[int(shown)].faces[0].box
    pixel = page.evaluate(
        """([px, py]) => Array.from(document.querySelector('[data-testid=clip-boxes]').getContext('2d')
            .getImageData(px, py, 1, 1).data)""",
        [x, y + h // 2],
    )
    assert pixel == [0, 220, 0, 255]
    # The frame drawn is the file's: its pixels below the face match that frame's.
    drawn = np.array(
        page.evaluate(
            """() => Array.from(document.querySelector('[data-testid=anim]').getContext('2d')
            .getImageData(0, 400, 512, 112).data)"""
        ),
        dtype=np.uint8,
    ).reshape(112, 512, 4)[..., :3]
    errors_by_frame = [np.abs(drawn.astype(float) - f[400:]).mean() for f in _moving(4)]
    assert int(np.argmin(errors_by_frame)) == int(shown)
    page.locator("[data-testid=face]").click()  # the person's first frame, paused
    page.wait_for_function("document.querySelector('[data-testid=anim]').dataset.frame === '0'")
    page.wait_for_timeout(300)
    assert page.evaluate("document.querySelector('[data-testid=anim]').dataset.frame") == "0"


def test_page_plays_an_animated_image_frame_by_frame_with_its_peoples_boxes(browser, server, predictor, tmp_path):
    gif = write_animation(_moving(4), tmp_path / "reaction.gif", [100, 300, 100, 100])
    expected = predict_video(predictor, str(gif))
    page, errors = open_page(browser, server)
    page.set_input_files("[data-testid=file-input]", str(gif))
    page.wait_for_function(
        "document.querySelector('[data-testid=status]').textContent.includes('tracked in reaction.gif')",
        timeout=60_000,
    )
    assert page.locator("[data-testid=status]").text_content() == (
        "1 person tracked in reaction.gif over 0.5 s (4 frames read)"
    )
    _plays_frame_by_frame_with_boxes(page, expected)
    # Among photos, it is one of the videos, its thumbnail the animation itself.
    still = tmp_path / "still.gif"
    Image.fromarray(skimage_data.astronaut()).save(still)
    page.set_input_files("[data-testid=file-input]", [str(still), str(gif)])
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.includes('click a photo or video')",
        timeout=60_000,
    )
    line = page.locator("[data-testid=gallery-line]").text_content()
    assert line.startswith("1 photo: 1 face (") and "; 1 video: 1 person (" in line
    assert page.locator("[data-testid=thumb]").nth(1).locator("img").count() == 1
    page.locator("[data-testid=thumb]").nth(1).click()
    page.wait_for_selector("[data-testid=anim]", state="visible")
    page.locator("[data-testid=thumb]").nth(0).click()  # the still GIF is a photo
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.startsWith('1 face')")
    assert page.locator("[data-testid=anim]").is_hidden() and page.locator("[data-testid=canvas]").is_visible()
    assert errors == []
    page.close()
    # A browser without ImageDecoder (Safari; others on pages that are not secure) asks the server for the frames
    # it read and plays those, with the same boxes; the results it saves are predict's, without the frames.
    page = browser.new_page()
    page.add_init_script("delete window.ImageDecoder")
    asked = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(server.url)
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('Model:')")
    page.set_input_files("[data-testid=file-input]", str(gif))
    _plays_frame_by_frame_with_boxes(page, expected)
    assert f"{server.url}/video?frames=true" in asked
    assert page.locator("[data-testid=status]").text_content() == (
        "1 person tracked in reaction.gif over 0.5 s (4 frames read)"
    )
    with page.expect_download() as download:
        page.click("[data-testid=save-results]")
    saved = json.loads(Path(download.value.path()).read_text())
    assert len(saved["results"]) == 4 and not any("image" in r for r in saved["results"])
    page.close()
    # A video this browser cannot show is played the same way from the server's frames, with its boxes: an AVI (no
    # browser plays one), and an MP4 as `ferkit predict --annotate` and OpenCV write it (MPEG-4 Part 2, which
    # Chromium does not decode), told by trying it, not by its name.
    for name, fourcc in (("talk.avi", "MJPG"), ("drawn.mp4", "mp4v")):
        video = write_video(_moving(4), tmp_path / name, fourcc=fourcc)
        page = browser.new_page()
        asked.clear()
        page.on("request", lambda request: asked.append(request.url))
        page.goto(server.url)
        page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('Model:')")
        page.set_input_files("[data-testid=file-input]", str(video))
        _plays_frame_by_frame_with_boxes(page, predict_video(predictor, str(video)))
        assert f"{server.url}/video?frames=true" in asked
        assert page.locator("[data-testid=status]").text_content().startswith(f"1 person tracked in {name}")
        page.close()
    # Where neither can give the frames, the browser plays the animation as an image, and the page says why there
    # are no boxes over it.
    page = browser.new_page()
    page.add_init_script("delete window.ImageDecoder; window.createImageBitmap = () => Promise.reject(new Error('no'))")
    page.goto(server.url)
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('Model:')")
    page.set_input_files("[data-testid=file-input]", str(gif))
    page.wait_for_function(
        "document.querySelector('[data-testid=status]').textContent.includes('boxes are not drawn')", timeout=60_000
    )
    page.wait_for_selector("[data-testid=anim-img]", state="visible")  # once the browser has decoded it to show
    assert page.locator("[data-testid=anim]").is_hidden()
    page.close()


@pytest.mark.slow
def test_page_reads_a_dropped_folder_as_predict_reads_one(browser, server, astronaut, clip):
    page, errors = open_page(browser, server)
    # Chromium gives a dropped folder as a FileSystemDirectoryEntry, which a test cannot put in a DataTransfer: the
    # page's reader is given entries shaped as Chromium's, their folder's entries in two batches.
    names = page.evaluate(
        """async ([b64, clip]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const video = Uint8Array.from(atob(clip), (c) => c.charCodeAt(0));
        const content = (path) => (path.endsWith(".txt") ? "notes" : path.endsWith(".webm") ? video : bytes);
        const file = (path) => ({ isFile: true, isDirectory: false, name: path.split("/").pop(), fullPath: "/" + path,
          file: (ok) => ok(new File([content(path)], path.split("/").pop())) });
        const folder = (path, children) => {
          const batches = [children.slice(0, 2), children.slice(2), []];
          return { isFile: false, isDirectory: true, name: path.split("/").pop(), fullPath: "/" + path,
            createReader: () => ({ readEntries: (ok) => ok(batches.shift() || []) }) };
        };
        const shots = folder("shots", [file("shots/b.png"), file("shots/notes.txt"), folder("shots/sub",
          [file("shots/sub/clip.webm"), file("shots/sub/c.png")]), file("shots/a.JPG")]);
        const item = (entry) => ({ kind: "file", webkitGetAsEntry: () => entry });
        const empty = await dropped({ items: [item(folder("docs", [file("docs/notes.txt")]))] });
        const files = await dropped({ items: [item(shots), item(file("loose.txt"))] });
        analyseFiles(files);
        return [empty.length, files.map((f) => f.name)];
    }""",
        [base64.b64encode(astronaut.read_bytes()).decode(), base64.b64encode(clip.read_bytes()).decode()],
    )
    assert names == [0, ["shots/a.JPG", "shots/b.png", "shots/sub/c.png", "shots/sub/clip.webm", "loose.txt"]]
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('4 photos:')", timeout=60_000
    )
    thumbs = page.locator("[data-testid=thumb]")
    assert [thumbs.nth(i).get_attribute("data-state") for i in range(5)] == ["ok", "ok", "ok", "ok", "error"]
    captions = page.locator("[data-testid=thumb-caption]")
    label, person = captions.nth(0).text_content().split(" ")[0], captions.nth(3).text_content()
    assert person.startswith("1 person: ")
    assert (
        page.locator("[data-testid=gallery-line]")
        .text_content()
        .startswith(f"4 photos: 3 faces ({label} 3); 1 video: {person.replace(': ', ' (')}); 1 not read")
    )
    assert errors == []
    page.close()


@pytest.mark.slow
def test_page_reads_several_pasted_images_naming_them_by_their_order(browser, server, astronaut):
    page, errors = open_page(browser, server)
    image = astronaut.read_bytes()
    hand_over(page, "paste", ("", image, "image/png"), ("", image, "image/png"), ("", b"text", "text/plain"))
    page.wait_for_function(
        "document.querySelector('[data-testid=gallery-line]').textContent.startsWith('2 photos')", timeout=60_000
    )
    thumbs = page.locator("[data-testid=thumb]")
    assert [thumbs.nth(i).get_attribute("data-name") for i in range(2)] == ["pasted image 1", "pasted image 2"]
    label = page.locator("[data-testid=thumb-caption]").nth(0).text_content().split(" ")[0]
    assert page.locator("[data-testid=gallery-line]").text_content().startswith(f"2 photos: 2 faces ({label} 2)")
    assert errors == []
    page.close()


@pytest.mark.slow
@pytest.mark.parametrize("busy", [1, 4])
def test_page_comes_back_to_a_busy_server_when_it_says_then_gives_up(browser, server, astronaut, busy):
    page, errors = open_page(browser, server)
    answers = []

    def busy_first(route) -> None:  # the server's own 503, as it answers beyond --max-queue
        answers.append(route.request.post_data_buffer is not None)
        if len(answers) <= busy:
            detail = "server busy: 32 requests in progress; retry shortly"
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": detail})
        else:
            route.continue_()

    page.route("**/predict", busy_first)
    page.set_input_files("[data-testid=file-input]", str(astronaut))
    # The page's change handler may run after set_input_files returns: wait for an answer, not for "Analysing" to go.
    page.wait_for_function(
        "/ face in |^Error/.test(document.querySelector('[data-testid=status]').textContent)", timeout=30_000
    )
    status = page.locator("[data-testid=status]").text_content()
    if busy < 4:  # read once the server had room
        assert "1 face in astronaut.png" in status and len(answers) == busy + 1
    else:  # four busy answers, a second apart: the photo is given up, saying why
        assert status == "Error: server busy: 32 requests in progress; retry shortly" and len(answers) == 4
    assert all(answers) and errors == []  # every try sent the photo again
    page.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["button", "drop"])
def test_page_shows_the_servers_error_message(browser, server, how):
    page, errors = open_page(browser, server)
    if how == "button":
        page.set_input_files(
            "[data-testid=file-input]",
            files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"}],
        )
    else:  # a dropped file goes to the server whatever it is, which names the problem
        hand_over(page, "drop", ("notes.png", b"not a picture", "text/plain"))
    status = page.locator("[data-testid=status][data-state=error]")
    status.wait_for(timeout=30_000)
    assert "cannot decode 'notes.png' as an image" in status.text_content()
    assert page.locator("[data-testid=face]").count() == 0 and errors == []
    page.close()


@pytest.mark.slow
def test_page_says_why_its_camera_is_off_when_it_is_not_a_secure_page(browser, server):
    page = browser.new_page()
    page.add_init_script("delete Navigator.prototype.mediaDevices")  # as over http:// from a phone on the network
    page.goto(server.url)
    assert page.locator("[data-testid=camera-button]").is_disabled()
    port = server.url.rsplit(":", 1)[1].strip("/")
    assert (
        page.locator("[data-testid=status]")
        .text_content()
        .endswith(
            f"The camera needs a secure page: open this one as https:// (ferkit serve --certfile) or on the server's "
            f"own machine as http://localhost:{port}/ to use it."
        )
    )
    page.close()


@pytest.mark.slow
def test_page_takes_a_webcam_snapshot(browser, server):
    page, errors = open_page(browser, server)
    urls = []
    page.on("request", lambda request: urls.append(request.url))
    page.click("[data-testid=camera-button]")
    page.wait_for_function("document.querySelector('[data-testid=video]').videoWidth > 0", timeout=30_000)
    page.click("[data-testid=snapshot-button]")
    page.wait_for_function(
        "!/^(Camera on|Analysing)/.test(document.querySelector('[data-testid=status]').textContent)", timeout=30_000
    )
    status = page.locator("[data-testid=status]").text_content()
    assert "No face found in webcam.jpg" in status  # the fake camera's test pattern has no face
    assert any("/predict?session=" in url for url in urls)  # camera frames are tracked in this tab's session
    assert page.evaluate("document.querySelector('[data-testid=canvas]').width") > 0 and errors == []
    page.close()


def test_ferkit_serve_command_serves_the_checkpoint(checkpoint, monkeypatch, capsys):
    # In process: a subprocess would spend most of a minute importing torch on the CI machine;
    # benchmarks/serve_load.py runs the real command.
    served = {}
    monkeypatch.setattr("ferkit.serve.app.uvicorn.run", lambda app, **where: served.update(app=app, **where))
    args = [
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        "8123",
        "--max-upload-mb",
        "2",
        "--max-video-mb",
        "3",
        "--max-video-frames",
        "9",
        "--cors-origin",
        "http://localhost:3000",
    ]
    assert main(args) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    assert "page at http://127.0.0.1:8123/" in capsys.readouterr().out
    with LiveServer(served["app"]) as live:
        health = httpx.get(f"{live.url}/health").json()
        assert (health["max_upload_bytes"], health["max_video_bytes"], health["max_video_frames"]) == (
            2 * 1024 * 1024,
            3 * 1024 * 1024,
            9,
        )
        assert httpx.get(f"{live.url}/model").json()["epoch"] == 3
        origin = {"Origin": "http://localhost:3000"}
        assert (
            httpx.get(f"{live.url}/health", headers=origin).headers["access-control-allow-origin"] == origin["Origin"]
        )


def test_ferkit_serve_reads_the_checkpoint_once(checkpoint, monkeypatch):
    reads = []
    real_read = checkpoint_mod.read_checkpoint
    monkeypatch.setattr(checkpoint_mod, "read_checkpoint", lambda path: reads.append(path) or real_read(path))
    served = {}
    monkeypatch.setattr("ferkit.serve.app.uvicorn.run", lambda app, **where: served.update(app=app))
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 0
    assert reads == [checkpoint]
    with LiveServer(served["app"]) as live:
        model = httpx.get(f"{live.url}/model").json()
    assert (model["checkpoint"], model["epoch"], model["select_split"]) == ("best.pth", 3, "PublicTest")


def test_ferkit_serve_without_a_checkpoint_serves_the_bundled_model(checkpoint, monkeypatch):
    monkeypatch.setattr("ferkit.checkpoint.BUNDLED", checkpoint)  # the real weights are tested in test_bundled.py
    served = {}
    monkeypatch.setattr("ferkit.serve.app.uvicorn.run", lambda app, **where: served.update(app=app))
    assert main(["serve"]) == 0
    with LiveServer(served["app"]) as live:
        assert httpx.get(f"{live.url}/model").json()["checkpoint"] == "best.pth"


def test_ferkit_serve_runs_the_bundled_int8_twin_by_name(monkeypatch, astronaut):
    pytest.importorskip("onnxruntime")
    served = {}
    monkeypatch.setattr("ferkit.serve.app.uvicorn.run", lambda app, **where: served.update(app=app))
    assert main(["serve", "--checkpoint", "fer2013_resnet18.int8"]) == 0
    with LiveServer(served["app"]) as live:
        assert httpx.get(f"{live.url}/model").json()["checkpoint"] == "fer2013_resnet18.int8.onnx"
        faces = httpx.post(
            f"{live.url}/predict", files={"file": ("a.png", astronaut.read_bytes(), "image/png")}, timeout=60
        ).json()["results"][0]["faces"]
    assert len(faces) == 1 and faces[0]["label"] == "Happy"


def test_ferkit_serve_refuses_bad_limits_and_missing_checkpoints(checkpoint, tmp_path, capsys):
    for flag in ("--max-batch", "--max-video-frames"):
        assert main(["serve", "--checkpoint", str(checkpoint), flag, "0"]) == 2
        assert f"{flag} must be positive, got 0" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err


def test_ferkit_serve_refuses_a_port_in_use_before_loading_the_model(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A checkpoint that does not exist: the port is checked first, so its error is the one given.
        assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ferkit: error: cannot listen on 127.0.0.1:{port} (") and err.count("\n") == 1
    assert "pass another --port" in err
    for port in ("80000", "-1"):
        assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth"), "--port", port]) == 2
        assert capsys.readouterr().err == f"ferkit: error: --port must be 1-65535 (got {port}); 8000 is the default\n"


def test_ferkit_serve_serves_https_with_a_certificate_and_refuses_one_tls_cannot_use(
    predictor, tmp_path, monkeypatch, capsys
):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a self-signed certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    with LiveServer(create_app(predictor), ssl_certfile=str(cert), ssl_keyfile=str(key)) as live:
        assert live.url.startswith("https://")
        assert httpx.get(f"{live.url}/model", verify=False).json()["classes"] == list(CLASSES)
    # The command hands the certificate to uvicorn and names the https:// address.
    handed = {}
    monkeypatch.setattr(serve_app.uvicorn, "run", lambda app, **kwargs: handed.update(kwargs))
    assert main(["serve", "--checkpoint", "fer2013_resnet18", "--certfile", str(cert), "--keyfile", str(key)]) == 0
    assert (handed["ssl_certfile"], handed["ssl_keyfile"]) == (str(cert), str(key))
    assert "page at https://127.0.0.1:8000/ , API docs" in capsys.readouterr().out
    # Listening on every interface, it also names the address other devices (a phone) open.
    monkeypatch.setattr(serve_app, "network_address", lambda: "192.168.1.20")
    assert main(["serve", "--host", "0.0.0.0", "--port", "8443", "--certfile", str(cert), "--keyfile", str(key)]) == 0
    out = capsys.readouterr().out
    assert "page at https://localhost:8443/ (from other devices: https://192.168.1.20:8443/) , API docs" in out
    # A certificate TLS cannot use stops the command in one line, before the model loads.
    (tmp_path / "junk.pem").write_text("not a certificate")
    for given, why in [
        ([str(tmp_path / "junk.pem")], "not a PEM certificate with its own private key"),
        ([str(cert), "--keyfile", str(cert)], "not a PEM certificate with its own private key"),
        ([str(tmp_path / "none.pem")], "No such file or directory"),
    ]:
        assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth"), "--certfile", *given]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ferkit: error: cannot serve https:// with --certfile ") and f"({why}); give" in err
    assert main(["serve", "--keyfile", str(key)]) == 2
    assert "--keyfile is the key of a --certfile" in capsys.readouterr().err


def test_live_sessions_keep_tracks_per_tab_and_apart(predictor, astronaut):
    photo = skimage_data.astronaut()
    moved = png(np.roll(photo, -150, axis=1))  # her face where it was not before: a new person to a tracker
    # Frames 40 ms apart whatever the machine's load: a track lost for a second would get a new id.
    frames = itertools.count(step=0.04)
    sessions = Sessions(clock=lambda: next(frames))

    with (
        LiveServer(create_app(predictor, sessions=sessions)) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):

        def tracks(image: bytes, session: str | None) -> list:
            params = {"session": session} if session else {}
            response = client.post("/predict", params=params, files={"file": ("frame.png", image, "image/png")})
            assert response.status_code == 200, response.text
            return [f.get("track") for f in response.json()["results"][0]["faces"]]

        assert tracks(astronaut.read_bytes(), "tab-a") == [1]
        assert tracks(astronaut.read_bytes(), "tab-a") == [1]  # the same person, still in view
        assert tracks(moved, "tab-b") == [1]  # another tab starts its own tracks
        assert tracks(moved, "tab-a") == [2]
        assert tracks(astronaut.read_bytes(), None) == [None]  # an upload is not tracked
        bad = client.post("/predict?session=a%20b", files={"file": ("f.png", moved, "image/png")})
        assert bad.status_code == 422


def test_sessions_expire_after_their_idle_time_and_beyond_the_limit():
    now = [0.0]
    sessions = Sessions(idle_s=60, limit=2, clock=lambda: now[0])
    face = Face([10, 10, 50, 50], "Happy", 0.9, {c: 1 / len(CLASSES) for c in CLASSES})
    sessions.track("a", [face])
    now[0] = 30.0
    sessions.track("b", [face])
    now[0] = 70.0
    sessions.track("b", [face])
    assert len(sessions) == 1  # a: 70 s without a frame
    sessions.track("c", [face])
    sessions.track("d", [face])
    assert len(sessions) == 2
