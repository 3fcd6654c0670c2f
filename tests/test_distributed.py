"""Multi-process training (DistributedDataParallel over gloo, on CPU): two processes against one."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY, flags, make_image_folder, make_photo_folder, tiny

from ferkit import distributed as dist
from ferkit.checkpoint import read_checkpoint
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.model import build_model
from ferkit.runtime import Speed, seed_everything
from ferkit.training.feed import EpochSampler
from ferkit.training.loop import TrainingInterrupted, train
from ferkit.training.watch import load_watched

# Augmentation and dropout off, so that both runs see the very same pixels; SyncBatchNorm, so that two
# processes of 4 images normalise like one process of 8. The one process runs with it too: alone it is BatchNorm.
SAME_MATH = {
    **TINY,
    "batch_size": 8,
    "epochs": 2,
    "seed": 5,
    "protocol": "clean",
    "precision": "fp32",
    "sync_bn": True,
    "dropout": 0.0,
    "flip_p": 0.0,
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
    "rotation": 0.0,
    "erasing_p": 0.0,
    "crop_scale": (1.0, 1.0),
}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """``ferkit train --nproc 2`` (torchrun underneath) on 21 training images and 7 report images (odd on purpose:
    an evaluation padded to equal shares would count one image twice)."""
    root = tmp_path_factory.mktemp("dist")
    data = make_image_folder(root / "fer", per_class=3)
    photos = make_photo_folder(root / "photos", {"angry": 2, "happy": 3})  # odd: shares of 3 and 2
    run = root / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferkit",
            "train",
            "--nproc",
            "2",
            "--data",
            str(data),
            "--out",
            str(run),
            *flags(SAME_MATH),
            "--watch",
            str(photos),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return data, run, result.stdout


def test_sampler_shards_make_up_the_global_batches_of_one_process():
    single = EpochSampler(23, seed=1)
    shards = [EpochSampler(23, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in [single, *shards]:
        s.set_epoch(4)
    whole, parts = list(single), [list(s) for s in shards]
    assert len(parts[0]) == len(parts[1]) == len(shards[0]) == 11
    for k in range(len(whole) // 8):  # global batch 8 = 4 per process
        assert sorted(parts[0][4 * k : 4 * k + 4] + parts[1][4 * k : 4 * k + 4]) == sorted(whole[8 * k : 8 * k + 8])
    shards[1].set_epoch(4, start=6)  # a resumed epoch, 6 images into this process's share
    assert list(shards[1]) == parts[1][6:] and len(shards[1]) == 5


@pytest.mark.slow
def test_two_processes_train_like_one_process_over_the_global_batch(two_process_run, tmp_path):
    data, run, _ = two_process_run
    one = train(Config(data=str(data), out=str(tmp_path / "one"), **SAME_MATH))
    assert one["images"] == 7
    single, double = read_checkpoint(tmp_path / "one" / "last.pth"), read_checkpoint(run / "last.pth")
    # The mean training loss of each epoch (4 optimizer steps in all) agrees to float rounding.
    for a, b in zip(single["state"]["history"], double["state"]["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    seed_everything(SAME_MATH["seed"])
    start = build_model(Config(**SAME_MATH), 7).state_dict()
    keys = [k for k, v in start.items() if v.is_floating_point()]

    def flat(weights):
        return torch.cat([weights[k].flatten() for k in keys])

    # Compared with how far training moved the weights; Adam turns float rounding in near-zero gradients into
    # lr-sized steps, so equality holds to a tolerance. A run without SyncBatchNorm is off by about 25%.
    moved = flat(single["model"]) - flat(start)
    gap = flat(single["model"]) - flat(double["model"])
    assert gap.norm() / moved.norm() < 1e-2


@pytest.mark.slow
def test_two_processes_write_one_run_folder_and_count_every_image_once(two_process_run):
    _, run, stdout = two_process_run
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pth",
        "config.json",
        "curves.png",
        "last.pth",
        "metrics.csv",
        "report.json",
        "report_confusion.png",
        "train.log",
    ]
    log = (run / "train.log").read_text()
    assert log.count("ferkit train: resnet18") == 1 and "batch 8 (4 per process x 2 processes)" in log
    assert log.count(" command: ") == 1 and " command: ferkit train --nproc 2 --data " in log  # the user's command
    assert log.count("PublicTest (14 images)") == 2  # one line per epoch, each over all 14 selection images
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + SAME_MATH["epochs"]
    report = json.loads((run / "report.json").read_text())
    assert report["images"] == 7 and sum(map(sum, report["confusion_matrix"])) == 7
    assert stdout.count("report: PrivateTest") == 1 and stdout.count("images 7  accuracy") == 1
    # The watched folder's five photos, split 3 and 2 between the processes, are each counted once.
    watched = evaluate_checkpoint(run / "best.pth", str(run.parent / "photos"), workers=0)
    assert report["watched"]["photos_acc"] == pytest.approx(watched["accuracy"]) and watched["images"] == 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resume_worker(rank: int, port: int, data: str, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")  # train() joins a group its caller started

    def cfg(name):
        return tiny(data, os.path.join(tmp, name), epochs=1)

    train(cfg("full"))
    real_step, calls = torch.optim.AdamW.step, [0]

    def step_then_interrupt(self, *a, **k):
        result = real_step(self, *a, **k)
        calls[0] += 1
        if calls[0] == 3 and rank == 1:  # only process 1 gets the signal; both must stop after step 3
            os.kill(os.getpid(), signal.SIGINT)
        return result

    torch.optim.AdamW.step = step_then_interrupt
    try:
        train(cfg("cut"))
        raise AssertionError(f"process {rank} was not interrupted")
    except TrainingInterrupted as e:
        assert "epoch 1 step 3" in str(e) and "SIGINT" in str(e), e
    torch.optim.AdamW.step = real_step
    torch.distributed.barrier()  # process 0 writes last.pth after the others have stopped
    state = read_checkpoint(os.path.join(tmp, "cut", "last.pth"))["state"]
    assert (state["epoch"], state["step"]) == (0, 3)
    train(cfg("cut"), resume=True)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_interrupted_two_process_run_resumes_exactly(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(resume_worker, args=(free_port(), str(image_folder), str(tmp_path)), nprocs=2)
    full, resumed = read_checkpoint(tmp_path / "full" / "last.pth"), read_checkpoint(tmp_path / "cut" / "last.pth")
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    # The epoch's loss sums are added up in another order across the interruption.
    assert full["state"]["history"][-1]["train_loss"] == pytest.approx(resumed["state"]["history"][-1]["train_loss"])


def test_each_process_preprocesses_only_its_share_of_a_watched_folder(tmp_path, monkeypatch):
    photos = make_photo_folder(tmp_path / "photos", {"angry": 2, "happy": 3})
    cfg = tiny(tmp_path, tmp_path / "run", watch=(str(photos),))
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        shares += load_watched(cfg, CLASSES, Speed.resolve(cfg))
    assert [len(w.images) for w in shares] == [3, 2] and shares[0].images.shape[1:] == (3, 16, 16)
    assert sorted(torch.cat([w.labels for w in shares]).tolist()) == [0, 0, 3, 3, 3]  # Angry twice, Happy three times
