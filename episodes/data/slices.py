"""How a 2D model sees a slice: its ``C`` input channels, taken from one volume.

Two modes (``slice_input``):

* ``"tile"`` (SSL-ALPNet, the default): the slice repeated in every channel.
* ``"adjacent"`` (2.5D): channel ``c`` holds slice ``z + c - (C - 1) // 2``, so for ``C = 3`` the slice below,
  the slice and the slice above; indices beyond the volume's ends repeat its first / last slice. ``C`` must be
  odd, so the slice itself is the middle channel. The network then sees the through-plane context (is this the
  tip of an organ, or its middle?) that a single slice does not show.

Training (:class:`~episodes.sampling.selfsup.SelfSupervisedEpisodes`), evaluation
(:mod:`episodes.protocol.plan`) and inference (:mod:`fewshot.segment`) all take their indices from
:func:`channel_slices`, so a model is always fed the way it was trained. Pure numpy; no torch import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SLICE_INPUTS", "channel_slices", "check_slice_input", "stack_slices"]

#: Accepted ``slice_input`` values (see module docs).
SLICE_INPUTS: tuple[str, ...] = ("tile", "adjacent")


def check_slice_input(mode: object, channels: int, what: str = "slice_input") -> str:
    """``mode`` if it is one of :data:`SLICE_INPUTS` and fits ``channels``, else ``ValueError``."""
    if mode not in SLICE_INPUTS:
        raise ValueError(f"{what} must be one of {list(SLICE_INPUTS)}, got {mode!r}")
    if mode == "adjacent" and (channels < 1 or channels % 2 == 0):
        raise ValueError(
            f"{what}='adjacent' needs an odd number of input channels (the slice in the middle), got {channels}"
        )
    return str(mode)


def channel_slices(z: int, depth: int, channels: int, mode: str = "tile") -> list[int]:
    """The slice index feeding each of the ``channels`` inputs of slice ``z`` in a volume of ``depth`` slices."""
    check_slice_input(mode, channels)
    if not 0 <= z < depth:
        raise IndexError(f"slice {z} out of range [0, {depth})")
    if mode == "tile":
        return [int(z)] * channels
    half = (channels - 1) // 2
    return [min(max(int(z) + c - half, 0), depth - 1) for c in range(channels)]


def stack_slices(image: np.ndarray, zs: Sequence[int], channels: int, mode: str = "tile") -> np.ndarray:
    """``(N, C, H, W)`` float32 inputs of slices ``zs`` of ``image`` ``(Z, H, W)`` (see module docs)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {image.shape}")
    index = np.asarray([channel_slices(int(z), image.shape[0], channels, mode) for z in zs], dtype=np.int64)
    index = index.reshape(len(zs), channels)
    return np.ascontiguousarray(image[index], dtype=np.float32)
