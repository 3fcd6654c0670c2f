"""Faults a real run meets: SIGKILL at any moment, a full disk, unreadable images."""

import errno
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.utils.data._utils.signal_handling as worker_signals
from conftest import TINY, flags, make_image_folder, tiny, weights

import ferkit.checkpoint as checkpoint_mod
from ferkit.checkpoint import read_checkpoint
from ferkit.data.loaders import batches_of, leave_stop_signals_to_the_main_process, make_loader, stop_signals_held
from ferkit.errors import FerkitError
from ferkit.training.loop import train
from ferkit.training.signals import stop_requests

# Enough epochs that a kill after epoch 1 to EPOCHS - 3 always lands before the run finishes, on any machine.
EPOCHS = 8
TRAIN_ARGS = flags({**TINY, "epochs": EPOCHS, "seed": 5})


def run_cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ferkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def epochs_done(run) -> int:
    """Rows of metrics.csv: one per finished epoch."""
    metrics = run / "metrics.csv"
    return max(metrics.read_text().count("\n") - 1, 0) if metrics.exists() else 0


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The data, and an uninterrupted run on it that every killed run must end up matching."""
    root = tmp_path_factory.mktemp("sigkill")
    data = make_image_folder(root / "fer")
    assert run_cli("train", "--data", str(data), "--out", str(root / "reference"), *TRAIN_ARGS).wait() == 0
    return data, root / "reference"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_loses_nothing(reference_run, tmp_path, seed):
    data, reference = reference_run
    run = tmp_path / "killed"
    proc = run_cli("train", "--data", str(data), "--out", str(run), *TRAIN_ARGS)
    # Kill at a random moment of a random epoch after the first: counted in epochs, so that a fast machine does
    # not finish the run before the kill, with at least two epochs and the report still to go.
    rng = random.Random(seed)
    after = rng.randint(1, EPOCHS - 3)
    deadline = time.monotonic() + 300
    while epochs_done(run) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out[-2000:]  # died by the kill, not of its own accord
    assert not (run / "report.json").exists()  # before training finished
    assert read_checkpoint(run / "last.pth")["state"]["epoch"] < EPOCHS  # a completed epoch's, never half-written
    if (run / "best.pth").exists():
        read_checkpoint(run / "best.pth")
    assert run_cli("train", "--resume", str(run)).wait() == 0
    assert not [p.name for p in run.iterdir() if p.suffix == ".tmp"]  # stale temporary files are cleared
    ref, got = weights(reference), weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_sigterm_saves_and_prints_how_to_resume(image_folder, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "--data", str(image_folder), "--out", str(run), *TRAIN_ARGS, "--epochs", "50")
    deadline = time.monotonic() + 120
    while not (run / "last.pth").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted by SIGTERM" in out and f"ferkit train --resume {run}" in out
    assert read_checkpoint(run / "last.pth")["state"]["epoch"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_still_saves(image_folder, tmp_path, signum):
    # Ctrl-C in a terminal, `timeout` and job schedulers signal every process of the group, DataLoader workers
    # included; a worker dying of it first used to end the run with "DataLoader worker ... killed by signal".
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "--data",
        str(image_folder),
        "--out",
        str(run),
        *TRAIN_ARGS,
        "--epochs",
        "50",
        "--workers",
        "2",
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.pth").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch, while the workers are serving batches
    os.killpg(proc.pid, signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}" in out and "killed by signal" not in out
    assert read_checkpoint(run / "last.pth")["state"]["epoch"] >= 1


def test_full_disk_keeps_earlier_checkpoints(image_folder, tmp_path, monkeypatch):
    cfg = tiny(image_folder, tmp_path / "run", epochs=2)
    real_save = torch.save
    writes = {"n": 0}

    def disk_fills_up(obj, f, *a, **k):
        writes["n"] += 1
        if writes["n"] > 2:  # epoch 1 wrote best.pth and last.pth; the disk is full from then on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint_mod.torch, "save", disk_fills_up)
    with pytest.raises(FerkitError, match="No space left on device; earlier checkpoints .* are intact"):
        train(cfg)
    monkeypatch.setattr(checkpoint_mod.torch, "save", real_save)
    assert read_checkpoint(tmp_path / "run" / "last.pth")["state"]["epoch"] == 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.suffix == ".tmp"]


def test_unreadable_images_can_be_skipped_and_are_reported(image_folder, tmp_path):
    (image_folder / "train" / "fear" / "Training_zz_bad.png").write_bytes(b"garbage")
    cfg = tiny(image_folder, tmp_path / "run", epochs=1, bad_images="skip")
    train(cfg)
    state = read_checkpoint(tmp_path / "run" / "last.pth")["state"]
    assert [os.path.basename(p) for p in state["skipped"]] == ["Training_zz_bad.png"]
    assert "Training_zz_bad.png" in (tmp_path / "run" / "train.log").read_text()


def test_out_of_memory_suggests_a_smaller_batch(image_folder, tmp_path, monkeypatch):
    import ferkit.training.loop as train_mod

    def no_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod.F, "cross_entropy", no_memory)
    cfg = tiny(image_folder, tmp_path / "run", batch_size=8, epochs=1)
    with pytest.raises(FerkitError, match="out of memory on cpu with batch size 8 .* smaller --batch-size"):
        train(cfg)


def test_non_finite_steps_can_be_skipped_and_counted(image_folder, tmp_path, monkeypatch):
    import ferkit.training.loop as train_mod

    real_ce = train_mod.F.cross_entropy
    calls = {"n": 0}

    def every_third_is_nan(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", every_third_is_nan)
    cfg = tiny(image_folder, tmp_path / "run", epochs=1, nonfinite="skip")
    train(cfg)
    last = read_checkpoint(tmp_path / "run" / "last.pth")
    assert last["state"]["nonfinite_steps"] == ["1:3", "1:6"]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_non_finite_loss_at_sams_second_pass_skips_the_step(image_folder, tmp_path, monkeypatch):
    import ferkit.training.loop as train_mod

    real_ce = train_mod.F.cross_entropy
    calls = {"n": 0}

    def second_pass_of_step_2_is_nan(*a, **k):
        calls["n"] += 1  # two calls a step: the weights' own loss, then SAM's at the moved weights
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", second_pass_of_step_2_is_nan)
    train(tiny(image_folder, tmp_path / "run", epochs=1, nonfinite="skip", sam_rho=0.05))
    last = read_checkpoint(tmp_path / "run" / "last.pth")
    assert last["state"]["nonfinite_steps"] == ["1:2"]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert "non-finite loss at SAM's second pass" in (tmp_path / "run" / "train.log").read_text()


class _WorkerSignals(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[int, bool]:
        return os.getpgrp(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_training_workers_are_outside_the_signalled_group_and_can_still_be_terminated():
    # A group signal must reach only the main process (which saves), while PyTorch's SIGTERM to a worker that
    # missed its shutdown message must still end it: an immune worker left the main process waiting at exit.
    loader = torch.utils.data.DataLoader(
        _WorkerSignals(), num_workers=1, worker_init_fn=leave_stop_signals_to_the_main_process, batch_size=None
    )
    ((group, terminable),) = list(loader)
    assert group != os.getpgrp() and terminable


def test_a_group_signal_while_the_workers_start_reaches_only_the_main_process(monkeypatch):
    # PyTorch gives a worker a SIGTERM handler that kills it before the worker leaves the group; a group signal in
    # that window (a scheduler's, 0.5 s into an epoch) used to end a run with "DataLoader worker exited
    # unexpectedly" instead of saving. The worker here signals itself in that window, as the group signal would.
    set_handlers = worker_signals._set_worker_signal_handlers

    def signalled_while_starting() -> None:
        set_handlers()
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(worker_signals, "_set_worker_signal_handlers", signalled_while_starting)
    loader = make_loader(_WorkerSignals(), None, 1, torch.device("cpu"))
    ((group, terminable),) = list(batches_of(loader))
    assert group != os.getpgrp() and terminable
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main process holds nothing after


class _Parent(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[int]:
        return (os.getppid(),)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_workers_are_forked_from_the_main_process_whatever_python_starts_by_default():
    # Python 3.14 starts processes from a fork server by default, and a worker started there inherits none of the
    # signals the main process holds while its workers start.
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        ((parent,),) = list(batches_of(make_loader(_Parent(), None, 1, torch.device("cpu"))))
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert parent == os.getpid()


def test_stop_signals_held_while_workers_fork_arrive_afterwards():
    # Sent to this thread: a signal sent to the process may be taken by another thread (PyTorch's) meanwhile.
    with stop_requests() as requested:
        with stop_signals_held():
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            assert requested == []
        assert requested == [signal.SIGTERM]
