"""Backbone initialisation: the controlled variable of the study.

Init specs (``create_backbone(..., init=...)``):

- ``random`` == ``random:kaiming``: conv/linear weights ~ N(0, 2 / fan_out) (He, ReLU gain,
  fan-out mode as torchvision's ResNet/VGG init); ``random:xavier``: N(0, 2 / (fan_in + fan_out));
  ``random:uniform``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default conv init).
  Biases 0, norm weights 1 / biases 0, BN running stats reset. All draws come from
  ``torch.Generator().manual_seed(seed)`` in ``named_modules()`` order: same seed, same net.
- ``imagenet``: official torchvision weights, read OFFLINE from ``weights=`` or from
  ``torch.hub.get_dir()/checkpoints/<official filename>``. A file carrying the official name
  must match the sha256 prefix embedded in that name. Never falls back to random.
- ``genesis``: our Models Genesis encoder file (``fewshot.genesis.pretrain_genesis``), given by
  ``weights=``; its recorded backbone name must match.
- ``meanvar`` (Transfusion Mean-Var): every conv/linear *weight* tensor is drawn i.i.d. from
  N(mu, sigma^2) with mu/sigma of the corresponding pretrained tensor (``weights=`` or the
  ImageNet file). Only weight statistics are kept, as in the paper: biases 0, BN reset to
  defaults (same as ``random``).
- ``transfuse:<k>`` (Transfusion weight transfusion): the first ``k`` stages (in
  ``backbone.stage_names`` order; ResNet: ``stem, layer1, .., layer4``, so ``k=1`` is the stem
  only) are copied from pretrained weights (``weights=`` or ImageNet) including BN statistics;
  the rest is ``random:kaiming`` with ``seed``. ``k=0``: fully random, ``k=len(stages)``: fully
  pretrained.

Pretrained stems are adapted when ``in_channels`` differs from the file's: for 1 channel the
RGB kernels are summed; for ``c`` channels the RGB (or gray) kernels are tiled to ``c`` and
scaled by ``3 / c`` (``1 / c``), timm's rule. Classification heads (``fc.*``, ``classifier.*``) and stages removed by
``truncate`` are ignored in pretrained files; any other missing/unexpected key is an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from episodes.cache import file_digest
from fewshot.backbones.base import InitReport
from fewshot.backbones.staged import StagedBackbone

__all__ = [
    "GENESIS_FORMAT",
    "RANDOM_SCHEMES",
    "InitSpec",
    "adapt_stem_weight",
    "apply_init",
    "load_weights_file",
    "parse_init",
    "random_init_",
    "resolve_imagenet_file",
    "sha256_file",
]

RANDOM_SCHEMES = ("kaiming", "xavier", "uniform")
GENESIS_FORMAT = "fewshot-genesis-encoder/1"
_KINDS = ("random", "imagenet", "genesis", "meanvar", "transfuse")
_CHOICES = "random, random:kaiming, random:xavier, random:uniform, imagenet, genesis, meanvar, transfuse:<k>"
_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class InitSpec:
    """Parsed init string: ``kind`` in ``_KINDS``, random ``scheme``, transfusion depth ``k``."""

    kind: str
    scheme: str = "kaiming"
    k: int | None = None


def parse_init(init: str) -> InitSpec:
    """Parse ``"random[:scheme]" | "imagenet" | "genesis" | "meanvar" | "transfuse:<k>"``.

    Raises:
        ValueError: unknown kind/scheme or malformed ``k`` (the message lists the choices).
    """
    kind, _, arg = init.partition(":")
    if kind == "random":
        scheme = arg or "kaiming"
        if scheme not in RANDOM_SCHEMES:
            raise ValueError(f"unknown random scheme {scheme!r} in init={init!r}; choices: {_CHOICES}")
        return InitSpec("random", scheme)
    if kind == "transfuse":
        if not re.fullmatch(r"\d+", arg):
            raise ValueError(
                f"init={init!r}: expected transfuse:<k> with integer k >= 0; choices: {_CHOICES}"
            )
        return InitSpec("transfuse", "kaiming", int(arg))
    if kind in ("imagenet", "genesis", "meanvar") and not arg:
        return InitSpec(kind)
    raise ValueError(f"unknown init {init!r}; choices: {_CHOICES}")


# --------------------------------------------------------------------------- random


def random_init_(module: nn.Module, scheme: str, generator: torch.Generator) -> list[str]:
    """Re-draw all parameters of ``module`` in place; returns the parameter names touched.

    Conv/linear weights follow ``scheme`` (see module docs), their biases are 0; norm layers
    get weight 1, bias 0 and reset running statistics.

    Raises:
        ValueError: unknown scheme. TypeError: a parameter outside conv/linear/norm layers.
    """
    if scheme not in RANDOM_SCHEMES:
        raise ValueError(f"unknown random scheme {scheme!r}; choices: {list(RANDOM_SCHEMES)}")
    touched: list[str] = []
    with torch.no_grad():
        for mname, m in module.named_modules():
            prefix = f"{mname}." if mname else ""
            if isinstance(m, _CONV_LINEAR):
                w = m.weight
                if scheme == "kaiming":
                    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=generator)
                elif scheme == "xavier":
                    nn.init.xavier_normal_(w, generator=generator)
                else:
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                touched.append(prefix + "weight")
                if m.bias is not None:
                    m.bias.zero_()
                    touched.append(prefix + "bias")
            elif isinstance(m, _NORMS):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                    touched.append(prefix + "weight")
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                    touched.append(prefix + "bias")
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                    m.reset_running_stats()
    untouched = [n for n, _ in module.named_parameters() if n not in set(touched)]
    if untouched:
        raise TypeError(f"random_init_ does not know how to initialise parameters {untouched[:5]}")
    return touched


def _conv_linear_weight_keys(module: nn.Module) -> list[str]:
    return [
        f"{n}.weight" if n else "weight" for n, m in module.named_modules() if isinstance(m, _CONV_LINEAR)
    ]


# --------------------------------------------------------------------------- files


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (the same digest the superpixel cache keys use)."""
    return file_digest(path)


