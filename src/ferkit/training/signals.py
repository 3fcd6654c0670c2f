"""The stop signals (Ctrl-C, SIGTERM) after which a run saves ``last.pth`` and ends, and how processes agree on them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from .. import distributed as dist
from ..data.loaders import STOP_SIGNALS


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""
    requested: list[int] = []
    handler = lambda signum, _frame: requested.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def agreed_stop(stop: list[int]) -> int:
    """The signal that stops the run (0: none), agreed so that every process stops after the same step."""
    return dist.max_over_ranks(stop[0] if stop else 0)
