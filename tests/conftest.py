"""Shared fixtures: small synthetic datasets in both formats, and the real FER2013 when present."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.checkpoint import atomic_save, make_checkpoint
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.model import build_model

# Keep the suite light on the 2-core CI machine and repeatable.
torch.set_num_threads(1)

REAL_DATA = Path(os.environ.get("FERKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data/fer2013"))


def _face(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    # Class-dependent brightness gives the tiny test runs something learnable.
    base = 30 + 30 * label
    return np.clip(rng.normal(base, 20, (size, size)), 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path, per_class: int = 4, size: int = 20, folder_names=None, test_prefixes=("PublicTest_", "PrivateTest_")
) -> Path:
    rng = np.random.default_rng(0)
    names = folder_names or [c.lower() for c in CLASSES]
    for split in ("train", "test"):
        for label, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                prefix = "Training_" if split == "train" else test_prefixes[i % 2]
                Image.fromarray(_face(rng, label, size), mode="L").save(d / f"{prefix}{label}{i:03d}.png")
    return root


def make_csv(path: Path, per_class: int = 3, size: int = 48) -> Path:
    rng = np.random.default_rng(1)
    rows = ["emotion,pixels,Usage"]
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for label in range(len(CLASSES)):
            for _ in range(per_class):
                rows.append(f"{label},{' '.join(map(str, _face(rng, label, size).ravel()))},{usage}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "fer")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"FER2013 not found at {REAL_DATA} (set FERKIT_TEST_DATA to its image-folder root)")
    return REAL_DATA


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained spec model at 32x32 with non-trivial BatchNorm statistics and a training record.

    Prediction, export and serving tests need a checkpoint, not a good one; training one takes minutes.
    """
    torch.manual_seed(0)
    cfg = Config().updated({"image_size": 32})
    model = build_model(cfg, len(CLASSES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 1.5 + 0.3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    atomic_save(
        make_checkpoint(
            model.eval(), cfg, CLASSES, epoch=3, metrics={"accuracy": 0.5, "macro_f1": 0.25}, select_split="PublicTest"
        ),
        path,
    )
    return path


def sigint_after_optimizer_steps(monkeypatch, n: int):
    """Deliver SIGINT to this process right after the n-th AdamW step; returns the real step to restore."""
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def step_then_interrupt(self, *a, **k):
        result = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
    return real_step
