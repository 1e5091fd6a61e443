"""Episode types, their compact pickling and batching.

Shapes: ``K`` support shots, ``Q`` queries, ``C`` channels, ``H, W`` slice size, ``B`` batch.

Speed: :class:`Episode` / :class:`EpisodeBatch` pickle their CPU tensors by value in compact form (one
image channel when channels are tiled, uint8 binary masks), so DataLoader workers hand batches over
as one small message instead of one shared-memory file-descriptor handshake per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeInfo",
    "EpisodeKind",
    "collate_episodes",
]

EpisodeKind = Literal["superpixel", "annotated"]


@dataclass(frozen=True)
class EpisodeInfo:
    """Provenance of an episode.

    Attributes:
        subject: subject id of the slice.
        slice_index: axial slice index ``z`` (of the support).
        label: superpixel id (``kind="superpixel"``) or organ label value (``"annotated"``).
        organ: organ name for annotated episodes, ``None`` for superpixels.
        seed: the seed the episode was generated from.
        kind: ``"superpixel"`` or ``"annotated"``.
        query_slice_index: the query's slice when it differs from the support's (3D supervoxel
            episodes, ``query_distance > 0``); ``None``: the query is an augmented copy of slice ``z``.
    """

    subject: str
    slice_index: int
    label: int
    organ: str | None
    seed: int
    kind: EpisodeKind = "superpixel"
    query_slice_index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("superpixel", "annotated"):
            raise ValueError(f"EpisodeInfo.kind must be 'superpixel' or 'annotated', got {self.kind!r}")


def _check_binary(name: str, mask: torch.Tensor) -> None:
    if mask.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {mask.dtype}")
    if mask.device.type == "cpu" and not mask.requires_grad:
        # numpy: no intra-op thread pool start-up for these small tensors (dominant in the main process)
        a = mask.numpy()
        ok = not np.logical_and(a != 0, a != 1).any()
    else:
        ok = bool(((mask == 0) | (mask == 1)).all())
    if not ok:
        raise ValueError(f"{name} must be binary (values in {{0, 1}})")


@dataclass(frozen=True)
class Episode:
    """One 1-way K-shot episode.

    Attributes:
        support_images: ``(K, C, H, W)`` float32.
        support_masks: ``(K, H, W)`` float32 in {0, 1}.
        query_images: ``(Q, C, H, W)`` float32.
        query_masks: ``(Q, H, W)`` float32 in {0, 1}.
        info: :class:`EpisodeInfo`.
    """

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_images: torch.Tensor
    query_masks: torch.Tensor
    info: EpisodeInfo

    def __post_init__(self) -> None:
        for name in ("support_images", "query_images"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 4:
                raise ValueError(f"{name} must be a 4D (N, C, H, W) tensor, got {_describe(t)}")
            if t.dtype != torch.float32:
                raise ValueError(f"{name} must be float32, got {t.dtype}")
        for name in ("support_masks", "query_masks"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 3:
                raise ValueError(f"{name} must be a 3D (N, H, W) tensor, got {_describe(t)}")
            _check_binary(name, t)
        k, c, h, w = self.support_images.shape
        q = self.query_images.shape[0]
        if k < 1 or q < 1:
            raise ValueError(f"need at least one support and one query, got K={k}, Q={q}")
        if self.query_images.shape[1:] != (c, h, w):
            raise ValueError(
                f"query_images {tuple(self.query_images.shape)} do not match support_images "
                f"{tuple(self.support_images.shape)} in (C, H, W)"
            )
        if tuple(self.support_masks.shape) != (k, h, w):
            raise ValueError(
                f"support_masks shape {tuple(self.support_masks.shape)} != (K, H, W) = {(k, h, w)}"
            )
        if tuple(self.query_masks.shape) != (q, h, w):
            raise ValueError(f"query_masks shape {tuple(self.query_masks.shape)} != (Q, H, W) = {(q, h, w)}")

    @property
    def shots(self) -> int:
        return int(self.support_images.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_by_value(self, self.info)


def _describe(t: Any) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else f"{type(t).__name__}"


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of episodes with equal ``K``, ``Q``, ``C``, ``H``, ``W``.

    Attributes:
        support_images: ``(B, K, C, H, W)``; support_masks: ``(B, K, H, W)``;
        query_images: ``(B, Q, C, H, W)``; query_masks: ``(B, Q, H, W)``; infos: ``B`` infos.
    """

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_images: torch.Tensor
    query_masks: torch.Tensor
    infos: tuple[EpisodeInfo, ...]

    def __len__(self) -> int:
        return len(self.infos)

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_by_value(self, self.infos)


