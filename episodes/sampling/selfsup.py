"""Episodes and the self-supervised (superpixel) episode generator.

Shapes: ``K`` support shots, ``Q`` queries, ``C`` channels, ``H, W`` slice size, ``B`` batch.

:class:`SelfSupervisedEpisodes` follows SSL-ALPNet (``GenericSuperDatasetv2``): draw a slice uniformly,
draw one of its superpixels uniformly, binarise it, and build the support and query as *differently
augmented copies* of the same (slice, mask) pair (``K + Q`` independent augmentations). Differences
from SSL-ALPNet, all explicit:

* superpixels smaller than ``min_superpixel_pixels`` (default 200 px, ADNet/Q-Net's ``min_size``) are
  never drawn, and slices without any eligible superpixel are removed **up front** (counted in
  :meth:`SelfSupervisedEpisodes.describe`) instead of crashing at training time;
* every episode is a pure function of ``(seed, epoch, index)``, so it is identical across DataLoader
  worker counts and reruns;
* an augmentation that empties the support mask is redrawn (at most ``max_augment_tries`` times), then
  a ``RuntimeError`` names the slice and superpixel. Query masks may be empty;
* with **3D supervoxels** (``slic3d``, ids shared across slices) and ``query_distance = d > 0``, the
  queries come from another slice ``z'`` of the same supervoxel, ``0 < |z' - z| <= d``, drawn
  uniformly among the slices where it covers at least ``min_superpixel_pixels`` (ADNet/Q-Net's
  supervoxel episodes: support and query differ in anatomy, not only by augmentation). When no such
  slice exists the query is the support's slice, as with ``d = 0``.

Episodes are assembled in numpy (no torch intra-op threads for these small arrays); the episode
types and their pickling live in :mod:`episodes.sampling.types`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.labels import canonical_organ
from ..data.slices import channel_slices, check_slice_input, stack_slices
from ..data.volumes import Volume
from .augment import PRESETS, Augmenter
from .types import Episode, EpisodeInfo

__all__ = [
    "DEFAULT_MIN_SUPERPIXEL_PIXELS",
    "EpisodeConfig",
    "SelfSupervisedEpisodes",
]

#: Smallest superpixel (pixels at the slice resolution) used as a pseudo-label (ADNet/Q-Net ``min_size``).
DEFAULT_MIN_SUPERPIXEL_PIXELS = 200


@dataclass(frozen=True)
class EpisodeConfig:
    """How self-supervised episodes are drawn (the data-independent arguments of
    :class:`SelfSupervisedEpisodes`).

    Attributes:
        shots: support copies ``K`` (>= 1).
        queries: query copies ``Q`` (>= 1).
        augment: augmentation preset (:data:`episodes.sampling.augment.PRESETS`).
        min_superpixel_pixels: smallest superpixel (pixels at the slice resolution) that may be drawn.
        query_distance: ``d``: queries from another slice within ``d`` slices of the support's, of the
            same 3D supervoxel (needs a volumetric superpixel method, e.g. ``slic3d``); ``0``: the
            query is an augmented copy of the support slice (SSL-ALPNet).
    """

    shots: int = 1
    queries: int = 1
    augment: str = "alpnet"
    min_superpixel_pixels: int = DEFAULT_MIN_SUPERPIXEL_PIXELS
    query_distance: int = 0

    def __post_init__(self) -> None:
        for name in ("shots", "queries", "min_superpixel_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EpisodeConfig.{name} must be an integer >= 1, got {value!r}")
        d = self.query_distance
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"EpisodeConfig.query_distance must be an integer >= 0, got {d!r}")
        if self.augment not in PRESETS:
            raise ValueError(f"EpisodeConfig.augment={self.augment!r}; choices: {list(PRESETS)}")


class SelfSupervisedEpisodes(Dataset):  # type: ignore[type-arg]
    """Superpixel episodes from preprocessed volumes (SSL-ALPNet self-supervision).

    Args:
        volumes: normalised volumes (:func:`episodes.data.preprocess.preprocess`), unique subjects.
        superpixels: ``{subject: (Z, H, W) int}`` maps at the same size as the volumes (0 = outside
            the body). Compute them on the raw volumes and resize with nearest-neighbour if needed.
        shots: support copies ``K``.
        queries: query copies ``Q``.
        channels: ``C``.
        slice_input: how a slice fills the ``C`` channels (:mod:`episodes.data.slices`): ``"tile"`` repeats it,
            ``"adjacent"`` stacks it with its neighbours (2.5D; support and query get the same warp on every
            channel). With ``exclude_organs`` a slice is then usable only if none of its channel slices is
            excluded, so no excluded organ reaches training through a neighbour.
        augment: augmentation preset (:data:`episodes.sampling.augment.PRESETS`).
        min_superpixel_pixels: smallest superpixel (pixels) that may be drawn.
        query_distance: queries from another slice of the same supervoxel at most this many slices
            away (the maps must be 3D supervoxels, ids shared across slices); ``0``: same slice.
        exclude_organs: setting 2: drop every slice that contains **any** of these organs
            (``exclude_mode="any"``, SSL-ALPNet semantics; the Q-Net lineage uses "all").
            Needs labels on every volume.
        length: episodes per epoch.
        seed: base seed; episode ``i`` of epoch ``e`` uses ``SeedSequence([seed, e, i])``.
        max_augment_tries: augmentation redraws before giving up on an empty support mask.

    Raises:
        ValueError: bad arguments, shape mismatch, a map without body or with a single region,
            missing labels for ``exclude_organs``, or no usable slice at all.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        superpixels: Mapping[str, np.ndarray],
        *,
        shots: int = 1,
        queries: int = 1,
        channels: int = 3,
        slice_input: str = "tile",
        augment: str = "alpnet",
        min_superpixel_pixels: int = DEFAULT_MIN_SUPERPIXEL_PIXELS,
        query_distance: int = 0,
        exclude_organs: Sequence[str] = (),
        length: int = 1000,
        seed: int = 0,
        max_augment_tries: int = 10,
    ) -> None:
        for name, value, low in (
            ("shots", shots, 1),
            ("queries", queries, 1),
            ("channels", channels, 1),
            ("min_superpixel_pixels", min_superpixel_pixels, 1),
            ("query_distance", query_distance, 0),
            ("length", length, 1),
            ("max_augment_tries", max_augment_tries, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not volumes:
            raise ValueError("SelfSupervisedEpisodes: no volumes given")
        self.shots, self.queries, self.channels = int(shots), int(queries), int(channels)
        self.slice_input = check_slice_input(slice_input, self.channels)
        self.min_superpixel_pixels = int(min_superpixel_pixels)
        self.query_distance = int(query_distance)
        self.length, self.seed, self.max_augment_tries = int(length), int(seed), int(max_augment_tries)
        self.augment_name = augment
        self.augmenter = Augmenter(augment)
        self.exclude_organs = tuple(canonical_organ(o) for o in exclude_organs)
        self.epoch = 0

        subjects = [v.subject for v in volumes]
        if len(set(subjects)) != len(subjects):
            raise ValueError(f"duplicate subject ids in volumes: {subjects}")
        self._images: list[np.ndarray] = []
        self._maps: list[np.ndarray] = []
        self._subjects: list[str] = []
        slice_vol: list[int] = []
        slice_z: list[int] = []
        eligible: list[np.ndarray] = []
        n_total = n_excluded = n_no_sp = 0
        for vi, volume in enumerate(volumes):
            if not volume.normalized:
                raise ValueError(
                    f"subject {volume.subject}: volumes must be normalised first (episodes.data.preprocess.preprocess)"
                )
            if volume.subject not in superpixels:
                raise ValueError(
                    f"no superpixel map for subject {volume.subject!r}; maps given for {sorted(superpixels)}"
                )
            sp = np.asarray(superpixels[volume.subject])
            if sp.shape != volume.shape:
                raise ValueError(
                    f"subject {volume.subject}: superpixel map shape {sp.shape} != volume shape {volume.shape} "
                    "(resize the map with nearest-neighbour to the preprocessed size)"
                )
            if not np.issubdtype(sp.dtype, np.integer) or (sp.size and sp.min() < 0):
                raise ValueError(f"subject {volume.subject}: superpixel map must hold non-negative integers")
            sp = sp.astype(np.int32, copy=False)
            ids = np.unique(sp)
            ids = ids[ids > 0]
            if ids.size == 0:
                raise ValueError(
                    f"subject {volume.subject}: superpixel map is all 0 (no body found in any slice); "
                    "check the body threshold / intensity units used to compute it"
                )
            if ids.size == 1:
                raise ValueError(
                    f"subject {volume.subject}: superpixel map has a single region (id {int(ids[0])}) in "
                    "every slice; this looks like a body mask or label, not superpixels"
                )
            excluded = np.zeros(volume.shape[0], dtype=bool)
            if self.exclude_organs:
                if volume.label is None:
                    raise ValueError(
                        f"subject {volume.subject}: exclude_organs={self.exclude_organs} needs labels, "
                        "but the volume has none"
                    )
                excluded = volume.slices_with_any(self.exclude_organs)
                if self.slice_input != "tile":
                    depth = volume.shape[0]
                    excluded = np.asarray(
                        [excluded[channel_slices(z, depth, self.channels, self.slice_input)].any() for z in range(depth)]
                    )
            self._images.append(volume.image)
            self._maps.append(sp)
            self._subjects.append(volume.subject)
            for z in range(volume.shape[0]):
                n_total += 1
                if excluded[z]:
                    n_excluded += 1
                    continue
                counts = np.bincount(sp[z].ravel())
                good = np.flatnonzero(counts >= self.min_superpixel_pixels)
                good = good[good > 0]
                if good.size == 0:
                    n_no_sp += 1
                    continue
                slice_vol.append(vi)
                slice_z.append(z)
                eligible.append(good.astype(np.int32))
        if not slice_vol:
            raise ValueError(
                f"no usable slice: {n_total} slices, {n_excluded} excluded by organs {self.exclude_organs}, "
                f"{n_no_sp} without a superpixel of >= {self.min_superpixel_pixels} px"
            )
        self._slice_vol = np.asarray(slice_vol, dtype=np.int64)
        self._slice_z = np.asarray(slice_z, dtype=np.int64)
        self._eligible = eligible
        self._counts = {
            "n_slices_total": n_total,
            "n_slices_excluded_by_organs": n_excluded,
            "n_slices_without_eligible_superpixel": n_no_sp,
            "n_eligible_slices": len(slice_vol),
        }

    @classmethod
    def from_config(
        cls,
        volumes: Sequence[Volume],
        superpixels: Mapping[str, np.ndarray],
        config: EpisodeConfig,
        *,
        channels: int,
        slice_input: str = "tile",
        exclude_organs: Sequence[str] = (),
        length: int,
        seed: int,
    ) -> SelfSupervisedEpisodes:
        """The generator for ``config``; the other arguments are as in the constructor."""
        return cls(
            volumes,
            superpixels,
            shots=config.shots,
            queries=config.queries,
            channels=channels,
            slice_input=slice_input,
            augment=config.augment,
            min_superpixel_pixels=config.min_superpixel_pixels,
            query_distance=config.query_distance,
            exclude_organs=exclude_organs,
            length=length,
            seed=seed,
        )

    @property
    def config(self) -> EpisodeConfig:
        """The :class:`EpisodeConfig` of this generator."""
        return EpisodeConfig(
            shots=self.shots,
            queries=self.queries,
            augment=self.augment_name,
            min_superpixel_pixels=self.min_superpixel_pixels,
            query_distance=self.query_distance,
        )

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Vary episodes per epoch (episode ``i`` then depends on ``(seed, epoch, i)``)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def describe(self) -> dict[str, Any]:
        """Configuration and slice counts, for run metadata."""
        return {
            "n_volumes": len(self._subjects),
            "subjects": list(self._subjects),
            **self._counts,
            "n_eligible_superpixels": int(sum(len(e) for e in self._eligible)),
            "exclude_organs": list(self.exclude_organs),
            "exclude_mode": "any",
            "min_superpixel_pixels": self.min_superpixel_pixels,
            "query_distance": self.query_distance,
            "shots": self.shots,
            "queries": self.queries,
            "channels": self.channels,
            "slice_input": self.slice_input,
            "augment": self.augment_name,
            "length": self.length,
            "seed": self.seed,
            "epoch": self.epoch,
        }

    def episode_seed(self, index: int) -> int:
        """The 63-bit seed of episode ``index`` in the current epoch."""
        seq = np.random.SeedSequence([self.seed, self.epoch, int(index)])
        return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.length:
            raise IndexError(f"episode index {index} out of range [0, {self.length})")
        seed = self.episode_seed(index)
        rng = np.random.default_rng(seed)
        k = int(rng.integers(len(self._slice_vol)))
        vi, z = int(self._slice_vol[k]), int(self._slice_z[k])
        label = int(rng.choice(self._eligible[k]))
        image = self._input(vi, z)
        mask = (self._maps[vi][z] == label).view(np.uint8)
        zq = self._query_slice(vi, z, label, rng) if self.query_distance else z
        query_source = (self._input(vi, zq), (self._maps[vi][zq] == label).view(np.uint8)) if zq != z else None
        sources = ((image, mask), query_source or (image, mask))
        aug_seeds = rng.integers(0, 2**32, size=(self.shots + self.queries, self.max_augment_tries))
        h, w = image.shape[:2]
        s, c = self.shots, self.channels
        # written once, channel-tiled by broadcasting; support and query own separate buffers
        sup_img = np.empty((s, c, h, w), dtype=np.float32)
        qry_img = np.empty((self.queries, c, h, w), dtype=np.float32)
        sup_msk = np.empty((s, h, w), dtype=np.float32)
        qry_msk = np.empty((self.queries, h, w), dtype=np.float32)
        for copy in range(self.shots + self.queries):
            src_img, src_msk = sources[copy >= s]
            for attempt in range(self.max_augment_tries):
                img, msk = self.augmenter(src_img, src_msk, int(aug_seeds[copy, attempt]))
                if copy >= self.shots or msk.any():
                    break
            else:
                raise RuntimeError(
                    f"subject {self._subjects[vi]} slice {z} superpixel {label} ({int(mask.sum())} px): "
                    f"support mask empty after {self.max_augment_tries} augmentations"
                )
            if img.ndim == 3:  # (H, W, C) stack of adjacent slices
                img = img.transpose(2, 0, 1)
            if copy < s:
                sup_img[copy] = img
                sup_msk[copy] = msk
            else:
                qry_img[copy - s] = img
                qry_msk[copy - s] = msk
        return Episode(
            support_images=torch.from_numpy(sup_img),
            support_masks=torch.from_numpy(sup_msk),
            query_images=torch.from_numpy(qry_img),
            query_masks=torch.from_numpy(qry_msk),
            info=EpisodeInfo(
                subject=self._subjects[vi],
                slice_index=z,
                label=label,
                organ=None,
                seed=seed,
                kind="superpixel",
                query_slice_index=zq if zq != z else None,
            ),
        )

    def _input(self, vi: int, z: int) -> np.ndarray:
        """Slice ``z`` of volume ``vi`` as the augmenter takes it: ``(H, W)`` when tiled (the channels are filled
        by broadcasting after augmentation), else the ``(H, W, C)`` stack of its channel slices."""
        if self.slice_input == "tile":
            return self._images[vi][z]
        stack = stack_slices(self._images[vi], [z], self.channels, self.slice_input)[0]
        return np.ascontiguousarray(stack.transpose(1, 2, 0))

    def _query_slice(self, vi: int, z: int, label: int, rng: np.random.Generator) -> int:
        """A slice ``z'`` with ``0 < |z' - z| <= query_distance`` where supervoxel ``label`` covers at
        least ``min_superpixel_pixels``, uniformly; ``z`` when there is none."""
        sp = self._maps[vi]
        lo, hi = max(0, z - self.query_distance), min(sp.shape[0], z + self.query_distance + 1)
        near = [c for c in range(lo, hi) if c != z]
        counts = np.count_nonzero(sp[near] == label, axis=(1, 2)) if near else np.zeros(0)
        candidates = [c for c, n in zip(near, counts) if n >= self.min_superpixel_pixels]
        return int(rng.choice(candidates)) if candidates else z
