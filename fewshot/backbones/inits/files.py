"""Weights files: locating (offline), checksum verification against the declared record, loading.

Every file is read with ``torch.load(..., weights_only=True)``. A file that cannot be read
(random bytes, truncated, a pickle of arbitrary objects) raises one ``ValueError`` naming the
file and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from episodes.pseudolabels.cache import file_digest
from fewshot.backbones.weights import IMPORT_FORMAT, WeightsRecord

if TYPE_CHECKING:
    from fewshot.backbones.base import InitReport
    from fewshot.backbones.inits.registry import InitContext
    from fewshot.backbones.staged import StagedBackbone

__all__ = [
    "GENESIS_FORMAT",
    "LoadedWeights",
    "load_weights_file",
    "read_and_reset",
    "read_weights",
    "resolve_imagenet_file",
    "sha256_file",
]

#: ``meta["format"]`` of the encoder files written by :func:`fewshot.genesis.pretrain_genesis`.
GENESIS_FORMAT = "fewshot-genesis-encoder/1"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (the same digest the superpixel cache keys use)."""
    return file_digest(path)


def resolve_imagenet_file(
    backbone_name: str, record: WeightsRecord | None, weights: str | Path | None = None
) -> Path:
    """Path of the weights: ``weights`` if given, else ``torch.hub.get_dir()/checkpoints/<record.file>``.

    Raises:
        ValueError: no ``weights`` and the backbone declares no such record.
        FileNotFoundError: the file is absent (the message names the file and directory).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {str(path)!r} for backbone {backbone_name!r} does not exist"
            )
        return path
    if record is None or record.file is None:
        raise ValueError(
            f"backbone {backbone_name!r} has no ImageNet weights; use init='random[:scheme]', or "
            f"init='genesis' / 'meanvar' / 'transfuse:<k>' with weights=FILE"
        )
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = ckpt_dir / record.file
    if not path.is_file() and record.make is not None:
        raise FileNotFoundError(
            f"ImageNet weights for {backbone_name!r} not found: {str(path)!r} is made by `{record.make}` from "
            f"{record.source} (set $TORCH_HOME to change the folder), or pass weights=PATH. Nothing is downloaded."
        )
    if not path.is_file():
        src = f" (from {record.source})" if record.source else ""
        raise FileNotFoundError(
            f"ImageNet weights for {backbone_name!r} not found: place the official torchvision file "
            f"{record.file!r}{src} in directory {str(ckpt_dir)!r} (i.e. {str(path)!r}; set $TORCH_HOME to "
            f"change it) or pass weights=PATH. Nothing is downloaded."
        )
    return path


def _safe_detail(e: BaseException) -> str:
    """torch's message, unless it gives unsafe advice (its UnpicklingError suggests ``weights_only=False``)."""
    msg = " ".join(str(e).split())
    if not msg or "weights_only" in msg or "pickle" in msg.lower():
        return type(e).__name__
    return f"{type(e).__name__}: {msg.split('. ')[0][:160]}"


def load_weights_file(
    path: str | Path, *, advice: str = "replace it with a valid file"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Load a state dict (plain, or our ``{"state_dict", "meta"}`` format) with ``weights_only=True``.

    Args:
        path: the file.
        advice: what to do when the file cannot be read (ends the error message).

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``None`` for a plain state dict.

    Raises:
        ValueError: unreadable file (corrupt, truncated, not a tensor state dict).
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle means a bad file
        detail = _safe_detail(e)
        err = ValueError(
            f"weights file {str(path)!r} ({path.stat().st_size} bytes) cannot be read: it is corrupt, "
            f"truncated or not a PyTorch state dict ({detail}); {advice}"
        )
        if detail == type(e).__name__:
            raise err from None  # do not chain torch's message (and its advice)
        raise err from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__}); {advice}")
    meta: dict[str, Any] | None = None
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = dict(obj.get("meta") or {})
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{str(path)!r}: non-tensor entries {bad[:5]} in state dict; {advice}")
    return dict(obj), meta


