"""Starting a run from a trained model's weights (``--init-from``): fine-tuning a finished run, or one network of
the bundled model, on other data.

The run builds the checkpoint's network and reads faces as it did: ``ferkit train`` takes those settings from the
checkpoint unless flags set them (:func:`inherited_settings`), and a network that would not fit is refused before
any training. Every weight is kept except the classifier's last layer, which is kept row by row for the classes
the data shares with the checkpoint (by name, so a dataset of fewer classes keeps what the model knew of those)
and starts new for the rest. The run's PFLOP (metrics.csv, report.json) count its own training; best.pth records the
two summed, when the checkpoint records its own (a run's best.pth does). The log names the file and its sha256, and
the run's config keeps ``init_from``.
"""

from __future__ import annotations

import logging

from ..checkpoint import LoadedModel, file_identity, load_model, model_path
from ..config import Config, flag_of
from ..errors import FerkitError
from ..model import Ensemble, ResNet

log = logging.getLogger("ferkit")

# What shapes the weights, and how faces are read: a run started from a checkpoint takes these from it.
NETWORK = ("arch", "width", "hidden")
PREPROCESSING = ("image_size", "grey_input", "equalize", "mean", "std")
INHERITED = (*NETWORK, "dropout", *PREPROCESSING)


def load_single(name: str) -> LoadedModel:
    """``name``'s network: one, since one starts a run (an ensemble's are averaged and cannot be trained as one)."""
    if model_path(name).suffix == ".onnx":
        raise FerkitError(
            f"--init-from {name} is an ONNX export ({model_path(name)}), which PyTorch cannot train: start from the "
            "checkpoint it was exported from"
        )
    loaded = load_model(name)
    if isinstance(loaded.model, Ensemble):
        raise FerkitError(
            f"--init-from {name} averages {len(loaded.model.members)} networks and a run trains one: take one with "
            f"`ferkit ensemble {name} --member 0 --out network.safetensors` and start from that"
        )
    return loaded


def inherited_settings(name: str) -> dict:
    """The checkpoint's network and preprocessing, as config values: the base a fine-tuning run's flags refine."""
    cfg = load_single(name).config
    return {key: getattr(cfg, key) for key in INHERITED}


def initialise_from(model: ResNet, cfg: Config, classes: tuple[str, ...]) -> float | None:
    """``model`` (new, for ``classes``) given the weights of ``cfg.init_from``; a network of another shape is
    refused in one line naming the flags that build the checkpoint's. Returns the training compute the checkpoint
    records (PFLOP), None where it records none."""
    loaded = load_single(cfg.init_from)
    if any(getattr(loaded.config, key) != getattr(cfg, key) for key in NETWORK):
        theirs = " ".join(flag_of(key, getattr(loaded.config, key)) for key in NETWORK)
        ours = " ".join(flag_of(key, getattr(cfg, key)) for key in NETWORK)
        raise FerkitError(
            f"--init-from {cfg.init_from} is a network of {theirs}; this run builds {ours}: give {theirs} "
            "(or leave out the flags or preset that change them)"
        )
    source, state = loaded.model.state_dict(), model.state_dict()
    last = next(name for name, module in model.named_modules() if module is model.head[-1])
    shared = [c for c in classes if c in loaded.classes]
    rows, at = [loaded.classes.index(c) for c in shared], [classes.index(c) for c in shared]
    for part in ("weight", "bias"):
        key = f"{last}.{part}"
        new = state[key].clone()  # this run's own initialisation for the classes the checkpoint lacks
        new[at] = source[key][rows]
        source[key] = new
    model.load_state_dict(source)
    new_classes = [c for c in classes if c not in loaded.classes]
    pflop = loaded.checkpoint.get("pflop")
    log.info(
        f"init: weights of {file_identity(cfg.init_from)}, its classifier kept for "
        f"{', '.join(shared) or 'no class'}"
        + (f" and new for {', '.join(new_classes)}" if new_classes else "")
        + (
            f"; its training, {pflop:.3f} PFLOP, is added to this run's in best.pth's record"
            if pflop is not None
            else "; it does not record its training compute, so best.pth will record none"
        )
    )
    differ = [key for key in PREPROCESSING if getattr(loaded.config, key) != getattr(cfg, key)]
    if differ:
        changes = (
            f"{flag_of(key, getattr(cfg, key))} (was {flag_of(key, getattr(loaded.config, key))})" for key in differ
        )
        log.warning(f"init: this run reads faces otherwise than the checkpoint learnt to: {', '.join(changes)}")
    return pflop
