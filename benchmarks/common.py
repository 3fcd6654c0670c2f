"""What the benchmark scripts share: where FER2013 is when --data is not given."""

import os
from pathlib import Path

# $FERKIT_DATA, else the workspace layout: shared/ beside the repository.
DEFAULT_DATA = os.environ.get("FERKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/fer2013"))
