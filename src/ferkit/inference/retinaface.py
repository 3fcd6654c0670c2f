"""RetinaFace (MobileNet-0.25, trained on WIDER FACE): faces with five landmarks and a score, run by onnxruntime.

The ONNX file ships in ``ferkit/weights`` (origin and licence: ``weights/NOTICE.md``); the pre- and
post-processing here are ferkit's own. A photo is rescaled so that its longer side is at most
``max_side`` (speed) but never so far that a ``min_face`` face drops below the network's smallest
anchor (recall), and small images are enlarged, so a face that fills a 48-px crop is found too. A large photo whose
scan for ``min_face`` faces would pass ``MAX_SCAN`` is scanned twice: at ``max_side`` for its faces, and at that
finer scale only for the faces too small to be found at ``max_side``.
"""

from __future__ import annotations

import math

import numpy as np

from ..bundled import WEIGHTS
from ..errors import FerkitError
from .faces import MIN_FACE, SCORE_THRESHOLD, Detection, largest_first
from .opencv import require_cv2

MODEL = WEIGHTS / "retinaface_mnet025.onnx"
# For each feature stride, the square anchor sides (px at network resolution) training matched to faces.
ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
SMALLEST_ANCHOR = 16
# Scans of the astronaut up to 1365 px find her face alone; at 2016 px a patch on her suit reads as a face, at 2688 px
# (a 12-MP photo's min-face scan) the rocket and her collar too. A photo whose scan would pass this is scanned twice
# (RetinaFace.detect); 1080p video frames (a 1280-px scan) are not.
MAX_SCAN = 1600
# A face this many pixels wide at max_side's scale is found there; the finer scan adds only smaller ones.
SURE_AT_BASE = 2 * SMALLEST_ANCHOR
VARIANCE_CENTRE, VARIANCE_SIZE = 0.1, 0.2  # the box encoding's variances in training (SSD convention)
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)  # the network was trained on BGR minus these


class RetinaFace:
    """Faces in an RGB image, largest first, each with its box, five landmarks and score.

    ``max_side``: the longer side the photo is scanned at (640 keeps a 1-MP photo near 25 ms on 2 cores);
    ``min_input_side``: smaller images are enlarged to this (a face filling a 192-px frame is found far more
    often at 256 px, where it meets the 256-px anchor); ``nms_iou``: overlap above which the lower-scored of
    two detections is dropped.
    """

    def __init__(
        self,
        score_threshold: float = SCORE_THRESHOLD,
        min_face: float = MIN_FACE,
        max_side: int = 640,
        min_input_side: int = 256,
        nms_iou: float = 0.4,
        threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("the RetinaFace detector needs onnxruntime: pip install onnxruntime") from None
        if not MODEL.is_file():
            raise FerkitError(f"face detector weights {MODEL} are missing; reinstall ferkit (or use --detector haar)")
        self.score_threshold, self.min_face = score_threshold, min_face
        self.max_side, self.min_input_side, self.nms_iou = max_side, min_input_side, nms_iou
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Spinning threads take the cores from the classifier that runs next (as in inference.loading).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    @property
    def settings(self) -> dict[str, object]:
        return {
            "detector": "retinaface",
            "score_threshold": self.score_threshold,
            "min_face": self.min_face,
            "max_side": self.max_side,
            "min_input_side": self.min_input_side,
            "nms_iou": self.nms_iou,
        }

    def scale_for(self, height: int, width: int) -> float:
        """The scale that finds ``min_face`` faces: ``max_side``'s (speed), small images enlarged to
        ``min_input_side``, but never so small that a ``min_face`` face drops below the smallest anchor."""
        return max(self._base_scale(height, width), SMALLEST_ANCHOR / self.min_face)

    def _base_scale(self, height: int, width: int) -> float:
        longer = max(height, width)
        return max(min(1.0, self.max_side / longer), self.min_input_side / longer)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        rgb = rgb[:, :, :3]
        height, width = rgb.shape[:2]
        base, fine = self._base_scale(height, width), self.scale_for(height, width)
        if fine <= base or max(height, width) * fine <= MAX_SCAN:
            corners, points, scores = self._scan(rgb, fine)
        else:
            # Scanned that finely, a large photo's rocket or collar reads as a face: its faces are taken at
            # max_side's scale, and from the finer scan only those too small to be found there.
            coarse, small = self._scan(rgb, base), self._scan(rgb, fine)
            tiny = (small[0][:, 2:] - small[0][:, :2]).max(axis=1) * base < SURE_AT_BASE
            corners, points, scores = (np.concatenate([c, s[tiny]]) for c, s in zip(coarse, small))
        # Much smaller than asked for, or without a face's layout, is mostly texture taken for a face.
        wanted = ((corners[:, 2:] - corners[:, :2]).max(axis=1) >= 0.75 * self.min_face) & _face_layout(points)
        corners, points, scores = corners[wanted], points[wanted], scores[wanted]
        if not len(scores):
            return []
        chosen = _nms(corners, scores, self.nms_iou)
        corners[:, 0::2] = corners[:, 0::2].clip(0, width)
        corners[:, 1::2] = corners[:, 1::2].clip(0, height)
        return largest_first(
            [
                Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), points[i], float(scores[i]))
                for i in chosen
                for x0, y0, x1, y1 in [corners[i]]
            ]
        )

    def _scan(self, rgb: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detections over the score threshold of the image scanned at ``scale``: corners [N, 4] and the five
        points [N, 5, 2] in the image's pixels, and scores [N]."""
        height, width = rgb.shape[:2]
        scaled = _resize(rgb, scale)
        factor = np.array([width / scaled.shape[1], height / scaled.shape[0]], dtype=np.float32)
        loc, conf, marks = self._session.run(None, {"input": _blob(scaled)})
        scores = conf[0][:, 1]
        keep = scores >= self.score_threshold
        anchors = self._anchors_for(*_padded(scaled.shape[:2]))[keep]
        loc, marks, scores = loc[0][keep], marks[0][keep], scores[keep]
        centre = anchors[:, :2] + loc[:, :2] * VARIANCE_CENTRE * anchors[:, 2:]
        size = anchors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE_SIZE)
        corners = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * np.tile(factor, 2)
        points = (anchors[:, None, :2] + marks.reshape(-1, 5, 2) * VARIANCE_CENTRE * anchors[:, None, 2:]) * factor
        return corners, points, scores

    def _anchors_for(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self._anchors:
            if len(self._anchors) >= 2:  # frames of one size come in runs; a large photo's two scans alternate
                self._anchors.clear()
            self._anchors[(height, width)] = _anchors(height, width)
        return self._anchors[(height, width)]


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    cv2 = require_cv2()
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    # Area averaging only pays against aliasing beyond 2x; for milder factors it costs ~10 ms a 1-MP photo.
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR)


