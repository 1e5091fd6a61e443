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


def _stored(las: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]):
    """``las`` (nibabel order, LAS) stored with its axes permuted by ``perm`` and flipped, the affine keeping
    every voxel's world position: ``(stored array, its affine)``."""
    out, index = np.transpose(las, perm), np.eye(4)[:, [*perm, 3]]
    for axis in flips:
        out = np.flip(out, axis)
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1.0, out.shape[axis] - 1
        index = index @ flip
    return np.ascontiguousarray(out), affine @ index


@pytest.mark.parametrize("size", [(6, 9), (7, 7)])
@pytest.mark.parametrize("perm, flips", [((0, 1, 2), ()), ((1, 0, 2), (0,)), ((2, 0, 1), (1,))])
def test_save_nifti_writes_every_voxel_back_where_the_file_had_it(tmp_path, size, perm, flips):
    """A scan with every voxel distinct, non-square and square slices, stored LAS or permuted and flipped: read,
    written back with ``save_nifti`` and read with nibabel, it is the stored array voxel for voxel, with the
    stored affine; read again, the canonical array.

    Fails if ``save_nifti`` swaps H and W (``np.transpose(array_zhw, (2, 1, 0))``: square slices come back
    transposed, non-square ones with the wrong shape; a swap in its LAS branch alone fails the LAS cases)."""
    h, w = size
    las = np.arange(h * w * 4, dtype=np.float32).reshape(h, w, 4)  # nibabel (i, j, k), LAS
    base = np.diag([-1.5, 2.0, 3.0, 1.0])
    base[:3, 3] = [10, -20, 30]
    stored, affine = _stored(las, base, perm, flips)
    nib.save(nib.Nifti1Image(stored, affine), str(tmp_path / "scan.nii.gz"))
    v = load_nifti_pair(tmp_path / "scan.nii.gz", None, subject="s", modality="MR", label_map=CHAOS_MR)
    assert v.shape == (4, h, w) and v.image[1, 2, 3] == las[2, 3, 1]  # canonical (Z, H, W) = LAS (k, i, j)
    out = save_nifti(v.image, v, tmp_path / "back.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(back.dataobj), stored)
    np.testing.assert_allclose(back.affine, affine)
    again = load_nifti_pair(out, None, subject="s", modality="MR", label_map=CHAOS_MR)
    np.testing.assert_array_equal(again.image, v.image)


@pytest.mark.parametrize("shape", [(3, 5, 8), (3, 8, 8)])
def test_save_nifti_of_a_volume_made_in_memory_puts_h_on_i_and_w_on_j(tmp_path, shape):
    """A ``(Z, H, W)`` array of a volume not read from a file: voxel ``(z, h, w)`` is written at nibabel
    ``(h, w, z)``, with the voxel sizes in that order.

    Fails if ``save_nifti`` swaps H and W (``np.transpose(array_zhw, (2, 1, 0))``, or only in its LAS branch)."""
    zhw = np.zeros(shape, np.uint8)
    zhw[1, 4, 6] = 1
    zhw[2, 0, 7] = 2
    affine = np.diag([-1.5, 2.0, 3.0, 1])
    v = Volume(zhw.astype(np.float32), None, (3.0, 1.5, 2.0), "s", "MR", CHAOS_MR, affine=affine)
    data = nib.load(str(save_nifti(zhw, v, tmp_path / "m.nii.gz")))
    assert data.shape == (shape[1], shape[2], shape[0]) and data.header.get_zooms() == (1.5, 2.0, 3.0)
    array = np.asarray(data.dataobj)
    assert array[4, 6, 1] == 1 and array[0, 7, 2] == 2 and array.sum() == 3


def test_load_nifti_pair_without_label(tmp_path):
    _write_pair(tmp_path, "1")
    v = load_nifti_pair(tmp_path / "image_1.nii.gz", None, subject="1", modality="MR", label_map=CHAOS_MR)
    assert v.label is None
    with pytest.raises(VolumeError, match="no label"):
        v.slices_with("liver")
