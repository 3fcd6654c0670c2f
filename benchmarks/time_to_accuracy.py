"""Accuracy against training compute: train a recipe, record PFLOP, wall time and PublicTest per epoch.

    python benchmarks/time_to_accuracy.py run --name quick -- --preset quick --out runs/tta_quick
    python benchmarks/time_to_accuracy.py run --name w48 -- --preset bundled --out runs/bundled   # or --resume
    python benchmarks/time_to_accuracy.py plot                  # every result so far: PrivateTest vs PFLOP

``run`` passes everything after ``--`` to ``ferkit train`` (``--data`` defaults to FER2013 beside the
repository, ``--protocol clean`` is required), so a recipe is measured exactly as a user runs it. A run
folder that already holds a finished run (report.json) is not trained again, only measured: runs started
by hand, or continued with ``--resume`` over several sessions, are recorded the same way. It writes
``benchmarks/results/time_to_accuracy_NAME.json``: the command, machine, GFLOP per training image, per
epoch the cumulative PFLOP, wall minutes and PublicTest accuracy (selection split), and once at the end
PrivateTest (best PublicTest epoch, fp32, no TTA; flip TTA beside), its ECE before and after a temperature
fitted on PublicTest, and the real-photo collections beside FER2013 (webfaces-dev, CK+48).

``seeds NAME RUN...`` gives one recipe's figures over its seeds: recorded runs whose configs differ only in
the seed (and in how they were computed), their mean and standard deviation (n - 1), into
``benchmarks/results/seeds_NAME.json``.

``plot`` draws ``benchmarks/results/accuracy_vs_compute.png`` from those files (a run started with ``--init-from``
at its start's PFLOP and its own, left out where the start records none): PrivateTest against PFLOP, one point per
run; webfaces-dev macro recall against PublicTest (the two figures recipes are chosen by), coloured by PFLOP; and
each run's PublicTest curve over its epochs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

from ferkit.checkpoint import model_path
from ferkit.cli import main as ferkit_main
from ferkit.config import Config
from ferkit.inference.evaluate import calibrate_checkpoint, evaluate_checkpoint
from ferkit.runtime import machine_description
from ferkit.training.rundir import is_watched

RESULTS = Path(__file__).resolve().parent / "results"


def out_dir(train_args: list[str]) -> Path:
    if "--resume" in train_args:
        return Path(train_args[train_args.index("--resume") + 1])
    if "--out" not in train_args:
        sys.exit("time_to_accuracy: give the run folder with --out (or --resume RUN) after --")
    return Path(train_args[train_args.index("--out") + 1])


def first_command(folder: Path) -> str | None:
    """The command that started the run (train.log heads each sitting's part with its command), else None."""
    with open(folder / "train.log") as f:
        for line in f:
            if " command: ferkit " in line:
                return line.split(" command: ", 1)[1].strip()
    return None


def run(name: str, train_args: list[str], data_default: str) -> dict:
    if "--data" not in train_args and "--resume" not in train_args:
        train_args = [*train_args, "--data", data_default]
    folder = out_dir(train_args)
    if not (folder / "report.json").is_file():
        code = ferkit_main(["train", *train_args])
        if code:
            sys.exit(f"time_to_accuracy: ferkit train exited with {code}")
    report = json.loads((folder / "report.json").read_text())
    if report["protocol"] != "clean":
        sys.exit("time_to_accuracy: train with --protocol clean (select on PublicTest, report PrivateTest)")
    config = json.loads((folder / "config.json").read_text())
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    minutes = 0.0
    epochs = []
    for row in rows:
        minutes += float(row["epoch_seconds"]) / 60
        epochs.append(
            {
                "epoch": int(row["epoch"]),
                "pflop": float(row["pflop"]),
                "wall_minutes": round(minutes, 2),
                "public_test": float(row["select_acc"]),
                # --watch folders' figures (webfaces-dev, CK+48), where the run watched them
                **{k: float(v) for k, v in row.items() if is_watched(k) and v != ""},
            }
        )
    best = model_path(folder)
    flip = evaluate_checkpoint(best, data=config["data"], split="report", tta="flip", workers=2)
    real = real_photo_figures(best, Path(config["data"]))
    calibration = calibrated_figures(best, config["data"])
    path = RESULTS / f"time_to_accuracy_{name}.json"
    command = first_command(folder)
    if command is None:  # a run from before train.log recorded its commands
        command = "ferkit train " + shlex.join(train_args)
        if "--resume" in train_args and path.is_file():
            command = json.loads(path.read_text())["command"]
    result = {
        "name": name,
        "command": command,
        "machine": report.get("machine") or machine_description(),
        "train_precision": report.get("train_precision"),
        "eval_precision": report.get("precision", "fp32"),
        "config": config,
        "gflop_per_image": report.get("gflop_per_image"),
        "pflop": report["pflop"],
        # --init-from runs: the start's own training as its file records it (None: not recorded)
        **({"start_pflop": report.get("start_pflop")} if config.get("init_from") else {}),
        "wall_minutes": report["train_minutes"],
        "epochs": epochs,
        "best_epoch": report["best_epoch"],
        "public_test_best": max(e["public_test"] for e in epochs),
        "private_test": report["accuracy"],
        "private_test_macro_f1": report["macro_f1"],
        "private_test_flip": flip["accuracy"],
        "calibration": calibration,
        **real,
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{name}: PrivateTest {result['private_test']:.2%} (flip {result['private_test_flip']:.2%}), best PublicTest "
        f"{result['public_test_best']:.2%} at epoch {result['best_epoch']}, {result['pflop']:.3f} PFLOP, "
        f"{result['wall_minutes']:.1f} min on {result['machine']}; wrote {path}"
    )
    print(
        f"  PrivateTest ECE {calibration['private_test_ece']:.4f} -> {calibration['private_test_ece_calibrated']:.4f} "
        f"at T {calibration['temperature']:.3f} fitted on PublicTest; bins after it (confidence: accuracy): "
        + ", ".join(f"{conf:.2f}: {acc:.2f}" for _, conf, acc in calibration["private_test_reliability_calibrated"])
    )
    for key, figures in real.items():
        recalls = ", ".join(f"{c} {r:.2f}" for c, r in figures["recall"].items())
        print(f"  {key}: accuracy {figures['accuracy']:.2%}, macro recall {figures['macro_recall']:.3f} ({recalls})")
    return result


def calibrated_figures(checkpoint: Path, data: str) -> dict:
    """PrivateTest ECE before and after a temperature fitted on PublicTest, on a copy (the run's best.pth stays)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / checkpoint.name
        shutil.copy(checkpoint, copy)
        before = evaluate_checkpoint(copy, data=data, split="report", workers=2)
        fit = calibrate_checkpoint(copy, data=data, workers=2)
        after = evaluate_checkpoint(copy, data=data, split="report", workers=2)
    return {
        "temperature": fit["temperature"],
        "private_test_ece": before["ece"],
        "private_test_ece_calibrated": after["ece"],
        "private_test_nll": before["loss"],
        "private_test_nll_calibrated": after["loss"],
        # Where one temperature cannot reach: the bins' (images, mean confidence, accuracy) after it.
        "private_test_reliability_calibrated": [
            [b["count"], round(b["confidence"], 4), round(b["accuracy"], 4)] for b in after["reliability"] if b["count"]
        ],
    }


# Real photos beside FER2013, each image whole as the face: webfaces-dev (to choose recipes on, with PublicTest)
# over its classes of at least 50 photos, and CK+48 (only reported) over the 6 classes it shares with FER2013.
REAL_PHOTOS = {"webfaces_dev": ("webfaces-dev", 50), "ckplus48": ("ckplus48", 1)}


def real_photo_figures(checkpoint: Path, fer2013: Path) -> dict:
    """Accuracy, macro recall and per-class recall of ``checkpoint`` on the real-photo sets beside FER2013."""
    figures = {}
    for key, (folder, min_support) in REAL_PHOTOS.items():
        root = fer2013.resolve().parent / folder
        if not root.is_dir():
            print(f"  {folder}: not found at {root}; left out")
            continue
        m = evaluate_checkpoint(checkpoint, data=str(root), workers=2, min_support=min_support)
        figures[key] = {
            "accuracy": m["accuracy"],
            "macro_recall": m["macro_recall"],
            "macro_classes": m["macro_classes"],
            "recall": {c: m["per_class"][c]["recall"] for c in m["macro_classes"]},
        }
    return figures


# Config values that say how or where a run was computed, or what it watched, never what it trained.
NOT_RECIPE = {f.name for f in dataclasses.fields(Config) if f.metadata["group"] in ("speed", "run")} | {
    "data",
    "watch",
    "watch_min_support",
}


def seeds(name: str, runs: list[str]) -> dict:
    """Mean and spread of the recorded runs ``runs`` (result names), which must be one recipe at several seeds."""
    results = [json.loads((RESULTS / f"time_to_accuracy_{run}.json").read_text()) for run in runs]
    # A run recorded before an option existed ran without it: its default.
    defaults = json.loads(json.dumps(Config().to_dict()))
    recipes = [{k: v for k, v in (defaults | r["config"]).items() if k not in NOT_RECIPE} for r in results]
    for run, recipe in zip(runs[1:], recipes[1:]):
        differ = sorted(k for k in recipe.keys() | recipes[0].keys() if recipe.get(k) != recipes[0].get(k))
        if differ:
            sys.exit(f"time_to_accuracy: {run} is another recipe than {runs[0]} ({', '.join(differ)} differ)")
    if len({r["config"]["seed"] for r in results}) < len(results):
        sys.exit("time_to_accuracy: two of the runs have the same seed")
    figures = {
        "public_test": [r["public_test_best"] for r in results],
        "private_test": [r["private_test"] for r in results],
        "private_test_flip": [r["private_test_flip"] for r in results],
        "pflop": [r["pflop"] for r in results],
        "wall_minutes": [r["wall_minutes"] for r in results],
    }
    for key in REAL_PHOTOS:
        if all(key in r for r in results):
            figures[f"{key}_accuracy"] = [r[key]["accuracy"] for r in results]
            figures[f"{key}_macro_recall"] = [r[key]["macro_recall"] for r in results]
    summary = {
        "name": name,
        "runs": runs,
        "seeds": [r["config"]["seed"] for r in results],
        "machines": sorted({r["machine"] for r in results}),
        "recipe": recipes[0],
        **{k: {"values": v, "mean": statistics.mean(v), "sd": statistics.stdev(v)} for k, v in figures.items()},
    }
    path = RESULTS / f"seeds_{name}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{name}: {len(runs)} seeds ({', '.join(map(str, summary['seeds']))}); wrote {path}")
    for key, values in figures.items():
        scale = 100 if key.endswith(("test", "flip", "accuracy")) else 1
        shown = ", ".join(f"{scale * v:.2f}" if scale == 100 else f"{v:.3f}" for v in values)
        s = summary[key]
        print(f"  {key}: mean {scale * s['mean']:.3f}, sd {scale * s['sd']:.3f} ({shown})")
    return summary


def plot(output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("time_to_accuracy_*.json"))]
    # A run started from a trained network (--init-from) stands on the axis at its start's PFLOP and its own, and is
    # left out where its start records none: at its own alone it would look cheap.
    placed = []
    for r in results:
        start = r.get("start_pflop") if r["config"].get("init_from") else 0.0
        if start is None:
            print(f"{r['name']}: left out, started from {r['config']['init_from']}, which records no PFLOP")
            continue
        placed.append(
            r | {"pflop": r["pflop"] + start, "epochs": [e | {"pflop": e["pflop"] + start} for e in r["epochs"]]}
        )
    results = placed
    if not results:
        sys.exit(f"time_to_accuracy: no results in {RESULTS}; run the 'run' subcommand first")
    # The curves' legend names every run, so it gets a cell of its own.
    fig = plt.figure(figsize=(20, 13))
    grid = fig.add_gridspec(2, 2)
    final, chosen, curves = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0])
    # Runs of one budget (the same PFLOP to about 12%) are named in one line, else their names overprint each other.
    budgets: dict[int, list[dict]] = {}
    for r in results:
        cfg = r["config"]
        label = f"{r['name']}: {cfg['arch']} w{cfg.get('width', 64)} {cfg['image_size']}px, {cfg['epochs']} ep"
        final.scatter(r["pflop"], 100 * r["private_test"], s=40)
        budgets.setdefault(round(20 * math.log10(r["pflop"])), []).append(r | {"label": label})
        curves.plot(
            [e["pflop"] for e in r["epochs"]], [100 * e["public_test"] for e in r["epochs"]], marker=".", label=label
        )
    for runs in budgets.values():
        top = max(runs, key=lambda r: r["private_test"])
        text = top["label"] if len(runs) == 1 else f"{len(runs)} runs, best {top['name']}"
        final.annotate(
            text, (top["pflop"], 100 * top["private_test"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    # Recipes are chosen on PublicTest and on real photos together (issue 20): the runs measured on both.
    both = [r for r in results if r.get("webfaces_dev")]
    dots = chosen.scatter(
        [100 * r["public_test_best"] for r in both],
        [r["webfaces_dev"]["macro_recall"] for r in both],
        c=[r["pflop"] for r in both],
        cmap="viridis",
        s=40,
    )
    for r in both:
        chosen.annotate(
            r["name"],
            (100 * r["public_test_best"], r["webfaces_dev"]["macro_recall"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    fig.colorbar(dots, ax=chosen, label="training compute (PFLOP)", format="%.2f")
    chosen.set_xlabel("PublicTest accuracy (%), best epoch")
    chosen.set_ylabel("webfaces-dev macro recall (5 classes, whole photo)")
    chosen.set_title("The two figures recipes are chosen by")
    chosen.margins(x=0.1)  # room for the names of the rightmost runs
    chosen.grid(alpha=0.3)
    for ax, title in ((final, "PrivateTest (best PublicTest epoch, no TTA)"), (curves, "PublicTest by epoch")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training compute (PFLOP, forward + backward)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    names = fig.add_subplot(grid[1, 1])
    names.axis("off")
    names.legend(*curves.get_legend_handles_labels(), fontsize=8, ncol=2, loc="upper left", title="PublicTest by epoch")
    fig.suptitle(
        "FER2013 and real photos against training compute (commands in benchmarks/results/time_to_accuracy_*.json)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output} ({len(results)} runs, {len(both)} of them on webfaces-dev)")


def main() -> None:
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train (unless finished) and record; ferkit train arguments follow --")
    p.add_argument("--name", required=True, help="result name: benchmarks/results/time_to_accuracy_NAME.json")
    p.add_argument("--data", default=DEFAULT_DATA, help="FER2013 when the train arguments give no --data")
    p = sub.add_parser("seeds", help="one recipe's mean and spread over its seeds")
    p.add_argument("name", help="summary name: benchmarks/results/seeds_NAME.json")
    p.add_argument("runs", nargs="+", help="result names of runs of one recipe, one seed each")
    p = sub.add_parser("plot", help="PrivateTest against PFLOP for every recorded run")
    p.add_argument("--out", type=Path, default=RESULTS / "accuracy_vs_compute.png")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.name, train_args, args.data)
    elif args.command == "seeds":
        if len(args.runs) < 2:
            sys.exit("time_to_accuracy: seeds needs two runs or more")
        seeds(args.name, args.runs)
    else:
        plot(args.out)


if __name__ == "__main__":
    main()
