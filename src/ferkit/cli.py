"""The ``ferkit`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import BUNDLED_MODELS
from .config import Config, add_config_arguments, config_from_args
from .errors import FerkitError


def _train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .training.loop import TrainingInterrupted, train
    from .training.rundir import read_last

    cfg, last = config_from_args(args), None
    if args.resume is not None:
        # The saved run is the base, so only what this command sets asks for a change (train() rules on it).
        out = args.resume or cfg.out
        if args.resume and getattr(args, "out", out) != out:
            raise FerkitError(f"--resume {args.resume} and --out {args.out} name two run folders; give one")
        last = read_last(out)  # read once: its config is the base here, the rest is what train() resumes from
        cfg = config_from_args(args, base=Config.from_dict(last["config"])).updated({"out": out})
    if args.nproc > 1:
        return _train_processes(cfg, args)
    try:
        train(cfg, resume=args.resume is not None, overwrite=args.overwrite, last=last)
    except TrainingInterrupted as e:
        if is_main():  # every process of a multi-process run stops with this same message
            print(f"ferkit: {e}", file=sys.stderr)
        return 130
    return 0


def _train_processes(cfg: Config, args: argparse.Namespace) -> int:
    """``--nproc N``: torchrun starts N processes on this machine, each running ``ferkit train`` on ``cfg``."""
    import os
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "WORLD_SIZE" in os.environ:
        raise FerkitError("--nproc starts processes of its own; leave it out when torchrun starts ferkit")
    with tempfile.TemporaryDirectory() as tmp:
        # The resolved config travels whole, so each process trains exactly what this command was given.
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(cfg.to_dict()))
        command = ["--standalone", f"--nproc-per-node={args.nproc}", "-m", "ferkit", "train", "--config", str(config)]
        command += ["--resume"] * (args.resume is not None) + ["--overwrite"] * args.overwrite
        try:
            run(parse_args(command))
        except ChildFailedError as e:
            return max(e.get_first_failure()[1].exitcode, 1)  # the processes printed their own errors
        except SignalException:  # Ctrl-C: torchrun passed it on and the processes saved their state
            return 130
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.metrics import format_metrics
    from .inference.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        protocol=args.protocol,
        tta=args.tta,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        limit_per_class=args.limit_per_class,
        out_dir=args.out,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"{metrics['split']} ({metrics['protocol']} protocol, TTA {metrics['tta']}, {metrics['precision']}): "
            + format_metrics(metrics, list(metrics["per_class"]))
        )
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .data.datasets import CLASSES, check_dataset

    report = check_dataset(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"dataset {report['path']}")
    print(f"{'split':<12}" + "".join(f"{c:>9}" for c in CLASSES) + f"{'total':>9}")
    for split, counts in report["splits"].items():
        print(f"{split:<12}" + "".join(f"{counts[c]:>9}" for c in CLASSES) + f"{sum(counts.values()):>9}")
    print(f"unreadable files: {len(report['unreadable'])}")
    for bad in report["unreadable"]:
        print(f"  {bad['file']}")
    print(f"all-black images: {len(report['black'])}")
    for name in report["black"]:
        print(f"  {name}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference.predict import Predictor, predict_source
    from .inference.results import format_table, write_results

    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        backend=args.backend,
        device=args.device,
        tta=args.tta,
        margin=args.margin,
        batch_size=args.batch_size,
    )
    live = args.camera is not None and not (args.json or args.csv)  # a camera's frames are printed as they come
    results = predict_source(
        predictor,
        args.input,
        args.camera,
        detect=not args.no_detect,
        every=args.every,
        annotate=args.annotate,
        plot=args.plot,
        on_frame=(lambda r: print(format_table([r]), flush=True)) if live else None,
    )
    if not live:
        write_results(results, predictor.classes, args.json, args.csv)
    return 1 if any(r.error for r in results) else 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "safetensors":
        if args.int8:
            raise FerkitError("--int8 applies to --format onnx; safetensors weights are fp16")
        from .checkpoint import model_path, read_checkpoint, save_weights
        from .inference.export import output_path

        out = Path(args.out) if args.out else output_path(args.checkpoint, ".safetensors")
        save_weights(read_checkpoint(model_path(args.checkpoint)), out)
        print(f"wrote {out} (fp16 weights; config and classes in the header)")
        return 0
    from .inference.export import OPSET, export_onnx

    out = export_onnx(
        args.checkpoint,
        args.out,
        int8=args.int8,
        calibration_data=args.calibration_data,
        calibration_count=args.calibration_images,
    )
    kind = "int8, calibrated on training images" if args.int8 else "fp32"
    print(f"wrote {out} (ONNX opset {OPSET}, {kind}; input 'image' [batch, 3, H, W] normalised, output 'logits')")
    if args.int8:
        print(f"check its accuracy against the original: ferkit evaluate {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import run
    except ImportError as e:
        raise FerkitError(f"ferkit serve needs {e.name}: pip install 'ferkit[serve]'") from None
    run(
        args.checkpoint,
        args.host,
        args.port,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        backend=args.backend,
        device=args.device,
    )
    return 0


CHECKPOINT_HELP = (
    f"a .pth from ferkit train, a .safetensors/.onnx from ferkit export, or a bundled model: "
    f"{', '.join(BUNDLED_MODELS)} (int8 ONNX, fastest on CPU) (default: {next(iter(BUNDLED_MODELS))})"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train the spec model (defaults are the specification's)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = add_config_arguments(p)
    groups["run"].add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue RUN_DIR (default: --out) from its last.pth with its saved config; "
        "flags given with it may raise --epochs and change what says so, and any other "
        "change is refused",
    )
    groups["run"].add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    groups["speed"].add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes on this machine (torchrun, DistributedDataParallel; "
        "one GPU each); --batch-size stays the global batch",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    p.add_argument("checkpoint", nargs="?", help=CHECKPOINT_HELP)
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument(
        "--split",
        choices=("report", "select", "train"),
        default="report",
        help="report: PrivateTest (clean) or test/ (spec); select: PublicTest (clean) (default: report)",
    )
    p.add_argument("--protocol", choices=("spec", "clean"), help="default: the checkpoint's")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), default="none", help="test-time augmentation")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="default: the checkpoint's evaluation precision (fp32: the same figures on every machine)",
    )
    p.add_argument("--limit-per-class", type=int, default=0, help="at most N images per class (0 = all)")
    p.add_argument("--out", help="folder for the JSON report and confusion-matrix PNG")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="expressions of the faces in images, a folder, a video or a camera")
    p.add_argument("input", nargs="?", help="image file, folder of images, or video file")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--camera", type=int, metavar="N", help="read frames from camera N instead (Ctrl-C stops)")
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops (like FER2013)")
    p.add_argument("--margin", type=float, default=0.1, help="grow each face box by this fraction per side")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="test-time augmentation")
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="auto: onnxruntime for .onnx files, PyTorch otherwise",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="faces classified per forward pass")
    p.add_argument("--every", type=int, default=1, metavar="N", help="video: use every Nth frame")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to FILE (default: stdout)")
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="one row per face to FILE (default: stdout)")
    p.add_argument(
        "--annotate",
        metavar="OUT",
        help="draw boxes and labels: an image file for one image, a folder for a folder, a video file for a video",
    )
    p.add_argument("--plot", metavar="PNG", help="video: plot the expression probabilities over time")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a checkpoint for deployment")
    p.add_argument(
        "checkpoint", nargs="?", help="a .pth written by ferkit train (default: the model bundled with ferkit)"
    )
    p.add_argument(
        "--format",
        choices=("onnx", "safetensors"),
        default="onnx",
        help="onnx: for onnxruntime and other runtimes; safetensors: fp16 weights ferkit loads directly",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx: quantize to int8 (static, calibrated on training images): about 2x faster on CPU",
    )
    p.add_argument(
        "--calibration-data",
        metavar="PATH",
        help="--int8: dataset whose training images calibrate it (default: the checkpoint's)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=1024,
        metavar="N",
        help="--int8: training images used for calibration (default: 1024)",
    )
    p.add_argument(
        "--out",
        help="output file (default: the checkpoint's path with the format's suffix, "
        ".int8.onnx for --int8; the bundled model's: in the current folder)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="HTTP API and web page for photos and webcam snapshots")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=10, help="largest request body accepted (default: 10)")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels (default: 40000000)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most concurrent uploads classified in one batch; 1 turns micro-batching off (default: 8)",
    )
    p.add_argument(
        "--max-queue", type=int, default=32, help="requests in progress beyond which /predict answers 503 (default: 32)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="auto: onnxruntime for .onnx files, PyTorch otherwise",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=_serve)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="per-split, per-class counts; unreadable and all-black images")
    c.add_argument("path", nargs="?", help="dataset (default: $FERKIT_DATA, then ./data/fer2013)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FerkitError as e:
        # Errors raised in DataLoader workers arrive wrapped with a traceback; the last line is ours.
        message = str(e).strip().splitlines()[-1].removeprefix("ferkit.errors.FerkitError: ")
        print(f"ferkit: error: {message}", file=sys.stderr)
        return 2
