"""Model configuration: backbone, init and head, each a frozen dataclass validated at construction.

>>> ModelConfig(backbone="cbr-small", init="genesis", head="alpnet")  # doctest: +SKIP

Strings (and mappings) are coerced to the sub-configs, so the one-liner above equals
``ModelConfig(BackboneConfig("cbr-small"), InitConfig("genesis"), ALPNetConfig())`` (which fails:
``genesis`` needs ``InitConfig.weights``). Names are checked against the registries
(:func:`~fewshot.backbones.list_backbones`, :func:`~fewshot.backbones.inits.list_inits`,
:func:`~fewshot.heads.list_heads`) when the config is built, i.e. before any data is read; unknown
names raise ``ValueError`` listing the choices. The seed is not part of the model config:
``create_model(config, seed=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from episodes.data.slices import check_slice_input
from fewshot.backbones.inits import check_init_weights, get_init, parse_init
from fewshot.backbones.registry import check_output_stride, get_backbone_spec, list_backbones
from fewshot.backbones.staged import resolve_stages
from fewshot.backbones.weights import normalise_sha256
from fewshot.heads import ALPNetConfig, HeadConfig, head_config_class

__all__ = [
    "INFERENCE_FIELDS", "BackboneConfig", "FinetuneConfig", "InitConfig", "ModelConfig", "check_intensity_prior",
    "check_threshold",
]

#: The :class:`ModelConfig` fields that only inference reads (training ignores them), which a caller may give
#: in place of a checkpoint's stored ones (:func:`fewshot.checkpoint.with_inference_settings`).
INFERENCE_FIELDS = ("fg_threshold", "tta", "intensity_prior")


def check_threshold(value: Any, what: str = "threshold") -> float:
    """``value`` as a float in ``(0, 1)`` (a foreground probability threshold), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{what} must be a probability in (0, 1) (0.5 = argmax), got {value!r}")
    return float(value)


def check_intensity_prior(value: Any, what: str = "intensity_prior") -> float:
    """``value`` as a float ``>= 0`` (the weight of the support-intensity prior; 0 = off), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < float("inf"):
        raise ValueError(f"{what} must be a finite weight >= 0 (0 = off), got {value!r}")
    return float(value)


#: Test-time augmentations (:func:`fewshot.evaluation.predict_query`): ``none``; ``flip``, the mean of the logits of
#: the episode as given and of the episode mirrored left-right (support and query), mirrored back.
TTA_CHOICES = ("none", "flip")


def check_tta(value: Any, what: str = "tta") -> str:
    """``value`` if it is one of :data:`TTA_CHOICES`, else ``ValueError``."""
    if value not in TTA_CHOICES:
        raise ValueError(f"{what} must be one of {list(TTA_CHOICES)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class FinetuneConfig:
    """Test-time fine-tuning on each support set (:func:`fewshot.evaluation.finetune_on_support`).

    Attributes:
        steps: SGD steps per support set; ``0`` (the default) turns it off.
        lr: learning rate (constant); momentum: SGD momentum.
        batch_size: episodes per step (each: two augmentations of the support slice, one as support, one as query).
        augment: augmentation preset (:data:`episodes.sampling.augment.PRESETS`).
        bg_weight: cross-entropy weight of the background class, the foreground's being 1 (as training's
            ``optim.ce_weights``); align_weight: the head's alignment loss weight.
        bf16: autocast the forward pass to bfloat16 (fast on CPUs with AMX and on GPUs).
        seed: seeds the augmentations (each support set and ensemble member gets its own stream from it).
    """

    steps: int = 0
    lr: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 4
    augment: str = "alpnet"
    bg_weight: float = 0.05
    align_weight: float = 1.0
    bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        from episodes.sampling.augment import PRESETS

        for name, low in (("steps", 0), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"finetune.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"finetune.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"finetune.momentum must be in [0, 1), got {self.momentum!r}")
        if self.augment not in PRESETS:
            raise ValueError(f"finetune.augment {self.augment!r}; choices: {list(PRESETS)}")
        for name in ("bg_weight", "align_weight"):
            weight = getattr(self, name)
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"finetune.{name} must be >= 0, got {weight!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"finetune.bf16 must be true or false, got {self.bf16!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (every one a scalar)."""
        return dataclasses.asdict(self)


