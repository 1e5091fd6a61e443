"""Volume validation, loaders and clear errors on bad input (synthetic files in tmp_path)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from episodes.data.labels import BTCV_CT, CHAOS_MR, canonical_organ, get_label_map
from episodes.data.loaders import load_btcv_png_folder, load_nifti_folder, load_ssl_alpnet_folder
from episodes.data.volumes import Volume, VolumeError, load_nifti_pair, save_nifti


def _write_pair(root, sid, shape=(16, 12, 5), affine=None, label_shape=None, organs=(1, 2)):
    rng = np.random.default_rng(int(sid))
    img = rng.uniform(0, 500, shape).astype(np.float32)
    lab = np.zeros(label_shape or shape, dtype=np.float32)
    for i, o in enumerate(organs):
        lab[2 + i * 3 : 4 + i * 3, 3:6, 1 + i] = o
    # LAS, the library's canonical orientation (as the SSL-ALPNet CHAOS files): read without reorienting
    affine = np.diag([-1.25, 1.25, 7.7, 1]) if affine is None else affine
    nib.save(nib.Nifti1Image(img, affine), str(root / f"image_{sid}.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.diag([-1.25, 1.25, 7.7, 1])), str(root / f"label_{sid}.nii.gz"))
    return img, lab


def test_label_maps_by_name():
    assert CHAOS_MR.value("liver") == 1 and CHAOS_MR.value("Right Kidney") == 2
    assert BTCV_CT.value("liver") == 6 and BTCV_CT.value("LK") == 3 and BTCV_CT.value("kid_r") == 2
    assert BTCV_CT.name_of(11) == "pancreas"
    assert canonical_organ("left-kidney") == "left_kidney"
    with pytest.raises(KeyError, match="choices"):
        CHAOS_MR.value("pancreas")
    with pytest.raises(KeyError, match="choices"):
        get_label_map("nope")


def test_ssl_alpnet_folder_orientation_and_order(tmp_path):
    img10, lab10 = _write_pair(tmp_path, "10")
    _write_pair(tmp_path, "2")
    vols = load_ssl_alpnet_folder(tmp_path)
    assert [v.subject for v in vols] == ["2", "10"]  # numeric order, not lexicographic
    v = vols[1]
    assert v.shape == (5, 16, 12)  # (Z, H, W) = nibabel (X, Y, Z) transposed
    np.testing.assert_array_equal(v.image[3], img10[:, :, 3])
    np.testing.assert_array_equal(v.label[3], lab10[:, :, 3].astype(np.int16))
    assert v.spacing == pytest.approx((7.7, 1.25, 1.25))
    assert list(v.slices_with("liver")) == [1] and list(v.slices_with("right_kidney")) == [2]
    with pytest.raises(VolumeError, match="absent"):
        v.organ_mask("spleen")
    with pytest.raises(KeyError, match="choices"):
        v.organ_mask("heart")


def test_shape_and_affine_mismatch(tmp_path):
    _write_pair(tmp_path, "1", label_shape=(16, 12, 4))
    with pytest.raises(VolumeError, match=r"label_1\.nii\.gz: label/mask grid differs from its image .*shape"):
        load_ssl_alpnet_folder(tmp_path)
    other = tmp_path / "b"
    other.mkdir()
    _write_pair(other, "1", affine=np.diag([-2.0, 1.25, 7.7, 1]))
    with pytest.raises(VolumeError, match=r"grid differs from its image .*affine"):
        load_ssl_alpnet_folder(other)


def test_missing_empty_and_corrupt(tmp_path):
    with pytest.raises(VolumeError, match="not found"):
        load_ssl_alpnet_folder(tmp_path / "nope")
    with pytest.raises(VolumeError, match="no image_"):
        load_ssl_alpnet_folder(tmp_path)
    _write_pair(tmp_path, "1")
    (tmp_path / "label_1.nii.gz").unlink()
    with pytest.raises(VolumeError, match=r"label_1\.nii\.gz: label file missing"):
        load_ssl_alpnet_folder(tmp_path)
    _write_pair(tmp_path, "1")
    data = (tmp_path / "image_1.nii.gz").read_bytes()
    (tmp_path / "image_1.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeError, match=r"image_1.nii.gz: corrupt"):
        load_ssl_alpnet_folder(tmp_path)
    (tmp_path / "image_1.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(VolumeError, match=r"image_1\.nii\.gz"):
        load_ssl_alpnet_folder(tmp_path)


def test_nan_and_bad_shapes_rejected():
    with pytest.raises(VolumeError, match="NaN"):
        Volume(np.full((2, 4, 4), np.nan), None, (1, 1, 1), "x", "MR", CHAOS_MR)
    with pytest.raises(VolumeError, match="3D"):
        Volume(np.zeros((4, 4)), None, (1, 1, 1), "x", "MR", CHAOS_MR)
    with pytest.raises(VolumeError, match="non-integer"):
        Volume(np.zeros((2, 4, 4)), np.full((2, 4, 4), 0.5), (1, 1, 1), "x", "MR", CHAOS_MR)
    with pytest.raises(VolumeError, match="modality"):
        Volume(np.zeros((2, 4, 4)), None, (1, 1, 1), "x", "PET", CHAOS_MR)  # type: ignore[arg-type]


def test_btcv_png_layout(tmp_path):
    d = tmp_path / "subject_03" / "img"
    d.mkdir(parents=True)
    lab = np.zeros((9, 9, 4), dtype=np.float32)
    lab[2:5, 2:5, 1] = 6
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "subject_03" / "label_3.nii.gz"))
    for z in range(4):
        sl = np.full((9, 9), 10 * z, dtype=np.uint8)
        Image.fromarray(sl).save(d / f"image_SABS_3_slice{z:03d}.png")
    (v,) = load_btcv_png_folder(tmp_path)
    assert v.subject == "3" and v.shape == (3, 9, 9) and v.intensity == "window255"
    assert v.image[2].max() == 20 and list(v.slices_with("liver")) == [1]
    (d / "image_SABS_3_slice003.png").write_bytes(b"garbage")
    with pytest.raises(VolumeError, match=r"slice003\.png: corrupt"):
        load_btcv_png_folder(tmp_path)
    (d / "image_SABS_3_slice003.png").unlink()
    with pytest.raises(VolumeError, match="3 PNG slices but label"):
        load_btcv_png_folder(tmp_path)


def test_nifti_folder_and_atomic_save(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    aff = np.diag([0.8, 0.8, 3.0, 1.0])
    aff[:3, 3] = [10, -20, 5]
    hu = np.random.default_rng(0).integers(-1000, 1000, (8, 8, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "images" / "ab.nii.gz"))
    lab = np.zeros((8, 8, 3), np.uint8)
    lab[1:3, 1:3, 1] = 1
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "labels" / "ab.nii.gz"))
    (v,) = load_nifti_folder(tmp_path, modality="CT", label_map=BTCV_CT)
    assert v.subject == "ab" and v.intensity == "hu" and v.has_organ("spleen")
    out = save_nifti(v.label.astype(np.uint8), v, tmp_path / "pred.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, aff)
    np.testing.assert_array_equal(np.asarray(back.dataobj), lab)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_nifti(v.label, v, out)
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_nifti_pair_without_label(tmp_path):
    _write_pair(tmp_path, "1")
    v = load_nifti_pair(tmp_path / "image_1.nii.gz", None, subject="1", modality="MR", label_map=CHAOS_MR)
    assert v.label is None
    with pytest.raises(VolumeError, match="no label"):
        v.slices_with("liver")
