"""Dataset registry: strict names, clear errors, every registered dataset loads or says why not."""

from __future__ import annotations

import os
import re

import pytest

import episodes
from episodes.data import datasets
from episodes.data.datasets import (
    DATA_ENV,
    data_root,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
)
from episodes.data.labels import CHAOS_MR
from episodes.data.volumes import Volume, VolumeError

BUILTIN = ["btcv-ct", "chaos-dicom", "chaos-mr", "nifti", "phantom-ct", "phantom-mr"]


@pytest.fixture
def registry(monkeypatch):  # type: ignore[no-untyped-def]
    """A private copy of the registry, so test registrations do not leak."""
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))


def test_builtin_names() -> None:
    assert list_datasets() == BUILTIN
    assert episodes.list_datasets is list_datasets


def test_duplicate_name_refused(registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="'chaos-mr' is already registered"):

        @register_dataset("chaos-mr", modality="MR", label_map=CHAOS_MR)
        def again(root, **kwargs):  # type: ignore[no-untyped-def]
            return []

    @register_dataset("my-mr", modality="MR", label_map=CHAOS_MR, needs_root=False)
    def mine(root=None, **kwargs):  # type: ignore[no-untyped-def]
        return ["loaded"]

    assert "my-mr" in list_datasets() and load_dataset("my-mr") == ["loaded"]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("my-mr", modality="MR", label_map=CHAOS_MR)(mine)
    with pytest.raises(ValueError, match="modality"):
        register_dataset("pet", modality="PET", label_map=CHAOS_MR)  # type: ignore[arg-type]


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(KeyError, match=r"unknown dataset 'chaos'; choices: \['btcv-ct'"):
        load_dataset("chaos")
    with pytest.raises(KeyError, match="choices"):
        dataset_info("nope")


@pytest.mark.parametrize("name", BUILTIN)
def test_every_dataset_loads_or_fails_clearly(name, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    info = dataset_info(name)
    if not info.needs_root:
        vols = load_dataset(name, n_subjects=2, shape=(12, 48, 48))
        assert len(vols) == 2 and all(isinstance(v, Volume) for v in vols)
        assert {v.modality for v in vols} == {info.modality}
        assert data_root(name) is None
        return
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeError, match=re.escape(str(empty))):
        load_dataset(name, empty)
    with pytest.raises(VolumeError, match="not found"):
        load_dataset(name, tmp_path / "missing")
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(ValueError, match="--data"):
        load_dataset(name)
    if info.subdir is not None:
        monkeypatch.setenv(DATA_ENV, str(tmp_path))
        with pytest.raises(VolumeError, match=f"{info.subdir}: not found"):
            load_dataset(name)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["chaos-mr", "btcv-ct"])
def test_real_datasets_resolve_from_env(name) -> None:  # type: ignore[no-untyped-def]
    if not os.environ.get(DATA_ENV):
        pytest.skip(f"{DATA_ENV} not set")
    root = data_root(name)
    assert root is not None and root.is_dir()
