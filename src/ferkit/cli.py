"""The ``ferkit`` command: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import (
    BACKENDS,
    CALIBRATION_IMAGES,
    CROP_FORMATS,
    DEVICES,
    EVAL_BATCH_SIZE,
    EVAL_PRECISIONS,
    EVAL_TTA_MODES,
    FACES,
    MARGIN,
    PREDICT_BATCH_SIZE,
    PREDICT_TTA_MODES,
    PROTOCOLS,
    SPLITS,
    Config,
    add_config_arguments,
    config_from_args,
)
from .errors import FerkitError

COMMAND_ENV = "FERKIT_COMMAND"


def _train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .training.loop import TrainingInterrupted, train
    from .training.rundir import read_last

    # torchrun's processes (--nproc) are started with an internal command; the one the user typed reaches them here.
    command = os.environ.get(COMMAND_ENV, args.command)
    cfg, last = config_from_args(args), None
    if args.resume is not None:
        # The saved run is the base, so only what this command sets asks for a change (train() rules on it).
        out = args.resume or cfg.out
        if args.resume and getattr(args, "out", out) != out:
            raise FerkitError(f"--resume {args.resume} and --out {args.out} name two run folders; give one")
        last = read_last(out)  # read once: its config is the base here, the rest is what train() resumes from
        cfg = config_from_args(args, base=Config.from_dict(last["config"])).updated({"out": out})
    elif cfg.init_from:
        from .training.finetune import inherited_settings

        # The network and preprocessing of the checkpoint are the base: a preset, file or flag may still set them.
        cfg = config_from_args(args, base=Config().updated(inherited_settings(cfg.init_from)))
    if args.nproc > 1:
        return _train_processes(cfg, args)
    try:
        train(cfg, resume=args.resume is not None, overwrite=args.overwrite, last=last, command=command)
    except TrainingInterrupted as e:
        if is_main():  # every process of a multi-process run stops with this same message
            print(f"ferkit: {e}", file=sys.stderr)
        return 130
    return 0


def _train_processes(cfg: Config, args: argparse.Namespace) -> int:
    """``--nproc N``: torchrun starts N processes on this machine, each running ``ferkit train`` on ``cfg``."""
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
        os.environ[COMMAND_ENV] = args.command  # torchrun's processes inherit this process's environment
        try:
            run(parse_args(command))
        except ChildFailedError as e:
            return max(e.get_first_failure()[1].exitcode, 1)  # the processes printed their own errors
        except SignalException:  # Ctrl-C: torchrun passed it on and the processes saved their state
            return 130
        finally:
            del os.environ[COMMAND_ENV]
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.metrics import format_difference, format_metrics
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
        min_support=args.min_support,
        detector=_built_detector(args) if args.faces == "detected" else None,
        prior=args.prior,
        against=args.against,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for line in metrics["left_out"]:
            print(line)
        setting = ["whole folder" if metrics["protocol"] == "none" else f"{metrics['protocol']} protocol"]
        if metrics["faces_found"] is not None:
            setting.append(f"faces detected in {metrics['faces_found']} of {metrics['images']} images")
        setting += [f"TTA {metrics['tta']}", metrics["precision"]]
        if metrics["temperature"] != 1.0:  # an uncalibrated file reads as it always did
            setting.append(f"temperature {metrics['temperature']:.3f}")
        if metrics["prior"] != "model":
            setting.append(f"prior {metrics['prior']}")
        print(f"{metrics['split']} ({', '.join(setting)}): " + format_metrics(metrics, list(metrics["per_class"])))
        if args.against is not None:
            other = metrics["against"]
            print(
                f"against {args.against}: accuracy {other['accuracy']:.4f}  macro recall {other['macro_recall']:.4f}  "
                f"ECE {other['ece']:.4f}\n{args.checkpoint or 'the bundled model'} minus it: "
                + format_difference(other["difference"])
            )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .inference.evaluate import calibrate_checkpoint

    fit = calibrate_checkpoint(
        args.checkpoint,
        data=args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        temperature=args.temperature,
    )
    if args.json:
        print(json.dumps(fit, indent=2))
    else:
        print(
            f"wrote {'fitted' if fit['fitted'] else 'given'} temperature {fit['temperature']:.4f} "
            f"into {fit['checkpoint']} "
            f"(was {fit['temperature_before']:.4f}); "
            f"{fit['split']} ({fit['images']} images, {fit['precision']}): NLL {fit['nll_before']:.4f} -> "
            f"{fit['nll_after']:.4f}, ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f}; "
            f"and its training split's class mix ({sum(fit['class_counts'].values())} images, for --prior)"
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
    for line in report["left_out"]:
        print(line)
    print(f"unreadable files: {len(report['unreadable'])}")
    for bad in report["unreadable"]:
        print(f"  {bad['file']}")
    print(f"all-black images: {len(report['black'])}")
    for name in report["black"]:
        print(f"  {name}")
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .data.split import RECORD, split_folder

    done = split_folder(args.path, args.out, args.test, args.val, args.seed)
    if args.json:
        print(json.dumps(asdict(done), indent=2))
        return 0
    for line in done.left_out:
        print(line)
    totals = ", ".join(f"{name} {sum(counts.values())}" for name, counts in done.counts.items())
    how = "copied (another file system)" if done.copied else "linked, not copied"
    print(
        f"{args.out}: {totals} images, each class split alike ({how}; {Path(args.out) / RECORD} says which went where)"
    )
    protocol = " --protocol clean" if "val" in done.counts else ""
    print(f"train on it: ferkit train --data {args.out}{protocol}")
    return 0


def _data_faces(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .inference.facecrops import RECORD, crop_faces

    try:
        done = crop_faces(args.path, args.out, _built_detector(args), args.format, args.all_faces, args.resume)
    except KeyboardInterrupt:
        again = args.command if args.resume else f"{args.command} --resume"
        print(
            f"ferkit: interrupted; {Path(args.out) / RECORD} records the photos done; continue with: {again}",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(asdict(done), indent=2))
        return 0
    which = "every face of each photo" if args.all_faces else "the largest of each photo"
    print(
        f"{done.photos} photos: {done.faces} faces written into {args.out} ({which}), no face found in "
        f"{len(done.no_face)}, {len(done.unreadable)} unreadable (each crop's box, or a photo's problem: "
        f"{Path(args.out) / RECORD})"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .atomic import output_file
    from .inference.predict import (
        Predictor,
        as_inputs,
        mirrored_root,
        predict_videos,
        split_sources,
        stream_images,
        video_drawings,
    )
    from .inference.results import ResultStream, format_summary, format_table, mixed_drawing_folder
    from .inference.tracking import LiveLog, check_smooth
    from .inference.video import check_every, check_span, is_live

    if args.camera is not None and args.input:
        raise FerkitError("--camera reads a camera instead of files; give one or the other")
    if args.camera is None and not args.input:
        raise FerkitError("give an image, folder or video to predict on, or --camera N")
    inputs = as_inputs(args.input) if args.input else []
    files_given = {p.resolve() for p in inputs if isinstance(p, Path)}
    # Checked before the model is loaded: a bad output path would otherwise fail once every result is in.
    outputs = [("--json", args.json, ()), ("--csv", args.csv, ()), ("--summary", args.summary, ())]
    if args.plot:
        from .plots import PLOT_SUFFIXES  # matplotlib's import is half a second: paid only when a plot is asked for

        outputs.append(("--plot", args.plot, PLOT_SUFFIXES))
    for what, value, suffixes in outputs:
        if value and value != "-":
            if output_file(value, what, suffixes).resolve() in files_given:
                raise FerkitError(f"{what} {value} is an input; name another file")
    # Photos and videos (a phone's folder holds both) are read in one run: the photos first, then each video.
    images, videos = ([], [args.camera]) if args.camera is not None else split_sources(inputs)
    live = bool(videos) and all(map(is_live, videos))  # a camera or live streams: Ctrl-C is how they end
    if not videos:
        for what, value in (("--summary", args.summary), ("--plot", args.plot)):
            if value:
                raise FerkitError(f"{what} applies to videos and cameras, whose faces are tracked")
    check_span(args.start, args.end)
    check_every(args.every)
    check_smooth(args.smooth)
    if (args.start or args.end is not None) and (not videos or any(map(is_live, videos))):
        what = "a camera or a live stream, which has no timeline" if videos else "photos"
        raise FerkitError(f"--start and --end apply to video files, not to {what}")
    annotate = mixed_drawing_folder(args.annotate) if images and videos and args.annotate else args.annotate
    # Videos are drawn into a mirror of the inputs' folders, as photos are, unless one video file was given.
    root = mirrored_root(inputs) if len(inputs) > 1 or any(Path(p).is_dir() for p in inputs) else None
    drawn, root = video_drawings(annotate, videos, root) if videos and annotate else (None, None)
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        backend=args.backend,
        device=args.device,
        tta=args.tta,
        margin=args.margin,
        batch_size=args.batch_size,
        detector=None if args.no_detect else _built_detector(args),
        prior=args.prior,
    )
    to_stdout = "-" in (args.json, args.csv)
    files, read = stream_images(predictor, images, not args.no_detect, annotate, videos) if images else ([], iter(()))
    reading = {"prior": predictor.prior, "tta": predictor.tta}
    out = ResultStream(predictor.classes, args.json, args.csv, tracked=bool(videos), **reading)
    results, interrupted, videos_not_read = [], False, {}
    try:
        # Each photo's lines as its batch is read, over a progress bar (on a terminal, for several photos); Ctrl-C
        # keeps what was read, as for video.
        with tqdm(total=len(files), unit="photo", disable=None if len(files) > 1 else True, leave=False) as bar:
            try:
                for result in read:
                    results.append(result)
                    out.write(result)
                    if not to_stdout:
                        bar.write(format_table([result]))
                    elif result.error:  # not lost in a pipe
                        print(f"ferkit: warning: {result.error}", file=sys.stderr)
                    bar.update()
            except KeyboardInterrupt:
                interrupted = True
        if len(results) > 1:
            print(format_summary(results), file=sys.stderr if to_stdout else sys.stdout)
        if videos and not interrupted:
            # A camera's or stream's frames are printed as they come.
            log = LiveLog(sys.stdout) if live and not to_stdout else None
            try:
                summary, interrupted = predict_videos(
                    predictor,
                    videos,
                    detect=not args.no_detect,
                    every=args.every,
                    smooth=args.smooth,
                    annotate=drawn,
                    plot=args.plot,
                    on_frame=log,
                    root=root,
                    photos=files,
                    out=out,
                    start=args.start,
                    end=args.end,
                )
            finally:
                if log:
                    log.close()
            videos_not_read = summary.not_read
            if args.summary:
                Path(args.summary).write_text(summary.to_json() + "\n")
            print(summary.format_table(), file=sys.stderr if to_stdout else sys.stdout)
    finally:
        out.close()
    if interrupted and not live:
        print("ferkit: interrupted; the outputs hold the photos and frames done so far", file=sys.stderr)
        return 130
    return 1 if any(r.error for r in results) or videos_not_read else 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "safetensors":
        if args.int8:
            raise FerkitError("--int8 applies to --format onnx; safetensors weights are fp16")
        from .checkpoint import model_path, read_checkpoint, save_weights
        from .inference.export import output_path

        out = output_path(args.checkpoint, ".safetensors", args.out)
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


def _ensemble(args: argparse.Namespace) -> int:
    from .atomic import output_file
    from .checkpoint import atomic_save, save_weights
    from .inference.ensemble import combine_checkpoints, member_checkpoint

    out = Path(args.out)
    if out.suffix not in (".pth", ".safetensors"):
        raise FerkitError(f"--out {out}: name a .safetensors (fp16 weights) or .pth file")
    out = output_file(out, "--out")  # a new folder is made, as every command's output's is
    if args.member is not None and len(args.checkpoints) != 1:
        raise FerkitError(f"--member takes a network out of one ensemble; {len(args.checkpoints)} models were given")
    if args.member is not None and args.weights is not None:
        raise FerkitError("--weights weigh the models of a new ensemble; --member takes a network out, unweighted")
    ckpt = (
        combine_checkpoints(args.checkpoints, args.weights)
        if args.member is None
        else member_checkpoint(*args.checkpoints, args.member)
    )
    if out.suffix == ".safetensors":
        save_weights(ckpt, out)
    else:
        atomic_save(ckpt, out)
    if args.member is None:
        names = ", ".join(m["source"] + (f" {m['weight']:.3g}" if "weight" in m else "") for m in ckpt["members"])
        kind = "weighted average" if "weight" in ckpt["members"][0] else "average"
        print(f"wrote {out}: the {kind} of {len(ckpt['members'])} models' probabilities ({names})")
    else:
        print(f"wrote {out}: network {args.member} of {args.checkpoints[0]}, alone")
    if "temperature" not in ckpt:
        print(f"fit its temperature before using it: ferkit calibrate {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .evaluation.prior import PHOTO_PRIOR
    from .inference.loading import load_for_inference
    from .inference.modelinfo import describe_model, format_model_info

    info = describe_model(load_for_inference(args.checkpoint, prior=PHOTO_PRIOR))  # the mix predict reads for
    print(json.dumps(info, indent=2) if args.json else format_model_info(info))
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
        max_video_mb=args.max_video_mb,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_video_frames=args.max_video_frames,
        cors_origins=args.cors_origin,
        backend=args.backend,
        device=args.device,
        detector=_built_detector(args),
        prior=args.prior,
        tta=args.tta,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default, as the library defines it, unless its help says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        shown = action.default not in (None, argparse.SUPPRESS) and action.default is not False
        if not action.help or not shown or "default:" in action.help:
            return action.help
        return f"{action.help} (default: {action.default})"


# Options several commands share, each defined once.
def _checkpoint(parser: argparse.ArgumentParser, name: str) -> None:
    from .bundled import BUNDLED_MODELS

    parser.add_argument(
        name,
        nargs="?" if not name.startswith("-") else None,
        help=f"a .pth from ferkit train (or its run folder: its best.pth), a .safetensors/.onnx from ferkit export, "
        f"or a bundled model: {', '.join(BUNDLED_MODELS)} (default: {next(iter(BUNDLED_MODELS))})",
    )


def _device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto picks cuda when present")


def _backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto: onnxruntime for .onnx files, PyTorch otherwise"
    )


def _detector(parser: argparse.ArgumentParser) -> None:
    from .inference.faces import DETECTOR, DETECTORS, MIN_FACE, SCORE_THRESHOLD

    parser.add_argument("--detector", choices=DETECTORS, default=DETECTOR, help="the face detector")
    parser.add_argument("--min-face", type=float, default=MIN_FACE, metavar="PX", help="smallest face side to find")
    parser.add_argument(
        "--face-threshold", type=float, default=SCORE_THRESHOLD, help="retinaface: lowest face score kept"
    )
    parser.add_argument(
        "--max-faces",
        type=int,
        metavar="N",
        help="only the N largest faces of each photo or frame (1: a portrait's subject; default: every face)",
    )


def _built_detector(args: argparse.Namespace):
    from .inference.faces import build_detector

    return build_detector(args.detector, args.min_face, args.face_threshold, args.max_faces)


TTA_HELP = {
    "flip": "the face and its mirror",
    "scales": "the face framed at 85%%, 100%% and 115%%",
    "tencrop": "ten crops of a 12.5%% larger resize",
}


def _tta(parser: argparse.ArgumentParser, modes: tuple[str, ...]) -> None:
    views = "; ".join(f"{m}: {TTA_HELP[m]}" for m in modes if m != "none")
    parser.add_argument(
        "--tta",
        choices=modes,
        default="none",
        help=f"test-time augmentation, the probabilities of several views averaged ({views})",
    )


def _prior(parser: argparse.ArgumentParser, default: str) -> None:
    from .evaluation.prior import PRIORS

    parser.add_argument(
        "--prior",
        default=default,
        metavar="{" + ",".join(PRIORS) + ",CLASS=WEIGHT,...}",
        help="the class mix to read for: photos (everyday photos of faces, as AffectNet's labels have them), model "
        "(its training data's: FER2013's for the bundled model), uniform, or your own weights for every class; "
        "auto: photos when the model records its training data's mix",
    )


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    groups = add_config_arguments(p)
    groups["run"].add_argument(
        "--resume", nargs="?", const="", metavar="RUN_DIR", help="continue RUN_DIR (default: --out) from its last.pth"
    )
    groups["run"].add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    groups["speed"].add_argument(
        "--nproc", type=int, default=1, metavar="N", help="train with N processes on this machine (torchrun)"
    )
    p.set_defaults(func=_train)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation.prior import DEFAULT_PRIOR

    _checkpoint(p, "checkpoint")
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=SPLITS[0],
        help="which split of the protocol; a folder of class folders with no splits is evaluated whole",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, help="default: the checkpoint's")
    p.add_argument(
        "--faces",
        choices=FACES,
        default=FACES[0],
        help="given: each image is the face; detected: each photo's largest face, found and aligned as `ferkit "
        "predict` does (a photo without one is read whole)",
    )
    _detector(p)
    _tta(p, EVAL_TTA_MODES)
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--workers", type=int, default=Config.workers, help="DataLoader worker processes")
    _device(p)
    p.add_argument("--precision", choices=EVAL_PRECISIONS, help="default: the checkpoint's evaluation precision")
    p.add_argument("--limit-per-class", type=int, default=0, help="at most N images per class; 0: all")
    p.add_argument(
        "--min-support", type=int, default=1, metavar="N", help="macro recall over the classes with >= N images"
    )
    _prior(p, DEFAULT_PRIOR)
    p.add_argument(
        "--against",
        metavar="CKPT",
        help="another model read on the same images (faces, TTA, prior): its figures, and the difference in accuracy "
        "and macro recall with paired 95%% intervals",
    )
    p.add_argument("--out", help="folder for the JSON report, confusion-matrix and reliability-diagram PNGs")
    _json(p)
    p.set_defaults(func=_evaluate)


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a .pth (or its run folder), .safetensors or .onnx file to write T and the class mix into"
    )
    p.add_argument("--data", help="dataset whose selection split T is fitted on (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--workers", type=int, default=Config.workers, help="DataLoader worker processes")
    _device(p)
    p.add_argument("--precision", choices=EVAL_PRECISIONS, help="default: the checkpoint's evaluation precision")
    p.add_argument("--temperature", type=float, metavar="T", help="write T instead of fitting (e.g. fp32's on int8)")
    _json(p)
    p.set_defaults(func=_calibrate)


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation.prior import PHOTO_PRIOR
    from .inference.tracking import SMOOTH_S

    p.add_argument(
        "input",
        nargs="*",
        help="photos, videos and folders of them, or their web addresses (https://...; a camera's stream: rtsp://...)",
    )
    _checkpoint(p, "--checkpoint")
    p.add_argument(
        "--camera",
        type=int,
        metavar="N",
        help="read frames from camera N instead (Ctrl-C stops; a network camera: give its rtsp:// address as input)",
    )
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops (like FER2013)")
    _detector(p)
    p.add_argument("--margin", type=float, default=MARGIN, help="haar: grow each face box by this fraction per side")
    _tta(p, PREDICT_TTA_MODES)
    _prior(p, PHOTO_PRIOR)
    _backend(p)
    _device(p)
    p.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="faces classified per forward pass")
    p.add_argument(
        "--every", type=int, default=1, metavar="N", help="video: use every Nth frame (tracks age by the time between)"
    )
    p.add_argument("--start", type=float, default=0.0, metavar="SECONDS", help="video files: read from this time")
    p.add_argument("--end", type=float, metavar="SECONDS", help="video files: read until this time (default: the end)")
    p.add_argument(
        "--smooth",
        type=float,
        default=SMOOTH_S,
        metavar="SECONDS",
        help="video: half-life of each track's smoothed probabilities, which give its label; 0: off",
    )
    p.add_argument("--summary", metavar="FILE", help="video: per-track summary as JSON to FILE (a table is printed)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to FILE (default: stdout)")
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="one row per face to FILE (default: stdout)")
    p.add_argument(
        "--annotate",
        metavar="OUT",
        help="draw boxes and labels: one image or video to file OUT (.png/.jpg, .mp4/.avi) or into folder OUT; "
        "a folder's files into folder OUT",
    )
    p.add_argument("--plot", metavar="PNG", help="video: each track's smoothed probabilities over time")
    p.set_defaults(func=_predict)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", nargs="?", help="a .pth written by ferkit train, or its run folder (default: the bundled model)"
    )
    p.add_argument("--format", choices=("onnx", "safetensors"), default="onnx", help="what to write")
    p.add_argument("--int8", action="store_true", help="onnx: quantize to int8, calibrated on training images")
    p.add_argument("--calibration-data", metavar="PATH", help="--int8: dataset (default: the checkpoint's)")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N", help="--int8: how many")
    p.add_argument("--out", help="output file (default: beside the checkpoint, with the format's suffix)")
    p.set_defaults(func=_export)


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a .pth (or its run folder), .safetensors or .onnx file, or a bundled model's name (default: the bundled "
        "model)",
    )
    _json(p)
    p.set_defaults(func=_info)


def add_ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="checkpoint",
        help="two or more models of the same classes and image size (with --member: one ensemble)",
    )
    p.add_argument("--out", required=True, help="the ensemble's file: .safetensors (fp16 weights) or .pth")
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        metavar="W",
        help="each model's share of the average, in the order given (any positive numbers, scaled to sum to 1; "
        "default: alike), e.g. --weights 1 3",
    )
    p.add_argument(
        "--member",
        type=int,
        metavar="N",
        help="instead: network N (from 0) of an ensemble as a model of its own (e.g. a teacher for --distill-from)",
    )
    p.set_defaults(func=_ensemble)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation.prior import PHOTO_PRIOR
    from .serve import limits

    _checkpoint(p, "--checkpoint")
    p.add_argument("--host", default=limits.HOST, help="address to listen on; 0.0.0.0 for every interface")
    p.add_argument("--port", type=int, default=limits.PORT, help="port to listen on")
    p.add_argument(
        "--certfile",
        metavar="PEM",
        help="serve https:// with this certificate (a phone's browser gives its camera only to a secure page)",
    )
    p.add_argument("--keyfile", metavar="PEM", help="the certificate's private key, where --certfile does not hold it")
    p.add_argument("--max-upload-mb", type=float, default=limits.MAX_UPLOAD_MB, help="largest photo upload accepted")
    p.add_argument("--max-video-mb", type=float, default=limits.MAX_VIDEO_MB, help="largest video upload (/video)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=limits.MAX_PIXELS,
        help="most pixels accepted in one request (one image, or several together)",
    )
    p.add_argument("--max-batch", type=int, default=limits.MAX_BATCH, help="most concurrent uploads in one batch")
    p.add_argument("--max-queue", type=int, default=limits.MAX_QUEUE, help="requests in progress before 503")
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=limits.MAX_VIDEO_FRAMES,
        help="most frames read from an uploaded video; a longer one is read every Nth frame to fit",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page's origin (e.g. http://localhost:3000, or *) whose scripts may call the API; repeatable",
    )
    _detector(p)
    _tta(p, PREDICT_TTA_MODES)
    _prior(p, PHOTO_PRIOR)
    _backend(p)
    _device(p)
    p.set_defaults(func=_serve)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    commands = p.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser(
        "check", help="per-split, per-class counts; unreadable and all-black images", formatter_class=_HelpFormatter
    )
    check.add_argument("path", nargs="?", help="dataset (default: $FERKIT_DATA, then ./data/fer2013)")
    _json(check)
    check.set_defaults(func=_data_check)
    faces = commands.add_parser(
        "faces",
        help="each photo's largest face, upright and framed as `ferkit predict` classifies it, written at the "
        "photo's own path in a new folder (a dataset of photos made one of faces, for training)",
        formatter_class=_HelpFormatter,
    )
    faces.add_argument("path", help="folder of photos, in any layout (train/<class>/, a folder of class folders)")
    faces.add_argument("--out", required=True, help="new folder for the crops and faces.csv")
    faces.add_argument("--format", choices=tuple(CROP_FORMATS), default="jpg", help="the crops' image format")
    faces.add_argument(
        "--all-faces",
        action="store_true",
        help="every face of each photo, largest first, as NAME_0, NAME_1, ... (faces to sort into classes by hand)",
    )
    faces.add_argument(
        "--resume",
        action="store_true",
        help="go on with a folder this command was making (stopped part-way): the photos its faces.csv records are "
        "not read again; give the --format, --all-faces and detector options it was made with (checked)",
    )
    _detector(faces)
    _json(faces)
    faces.set_defaults(func=_data_faces)
    split = commands.add_parser(
        "split",
        help="a folder of class folders split into train/, val/ and test/ for training, class by class, by a seed",
        formatter_class=_HelpFormatter,
    )
    split.add_argument("path", help="folder of class folders (angry/, happy/, ...), e.g. made by `ferkit data faces`")
    split.add_argument("--out", required=True, help="new folder for train/, val/, test/ and split.json")
    split.add_argument("--test", type=float, default=0.2, help="fraction of each class for test/ (reported on)")
    split.add_argument(
        "--val", type=float, default=0.1, help="fraction of each class for val/ (chooses the epoch); 0 for none"
    )
    split.add_argument("--seed", type=int, default=0, help="the draw: the same seed makes the same split")
    _json(split)
    split.set_defaults(func=_data_split)


# docs/recipe.md ("The command line") has what each option does in full.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train a model (defaults: the specification's)", add_train_arguments),
    "evaluate": ("metrics of a checkpoint on a dataset split", add_evaluate_arguments),
    "calibrate": (
        "fit a checkpoint's temperature on its selection split; record its training data's class mix",
        add_calibrate_arguments,
    ),
    "predict": ("expressions of the faces in images, a folder, a video or a camera", add_predict_arguments),
    "export": ("export a checkpoint for deployment", add_export_arguments),
    "info": ("what a model file records: network, classes, preprocessing, temperature, training", add_info_arguments),
    "ensemble": ("combine trained models into one that averages their probabilities", add_ensemble_arguments),
    "serve": ("HTTP API and web page for photos and webcam snapshots", add_serve_arguments),
    "data": ("dataset tools", add_data_arguments),
}


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``ferkit`` parser; only ``commands`` (default: all) get their options, so a run imports what its
    command needs."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = set(COMMANDS if commands is None else commands)
    for name, (help, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help, formatter_class=_HelpFormatter)
        if name in chosen:
            add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[:1]).parse_args(argv)
    args.command = shlex.join(["ferkit", *argv])
    try:
        return args.func(args)
    except FerkitError as e:
        # Errors raised in DataLoader workers arrive wrapped with a traceback; the last line is ours.
        message = str(e).strip().splitlines()[-1].removeprefix("ferkit.errors.FerkitError: ")
        print(f"ferkit: error: {message}", file=sys.stderr)
        return 2
