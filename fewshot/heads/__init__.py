"""Few-shot segmentation heads: SG-One/PANet, ALPNet and DPCN (plus their tensor functions)."""

from __future__ import annotations

from fewshot.heads import functional
from fewshot.heads.alpnet import ALPNetHead
from fewshot.heads.base import FewShotHead, HeadOutput, broadcast_support
from fewshot.heads.dpcn import DPCNHead, default_dpcn_levels
from fewshot.heads.panet import PANetHead

__all__ = [
    "ALPNetHead",
    "DPCNHead",
    "FewShotHead",
    "HeadOutput",
    "PANetHead",
    "broadcast_support",
    "default_dpcn_levels",
    "functional",
]
