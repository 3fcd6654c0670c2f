"""Training batches: the epoch sampler, the two pipelines that fill its batches, and the seeds behind both.

Data order and augmentation randomness depend only on (seed, epoch) (and the step, in the batched
pipeline), so ``--resume`` replays the rest of a run exactly as an uninterrupted one would have run it.

Two pipelines feed the loop (``--data-pipeline``): DataLoader workers that decode and augment image
by image (torchvision, the reference), or the split decoded once and augmented a batch at a time on
the training device (:mod:`ferkit.fastdata`). Both deliver the same sampler's batches on the device,
so everything after them, from the loss to the checkpoints, is one code path.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .. import distributed as dist
from ..config import Config
from ..data.batched import BatchAugment, DecodedImages, batches, decode_once
from ..data.datasets import CLASSES, FerDataset, Sample, collate_skipping
from ..data.loaders import batches_of, make_loader
from ..data.transforms import build_batch_mix, build_train_transform
from ..runtime import Speed


class EpochSampler(Sampler[int]):
    """One process's share of a permutation seeded by (seed, epoch), optionally from part-way (a resumed epoch).

    Process r of N takes positions r, r+N, r+2N, ... of the permutation, so the k-th batch of every process
    together make up the same global batch whatever N is, one process included. The permutation is cut to a
    multiple of N rather than padded: what is cut lies in the last, incomplete global batch, dropped anyway.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)[: self.size - self.size % self.world_size]
        return iter(order[self.rank :: self.world_size][self.start :].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size - self.start


Batch = tuple[torch.Tensor | None, torch.Tensor | None, list[str]]  # images, targets, unreadable files skipped


class TrainBatches(ABC):
    """One process's training batches of an epoch, in the EpochSampler's order: (images, targets, skipped names).

    Images and targets are on the training device, images in the model's memory layout.
    """

    def __init__(self, size: int, cfg: Config, speed: Speed, batch_size: int) -> None:
        self.size, self.cfg, self.speed, self.batch_size = size, cfg, speed, batch_size
        self.sampler = EpochSampler(size, cfg.seed, dist.rank(), dist.world_size())
        self.epoch, self.start_step = 0, 0
        self.skipped: list[str] = []  # unreadable files left out before training (the batched pipeline)
        self.mix = build_batch_mix(cfg, len(CLASSES))

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Start ``epoch`` at ``start_step``; at its first step also seed the global generator, which drives dropout
        (and augmentation in the main process with --workers 0). A resumed epoch's comes from last.pth instead."""
        self.epoch, self.start_step = epoch, start_step
        self.sampler.set_epoch(epoch, start_step * self.batch_size)
        if not start_step:
            torch.manual_seed(_augmentation_seed(self.cfg, epoch))

    def __iter__(self) -> Iterator[Batch]:
        """The pipeline's batches; under --mixup-alpha / --cutmix-alpha mixed, with label probabilities as targets.

        Mixing draws from the global generator, which set_epoch seeds and last.pth keeps, as it does dropout's.
        """
        for images, targets, bad in self._batches():
            if self.mix is not None and images is not None:
                images, targets = self.mix(images, targets)
                images = images.to(memory_format=self.speed.memory_format)
            yield images, targets, bad

    @abstractmethod
    def _batches(self) -> Iterator[Batch]: ...

    @abstractmethod
    def description(self) -> str: ...


class WorkerBatches(TrainBatches):
    """DataLoader workers decode every image and run the torchvision reference augmentations on it, every epoch."""

    def __init__(
        self, samples: list[Sample], cfg: Config, speed: Speed, batch_size: int, targets: torch.Tensor | None = None
    ) -> None:
        super().__init__(len(samples), cfg, speed, batch_size)
        dataset = FerDataset(samples, build_train_transform(cfg), cfg.bad_images == "skip", targets)
        self.generator = torch.Generator()
        self.loader = make_loader(
            dataset,
            batch_size,
            speed.workers,
            speed.device,
            sampler=self.sampler,
            drop_last=True,
            generator=self.generator,
            collate_fn=collate_skipping,
        )

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        super().set_epoch(epoch, start_step)
        self.generator.manual_seed(_augmentation_seed(self.cfg, epoch))  # seeds the workers' augmentation

    def _batches(self) -> Iterator[Batch]:
        for images, targets, bad in batches_of(self.loader):
            if images is not None:
                # From pinned memory on CUDA, so the copy overlaps the previous step's compute.
                images = images.to(self.speed.device, non_blocking=True, memory_format=self.speed.memory_format)
                targets = targets.to(self.speed.device, non_blocking=True)
            yield images, targets, bad

    def description(self) -> str:
        return f"workers data pipeline ({self.speed.workers} DataLoader workers decode and augment image by image)"


class DecodedBatches(TrainBatches):
    """The split decoded once into a uint8 tensor kept on the device; BatchAugment augments each batch there.

    Nothing crosses from the host per step. Each step's augmentation is drawn from a generator seeded by
    (seed, epoch, process, step), so a resumed epoch replays its remaining steps' draws with no state saved.
    """

    def __init__(
        self, samples: list[Sample], cfg: Config, speed: Speed, batch_size: int, targets: torch.Tensor | None = None
    ) -> None:
        augment = BatchAugment(cfg).to(speed.device)  # first: it refuses what it cannot do before any decoding
        decoded = _decode_first_per_machine(samples, cfg)
        super().__init__(len(decoded.labels), cfg, speed, batch_size)
        self.skipped = decoded.skipped
        labels = decoded.labels
        if targets is not None:  # the decoded images leave the unreadable ones out
            skipped = set(decoded.skipped)
            labels = targets[[i for i, s in enumerate(samples) if s.name not in skipped]]
        self.images, self.labels = decoded.images.to(speed.device), labels.to(speed.device)
        self.augment = augment
        self.generator = torch.Generator(speed.device)
        self.origin = (
            f"read from the cache {decoded.cache_file}"
            if decoded.reused
            else f"written to the cache {decoded.cache_file}"
            if decoded.cache_file
            else "kept in memory, as CSV rows need no cache"
        )

    def _batches(self) -> Iterator[Batch]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64)
        steps = batches(self.images, self.labels, order, self.batch_size, self.speed.device, drop_last=True)
        for step, (images, targets) in enumerate(steps, start=self.start_step):
            self.generator.manual_seed(_step_seed(self.cfg, self.epoch, step))
            yield self.augment(images, self.generator).to(memory_format=self.speed.memory_format), targets, []

    def description(self) -> str:
        return (
            f"batched data pipeline ({self.size} images decoded once, {self.origin}; "
            f"augmented a batch at a time on {self.speed.device})"
        )


