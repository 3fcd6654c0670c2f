"""Reading a phone's photo: decoding, detection and the whole prediction, per file format, at a phone camera's 12 MP.

    python benchmarks/photo_formats.py [--repeats 7] [--side 4032] [--json out.json]

The photo is scikit-image's astronaut cut to 4:3 and enlarged to ``--side`` x 3/4 ``--side`` (4032 x 3024, an
iPhone's), saved as JPEG (quality 90), HEIC (quality 80, pillow-heif, as iPhones save them; skipped without it),
AVIF (quality 80) and PNG. Per format: the file's size, the median time to decode it (``read_image``: upright
RGB), to find its faces (the predictor's detector on the decoded photo) and to predict on it with the bundled model
(``Predictor.predict`` on the path: decoding, RetinaFace, alignment, classification), and the faces found (1 is
right), and the time to write its drawing for ``--annotate FOLDER``: as what ``drawn_suffix`` names for it now (JPEG
for photos), and as PNG, what every input was drawn as before (side by side, same drawing). Medians over
``--repeats`` after one warm-up. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import write_report  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from PIL import Image
from skimage.data import astronaut

from ferkit.data.images import read_image
from ferkit.inference.predict import Predictor
from ferkit.inference.results import draw_faces, drawn_suffix, save_drawing


def save(image: Image.Image, path: Path) -> bool:
    """``image`` in the format of ``path``'s suffix; False where this machine cannot write it."""
    if path.suffix == ".heic":
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.from_pillow(image).save(path, quality=80)
    else:
        image.save(
            path, **({"quality": 90} if path.suffix == ".jpg" else {"quality": 80} if path.suffix == ".avif" else {})
        )
    return True


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--side", type=int, default=4032, help="the photo's width; its height is 3/4 of it")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/photo_formats.json"))
    args = parser.parse_args()
    photo = Image.fromarray(astronaut()[64:448]).resize((args.side, args.side * 3 // 4), Image.Resampling.LANCZOS)
    predictor = Predictor.from_checkpoint(None)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".jpg", ".heic", ".avif", ".png"):
            path = Path(folder) / f"photo{suffix}"
            if not save(photo, path):
                print(f"{suffix}: skipped (pillow-heif, in ferkit[dev], writes HEIC)")
                continue
            result = predictor.predict(path)
            faces, drawing = len(result.faces), draw_faces(read_image(path), result.faces)
            drawn = {kind: Path(folder) / f"drawn{kind}" for kind in (drawn_suffix(path), ".png")}
            write_s = {
                kind: round(median_seconds(lambda t=target, d=drawing: save_drawing(d, t), args.repeats), 3)
                for kind, target in drawn.items()
            }
            rows.append(
                {
                    "format": suffix[1:],
                    "megabytes": round(path.stat().st_size / 1e6, 2),
                    "decode_s": round(median_seconds(lambda p=path: read_image(p), args.repeats), 3),
                    "detect_s": round(
                        median_seconds(lambda r=read_image(path): predictor.detector.detect(r), args.repeats), 3
                    ),
                    "predict_s": round(median_seconds(lambda p=path: predictor.predict(p), args.repeats), 3),
                    "faces": faces,
                    "drawn_as": drawn_suffix(path)[1:],
                    "write_drawn_s": write_s[drawn_suffix(path)],
                    "drawn_megabytes": round(drawn[drawn_suffix(path)].stat().st_size / 1e6, 2),
                    "write_png_s": write_s[".png"],
                    "png_megabytes": round(drawn[".png"].stat().st_size / 1e6, 2),
                }
            )
    print(
        f"{'format':>6}  {'MB':>6}  {'decode s':>8}  {'detect s':>8}  {'predict s':>9}  faces  "
        f"{'drawn as':>8}  {'write s':>7}  {'MB':>5}  {'as PNG s':>8}  {'MB':>5}"
    )
    for r in rows:
        print(
            f"{r['format']:>6}  {r['megabytes']:>6}  {r['decode_s']:>8}  {r['detect_s']:>8}  {r['predict_s']:>9}"
            f"  {r['faces']:>5}  {r['drawn_as']:>8}  {r['write_drawn_s']:>7}  {r['drawn_megabytes']:>5}"
            f"  {r['write_png_s']:>8}  {r['png_megabytes']:>5}"
        )
    write_report(
        args.json,
        photo=f"astronaut cut to 4:3, {photo.width}x{photo.height}",
        repeats=args.repeats,
        rows=rows,
    )


if __name__ == "__main__":
    main()