def _padded(shape: tuple[int, int]) -> tuple[int, int]:
    # Every feature map must tile the input exactly, or the anchors would not sit where the network looks.
    return shape[0] + -shape[0] % 32, shape[1] + -shape[1] % 32


def _blob(rgb: np.ndarray) -> np.ndarray:
    """Planar BGR minus the training means, padded with the means (zero input, as in training)."""
    blob = np.zeros((1, 3, *_padded(rgb.shape[:2])), dtype=np.float32)
    for c in range(3):
        np.subtract(rgb[:, :, 2 - c], BGR_MEAN[c], out=blob[0, c, : rgb.shape[0], : rgb.shape[1]], casting="unsafe")
    return blob


def _anchors(height: int, width: int) -> np.ndarray:
    """(N, 4) anchors (centre x, centre y, side, side) in the order of the network's outputs."""
    out = []
    for stride, sides in ANCHORS:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([cx, cy], axis=-1).reshape(-1, 1, 2) + 0.5) * stride
        for_each = np.broadcast_to(centres, (centres.shape[0], len(sides), 2))
        side = np.broadcast_to(np.asarray(sides, dtype=np.float32)[None, :, None], for_each.shape)
        out.append(np.concatenate([for_each, side], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def _face_layout(points: np.ndarray) -> np.ndarray:
    """Whether each set of five points is laid out as a face: nose and mouth on the same side of the eye line,
    the mouth farther from it than the nose and at least 0.3 eye distances away.

    The network scores texture, not layout: the dog it takes for a face in faces-dev's dogs.jpg (score 0.79)
    has its "nose" and "mouth" above the eyes. Measured from the eye line, the rule holds at any roll, and a
    turned head only shortens the eye distance, which makes the mouth look farther.
    """
    eyes = (points[:, 0] + points[:, 1]) / 2
    across = points[:, 1] - points[:, 0]
    distance = np.hypot(across[:, 0], across[:, 1]) + 1e-6
    down = np.stack([-across[:, 1], across[:, 0]], axis=1) / distance[:, None]
    nose = np.einsum("ij,ij->i", points[:, 2] - eyes, down) / distance
    mouth = np.einsum("ij,ij->i", (points[:, 3] + points[:, 4]) / 2 - eyes, down) / distance
    return (nose * mouth > 0) & (np.abs(mouth) > np.abs(nose)) & (np.abs(mouth) >= 0.3)


def _nms(corners: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the detections kept by greedy non-maximum suppression, best first."""
    order, keep = np.argsort(-scores), []
    areas = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        low = np.maximum(corners[best, :2], corners[rest, :2])
        high = np.minimum(corners[best, 2:], corners[rest, 2:])
        inter = np.prod((high - low).clip(0), axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter + 1e-9) <= iou]
    return keep
