"""Dataset registry: one name per supported data layout, the single source of dataset names.

``load_dataset(name, root)`` returns raw (un-normalised) volumes sorted by subject id,
the order folds are built from.

==============  ==========================================================  ==========
name            layout                                                      label map
==============  ==========================================================  ==========
``chaos-mr``    ``image_<id>.nii.gz`` + ``label_<id>.nii.gz`` (SSL-ALPNet)  CHAOS
``btcv-ct``     ``subject_<ii>/img/*.png`` + ``label_<i>.nii.gz``           BTCV
``chaos-dicom`` CHAOS original ``<id>/T2SPIR/DICOM_anon`` + ``Ground``      CHAOS
``nifti``       ``images/*.nii.gz`` (+ ``labels/``), CT in HU by default    given
``phantom-ct``  built-in synthetic CT phantom (no files)                    phantom
``phantom-mr``  built-in synthetic MR phantom (no files)                    phantom
==============  ==========================================================  ==========

A new layout is one decorated loader ``(root, **kwargs) -> list[Volume]``::

    @register_dataset("my-ct", modality="CT", label_map=BTCV_CT, subdir="my_ct_folder")
    def load_my_ct(root, **kwargs): ...

Names are unique: registering a name twice raises ``ValueError``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dicom import load_chaos_dicom_folder
from .labels import BTCV_CT, CHAOS_MR, LabelMap, get_label_map
from .loaders import load_btcv_png_folder, load_nifti_folder, load_ssl_alpnet_folder
from .pack import is_pack
from .phantom import make_phantom_dataset
from .volumes import Modality, Volume, VolumeError

__all__ = [
    "DATA_ENV",
    "DatasetInfo",
    "check_loader_args",
    "data_root",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

#: Environment variable naming the folder that holds the real data sets.
DATA_ENV = "FEWSHOT_DATA"

Loader = Callable[..., list[Volume]]


@dataclass(frozen=True)
class DatasetInfo:
    """How to load one dataset.

    Attributes:
        name: registry name.
        loader: ``(root, **kwargs) -> list[Volume]``; ``root`` is ``None`` when ``needs_root`` is false.
        modality: ``"CT"`` or ``"MR"``.
        label_map: label map of the volumes (the default one for ``nifti``).
        subdir: default sub-folder under ``$FEWSHOT_DATA``; ``None``: the folder must be given.
        needs_root: ``False`` for built-in data (phantoms) that read no files.
        loader_args: the keyword arguments ``loader`` passes on (``data.loader_args`` may set them);
            ``None``: whatever ``loader`` itself accepts by keyword.
    """

    name: str
    loader: Loader
    modality: Modality
    label_map: LabelMap
    subdir: str | None = None
    needs_root: bool = True
    loader_args: tuple[str, ...] | None = None

    def accepted_args(self) -> tuple[str, ...]:
        """The keyword arguments ``load_dataset(name, root, **kwargs)`` accepts for this dataset."""
        if self.loader_args is not None:
            names = self.loader_args
        else:
            params = inspect.signature(self.loader).parameters.values()
            names = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))[1:]
        return (*names, "modality", "label_map") if self.name == "nifti" else names


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    modality: Modality,
    label_map: LabelMap,
    subdir: str | None = None,
    needs_root: bool = True,
    passes_to: Callable[..., Any] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader`` under ``name``; a name already registered raises ``ValueError``.

    ``passes_to``: the function a ``(root, **kwargs)`` loader hands its keyword arguments to; its keyword
    parameters (less those the loader sets itself) are the accepted ``data.loader_args``.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"dataset {name!r}: modality must be 'CT' or 'MR', got {modality!r}")

    def decorate(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(
                f"dataset {name!r} is already registered (by {_REGISTRY[name].loader.__qualname__})"
            )
        accepted = None
        if passes_to is not None:
            params = inspect.signature(passes_to).parameters.values()
            accepted = tuple(
                p.name for p in params
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("root", "modality", "label_map")
            )
        _REGISTRY[name] = DatasetInfo(name, loader, modality, label_map, subdir, needs_root, accepted)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; choices: {list_datasets()}")
    return _REGISTRY[name]


def check_loader_args(name: str, args: Mapping[str, Any], where: str = "data.loader_args") -> None:
    """Raise ``ValueError`` naming the key when ``args`` holds an argument dataset ``name``'s loader lacks."""
    accepted = dataset_info(name).accepted_args()
    for key in args:
        if key in accepted:
            continue
        hint = ""
        if ":" in str(key):  # YAML reads {n_subjects:6} as the key "n_subjects:6"
            hint = "; YAML needs a space after the colon ({n_subjects: 6})"
        elif close := difflib.get_close_matches(str(key), accepted, n=1):
            hint = f"; did you mean {close[0]!r}?"
        valid = ", ".join(accepted) or "none"
        raise ValueError(f"{where}: dataset {name!r} has no loader argument {str(key)!r}{hint} (valid: {valid})")


