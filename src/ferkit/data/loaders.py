"""DataLoaders whose worker processes leave the stop signals (Ctrl-C, SIGTERM) to the main process.

Ctrl-C in a terminal, ``timeout`` and job schedulers signal every process of the group. A worker that died of
such a signal would end a run with "DataLoader worker ... killed by signal" before the main process could save,
so each worker leaves the group as it starts. A signal can still arrive between the fork and that moment (PyTorch
installs a SIGTERM handler in the worker that kills it first), so the main process holds the stop signals while
it forks the workers: they reach the main process as soon as the workers exist, and each worker drops the ones
sent to the group it has left. On Linux the workers are forked from the main process even where Python's default
start method is another (forkserver from Python 3.14): a worker started by a fork server inherits no held signals.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import FerkitError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_batching(batch_size: int | None, workers: int = 0) -> None:
    """``--batch-size`` and ``--workers`` as they may be given (a batch size of None: the dataset gives batches)."""
    if batch_size is not None and batch_size < 1:
        raise FerkitError(f"--batch-size {batch_size}: 1 or more images a batch")
    if workers < 0:
        raise FerkitError(f"--workers {workers}: 0 (load in this process) or more worker processes")


def make_loader(dataset: Dataset, batch_size: int | None, workers: int, device: torch.device, **kw) -> DataLoader:
    """A loader for :func:`batches_of`; its workers leave the stop signals to the main process."""
    check_batching(batch_size, workers)
    if workers > 0 and sys.platform.startswith("linux"):
        kw.setdefault("multiprocessing_context", "fork")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=leave_stop_signals_to_the_main_process,
        **kw,
    )


def batches_of(loader: DataLoader) -> Iterator:
    """The loader's batches, its worker processes shut down as soon as the iteration ends, however it ends.

    An iterator that an error stops (an unreadable image) stays referenced from the error's traceback; freed later
    by the garbage collector, after its own queues, it can no longer tell its workers to exit, and PyTorch waits
    5 s for each before ending it: a run stopped by an error would keep the command waiting that long.
    """
    batches = None
    try:
        with stop_signals_held():  # the workers are forked here
            batches = iter(loader)
        yield from batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # PyTorch's own clean-up; a no-op once done
        if shutdown is not None:
            shutdown()


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM in this thread, and in the processes it forks, until the block ends; then they arrive."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves the process group, so that a stop signal to the group reaches
    only the main process, which finishes its step, saves and shuts the workers down; a worker still exits on its
    own when the main process dies (DataLoader workers watch their parent)."""
    os.setpgrp()
    for s in STOP_SIGNALS:
        # Ignoring a signal discards it if pending: one sent to the old group while the fork held it.
        signal.signal(s, signal.SIG_IGN)
        # Not ignored for good: that made workers immune to the SIGTERM with which PyTorch ends a worker that misses
        # its shutdown message, and under load the main process then waited for one forever at exit.
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
