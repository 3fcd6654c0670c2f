"""Prediction speed on this machine: per-face classification and a whole photo, per back end.

    python benchmarks/predict_latency.py [--checkpoint CKPT] [--data FER2013] [--repeats 50] [--json out.json]
    python benchmarks/predict_latency.py --tta scales --json benchmarks/results/predict_latency_scales.json

For the checkpoint (default: the model bundled with ferkit) and for the specification's 96x96 input
(untrained weights: speed depends only on the architecture and input size), measures side by side:
- classification latency of one face (batch 1) and throughput at batch 64, for PyTorch fp32,
  PyTorch bf16 (autocast), onnxruntime fp32 and onnxruntime int8 (for the bundled model its
  shipped int8 twin; otherwise quantized as `ferkit export --int8` does, calibrated on 256 FER2013
  training images from --data, and skipped without them);
- end to end for one 1-megapixel photo (scikit-image's astronaut upscaled to 1024x1024): reading
  the decoded array, face detection and classification, with the detection share and the number
  of faces found (1 is right: there is one person).
With ``--tta MODE`` the fp32 PyTorch and onnxruntime rows are timed again with that test-time augmentation
(``_MODE`` rows), beside the plain ones in the same run.
Medians over ``--repeats`` runs after warm-up. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from PIL import Image

from ferkit.bundled import BUNDLED_MODELS
from ferkit.checkpoint import LoadedModel, load_model, make_checkpoint
from ferkit.config import PREDICT_TTA_MODES, Config
from ferkit.inference.export import calibration_images, quantize_int8, to_onnx_bytes
from ferkit.inference.loading import OnnxRuntimeModel
from ferkit.inference.predict import Predictor
from ferkit.model import build_model
from ferkit.runtime import cpu_has_native_bf16, machine_description


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def spec_size_model(loaded: LoadedModel) -> LoadedModel:
    cfg = Config()  # the specification's network and 96x96 input
    model = build_model(cfg, len(loaded.classes)).eval()
    return LoadedModel(model, cfg, loaded.classes, make_checkpoint(model, cfg, loaded.classes))


def measure(
    loaded: LoadedModel,
    photo: np.ndarray,
    repeats: int,
    data: str | None,
    int8_file: Path | None = None,
    tta: str = "none",
) -> dict:
    size = loaded.config.image_size
    onnx = to_onnx_bytes(loaded)
    backends = {
        "torch_fp32": Predictor(loaded.model, loaded.config, loaded.classes, device="cpu"),
        "torch_bf16": Predictor(loaded.model, loaded.config, loaded.classes, device="cpu", precision="bf16"),
        "onnxruntime": Predictor(OnnxRuntimeModel(onnx), loaded.config, loaded.classes, device="cpu"),
    }
    int8 = int8_file or (quantize_int8(onnx, calibration_images(loaded, data, 256)) if data is not None else None)
    if int8 is not None:
        backends["onnxruntime_int8"] = Predictor(OnnxRuntimeModel(int8), loaded.config, loaded.classes, device="cpu")
    if tta != "none":
        # Beside the plain rows in the same run, so that the cost of the extra views is a ratio of neighbours.
        for name in ("torch_fp32", "onnxruntime"):
            plain = backends[name]
            backends[f"{name}_{tta}"] = Predictor(plain.model, loaded.config, loaded.classes, device="cpu", tta=tta)
    face = Image.fromarray(photo[134:322, 354:542])  # roughly her face, as a detector would crop it
    out = {"image_size": size}
    for name, predictor in backends.items():
        # Emulated bf16 (no AMX/AVX-512 BF16) is minutes per batch of 64: fewer repeats, no batch run.
        slow = name == "torch_bf16" and not cpu_has_native_bf16()
        reps = 5 if slow else repeats
        one = median_ms(lambda p=predictor: p.classify([face]), reps, warmup=1)
        photo_ms = median_ms(lambda p=predictor: p.predict(photo), max(5, reps // 2), warmup=1)
        batch = None
        if not slow:
            batch = median_ms(lambda p=predictor: p.classify([face] * 64), max(3, repeats // 10), warmup=1)
        out[name] = {
            "batch1_ms": round(one, 2),
            "photo_end_to_end_ms": round(photo_ms, 2),
            "batch64_faces_per_s": None if batch is None else round(64 / batch * 1000, 1),
        }
    detector = backends["torch_fp32"].detector
    out["detection_ms"] = round(median_ms(lambda: detector.detect(photo), repeats), 2)
    out["faces_found"] = len(backends["torch_fp32"].predict(photo).faces)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the model bundled with ferkit")
    parser.add_argument("--data", default=DEFAULT_DATA, help="FER2013, for int8 calibration")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/predict_latency.json"))
    parser.add_argument(
        "--tta",
        choices=[m for m in PREDICT_TTA_MODES if m != "none"],
        help="also time the fp32 rows with this test-time augmentation, beside the plain ones",
    )
    args = parser.parse_args()

    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC))
    loaded = load_model(args.checkpoint)
    data = args.data if Path(args.data).exists() else None
    if data is None:
        print(
            f"no FER2013 at {args.data}: int8 of the 96x96 model{'' if args.checkpoint is None else ' and CKPT'} "
            "skipped (quantizing needs calibration images; pass --data)"
        )
    # The bundled model's int8 row is its shipped twin, the file users run.
    int8_file = BUNDLED_MODELS["fer2013_resnet18.int8"] if args.checkpoint is None else None
    results = {
        "machine": machine_description(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "date": time.strftime("%Y-%m-%d"),
        "photo": "skimage astronaut resized to 1024x1024",
        "checkpoint": args.checkpoint or "bundled",
        "tta": args.tta or "none",
        "models": [
            measure(loaded, photo, args.repeats, data, int8_file, args.tta or "none"),
            measure(spec_size_model(loaded), photo, args.repeats, data, tta=args.tta or "none"),
        ],
    }
    for m in results["models"]:
        print(
            f"\nmodel input {m['image_size']}x{m['image_size']}: detection {m['detection_ms']:.1f} ms, "
            f"faces found on the photo: {m['faces_found']}"
        )
        print(f"{'backend':<18}{'batch-1 ms':>12}{'faces/s @64':>13}{'1MP photo ms':>14}")
        for name in [k for k in m if isinstance(m[k], dict)]:
            r = m[name]
            rate = "skipped" if r["batch64_faces_per_s"] is None else f"{r['batch64_faces_per_s']:.1f}"
            print(f"{name:<18}{r['batch1_ms']:>12.2f}{rate:>13}{r['photo_end_to_end_ms']:>14.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
