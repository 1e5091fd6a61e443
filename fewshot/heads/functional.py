"""Pure tensor functions behind the prototype heads (SG-One/PANet, ALPNet, ADNet, DPCN).

Conventions (shared by every function here):

* Class channel 0 is background, channel 1 is foreground.
* Masks are float tensors with values in ``[0, 1]`` (binary masks in practice).
* **Mask resizing.** Masks are resized to the *feature* resolution, never the features to the
  mask resolution (:func:`resize_masks`). This is what SSL-ALPNet does and it is the cheaper
  choice; PANet upsamples the features to the image size instead. We resize with
  ``bilinear`` + ``antialias=True`` (an area-weighted average when shrinking) so that a small
  structure never vanishes: SSL-ALPNet's plain bilinear point-samples the mask and can turn a
  few-pixel foreground into an all-zero feature-resolution mask.
* **Empty masks.** :func:`masked_average_pooling` of an all-zero mask returns the zero vector
  (``sum / (area + eps)``) and every cosine similarity against a zero prototype is 0. The
  functions never raise for an empty mask; :class:`fewshot.models.FewShotSegmenter` raises
  ``EmptySupportError`` for an empty support mask unless ``allow_empty_support=True``.
* **k-shot.** SG-One/PANet prototypes and DPCN kernels/prototypes/activation maps are averaged
  over the K supports. ALPNet keeps the union of the K shots' local prototypes plus one global
  foreground prototype per shot, as SSL-ALPNet's ``gridconv+`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "SegmentFn",
    "adaptive_local_prototypes",
    "alignment_loss",
    "alp_scores",
    "alp_segment",
    "anomaly_segment",
    "cosine_similarity_map",
    "dynamic_depthwise_conv",
    "dynamic_kernels",
    "local_prototype_decision",
    "masked_average_pooling",
    "panet_segment",
    "prototype_segmentation",
    "resize_masks",
    "support_activation",
    "weighted_ce",
]

EPS = 1e-5
"""Added to the mask area in masked average pooling (SSL-ALPNet/PANet use 1e-5)."""
NORM_EPS = 1e-4
"""Lower bound of a vector norm in cosine similarity (SSL-ALPNet's ``safe_norm``)."""

SegmentFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``segment(query_features (N,C,h,w), support_features (N,K,C,h,w), support_masks (N,K,H',W'))``
``-> logits (N,2,h,w)``: the few-shot classifier re-used by the alignment loss."""


def _check_ndim(name: str, t: Tensor, ndim: int, layout: str) -> None:
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def _check_batch(name_a: str, a: Tensor, name_b: str, b: Tensor, dims: int = 1) -> None:
    if a.shape[:dims] != b.shape[:dims]:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} disagree on the leading {dims} dim(s)"
        )


def resize_masks(masks: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize masks ``(N, H, W)`` to ``size = (h, w)`` -> ``(N, h, w)``.

    Bilinear with anti-aliasing (area-weighted when shrinking); a no-op for equal sizes.
    """
    _check_ndim("masks", masks, 3, "(N, H, W)")
    size = (int(size[0]), int(size[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks
    shrink = masks.shape[-2] > size[0] or masks.shape[-1] > size[1]
    out = F.interpolate(
        masks.float()[:, None], size=size, mode="bilinear", align_corners=False, antialias=shrink
    )
    return out[:, 0].clamp(0.0, 1.0)


def masked_average_pooling(features: Tensor, masks: Tensor, eps: float = EPS) -> Tensor:
    """Masked average pooling (MAP): ``features (N,C,h,w)``, ``masks (N,H,W)`` -> ``(N,C)``.

    ``masks`` is resized to ``(h, w)`` with :func:`resize_masks`. The result is
    ``sum(f * m) / (sum(m) + eps)``: an empty mask gives the zero vector.
    """
    _check_ndim("features", features, 4, "(N, C, h, w)")
    _check_ndim("masks", masks, 3, "(N, H, W)")
    _check_batch("features", features, "masks", masks)
    m = resize_masks(masks, features.shape[-2:]).to(features.dtype)
    num = torch.einsum("nchw,nhw->nc", features, m)
    return num / (m.sum(dim=(-2, -1))[:, None] + eps)


def _normalize(x: Tensor, dim: int) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(NORM_EPS)


def cosine_similarity_map(features: Tensor, prototypes: Tensor, scale: float = 20.0) -> Tensor:
    """``scale * cos(features, prototypes)``: ``features (N,C,h,w)``, ``prototypes (N,P,C)`` -> ``(N,P,h,w)``.

    Norms are clamped below at ``1e-4``, so a zero prototype (or feature) gives similarity 0.
    """
    _check_ndim("features", features, 4, "(N, C, h, w)")
    _check_ndim("prototypes", prototypes, 3, "(N, P, C)")
    _check_batch("features", features, "prototypes", prototypes)
    if features.shape[1] != prototypes.shape[2]:
        raise ValueError(
            f"channel mismatch: features have C={features.shape[1]}, prototypes C={prototypes.shape[2]}"
        )
    return scale * torch.einsum("nchw,npc->nphw", _normalize(features, 1), _normalize(prototypes, 2))


def prototype_segmentation(
    query_features: Tensor, fg_prototype: Tensor, bg_prototype: Tensor, scale: float = 20.0
) -> Tensor:
    """SG-One/PANet classifier: ``query_features (N,C,h,w)``, prototypes ``(N,C)`` -> logits ``(N,2,h,w)``.

    Channel 0 is ``scale * cos(f, bg)``, channel 1 ``scale * cos(f, fg)``.
    """
    _check_ndim("fg_prototype", fg_prototype, 2, "(N, C)")
    _check_ndim("bg_prototype", bg_prototype, 2, "(N, C)")
    return cosine_similarity_map(query_features, torch.stack([bg_prototype, fg_prototype], dim=1), scale)


def _check_episode(query_features: Tensor, support_features: Tensor, support_masks: Tensor) -> None:
    _check_ndim("query_features", query_features, 4, "(N, C, h, w)")
    _check_ndim("support_features", support_features, 5, "(N, K, C, h, w)")
    _check_ndim("support_masks", support_masks, 4, "(N, K, H, W)")
    _check_batch("support_features", support_features, "support_masks", support_masks, dims=2)
    _check_batch("query_features", query_features, "support_features", support_features)


#: How the K support shots are combined (see :func:`alp_segment` / :func:`panet_segment`).
SHOT_FUSIONS = ("prototypes", "scores")


def check_fusion(fusion: str) -> str:
    if fusion not in SHOT_FUSIONS:
        raise ValueError(f"unknown shot fusion {fusion!r}; choices: {', '.join(SHOT_FUSIONS)}")
    return fusion


def panet_segment(
    query_features: Tensor,
    support_features: Tensor,
    support_masks: Tensor,
    scale: float = 20.0,
    fusion: str = "prototypes",
) -> Tensor:
    """MAP prototypes + cosine classifier.

    ``query_features (N,C,h,w)``, ``support_features (N,K,C,h,w)``, ``support_masks (N,K,H,W)``
    -> logits ``(N,2,h,w)`` at feature resolution. ``fusion="prototypes"`` averages the K shots'
    prototypes (PANet); ``"scores"`` averages the K per-shot logit maps.
    """
    _check_episode(query_features, support_features, support_masks)
    check_fusion(fusion)
    n, k = support_masks.shape[:2]
    if fusion == "scores" and k > 1:
        q = query_features.repeat_interleave(k, dim=0)
        out = panet_segment(q, support_features.flatten(0, 1)[:, None], support_masks.flatten(0, 1)[:, None], scale)
        return out.view(n, k, *out.shape[1:]).mean(1)
    feats = support_features.flatten(0, 1)
    masks = support_masks.flatten(0, 1).float()
    fg = masked_average_pooling(feats, masks).view(n, k, -1).mean(1)
    bg = masked_average_pooling(feats, 1.0 - masks).view(n, k, -1).mean(1)
    return prototype_segmentation(query_features, fg, bg, scale)


def anomaly_segment(
    query_features: Tensor,
    support_features: Tensor,
    support_masks: Tensor,
    threshold: Tensor | float,
    scale: float = 20.0,
    fusion: str = "prototypes",
) -> Tensor:
    """ADNet classifier (Hansen et al., MedIA'22): one foreground prototype and a threshold.

    ``query_features (N,C,h,w)``, ``support_features (N,K,C,h,w)``, ``support_masks (N,K,H,W)``,
    ``threshold`` a scalar or ``(N,)`` -> logits ``(N,2,h,w)``.

    The foreground probability is ADNet's ``1 - sigmoid(0.5 * (S - t))`` with the anomaly score
    ``S = -scale * cos(f, p_fg)``, returned as the logits ``[0, 0.5 * (scale * cos + t)]`` (their
    softmax is exactly that probability). There is no background prototype: a query pixel is
    foreground when its similarity to the support foreground exceeds ``-t / scale``.
    ``fusion="prototypes"`` averages the K shots' prototypes (ADNet); ``"scores"`` averages the K
    per-shot logit maps. An empty support mask gives a zero prototype, cosine 0 and so the
    foreground logit ``0.5 * t`` everywhere.
    """
    _check_episode(query_features, support_features, support_masks)
    check_fusion(fusion)
    n, k = support_masks.shape[:2]
    t = torch.as_tensor(threshold, dtype=query_features.dtype, device=query_features.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"threshold must be a scalar or (N,) = ({n},), got shape {tuple(t.shape)}")
    if fusion == "scores" and k > 1:
        q = query_features.repeat_interleave(k, dim=0)
        out = anomaly_segment(
            q, support_features.flatten(0, 1)[:, None], support_masks.flatten(0, 1)[:, None],
            t.repeat_interleave(k), scale,
        )
        return out.view(n, k, *out.shape[1:]).mean(1)
    feats = support_features.flatten(0, 1)
    fg = masked_average_pooling(feats, support_masks.flatten(0, 1).float()).view(n, k, -1).mean(1)
    sim = cosine_similarity_map(query_features, fg[:, None], scale)[:, 0]  # (N, h, w)
    fg_logit = 0.5 * (sim + t[:, None, None])
    return torch.stack([torch.zeros_like(fg_logit), fg_logit], dim=1)


def alignment_loss(
    query_features: Tensor,
    query_logits: Tensor,
    support_features: Tensor,
    support_masks: Tensor,
    *,
    segment: SegmentFn | None = None,
    scale: float = 20.0,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """PANet prototype alignment loss (scalar).

    The query's predicted mask ``argmax(query_logits)`` (no gradient through the mask; the
    query *features* keep theirs) defines prototypes from the query, which then segment each
    support image; the loss is the cross-entropy against the support masks, averaged over all
    pixels of all K shots (= PANet's sum over shots of ``CE / K``).

    Args:
        query_features: ``(N, C, h, w)``.
        query_logits: ``(N, 2, h', w')`` at any resolution (the mask is resized to ``(h, w)``).
        support_features: ``(N, K, C, h, w)``.
        support_masks: ``(N, K, H, W)`` in ``{0, 1}``; the loss is taken at this resolution
            (support logits are upsampled bilinearly).
        segment: the classifier (:data:`SegmentFn`); default :func:`panet_segment` with ``scale``.
        class_weights: optional CE weights ``(w_bg, w_fg)``.
    """
    _check_episode(query_features, support_features, support_masks)
    _check_ndim("query_logits", query_logits, 4, "(N, 2, h, w)")
    _check_batch("query_logits", query_logits, "query_features", query_features)
    if query_logits.shape[1] != 2:
        raise ValueError(f"query_logits must have 2 channels (bg, fg), got {query_logits.shape[1]}")
    if segment is None:

        def segment(q: Tensor, s: Tensor, m: Tensor) -> Tensor:
            return panet_segment(q, s, m, scale)

    _n, k = support_masks.shape[:2]
    pred_fg = (query_logits.detach().argmax(dim=1) == 1).to(query_features.dtype)  # (N, h', w')
    pred_fg = resize_masks(pred_fg, query_features.shape[-2:])
    # query i is the reference of the K shots of episode i (row order of support_features.flatten(0, 1))
    ref_feats = query_features.repeat_interleave(k, dim=0)[:, None]  # (N*K, 1, C, h, w)
    ref_masks = pred_fg.repeat_interleave(k, dim=0)[:, None]  # (N*K, 1, h, w)
    logits = segment(support_features.flatten(0, 1), ref_feats, ref_masks)  # (N*K, 2, h, w)
    target = support_masks.flatten(0, 1)
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (2,):
            raise ValueError(f"class_weights must have 2 entries (bg, fg), got shape {tuple(weight.shape)}")
    return F.cross_entropy(logits, (target > 0.5).long(), weight=weight)


def adaptive_local_prototypes(
    features: Tensor, mask: Tensor, window: int, threshold: float = 0.95, *, add_global: bool = True
) -> tuple[Tensor, Tensor]:
    """ALPNet adaptive local prototypes.

    ``features (N,C,h,w)`` and ``mask (N,h,w)`` (already at feature resolution) are
    average-pooled with ``kernel = stride = window`` (a trailing remainder of rows/cols is
    dropped, as in SSL-ALPNet; ``window > h or w`` gives no cells). A cell is a prototype when
    its pooled mask mean is ``> threshold``. The global MAP prototype of the mask fills the
    last slot: it is always valid when ``add_global`` (foreground, ``gridconv+``), otherwise
    only when no cell passes (background ``gridconv`` with a fallback instead of SSL-ALPNet's crash).

    Returns:
        prototypes ``(N, P, C)`` with ``P = (h // window) * (w // window) + 1`` and a boolean
        ``valid (N, P)`` marking the real prototypes (at least one per row).
    """
    _check_ndim("features", features, 4, "(N, C, h, w)")
    _check_ndim("mask", mask, 3, "(N, h, w)")
    _check_batch("features", features, "mask", mask)
    if mask.shape[-2:] != features.shape[-2:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} must be at feature resolution {tuple(features.shape[-2:])}"
        )
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n, c, h, w = features.shape
    m = mask.to(features.dtype)
    glob = masked_average_pooling(features, m)[:, None]  # (N, 1, C)
    if h >= window and w >= window:
        cells = F.avg_pool2d(features, window).flatten(2).transpose(1, 2)  # (N, P-1, C)
        cell_mask = F.avg_pool2d(m[:, None], window).flatten(1)  # (N, P-1)
        local_valid = cell_mask > threshold
    else:
        cells = features.new_zeros(n, 0, c)
        local_valid = torch.zeros(n, 0, dtype=torch.bool, device=features.device)
    if add_global:
        glob_valid = torch.ones(n, 1, dtype=torch.bool, device=features.device)
    else:
        glob_valid = ~local_valid.any(dim=1, keepdim=True)
    return torch.cat([cells, glob], dim=1), torch.cat([local_valid, glob_valid], dim=1)


def local_prototype_decision(mask: Tensor, window: int, threshold: float = 0.95) -> Tensor:
    """SSL-ALPNet's choice between local + global (``gridconv+``) and global-only (``mask``) foreground
    prototypes: whether some ``window x window`` average-pooled cell of the mask reaches ``threshold``.

    SSL-ALPNet (``models/grid_proto_fewshot.py``) makes this test with ``avg_pool2d(mask, 4).max() >=
    FG_THRESH``, always with a 4x4 window (also at test time, when the local prototypes themselves are pooled
    2x2) and with ``>=`` where the cells use ``>``. A window larger than the mask gives no cell (``False``).

    Args:
        mask: ``(N, h, w)`` masks at feature resolution, values in ``[0, 1]``.
        window: pooling window (kernel = stride; a trailing remainder of rows/cols is dropped).
        threshold: pooled mask mean a cell must reach.

    Returns:
        ``(N,)`` bool: ``True`` where local prototypes are used.

    Shape:
        ``(N, h, w) -> (N,)``.
    """
    _check_ndim("mask", mask, 3, "(N, h, w)")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n, h, w = mask.shape
    if h < window or w < window:
        return torch.zeros(n, dtype=torch.bool, device=mask.device)
    pooled = F.avg_pool2d(mask[:, None].float(), window).flatten(1)  # (N, cells)
    return (pooled >= threshold).any(dim=1)


def _global_only_where(use_local: Tensor, protos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the foreground prototypes of the episodes where ``use_local`` is ``False`` by SSL-ALPNet's
    ``mask`` mode: one prototype, the mean over the K shots of their global (MAP) prototypes.

    ``use_local (N,)`` bool, ``protos (N, K, P, C)`` with the global prototype in slot ``P - 1``,
    ``valid (N, K, P)`` -> ``(protos (N, K, P, C), valid (N, K, P))``; the mean sits in shot 0's global slot
    and is the only valid prototype of such an episode.
    """
    p = protos.shape[2]
    alt = protos.clone()
    alt[:, 0, p - 1] = protos[:, :, p - 1].mean(dim=1)
    alt_valid = torch.zeros_like(valid)
    alt_valid[:, 0, p - 1] = True
    keep = use_local.to(protos.device)
    return (
        torch.where(keep[:, None, None, None], protos, alt),
        torch.where(keep[:, None, None], valid, alt_valid),
    )


def alp_scores(
    query_features: Tensor, prototypes: Tensor, valid: Tensor | None = None, scale: float = 20.0
) -> Tensor:
    """ALPNet score ``sum_p softmax_p(s) * s`` with ``s = scale * cos``: -> ``(N, h, w)``.

    ``query_features (N,C,h,w)``, ``prototypes (N,P,C)``, ``valid (N,P)`` bool (default: all);
    invalid prototypes are excluded from both the softmax and the sum.
    """
    sims = cosine_similarity_map(query_features, prototypes, scale)  # (N, P, h, w)
    if valid is None:
        return (sims.softmax(dim=1) * sims).sum(dim=1)
    if valid.shape != prototypes.shape[:2]:
        raise ValueError(f"valid {tuple(valid.shape)} must have shape {tuple(prototypes.shape[:2])}")
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every sample needs at least one valid prototype")
    v = valid[:, :, None, None]
    weights = sims.masked_fill(~v, float("-inf")).softmax(dim=1)
    return (weights * sims.masked_fill(~v, 0.0)).sum(dim=1)


def alp_segment(
    query_features: Tensor,
    support_features: Tensor,
    support_masks: Tensor,
    *,
    window: int,
    threshold: float = 0.95,
    scale: float = 20.0,
    fusion: str = "prototypes",
    decision_window: int | None = None,
) -> Tensor:
    """ALPNet classifier: -> logits ``(N, 2, h, w)`` = ``[bg_score, fg_score]``.

    ``query_features (N,C,h,w)``, ``support_features (N,K,C,h,w)``, ``support_masks (N,K,H,W)``
    (resized to feature resolution). ``fusion`` of the K shots: ``"prototypes"`` pools the
    prototypes of all shots into one set (SSL-ALPNet); ``"scores"`` scores the query against each
    shot alone and averages the K score maps (each shot keeps its own fg/bg balance).

    ``decision_window``: ``None`` (default) uses, for the foreground, the local cells that pass at
    ``window`` plus the global prototype of every shot. An integer makes SSL-ALPNet's choice
    (:func:`local_prototype_decision`, 4 in the reference, whatever ``window`` is): an episode whose
    foreground masks (over its K shots, as the reference's ``max`` over all shots; each shot alone with
    ``fusion="scores"``) have a ``decision_window``-pooled cell ``>= threshold`` uses local cells pooled at
    ``window`` plus the global prototypes; any other episode uses one prototype only, the mean of its
    shots' global prototypes (the reference's ``mask`` mode). The background is not affected.
    """
    _check_episode(query_features, support_features, support_masks)
    check_fusion(fusion)
    if decision_window is not None and decision_window < 1:
        raise ValueError(f"decision_window must be >= 1 or None, got {decision_window}")
    n, k, c, h, w = support_features.shape
    if fusion == "scores" and k > 1:
        q = query_features.repeat_interleave(k, dim=0)
        s = support_features.flatten(0, 1)[:, None]
        m = support_masks.flatten(0, 1)[:, None]
        out = alp_segment(q, s, m, window=window, threshold=threshold, scale=scale, decision_window=decision_window)
        return out.view(n, k, *out.shape[1:]).mean(1)
    feats = support_features.flatten(0, 1)
    fg = resize_masks(support_masks.flatten(0, 1).float(), (h, w))
    scores = []
    for mask, add_global in ((1.0 - fg, False), (fg, True)):
        protos, valid = adaptive_local_prototypes(feats, mask, window, threshold, add_global=add_global)
        if add_global and decision_window is not None:
            use_local = local_prototype_decision(mask, decision_window, threshold).view(n, k).any(dim=1)
            protos, valid = _global_only_where(
                use_local, protos.view(n, k, *protos.shape[1:]), valid.view(n, k, -1)
            )
        protos = protos.reshape(n, -1, c)
        scores.append(alp_scores(query_features, protos, valid.reshape(n, -1), scale))
    return torch.stack(scores, dim=1)


# ----------------------------------------------------------------------------------------------
# DPCN operations (see fewshot.heads.dpcn for which paper details are followed)
# ----------------------------------------------------------------------------------------------


def support_activation(
    query_features: Tensor,
    support_features: Tensor,
    support_masks: Tensor,
    windows: Sequence[tuple[int, int]] = ((5, 5), (1, 5), (5, 1)),
) -> Tensor:
    """DPCN support activation module (SAM), parameter-free: -> activation maps ``(N, W, h, w)`` in ``[0, 1]``.

    For each window ``(kh, kw)``: region descriptors are the stride-1 ``kh x kw`` average of
    the query features and of the foreground-masked support features; each query region is
    matched to every support region containing foreground (cosine), the max is kept
    (PFENet-prior style), and the map is min-max normalised per image. Maps are averaged over
    the K shots. ``query_features (N,C,h,w)``, ``support_features (N,K,C,h,w)``,
    ``support_masks (N,K,H,W)`` (resized to ``(h, w)``). A shot with an empty mask gives a zero map.
    """
    _check_episode(query_features, support_features, support_masks)
    n, k, c, h, w = support_features.shape
    if query_features.shape[1:] != (c, h, w):
        raise ValueError(
            f"query_features {tuple(query_features.shape)} and support_features "
            f"{tuple(support_features.shape)} must share (C, h, w)"
        )
    m = resize_masks(support_masks.flatten(0, 1).float(), (h, w))[:, None]  # (NK, 1, h, w)
    s = support_features.flatten(0, 1) * m
    maps = []
    for kh, kw in windows:
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"window sizes must be odd, got {(kh, kw)}")

        def pool(x: Tensor, kh: int = kh, kw: int = kw) -> Tensor:
            return F.avg_pool2d(x, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=False)

        q = _normalize(pool(query_features).flatten(2), 1)  # (N, C, hw)
        sr = _normalize(pool(s).flatten(2), 1).view(n, k, c, h * w)
        region_has_fg = (pool(m).flatten(1) > 1e-6).view(n, k, h * w)
        sim = torch.einsum("nkcs,ncq->nksq", sr, q)  # (N, K, hw_s, hw_q)
        sim = sim.masked_fill(~region_has_fg[..., None], float("-inf")).amax(dim=2)  # (N, K, hw_q)
        sim = torch.where(region_has_fg.any(dim=2, keepdim=True), sim, torch.zeros_like(sim))
        lo = sim.amin(dim=2, keepdim=True)
        hi = sim.amax(dim=2, keepdim=True)
        maps.append(((sim - lo) / (hi - lo + 1e-7)).mean(dim=1).view(n, h, w))
    return torch.stack(maps, dim=1)


def _mask_boxes(masks: Tensor) -> Tensor:
    """Foreground bounding boxes ``(M, 4)`` (x1, y1, x2, y2; pixel edges) of ``masks (M, h, w)``; whole map if empty."""
    _m, h, w = masks.shape
    fg = masks > 1e-6
    rows, cols = fg.any(dim=2), fg.any(dim=1)
    ar_h = torch.arange(h, device=masks.device, dtype=masks.dtype)
    ar_w = torch.arange(w, device=masks.device, dtype=masks.dtype)
    big = float(max(h, w))
    y1 = torch.where(rows, ar_h, big).amin(1)
    y2 = torch.where(rows, ar_h, -1.0).amax(1) + 1
    x1 = torch.where(cols, ar_w, big).amin(1)
    x2 = torch.where(cols, ar_w, -1.0).amax(1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=masks.device, dtype=masks.dtype)
    return torch.where(rows.any(1, keepdim=True), boxes, full)


def dynamic_kernels(
    support_features: Tensor,
    support_masks: Tensor,
    sizes: Sequence[tuple[int, int]] = ((3, 3), (1, 5), (5, 1)),
    eps: float = 1e-6,
) -> list[Tensor]:
    """DPCN dynamic kernels: one depthwise kernel ``(N, C, kh, kw)`` per size, averaged over K shots.

    The foreground bounding box of each support mask (at feature resolution) is split into a
    ``kh x kw`` grid (``torchvision.ops.roi_align``, aligned) and every bin gets the masked mean
    ``sum(f * m) / sum(m)`` of the support feature (0 for a bin without foreground).
    ``support_features (N,K,C,h,w)``, ``support_masks (N,K,H,W)``.
    """
    from torchvision.ops import roi_align

    _check_ndim("support_features", support_features, 5, "(N, K, C, h, w)")
    _check_ndim("support_masks", support_masks, 4, "(N, K, H, W)")
    _check_batch("support_features", support_features, "support_masks", support_masks, dims=2)
    n, k, c, h, w = support_features.shape
    feats = support_features.flatten(0, 1)
    m = resize_masks(support_masks.flatten(0, 1).float(), (h, w)).to(feats.dtype)
    boxes = _mask_boxes(m)
    rois = torch.cat([torch.arange(n * k, device=feats.device, dtype=feats.dtype)[:, None], boxes], dim=1)
    kernels = []
    for kh, kw in sizes:
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel sizes must be odd, got {(kh, kw)}")
        num = roi_align(feats * m[:, None], rois, (kh, kw), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        den = roi_align(m[:, None], rois, (kh, kw), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        ker = torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(num))
        kernels.append(ker.view(n, k, c, kh, kw).mean(dim=1))
    return kernels


def dynamic_depthwise_conv(features: Tensor, kernels: Tensor) -> Tensor:
    """Per-sample depthwise convolution with 'same' padding, normalised by the number of taps.

    ``features (N,C,h,w)``, ``kernels (N,C,kh,kw)`` (odd sizes) -> ``(N,C,h,w)``; batched as one
    grouped convolution with ``groups = N * C``.
    """
    _check_ndim("features", features, 4, "(N, C, h, w)")
    _check_ndim("kernels", kernels, 4, "(N, C, kh, kw)")
    if features.shape[:2] != kernels.shape[:2]:
        raise ValueError(
            f"features {tuple(features.shape)} and kernels {tuple(kernels.shape)} disagree on (N, C)"
        )
    n, c, h, w = features.shape
    kh, kw = kernels.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {(kh, kw)}")
    out = F.conv2d(
        features.reshape(1, n * c, h, w),
        kernels.reshape(n * c, 1, kh, kw) / (kh * kw),
        padding=(kh // 2, kw // 2),
        groups=n * c,
    )
    return out.view(n, c, h, w)


#: Target value that :func:`weighted_ce` ignores (e.g. padding or unlabelled pixels).
IGNORE_INDEX = 255


def weighted_ce(logits: Tensor, target: Tensor, weights: tuple[float, float]) -> Tensor:
    """Cross-entropy of ``logits (N, 2, H, W)`` against ``target (N, H, W)`` with (bg, fg) class ``weights``
    (pixels equal to :data:`IGNORE_INDEX` ignored): the training loss, and support fine-tuning's."""
    w = torch.tensor(weights, dtype=torch.float32, device=logits.device)
    return F.cross_entropy(logits.float(), target.long(), weight=w, ignore_index=IGNORE_INDEX)
