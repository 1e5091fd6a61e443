"""Dataset registry: one name per supported data layout.

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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .labels import BTCV_CT, CHAOS_MR, LabelMap, get_label_map
from .phantom import make_phantom_dataset
from .volumes import (
    Modality,
    Volume,
    VolumeError,
    load_btcv_png_folder,
    load_chaos_dicom_folder,
    load_nifti_folder,
    load_ssl_alpnet_folder,
)

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DatasetInfo",
    "data_root",
    "dataset_info",
    "list_datasets",
    "load_dataset",
]

#: Environment variable naming the folder that holds the real data sets.
DATA_ENV = "FEWSHOT_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """How to load one dataset: modality, label map, default sub-folder under ``$FEWSHOT_DATA``."""

    name: str
    loader: Callable[..., list[Volume]]
    modality: Modality
    label_map: LabelMap
    subdir: str | None


def _phantom(modality: Modality) -> Callable[..., list[Volume]]:
    def load(root: str | Path | None = None, **kwargs: Any) -> list[Volume]:
        return make_phantom_dataset(modality=modality, **kwargs)

    return load


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("chaos-mr", load_ssl_alpnet_folder, "MR", CHAOS_MR, "chaos_mr_t2_ssl_alpnet_preproc"),
        DatasetInfo("btcv-ct", load_btcv_png_folder, "CT", BTCV_CT, "sabs_btcv_ct_ssl_alpnet_preproc"),
        DatasetInfo("chaos-dicom", load_chaos_dicom_folder, "MR", CHAOS_MR, None),
        DatasetInfo("nifti", load_nifti_folder, "CT", BTCV_CT, None),
        DatasetInfo("phantom-ct", _phantom("CT"), "CT", get_label_map("phantom"), None),
        DatasetInfo("phantom-mr", _phantom("MR"), "MR", get_label_map("phantom"), None),
    )
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choices: {list_datasets()}")
    return DATASETS[name]


def data_root(name: str, root: str | Path | None = None) -> Path | None:
    """``root`` if given, else ``$FEWSHOT_DATA/<default sub-folder>``; ``None`` for phantoms."""
    info = dataset_info(name)
    if root is not None:
        return Path(root)
    if info.subdir is None:
        if name.startswith("phantom"):
            return None
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
    """Raw volumes of dataset ``name``; ``modality``/``label_map`` apply to ``nifti`` folders."""
    info = dataset_info(name)
    path = data_root(name, root)
    if name == "nifti":
        lm = get_label_map(label_map) if isinstance(label_map, str) else (label_map or info.label_map)
        return load_nifti_folder(path, modality=modality or info.modality, label_map=lm, **kwargs)  # type: ignore[arg-type]
    return info.loader(path, **kwargs)