def resolve_imagenet_file(
    backbone_name: str, imagenet_file: str | None, weights: str | Path | None = None
) -> Path:
    """Path of the ImageNet weights: ``weights`` if given, else the torch hub cache file.

    Raises:
        ValueError: the backbone has no official weights and ``weights`` is None.
        FileNotFoundError: the file is absent (the message names the file and directory).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {str(path)!r} for backbone {backbone_name!r} does not exist"
            )
        return path
    if imagenet_file is None:
        raise ValueError(
            f"backbone {backbone_name!r} has no ImageNet weights; use init='random[:scheme]', or "
            f"init='genesis' / 'meanvar' / 'transfuse:<k>' with weights=FILE"
        )
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = ckpt_dir / imagenet_file
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {backbone_name!r} not found: place the official torchvision file "
            f"{imagenet_file!r} in directory {str(ckpt_dir)!r} (i.e. {str(path)!r}; set $TORCH_HOME to "
            f"change it) or pass weights=PATH. Nothing is downloaded."
        )
    return path


def _check_sha(path: Path, digest: str, official_file: str | None, expected: str | None) -> None:
    if official_file is not None and path.name == official_file:
        m = re.search(r"-([0-9a-f]{8,})\.[A-Za-z]+$", official_file)
        if m and not digest.startswith(m.group(1)):
            raise ValueError(
                f"checksum mismatch for {str(path)!r}: its official name promises a sha256 starting with "
                f"{m.group(1)!r} but the file hashes to {digest[:16]}...; the file is corrupt or not the "
                f"official torchvision file, replace it"
            )
    if expected is not None and not digest.startswith(expected.lower()):
        raise ValueError(f"checksum mismatch for {str(path)!r}: expected sha256 {expected!r}, got {digest!r}")


def load_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Load a state dict (plain, or our ``{"state_dict", "meta"}`` format) with ``weights_only=True``.

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``None`` for a plain state dict.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    meta: dict[str, Any] | None = None
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = dict(obj.get("meta") or {})
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{str(path)!r}: non-tensor entries {bad[:5]} in state dict")
    return dict(obj), meta


# --------------------------------------------------------------------------- alignment


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem kernel ``(O, c_src, k, k)`` (``c_src`` 3 or 1) to ``(O, in_channels, k, k)``.

    RGB -> 1 channel: sum over RGB. RGB -> c: tile RGB to ``c`` and scale by ``3 / c``.
    1 -> c: tile and scale by ``1 / c``. The response to a gray image tiled over the input
    channels is unchanged when ``in_channels`` is 1 or a multiple of ``c_src`` (otherwise only
    the overall weight scale is kept, as in timm).
    """
    c_src = weight.shape[1]
    if c_src not in (1, 3):
        raise ValueError(f"can only adapt 1- or 3-channel stem kernels, got shape {tuple(weight.shape)}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c_src)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c_src / in_channels)


def _align(
    backbone: StagedBackbone,
    source: Mapping[str, torch.Tensor],
    needed: Iterable[str],
    where: str,
    *,
    check_shapes: bool = True,
) -> dict[str, torch.Tensor]:
    """Match ``source`` to the backbone's keys; returns ``{key: tensor}`` for ``needed`` keys.

    Raises ValueError on missing needed keys, unexpected source keys (other than heads and
    truncated stages) or shape mismatches.
    """
    target = backbone.state_dict()
    needed = list(needed)
    missing = [k for k in needed if k not in source and not k.endswith("num_batches_tracked")]
    unexpected = [
        k
        for k in source
        if k not in target
        and not k.startswith(backbone.head_prefixes)
        and backbone.stage_of_key(k) in (*backbone.stage_names, None)
    ]
    if missing or unexpected:
        raise ValueError(
            f"weights {where} do not match backbone {backbone.name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:5]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:5]})"
        )
    out: dict[str, torch.Tensor] = {}
    for k in needed:
        if k not in source:
            continue
        v = source[k]
        t_shape = target[k].shape
        if check_shapes and k == backbone.stem_weight_key and v.dim() == 4 and v.shape[1] != t_shape[1]:
            v = adapt_stem_weight(v.float(), backbone.in_channels)
        if check_shapes and v.shape != target[k].shape:
            raise ValueError(
                f"weights {where}: shape mismatch for {k!r}: file {tuple(v.shape)} vs backbone "
                f"{tuple(target[k].shape)}"
            )
        out[k] = v.to(dtype=target[k].dtype)
    return out


# --------------------------------------------------------------------------- main entry


def _read_source(
    backbone: StagedBackbone,
    spec: InitSpec,
    weights: str | Path | None,
    imagenet_file: str | None,
    weights_sha256: str | None,
) -> tuple[dict[str, torch.Tensor], Path, str]:
    if spec.kind == "genesis" and weights is None:
        raise ValueError(
            f"init='genesis' needs weights=FILE: run `fewshot pretrain-genesis --backbone {backbone.name} "
            f"--out FILE ...` (or fewshot.genesis.run_pretrain_genesis) and pass weights=FILE"
        )
    path = resolve_imagenet_file(backbone.name, imagenet_file, weights)
    digest = sha256_file(path)
    _check_sha(path, digest, imagenet_file, weights_sha256)
    state, meta = load_weights_file(path)
    if spec.kind == "genesis" and (meta is None or meta.get("format") != GENESIS_FORMAT):
        raise ValueError(
            f"{str(path)!r} is not a fewshot Models Genesis encoder file (format {GENESIS_FORMAT!r}); "
            f"create one with fewshot.genesis.run_pretrain_genesis"
        )
    if meta is not None and meta.get("backbone") not in (None, backbone.name):
        raise ValueError(
            f"{str(path)!r} holds weights for backbone {meta.get('backbone')!r}, not {backbone.name!r}"
        )
    return state, path, digest


def apply_init(
    backbone: StagedBackbone,
    *,
    init: str,
    seed: int = 0,
    weights: str | Path | None = None,
    imagenet_file: str | None = None,
    weights_sha256: str | None = None,
) -> InitReport:
    """Initialise ``backbone`` in place according to ``init`` (see module docs).

    Args:
        backbone: freshly built backbone.
        init: init spec string.
        seed: seed of all random draws.
        weights: explicit weights file (required for ``genesis``).
        imagenet_file: official torchvision filename of this backbone (``None``: none exists).
        weights_sha256: optional expected sha256 (full or prefix) of the weights file.

    Returns:
        The :class:`InitReport` (also the caller's to attach to the backbone).
    """
    spec = parse_init(init)
    gen = torch.Generator().manual_seed(seed)
    report = InitReport(init=init, seed=seed)
    all_params = [n for n, _ in backbone.named_parameters()]

    if spec.kind == "random":
        if weights is not None:
            raise ValueError(
                f"weights= is not used by init={init!r}; pass init='imagenet'/'genesis'/... instead"
            )
        report.randomized = random_init_(backbone, spec.scheme, gen)
        return report
    if spec.kind == "transfuse":
        assert spec.k is not None
        if spec.k > len(backbone.stage_names):
            raise ValueError(
                f"init={init!r}: k must be in 0..{len(backbone.stage_names)} for stages "
                f"{list(backbone.stage_names)} of {backbone.name!r}"
            )
    state, path, digest = _read_source(backbone, spec, weights, imagenet_file, weights_sha256)
    report.source, report.sha256 = str(path), digest
    random_init_(backbone, "kaiming", gen)
    where = f"from {str(path)!r}"

    if spec.kind == "meanvar":
        keys = _conv_linear_weight_keys(backbone)
        src = _align(backbone, state, keys, where, check_shapes=False)
        params = dict(backbone.named_parameters())
        with torch.no_grad():
            for k in keys:
                s = src[k].float()
                mu, sd = s.mean().item(), (s.std().item() if s.numel() > 1 else 0.0)
                params[k].normal_(mu, sd, generator=gen)
        report.randomized = all_params
        return report

    if spec.kind == "transfuse":
        assert spec.k is not None
        needed = backbone.keys_of_stages(backbone.stage_names[: spec.k])
    else:  # imagenet, genesis
        needed = list(backbone.state_dict())
    aligned = _align(backbone, state, needed, where)
    result = backbone.load_state_dict(aligned, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    loaded = set(aligned)
    report.loaded = [k for k in backbone.state_dict() if k in loaded]
    report.randomized = [n for n in all_params if n not in loaded]
    return report
