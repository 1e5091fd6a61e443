"""DPCN head: Dynamic Prototype Convolution Network (Liu et al., CVPR'22, arXiv 2204.10638).

There is **no official code**. This implementation follows the pipeline of the paper's Fig. 2
(SAM -> FFM -> DCM -> decoder); the points below under "Choices" are ours, not the paper's.

Followed from the paper:

* three modules: SAM on **high-level** features -> initial pseudo-mask; FFM on **mid-level**
  features + pseudo-mask + expanded support prototype -> refined mask that filters background
  out of the query feature; DCM -> three groups of **dynamic depthwise convolutions** run in
  parallel over the filtered query feature, kernels generated from the **support foreground**
  mid-level feature; the outputs are concatenated and decoded;
* SAM windows: symmetric 5x5 and asymmetric 1x5 and 5x1; DCM kernels 3x3, 1x5 and 5x1;
* mid-level feature = 1x1 reduction (+ ReLU) of the concatenated two stages before the last
  (ResNet layer2 + layer3, PFENet style), ``feature_dim = 256``; high-level = last stage;
* k-shot: prototypes, kernels and activation maps averaged over the K shots.

Choices (not pinned down by the sources we could read):

* SAM is parameter-free: region descriptors are stride-1 window averages; each query region
  takes the max cosine over the support regions containing foreground; maps are min-max
  normalised per image (PFENet prior); the initial pseudo-mask ``Y0`` is the mean of the
  three window maps, which are also passed to the decoder.
* FFM: ``conv3x3-ReLU-conv1x1`` on ``concat(F_q * Y0, expand(p))`` (the notes say "add" the
  prototype; a convolution over the concatenation can represent the sum) -> refined mask
  logits ``Y1``; the filtered query feature is ``F_q * sigmoid(Y1)``.
* DCM kernels: the support foreground bounding box (feature resolution) is split into a
  ``kh x kw`` grid and each bin takes the masked mean of the support feature (``roi_align``);
  the depthwise responses are divided by the number of taps.
* decoder: ``concat(filtered query, 3 DCM outputs, expanded prototype, 3 SAM maps, Y0,
  sigmoid(Y1))`` -> 1x1 conv -> residual block of two 3x3 convs -> 3x3 conv -> 1x1 to 2 classes
  (a small PFENet/ASPP-free decoder).
* No auxiliary losses (pseudo-mask supervision, support/query swap): ``align_loss`` is ``None``.

Logits are returned at the resolution of the first mid-level feature. Empty support mask: the
prototype and kernels are zero and the SAM maps are zero, so the prediction depends on the
query features alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.base import FewShotHead, HeadOutput, apply_2d, broadcast_support
from fewshot.heads.functional import (
    dynamic_depthwise_conv,
    dynamic_kernels,
    masked_average_pooling,
    support_activation,
)
from fewshot.heads.registry import HeadConfig, register_head

__all__ = ["DPCNConfig", "DPCNHead", "default_dpcn_levels"]


@dataclass(frozen=True)
class DPCNConfig(HeadConfig):
    """DPCN head: ``feature_dim`` channels of the reduced mid-level feature and decoder (> 0)."""

    name: str = "dpcn"
    feature_dim: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_dim <= 0:
            raise ValueError(f"DPCN needs feature_dim > 0, got {self.feature_dim}")


def default_dpcn_levels(n_features: int) -> tuple[tuple[int, ...], int]:
    """``(mid_indices, high_index)``: the two maps before the last (or what exists) and the last."""
    if n_features < 1:
        raise ValueError("the backbone declares no feature maps")
    high = n_features - 1
    if n_features >= 3:
        return (n_features - 3, n_features - 2), high
    if n_features == 2:
        return (0,), high
    return (0,), high


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2)


class DPCNHead(FewShotHead):
    """Dynamic prototype convolution head (see module docstring).

    Args:
        feature_info: the backbone's feature description.
        feature_dim: channels of the reduced mid-level feature and of the decoder (> 0).
        mid_indices: backbone maps concatenated as the mid-level feature (resized to the first);
            default :func:`default_dpcn_levels`.
        high_index: backbone map used by SAM (default the last).
        sam_windows: SAM region windows ``(kh, kw)`` (odd).
        kernel_sizes: DCM kernel sizes ``(kh, kw)`` (odd).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        *,
        feature_dim: int = 256,
        mid_indices: Sequence[int] | None = None,
        high_index: int | None = None,
        sam_windows: Sequence[tuple[int, int]] = ((5, 5), (1, 5), (5, 1)),
        kernel_sizes: Sequence[tuple[int, int]] = ((3, 3), (1, 5), (5, 1)),
    ) -> None:
        super().__init__(feature_info)
        if feature_dim <= 0:
            raise ValueError(f"DPCN needs feature_dim > 0, got {feature_dim}")
        default_mid, default_high = default_dpcn_levels(len(self.feature_info))
        mid = default_mid if mid_indices is None else tuple(mid_indices)
        if len(mid) == 0:
            raise ValueError("mid_indices must name at least one feature map")
        self.mid_indices = tuple(self._resolve_index(i) for i in mid)
        self.high_index = self._resolve_index(default_high if high_index is None else high_index)
        self.sam_windows = tuple((int(a), int(b)) for a, b in sam_windows)
        self.kernel_sizes = tuple((int(a), int(b)) for a, b in kernel_sizes)
        for a, b in self.sam_windows + self.kernel_sizes:
            if a % 2 == 0 or b % 2 == 0 or a < 1 or b < 1:
                raise ValueError(f"SAM windows and DCM kernel sizes must be odd and positive, got {(a, b)}")
        d = int(feature_dim)
        mid_channels = sum(self.feature_info[i].channels for i in self.mid_indices)
        self.reduce_mid = nn.Sequential(nn.Conv2d(mid_channels, d, 1, bias=False), nn.ReLU(inplace=True))
        self.ffm = nn.Sequential(_conv(2 * d, d, 3), nn.ReLU(inplace=True), _conv(d, 1, 1))
        n_dec_in = d * (2 + len(self.kernel_sizes)) + len(self.sam_windows) + 2
        self.decoder_in = nn.Sequential(_conv(n_dec_in, d, 1), nn.ReLU(inplace=True))
        self.decoder_res = nn.Sequential(
            _conv(d, d, 3), nn.ReLU(inplace=True), _conv(d, d, 3), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Sequential(_conv(d, d, 3), nn.ReLU(inplace=True), _conv(d, 2, 1))

    def _mid(self, feats: Sequence[Tensor]) -> Tensor:
        """Concatenate the mid-level maps ``(..., C_i, h_i, w_i)`` at the first one's size and reduce."""
        first = feats[self.mid_indices[0]]
        size = first.shape[-2:]
        parts = []
        for i in self.mid_indices:
            f = feats[i]
            if f.shape[-2:] != size:
                lead = f.shape[:-3]
                f = F.interpolate(f.flatten(0, -4), size=size, mode="bilinear", align_corners=False)
                f = f.view(*lead, *f.shape[-3:])
            parts.append(f)
        return apply_2d(self.reduce_mid, torch.cat(parts, dim=-3))

    def forward(
        self, support_features: Sequence[Tensor], support_masks: Tensor, query_features: Sequence[Tensor]
    ) -> HeadOutput:
        self._check_inputs(support_features, query_features)
        q_mid = self._mid(query_features)  # (N, D, h, w)
        s_mid = self._mid(support_features)  # (B, K, D, h, w)
        n, _, h, w = q_mid.shape
        b, k = s_mid.shape[:2]
        # support-only quantities on the un-broadcast batch B, then broadcast
        proto = masked_average_pooling(s_mid.flatten(0, 1), support_masks.flatten(0, 1).float())
        proto = broadcast_support(proto.view(b, k, -1).mean(dim=1), n)  # (N, D)
        kernels = [
            broadcast_support(ker, n) for ker in dynamic_kernels(s_mid, support_masks, self.kernel_sizes)
        ]
        # SAM on high-level features
        q_high = query_features[self.high_index]
        s_high = broadcast_support(support_features[self.high_index], n)
        act = support_activation(q_high, s_high, broadcast_support(support_masks, n), self.sam_windows)
        if act.shape[-2:] != (h, w):
            act = F.interpolate(act, size=(h, w), mode="bilinear", align_corners=False)
        y0 = act.mean(dim=1, keepdim=True)
        # FFM
        proto_map = proto[:, :, None, None].expand(n, proto.shape[1], h, w)
        refined = torch.sigmoid(self.ffm(torch.cat([q_mid * y0, proto_map], dim=1)))
        filtered = q_mid * refined
        # DCM
        dcm = [dynamic_depthwise_conv(filtered, ker) for ker in kernels]
        x = self.decoder_in(torch.cat([filtered, *dcm, proto_map, act, y0, refined], dim=1))
        x = x + self.decoder_res(x)
        return HeadOutput(self.classifier(x), None)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, mid={self.mid_indices}, high={self.high_index}, "
            f"sam_windows={self.sam_windows}, kernel_sizes={self.kernel_sizes}"
        )


@register_head("dpcn", config=DPCNConfig)
def build_dpcn(config: DPCNConfig, feature_info: Sequence[FeatureInfo]) -> DPCNHead:
    return DPCNHead(feature_info, feature_dim=config.feature_dim)