def check_finetune(value: Any, what: str = "finetune", base: FinetuneConfig | None = None) -> FinetuneConfig:
    """``value`` as a :class:`FinetuneConfig`: a config as it is, ``None`` as ``base`` (default: off), a mapping
    as ``base`` with the mapping's fields changed (unknown fields raise ``ValueError``)."""
    base = base if base is not None else FinetuneConfig()
    if value is None:
        return base
    if isinstance(value, FinetuneConfig):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(FinetuneConfig, {**dataclasses.asdict(base), **value}, what)  # type: ignore[no-any-return]
    raise ValueError(f"{what} must be a mapping of FinetuneConfig fields, got {value!r}")


def _from_mapping(cls: type, data: Mapping[str, Any], what: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; valid keys: {names}")
    return cls(**dict(data))


@dataclass(frozen=True)
class BackboneConfig:
    """Which registered backbone, cut after stage ``truncate`` (``None``: all), for ``in_channels`` inputs.

    ``output_stride``: stride of the last feature when not the network's own (``None``), e.g. 4 for
    ``cbr-small`` cut at ``block3`` (natively 8); only values the backbone registers are accepted.
    """

    name: str = "resnet50"
    truncate: str | None = None
    in_channels: int = 3
    output_stride: int | None = None

    def __post_init__(self) -> None:
        if self.name not in list_backbones():
            raise ValueError(f"unknown backbone {self.name!r}; choices: {', '.join(list_backbones())}")
        if (
            isinstance(self.in_channels, bool)
            or not isinstance(self.in_channels, int)
            or self.in_channels < 1
        ):
            raise ValueError(f"in_channels must be an integer >= 1, got {self.in_channels!r}")
        spec = get_backbone_spec(self.name)
        if self.truncate is not None and spec.stages:
            resolve_stages(spec.stages, self.truncate)
        check_output_stride(spec, self.output_stride)

    @property
    def stages(self) -> tuple[str, ...]:
        """Stage names kept after truncation (``()`` if the backbone does not declare them)."""
        stages = get_backbone_spec(self.name).stages
        return resolve_stages(stages, self.truncate) if stages else ()


@dataclass(frozen=True)
class InitConfig:
    """How the backbone is initialised.

    Attributes:
        scheme: init string, ``"random[:kaiming|xavier|uniform]" | "imagenet" | "genesis" |
            "meanvar" | "transfuse:<k>"`` (see :mod:`fewshot.backbones.inits`).
        weights: weights file (required for ``genesis``, optional for ``imagenet``/``meanvar``/
            ``transfuse``, refused for ``random``).
        sha256: expected sha256 of ``weights`` (hex, or a prefix of at least 8 digits).
    """

    scheme: str = "random"
    weights: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.weights, Path):
            object.__setattr__(self, "weights", str(self.weights))
        check_init_weights(self.scheme, self.weights, option="InitConfig.weights / YAML model.init.weights")
        object.__setattr__(self, "sha256", normalise_sha256(self.sha256, "InitConfig.sha256"))

    @property
    def needs_weights(self) -> bool:
        return get_init(self.scheme).needs_weights


