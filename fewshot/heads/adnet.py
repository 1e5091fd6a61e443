"""ADNet head (Hansen et al., MedIA'22): one foreground prototype and a learned threshold.

Follows ``models/fewshot_anom.py`` of sha168/ADNet:

* one foreground prototype per episode, the masked average of the support features (averaged
  over K shots); no background prototype, because the background of an abdominal slice is too
  varied for one or a few prototypes;
* anomaly score ``S = -scale * cos(f, p_fg)`` (``scale`` 20); the foreground probability is
  ``1 - sigmoid(0.5 * (S - t))`` with ``t`` a learned scalar initialised at -10
  (:func:`fewshot.heads.functional.anomaly_segment`);
* the threshold loss ``t / scale`` is added to the training loss (``threshold_loss_weight`` is
  ADNet's ``t_loss_scaler``, 1). It pushes ``t`` down, i.e. towards a tighter foreground, against
  the cross-entropy that pushes it up where the foreground is missed;
* the PANet alignment loss with the same classifier and threshold (``align``).

The threshold loss needs the background down-weighted in the cross-entropy (ADNet: ``bg_wt`` 0.1, here
``optim.ce_weights: [0.1, 1.0]``). A pseudo-label covers a few percent of the slice, so with equal weights
the cross-entropy's pull on ``t`` (about half the foreground fraction) is weaker than the threshold loss's
constant ``1 / scale``: ``t`` then falls without bound and nothing is predicted. (Measured on CHAOS MRI with
``ce_weights: [1.0, 1.0]``: foreground Dice of the training episodes 0.06 after 400 steps.)

``query_threshold=True`` makes the threshold query-informed, in the spirit of Q-Net
(Shen et al. 2023): ``t = t0 + w . GAP(f)``, a linear function of the globally average-pooled
(reduced) features of the image being segmented. ``w`` starts at zero, so training starts from
ADNet's single threshold. (Q-Net computes its threshold from the encoder's deepest features; we
use the head's input feature map.) In the alignment loss the "query" is the support image, so its
own features give the threshold there.

The model's output probabilities are ADNet's: evaluate with ``model.fg_threshold: 0.5`` (the
default, the same rule as the argmax) to use the learned threshold as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.functional import anomaly_segment, check_fusion
from fewshot.heads.panet import PANetHead, check_prototype_config
from fewshot.heads.registry import HeadConfig, register_head

__all__ = ["ADNetConfig", "ADNetHead"]


def _check_threshold_config(init_threshold: float, threshold_loss_weight: float) -> None:
    if not torch.isfinite(torch.tensor(init_threshold)):
        raise ValueError(f"init_threshold must be finite, got {init_threshold}")
    if threshold_loss_weight < 0:
        raise ValueError(f"threshold_loss_weight must be >= 0, got {threshold_loss_weight}")


@dataclass(frozen=True)
class ADNetConfig(HeadConfig):
    """ADNet head: PANet's reduction, scale and alignment; the learned threshold starts at
    ``init_threshold`` (ADNet: -10), its loss ``t / scale`` is weighted by
    ``threshold_loss_weight`` (ADNet: 1); ``query_threshold`` adds a query-informed offset
    (Q-Net style); ``shot_fusion`` as for PANet."""

    name: str = "adnet"
    feature_dim: int = 256
    scale: float = 20.0
    align: bool = True
    init_threshold: float = -10.0
    threshold_loss_weight: float = 1.0
    query_threshold: bool = False
    shot_fusion: str = "prototypes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prototype_config(self.feature_dim, self.scale)
        check_fusion(self.shot_fusion)
        _check_threshold_config(self.init_threshold, self.threshold_loss_weight)


class ADNetHead(PANetHead):
    """Foreground-prototype + learned-threshold head (:func:`~fewshot.heads.functional.anomaly_segment`).

    Args:
        feature_info: the backbone's feature description.
        feature_dim: channels after the bias-free 1x1 reduction (0 = none).
        scale: cosine temperature (20).
        align: compute the alignment loss in training mode.
        init_threshold: the starting value of the threshold ``t``.
        threshold_loss_weight: weight of the threshold loss ``mean(t) / scale`` (0 = none).
        query_threshold: add ``w . GAP(query features)`` to ``t`` (``w`` starts at zero).
        feature_index: which backbone feature map to use (default the last).
        align_class_weights: optional CE weights ``(w_bg, w_fg)`` of the alignment loss.
        shot_fusion: how K support shots are combined (``prototypes`` or ``scores``).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        *,
        feature_dim: int = 256,
        scale: float = 20.0,
        align: bool = True,
        init_threshold: float = -10.0,
        threshold_loss_weight: float = 1.0,
        query_threshold: bool = False,
        feature_index: int = -1,
        align_class_weights: tuple[float, float] | None = None,
        shot_fusion: str = "prototypes",
    ) -> None:
        _check_threshold_config(init_threshold, threshold_loss_weight)
        super().__init__(
            feature_info,
            feature_dim=feature_dim,
            scale=scale,
            align=align,
            feature_index=feature_index,
            align_class_weights=align_class_weights,
            shot_fusion=shot_fusion,
        )
        self.t = nn.Parameter(torch.tensor(float(init_threshold)))
        self.threshold_loss_weight = float(threshold_loss_weight)
        self.query_threshold: nn.Linear | None = None
        if query_threshold:
            channels = feature_dim or self.feature_info[self.feature_index].channels
            self.query_threshold = nn.Linear(channels, 1, bias=False)
            nn.init.zeros_(self.query_threshold.weight)

    def threshold(self, features: Tensor) -> Tensor:
        """The threshold ``t`` for each image of ``features (N, C, h, w)`` -> ``(N,)``."""
        t = self.t.expand(features.shape[0])
        if self.query_threshold is not None:
            t = t + self.query_threshold(features.mean(dim=(-2, -1)))[:, 0]
        return t

    def segment(self, query_features: Tensor, support_features: Tensor, support_masks: Tensor) -> Tensor:
        """ADNet classifier on reduced features: ``(N,C,h,w)``, ``(N,K,C,h,w)``, ``(N,K,H,W)`` -> ``(N,2,h,w)``."""
        return anomaly_segment(
            query_features, support_features, support_masks, self.threshold(query_features),
            self.scale, self.shot_fusion,
        )

    def extra_loss(self, query_features: Tensor) -> Tensor | None:
        """ADNet's threshold loss ``threshold_loss_weight * mean(t) / scale`` (``None`` at weight 0)."""
        if self.threshold_loss_weight == 0:
            return None
        return self.threshold_loss_weight * self.threshold(query_features).mean() / self.scale

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, scale={self.scale}, align={self.align}, t={float(self.t.detach()):.3f}, "
            f"threshold_loss_weight={self.threshold_loss_weight}, "
            f"query_threshold={self.query_threshold is not None}"
        )


@register_head("adnet", config=ADNetConfig)
def build_adnet(config: ADNetConfig, feature_info: Sequence[FeatureInfo]) -> ADNetHead:
    return ADNetHead(
        feature_info,
        feature_dim=config.feature_dim,
        scale=config.scale,
        align=config.align,
        init_threshold=config.init_threshold,
        threshold_loss_weight=config.threshold_loss_weight,
        query_threshold=config.query_threshold,
        shot_fusion=config.shot_fusion,
    )
