"""Support-intensity prior: a veto on query pixels whose intensity the support's organ does not have.

The prototype heads compare features, and features need not keep absolute intensity. In CT the intensity is
calibrated (Hounsfield units, windowed and normalised with one training-split statistic for every scan), so the
support slice's own organ says which grey values an organ of that kind has. :func:`intensity_log_ratio` turns the
support slices into two histograms (organ pixels and the rest) and gives each query pixel the log-likelihood ratio
``r = log p(I | fg) - log p(I | bg)`` of its intensity. ``model.intensity_prior`` (a weight ``w``) adds
``w * min(r, 0)`` to the foreground logit margin before the threshold (:func:`fewshot.evaluation.predict_query`):
a pixel whose grey value is less likely under the organ than under the background loses foreground evidence, and
no pixel gains any (the two-sided ``w * r`` over-segmented on CT fold 0: ``benchmarks/ABLATION.md``). ``w = 0``
(the default) leaves the prediction exactly as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["INTENSITY_BINS", "INTENSITY_CLIP", "intensity_log_ratio", "intensity_of", "intensity_veto"]

#: Histogram bins over the support slices' intensity range (16: chosen on CT fold 0 over 32, ``ABLATION.md``).
INTENSITY_BINS = 16
#: The log-likelihood ratio is clamped to ``[-INTENSITY_CLIP, INTENSITY_CLIP]`` (one grey value alone never decides).
INTENSITY_CLIP = 4.0


def intensity_of(images: Tensor) -> Tensor:
    """The slice intensity ``(..., H, W)`` of model inputs ``(..., C, H, W)``: the middle channel (the slice itself
    for tiled input, where every channel is the slice, and for ``adjacent`` input, whose middle channel is)."""
    if images.ndim < 3:
        raise ValueError(f"images must be (..., C, H, W), got shape {tuple(images.shape)}")
    return images[..., images.shape[-3] // 2, :, :]


def _bin_index(values: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """The bin of each value among ``bins`` equal bins over ``[lo, hi]`` (values outside: the edge bins)."""
    return ((values - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()


def _histogram(values: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    return torch.bincount(_bin_index(values, lo, hi, bins).flatten(), minlength=bins).to(torch.float64)


def _density(counts: Tensor) -> Tensor:
    """Counts smoothed over neighbouring bins ([1, 2, 1] / 4), plus one pseudo-count per bin, normalised."""
    padded = torch.cat([counts[:1], counts, counts[-1:]])
    smooth = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:] + 1.0
    return smooth / smooth.sum()


def intensity_log_ratio(
    support_intensity: Tensor,
    support_masks: Tensor,
    query_intensity: Tensor,
    *,
    bins: int = INTENSITY_BINS,
    clip: float = INTENSITY_CLIP,
) -> Tensor:
    """``log p(I | fg) - log p(I | bg)`` of each query pixel, from the support slices' histograms.

    Args:
        support_intensity: ``(K, H, W)`` intensities of the K support slices (one support set).
        support_masks: ``(K, H, W)`` in ``{0, 1}``: the organ in each support slice.
        query_intensity: ``(N, H', W')`` intensities of the query slices (any size).
        bins: histogram bins over ``[min, max]`` of the support intensities (query values outside fall in the edge
            bins).
        clip: the ratio is clamped to ``[-clip, clip]``.

    Returns:
        ``(N, H', W')`` float32.
    """
    if support_intensity.ndim != 3 or support_masks.shape != support_intensity.shape:
        raise ValueError(
            f"support_intensity (K, H, W) and support_masks of the same shape expected, got "
            f"{tuple(support_intensity.shape)} and {tuple(support_masks.shape)}"
        )
    if query_intensity.ndim != 3:
        raise ValueError(f"query_intensity must be (N, H, W), got shape {tuple(query_intensity.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    values = support_intensity.detach().float()
    fg = support_masks.detach() > 0.5
    if not bool(fg.any()) or bool(fg.all()):
        raise ValueError("the support masks need both organ and background pixels for an intensity prior")
    lo, hi = values.min(), values.max()
    if not bool(hi > lo):
        raise ValueError("the support slices have one intensity only: no intensity prior can be drawn from them")
    ratio = (_density(_histogram(values[fg], lo, hi, bins)) / _density(_histogram(values[~fg], lo, hi, bins))).log()
    q = query_intensity.detach().float()
    return ratio.to(torch.float32).clamp(-clip, clip).to(q.device)[_bin_index(q, lo, hi, bins)]


def intensity_veto(
    support_intensity: Tensor, support_masks: Tensor, query_intensity: Tensor, *, bins: int = INTENSITY_BINS,
    clip: float = INTENSITY_CLIP,
) -> Tensor:
    """``min(r, 0)`` of :func:`intensity_log_ratio` ``r`` (same arguments and shapes): ``<= 0`` everywhere, ``0``
    where the intensity is at least as likely under the support's organ as under its background."""
    return intensity_log_ratio(support_intensity, support_masks, query_intensity, bins=bins, clip=clip).clamp(max=0.0)
