"""Episode data for training: a step-indexed batch sampler and the Lightning data module.

Every episode is a pure function of its index (``SelfSupervisedEpisodes`` seeds episode
``i`` with ``SeedSequence([seed, 0, i])``), and the batch of optimiser step ``g`` on rank
``r`` of ``W`` always holds episodes ``(g * W + r) * B + j``, ``j < B``. No index is ever
reused, so every step sees fresh episodes (what per-epoch reseeding achieves), the
stream does not depend on the number of DataLoader workers, and a resumed run continues
with exactly the episodes an uninterrupted run would have drawn.

DataLoader workers exit when the training process dies, even by ``SIGKILL``
(:func:`episodes.processes.die_with_parent`, Linux only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Sampler

from episodes.data.volumes import Volume
from episodes.processes import die_with_parent
from episodes.sampling import SelfSupervisedEpisodes, collate_episodes
from fewshot.config import DataConfig, ExperimentConfig

__all__ = ["EpisodeDataModule", "StepBatchSampler"]


class StepBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for steps ``start_step .. total_steps - 1`` of one rank.

    ``len()`` is ``total_steps`` (the whole schedule) even when starting later, so that
    Lightning's batch counter, restored from a checkpoint, ends the epoch exactly when the
    sampler runs out.
    """

    def __init__(
        self, total_steps: int, batch_size: int, *, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> None:
        if total_steps < 1 or batch_size < 1 or world_size < 1:
            raise ValueError(
                f"total_steps, batch_size, world_size must be >= 1, got {total_steps}, {batch_size}, {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step {start_step} outside [0, {total_steps}]")
        self.total_steps, self.batch_size = total_steps, batch_size
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def indices(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.indices(step)

    def __len__(self) -> int:
        return self.total_steps


def _worker_init(worker_id: int, *, parent_pid: int, rank: int, seed_workers: bool) -> None:
    """DataLoader ``worker_init_fn``: exit with the parent, then Lightning's worker seeding.

    Lightning adds ``pl_worker_init_function`` only to loaders without a ``worker_init_fn`` (and only
    after ``seed_everything(workers=True)``, which sets ``PL_SEED_WORKERS``), so it is called here
    under the same condition: the workers' random state is the same as without this function.
    """
    die_with_parent(parent_pid)
    if seed_workers:
        pl_worker_init_function(worker_id, rank=rank)


class EpisodeDataModule(pl.LightningDataModule):
    """Self-supervised episodes from preprocessed volumes and their superpixel maps.

    The episode dataset is built here, in the launching process, and the volumes are not
    kept (only the arrays the dataset needs), so the module pickles for ``ddp_spawn``.

    Args:
        volumes: normalised training volumes (``episodes.data.preprocess.preprocess``).
        superpixels: ``{subject: (Z, H, W) int}`` maps at the volumes' size.
        data: data settings (shots, queries, channels, augmentation, exclusions...).
        batch_size: episodes per step and rank.
        total_steps: schedule length (``max_steps``).
        world_size: number of processes (``Trainer.world_size``); the dataset has
            ``total_steps * world_size * batch_size`` episodes.
        num_workers: DataLoader workers (persistent when > 0).
        seed: episode seed.
        pin_memory: ``None`` = pin when CUDA is available.
        slice_input: how a slice fills the channels (``ModelConfig.slice_input``).
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        superpixels: Mapping[str, np.ndarray],
        data: DataConfig,
        *,
        batch_size: int,
        total_steps: int,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool | None = None,
        slice_input: str = "tile",
    ) -> None:
        super().__init__()
        self.batch_size, self.total_steps, self.world_size = batch_size, total_steps, world_size
        self.num_workers, self.seed = num_workers, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.dataset = SelfSupervisedEpisodes.from_config(
            volumes,
            superpixels,
            data.episodes,
            channels=data.channels,
            slice_input=slice_input,
            exclude_organs=data.train_exclusions(),
            length=total_steps * world_size * batch_size,
            seed=seed,
        )

    @classmethod
    def for_experiment(
        cls,
        cfg: ExperimentConfig,
        volumes: Sequence[Volume],
        superpixels: Mapping[str, np.ndarray],
        *,
        world_size: int = 1,
    ) -> EpisodeDataModule:
        """The episodes :func:`fewshot.training.train` draws for ``cfg``: its data settings, ``train.batch_size``,
        ``train.steps`` and ``train.num_workers``, seeded with ``cfg.train_seed``."""
        return cls(
            volumes,
            superpixels,
            cfg.data,
            batch_size=cfg.train.batch_size,
            total_steps=cfg.train.steps,
            world_size=world_size,
            num_workers=cfg.train.num_workers,
            seed=cfg.train_seed,
            slice_input=cfg.model.slice_input,
        )

    def describe(self) -> dict[str, Any]:
        """Episode dataset statistics (slice counts, exclusions...)."""
        return self.dataset.describe()

    def _position(self) -> tuple[int, int, int]:
        """``(rank, world size, global step)`` from the attached trainer (``(0, 1, 0)`` without)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1, 0
        return int(trainer.global_rank), int(trainer.world_size), int(trainer.global_step)

    def train_dataloader(self) -> DataLoader[Any]:
        rank, world, step = self._position()
        if world != self.world_size:
            raise ValueError(
                f"EpisodeDataModule was built for world_size={self.world_size}, trainer has {world}"
            )
        sampler = StepBatchSampler(
            self.total_steps,
            self.batch_size,
            rank=rank,
            world_size=world,
            start_step=min(step, self.total_steps),
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_episodes,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=partial(
                _worker_init,
                parent_pid=os.getpid(),  # workers are forked by the process iterating, i.e. this one
                rank=rank,
                seed_workers=bool(int(os.environ.get("PL_SEED_WORKERS", 0))),
            ),
        )
