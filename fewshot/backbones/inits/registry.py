"""Strict registry of backbone init schemes, :func:`parse_init` and :func:`apply_init`.

A scheme is a function ``(backbone, ctx: InitContext) -> InitReport`` registered with
:func:`register_init`, together with how its init string is parsed (``"transfuse:<k>"``) and
whether it reads a weights file (``weights="none" | "optional" | "required"``). Registering a
name twice raises; unknown names raise ``ValueError`` listing the accepted init strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from fewshot.backbones.base import InitReport
from fewshot.backbones.weights import WeightsRecord

if TYPE_CHECKING:
    from fewshot.backbones.inits.files import LoadedWeights
    from fewshot.backbones.staged import StagedBackbone

__all__ = [
    "InitContext",
    "InitScheme",
    "InitSpec",
    "apply_init",
    "check_init_weights",
    "get_init",
    "init_choices",
    "list_inits",
    "parse_init",
    "register_init",
]

WeightsPolicy = Literal["none", "optional", "required"]
_BUILTIN_MODULES = ("random", "imagenet", "genesis", "meanvar", "transfuse")  # genesis.py: genesis and mim
_REGISTRY: dict[str, InitScheme] = {}


@dataclass(frozen=True)
class InitSpec:
    """Parsed init string: scheme ``kind`` (a registered name), random ``scheme``, transfusion depth ``k``."""

    kind: str
    scheme: str = "kaiming"
    k: int | None = None


@dataclass(frozen=True)
class InitContext:
    """What a scheme function gets besides the backbone.

    Attributes:
        init: the init string as given (recorded in the report).
        spec: its parsed form.
        seed: seed of all random draws; ``generator`` is ``torch.Generator().manual_seed(seed)``.
        weights: explicit weights file, if any.
        records: the backbone's declared weights (``{"imagenet": WeightsRecord}``).
        weights_sha256: expected sha256 (hex or prefix) of the file, if any.
    """

    init: str
    spec: InitSpec
    seed: int
    generator: torch.Generator
    weights: Path | None
    records: Mapping[str, WeightsRecord]
    weights_sha256: str | None

    def new_report(self) -> InitReport:
        return InitReport(init=self.init, seed=self.seed)

    def read(self, backbone: StagedBackbone) -> LoadedWeights:
        """Resolve, verify and load the weights file of this init (see :func:`~.files.read_weights`)."""
        from fewshot.backbones.inits.files import read_weights

        scheme = get_init(self.spec.kind)
        record = self.records.get(scheme.default_weights) if scheme.default_weights else None
        return read_weights(backbone, self, record)


@dataclass(frozen=True)
class InitScheme:
    """A registered init scheme.

    Attributes:
        name: the part of the init string before ``:``.
        apply: ``(backbone, ctx) -> InitReport``; initialises the backbone in place.
        parse: ``(init, arg) -> InitSpec`` for the text after ``:`` (``arg`` ``""`` if none).
        weights: ``"none"`` (a weights file is refused), ``"optional"`` or ``"required"``.
        default_weights: key of the backbone's declared :class:`WeightsRecord` used when no file
            is given (``"imagenet"``), ``None`` if there is no default.
        forms: the init strings shown in error messages (``"transfuse:<k>"``).
        hint: how to obtain a weights file (shown when a required file is missing).
        check_stages: optional ``(spec, stage_names) -> None`` raising ``ValueError`` when the
            spec does not fit a backbone with these (kept) stages.
    """

    name: str
    apply: Callable[[StagedBackbone, InitContext], InitReport]
    parse: Callable[[str, str], InitSpec]
    weights: WeightsPolicy
    default_weights: str | None
    forms: tuple[str, ...]
    hint: str = ""
    check_stages: Callable[[InitSpec, tuple[str, ...]], None] | None = None

    @property
    def needs_weights(self) -> bool:
        """A weights file must be given (``genesis``)."""
        return self.weights == "required"

    @property
    def accepts_weights(self) -> bool:
        """A weights file may be given (everything but ``random``)."""
        return self.weights != "none"


def _no_argument(init: str, arg: str) -> InitSpec:
    kind = init.partition(":")[0]
    if arg:
        raise ValueError(f"init={init!r}: {kind!r} takes no ':' argument; choices: {init_choices()}")
    return InitSpec(kind)


def register_init(
    name: str,
    *,
    weights: WeightsPolicy,
    default_weights: str | None = None,
    parse: Callable[[str, str], InitSpec] | None = None,
    forms: tuple[str, ...] | None = None,
    hint: str = "",
    check_stages: Callable[[InitSpec, tuple[str, ...]], None] | None = None,
) -> Callable[[Callable[..., InitReport]], Callable[..., InitReport]]:
    """Decorator registering an init scheme function under ``name`` (see :class:`InitScheme`).

    Raises:
        ValueError: ``name`` is already registered, contains ``':'``, or ``weights`` is invalid.
    """
    if ":" in name or not name:
        raise ValueError(f"init scheme name must be non-empty without ':', got {name!r}")
    if weights not in ("none", "optional", "required"):
        raise ValueError(f"weights must be 'none', 'optional' or 'required', got {weights!r}")

    def decorator(fn: Callable[..., InitReport]) -> Callable[..., InitReport]:
        if name in _REGISTRY:
            raise ValueError(f"init scheme {name!r} is already registered ({_REGISTRY[name].apply!r})")
        _REGISTRY[name] = InitScheme(
            name=name,
            apply=fn,
            parse=parse or _no_argument,
            weights=weights,
            default_weights=default_weights,
            forms=forms or (name,),
            hint=hint,
            check_stages=check_stages,
        )
        return fn

    return decorator


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"fewshot.backbones.inits.{mod}")


def list_inits() -> list[str]:
    """Sorted names of the registered schemes (``genesis, imagenet, meanvar, random, transfuse``)."""
    _load_builtins()
    return sorted(_REGISTRY)


def init_choices() -> str:
    """The accepted init strings, for messages: ``"genesis, imagenet, ..., transfuse:<k>"``."""
    _load_builtins()
    return ", ".join(form for name in sorted(_REGISTRY) for form in _REGISTRY[name].forms)


def get_init(init: str) -> InitScheme:
    """The scheme of ``init`` (a name, or a full init string such as ``"transfuse:2"``).

    Raises:
        ValueError: unknown scheme (the message lists the accepted init strings).
    """
    _load_builtins()
    kind = init.partition(":")[0]
    if kind not in _REGISTRY:
        raise ValueError(f"unknown init {init!r}; choices: {init_choices()}")
    return _REGISTRY[kind]


def parse_init(init: str) -> InitSpec:
    """Parse an init string (``"random[:scheme]" | "imagenet" | "genesis" | "meanvar" | "transfuse:<k>"``).

    Raises:
        ValueError: unknown scheme or malformed argument (the message lists the choices).
    """
    if not isinstance(init, str):
        raise ValueError(f"init must be a string, got {init!r}; choices: {init_choices()}")
    kind, _, arg = init.partition(":")
    return get_init(kind).parse(init, arg)


def check_init_weights(
    init: str, weights: str | Path | None, *, option: str = "weights=FILE", backbone: str | None = None
) -> InitSpec:
    """Parse ``init`` and check it against the presence of a weights file, before any heavy work.

    Args:
        init: init string.
        weights: the weights file given (``None``: none).
        option: how the caller names the weights option in messages (``"model.init.weights"``).
        backbone: backbone name, for the hint.

    Raises:
        ValueError: unknown init, a required file missing, or a file given to a scheme without one.
    """
    spec = parse_init(init)
    scheme = get_init(spec.kind)
    if weights is None and scheme.needs_weights:
        hint = scheme.hint.format(backbone=backbone or "NAME")
        raise ValueError(f"init={init!r} needs a weights file: set {option}" + (f"; {hint}" if hint else ""))
    if weights is not None and not scheme.accepts_weights:
        readers = ", ".join(n for n in list_inits() if _REGISTRY[n].accepts_weights)
        raise ValueError(
            f"a weights file ({option}) is not used by init={init!r} (the schemes that read one: "
            f"{readers}); remove it or choose one of those"
        )
    return spec


def apply_init(
    backbone: StagedBackbone,
    *,
    init: str,
    seed: int = 0,
    weights: str | Path | None = None,
    records: Mapping[str, WeightsRecord] | None = None,
    weights_sha256: str | None = None,
) -> InitReport:
    """Initialise ``backbone`` in place according to ``init`` (see :mod:`fewshot.backbones.inits`).

    Args:
        backbone: freshly built backbone.
        init: init string.
        seed: seed of all random draws.
        weights: explicit weights file (required for ``genesis``).
        records: the backbone's declared weights (``BackboneSpec.weights``); ``None``: none.
        weights_sha256: optional expected sha256 (full or prefix) of the weights file.

    Returns:
        The :class:`InitReport` (also the caller's to attach to the backbone).
    """
    spec = check_init_weights(init, weights, backbone=backbone.name)
    scheme = get_init(spec.kind)
    if scheme.check_stages is not None:
        scheme.check_stages(spec, backbone.stage_names)
    ctx = InitContext(
        init=init,
        spec=spec,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        weights=None if weights is None else Path(weights).expanduser(),
        records=records or {},
        weights_sha256=weights_sha256,
    )
    return scheme.apply(backbone, ctx)
