"""The head contract shared by all few-shot heads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor, nn

from fewshot.backbones.base import FeatureInfo

__all__ = ["FewShotHead", "HeadOutput", "apply_2d", "broadcast_support"]


class HeadOutput(NamedTuple):
    """``logits (N, 2, h, w)`` (bg, fg) at the head's feature resolution; ``align_loss`` scalar or ``None``;
    ``aux_loss``: any other training loss of the head, already weighted (ADNet's threshold loss), or ``None``."""

    logits: Tensor
    align_loss: Tensor | None
    aux_loss: Tensor | None = None


def broadcast_support(t: Tensor, n: int) -> Tensor:
    """Expand a support tensor with batch 1 to batch ``n`` (a view); batch ``n`` passes through."""
    if t.shape[0] == n:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"support batch must be 1 or {n} (the query batch), got {t.shape[0]}")
    return t.expand(n, *t.shape[1:])


class FewShotHead(nn.Module):
    """Base class of the 1-way few-shot heads.

    ``forward(support_features, support_masks, query_features) -> HeadOutput`` with

    * ``support_features``: backbone feature list, entry ``i`` of shape ``(B, K, C_i, h_i, w_i)``,
      ``B`` = 1 (broadcast over the queries) or ``N``;
    * ``support_masks``: ``(B, K, H, W)`` float in ``{0, 1}`` at image resolution;
    * ``query_features``: backbone feature list, entry ``i`` of shape ``(N, C_i, h_i, w_i)``.

    Attributes:
        does_alignment: whether the head returns an alignment loss in training mode.
    """

    does_alignment: bool = False

    def __init__(self, feature_info: Sequence[FeatureInfo]) -> None:
        super().__init__()
        if len(feature_info) == 0:
            raise ValueError("feature_info is empty: the backbone declares no feature maps")
        self.feature_info = tuple(feature_info)

    def _resolve_index(self, index: int) -> int:
        n = len(self.feature_info)
        if not -n <= index < n:
            raise ValueError(f"feature index {index} out of range for a backbone with {n} feature maps")
        return index % n

    def _check_inputs(self, support_features: Sequence[Tensor], query_features: Sequence[Tensor]) -> None:
        n = len(self.feature_info)
        if len(support_features) != n or len(query_features) != n:
            raise ValueError(
                f"expected {n} feature maps (feature_info), got {len(support_features)} support and "
                f"{len(query_features)} query maps"
            )

    def forward(  # pragma: no cover - abstract
        self, support_features: Sequence[Tensor], support_masks: Tensor, query_features: Sequence[Tensor]
    ) -> HeadOutput:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"features={[f.name for f in self.feature_info]}"


def apply_2d(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D module to ``(..., C, h, w)`` by flattening the leading dims."""
    lead = x.shape[:-3]
    y = module(x.reshape(-1, *x.shape[-3:]))
    return y.reshape(*lead, *y.shape[-3:])
