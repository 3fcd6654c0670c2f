"""`ferkit ensemble`: several trained models read as one, the average of their probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LiveServer

from ferkit.checkpoint import atomic_save, load_model, make_checkpoint, read_checkpoint, store_calibration
from ferkit.cli import main
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.errors import FerkitError
from ferkit.model import Ensemble, build_model


def member(path: Path, seed: int, width: int = 8, image_size: int = 32, classes=CLASSES, **record) -> Path:
    """An untrained model with BatchNorm statistics of its own, so that members disagree; ``record``: more of what
    training records (``pflop``)."""
    torch.manual_seed(seed)
    cfg = Config().updated({"image_size": image_size, "width": width})
    model = build_model(cfg, len(classes)).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, image_size, image_size) * (1 + seed) + 0.3 * seed)
    atomic_save(make_checkpoint(model.eval(), cfg, tuple(classes), epoch=seed, temperature=1.5, **record), path)
    return path


def probs(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(images), dim=1).numpy()


def test_ensemble_reads_the_mean_of_its_members_probabilities(tmp_path, capsys):
    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2, width=12)
    out = tmp_path / "pair.pth"
    assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 0
    assert "average of 2 models" in capsys.readouterr().out
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = (probs(load_model(a).model, images) + probs(load_model(b).model, images)) / 2
    loaded = load_model(out)
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 2
    got = probs(loaded.model, images)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got - probs(load_model(a).model, images)).max() > 1e-3  # the members do disagree
    ckpt = read_checkpoint(out)
    # Each member keeps how to build it and where it came from; the ensemble has no temperature until calibrated.
    assert [m["source"] for m in ckpt["members"]] == ["a.pth", "b.pth"]
    assert [m["config"]["width"] for m in ckpt["members"]] == [8, 12]
    assert [m["epoch"] for m in ckpt["members"]] == [1, 2]
    assert "temperature" not in ckpt


def test_a_weighted_ensemble_reads_the_weighted_mean_and_records_each_share(tmp_path, capsys):
    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2, width=12)
    out, fp16 = tmp_path / "pair.pth", tmp_path / "pair.safetensors"
    assert main(["ensemble", str(a), str(b), "--weights", "1", "3", "--out", str(out)]) == 0
    assert "weighted average of 2 models' probabilities (a.pth 0.25, b.pth 0.75)" in capsys.readouterr().out
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pa, pb = probs(load_model(a).model, images), probs(load_model(b).model, images)
    got = probs(load_model(out).model, images)
    assert np.abs(got - (0.25 * pa + 0.75 * pb)).max() < 1e-6
    assert np.abs(got - (pa + pb) / 2).max() > 1e-3  # the shares do change the reading
    assert [m["weight"] for m in read_checkpoint(out)["members"]] == [0.25, 0.75]
    # The shares travel in the safetensors header.
    assert main(["ensemble", str(a), str(b), "--weights", "1", "3", "--out", str(fp16)]) == 0
    assert load_model(fp16).model.weights == (0.25, 0.75)
    # Taken back out, a network is a model of its own again: no share.
    assert main(["ensemble", str(out), "--member", "1", "--out", str(tmp_path / "b_again.pth")]) == 0
    assert "weight" not in read_checkpoint(tmp_path / "b_again.pth")


def test_a_weighted_ensemble_among_the_models_splits_its_share_as_it_weighs_its_members(tmp_path):
    a, b, c = (member(tmp_path / f"{n}.pth", seed) for n, seed in (("a", 1), ("b", 2), ("c", 3)))
    pair, trio = tmp_path / "pair.pth", tmp_path / "trio.pth"
    assert main(["ensemble", str(a), str(b), "--weights", "1", "3", "--out", str(pair)]) == 0
    assert main(["ensemble", str(pair), str(c), "--weights", "2", "2", "--out", str(trio)]) == 0
    assert [m["weight"] for m in read_checkpoint(trio)["members"]] == pytest.approx([0.125, 0.375, 0.5])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = sum(w * probs(load_model(p).model, images) for w, p in ((0.125, a), (0.375, b), (0.5, c)))
    assert np.abs(probs(load_model(trio).model, images) - want).max() < 1e-5
    # Shares that come out equal are an even average, written as one always was.
    even = tmp_path / "even.pth"
    assert main(["ensemble", str(a), str(b), "--weights", "2", "2", "--out", str(even)]) == 0
    assert all("weight" not in m for m in read_checkpoint(even)["members"])
    assert load_model(even).model.weights is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "1"], r"^--weights: 1 weights for 2 models; give one for each model$"),
        (["--weights", "1", "0"], r"^--weights 1.0 0.0: each model's weight must be a positive number$"),
        (["--weights", "1", "nan"], r"each model's weight must be a positive number$"),
    ],
)
def test_weights_that_do_not_fit_the_models_are_refused_in_one_line(tmp_path, args, message):
    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2)
    with pytest.raises(FerkitError, match=message):
        main_raising(["ensemble", str(a), str(b), *args, "--out", str(tmp_path / "e.pth")])
    assert not (tmp_path / "e.pth").exists()


def test_an_ensemble_among_the_models_contributes_its_members_and_survives_safetensors(tmp_path):
    a, b, c = (member(tmp_path / f"{n}.pth", seed) for n, seed in (("a", 1), ("b", 2), ("c", 3)))
    pair, trio = tmp_path / "pair.safetensors", tmp_path / "trio.safetensors"
    assert main(["ensemble", str(a), str(b), "--out", str(pair)]) == 0
    assert main(["ensemble", str(pair), str(c), "--out", str(trio)]) == 0
    ckpt = read_checkpoint(trio)
    assert [m["source"] for m in ckpt["members"]] == ["a.pth", "b.pth", "c.pth"]
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = np.mean([probs(load_model(p).model, images) for p in (a, b, c)], axis=0)
    # safetensors holds the weights in fp16.
    assert np.abs(probs(load_model(trio).model, images) - want).max() < 5e-3


def test_a_member_taken_out_of_an_ensemble_reads_as_it_did_before_it_went_in(tmp_path, capsys):
    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2, width=12)
    pair = tmp_path / "pair.pth"
    assert main(["ensemble", str(a), str(b), "--out", str(pair)]) == 0
    store_calibration(pair, temperature=0.8, class_counts=dict.fromkeys(CLASSES, 10))
    capsys.readouterr()
    out = tmp_path / "members" / "b_again.pth"  # a folder not made yet is made, as for every command's output
    assert main(["ensemble", str(pair), "--member", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: network 1 of {pair}, alone")
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    again = load_model(out)
    assert not isinstance(again.model, Ensemble) and again.config.width == 12
    assert np.abs(probs(again.model, images) - probs(load_model(b).model, images)).max() < 1e-6
    # Its own record and temperature, not the average's; the training mix is the ensemble's.
    ckpt = read_checkpoint(out)
    assert (ckpt["epoch"], ckpt["temperature"]) == (2, 1.5)
    assert ckpt["class_counts"] == dict.fromkeys(CLASSES, 10)
    # Paired again under another file name, it is still named by the run it was trained in.
    kept = tmp_path / "kept.safetensors"
    assert main(["ensemble", str(pair), "--member", "1", "--out", str(kept)]) == 0
    assert main(["ensemble", str(a), str(kept), "--out", str(tmp_path / "again.safetensors")]) == 0
    assert [m["source"] for m in read_checkpoint(tmp_path / "again.safetensors")["members"]] == ["a.pth", "b.pth"]


def test_an_ensemble_records_its_members_training_compute_summed_only_when_each_has_one(tmp_path):
    a, b = member(tmp_path / "a.pth", 1, pflop=0.5), member(tmp_path / "b.pth", 2, pflop=1.25)
    pair, trio = tmp_path / "pair.safetensors", tmp_path / "trio.safetensors"
    assert main(["ensemble", str(a), str(b), "--out", str(pair)]) == 0
    ckpt = read_checkpoint(pair)  # through the safetensors header
    assert ckpt["pflop"] == pytest.approx(1.75) and [m["pflop"] for m in ckpt["members"]] == [0.5, 1.25]
    assert main(["ensemble", str(pair), "--member", "1", "--out", str(tmp_path / "one.pth")]) == 0
    assert read_checkpoint(tmp_path / "one.pth")["pflop"] == 1.25  # the network's own, not the pair's
    # A member whose file does not say what it cost leaves the total unknown, not short.
    assert main(["ensemble", str(pair), str(member(tmp_path / "c.pth", 3)), "--out", str(trio)]) == 0
    assert "pflop" not in read_checkpoint(trio)


@pytest.mark.parametrize(
    "args, message",
    [
        (["a.pth", "--member", "0"], r"a.pth is a single network, not an ensemble"),
        (["pair.pth", "--member", "2"], r"^--member 2: .*pair.pth has 2 networks \(0: a.pth, 1: b.pth\)$"),
        (["pair.pth", "a.pth", "--member", "0"], "--member takes a network out of one ensemble; 2 models were given"),
        (["pair.pth", "--member", "0", "--weights", "1"], "--weights weigh the models of a new ensemble"),
    ],
)
def test_a_member_is_taken_only_out_of_one_ensemble_that_has_it(tmp_path, args, message):
    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2)
    assert main(["ensemble", str(a), str(b), "--out", str(tmp_path / "pair.pth")]) == 0
    paths = [str(tmp_path / x) if x.endswith(".pth") else x for x in args]
    with pytest.raises(FerkitError, match=message):
        main_raising(["ensemble", *paths, "--out", str(tmp_path / "one.pth")])


def test_members_from_training_runs_are_named_by_their_run_folders(tmp_path, capsys):
    runs = [tmp_path / "run1", tmp_path / "run2"]
    for seed, run in enumerate(runs, 1):
        run.mkdir()
        member(run / "best.pth", seed)
    out = tmp_path / "pair.pth"
    assert main(["ensemble", *(str(run / "best.pth") for run in runs), "--out", str(out)]) == 0
    assert "(run1/best.pth, run2/best.pth)" in capsys.readouterr().out
    assert [m["source"] for m in read_checkpoint(out)["members"]] == ["run1/best.pth", "run2/best.pth"]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"classes": ("happy", "sad")}, "must be trained for the same classes"),
        ({"image_size": 40}, "must share their preprocessing"),
    ],
)
def test_models_that_cannot_be_averaged_are_refused_in_one_line(tmp_path, second, message):
    a = member(tmp_path / "a.pth", 1)
    b = member(tmp_path / "b.pth", 2, **second)
    with pytest.raises(FerkitError, match=message):
        main_raising(["ensemble", str(a), str(b), "--out", str(tmp_path / "e.pth")])
    assert not (tmp_path / "e.pth").exists()


def main_raising(argv: list[str]) -> None:
    from ferkit.cli import build_parser

    args = build_parser(argv[:1]).parse_args(argv)
    args.func(args)


def test_ensemble_needs_two_models_and_a_weights_file_name(tmp_path, capsys):
    a = member(tmp_path / "a.pth", 1)
    assert main(["ensemble", str(a), "--out", str(tmp_path / "e.pth")]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(a), "--out", str(tmp_path / "e.onnx")]) == 2
    assert ".safetensors (fp16 weights) or .pth" in capsys.readouterr().err
    assert main(["ensemble", str(a), "fer2013_resnet18.int8", "--out", str(tmp_path / "e.pth")]) == 2
    assert "fer2013_resnet18.int8: an ONNX graph cannot be combined" in capsys.readouterr().err


def test_an_ensemble_is_calibrated_evaluated_and_exported_as_any_model(tmp_path, image_folder):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ferkit.inference.evaluate import calibrate_checkpoint, evaluate_checkpoint
    from ferkit.inference.export import export_onnx
    from ferkit.inference.loading import load_for_inference

    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2)
    pair = tmp_path / "pair.pth"
    assert main(["ensemble", str(a), str(b), "--out", str(pair)]) == 0
    fit = calibrate_checkpoint(pair, data=str(image_folder), workers=0)
    assert read_checkpoint(pair)["temperature"] == pytest.approx(fit["temperature"])
    metrics = evaluate_checkpoint(pair, data=str(image_folder), workers=0)
    assert metrics["temperature"] == pytest.approx(fit["temperature"]) and 0 <= metrics["accuracy"] <= 1
    # The pair records how it reads the split it was calibrated on, as a run records its best epoch's figures.
    selected = evaluate_checkpoint(pair, data=str(image_folder), split="select", workers=0)
    recorded = read_checkpoint(pair)
    assert recorded["select_split"] == fit["split"] == "test"
    assert recorded["metrics"] == pytest.approx({k: selected[k] for k in ("accuracy", "macro_f1")})
    onnx_path = export_onnx(pair, tmp_path / "pair.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["ferkit_temperature"]) == pytest.approx(
        fit["temperature"]
    )
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    got = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert np.abs(got - probs(load_model(pair).model, images)).max() < 1e-4
    # int8: each member's first convolution stays fp32, as a single model's does.
    int8 = export_onnx(pair, tmp_path / "pair.int8.onnx", int8=True, calibration_data=image_folder)
    graph = __import__("onnx").load(str(int8)).graph
    stems = [n for n in graph.node if n.op_type == "Conv" and graph.input[0].name in n.input]
    assert len(stems) == 2 and any(n.op_type == "QuantizeLinear" for n in graph.node)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).sum(1).numpy(), 1, atol=1e-4)
    # Both exports keep the training record, so whoever loads the ONNX file (the server's /model) names the members.
    for path in (onnx_path, int8):
        record = load_for_inference(path).record
        assert [m["source"] for m in record["members"]] == ["a.pth", "b.pth"]
        assert [m["epoch"] for m in record["members"]] == [1, 2]


def test_the_server_names_an_ensembles_networks(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")

    from ferkit.inference.predict import Predictor
    from ferkit.serve.app import ModelInfo, create_app, describe_model

    pair = tmp_path / "pair.safetensors"
    a, b = member(tmp_path / "a.pth", 1, pflop=0.5), member(tmp_path / "b.pth", 2, pflop=1.25)
    assert main(["ensemble", str(a), str(b), "--out", str(pair)]) == 0
    store_calibration(pair, 0.8)
    predictor = Predictor.from_checkpoint(str(pair), detector=None)
    with LiveServer(create_app(predictor, describe_model(predictor))) as server:
        model = httpx.get(server.url + "/model", timeout=60).json()
    assert model["temperature"] == pytest.approx(0.8)  # the pair's own, fitted for the average
    ModelInfo.model_validate(model)  # what /model answers keeps to its documented schema
    assert model["checkpoint"] == "pair.safetensors" and (model["epoch"], model["metrics"]) == (None, None)
    # An ensemble has no epoch of its own; each network's record is there, by the file it came from.
    assert [(m["source"], m["arch"], m["epoch"], m["pflop"], m["weight"]) for m in model["members"]] == [
        ("a.pth", "resnet18", 1, 0.5, None),  # an even average: no shares
        ("b.pth", "resnet18", 2, 1.25, None),
    ]
    assert model["pflop"] == pytest.approx(1.75)


def test_a_weighted_ensemble_exports_to_onnx_and_says_its_shares(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ferkit.inference.export import export_onnx
    from ferkit.inference.loading import load_for_inference

    a, b = member(tmp_path / "a.pth", 1), member(tmp_path / "b.pth", 2, width=12)
    pair = tmp_path / "pair.pth"
    assert main(["ensemble", str(a), str(b), "--weights", "3", "1", "--out", str(pair)]) == 0
    onnx_path = export_onnx(pair, tmp_path / "pair.onnx")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    want = 0.75 * probs(load_model(a).model, images) + 0.25 * probs(load_model(b).model, images)
    assert np.abs(torch.softmax(torch.from_numpy(logits), 1).numpy() - want).max() < 1e-4
    assert [m["weight"] for m in load_for_inference(onnx_path).record["members"]] == [0.75, 0.25]
    capsys.readouterr()
    assert main(["info", str(onnx_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "pair.onnx: the weighted average of 2 networks: resnet18 width 8 (weight 0.75), resnet18 width 12 (weight 0.25)"
    )
