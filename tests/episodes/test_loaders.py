"""Bad input to the loaders: label files are never taken for scans, label errors name the label file."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from episodes.data.labels import BTCV_CT, CHAOS_MR
from episodes.data.loaders import (
    LABEL_LIKE_MAX_VALUES,
    load_btcv_png_folder,
    load_nifti_folder,
    load_ssl_alpnet_folder,
)
from episodes.data.volumes import VolumeError, load_nifti_pair

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def _scan(seed: int = 0, shape=(10, 9, 4)) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.random.default_rng(seed).uniform(-1000, 1000, shape).astype(np.float32)


def _label(shape=(10, 9, 4)) -> np.ndarray:  # type: ignore[no-untyped-def]
    lab = np.zeros(shape, np.uint8)
    lab[2:5, 2:5, 1] = 1
    lab[5:8, 5:8, 2] = 6
    return lab


def _save(array, path) -> None:  # type: ignore[no-untyped-def]
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def _load(root):  # type: ignore[no-untyped-def]
    return load_nifti_folder(root, modality="CT", label_map=BTCV_CT)


def test_flat_folder_of_scans_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _save(_scan(0), tmp_path / "case01.nii.gz")
    _save(np.rint(_scan(1)).astype(np.int16), tmp_path / "case02.nii")  # integer HU: many values
    vols = _load(tmp_path)
    assert [v.subject for v in vols] == ["case01", "case02"] and all(v.label is None for v in vols)


@pytest.mark.parametrize(
    "name",
    ["label_01.nii.gz", "Seg01.nii.gz", "mask.nii", "case01_seg.nii.gz", "case01-label.nii.gz", "ct_gt.nii"],
)
def test_flat_folder_refuses_label_file_names(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    _save(_scan(0), tmp_path / "case00.nii.gz")
    _save(_scan(1), tmp_path / name)  # refused by name, whatever it holds
    with pytest.raises(VolumeError, match=re.escape(name) + r": file name looks like a label/mask.*images"):
        _load(tmp_path)


def test_names_that_are_not_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for i, name in enumerate(["case_07.nii.gz", "liver_ct.nii.gz", "t2segue.nii.gz"]):
        _save(_scan(i), tmp_path / name)
    assert len(_load(tmp_path)) == 3


def test_label_valued_volume_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _save(_scan(0), tmp_path / "a.nii.gz")
    _save(_label().astype(np.float32), tmp_path / "b.nii.gz")  # label values under a scan-like name
    with pytest.raises(
        VolumeError, match=r"b\.nii\.gz: holds only 3 distinct integer value\(s\) \[0, 1, 6\]"
    ):
        _load(tmp_path)


def test_label_valued_volume_refused_in_images_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "images").mkdir()
    values = np.arange(LABEL_LIKE_MAX_VALUES, dtype=np.int16)
    _save(np.resize(values, (10, 9, 4)), tmp_path / "images" / "x.nii.gz")
    with pytest.raises(VolumeError, match=r"images/x\.nii\.gz: holds only 16 distinct"):
        _load(tmp_path)
    # one value more, or non-integer values, is a scan
    _save(
        np.resize(np.arange(LABEL_LIKE_MAX_VALUES + 1, dtype=np.int16), (10, 9, 4)),
        tmp_path / "images" / "x.nii.gz",
    )
    assert len(_load(tmp_path)) == 1
    _save(np.resize(values + 0.5, (10, 9, 4)).astype(np.float32), tmp_path / "images" / "x.nii.gz")
    assert len(_load(tmp_path)) == 1


def test_images_and_labels_folders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _save(_scan(0), tmp_path / "images" / "s1.nii.gz")
    _save(_label(), tmp_path / "labels" / "s1.nii.gz")
    (v,) = _load(tmp_path)
    assert v.has_organ("liver") and v.has_organ("spleen")


def test_nifti_folder_label_errors_name_the_label_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _save(_scan(0), tmp_path / "images" / "s1.nii.gz")
    bad = _label().astype(np.float32)
    bad[0, 0, 0] = np.nan
    _save(bad, tmp_path / "labels" / "s1.nii.gz")
    with pytest.raises(VolumeError, match=r"labels/s1\.nii\.gz: label contains NaN"):
        _load(tmp_path)
    bad[0, 0, 0] = 0.5
    _save(bad, tmp_path / "labels" / "s1.nii.gz")
    with pytest.raises(VolumeError, match=r"labels/s1\.nii\.gz: label has non-integer values"):
        _load(tmp_path)


def test_pair_and_ssl_alpnet_label_errors_name_the_label_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _save(_scan(0), tmp_path / "image_1.nii.gz")
    bad = _label().astype(np.float32)
    bad[1, 1, 1] = 2.4
    _save(bad, tmp_path / "label_1.nii.gz")
    with pytest.raises(VolumeError, match=r"label_1\.nii\.gz: label has non-integer values") as err:
        load_ssl_alpnet_folder(tmp_path)
    assert "image_1" not in str(err.value)
    with pytest.raises(VolumeError, match=r"label_1\.nii\.gz: label has non-integer"):
        load_nifti_pair(
            tmp_path / "image_1.nii.gz",
            tmp_path / "label_1.nii.gz",
            subject="1",
            modality="MR",
            label_map=CHAOS_MR,
        )


def test_btcv_label_errors_name_the_label_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "subject_01"
    (d / "img").mkdir(parents=True)
    lab = np.zeros((9, 9, 3), np.float32)
    lab[2, 2, 1] = np.inf
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(d / "label_1.nii.gz"))
    for z in range(3):
        Image.fromarray(np.full((9, 9), z, np.uint8)).save(d / "img" / f"slice{z}.png")
    with pytest.raises(VolumeError, match=r"label_1\.nii\.gz: label contains NaN/inf"):
        load_btcv_png_folder(tmp_path)
