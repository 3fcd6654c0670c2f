"""Photos, videos and live streams named by their address: `ferkit predict https://...` and `rtsp://...`."""

from __future__ import annotations

import base64
import csv
import http.server
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, iou, write_animation, write_video
from PIL import Image

from ferkit.cli import main
from ferkit.data.images import FORMATS, read_image
from ferkit.data.urls import fetch, is_stream_url, is_url, shown
from ferkit.errors import FerkitError
from ferkit.inference import video as video_module
from ferkit.inference.predict import Predictor, split_sources
from ferkit.inference.video import Video, VideoWriter, is_live, is_video_url

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

LOGIN = ("admin", "s3cret")


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading early (a refused large answer) is what some tests do


class Site:
    """A web server on this machine serving a folder, which records each request (path, Authorization header; and
    apart, path and Range header).

    ``/page`` is a web page, ``/login/...`` needs ``LOGIN`` (basic authentication), ``/clip`` a video without a
    suffix, anything missing is a 404. ``/busy/N/S/...`` answers 503 to its first N requests (with Retry-After: S
    unless S is "-") and ``/drop/...`` closes its first connection without an answer; then each serves the file."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests, self.ranges = folder, [], []
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):
                site.requests.append((self.path, self.headers.get("Authorization")))
                site.ranges.append((self.path, self.headers.get("Range")))
                if self.path == "/page":
                    body = b"<html><body><img src='/astronaut.png'></body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path.startswith("/login/"):
                    expected = "Basic " + base64.b64encode(":".join(LOGIN).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_error(401)
                        return
                    self.path = self.path.removeprefix("/login")
                if self.path.startswith("/busy/"):
                    _, _, times, after, rest = self.path.split("/", 4)
                    if site.requested(self.path) <= int(times):
                        self.send_response(503)
                        if after != "-":
                            self.send_header("Retry-After", after)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.path = "/" + rest
                if self.path.startswith("/drop/"):
                    if site.requested(self.path) == 1:
                        self.close_connection = True
                        return  # no status line: the client sees the connection end
                    self.path = self.path.removeprefix("/drop")
                super().do_GET()

            def guess_type(self, path):
                # A CDN's address often has no suffix; its answer says what it is.
                return "video/x-msvideo" if str(path).endswith("clip") else super().guess_type(path)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requested(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint) -> Path:
    return untrained_checkpoint


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    (folder / "notes.jpg").write_bytes(b"not a picture")
    write_video([skimage_data.astronaut()] * 4, folder / "clip.avi")
    frames = [np.roll(skimage_data.astronaut(), 6 * i, axis=1) for i in range(4)]
    write_animation(frames, folder / "reaction.gif", [100, 300, 100, 100])
    (folder / "page.gif").write_bytes(b"<html>a page about a GIF</html>")
    (folder / "clip").write_bytes((folder / "clip.avi").read_bytes())  # served as what it is, by its content
    served = Site(folder)
    yield served
    served.server.shutdown()


def test_a_photos_address_reads_as_the_file_does_from_python_and_the_command_line(checkpoint, site, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint)
    url = site.url + "/astronaut.png"
    by_url, by_path = predictor.predict(url), predictor.predict(site.folder / "astronaut.png")
    assert by_url.source == url and by_url.error is None
    assert [(f.box, f.probabilities) for f in by_url.faces] == [(f.box, f.probabilities) for f in by_path.faces]
    assert len(by_url.faces) == 1 and iou(by_url.faces[0].box, ASTRONAUT_FACE) > 0.6

    out, drawn = tmp_path / "out.json", tmp_path / "drawn"
    drawn.mkdir()
    argv = ["predict", url, "--checkpoint", str(checkpoint), "--json", str(out), "--annotate", str(drawn)]
    assert main(argv) == 0
    [result] = json.loads(out.read_text())["results"]
    assert result["source"] == url and len(result["faces"]) == 1
    assert [p.name for p in drawn.iterdir()] == ["astronaut.png"]  # named after the address's file
    assert Image.open(drawn / "astronaut.png").size == (512, 512)


def test_a_gifs_address_is_fetched_and_read_as_an_animation(checkpoint, site, tmp_path, caplog):
    url, out = site.url + "/reaction.gif", tmp_path / "out.json"
    argv = ["predict", "--checkpoint", str(checkpoint), "--json", str(out)]
    assert main([*argv, url]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["source"], r["frame"], r["time_s"]) for r in results] == [
        (url, 0, 0.0),
        (url, 1, 0.1),
        (url, 2, 0.4),
        (url, 3, 0.5),
    ]
    assert all(len(r["faces"]) == 1 and r["faces"][0]["track"] == 1 for r in results)
    # A web page where the GIF should be, and a missing one: each its one-line reason; the other is still read.
    assert main([*argv, site.url + "/page.gif", site.url + "/gone.gif", url]) == 1
    rows = json.loads(out.read_text())["results"]
    errors = {r["source"].rsplit("/", 1)[1]: r["error"] for r in rows if r.get("error")}
    assert errors["page.gif"].endswith("/page.gif: not an image format PIL can decode; pass a " + FORMATS + " image")
    assert "404" in errors["gone.gif"]
    assert [r["frame"] for r in rows if r["source"] == url] == [0, 1, 2, 3]
    # A still GIF's address is a photo, told by its first bytes (asked for alone), as a still GIF file is.
    Image.fromarray(skimage_data.astronaut()[::4, ::4]).save(site.folder / "still.gif")
    assert split_sources([site.url + "/still.gif"]) == ([site.url + "/still.gif"], [])
    assert ("/still.gif", "bytes=0-65535") in site.ranges
    assert main([*argv, site.url + "/still.gif"]) == 0
    assert [r.get("frame") for r in json.loads(out.read_text())["results"]] == [None]


def test_an_animated_png_or_webp_address_is_told_by_its_first_bytes_and_read_as_an_animation(
    checkpoint, site, tmp_path
):
    frames = [np.roll(skimage_data.astronaut(), 6 * i, axis=1) for i in range(4)]
    for suffix in (".png", ".webp"):
        write_animation(frames, site.folder / f"sticker{suffix}", [100, 300, 100, 100])
    Image.fromarray(frames[0]).save(site.folder / "still.webp")
    names = ["sticker.png", "sticker.webp", "astronaut.png", "still.webp", "missing.png"]
    urls = [f"{site.url}/{name}" for name in names]
    images, videos = split_sources(urls)
    assert videos == urls[:2] and images == urls[2:]  # the missing one is reported when read, as a photo
    # Each asked for its first bytes alone.
    asked = {path: value for path, value in site.ranges if value}
    assert all(asked[f"/{name}"] == "bytes=0-65535" for name in names[:4])
    out = tmp_path / "out.json"
    assert main(["predict", "--checkpoint", str(checkpoint), "--json", str(out), urls[1]]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["source"], r["frame"], r["time_s"]) for r in results] == [
        (urls[1], 0, 0.0),
        (urls[1], 1, 0.1),
        (urls[1], 2, 0.4),
        (urls[1], 3, 0.5),
    ]


def test_addresses_that_give_no_photo_are_one_line_errors_naming_the_fix_and_the_rest_are_still_read(
    checkpoint, site, tmp_path, capsys
):
    refused = "http://127.0.0.1:1/photo.jpg"  # nothing listens on port 1
    urls = [site.url + p for p in ("/missing.jpg", "/page", "/notes.jpg", "/astronaut.png", "/clip")] + [refused]
    out = tmp_path / "out.json"
    assert main(["predict", *urls, "--checkpoint", str(checkpoint), "--json", str(out)]) == 1  # some failed
    errors = {r["source"]: r.get("error") for r in json.loads(out.read_text())["results"]}
    assert errors == {
        urls[0]: f"cannot fetch {urls[0]}: HTTP 404 File not found; check the address",
        urls[1]: f"{urls[1]} is a web page (text/html), not a photo or a video; give the file's own address (for a "
        "photo in a browser: right-click it, Copy image address)",
        urls[2]: f"cannot read {urls[2]}: not an image format PIL can decode; pass a JPEG, PNG, BMP, GIF, TIFF, WebP, "
        "AVIF or HEIC image",
        urls[3]: None,
        urls[4]: f"{urls[4]} serves a video (video/x-msvideo), and its address does not end as a video's (.mp4, ...); "
        "download it and give the file",
        refused: f"cannot fetch {refused}: Connection refused; check the address and the network",
    }
    assert all("\n" not in e for e in errors.values() if e)
    # Drawn, an address that gives no photo is still asked for once: a dead host's 30 s are not waited twice.
    before = site.requested("/missing.jpg")
    drawn = tmp_path / "drawn"
    assert main(["predict", urls[0], urls[3], "--checkpoint", str(checkpoint), "--annotate", f"{drawn}/"]) == 1
    assert site.requested("/missing.jpg") - before == 1
    assert [p.name for p in drawn.iterdir()] == ["astronaut.png"]
    spaced = site.url + "/a b.jpg"  # as typed, not as a browser copies it (a%20b.jpg)
    assert Predictor.from_checkpoint(checkpoint).predict(spaced).error == (
        f"{spaced} is not a valid address (URL can't contain control characters. '/a b.jpg' (found at least ' ')); "
        "check it"
    )
    assert main(["predict", "http://[::1/photo.jpg", "--checkpoint", str(checkpoint)]) == 2
    assert "http://[::1/photo.jpg is not a valid address (Invalid IPv6 URL); check it" in capsys.readouterr().err


def test_a_cameras_login_in_the_address_is_sent_and_never_shown(checkpoint, site):
    predictor = Predictor.from_checkpoint(checkpoint)
    host = site.url.removeprefix("http://")
    result = predictor.predict(f"http://{LOGIN[0]}:{LOGIN[1]}@{host}/login/astronaut.png")
    assert result.error is None and len(result.faces) == 1
    assert result.source == f"http://admin:***@{host}/login/astronaut.png"
    assert site.requests[-1] == ("/login/astronaut.png", "Basic " + base64.b64encode(b"admin:s3cret").decode())
    wrong = predictor.predict(f"http://admin:guess@{host}/login/astronaut.png")
    assert wrong.error == (
        f"cannot fetch http://{host}/login/astronaut.png: HTTP 401 Unauthorized; give the login in the address: "
        "http://user:password@host/..."
    )
    assert "guess" not in wrong.source + wrong.error


def test_an_answer_larger_than_the_limit_is_refused_before_it_is_all_read(site):
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(site.folder / "huge.png")  # about 1.9 MB: PNG cannot shrink noise
    url = site.url + "/huge.png"
    assert len(fetch(url)) == (site.folder / "huge.png").stat().st_size
    with pytest.raises(FerkitError, match=r"serves more than 1 MB, more than a photo; download it and give the file"):
        fetch(url, max_bytes=2**20)


def test_a_busy_server_or_a_dropped_connection_is_asked_again_and_nothing_else_is(site, monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    photo = (site.folder / "astronaut.png").read_bytes()
    assert fetch(site.url + "/busy/1/-/astronaut.png") == photo and waits == [1.0]
    assert site.requested("/busy/1/-/astronaut.png") == 2
    assert fetch(site.url + "/drop/astronaut.png") == photo and waits == [1.0, 1.0]
    assert site.requested("/drop/astronaut.png") == 2
    waits.clear()  # busy throughout: three tries, waiting as long as the server asks
    with pytest.raises(FerkitError) as busy:
        fetch(site.url + "/busy/9/3/astronaut.png")
    assert str(busy.value) == (
        f"cannot fetch {site.url}/busy/9/3/astronaut.png: HTTP 503 Service Unavailable; the server is busy, "
        "try again later (asked 3 times)"
    )
    assert waits == [3.0, 3.0] and site.requested("/busy/9/3/astronaut.png") == 3
    waits.clear()  # a wait longer than a photo is worth: said at once
    with pytest.raises(FerkitError, match=r"the server is busy, try again later \(asked 1 time\)$"):
        fetch(site.url + "/busy/9/120/astronaut.png")
    assert waits == [] and site.requested("/busy/9/120/astronaut.png") == 1
    with pytest.raises(FerkitError, match="HTTP 404"):  # an answer that will not change is not asked again
        fetch(site.url + "/gone.png")
    assert waits == [] and site.requested("/gone.png") == 1


def test_a_videos_address_is_tracked_frame_by_frame_from_one_request(checkpoint, site, tmp_path):
    url = site.url + "/clip.avi"
    out, summary = tmp_path / "frames.csv", tmp_path / "people.json"
    before = site.requested("/clip.avi")
    assert main(["predict", url, "--checkpoint", str(checkpoint), "--csv", str(out), "--summary", str(summary)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2, 3]
    assert {r["source"] for r in rows} == {url}
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3])  # the file's 10 fps
    assert [t["source"] for t in json.loads(summary.read_text())["tracks"]] == [url]
    # Opened once: a stream that can only be read once (a live one) is read, and nothing is downloaded twice.
    assert site.requested("/clip.avi") - before == 1


def test_an_mp4_whose_server_cannot_send_parts_is_said_to_need_downloading(checkpoint, site, tmp_path, caplog):
    # OpenCV writes an MP4's index after its frames, as phones do; the test server ignores Range, as some do.
    frames = [np.roll(skimage_data.astronaut(), 3 * i, axis=1) for i in range(20)]  # more than FFmpeg's first read
    write_video(frames, site.folder / "phone.mp4", fourcc="mp4v")
    url = site.url + "/phone.mp4"
    with caplog.at_level(logging.WARNING, logger="ferkit"):
        main(["predict", url, "--checkpoint", str(checkpoint), "--json", str(tmp_path / "out.json")])
    assert (
        f"{url} ended after frame 0 of the 20 its header states: the file may be cut short, or its server may not send "
        "parts of a file (HTTP Range), which an MP4 whose index comes last needs: download it and give the file; the "
        "frames read are kept"
    ) in caplog.messages


def test_inputs_are_sorted_into_photos_videos_and_live_streams(tmp_path):
    photo = tmp_path / "a.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    video = write_video([skimage_data.astronaut()] * 2, tmp_path / "b.avi")
    given = [
        str(photo),
        str(video),
        "https://example.com/photos/c.jpg?size=large",
        "https://example.com/d",  # no suffix: fetched, and read if it is a photo
        "https://example.com/clips/e.MP4?token=1",
        "https://example.com/live/f.m3u8",
        "rtsp://admin:pw@192.168.1.20:554/stream1",
        "https://example.com/photos/c.jpg?size=large",  # twice: read once
        photo.as_uri(),  # as a file manager copies it: the same file, read once
    ]
    images, videos = split_sources(given)
    assert images == [photo, given[2], given[3]]
    assert videos == [str(video), given[4], given[5], given[6]]
    assert [is_live(v) for v in videos] == [False, False, False, True] and is_live(0)
    assert [is_video_url(v) for v in videos] == [False, True, True, True]
    assert is_url("https://x/y.jpg") and not is_url("C:/photos/y.jpg") and not is_url(Path("https://x/y.jpg"))
    assert is_stream_url("rtmp://host/app") and not is_stream_url("https://host/live.m3u8")
    assert shown("rtsp://admin:pw@192.168.1.20:554/stream1") == "rtsp://admin:***@192.168.1.20:554/stream1"
    assert shown("https://example.com/d") == "https://example.com/d"
    assert shown("rtsp://cam/live?channel=1&user=admin&password=pw&token") == (
        "rtsp://cam/live?channel=1&user=admin&password=***&token"
    )
    assert shown("https://cdn.example.com/a.jpg?X-Amz-Signature=abc&size=2") == (
        "https://cdn.example.com/a.jpg?X-Amz-Signature=***&size=2"
    )
    spaced = tmp_path / "my photo.png"
    spaced.write_bytes(photo.read_bytes())
    assert np.array_equal(read_image(spaced.as_uri()), read_image(photo))  # file:///.../my%20photo.png


class _Camera:
    """A network camera for cv2.VideoCapture, played from ``connections``: per connection, how many frames of the
    astronaut it gives and how it then ends ("ctrl-c": the user stops; "drop": the network drops); a connection past
    the list does not open. Files open as usual."""

    opened: list = []
    connections: list = []
    asked: threading.Semaphore  # released each time a frame is asked for: a camera slower than the classifier

    def __new__(cls, source, *args):
        if not (isinstance(source, str) and source.startswith("rtsp://")):
            return _RealCapture(source, *args)
        return super().__new__(cls)

    def __init__(self, source, *args):
        n = len(self.opened)
        self.opened.append(source)
        self.left, self.end = self.connections[n] if n < len(self.connections) else (0, None)

    def isOpened(self):
        return self.end is not None

    def get(self, prop):
        return 90000.0 if prop == cv2.CAP_PROP_FPS else 0.0  # RTSP's clock rate, as some cameras report it

    def read(self):
        if not self.left:
            if self.end == "ctrl-c":  # as a real Ctrl-C comes: a signal to the process, whatever thread reads
                self.asked.acquire()
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            return False, None
        self.asked.acquire()
        self.left -= 1
        return True, cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)

    def release(self):
        pass


_RealCapture = cv2.VideoCapture


@pytest.fixture
def camera(monkeypatch):
    """cv2.VideoCapture as ``_Camera`` for rtsp addresses, giving a frame only once one is asked for."""
    monkeypatch.setattr(cv2, "VideoCapture", _Camera)
    monkeypatch.setattr(_Camera, "opened", [])
    monkeypatch.setattr(_Camera, "asked", threading.Semaphore(0), raising=False)
    take = video_module._Reader.take

    def asking(reader, at_least):
        _Camera.asked.release()
        return take(reader, at_least)

    monkeypatch.setattr(video_module._Reader, "take", asking)
    # Its "ctrl-c" is a real SIGINT: Python's handler must be the one in place, however this process was started (a
    # shell's background job starts with SIGINT ignored, and Python then leaves it so).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield _Camera
    signal.signal(signal.SIGINT, previous)


class _Paced:
    """A camera whose frames come when the test lets them (``gate``): frame k is an image of grey level k; after
    ``total`` frames it ends."""

    def __init__(self, total: int) -> None:
        self.gate, self.total, self.given, self.reads, self.released = threading.Semaphore(0), total, 0, 0, False

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        self.reads += 1
        self.gate.acquire()
        if self.given == self.total:
            return False, None
        self.given += 1
        return True, np.full((4, 4, 3), self.given - 1, np.uint8)

    def release(self):
        self.released = True


@pytest.fixture
def paced(monkeypatch):
    """Camera 0 as a ``_Paced`` camera of ``total`` frames, whose first frame is let through."""

    def opened(total: int) -> _Paced:
        camera = _Paced(total)
        monkeypatch.setattr(cv2, "VideoCapture", lambda source, *args: camera)
        camera.gate.release()
        return camera

    return opened


def _until(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the reading thread did not get there"
        time.sleep(0.005)


def test_a_live_source_gives_its_newest_frame_and_drops_those_that_came_meanwhile(paced):
    camera = paced(total=12)
    with Video(0) as video:
        frames = video.frames(every=3)
        got = [next(frames)]  # frame 0
        camera.gate.release(4)  # frames 1-4 come while frame 0 is classified
        _until(lambda: camera.reads == 6)  # frame 4 is in, and the camera is waited on for frame 5
        got.append(next(frames))  # the newest, not frame 1 (nor 3, the third after 0)
        camera.gate.release(20)  # frames 5-11, then the camera ends
        got += list(frames)
    assert [index for index, _, _ in got] == [0, 4, 11]
    assert [int(rgb[0, 0, 0]) for _, _, rgb in got] == [0, 4, 11]  # each index's own image
    times = [t for _, t, _ in got]
    assert times == sorted(times) and times[-1] < 10  # when each was read, by the wall clock
    assert camera.released  # by the reading thread, the one that used it


def test_a_live_source_that_fails_inside_opencv_ends_with_a_warning_and_its_frames_kept(paced, caplog):
    camera = paced(total=5)
    reads = camera.read

    def failing():
        if camera.given == 2:
            raise cv2.error("OpenCV(5.1.0) cap_ffmpeg: could not decode the packet")
        return reads()

    camera.read = failing
    camera.gate.release(5)
    caplog.set_level(logging.WARNING, logger="ferkit")
    with Video(0) as video:
        got = [index for index, _, _ in video.frames()]
    assert got and set(got) <= {0, 1} and got[-1] == 1 and camera.released
    assert [r.getMessage() for r in caplog.records] == [
        "camera 0: reading stopped: OpenCV(5.1.0) cap_ffmpeg: could not decode the packet"
    ]


def test_a_live_source_asks_at_least_every_frames_on_and_is_read_once(paced):
    camera = paced(total=3)
    with Video(0) as video:
        frames = video.frames(every=5)
        assert next(frames)[0] == 0
        camera.gate.release(3)  # frames 1 and 2, then the end: none is 5 frames after frame 0
        assert list(frames) == []
        with pytest.raises(FerkitError, match=r"camera 0 is read once per opening; open it again"):
            next(video.frames())
    assert camera.released


def test_a_live_stream_is_read_as_a_camera_is_until_ctrl_c_and_its_password_never_shown(
    checkpoint, tmp_path, monkeypatch, capsys, camera
):
    monkeypatch.setattr(camera, "connections", [(3, "ctrl-c")])
    address = "rtsp://admin:s3cret@cam.local:554/live"
    out, drawn = tmp_path / "out.json", tmp_path / "drawn"
    argv = ["predict", address, "--checkpoint", str(checkpoint), "--json", str(out), "--annotate", str(drawn) + "/"]
    assert main(argv) == 0  # Ctrl-C is how a live stream ends, as for a camera
    printed = capsys.readouterr()
    assert camera.opened == [address]  # opened once: no second connection for its rate or length
    results = json.loads(out.read_text())["results"]
    assert [r["frame"] for r in results] == [0, 1, 2]
    times = [r["time_s"] for r in results]  # the wall clock's: its reported 90,000 frames a second are not
    assert times == sorted(times) and times[-1] < 30
    assert {r["source"] for r in results} == {"rtsp://admin:***@cam.local:554/live"}
    assert printed.out.count("rtsp://admin:***@cam.local:554/live frame ") == 3  # each frame as it comes
    assert "interrupted" not in printed.err
    assert "s3cret" not in printed.out + printed.err + out.read_text()
    assert [p.name for p in drawn.iterdir()] == ["live.mp4"]


def test_a_live_stream_that_drops_is_connected_to_again_and_ends_after_five_tries(
    checkpoint, tmp_path, monkeypatch, caplog, camera
):
    # Two frames, a drop, a connection refused, two frames more, a drop, then nothing answers.
    monkeypatch.setattr(camera, "connections", [(2, "drop"), (0, None), (2, "drop")])
    waits = []
    monkeypatch.setattr(video_module._Reader, "_pause", lambda reader, seconds: waits.append(seconds))
    caplog.set_level(logging.WARNING, logger="ferkit")
    out = tmp_path / "out.json"
    assert main(["predict", "rtsp://cam.local/live", "--checkpoint", str(checkpoint), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["frame"] for r in results] == [0, 1, 2, 3]  # counted across the connections
    assert {f["track"] for r in results for f in r["faces"]} == {1}  # the same person across the drops
    assert waits == [1, 2, 1, 2, 4, 8, 8]  # longer each try; a frame starts the count again
    assert len(camera.opened) == 8
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "rtsp://cam.local/live stopped; connecting again in 1 s (1/5)"
    assert said[-1] == "rtsp://cam.local/live: no frame after 5 tries to connect again; stopping"


def test_a_live_sources_drawing_keeps_the_pace_it_was_seen_at(tmp_path):
    writer = VideoWriter(tmp_path / "live.avi", fps=10)
    grey = [np.full((32, 32, 3), level, np.uint8) for level in (0, 100, 200)]
    for frame, at in zip(grey, (0.03, 0.5, 0.52)):  # 0.5 s between the first two; the third within that tenth
        writer.write(frame, at=at)
    writer.close()
    capture = cv2.VideoCapture(str(tmp_path / "live.avi"))
    levels = []
    while (frame := capture.read())[0]:
        levels.append(round(float(frame[1].mean()), -2))
    capture.release()
    # The first frame held until the second's time (half a second at 10 frames a second); the third, seen in the
    # same tenth of a second as the second, in its place.
    assert levels == [0, 0, 0, 0, 0, 200] and writer.written == 6


def test_a_stream_closed_while_it_waits_to_connect_again_is_left_at_once(camera, monkeypatch):
    monkeypatch.setattr(camera, "connections", [(1, "drop")])  # a frame, then the network drops
    started = time.monotonic()
    with Video("rtsp://cam.local/live") as video:
        frames = video.frames()
        assert next(frames)[0] == 0
        time.sleep(0.2)  # the reading thread has found the drop and waits 1 s to connect again
    # Closed during the wait: no second connection, and no wait for the rest of it.
    assert len(camera.opened) == 1 and time.monotonic() - started < 0.9


def test_a_file_that_ends_is_not_opened_again(checkpoint, site, monkeypatch):
    opened = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args: opened.append(args) or _RealCapture(*args))
    with Video(str(site.folder / "clip.avi")) as video:
        assert len(list(video.frames())) == 4
    assert len(opened) == 1


def test_a_stream_that_cannot_be_opened_is_reported_in_one_line_without_its_password(checkpoint, capsys):
    assert main(["predict", "rtsp://admin:s3cret@127.0.0.1:1/live", "--checkpoint", str(checkpoint)]) == 1
    printed = capsys.readouterr()
    assert "cannot open rtsp://admin:***@127.0.0.1:1/live; check the address and that the camera" in printed.out
    assert "s3cret" not in printed.out + printed.err
