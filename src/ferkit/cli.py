"""The ``ferkit`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import json
import sys

from .config import add_config_arguments, config_from_args
from .errors import FerkitError


def _train(args: argparse.Namespace) -> int:
    from .train import TrainingInterrupted, train

    cfg = config_from_args(args)
    if args.resume:
        cfg = cfg.updated({"out": args.resume})
    try:
        train(cfg, resume=args.resume is not None, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f"ferkit: {e}", file=sys.stderr)
        return 130
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_metrics

    metrics = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, protocol=args.protocol,
                                  tta=args.tta, batch_size=args.batch_size, workers=args.workers,
                                  device=args.device, limit_per_class=args.limit_per_class, out_dir=args.out)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['split']} ({metrics['protocol']} protocol, TTA {metrics['tta']}): " +
              format_metrics(metrics, list(metrics["per_class"])))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .data import CLASSES, check_dataset

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the spec model (defaults are the specification's)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                   help="continue RUN_DIR (default: --out) from its last.pth, with its own config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="a .pth written by ferkit train")
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("report", "select", "train"), default="report",
                   help="report: PrivateTest (clean) or test/ (spec); select: PublicTest (clean) (default: report)")
    p.add_argument("--protocol", choices=("spec", "clean"), help="default: the checkpoint's")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), default="none", help="test-time augmentation")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--limit-per-class", type=int, default=0, help="at most N images per class (0 = all)")
    p.add_argument("--out", help="folder for the JSON report and confusion-matrix PNG")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_evaluate)

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