def data_root(name: str, root: str | Path | None = None) -> Path | None:
    """``root`` if given, else ``$FEWSHOT_DATA/<default sub-folder>``; ``None`` for built-in data."""
    info = dataset_info(name)
    if root is not None:
        return Path(root)
    if not info.needs_root:
        return None
    if info.subdir is None:
        raise ValueError(f"dataset {name!r} needs a data folder (--data DIR)")
    env = os.environ.get(DATA_ENV)
    if not env:
        raise ValueError(
            f"dataset {name!r}: pass --data DIR or set {DATA_ENV} to the folder holding {info.subdir}/"
        )
    path = Path(env) / info.subdir
    if not path.is_dir():
        raise VolumeError(f"{path}: not found (from {DATA_ENV}={env})")
    return path


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    modality: Modality | None = None,
    label_map: str | LabelMap | None = None,
    **kwargs: Any,
) -> list[Volume]:
    """Raw volumes of dataset ``name``; ``modality``/``label_map`` apply to ``nifti`` folders.

    ``root`` may also be a pack of the data set (a ``.npz`` file made by ``fewshot pack``,
    :mod:`episodes.data.pack`): its volumes are the folder's, as loaded with the loader arguments it records.
    """
    info = dataset_info(name)
    if is_pack(root):
        return _load_pack(name, Path(root), modality=modality, label_map=label_map, **kwargs)  # type: ignore[arg-type]
    path = data_root(name, root)
    if name == "nifti":
        lm = get_label_map(label_map) if isinstance(label_map, str) else (label_map or info.label_map)
        return info.loader(path, modality=modality or info.modality, label_map=lm, **kwargs)
    return info.loader(path, **kwargs)


# --------------------------------------------------------------------------------------
# The built-in layouts


@register_dataset(
    "chaos-mr", modality="MR", label_map=CHAOS_MR, subdir="chaos_mr_t2_ssl_alpnet_preproc",
    passes_to=load_ssl_alpnet_folder,
)
def _chaos_mr(root: Path, **kwargs: Any) -> list[Volume]:
    return load_ssl_alpnet_folder(root, **kwargs)


@register_dataset(
    "btcv-ct", modality="CT", label_map=BTCV_CT, subdir="sabs_btcv_ct_ssl_alpnet_preproc",
    passes_to=load_btcv_png_folder,
)
def _btcv_ct(root: Path, **kwargs: Any) -> list[Volume]:
    return load_btcv_png_folder(root, **kwargs)


@register_dataset("chaos-dicom", modality="MR", label_map=CHAOS_MR, passes_to=load_chaos_dicom_folder)
def _chaos_dicom(root: Path, **kwargs: Any) -> list[Volume]:
    return load_chaos_dicom_folder(root, **kwargs)


@register_dataset("nifti", modality="CT", label_map=BTCV_CT, passes_to=load_nifti_folder)
def _nifti(root: Path, **kwargs: Any) -> list[Volume]:
    return load_nifti_folder(root, **kwargs)


@register_dataset(
    "phantom-ct", modality="CT", label_map=get_label_map("phantom"), needs_root=False, passes_to=make_phantom_dataset
)
def _phantom_ct(root: Path | None = None, **kwargs: Any) -> list[Volume]:
    return make_phantom_dataset(modality="CT", **kwargs)


@register_dataset(
    "phantom-mr", modality="MR", label_map=get_label_map("phantom"), needs_root=False, passes_to=make_phantom_dataset
)
def _phantom_mr(root: Path | None = None, **kwargs: Any) -> list[Volume]:
    return make_phantom_dataset(modality="MR", **kwargs)


def _load_pack(
    name: str, path: Path, *, modality: Modality | None, label_map: str | LabelMap | None, **kwargs: Any
) -> list[Volume]:
    """``load_dataset`` of a pack: ``subjects`` selects; other loader arguments must be those it was packed with."""
    from episodes.data.pack import pack_loader_args, read_pack

    subjects = kwargs.pop("subjects", None)
    packed = pack_loader_args(path)
    differ = {k: v for k, v in kwargs.items() if packed.get(k, _UNSET) != v}
    if differ:
        raise VolumeError(
            f"{path}: packed with loader arguments {packed}; {differ} cannot be applied to a pack: make the pack "
            "again from the folder with them"
        )
    volumes = read_pack(path, dataset=name, subjects=subjects)
    wanted_map = get_label_map(label_map) if isinstance(label_map, str) else label_map
    for v in volumes:
        if modality is not None and v.modality != modality:
            raise VolumeError(f"{path}: subject {v.subject} is {v.modality} in the pack, not {modality}")
        if wanted_map is not None and v.label_map != wanted_map:
            raise VolumeError(f"{path}: subject {v.subject} has label map {v.label_map.name!r}, not {wanted_map.name!r}")
    return volumes


_UNSET = object()
