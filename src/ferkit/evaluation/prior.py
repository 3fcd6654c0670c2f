"""Class priors: how often each expression is expected, and reading a model for a mix other than its training data's.

A classifier's probabilities carry the class mix it was trained on: FER2013 has 14% Fear, 17% Sad and 17% Neutral,
while in the photos people take and share most faces are Neutral or Happy and Fear is rare. When only that mix
differs (the look of each expression being the same), Bayes' rule gives the probabilities for another mix without
fitting anything: ``p'(c | x) ∝ p(c | x) * target(c) / trained(c)``, that is ``log(target / trained)`` added to the
calibrated logits. That is a change of decision, so unlike the temperature it moves argmaxes.

A model file records its training split's images per class (``class_counts``; ONNX metadata
``ferkit_class_counts``), written by ``ferkit train`` and by ``ferkit calibrate``. The mixes a user can ask for
(``--prior``):

- ``model``: the training data's own, the model's probabilities as they are;
- ``photos``: everyday photos of faces, as AffectNet's manually annotated training set has them (PHOTO_COUNTS);
- ``uniform``: every class alike;
- ``CLASS=WEIGHT,...``: a user's own, every class of the model given (``neutral=5,happy=3,sad=1,...``);
- ``auto``: ``photos`` for a model that records its counts and whose classes AffectNet has, else ``model``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import FerkitError

# Images per expression among the 287,651 manually annotated training images of AffectNet (Mollahosseini, Hasani
# and Mahoor, "AffectNet: a database for facial expression, valence, and arousal computing in the wild", IEEE
# Transactions on Affective Computing, 2017): faces found by querying search engines for emotion words in six
# languages, so a collection of photos from the web, labelled by 12 annotators. A published mix, independent of the
# labels ferkit is checked on (webfaces-dev); contempt is used only by models that have that class.
PHOTO_COUNTS: dict[str, int] = {
    "Angry": 24_882,
    "Contempt": 3_750,
    "Disgust": 3_803,
    "Fear": 6_378,
    "Happy": 134_415,
    "Neutral": 74_874,
    "Sad": 25_459,
    "Surprise": 14_090,
}
PRIORS = ("auto", "model", "photos", "uniform")
DEFAULT_PRIOR = "model"  # measuring a model on labelled data (evaluate) reads its probabilities as they are
PHOTO_PRIOR = "auto"  # reading the photos users bring (predict, serve) reads them for everyday photos' mix


def class_counts(labels: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    """Images per class among ``labels`` (indices into ``classes``), as a model file records them."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def balanced_weights(counts: Mapping[str, int]) -> np.ndarray:
    """Loss weights under which every class with images counts alike (``--class-weights balanced``): the images
    over the classes present times the class's images; 0 for a class without any."""
    images = np.array(list(counts.values()), dtype=np.float64)
    present = images > 0
    weights = np.zeros_like(images)
    weights[present] = images.sum() / (present.sum() * images[present])
    return weights


def carried_counts(counts: Mapping[str, int], class_weights: str) -> dict[str, int]:
    """The class mix a model trained on ``counts`` carries, as its file records it: its training images per class
    as its loss weighed them (even under ``balanced``)."""
    if class_weights == "none":
        return dict(counts)
    return {c: round(n * w) for (c, n), w in zip(counts.items(), balanced_weights(counts))}


def target_prior(spec: str, classes: Sequence[str]) -> np.ndarray | None:
    """The class mix ``spec`` names for a model with ``classes``; ``None`` for ``model`` (no change)."""
    if spec == "model":
        return None
    if spec == "uniform":
        return np.full(len(classes), 1 / len(classes))
    if spec == "photos":
        unknown = [c for c in classes if c not in PHOTO_COUNTS]
        if unknown:
            raise FerkitError(
                f"--prior photos knows {', '.join(PHOTO_COUNTS)}, not {', '.join(unknown)}; "
                "give every class a weight (--prior CLASS=WEIGHT,...) or use --prior model"
            )
        weights = {c: PHOTO_COUNTS[c] for c in classes}
    else:
        weights = _parse_weights(spec, classes)
    total = float(sum(weights.values()))
    return np.array([weights[c] / total for c in classes])


def _parse_weights(spec: str, classes: Sequence[str]) -> dict[str, float]:
    by_name = {c.lower(): c for c in classes}
    weights: dict[str, float] = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        cls = by_name.get(name.strip().lower())
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if cls is None or not weight > 0 or not np.isfinite(weight):
            raise FerkitError(
                f"--prior {spec!r}: give one of {', '.join(PRIORS)} or CLASS=WEIGHT for every class "
                f"({', '.join(classes)}) with weights above 0"
            )
        weights[cls] = weight
    missing = [c for c in classes if c not in weights]
    if missing:
        raise FerkitError(f"--prior {spec!r} gives no weight to {', '.join(missing)}; every class needs one")
    return weights


def resolve_prior(
    spec: str, classes: Sequence[str], counts: Mapping[str, int] | None, source: object
) -> tuple[str, np.ndarray | None]:
    """The prior ``spec`` (one of PRIORS or weights) settles on for a model, and the logit shift that reads it.

    ``counts`` is what the model file records of its training split (``None``: nothing); ``source`` names the file
    in errors. Returns the name of the mix used (``auto`` resolved) and ``log(target / trained)`` per class, or
    ``None`` when the model's own mix is kept.
    """
    if spec == "auto":
        spec = "photos" if counts is not None and all(c in PHOTO_COUNTS for c in classes) else "model"
    target = target_prior(spec, classes)
    if target is None:
        return spec, None
    if counts is None:
        raise FerkitError(
            f"{source} does not record how many training images each class had; record them with "
            f"`ferkit calibrate {source} --data DATASET` (its training data), or use --prior model"
        )
    trained = np.array([counts.get(c, 0) for c in classes], dtype=np.float64)
    if not (trained > 0).all():
        empty = [c for c, n in zip(classes, trained) if not n > 0]
        raise FerkitError(f"{source} had no training images of {', '.join(empty)}; use --prior model for it")
    return spec, np.log(target) - np.log(trained / trained.sum())
