"""Pretrained weights as declared data (in the spirit of timm's ``PretrainedCfg`` and the encoder
weight tables of segmentation_models_pytorch).

A :class:`WeightsRecord` says where a weights file comes from and how to check it: backbones
declare their ImageNet record at registration (``register_backbone(..., weights={"imagenet":
WeightsRecord(...)})``); a Models Genesis file carries its own record in its metadata. Nothing is
ever downloaded: ``source`` is information for the user, the file is read from disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMPORT_FORMAT", "WeightsRecord", "normalise_sha256", "torchvision_imagenet"]

#: Per-channel RGB normalisation of the torchvision ImageNet classifiers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``meta["format"]`` of pretrained weights converted from another framework (:mod:`fewshot.backbones.keras_resnet`).
IMPORT_FORMAT = "fewshot-imported-weights/1"

_HEX = frozenset("0123456789abcdef")


def normalise_sha256(value: str | None, what: str = "sha256") -> str | None:
    """Lower-case hex sha256 (8 to 64 digits: a prefix or the full digest); ``ValueError`` otherwise."""
    if value is None:
        return None
    v = str(value).lower()
    if len(v) < 8 or not set(v) <= _HEX or len(v) > 64:
        raise ValueError(f"{what} must be a sha256 in hex (8 to 64 hex digits), got {value!r}")
    return v


@dataclass(frozen=True)
class WeightsRecord:
    """Declared facts about one weights file.

    Attributes:
        init: the init scheme the file serves (``"imagenet"``, ``"genesis"``).
        source: where the file comes from (a URL, or how it was made), as information only.
        file: file name (for ``imagenet``: the official name looked up in
            ``torch.hub.get_dir()/checkpoints``).
        sha256: sha256 of the file, full hex or the prefix its publisher gives
            (torchvision publishes the first 8 hex digits in the file name); ``None``: unknown.
        mean, std: per-channel input normalisation the weights were trained with (``None``: unknown).
        notes: free text (licence, training data, deviations).
        make: the command that makes :attr:`file` from :attr:`source` when the file is not published as such
            (an imported format); ``None``: the file is downloaded as it is.
    """

    init: str
    source: str | None = None
    file: str | None = None
    sha256: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: str = ""
    make: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sha256", normalise_sha256(self.sha256, f"WeightsRecord({self.init!r}).sha256")
        )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(x) for x in value))
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and self.std is not None and len(self.mean) != len(self.std)
        ):
            raise ValueError("WeightsRecord mean and std must both be given with one value per channel")

    def check_digest(self, path: str | Path, digest: str) -> None:
        """Raise ``ValueError`` if the file's hex ``digest`` does not start with :attr:`sha256`."""
        if self.sha256 is not None and not digest.startswith(self.sha256):
            where = f" (official file from {self.source})" if self.source else ""
            raise ValueError(
                f"checksum mismatch for {str(path)!r}: the {self.init} record{where} declares a sha256 "
                f"starting with {self.sha256!r} but the file hashes to {digest[:16]}...; the file is "
                f"corrupt or not the declared file: replace it"
                + (f" (re-download {self.source})" if self.source and "://" in self.source else "")
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), safe for YAML and ``torch.load(weights_only=True)``."""
        d = dataclasses.asdict(self)
        for name in ("mean", "std"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightsRecord:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown WeightsRecord key(s) {unknown}; valid keys: {names}")
        return cls(**dict(data))


def torchvision_imagenet(file: str, sha256: str, notes: str = "") -> WeightsRecord:
    """Record of an official torchvision ``IMAGENET1K_V1`` file (``https://download.pytorch.org/models/<file>``)."""
    return WeightsRecord(
        init="imagenet",
        source=f"https://download.pytorch.org/models/{file}",
        file=file,
        sha256=sha256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        notes=notes
        or "torchvision IMAGENET1K_V1 (BSD-3-Clause); sha256 prefix as published in the file name",
    )
