"""SG-One / PANet head: masked-average-pooled prototypes + scaled cosine classifier.

* SG-One (Zhang et al. 2020): one foreground and one background prototype by masked average
  pooling, cosine similarity to the query features. Here: ``align=False``.
* PANet (Wang et al., ICCV'19): the same classifier (``scale = 20``) plus the prototype
  alignment loss (query prediction -> query prototypes -> segment the support). ``align=True``.

The head works on one backbone feature map (default the last one), optionally reduced by a
bias-free 1x1 convolution to ``feature_dim`` channels (SSL-ALPNet reduces 2048 -> 256; 0 = no
reduction). Logits are returned at that feature map's resolution.

Empty support mask: the foreground prototype is the zero vector, so the foreground logit is 0
everywhere (see :mod:`fewshot.heads.functional`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.base import FewShotHead, HeadOutput, apply_2d, broadcast_support
from fewshot.heads.functional import alignment_loss, check_fusion, panet_segment
from fewshot.heads.registry import HeadConfig, register_head

__all__ = ["PANetConfig", "PANetHead", "check_prototype_config", "make_reduction"]


def check_prototype_config(feature_dim: int, scale: float) -> None:
    """Validation shared by the prototype heads' configs (SG-One, PANet, ALPNet)."""
    if feature_dim < 0:
        raise ValueError(f"feature_dim must be >= 0 (0 = no reduction), got {feature_dim}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")


@dataclass(frozen=True)
class PANetConfig(HeadConfig):
    """PANet head: ``feature_dim`` channels after the 1x1 reduction (0 = none), cosine ``scale``,
    alignment loss in training mode when ``align``; ``shot_fusion`` combines K support shots
    (``prototypes``: average their prototypes, as PANet; ``scores``: average per-shot logits)."""

    name: str = "panet"
    feature_dim: int = 256
    scale: float = 20.0
    align: bool = True
    shot_fusion: str = "prototypes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prototype_config(self.feature_dim, self.scale)
        check_fusion(self.shot_fusion)


def make_reduction(in_channels: int, feature_dim: int) -> nn.Module:
    """Bias-free 1x1 conv ``in_channels -> feature_dim`` (identity when ``feature_dim == 0``)."""
    if feature_dim < 0:
        raise ValueError(f"feature_dim must be >= 0 (0 = no reduction), got {feature_dim}")
    if feature_dim == 0:
        return nn.Identity()
    return nn.Conv2d(in_channels, feature_dim, kernel_size=1, bias=False)


class PANetHead(FewShotHead):
    """MAP prototypes (averaged over K shots) + ``scale * cos`` logits, optional alignment loss.

    Args:
        feature_info: the backbone's feature description.
        feature_dim: channels after the 1x1 reduction (0 = use the backbone feature as is).
        scale: cosine temperature (20 in PANet/SSL-ALPNet).
        align: compute the PANet alignment loss in training mode.
        feature_index: which backbone feature map to use (default the last, i.e. deepest).
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
        feature_index: int = -1,
        align_class_weights: tuple[float, float] | None = None,
        shot_fusion: str = "prototypes",
    ) -> None:
        super().__init__(feature_info)
        self.feature_index = self._resolve_index(feature_index)
        self.reduce = make_reduction(self.feature_info[self.feature_index].channels, feature_dim)
        self.scale = float(scale)
        self.align = bool(align)
        self.does_alignment = self.align
        self.align_class_weights = align_class_weights
        self.shot_fusion = check_fusion(shot_fusion)

    def segment(self, query_features: Tensor, support_features: Tensor, support_masks: Tensor) -> Tensor:
        """Classifier on already reduced features: ``(N,C,h,w)``, ``(N,K,C,h,w)``, ``(N,K,H,W)`` -> ``(N,2,h,w)``."""
        return panet_segment(query_features, support_features, support_masks, self.scale, self.shot_fusion)

    def forward(
        self, support_features: Sequence[Tensor], support_masks: Tensor, query_features: Sequence[Tensor]
    ) -> HeadOutput:
        self._check_inputs(support_features, query_features)
        q = apply_2d(self.reduce, query_features[self.feature_index])
        n = q.shape[0]
        s = broadcast_support(apply_2d(self.reduce, support_features[self.feature_index]), n)
        masks = broadcast_support(support_masks, n)
        logits = self.segment(q, s, masks)
        if not self.training:
            return HeadOutput(logits, None)
        loss = None
        if self.align:
            loss = alignment_loss(
                q, logits, s, masks, segment=self.segment, class_weights=self.align_class_weights
            )
        return HeadOutput(logits, loss, self.extra_loss(q))

    def extra_loss(self, query_features: Tensor) -> Tensor | None:
        """A subclass's own weighted training loss from the reduced query features (``HeadOutput.aux_loss``);
        ``None`` here."""
        return None


@register_head("panet", config=PANetConfig)
def build_panet(config: PANetConfig, feature_info: Sequence[FeatureInfo]) -> PANetHead:
    return PANetHead(
        feature_info,
        feature_dim=config.feature_dim,
        scale=config.scale,
        align=config.align,
        shot_fusion=config.shot_fusion,
    )
