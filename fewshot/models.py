"""Few-shot segmentation model: a :class:`~fewshot.backbones.base.Backbone` + a prototype head.

``FewShotSegmenter(support_images, support_masks, query_images)`` runs support and query
images through the backbone in one pass (when their sizes agree), lets the head produce
background/foreground logits at feature resolution and upsamples them (bilinear) to the
query image size.

Heads (``ModelConfig.head``, a config of :mod:`fewshot.heads.registry`):

* ``SGOneConfig``  (``"sgone"``)  MAP prototypes + cosine classifier, never an alignment loss;
* ``PANetConfig``  (``"panet"``)  the same + PANet alignment loss (when ``align=True``, the default);
* ``ALPNetConfig`` (``"alpnet"``) adaptive local prototypes (SSL-ALPNet) + alignment loss (``align``);
* ``DPCNConfig``   (``"dpcn"``)   dynamic prototype convolution network (learned decoder, no alignment loss).

>>> model = create_model(ModelConfig(backbone="resnet50", init="random", head="alpnet"), seed=0)  # doctest: +SKIP

Empty support masks raise :class:`EmptySupportError` unless ``allow_empty_support=True``; the
heads then behave as documented in their modules (zero foreground prototype).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.backbones.base import Backbone
from fewshot.config.model import INFERENCE_FIELDS, ModelConfig
from fewshot.heads import FewShotHead
from fewshot.heads.registry import create_head, list_heads

__all__ = [
    "EmptySupportError",
    "EnsembleSegmenter",
    "FewShotSegmenter",
    "ModelConfig",
    "SegmentationOutput",
    "create_head",
    "create_model",
    "create_model_skeleton",
    "list_heads",
    "model_heads",
]

logger = logging.getLogger("fewshot")


class EmptySupportError(ValueError):
    """A support mask has no foreground pixel (raised unless ``allow_empty_support=True``)."""


@dataclass
class SegmentationOutput:
    """``logits (N, 2, H, W)`` (bg, fg) at input resolution; ``align_loss`` scalar (training + aligning head) or
    ``None``; ``aux_loss`` the head's other, already weighted training loss (training only) or ``None``."""

    logits: Tensor
    align_loss: Tensor | None
    aux_loss: Tensor | None = None


def _seeded_head(config: ModelConfig, backbone: Backbone, seed: int) -> FewShotHead:
    """The head of ``config`` drawn with ``torch.manual_seed(seed)`` in a forked RNG (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_head(config.head, backbone.feature_info)


class FewShotSegmenter(nn.Module):
    """1-way K-shot segmenter.

    ``forward(support_images (B,K,C,H,W), support_masks (B,K,H,W), query_images (N,C,H',W'))``
    with ``B`` = 1 (one support set shared by all N queries, used at evaluation) or ``N``;
    masks in ``{0, 1}`` (float, bool or int). Returns :class:`SegmentationOutput`.

    Without ``head``, the head of ``config.head`` is built with its parameters drawn from
    ``torch.manual_seed(seed)`` in a forked RNG.
    """

    def __init__(
        self, config: ModelConfig, backbone: Backbone, head: FewShotHead | None = None, *, seed: int = 0
    ) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone must be a fewshot.backbones.base.Backbone, got {type(backbone).__name__}"
            )
        if len(backbone.feature_info) == 0:
            raise ValueError(f"backbone {backbone.name!r} declares no feature maps (feature_info is empty)")
        self.config = config
        self.backbone = backbone
        self.head = head if head is not None else _seeded_head(config, backbone, seed)

    def _features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if len(feats) != len(self.backbone.feature_info):
            raise ValueError(
                f"backbone returned {len(feats)} feature maps but feature_info declares "
                f"{len(self.backbone.feature_info)}"
            )
        return list(feats)

    def _validate(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor) -> Tensor:
        c = self.config.backbone.in_channels
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
                raise ValueError(f"{name}: expected {c} channels (config.backbone.in_channels), got {got}")
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
                    "set model.allow_empty_support: true (Python: allow_empty_support=True) to accept them"
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
        if not self.training:
            return SegmentationOutput(logits=logits, align_loss=None)
        return SegmentationOutput(logits=logits, align_loss=out.align_loss, aux_loss=out.aux_loss)


class EnsembleSegmenter(nn.Module):
    """Several trained segmenters of one setup (same input size, channels and slice input) as one model.

    ``forward`` takes the arguments of :class:`FewShotSegmenter` and returns the mean of the members'
    foreground probabilities ``p = softmax(logits)[:, 1]`` as the logits ``[log(1 - p), log(p)]``, so that
    ``softmax`` of the result is exactly that mean and a threshold on it (``model.fg_threshold``) means what
    it means for one model. For inference only: ``align_loss`` and ``aux_loss`` are ``None``.

    Attributes:
        members: the segmenters; ``config`` is the first member's (every member must agree on the fields
            inference reads: ``backbone.in_channels``, ``slice_input``, ``fg_threshold``, ``tta``,
            ``intensity_prior``).
    """

    def __init__(self, members: list[FewShotSegmenter]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0].config
        for i, m in enumerate(members[1:], start=1):
            for field in ("slice_input", *INFERENCE_FIELDS):
                if getattr(m.config, field) != getattr(first, field):
                    raise ValueError(
                        f"ensemble member {i} has model.{field}={getattr(m.config, field)!r}, member 0 "
                        f"{getattr(first, field)!r}: members must agree"
                    )
            if m.config.backbone.in_channels != first.backbone.in_channels:
                raise ValueError(
                    f"ensemble member {i} takes {m.config.backbone.in_channels} input channels, member 0 "
                    f"{first.backbone.in_channels}"
                )
        self.members = nn.ModuleList(members)
        self.config = first

    @property
    def heads(self) -> list[FewShotHead]:
        """Every member's head (test-time head settings apply to all of them)."""
        return [m.head for m in self.members if isinstance(m, FewShotSegmenter)]

    def forward(
        self, support_images: Tensor, support_masks: Tensor, query_images: Tensor
    ) -> SegmentationOutput:
        probs = [m(support_images, support_masks, query_images).logits.float().softmax(1)[:, 1] for m in self.members]
        p = torch.stack(probs).mean(0).clamp(1e-7, 1.0 - 1e-7)
        return SegmentationOutput(logits=torch.stack([torch.log1p(-p), torch.log(p)], dim=1), align_loss=None)