def _coerce_head(value: Any) -> HeadConfig:
    if isinstance(value, HeadConfig):
        return value
    if isinstance(value, str):
        return head_config_class(value)()
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ValueError(
                f"a head mapping needs a 'name' (one of the registered heads), got {dict(value)}"
            )
        cls = head_config_class(value["name"])
        return _from_mapping(cls, value, cls.__name__)  # type: ignore[no-any-return]
    raise ValueError(f"head must be a head name, a mapping or a HeadConfig, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone + init + head (YAML-able: every leaf is str/int/float/bool/None).

    Attributes:
        backbone: :class:`BackboneConfig` (or its ``name`` as a string, or a mapping).
        init: :class:`InitConfig` (or its ``scheme`` as a string, or a mapping).
        head: a :class:`~fewshot.heads.HeadConfig` subclass (or a head name, or ``{name: ..., ...}``).
        allow_empty_support: accept empty support masks instead of raising ``EmptySupportError``.
        fg_threshold: foreground probability (softmax of the two logits) above which a pixel is predicted
            foreground at inference (:func:`fewshot.evaluation.predict_query`); ``0.5`` is the argmax.
            Training does not use it; a recipe chooses it on fold 0 (``benchmarks/ABLATION.md``).
        tta: test-time augmentation at inference, one of :data:`TTA_CHOICES` (``flip``: logits averaged with
            those of the left-right mirrored episode, twice the inference cost). Training does not use it.
        finetune: test-time fine-tuning on each support set (:class:`FinetuneConfig`; off by default). Training
            does not use it.
        intensity_prior: weight ``w`` of the support-intensity veto at inference: ``w`` times the negative part of
            the log-likelihood ratio of a query pixel's intensity under the support's organ and background
            histograms (:func:`fewshot.evaluation.intensity.intensity_veto`) is added to the foreground logit margin
            before the threshold; ``0`` (the default) turns it off. Training does not use it.
        slice_input: how a slice fills the backbone's ``in_channels`` (:data:`~episodes.data.slices.SLICE_INPUTS`):
            ``tile`` repeats it (SSL-ALPNet); ``adjacent`` stacks it with its neighbours (2.5D, ``in_channels``
            odd). Training, evaluation and ``fewshot segment`` all feed the model this way.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    init: InitConfig = field(default_factory=InitConfig)
    head: HeadConfig = field(default_factory=ALPNetConfig)
    allow_empty_support: bool = False
    fg_threshold: float = 0.5
    tta: str = "none"
    slice_input: str = "tile"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    intensity_prior: float = 0.0

    if TYPE_CHECKING:  # the signature the coercion below accepts (the dataclass generates the body)

        def __init__(
            self,
            backbone: BackboneConfig | str | Mapping[str, Any] = ...,
            init: InitConfig | str | Mapping[str, Any] = ...,
            head: HeadConfig | str | Mapping[str, Any] = ...,
            allow_empty_support: bool = ...,
            fg_threshold: float = ...,
            tta: str = ...,
            slice_input: str = ...,
            finetune: FinetuneConfig | Mapping[str, Any] | None = ...,
            intensity_prior: float = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        subconfigs: tuple[tuple[str, type[BackboneConfig] | type[InitConfig]], ...] = (
            ("backbone", BackboneConfig),
            ("init", InitConfig),
        )
        for name, cls in subconfigs:
            value = getattr(self, name)
            if isinstance(value, str):
                value = cls(value)  # the first field: BackboneConfig.name / InitConfig.scheme
            elif isinstance(value, Mapping):
                value = _from_mapping(cls, value, cls.__name__)
            elif not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__}, a string or a mapping, got {value!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "head", _coerce_head(self.head))
        object.__setattr__(self, "fg_threshold", check_threshold(self.fg_threshold, "ModelConfig.fg_threshold"))
        object.__setattr__(self, "tta", check_tta(self.tta, "ModelConfig.tta"))
        object.__setattr__(self, "finetune", check_finetune(self.finetune, "ModelConfig.finetune"))
        object.__setattr__(
            self, "intensity_prior", check_intensity_prior(self.intensity_prior, "ModelConfig.intensity_prior")
        )
        object.__setattr__(
            self,
            "slice_input",
            check_slice_input(self.slice_input, self.backbone.in_channels, "ModelConfig.slice_input"),
        )
        scheme = get_init(self.init.scheme)
        stages = self.backbone.stages
        if scheme.check_stages is not None and stages:
            scheme.check_stages(parse_init(self.init.scheme), stages)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict; ``ModelConfig(**cfg.to_dict())`` rebuilds the config."""
        return dataclasses.asdict(self)
