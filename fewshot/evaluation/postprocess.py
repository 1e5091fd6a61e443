"""Post-processing of predicted organ masks (optional; the published tables use none).

``lcc``: keep the largest 3D connected component (26-connectivity) of a scan's prediction.
Organs are single connected bodies, so isolated false-positive blobs elsewhere in the
scan are removed. Applied to the scored slices of one query scan at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["POSTPROCESS", "check_postprocess", "largest_connected_component", "postprocess"]


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a ``(Z, H, W)`` boolean mask (an empty mask stays empty).

    Ties between equally large components keep the one with the lowest label (first in raster order).
    """
    from scipy import ndimage

    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


#: Registered post-processing steps: ``name -> (Z, H, W) bool -> (Z, H, W) bool``.
POSTPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda m: m,
    "lcc": largest_connected_component,
}


def check_postprocess(name: str) -> str:
    """``name`` if it is a registered step; else ``ValueError`` listing the choices."""
    if name not in POSTPROCESS:
        raise ValueError(f"unknown postprocess {name!r}; choices: {', '.join(POSTPROCESS)}")
    return name


def postprocess(mask: np.ndarray, name: str) -> np.ndarray:
    """Apply the post-processing step ``name`` (``"none"`` or ``"lcc"``) to a ``(Z, H, W)`` mask."""
    return POSTPROCESS[check_postprocess(name)](mask)
