"""Two-stream batches: each training iteration gets labeled + unlabeled samples.

A batch is a pure function of (seed, iteration, rank): ``TwoStreamBatches[it]``
draws its own generator from those numbers, so worker processes are seeded
correctly, a resumed run sees the same batches, and each DDP rank draws from its
own disjoint shard of the cases.

Samples are drawn independently with replacement (``sampler="random"``), or as the reference
code's ``TwoStreamBatchSampler`` (``"epoch"``): every labeled sample once per cycle of
``len(labeled) // batch_labeled`` iterations, the unlabeled ones without repeats from a fresh
permutation each cycle. The cycle's permutations are drawn from (seed, cycle, rank), so the
batches are still a pure function of the iteration.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bfaseg.data.cases import Case
from bfaseg.data.transforms import augment


def shard(cases: list[Case], rank: int, world_size: int) -> list[Case]:
    """Disjoint shard for one rank (every rank gets at least one case)."""
    if world_size <= 1:
        return cases
    part = cases[rank::world_size]
    return part or [cases[rank % len(cases)]]


class TwoStreamBatches(Dataset):
    def __init__(
        self,
        labeled: list[Case],
        unlabeled: list[Case],
        *,
        batch_labeled: int,
        batch_unlabeled: int,
        patch_size: tuple[int, ...],
        seed: int,
        total_iterations: int,
        rank: int = 0,
        world_size: int = 1,
        rotation: str = "both",
        rotation_style: str = "bfaseg",
        sampler: str = "random",
        resize_after_augment: bool = False,
        unlabeled_targets: bool = False,
    ):
        self.labeled = shard(labeled, rank, world_size)
        self.unlabeled = shard(unlabeled, rank, world_size) if unlabeled else []
        self.batch_labeled = batch_labeled
        self.batch_unlabeled = batch_unlabeled if self.unlabeled else 0
        self.patch_size = tuple(patch_size)
        self.seed, self.rank = seed, rank
        self.total = total_iterations
        self.rotation, self.rotation_style = rotation, rotation_style
        self.resize_after_augment = resize_after_augment  # native 2-D slices, resized to patch_size every draw
        if sampler not in ("random", "epoch"):
            raise ValueError(f"sampler must be 'random' or 'epoch', got {sampler!r}")
        self.sampler = sampler
        self.cycle = max(1, len(self.labeled) // batch_labeled)  # iterations per labeled cycle (epoch sampler)
        self.unlabeled_targets = unlabeled_targets  # oracle mode for diagnostics: keep true labels

    @classmethod
    def from_config(cls, cfg, labeled: list[Case], unlabeled: list[Case], *, patch_size: tuple[int, ...],
                    total_iterations: int, rank: int = 0, world_size: int = 1,
                    unlabeled_targets: bool = False) -> "TwoStreamBatches":
        """A run's batch stream: batch sizes and seed from ``cfg.train``, sampling and augmentation from ``cfg.data``."""
        tc, dc = cfg.train, cfg.data
        return cls(labeled, unlabeled, batch_labeled=tc.batch_labeled, batch_unlabeled=tc.batch_unlabeled,
                   patch_size=patch_size, seed=tc.seed, total_iterations=total_iterations, rank=rank,
                   world_size=world_size, rotation=dc.rotation, rotation_style=dc.rotation_style, sampler=dc.sampler,
                   resize_after_augment=dc.slice_resize == "nearest_after_augment",
                   unlabeled_targets=unlabeled_targets)

    def __len__(self) -> int:
        return self.total

    def _indices(self, pool: list[Case], n: int, iteration: int, stream: int, rng: np.random.Generator):
        if self.sampler == "random":
            return rng.integers(0, len(pool), size=n)
        cycle, step = divmod(int(iteration), self.cycle)
        start, need = step * n, (step + 1) * n
        # a stream smaller than a cycle needs draws from as many permutations as cover it
        perms = [np.random.default_rng([self.seed, cycle, self.rank, stream, k]).permutation(len(pool))
                 for k in range(-(-need // len(pool)))]
        return np.concatenate(perms)[start:need]

    def _draw(self, pool: list[Case], idx: np.ndarray, rng: np.random.Generator, keep_label: bool):
        images, labels = [], []
        for i in idx:
            case = pool[int(i)]
            label = case.label if case.label is not None else np.zeros(case.image.shape, np.uint8)
            image, label = augment([case.image, label], self.patch_size, rng, self.rotation, self.rotation_style,
                                   self.resize_after_augment)
            images.append(image)
            labels.append(label)
        x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        return x, (y if keep_label else None)

    def __getitem__(self, iteration: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(iteration), self.rank])
        batch = {}
        idx = self._indices(self.labeled, self.batch_labeled, iteration, 0, rng)
        batch["image_l"], batch["label_l"] = self._draw(self.labeled, idx, rng, True)
        if self.batch_unlabeled:
            idx = self._indices(self.unlabeled, self.batch_unlabeled, iteration, 1, rng)
            x_u, y_u = self._draw(self.unlabeled, idx, rng, self.unlabeled_targets)
            batch["image_u"] = x_u
            if y_u is not None:
                batch["label_u"] = y_u
        return batch


def make_loader(batches: TwoStreamBatches, start_iteration: int, num_workers: int) -> DataLoader:
    """Iterate batches ``start_iteration .. total-1`` (prefetched by workers when num_workers > 0)."""
    kwargs = dict(batch_size=None, sampler=range(start_iteration, len(batches)), num_workers=num_workers)
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(batches, **kwargs)