_TENSOR_FIELDS = ("support_images", "support_masks", "query_images", "query_masks")


_Packed = tuple[np.ndarray, str, tuple[int, ...]]


def _pack(tensor: torch.Tensor, is_mask: bool) -> _Packed:
    """A CPU tensor as ``(compact array, dtype, shape)``: channel-tiled ``(..., C, H, W)`` images keep
    one channel, binary masks travel as uint8."""
    a = tensor.numpy()
    compact = a
    if is_mask:
        if not np.logical_and(a != 0, a != 1).any():
            compact = a.astype(np.uint8)
    elif a.ndim >= 3 and a.shape[-3] > 1:
        first = a[..., :1, :, :]
        if np.array_equal(a[..., 1:, :, :], np.broadcast_to(first, a[..., 1:, :, :].shape)):
            compact = first
    return compact, a.dtype.str, a.shape


def _unpack(packed: _Packed) -> torch.Tensor:
    compact, dtype, shape = packed
    out = np.empty(shape, dtype=np.dtype(dtype))
    out[...] = compact  # re-tiles channels and restores the dtype in one pass
    return torch.from_numpy(out)


def _rebuild_by_value(cls: Any, packed: tuple[_Packed, ...], info: Any) -> Any:
    return cls(*(_unpack(p) for p in packed), info)


def _reduce_by_value(obj: Episode | EpisodeBatch, info: Any) -> tuple[Any, ...]:
    """Pickle CPU tensors as compact arrays in the pickle stream instead of torch's shared-memory handles.

    A DataLoader worker then sends a batch as one small message (channel-tiled images as one channel,
    binary masks as uint8: ~3x fewer bytes), without the per-tensor file-descriptor handshake with the
    worker's resource-sharer thread that otherwise dominates the transfer of small batches. Unpickling
    restores equal tensors (same dtype, shape and values, contiguous).
    """
    tensors = tuple(getattr(obj, name) for name in _TENSOR_FIELDS)
    if all(t.device.type == "cpu" and not t.requires_grad for t in tensors):
        try:
            packed = tuple(
                _pack(t, is_mask=name.endswith("masks")) for t, name in zip(tensors, _TENSOR_FIELDS)
            )
        except TypeError:  # a dtype numpy cannot represent (e.g. bfloat16)
            pass
        else:
            return (_rebuild_by_value, (type(obj), packed, info))
    return (type(obj), (*tensors, info))


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; via numpy for CPU tensors (no intra-op thread pool for a plain copy)."""
    if all(t.device.type == "cpu" and not t.requires_grad for t in tensors):
        return torch.from_numpy(np.stack([t.numpy() for t in tensors]))
    return torch.stack(list(tensors))


def collate_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes into an :class:`EpisodeBatch`; usable as a DataLoader ``collate_fn``."""
    if len(episodes) == 0:
        raise ValueError("collate_episodes: empty list")
    shapes = {(tuple(e.support_images.shape), tuple(e.query_images.shape)) for e in episodes}
    if len(shapes) != 1:
        raise ValueError(f"collate_episodes: episodes differ in support/query shapes: {sorted(shapes)}")
    return EpisodeBatch(
        support_images=_stack([e.support_images for e in episodes]),
        support_masks=_stack([e.support_masks for e in episodes]),
        query_images=_stack([e.query_images for e in episodes]),
        query_masks=_stack([e.query_masks for e in episodes]),
        infos=tuple(e.info for e in episodes),
    )
