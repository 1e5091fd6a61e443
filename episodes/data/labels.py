"""Named label maps: users say ``liver``, never a magic number.

Every dataset has a :class:`LabelMap` from canonical organ names to the integer
values stored in its label files. Aliases (``rk``, ``kidney_r``, ``right kidney``)
resolve to the canonical name; an unknown name raises with the list of choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ABDOMINAL_ORGANS",
    "BTCV_CT",
    "CHAOS_MR",
    "PHANTOM",
    "LabelMap",
    "canonical_organ",
    "get_label_map",
    "known_organs",
]

#: The four organs of the SSL-ALPNet abdominal benchmark, in the order tables use.
ABDOMINAL_ORGANS: tuple[str, ...] = ("liver", "right_kidney", "left_kidney", "spleen")

_ALIASES: dict[str, str] = {
    "rk": "right_kidney",
    "kid_r": "right_kidney",
    "kidney_r": "right_kidney",
    "lk": "left_kidney",
    "kid_l": "left_kidney",
    "kidney_l": "left_kidney",
    "ivc": "inferior_vena_cava",
    "ps_vein": "portal_splenic_vein",
    "ag_r": "right_adrenal_gland",
    "ag_l": "left_adrenal_gland",
}


def canonical_organ(name: str) -> str:
    """Normalise an organ name: lower case, spaces/dashes to ``_``, aliases resolved."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(key, key)


@dataclass(frozen=True)
class LabelMap:
    """Mapping from canonical organ names to label values of one dataset."""

    name: str
    organs: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = list(self.organs.values())
        if len(set(values)) != len(values):
            raise ValueError(f"label map {self.name!r} has duplicate values: {dict(self.organs)}")
        if any(v <= 0 for v in values):
            raise ValueError(f"label map {self.name!r}: 0 is background, organ values must be > 0")
        object.__setattr__(self, "organs", MappingProxyType(dict(self.organs)))

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, int]]]:
        # MappingProxyType cannot be pickled (DataLoader workers, ddp_spawn): rebuild from a dict.
        return (LabelMap, (self.name, dict(self.organs)))

    def value(self, organ: str) -> int:
        """Label value of ``organ`` (any alias); ``KeyError`` listing the choices if unknown."""
        key = canonical_organ(organ)
        if key not in self.organs:
            raise KeyError(
                f"unknown organ {organ!r} for dataset {self.name!r}; choices: {sorted(self.organs)}"
            )
        return int(self.organs[key])

    def name_of(self, value: int) -> str:
        for organ, v in self.organs.items():
            if v == value:
                return organ
        raise KeyError(f"label value {value} is not defined for dataset {self.name!r}")

    def to_dict(self) -> dict[str, int]:
        return dict(self.organs)


CHAOS_MR = LabelMap("chaos-mr", {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4})

BTCV_CT = LabelMap(
    "btcv-ct",
    {
        "spleen": 1,
        "right_kidney": 2,
        "left_kidney": 3,
        "gallbladder": 4,
        "esophagus": 5,
        "liver": 6,
        "stomach": 7,
        "aorta": 8,
        "inferior_vena_cava": 9,
        "portal_splenic_vein": 10,
        "pancreas": 11,
        "right_adrenal_gland": 12,
        "left_adrenal_gland": 13,
    },
)

#: The synthetic phantom uses the CHAOS values for its four organs.
PHANTOM = LabelMap("phantom", {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4})

_MAPS = {m.name: m for m in (CHAOS_MR, BTCV_CT, PHANTOM)}


def get_label_map(name: str) -> LabelMap:
    """The built-in label map called ``name`` (``chaos-mr``, ``btcv-ct``, ``phantom``)."""
    if name not in _MAPS:
        raise KeyError(f"no built-in label map {name!r}; choices: {sorted(_MAPS)}")
    return _MAPS[name]


def known_organs() -> list[str]:
    """Every organ name of the built-in label maps, sorted."""
    return sorted({organ for m in _MAPS.values() for organ in m.organs})