@dataclass(frozen=True)
class LoadedWeights:
    """A verified, loaded weights file: ``state`` dict, ``path``, hex ``digest``, ``meta`` and its ``record``."""

    state: dict[str, torch.Tensor]
    path: Path
    digest: str
    meta: dict[str, Any] | None
    record: WeightsRecord | None


def _advice(backbone: str, kind: str, path: Path, record: WeightsRecord | None) -> str:
    objective = kind if kind in ("genesis", "mim") else "genesis"
    genesis = f"re-run `fewshot pretrain --objective {objective} --backbone {backbone} --out {path}`"
    if kind in ("genesis", "mim"):
        return genesis
    if record is not None and record.make is not None:
        return f"re-create it with `{record.make}` (the package: {record.source})"
    if record is not None and record.file == path.name and record.source:
        return f"re-download {record.source} to {str(path)!r}"
    official = f" (the official file: {record.source})" if record is not None and record.source else ""
    return f"re-download the pretrained weights{official}, or {genesis} if it is our pretrained file"


def read_weights(backbone: StagedBackbone, ctx: InitContext, record: WeightsRecord | None) -> LoadedWeights:
    """Resolve, verify and load the weights of ``ctx`` for ``backbone``.

    ``ctx.weights`` or, without it, ``record`` (the backbone's declared default file). A file that
    carries the record's file name must match the record's sha256; ``ctx.weights_sha256`` is checked
    too. A Models Genesis file must have our format and the same backbone name.
    """
    kind = ctx.spec.kind
    path = resolve_imagenet_file(backbone.name, record, ctx.weights)
    digest = sha256_file(path)
    if record is not None and record.file == path.name:
        record.check_digest(path, digest)
    if ctx.weights_sha256 is not None and not digest.startswith(ctx.weights_sha256.lower()):
        raise ValueError(
            f"checksum mismatch for {str(path)!r}: expected sha256 {ctx.weights_sha256!r}, got {digest!r}"
        )
    state, meta = load_weights_file(path, advice=_advice(backbone.name, kind, path, record))
    is_pretrained = meta is not None and meta.get("format") == GENESIS_FORMAT
    if kind in ("genesis", "mim"):
        objective = (meta or {}).get("objective", "genesis")  # files written before "mim" existed are Genesis
        make = f"create one with `fewshot pretrain --objective {kind} --backbone {backbone.name} --out FILE`"
        if not is_pretrained:
            raise ValueError(
                f"{str(path)!r} is not a fewshot pretrained encoder file (format {GENESIS_FORMAT!r}); {make}"
            )
        if objective != kind:
            raise ValueError(
                f"{str(path)!r} was pretrained with objective {objective!r}: load it with init {objective!r}, "
                f"not {kind!r} (or {make})"
            )
    if kind == "imagenet" and record is not None and record.make is not None and (
        meta is None or meta.get("format") != IMPORT_FORMAT
    ):
        raise ValueError(
            f"{str(path)!r} is not an imported {backbone.name} file (format {IMPORT_FORMAT!r}); make it with "
            f"`{record.make}`"
        )
    if meta is not None and meta.get("backbone") not in (None, backbone.name):
        raise ValueError(
            f"{str(path)!r} holds weights for backbone {meta.get('backbone')!r}, not {backbone.name!r}"
        )
    if meta is not None and isinstance(meta.get("record"), Mapping):
        file_record: WeightsRecord | None = WeightsRecord.from_dict(meta["record"])
    else:
        file_record = record if record is not None and record.file == path.name else None
    return LoadedWeights(state=state, path=path, digest=digest, meta=meta, record=file_record)


def read_and_reset(backbone: StagedBackbone, ctx: InitContext) -> tuple[LoadedWeights, InitReport]:
    """Common start of the file-based schemes: read and verify the file, then ``random:kaiming``
    with ``ctx.generator`` as the base; returns the file and a report naming it (source, sha256, record)."""
    from fewshot.backbones.inits.random import random_init_

    src = ctx.read(backbone)
    report = ctx.new_report()
    report.source, report.sha256, report.record = str(src.path), src.digest, src.record
    random_init_(backbone, "kaiming", ctx.generator)
    return src, report
