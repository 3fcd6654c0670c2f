import importlib.metadata
import inspect
import subprocess
import sys

import pytest

from ferkit.cli import build_parser, main
from ferkit.config import BACKENDS, EVAL_TTA_MODES, PREDICT_TTA_MODES, Config
from ferkit.errors import FerkitError
from ferkit.evaluation.predictions import tta_views
from ferkit.inference import evaluate, export, predict
from ferkit.serve import limits


def test_config_refuses_a_value_out_of_range_in_one_line_naming_it():
    with pytest.raises(FerkitError, match=r"^--lr must be > 0 \(got -1\)$"):
        Config(lr=-1)
    with pytest.raises(FerkitError, match=r"^--label-smoothing must be in \[0, 1\) \(got 1.0\)$"):
        Config(label_smoothing=1.0)
    with pytest.raises(FerkitError, match=r"^--epochs must be a whole number \(got 2.5\)$"):
        Config().updated({"epochs": 2.5})
    # The stride-2 stem doubles the total stride, so the smallest input doubles too.
    with pytest.raises(FerkitError, match=r"^--image-size must be >= 16 for --arch resnet18s2, .* \(got 8\)$"):
        Config(arch="resnet18s2", image_size=8)
    assert Config(image_size=8).image_size == 8 and Config(arch="resnet18s2", image_size=16).image_size == 16


def _ferkit(*argv):
    return subprocess.run([sys.executable, "-m", "ferkit", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr", "-1"], "ferkit: error: --lr must be > 0 (got -1.0)"),
        (["train", "--image-size", "7"], "ferkit: error: --image-size must be >= 8 for --arch resnet18"),
    ],
)
def test_train_refuses_bad_values_before_training_in_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a subprocess
def test_evaluate_of_a_file_that_is_no_checkpoint_prints_one_line(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("garbage\n")
    done = _ferkit("evaluate", str(garbage))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "weights_only" not in done.stderr
    assert done.stderr.startswith(f"ferkit: error: checkpoint {garbage} is truncated or not a ferkit checkpoint")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "ferkit: error: --batch-size 0: 1 or more images a batch"),
        (["--workers", "-1"], "ferkit: error: --workers -1: 0 (load in this process) or more worker processes"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_evaluate_and_calibrate_refuse_a_batch_or_workers_out_of_range_in_one_line(
    untrained_checkpoint, image_folder, tmp_path, capsys, command, flags, message
):
    model = tmp_path / "model.pth"
    model.write_bytes(untrained_checkpoint.read_bytes())  # calibrate would write into it
    assert main([command, str(model), "--data", str(image_folder), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert model.read_bytes() == untrained_checkpoint.read_bytes()


def _option(command, flag):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings or a.dest == flag)


@pytest.mark.parametrize("command", ["evaluate", "predict", "serve"])
def test_shared_options_carry_the_library_defaults(command):
    device = _option(command, "--device")
    assert (device.choices, device.default) == (("auto", "cpu", "cuda"), Config().device)
    assert "fer2013_resnet18.int8" in _option(command, "checkpoint").help
    if command != "evaluate":
        assert _option(command, "--backend").choices == BACKENDS
    tta = _option(command, "--tta")
    modes = EVAL_TTA_MODES if command == "evaluate" else PREDICT_TTA_MODES
    assert tta.default == "none" and tta.choices == modes and set(modes) <= set(EVAL_TTA_MODES)
    for mode in modes:  # each one the predictions know
        tta_views(__import__("torch").zeros(1, 1, 8, 8), mode)


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def test_command_defaults_are_the_library_functions():
    assert _option("evaluate", "--batch-size").default == _default(evaluate.evaluate_checkpoint, "batch_size")
    assert _option("calibrate", "--batch-size").default == _default(evaluate.calibrate_checkpoint, "batch_size")
    assert _option("evaluate", "--workers").default == Config().workers
    assert _option("predict", "--batch-size").default == _default(predict.Predictor, "batch_size")
    assert _option("predict", "--margin").default == _default(predict.Predictor, "margin")
    assert _option("export", "--calibration-images").default == _default(export.export_onnx, "calibration_count")
    for flag, value in [
        ("--max-batch", limits.MAX_BATCH),
        ("--max-queue", limits.MAX_QUEUE),
        ("--max-video-frames", limits.MAX_VIDEO_FRAMES),
        ("--port", limits.PORT),
    ]:
        assert _option("serve", flag).default == value


@pytest.mark.slow  # a subprocess
def test_help_and_the_parser_load_neither_the_server_nor_onnx():
    code = (
        "import sys; from ferkit.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('fastapi', 'onnx', 'onnxruntime', 'uvicorn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"ferkit {importlib.metadata.version('ferkit')}\n"