def open_batches(
    samples: list[Sample], cfg: Config, speed: Speed, batch_size: int, targets: torch.Tensor | None = None
) -> TrainBatches:
    """The training batches of ``speed.pipeline``; ``batch_size`` is this process's share of the global batch.

    ``targets`` (probabilities [len(samples), classes], distillation's) replace the samples' labels.
    """
    feed = DecodedBatches if speed.pipeline == "batched" else WorkerBatches
    return feed(samples, cfg, speed, batch_size, targets)


def _decode_first_per_machine(samples: list[Sample], cfg: Config) -> DecodedImages:
    # The first process of each machine decodes and fills the cache (each machine may have its own); the others
    # wait, then load it, rather than all decode the same files at once.
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if not first:
        dist.barrier()
    decoded = decode_once(samples, cfg.cache_dir, skip_bad=cfg.bad_images == "skip")
    if first:
        dist.barrier()
    return decoded


def _augmentation_seed(cfg: Config, epoch: int) -> int:
    # Differs between processes, or all would draw the same crops and flips; the sampler seeds the data order.
    return cfg.seed * 1_000_003 + epoch + (dist.rank() << 32)


def _step_seed(cfg: Config, epoch: int, step: int) -> int:
    # SeedSequence mixes the four numbers, so no two (epoch, process, step) share a stream as sums could.
    entropy = [cfg.seed % 2**64, epoch, dist.rank(), step]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def rng_state() -> dict:
    """Every process's global generator, for last.pth when a run stops part-way through an epoch."""
    return {"torch": dist.gather(torch.get_rng_state())}


def restore_rng(rng: dict) -> None:
    """Put back the global generator a run stopped part-way through an epoch with (see :func:`rng_state`)."""
    states = rng["torch"]
    # On another number of processes the data order is kept; only this epoch's augmentation draws differ.
    torch.set_rng_state(states[dist.rank() % len(states)])
