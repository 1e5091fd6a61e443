"""Few-shot segmentation model: a :class:`~fewshot.backbones.base.Backbone` + a prototype head.

``FewShotSegmenter(support_images, support_masks, query_images)`` runs support and query
images through the backbone in one pass (when their sizes agree), lets the head produce
background/foreground logits at feature resolution and upsamples them (bilinear) to the
query image size.

Heads (``ModelConfig.head``):

* ``"sgone"``  MAP prototypes + cosine classifier, never an alignment loss;
* ``"panet"``  the same + PANet alignment loss (when ``align=True``, the default);
* ``"alpnet"`` adaptive local prototypes (SSL-ALPNet) + alignment loss (when ``align=True``);
* ``"dpcn"``   dynamic prototype convolution network (learned decoder, no alignment loss).

Empty support masks raise :class:`EmptySupportError` unless ``allow_empty_support=True``; the
heads then behave as documented in their modules (zero foreground prototype).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.backbones.base import Backbone
from fewshot.heads import ALPNetHead, DPCNHead, FewShotHead, PANetHead

__all__ = [
    "EmptySupportError",
    "FewShotSegmenter",
    "ModelConfig",
    "SegmentationOutput",
    "create_head",
    "create_model",
    "list_heads",
]

_HEADS = ("alpnet", "dpcn", "panet", "sgone")


def list_heads() -> list[str]:
    """Names accepted by ``ModelConfig.head``."""
    return list(_HEADS)


class EmptySupportError(ValueError):
    """A support mask has no foreground pixel (raised unless ``allow_empty_support=True``)."""


@dataclass(frozen=True)
class ModelConfig:
    """Model hyper-parameters (YAML-able: str/int/float/bool/None fields only).

    Attributes:
        backbone, init, weights, truncate, in_channels, seed: passed to
            ``fewshot.backbones.create_backbone``; ``seed`` also seeds the head's initialisation.
        head: one of :func:`list_heads`.
        feature_dim: channels of the 1x1 reduction of the backbone feature used by the head
            (SSL-ALPNet: 2048 -> 256); 0 = no reduction (not allowed for ``dpcn``).
        scale: cosine temperature of the prototype heads.
        align: PANet/ALPNet alignment loss in training mode (ignored by ``sgone``/``dpcn``).
        alp_window_train, alp_window_test, alp_threshold: ALPNet pooling windows and cell threshold.
        allow_empty_support: accept empty support masks instead of raising ``EmptySupportError``.
    """

    backbone: str = "resnet50"
    init: str = "random"
    weights: str | None = None
    truncate: str | None = None
    in_channels: int = 3
    head: str = "alpnet"
    feature_dim: int = 256
    scale: float = 20.0
    align: bool = True
    alp_window_train: int = 4
    alp_window_test: int = 2
    alp_threshold: float = 0.95
    allow_empty_support: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in _HEADS:
            raise ValueError(f"unknown head {self.head!r}; choices: {', '.join(_HEADS)}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.feature_dim < 0 or (self.head == "dpcn" and self.feature_dim == 0):
            raise ValueError(f"feature_dim must be >= 0 (> 0 for dpcn), got {self.feature_dim}")
        if self.alp_window_train < 1 or self.alp_window_test < 1:
            raise ValueError(
                f"ALP windows must be >= 1, got train={self.alp_window_train}, test={self.alp_window_test}"
            )
        if not 0.0 <= self.alp_threshold < 1.0:
            raise ValueError(f"alp_threshold must be in [0, 1), got {self.alp_threshold}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SegmentationOutput:
    """``logits (N, 2, H, W)`` (bg, fg) at input resolution; ``align_loss`` scalar (training + aligning head) or ``None``."""

    logits: Tensor
    align_loss: Tensor | None


def create_head(config: ModelConfig, backbone: Backbone) -> FewShotHead:
    """Build the head named by ``config.head`` for ``backbone.feature_info``."""
    info = backbone.feature_info
    if config.head in ("panet", "sgone"):
        return PANetHead(
            info,
            feature_dim=config.feature_dim,
            scale=config.scale,
            align=config.align and config.head == "panet",
        )
    if config.head == "alpnet":
        return ALPNetHead(
            info,
            feature_dim=config.feature_dim,
            scale=config.scale,
            align=config.align,
            window_train=config.alp_window_train,
            window_test=config.alp_window_test,
            threshold=config.alp_threshold,
        )
    if config.head == "dpcn":
        return DPCNHead(info, feature_dim=config.feature_dim)
    raise ValueError(f"unknown head {config.head!r}; choices: {', '.join(_HEADS)}")  # pragma: no cover


class FewShotSegmenter(nn.Module):
    """1-way K-shot segmenter.

    ``forward(support_images (B,K,C,H,W), support_masks (B,K,H,W), query_images (N,C,H',W'))``
    with ``B`` = 1 (one support set shared by all N queries, used at evaluation) or ``N``;
    masks in ``{0, 1}`` (float, bool or int). Returns :class:`SegmentationOutput`.
    """

    def __init__(self, config: ModelConfig, backbone: Backbone, head: FewShotHead | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone must be a fewshot.backbones.base.Backbone, got {type(backbone).__name__}"
            )
        if len(backbone.feature_info) == 0:
            raise ValueError(f"backbone {backbone.name!r} declares no feature maps (feature_info is empty)")
        self.config = config
        self.backbone = backbone
        if head is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                head = create_head(config, backbone)
        self.head = head

    def _features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if len(feats) != len(self.backbone.feature_info):
            raise ValueError(
                f"backbone returned {len(feats)} feature maps but feature_info declares "
                f"{len(self.backbone.feature_info)}"
            )
        return list(feats)

    def _validate(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor) -> Tensor:
        c = self.config.in_channels
        if query_images.ndim != 4:
            raise ValueError(f"query_images must be (N, C, H, W), got shape {tuple(query_images.shape)}")
        if support_images.ndim != 5:
            raise ValueError(
                f"support_images must be (B, K, C, H, W), got shape {tuple(support_images.shape)}"
            )
        if support_masks.ndim != 4:
            raise ValueError(f"support_masks must be (B, K, H, W), got shape {tuple(support_masks.shape)}")
        for name, got in (
            ("query_images", query_images.shape[1]),
            ("support_images", support_images.shape[2]),
        ):
            if got != c:
                raise ValueError(f"{name}: expected {c} channels (config.in_channels), got {got}")
        n = query_images.shape[0]
        b, k = support_images.shape[:2]
        if b not in (1, n):
            raise ValueError(f"support batch must be 1 or the query batch {n}, got {b}")
        if k < 1:
            raise ValueError("support_images has K = 0 shots")
        if support_masks.shape[:2] != (b, k):
            raise ValueError(
                f"support_masks (B, K) = {tuple(support_masks.shape[:2])} does not match support_images "
                f"(B, K) = {(b, k)}"
            )
        if support_masks.shape[-2:] != support_images.shape[-2:]:
            raise ValueError(
                f"support_masks size {tuple(support_masks.shape[-2:])} != support image size "
                f"{tuple(support_images.shape[-2:])}"
            )
        masks = support_masks.to(dtype=query_images.dtype)
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("support_masks must be binary (values in {0, 1})")
        if not self.config.allow_empty_support:
            empty = (masks.flatten(2).sum(-1) == 0).nonzero().tolist()
            if empty:
                raise EmptySupportError(
                    f"empty support mask(s) at (batch, shot) {[tuple(e) for e in empty]}; "
                    "set allow_empty_support=True to accept them"
                )
        return masks

    def forward(
        self, support_images: Tensor, support_masks: Tensor, query_images: Tensor
    ) -> SegmentationOutput:
        masks = self._validate(support_images, support_masks, query_images)
        b, k = support_images.shape[:2]
        flat_support = support_images.flatten(0, 1)
        if flat_support.shape[1:] == query_images.shape[1:]:
            feats = self._features(torch.cat([flat_support, query_images], dim=0))
            s_feats = [f[: b * k] for f in feats]
            q_feats = [f[b * k :] for f in feats]
        else:
            s_feats = self._features(flat_support)
            q_feats = self._features(query_images)
        s_feats = [f.view(b, k, *f.shape[1:]) for f in s_feats]
        out = self.head(s_feats, masks, q_feats)
        logits = F.interpolate(out.logits, size=query_images.shape[-2:], mode="bilinear", align_corners=False)
        return SegmentationOutput(logits=logits, align_loss=out.align_loss if self.training else None)


def create_model(
    config: ModelConfig | None = None, *, backbone: Backbone | None = None, **overrides: Any
) -> FewShotSegmenter:
    """Build a :class:`FewShotSegmenter`.

    ``overrides`` replace fields of ``config`` (default :class:`ModelConfig`). Without
    ``backbone``, ``fewshot.backbones.create_backbone`` builds ``config.backbone``.
    """
    config = config if config is not None else ModelConfig()
    if overrides:
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; choices: {', '.join(sorted(fields))}")
        config = dataclasses.replace(config, **overrides)
    if backbone is None:
        from fewshot.backbones import create_backbone

        backbone = create_backbone(
            config.backbone,
            init=config.init,
            weights=config.weights,
            in_channels=config.in_channels,
            truncate=config.truncate,
            seed=config.seed,
        )
    return FewShotSegmenter(config, backbone)