def model_heads(model: nn.Module) -> list[FewShotHead]:
    """The heads of a :class:`FewShotSegmenter` (one) or an :class:`EnsembleSegmenter` (one per member)."""
    if isinstance(model, EnsembleSegmenter):
        return model.heads
    head = getattr(model, "head", None)
    if not isinstance(head, FewShotHead):
        raise TypeError(f"{type(model).__name__} has no few-shot head")
    return [head]


def create_model(
    config: ModelConfig | None = None, *, backbone: Backbone | None = None, seed: int = 0
) -> FewShotSegmenter:
    """Build and initialise a :class:`FewShotSegmenter`.

    Args:
        config: the model (default :class:`ModelConfig`).
        backbone: use this backbone instead of building ``config.backbone`` with
            ``fewshot.backbones.create_backbone`` (``config.init`` then is not applied).
        seed: seeds the backbone init and the head's parameters (``seed=0`` reproduces the models
            of the former ``ModelConfig(seed=0)``).
    """
    config = config if config is not None else ModelConfig()
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a fewshot.config.ModelConfig, got {type(config).__name__}")
    if backbone is None:
        from fewshot.backbones import create_backbone

        backbone = create_backbone(
            config.backbone.name,
            init=config.init.scheme,
            weights=config.init.weights,
            in_channels=config.backbone.in_channels,
            truncate=config.backbone.truncate,
            seed=seed,
            weights_sha256=config.init.sha256,
            output_stride=config.backbone.output_stride,
        )
    return FewShotSegmenter(config, backbone, seed=seed)


def create_model_skeleton(config: ModelConfig) -> FewShotSegmenter:
    """The architecture of ``config`` for loading a trained state dict into (e.g. from a checkpoint).

    No init scheme is applied, no weights file is read and no init report is logged (the
    parameters are overwritten by the state dict); ``backbone.init_report`` is ``None``.
    """
    from fewshot.backbones import get_backbone_spec

    spec = get_backbone_spec(config.backbone.name)
    bb = config.backbone
    backbone = spec.build(in_channels=bb.in_channels, truncate=bb.truncate, output_stride=bb.output_stride)
    logger.debug("model skeleton: backbone %s, head %s (weights to be loaded)", spec.name, config.head.name)
    return FewShotSegmenter(config, backbone)
