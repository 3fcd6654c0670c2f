"""Inputs named by address: photos fetched over HTTP(S), and the addresses of videos and live streams.

A photo's address is fetched into memory (nothing is written to disk) and decoded as a file's bytes would be; videos
and live streams (``rtsp://`` cameras, say) are left to OpenCV, which reads them from their address itself.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from pathlib import PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import FerkitError

WEB_SCHEMES = ("http", "https")
# Protocols of cameras and live video: read until Ctrl-C, as a camera is.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp")
MAX_FETCH_MB = 50  # a 12-MP phone photo is under 10 MB; a larger answer is more likely a mistake than a photo
FETCH_TIMEOUT_S = 30.0


ADDRESS = re.compile(rf"({'|'.join((*WEB_SCHEMES, *STREAM_SCHEMES))})://[^/?#]", re.IGNORECASE)


def is_url(source: object) -> bool:
    """Whether ``source`` is a string naming a web address or a stream's (a path never is); one that is not a valid
    address is still one, for :func:`split` to say what is wrong with it."""
    return isinstance(source, str) and ADDRESS.match(source) is not None


def split(url: str) -> SplitResult:
    """An address's parts, or a one-line error naming the address and what is wrong with it."""
    try:
        return urlsplit(url)
    except ValueError as e:
        raise FerkitError(f"{url} is not a valid address ({e}); check it") from None


def as_local(source: str | os.PathLike) -> str | os.PathLike:
    """A ``file://`` address (what a browser's address bar or a file manager copies) as its path; anything else
    as it is."""
    if isinstance(source, str) and source[:7].lower() == "file://":
        parts = urlsplit(source)
        if parts.netloc in ("", "localhost"):
            from urllib.request import url2pathname  # not at import: urllib.request brings http and ssl

            return url2pathname(parts.path)
    return source


def is_stream_url(source: object) -> bool:
    """Whether ``source`` is the address of a live stream (a network camera), which has no end."""
    return is_url(source) and source.partition(":")[0].lower() in STREAM_SCHEMES


def url_path(url: str) -> PurePosixPath:
    """The path part of an address (``/a/photo.jpg``), whose suffix says what it holds."""
    return PurePosixPath(unquote(split(url).path))


def url_name(url: str) -> str:
    """A file name for what an address holds: its last path part, else its host (``rtsp://cam/`` -> ``cam``)."""
    return url_path(url).name or split(url).hostname or "stream"


# Query parameters whose values are secrets: cameras' logins (``?user=admin&password=...``), signed addresses' tokens.
SECRET_PARAMETERS = re.compile(r"pass|pwd|token|secret|key|sig|auth|credential", re.IGNORECASE)


def shown(url: str) -> str:
    """The address as outputs and messages show it: without the password a camera's address often carries, in its
    login or its query (``***`` in their place)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not an address to take apart; fetching it says so
        return url
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}")
    if parts.query:
        pairs = [pair.partition("=") for pair in parts.query.split("&")]
        query = "&".join(k + (f"={'***' if SECRET_PARAMETERS.search(k) else v}" if eq else "") for k, eq, v in pairs)
        parts = parts._replace(query=query)
    return parts.geturl()


# A busy server (429, 502, 503, 504) or a connection dropped mid-answer is asked again, twice, after 1 and 2 s (or
# the Retry-After it gives, up to RETRY_AFTER_MAX_S); a dead host, a refusal, an HTTP error or a timeout is not.
FETCH_TRIES = 3
RETRY_AFTER_MAX_S = 10.0
BUSY = (429, 502, 503, 504)


class _Passing(FerkitError):
    """A failure that may pass on its own; ``wait``: the seconds the server asked for, if it did."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def fetch(
    url: str, max_bytes: int = MAX_FETCH_MB * 1024 * 1024, timeout: float = FETCH_TIMEOUT_S, first: int | None = None
) -> bytes:
    """The bytes an HTTP(S) address serves, or a FerkitError naming what went wrong and what to do; a busy server
    or a dropped connection is tried again (``FETCH_TRIES`` in all). ``first``: only that many bytes from the start
    (asked for with a Range header; of a server that sends more, no more are read)."""
    import time
    import urllib.request  # here: its import (http, email, ssl) is paid by the runs that fetch

    parts, headers = split(url), {"User-Agent": _user_agent()}
    if parts.scheme.lower() not in WEB_SCHEMES:
        raise FerkitError(f"{shown(url)} is a stream's address, not a photo's; photos are fetched over http(s)")
    if parts.username is not None:
        # A camera's snapshot address carries its login (http://user:pass@camera/snapshot.jpg); urllib does not
        # send it by itself.
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if first:
        headers["Range"] = f"bytes=0-{first - 1}"
    request = urllib.request.Request(url, headers=headers)
    for attempt in range(1, FETCH_TRIES + 1):
        try:
            data = _fetch_once(request, first or max_bytes + 1, timeout)
            break
        except _Passing as e:
            wait = 2.0 ** (attempt - 1) if e.wait is None else e.wait
            if attempt == FETCH_TRIES or wait > RETRY_AFTER_MAX_S:
                raise FerkitError(f"{e} (asked {attempt} time{'s' if attempt > 1 else ''})") from None
            time.sleep(wait)
    if not first and len(data) > max_bytes:
        raise FerkitError(
            f"{shown(url)} serves more than {max_bytes / 2**20:g} MB, more than a photo; download it and give the file"
        )
    return data


def _fetch_once(request, most: int, timeout: float) -> bytes:
    import http.client
    import urllib.error
    import urllib.request

    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            kind = answer.headers.get_content_type()
            if kind in ("text/html", "application/xhtml+xml"):
                raise FerkitError(
                    f"{shown(url)} is a web page ({kind}), not a photo or a video; give the file's own address "
                    "(for a photo in a browser: right-click it, Copy image address)"
                )
            if kind.startswith("video/"):  # an address without a video's suffix is taken for a photo's
                raise FerkitError(
                    f"{shown(url)} serves a video ({kind}), and its address does not end as a video's (.mp4, ...); "
                    "download it and give the file"
                )
            return answer.read(most)
    except urllib.error.HTTPError as e:
        if e.code in BUSY:
            why = f"cannot fetch {shown(url)}: HTTP {e.code} {e.reason}; the server is busy, try again later"
            raise _Passing(why, _retry_after(e.headers.get("Retry-After"))) from None
        fix = "give the login in the address: http://user:password@host/..." if e.code == 401 else "check the address"
        raise FerkitError(f"cannot fetch {shown(url)}: HTTP {e.code} {e.reason}; {fix}") from None
    except urllib.error.URLError as e:
        raise FerkitError(
            f"cannot fetch {shown(url)}: {_reason(e.reason)}; check the address and the network"
        ) from None
    except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
        raise FerkitError(f"cannot fetch {shown(url)}: no answer within {timeout:g} s; try again later") from None
    except (ValueError, http.client.InvalidURL) as e:  # what urlsplit let through: a space, a port not a number
        raise FerkitError(f"{shown(url)} is not a valid address ({e}); check it") from None
    except (OSError, http.client.HTTPException) as e:  # the connection dropped while the photo came
        raise _Passing(f"cannot fetch {shown(url)}: {type(e).__name__}: {e}; try again") from None


def _retry_after(value: str | None) -> float | None:
    """Retry-After's seconds (its HTTP-date form is taken as absent)."""
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    return str(getattr(reason, "strerror", None) or reason)


@functools.cache
def _user_agent() -> str:
    # Some sites refuse Python's default agent; this one says who asks.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ferkit/{version('ferkit')}"
    except PackageNotFoundError:
        return "ferkit"
