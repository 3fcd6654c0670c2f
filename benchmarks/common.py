"""What the benchmark scripts share: where FER2013 is when --data is not given, where results are written (with the
machine and date), and which commit a source tree compared is at."""

import json
import os
import subprocess
import time
from pathlib import Path

# $FERKIT_DATA, else the workspace layout: shared/ beside the repository.
DEFAULT_DATA = os.environ.get("FERKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/fer2013"))
RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, result: dict) -> Path:
    """``result`` as ``benchmarks/results/NAME.json``, the file BENCHMARKS.md cites."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_report(path: Path, **fields: object) -> None:
    """A benchmark's JSON at ``path``: the machine and the date, then ``fields``."""
    from ferkit.runtime import machine_description  # not at import: it loads PyTorch

    report = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def source_commit(src: str | os.PathLike) -> str | None:
    """The commit a source tree is checked out at (its uncommitted changes not said), where git knows it."""
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None
