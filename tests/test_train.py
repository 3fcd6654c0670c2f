import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_image_folder, make_photo_folder, sigint_after_optimizer_steps, tiny, weights
from PIL import Image
from torch.utils.data import DataLoader

import ferkit.training.distill as distill
import ferkit.training.loop as train_mod
import ferkit.training.rundir as rundir
from ferkit.checkpoint import atomic_save, load_model, read_checkpoint
from ferkit.cli import main
from ferkit.config import Config
from ferkit.data.datasets import CLASSES, load_splits
from ferkit.data.preprocess import build_test_transform
from ferkit.errors import FerkitError
from ferkit.evaluation.predictions import predict_probs
from ferkit.inference.evaluate import calibrate_checkpoint, evaluate_checkpoint
from ferkit.model import build_model, inference_flops, training_flops
from ferkit.runtime import Speed, machine_description
from ferkit.training.distill import teacher_probs
from ferkit.training.loop import TrainingInterrupted, TrainState, train
from ferkit.training.optim import lr_factor


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny 3-epoch run under the clean protocol, TensorBoard on, and its report: for the tests that only read a
    finished run, which would otherwise each train their own."""
    root = tmp_path_factory.mktemp("finished")
    report = train(tiny(make_image_folder(root / "fer"), root / "run", tensorboard=True, protocol="clean"))
    return root / "run", report


def test_run_folder_holds_everything(finished_run):
    run, report = finished_run
    for name in (
        "config.json",
        "train.log",
        "metrics.csv",
        "curves.png",
        "last.pth",
        "best.pth",
        "report.json",
        "report_confusion.png",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert report["split"] == "PrivateTest" and report["images"] == 14
    assert sum(map(sum, report["confusion_matrix"])) == 14
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 4
    loaded = load_model(run / "best.pth")
    assert loaded.classes[3] == "Happy" and loaded.config.image_size == 16
    assert "preprocess" not in loaded.checkpoint  # the config is the one record of it


def test_best_checkpoint_written_only_on_improvement(image_folder, tmp_path, monkeypatch):
    scripted = [0.2, 0.5, 0.4, 0.5, 0.7]  # selection accuracy of epochs 1-5
    real_metrics = train_mod.compute_metrics
    saved, calls = [], []

    def scripted_metrics(labels, probs, classes):
        metrics = real_metrics(labels, probs, classes)
        calls.append(1)
        if len(calls) <= len(scripted):  # the final report afterwards keeps its real value
            metrics["accuracy"] = scripted[len(calls) - 1]
        return metrics

    def recording_save(obj, path):
        saved.append((os.path.basename(path), obj.get("epoch")))
        atomic_save(obj, path)

    monkeypatch.setattr(train_mod, "compute_metrics", scripted_metrics)
    monkeypatch.setattr(rundir, "atomic_save", recording_save)
    train(tiny(image_folder, tmp_path / "run", epochs=5))
    best_epochs = [epoch for name, epoch in saved if name == "best.pth"]
    assert best_epochs == [1, 2, 5]
    assert [name for name, _ in saved].count("last.pth") == 5
    assert read_checkpoint(tmp_path / "run" / "best.pth")["epoch"] == 5


def test_resume_after_a_crash_matches_an_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    train(tiny(image_folder, tmp_path / "full"))
    real_write = rundir.EpochRecords.write

    def crash_after_epoch_2(self, history, *args):
        real_write(self, history, *args)
        if history[-1]["epoch"] == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(rundir.EpochRecords, "write", crash_after_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny(image_folder, tmp_path / "resumed"))
    assert read_checkpoint(tmp_path / "resumed" / "last.pth")["state"]["epoch"] == 2
    monkeypatch.setattr(rundir.EpochRecords, "write", real_write)
    train(tiny(image_folder, tmp_path / "resumed"), resume=True)
    full, resumed = weights(tmp_path / "full" / "last.pth"), weights(tmp_path / "resumed" / "last.pth")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_sigint_mid_epoch_saves_and_resumes_exactly(image_folder, tmp_path, monkeypatch):
    train(tiny(image_folder, tmp_path / "full", epochs=3))
    real_step = sigint_after_optimizer_steps(monkeypatch, 9)  # 7 batches per epoch: epoch 2, second batch
    drawn = []  # the epochs curves.png shows, each time it is drawn
    real_plot = rundir.plot_curves
    monkeypatch.setattr(
        rundir,
        "plot_curves",
        lambda history, path, *rest: drawn.append(len(history)) or real_plot(history, path, *rest),
    )
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny(image_folder, tmp_path / "cut", epochs=3))
    state = read_checkpoint(tmp_path / "cut" / "last.pth")["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    assert drawn == [1] and (tmp_path / "cut" / "curves.png").is_file()  # the stop draws what it has
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(tiny(image_folder, tmp_path / "cut", epochs=3), resume=True)
    assert drawn == [1, 3]  # epochs seconds apart are drawn once, at the end
    full, resumed = weights(tmp_path / "full" / "last.pth"), weights(tmp_path / "cut" / "last.pth")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize("pipeline", ["workers", "batched"])
def test_photo_augmentation_and_batch_mixing_train_and_resume_exactly(image_folder, tmp_path, monkeypatch, pipeline):
    # Mixing draws from the global generator, like dropout: a resumed epoch must replay it from last.pth.
    photos = dict(
        data_pipeline=pipeline,
        epochs=1,
        frame_scale=(0.85, 1.15),
        frame_shift=0.05,
        gamma=0.25,
        blur_p=0.5,
        noise_p=0.5,
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
    )
    train(tiny(image_folder, tmp_path / "full", **photos))
    real_step = sigint_after_optimizer_steps(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train(tiny(image_folder, tmp_path / "cut", **photos))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(tiny(image_folder, tmp_path / "cut", **photos), resume=True)
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    history = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert 0 <= float(history[0]["train_acc"]) <= 1 and float(history[0]["train_loss"]) > 0


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(image_folder, tmp_path, monkeypatch):
    train(tiny(image_folder, tmp_path / "full", epochs=1, ema_decay=0.9))
    last, best = read_checkpoint(tmp_path / "full" / "last.pth"), read_checkpoint(tmp_path / "full" / "best.pth")
    # best.pth (epoch 1 is always an improvement) holds the average, last.pth the raw weights and the average.
    average = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert average.keys() == best["model"].keys() == last["model"].keys()
    assert all(torch.equal(best["model"][k], average[k]) for k in average)
    assert not all(torch.equal(last["model"][k], average[k]) for k in average)
    assert int(last["ema"]["n_averaged"]) == 7  # one update per optimizer step

    real_step = sigint_after_optimizer_steps(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train(tiny(image_folder, tmp_path / "cut", epochs=1, ema_decay=0.9))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(tiny(image_folder, tmp_path / "cut", epochs=1, ema_decay=0.9), resume=True)
    resumed = read_checkpoint(tmp_path / "cut" / "last.pth")["ema"]
    assert all(torch.equal(last["ema"][k], resumed[k]) for k in last["ema"])


def test_report_and_metrics_record_training_compute_and_machine(finished_run):
    run, report = finished_run
    gflop = training_flops(build_model(Config(**TINY), 7), 16) / 1e9
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # 28 training images, 7 batches of 4, every epoch.
    assert [float(r["gflop_per_image"]) for r in rows] == pytest.approx([gflop] * 3)
    assert [float(r["pflop"]) for r in rows] == pytest.approx([n * 28 * gflop / 1e6 for n in (1, 2, 3)])
    assert report["pflop"] == pytest.approx(84 * gflop / 1e6) and report["gflop_per_image"] == pytest.approx(gflop)
    assert report["machine"] == machine_description() and report["precision"] == "fp32"
    assert report["train_precision"] in ("fp32", "bf16") and report["train_minutes"] >= 0
    log = (run / "train.log").read_text()
    assert f"compute: {gflop:.3f} GFLOP per training image" in log and "machine: " in log
    assert "PFLOP of training" in log.splitlines()[-1] or "PFLOP of training" in log


def test_best_pth_records_the_whole_run_s_compute_though_chosen_earlier(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(TrainState, "improves", lambda self, accuracy: not self.history)  # best.pth: epoch 1
    report = train(tiny(image_folder, tmp_path / "run", epochs=2))
    best = read_checkpoint(tmp_path / "run" / "best.pth")
    # Choosing epoch 1 took both epochs: the file says what the weights cost to get.
    assert best["epoch"] == 1 and best["pflop"] == pytest.approx(report["pflop"])
    assert "start_pflop" not in report  # a run from scratch has no start


def test_sam_training_counts_two_passes_an_image_and_changes_the_steps(image_folder, tmp_path):
    plain = train(tiny(image_folder, tmp_path / "plain", epochs=1))
    sam = train(tiny(image_folder, tmp_path / "sam", epochs=1, sam_rho=0.05))
    assert sam["gflop_per_image"] == pytest.approx(2 * plain["gflop_per_image"])
    assert sam["pflop"] == pytest.approx(2 * plain["pflop"])
    assert "GFLOP per training image (forward + backward, twice: SAM)" in (tmp_path / "sam" / "train.log").read_text()
    # Same seed and batches: only the sharpness-aware gradient can make the weights differ.
    a, b = weights(tmp_path / "plain" / "last.pth"), weights(tmp_path / "sam" / "last.pth")
    assert not all(torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def test_a_run_s_log_takes_ferkit_s_messages_only_while_it_lasts(image_folder, tmp_path):
    logger = logging.getLogger("ferkit")
    mine = logging.NullHandler()
    logger.addHandler(mine)
    try:
        before = logger.level, logger.propagate, list(logger.handlers)
        train(tiny(image_folder, tmp_path / "run", epochs=1))
        assert (logger.level, logger.propagate, logger.handlers) == before  # the caller's set-up, as it was
        logger.warning("a later prediction's warning")
        assert "a later prediction's warning" not in (tmp_path / "run" / "train.log").read_text()
    finally:
        logger.removeHandler(mine)


def test_existing_run_folder_is_not_clobbered(image_folder, tmp_path):
    cfg = tiny(image_folder, tmp_path / "run", epochs=1)
    train(cfg)
    before = (tmp_path / "run" / "best.pth").read_bytes()
    with pytest.raises(FerkitError, match="--overwrite"):
        train(cfg)
    assert (tmp_path / "run" / "best.pth").read_bytes() == before
    assert "stopped:" not in (tmp_path / "run" / "train.log").read_text()  # the refused start wrote nothing there
    train(cfg, overwrite=True)
    # A start stopped before training (here a batch larger than the data) leaves its config and log, no run: the
    # corrected command takes the folder over without --overwrite, and the log keeps both starts.
    failed = tiny(image_folder, tmp_path / "failed", epochs=1)
    with pytest.raises(FerkitError, match="fewer than one batch"):
        train(failed.updated({"batch_size": 4096}))
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == ["config.json", "train.log"]
    train(failed)
    assert (tmp_path / "failed" / "best.pth").is_file()
    log = (tmp_path / "failed" / "train.log").read_text()
    assert log.count("ferkit train: ") == 1 and log.count("command: ") == 0  # train() called from Python
    assert len([line for line in log.splitlines() if " stopped: " in line and "fewer than one batch" in line]) == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")  # a folder holding the user's own config, no log: not a failed start
    with pytest.raises(FerkitError, match="--overwrite"):
        train(tiny(image_folder, mine, epochs=1))
    assert (mine / "config.json").read_text() == "{}"
    with pytest.raises(FerkitError, match="^--out .*config.json is a file, not a run folder; choose another --out$"):
        train(tiny(image_folder, mine / "config.json", epochs=1))
    with pytest.raises(FerkitError, match="last.pth does not exist"):
        train(tiny(image_folder, tmp_path / "other"), resume=True)


def test_bad_checkpoints_give_clear_errors(finished_run, tmp_path):
    good = finished_run[0] / "best.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(FerkitError, match="truncated.pth is truncated or not a ferkit checkpoint"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(FerkitError, match="not a ferkit checkpoint"):
        load_model(foreign)
    with pytest.raises(FerkitError, match="trained for classes"):
        load_model(good, expected_classes=("Happy", "Sad"))
    other_arch = tmp_path / "other_arch.pth"
    ckpt = read_checkpoint(good)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("layer4")}
    torch.save(ckpt, other_arch)
    with pytest.raises(FerkitError, match="does not fit architecture"):
        load_model(other_arch)


def test_evaluate_refuses_data_with_other_classes(finished_run, tmp_path, capsys):
    run = finished_run[0]
    data = Path(shutil.copytree(run.parent / "fer", tmp_path / "fer"))
    for split in ("train", "test"):
        shutil.rmtree(data / split / "disgust")
    assert main(["evaluate", str(run / "best.pth"), "--data", str(data), "--workers", "0"]) == 2
    assert "trained for classes" in capsys.readouterr().err


# slow: DataLoader worker processes, two commands end to end.
@pytest.mark.slow
@pytest.mark.realdata
def test_cli_end_to_end_on_real_fer2013(real_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "quick",
            "--data",
            str(real_data),
            "--limit-per-class",
            "12",
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--workers",
            "2",
            "--out",
            str(run),
            "--no-tensorboard",
        ]
    )
    assert code == 0
    report = read_checkpoint(run / "best.pth")
    assert report["config"]["protocol"] == "clean"
    assert (
        main(
            [
                "evaluate",
                str(run / "best.pth"),
                "--tta",
                "flip",
                "--limit-per-class",
                "12",
                "--workers",
                "2",
                "--out",
                str(tmp_path / "eval"),
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"split": "PrivateTest"' in out and '"tta": "flip"' in out
    assert (tmp_path / "eval" / "eval_PrivateTest_flip.json").is_file()
    assert (tmp_path / "eval" / "eval_PrivateTest_flip_confusion.png").is_file()
    assert (run / "report.json").is_file() and (run / "curves.png").is_file()
    assert (
        main(
            [
                "evaluate",
                str(run / "best.pth"),
                "--tta",
                "tencrop",
                "--split",
                "select",
                "--limit-per-class",
                "5",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert "PublicTest (clean protocol, TTA tencrop, fp32): images 35" in capsys.readouterr().out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
    cfg = tiny(image_folder, tmp_path / "run", epochs=2, batch_size=2)  # 14 steps per epoch
    real_ce = train_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] > 14 else loss  # epoch 2 diverges

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    with pytest.raises(FerkitError, match="non-finite loss at epoch 2 step 14"):
        train(cfg)
    last = read_checkpoint(tmp_path / "run" / "last.pth")
    assert last["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_corrupt_image_during_training_is_one_clear_line(image_folder, tmp_path, capsys):
    (image_folder / "train" / "fear" / "Training_zz_bad.png").write_bytes(b"garbage")
    code = main(
        [
            "train",
            "--data",
            str(image_folder),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--workers",
            "1",
            "--no-tensorboard",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("ferkit: error: cannot read image") and "Training_zz_bad.png" in err[-1]
    # The stopped epoch's DataLoader worker is gone already, not left for the garbage collector to wait 5 s on.
    assert multiprocessing.active_children() == []


def test_no_report_leaves_privatetest_unread_until_the_run_is_chosen(image_folder, tmp_path, monkeypatch):
    measured = []
    real_measure = train_mod._measure
    monkeypatch.setattr(
        train_mod, "_measure", lambda model, samples, *a: measured.append(samples) or real_measure(model, samples, *a)
    )
    run = tmp_path / "run"
    result = train(tiny(image_folder, run, epochs=2, protocol="clean", report=False))
    splits = load_splits(str(image_folder), "clean")
    assert measured and all(samples == splits.select for samples in measured)  # PublicTest every epoch, nothing else
    assert result["split"] is None and "accuracy" not in result and result["pflop"] > 0
    assert not (run / "report.json").exists() and not (run / "report_confusion.png").exists()
    log = (run / "train.log").read_text()
    assert (
        f"report: PrivateTest left unread (--no-report), best.pth from epoch {result['best_epoch']} (selected on "
        f"PublicTest); once this run is the one chosen, read it with `ferkit evaluate {run / 'best.pth'} --data "
        f"{image_folder} --split report`"
    ) in log
    # Chosen: a resume of the finished run with --report reads it once, as the run would have at its end.
    assert main(["train", "--resume", str(run), "--report"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "PrivateTest" and report["best_epoch"] == result["best_epoch"]
    assert measured[-1] == splits.report
    assert (
        report["accuracy"] == evaluate_checkpoint(run / "best.pth", data=str(image_folder), split="report")["accuracy"]
    )
    # Data found through $FERKIT_DATA: the command names the folder it was read from.
    monkeypatch.setenv("FERKIT_DATA", str(image_folder))
    train(Config(**{**TINY, "out": str(tmp_path / "env"), "epochs": 1, "protocol": "clean", "report": False}))
    assert f"--data {image_folder} --split report`" in (tmp_path / "env" / "train.log").read_text()


def test_resume_with_more_epochs_continues_the_schedule_over_the_new_total(image_folder, tmp_path):
    run = tmp_path / "run"
    train(tiny(image_folder, run, epochs=2))
    # --image-size repeats the saved value: only changes count, so it is no conflict.
    assert main(["train", "--resume", str(run), "--epochs", "3", "--image-size", "16"]) == 0
    last = read_checkpoint(run / "last.pth")
    assert last["state"]["epoch"] == 3 and last["config"]["epochs"] == 3
    assert [row["epoch"] for row in last["state"]["history"]] == [1, 2, 3]
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 4
    assert json.loads((run / "report.json").read_text())["epochs"] == 3
    # After 2 of 2 epochs the lr sat at min_lr; a 3-epoch schedule has it at its value 2 steps in.
    cfg = tiny(image_folder, run, epochs=3)
    lr_now = cfg.effective_lr() * lr_factor(cfg, steps_per_epoch=7)(2)
    log = (run / "train.log").read_text()
    assert "resumed at epoch 3 step 0 with --epochs 3 (was 2)\n" in log
    # Each sitting's part of train.log starts with its command (the first sitting called train() from Python).
    assert [line.split(" command: ")[1] for line in log.splitlines() if " command: " in line] == [
        shlex.join(["ferkit", "train", "--resume", str(run), "--epochs", "3", "--image-size", "16"])
    ]
    assert (
        f"lr schedule: stretched to 3 epochs (was 2); the lr goes from {cfg.min_lr:.2e} to {lr_now:.2e} here "
        f"and decays to {cfg.min_lr:.2e} by epoch 3"
    ) in log
    assert "epoch 3/3" in log


def test_resume_refuses_a_flag_that_would_change_the_recipe(finished_run, capsys):
    run = finished_run[0]
    before = (run / "last.pth").read_bytes(), (run / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", "5e-4", "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ferkit: error: cannot resume {run} with --lr 0.0005: the run was trained with lr 0.001; start a new run "
        "(another --out) to change it"
    ]
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ferkit: error: cannot resume {run} with --epochs 1: the run is at epoch 3 already; give at least --epochs 3"
    ]
    assert ((run / "last.pth").read_bytes(), (run / "config.json").read_text()) == before


def test_workers_are_cut_to_the_cores_in_one_log_line_without_pytorchs_warning(
    image_folder, tmp_path, monkeypatch, recwarn
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a one-core machine, as PyTorch sees it too
    with pytest.warns(UserWarning, match="will create 2 worker processes"):
        DataLoader(range(4), num_workers=2).check_worker_number_rationality()
    recwarn.clear()
    train(tiny(image_folder, tmp_path / "run", epochs=1, workers=2))
    assert not [w for w in recwarn if "worker processes" in str(w.message)]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("workers: --workers 2 lowered to 1, the cores this process may use") == 1
    assert "workers data pipeline (1 DataLoader workers" in log


@pytest.mark.parametrize(("pipeline", "views", "passes"), [("workers", "flip", 2), ("batched", "scales", 3)])
def test_distillation_trains_on_the_teachers_probabilities_once(finished_run, tmp_path, pipeline, views, passes):
    teacher_run, _ = finished_run
    teacher = tmp_path / "teacher.pth"
    shutil.copy(teacher_run / "best.pth", teacher)
    data = teacher_run.parent / "fer"
    cfg = tiny(
        data,
        tmp_path / "student",
        epochs=1,
        data_pipeline=pipeline,
        mixup_alpha=0.2,
        distill_from=(str(teacher),) * 2,
        distill_views=views,
    )
    report = train(cfg)

    saved = torch.load(tmp_path / "student" / "teachers.pt", weights_only=True)
    probs = saved["probs"]
    assert probs.shape == (28, 7) and torch.allclose(probs.sum(dim=1), torch.ones(28)) and saved["views"] == views
    # Two copies of one teacher average to that teacher's own probabilities over the views (its TTA of that name).
    loaded = load_model(teacher)
    first = build_test_transform(loaded.config)(Image.open(saved["names"][0]))[None]
    assert torch.allclose(probs[0], predict_probs(loaded.model, first, tta=views)[0], atol=1e-5)
    student = gflop_per_image(cfg) * 28 / 1e6
    labelling = 2 * passes * 28 * inference_flops(loaded.model, 16) / 1e15
    assert report["pflop"] == pytest.approx(student + labelling)
    log = (tmp_path / "student" / "train.log").read_text()
    assert "teachers labelled 28 training images" in log
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()[:16]
    assert f"distillation: teacher {teacher} ({teacher}, sha256 {digest}...) labels 28 training images" in log

    # A resumed run reads the probabilities back: the teacher may be gone, and nothing is counted twice.
    teacher.unlink()
    resumed = train(Config.from_dict({**cfg.to_dict(), "epochs": 2}), resume=True)
    assert resumed["pflop"] == pytest.approx(2 * student + labelling)


def test_a_second_run_of_the_same_teachers_on_the_same_images_reads_their_labels_from_the_cache(
    finished_run, tmp_path, monkeypatch
):
    teacher_run, _ = finished_run
    data = shutil.copytree(teacher_run.parent / "fer", tmp_path / "fer")
    cache = tmp_path / "labels"
    teacher = str(teacher_run / "best.pth")
    cfg = tiny(data, tmp_path / "first", epochs=1, distill_from=(teacher,), label_cache=str(cache))

    def run(name: str, **changes) -> tuple[dict, str, torch.Tensor]:
        report = train(Config.from_dict({**cfg.to_dict(), "out": str(tmp_path / name), **changes}))
        probs = torch.load(tmp_path / name / "teachers.pt", weights_only=True)["probs"]
        return report, (tmp_path / name / "train.log").read_text(), probs

    first, log, probs = run("first")
    assert "labels 28 training images" in log and len(list(cache.glob("*.pt"))) == 1
    # Another seed: the same labels, read instead of computed, and the run's PFLOP still counts their labelling.
    (entry,) = cache.glob("*.pt")
    os.utime(entry, (0, 0))
    second, log, again = run("second", seed=1)
    assert entry.stat().st_mtime > 0  # used again: the last to be evicted
    assert f"distillation: {teacher} ({teacher}, sha256" in log and "read from the label cache" in log
    assert "labels 28 training images" not in log
    assert torch.equal(again, probs) and second["pflop"] == pytest.approx(first["pflop"])
    # An image changed, or the teachers read otherwise: labelled anew, each labelling kept beside the others.
    image = sorted((data / "train").rglob("*.png"))[0]
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    _, log, _ = run("changed")
    assert "labels 28 training images" in log and len(list(cache.glob("*.pt"))) == 2
    _, log, _ = run("softer", distill_temperature=2.0)
    assert "labels 28 training images" in log and len(list(cache.glob("*.pt"))) == 3
    _, log, _ = run("off", label_cache="off")
    assert "labels 28 training images" in log and len(list(cache.glob("*.pt"))) == 3
    # The same folder spelled otherwise (a link; a clone reading it by another path): the same images, read back.
    (tmp_path / "linked").symlink_to(data)
    _, log, _ = run("spelled", data=str(tmp_path / "linked"))
    assert "read from the label cache" in log and len(list(cache.glob("*.pt"))) == 3
    monkeypatch.setenv("FERKIT_DATA", str(data))  # no --data: the folder the environment names
    _, log, _ = run("from-env", data=None)
    assert "read from the label cache" in log and len(list(cache.glob("*.pt"))) == 3


def test_the_label_cache_keeps_its_most_recently_used_labellings(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "CACHE_ENTRIES", 2)
    for age, name in enumerate(["newest", "newer", "old", "oldest"]):
        for suffix in (".pt", ".lock"):
            (tmp_path / f"{name}{suffix}").touch()
            os.utime(tmp_path / f"{name}{suffix}", (1000 - age, 1000 - age))
    distill._evict(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer.lock", "newer.pt", "newest.lock", "newest.pt"]


def test_runs_side_by_side_label_once_the_second_waiting_for_the_first(finished_run, tmp_path, monkeypatch, caplog):
    teacher_run, _ = finished_run
    data = teacher_run.parent / "fer"
    cfg = tiny(data, tmp_path / "run", distill_from=(str(teacher_run / "best.pth"),), label_cache=str(tmp_path / "c"))
    samples, speed = load_splits(data).train, Speed.resolve(cfg)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_teacher(*args, **kwargs):  # the first run's labelling, held until the second run is waiting
        calls.append(threading.current_thread().name)
        started.set()
        assert release.wait(timeout=60)
        return teacher_probs(*args, **kwargs)

    monkeypatch.setattr(distill, "teacher_probs", slow_teacher)
    results = {}

    def run(name: str) -> None:
        results[name] = distill._labelled(cfg, samples, CLASSES, speed)

    first = threading.Thread(target=run, args=("first",), name="first")
    second = threading.Thread(target=run, args=("second",), name="second")
    with caplog.at_level(logging.INFO, logger="ferkit"):
        first.start()
        assert started.wait(timeout=60)
        second.start()
        deadline = time.monotonic() + 60
        while not any("waiting for its labels" in m for m in caplog.messages) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        first.join(timeout=60)
        second.join(timeout=60)
    assert calls == ["first"]  # labelled once
    assert torch.equal(results["first"][0], results["second"][0]) and results["first"][1] == results["second"][1]
    assert any("read from the label cache" in m for m in caplog.messages)


def test_distillation_at_weight_zero_is_training_on_the_labels(finished_run, tmp_path):
    teacher_run, _ = finished_run
    data = teacher_run.parent / "fer"
    train(tiny(data, tmp_path / "plain", epochs=1))
    train(tiny(data, tmp_path / "taught", epochs=1, distill_from=(str(teacher_run / "best.pth"),), distill_weight=0.0))
    plain, taught = weights(tmp_path / "plain"), weights(tmp_path / "taught")
    assert all(torch.allclose(plain[k].float(), taught[k].float(), atol=1e-5) for k in plain)


def test_a_missing_teacher_or_an_unmakeable_run_folder_is_one_line(image_folder, tmp_path):
    cfg = tiny(image_folder, tmp_path / "student", epochs=1, distill_from=(str(tmp_path / "nothere.pth"),))
    with pytest.raises(FerkitError, match=r"^--distill-from .*nothere\.pth does not exist; give a teacher's best\.pth"):
        train(cfg)
    (tmp_path / "file").write_text("a file where a folder would go")
    with pytest.raises(FerkitError, match=r"^cannot make the run folder .*file/run: Not a directory; choose another"):
        train(tiny(image_folder, tmp_path / "file" / "run", epochs=1))


def test_distillation_refuses_a_teacher_of_other_classes(finished_run, tmp_path):
    teacher_run, _ = finished_run
    other = read_checkpoint(teacher_run / "best.pth")
    other["classes"] = [c.upper() for c in other["classes"]]
    atomic_save(other, tmp_path / "other.pth")
    cfg = tiny(teacher_run.parent / "fer", tmp_path / "student", epochs=1, distill_from=(str(tmp_path / "other.pth"),))
    with pytest.raises(FerkitError, match="other.pth was trained for classes .*; give --distill-from teachers trained"):
        train(cfg)


def test_too_few_images_for_a_batch_are_refused_before_the_teachers_label_them(finished_run, tmp_path, monkeypatch):
    teacher_run, _ = finished_run
    labelled = []
    monkeypatch.setattr("ferkit.training.distill._labelled", lambda *args: labelled.append(args))
    cfg = tiny(
        teacher_run.parent / "fer", tmp_path / "student", epochs=1, distill_from=(str(teacher_run / "best.pth"),)
    )
    with pytest.raises(FerkitError, match="^28 training images are fewer than one batch of 64; lower --batch-size$"):
        train(cfg.updated({"batch_size": 64}))
    assert labelled == []


def gflop_per_image(cfg: Config) -> float:
    return training_flops(build_model(cfg, 7), cfg.image_size) / 1e9


def test_the_bundled_model_teaches_by_its_name(image_folder):
    samples = load_splits(str(image_folder), "clean").train
    probs, pflop = teacher_probs(("fer2013_resnet18",), samples, CLASSES, Speed.resolve(Config(workers=0)), False)
    assert probs.shape == (28, 7) and torch.allclose(probs.sum(dim=1), torch.ones(28))
    assert pflop == pytest.approx(2 * 28 * inference_flops(load_model().model, 48) / 1e15)


def test_a_distillation_temperature_softens_the_teachers_calibrated_probabilities(image_folder):
    # One view, so that a row is one softmax and the temperature's effect has a closed form.
    samples = load_splits(str(image_folder), "clean").train
    speed = Speed.resolve(Config(workers=0))
    sharp, _ = teacher_probs(("fer2013_resnet18",), samples, CLASSES, speed, False, views="none")
    soft, _ = teacher_probs(("fer2013_resnet18",), samples, CLASSES, speed, False, temperature=2.0, views="none")
    # softmax(z / 2T) = softmax(log softmax(z / T) / 2): the same teacher, its logits halved.
    assert torch.allclose(soft, torch.softmax(sharp.log() / 2, dim=1), atol=1e-5)
    assert (soft.max(dim=1).values < sharp.max(dim=1).values).all()


def test_watched_folders_are_measured_every_epoch_as_evaluate_reads_them_and_choose_nothing(image_folder, tmp_path):
    # CK+'s folder names; contempt has no FER2013 class, and one Sad photo is below the macro recall's support.
    photos = make_photo_folder(tmp_path / "photos", {"anger": 3, "contempt": 2, "happy": 4, "sadness": 1})
    plain = train(tiny(image_folder, tmp_path / "plain", epochs=2))
    report = train(tiny(image_folder, tmp_path / "run", epochs=2, watch=(str(photos),), watch_min_support=2))

    # Watching changes nothing of the training, the choice of best.pth or the report on PrivateTest.
    unwatched, watched = weights(tmp_path / "plain"), weights(tmp_path / "run")
    assert all(torch.equal(unwatched[k], watched[k]) for k in unwatched)
    assert report["best_epoch"] == plain["best_epoch"] and report["accuracy"] == plain["accuracy"]
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-2:] == ["photos_acc", "photos_macro_recall"] and len(rows) == 2
    best = rows[report["best_epoch"] - 1]
    # best.pth holds the best epoch's weights: `ferkit evaluate` on them gives that epoch's watched figures.
    evaluated = evaluate_checkpoint(tmp_path / "run" / "best.pth", str(photos), workers=0, min_support=2)
    assert evaluated["images"] == 8 and evaluated["macro_classes"] == ["Angry", "Happy"]
    assert float(best["photos_acc"]) == pytest.approx(evaluated["accuracy"])
    assert float(best["photos_macro_recall"]) == pytest.approx(evaluated["macro_recall"])
    assert report["watched"] == {
        "photos_acc": pytest.approx(evaluated["accuracy"]),
        "photos_macro_recall": pytest.approx(evaluated["macro_recall"]),
    }
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--watch photos/contempt: no FER2013 class; its 2 images are left out" in log
    assert f"photos acc {float(rows[1]['photos_acc']):.4f}  photos macro recall" in log


def test_a_folder_watched_from_a_resume_on_has_its_column_from_there(image_folder, tmp_path):
    photos = make_photo_folder(tmp_path / "photos", {"angry": 2, "happy": 2})
    train(tiny(image_folder, tmp_path / "run", epochs=1))
    train(tiny(image_folder, tmp_path / "run", epochs=2, watch=(str(photos),)), resume=True)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["photos_acc"] == "" and 0 <= float(rows[1]["photos_acc"]) <= 1


def test_watched_columns_are_named_and_read_back_by_one_convention():
    from ferkit.training.rundir import _watched_accuracies, watched_label

    history = [{"epoch": 1, "train_acc": 0.5, "select_acc": 0.4}, {"epoch": 2, "train_acc": 0.6, "select_acc": 0.5}]
    history[1].update({"my_photos_acc": 0.3, "my_photos_macro_recall": 0.2, "ck_acc": 0.7, "ck_macro_recall": 0.6})
    assert _watched_accuracies(history) == {"my_photos": "my_photos_acc", "ck": "ck_acc"}
    assert watched_label("my_photos_macro_recall") == "my_photos macro recall"
    assert watched_label("my_photos_acc") == "my_photos acc"


def test_watching_a_wrong_folder_stops_before_training_in_one_line(image_folder, tmp_path):
    with pytest.raises(FerkitError, match="not a folder of class folders with no train/test split"):
        train(tiny(image_folder, tmp_path / "split", watch=(str(image_folder),)))
    twins = [make_photo_folder(tmp_path / side / "photos", {"happy": 1}) for side in ("a", "b")]
    with pytest.raises(FerkitError, match="photos is given twice"):
        train(tiny(image_folder, tmp_path / "twins", watch=tuple(map(str, twins))))
    assert not (tmp_path / "split" / "last.pth").exists() and not (tmp_path / "twins" / "last.pth").exists()


def test_balanced_class_weights_weigh_each_class_by_its_images_and_the_file_records_an_even_mix(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "fer", per_class=6)
    for name, keep in (("disgust", 1), ("fear", 3)):  # FER2013's rare classes, rarer
        for f in sorted((data / "train" / name).iterdir())[keep:]:
            f.unlink()
    counts = {"Angry": 6, "Disgust": 1, "Fear": 3, "Happy": 6, "Neutral": 6, "Sad": 6, "Surprise": 6}
    expected = [34 / (7 * n) for n in counts.values()]  # 34 images over 7 classes, each class's share equal
    seen = []
    cross_entropy = torch.nn.functional.cross_entropy

    def recording(*args, weight=None, **kwargs):
        seen.append(weight)
        return cross_entropy(*args, weight=weight, **kwargs)

    monkeypatch.setattr(train_mod.F, "cross_entropy", recording)
    train(tiny(data, tmp_path / "run", epochs=1, class_weights="balanced", protocol="clean"))
    assert seen and all(torch.allclose(w.cpu(), torch.tensor(expected)) for w in seen)
    # The model's probabilities carry an even mix: --prior reads them from there, and so does calibrate.
    assert read_checkpoint(tmp_path / "run" / "best.pth")["class_counts"] == {c: 5 for c in CLASSES}
    fit = calibrate_checkpoint(tmp_path / "run" / "best.pth", data=str(data), workers=0)
    assert fit["class_counts"] == {c: 5 for c in CLASSES}
    seen.clear()
    train(tiny(data, tmp_path / "plain", epochs=1, protocol="clean"))
    assert seen and all(w is None for w in seen)
    assert read_checkpoint(tmp_path / "plain" / "best.pth")["class_counts"] == counts
