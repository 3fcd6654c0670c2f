"""What the benchmark scripts share: where FER2013 is when --data is not given, and where results are written."""

import json
import os
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
