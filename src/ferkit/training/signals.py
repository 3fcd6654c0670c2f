"""The stop signals (Ctrl-C, SIGTERM) after which a run saves ``last.pth`` and ends, and how processes agree on them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from .. import distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves the process group, so that Ctrl-C and a SIGTERM to the group
    (``timeout``, job schedulers) reach only the main process, which finishes its step, saves and shuts the workers
    down; a worker still exits on its own when the main process dies (DataLoader workers watch their parent)."""
    # Workers used to ignore the two signals instead, which made them immune to the SIGTERM with which PyTorch ends a
    # worker that misses its shutdown message: under load the main process then waited for one forever at exit.
    os.setpgrp()
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


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
