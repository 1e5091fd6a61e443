"""Few-shot segmentation heads: SG-One, PANet, ALPNet, ADNet and DPCN (plus their tensor functions).

Heads are chosen by name through a strict registry (:mod:`fewshot.heads.registry`); each head has
its own frozen config dataclass (``ALPNetConfig(window_train=4, ...)``) and
``create_head(config, feature_info)`` builds it.

Adding a head = one file + a decorator::

    # fewshot/heads/myhead.py
    @dataclass(frozen=True)
    class MyHeadConfig(HeadConfig):
        name: str = "myhead"          # must default to the registered name
        feature_dim: int = 256

    @register_head("myhead", config=MyHeadConfig)
    def build_myhead(config: MyHeadConfig, feature_info: Sequence[FeatureInfo]) -> FewShotHead:
        return MyHead(feature_info, feature_dim=config.feature_dim)

The head subclasses :class:`FewShotHead` (``forward(support_features, support_masks,
query_features) -> HeadOutput``). Add the module name to ``_BUILTIN_MODULES`` in
:mod:`fewshot.heads.registry` (built-in heads) or import it before use (plugins); YAML configs then
accept ``model: {head: {name: myhead, feature_dim: 128}}``.
"""

from __future__ import annotations

from fewshot.heads import functional
from fewshot.heads.adnet import ADNetConfig, ADNetHead
from fewshot.heads.alpnet import ALPNetConfig, ALPNetHead
from fewshot.heads.base import FewShotHead, HeadOutput, broadcast_support
from fewshot.heads.dpcn import DPCNConfig, DPCNHead, default_dpcn_levels
from fewshot.heads.panet import PANetConfig, PANetHead
from fewshot.heads.registry import HeadConfig, create_head, head_config_class, list_heads, register_head
from fewshot.heads.sgone import SGOneConfig

__all__ = [
    "ADNetConfig",
    "ADNetHead",
    "ALPNetConfig",
    "ALPNetHead",
    "DPCNConfig",
    "DPCNHead",
    "FewShotHead",
    "HeadConfig",
    "HeadOutput",
    "PANetConfig",
    "PANetHead",
    "SGOneConfig",
    "broadcast_support",
    "create_head",
    "default_dpcn_levels",
    "functional",
    "head_config_class",
    "list_heads",
    "register_head",
]
