"""ALPNet head (Ouyang et al., ECCV'20, SSL-ALPNet): adaptive local prototype pooling.

Follows ``models/alpmodule.py`` / ``models/grid_proto_fewshot.py`` of
cheng-01037/Self-supervised-Fewshot-Medical-Image-Segmentation:

* support masks are resized to the feature resolution (we use anti-aliased bilinear, the
  original plain bilinear);
* features and masks are average-pooled with ``kernel = stride = window``: 4x4 in training
  (32 / ``proto_grid_size`` 8), 2x2 at test (``val_wsize``); switched by ``.train()/.eval()``;
* a cell is a local prototype when its pooled mask mean is ``> threshold`` (0.95);
* foreground = local prototypes + the global MAP prototype of every shot (``gridconv+``). SSL-ALPNet
  uses ``gridconv+`` only when some 4x4-pooled cell of the foreground mask reaches the threshold (a
  4x4 check also at test time, when the cells are 2x2) and otherwise the mean global prototype alone
  (``mask``); ``decision_window=4`` does the same, ``None`` (default) always uses local + global;
  background = local prototypes only (``gridconv``). Where no background cell passes we fall
  back to the global background prototype (SSL-ALPNet crashes and skips the batch);
* score ``= sum_p softmax_p(s_p) * s_p`` with ``s = 20 * cos``; logits ``[bg, fg]`` at the
  feature resolution;
* the alignment loss (``align=True``) re-segments the support with the same ALP classifier
  using the query's predicted mask, unweighted CE as in SSL-ALPNet.

Empty support mask: the foreground has no local prototype and a zero global prototype, so the
foreground score is 0 everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.functional import alp_segment, check_fusion
from fewshot.heads.panet import PANetHead, check_prototype_config
from fewshot.heads.registry import HeadConfig, register_head

__all__ = ["ALPNetConfig", "ALPNetHead"]


@dataclass(frozen=True)
class ALPNetConfig(HeadConfig):
    """ALPNet head: as PANet plus the pooling windows in training/eval mode and the cell threshold;
    ``shot_fusion``: ``prototypes`` pools the prototypes of all K shots into one set (SSL-ALPNet),
    ``scores`` averages the K per-shot score maps. Windows are in feature cells (a 256 px slice through
    a stride-8 backbone gives a 32x32 feature map: window 4 = SSL-ALPNet's ``proto_grid_size`` 8,
    window 2 = its ``val_wsize``). ``decision_window``: ``None`` = the foreground always uses the local
    cells that pass plus the global prototype; an integer (SSL-ALPNet: 4, in training and at test) = the
    foreground uses local + global only if some ``decision_window``-pooled cell of its mask reaches
    ``threshold``, else the mean global prototype alone
    (:func:`~fewshot.heads.functional.alp_segment`)."""

    name: str = "alpnet"
    feature_dim: int = 256
    scale: float = 20.0
    align: bool = True
    window_train: int = 4
    window_test: int = 2
    threshold: float = 0.95
    shot_fusion: str = "prototypes"
    decision_window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prototype_config(self.feature_dim, self.scale)
        check_fusion(self.shot_fusion)
        if self.window_train < 1 or self.window_test < 1:
            raise ValueError(
                f"ALP windows must be >= 1, got window_train={self.window_train}, window_test={self.window_test}"
            )
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        check_decision_window(self.decision_window)


def check_decision_window(value: int | None) -> int | None:
    """``value`` if it is ``None`` or an integer >= 1, else ``ValueError``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"decision_window must be an integer >= 1 or null, got {value!r}")
    return value


class ALPNetHead(PANetHead):
    """Adaptive local prototype head: :class:`PANetHead` with the ALP classifier.

    Args:
        feature_info: the backbone's feature description.
        feature_dim: channels after the bias-free 1x1 reduction (0 = none).
        scale: cosine temperature.
        align: compute the alignment loss in training mode.
        window_train: pooling window in training mode (4 in SSL-ALPNet).
        window_test: pooling window in eval mode (2 in SSL-ALPNet).
        threshold: pooled-mask mean a cell must exceed to become a prototype.
        decision_window: ``None``, or the window of SSL-ALPNet's local-vs-global-only foreground choice
            (4 in SSL-ALPNet; see :class:`ALPNetConfig`).
        feature_index: which backbone feature map to use (default the last).
        align_class_weights: optional CE weights ``(w_bg, w_fg)`` of the alignment loss.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        *,
        feature_dim: int = 256,
        scale: float = 20.0,
        align: bool = True,
        window_train: int = 4,
        window_test: int = 2,
        threshold: float = 0.95,
        feature_index: int = -1,
        align_class_weights: tuple[float, float] | None = None,
        shot_fusion: str = "prototypes",
        decision_window: int | None = None,
    ) -> None:
        if window_train < 1 or window_test < 1:
            raise ValueError(f"windows must be >= 1, got train={window_train}, test={window_test}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        super().__init__(
            feature_info,
            feature_dim=feature_dim,
            scale=scale,
            align=align,
            feature_index=feature_index,
            align_class_weights=align_class_weights,
            shot_fusion=shot_fusion,
        )
        self.window_train = int(window_train)
        self.window_test = int(window_test)
        self.threshold = float(threshold)
        self.decision_window = check_decision_window(decision_window)

    @property
    def window(self) -> int:
        """The pooling window of the current mode (``window_train`` if ``self.training``)."""
        return self.window_train if self.training else self.window_test

    def segment(self, query_features: Tensor, support_features: Tensor, support_masks: Tensor) -> Tensor:
        """ALP classifier on reduced features: ``(N,C,h,w)``, ``(N,K,C,h,w)``, ``(N,K,H,W)`` -> ``(N,2,h,w)``."""
        return alp_segment(
            query_features,
            support_features,
            support_masks,
            window=self.window,
            threshold=self.threshold,
            scale=self.scale,
            fusion=self.shot_fusion,
            decision_window=self.decision_window,
        )

    def extra_repr(self) -> str:
        out = (
            f"{super().extra_repr()}, window_train={self.window_train}, window_test={self.window_test}, "
            f"threshold={self.threshold}, scale={self.scale}, align={self.align}"
        )
        if self.decision_window is not None:
            out += f", decision_window={self.decision_window}"
        return out


@register_head("alpnet", config=ALPNetConfig)
def build_alpnet(config: ALPNetConfig, feature_info: Sequence[FeatureInfo]) -> ALPNetHead:
    return ALPNetHead(
        feature_info,
        feature_dim=config.feature_dim,
        scale=config.scale,
        align=config.align,
        window_train=config.window_train,
        window_test=config.window_test,
        threshold=config.threshold,
        shot_fusion=config.shot_fusion,
        decision_window=config.decision_window,
    )
