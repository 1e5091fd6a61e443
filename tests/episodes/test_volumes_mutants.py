"""NIfTI read/write and the canonical orientation, checked voxel by voxel and header field by header field
(the mutants of episodes/data/volumes.py and geometry.py that main's tests left alive, docs/mutation-survivors.md)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from episodes.data.geometry import (
    InPlaneGrid,
    SourceGeometry,
    axcodes,
    check_affine,
    from_canonical,
    to_canonical,
)
from episodes.data.labels import CHAOS_MR
from episodes.data.volumes import (
    Volume,
    VolumeError,
    check_label_values,
    load_nifti_pair,
    numeric_key,
    read_mask_like,
    read_nifti,
    read_nifti_canonical,
    read_png,
    save_nifti,
)


def _save(path: Path, data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...] | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return img


def test_read_nifti_as_stored_and_canonical(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # nibabel (i, j, k)
    ras = np.diag([0.5, 0.75, 4.0, 1.0])  # R, A, S: i must be flipped to reach L
    ras[:3, 3] = [1.0, 2.0, 3.0]
    path = _save(tmp_path / "a.nii.gz", data, ras)
    arr, affine, spacing = read_nifti(path)
    assert arr.shape == (4, 2, 3) and np.array_equal(arr, np.transpose(data, (2, 0, 1)))
    assert spacing == (4.0, 0.5, 0.75)  # (z, h, w) = zooms (k, i, j)
    np.testing.assert_array_equal(affine, ras)
    arr, affine, spacing, source = read_nifti_canonical(path)
    assert np.array_equal(arr, np.transpose(data[::-1], (2, 0, 1)))  # i flipped
    assert spacing == (4.0, 0.5, 0.75) and axcodes(affine) == ("L", "A", "S")
    expected = ras.copy()
    expected[0, 0], expected[0, 3] = -0.5, 1.0 + 0.5 * (2 - 1)  # voxel 0 is now the old voxel i = 1
    np.testing.assert_allclose(affine, expected)
    assert source.shape == (2, 3, 4) and source.zooms == (0.5, 0.75, 4.0) and not source.is_identity
    np.testing.assert_array_equal(source.affine, ras)
    # a stored axis order other than (i, j, k) -> (L, A, S): an axis swap, zooms follow their axes
    swapped = np.zeros((4, 4))
    swapped[0, 1], swapped[1, 0], swapped[2, 2], swapped[3, 3] = -0.5, 0.75, 4.0, 1.0  # i -> A, j -> L
    _, aff2, spacing2, src2 = read_nifti_canonical(_save(tmp_path / "b.nii", data, swapped))
    assert (
        spacing2 == (4.0, 0.5, 0.75) and src2.zooms == (0.75, 0.5, 4.0) and axcodes(aff2) == ("L", "A", "S")
    )


def test_nifti_shapes_accepted_and_refused(tmp_path: Path) -> None:
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    arr, _, _ = read_nifti(_save(tmp_path / "t.nii", np.ones((2, 3, 4, 1), np.float32), las))
    assert arr.shape == (4, 2, 3)  # a trailing axis of length 1 is dropped
    with pytest.raises(VolumeError, match=r"a 4D scan \(shape \(2, 3, 4, 2\): 2 volumes\)"):
        read_nifti(_save(tmp_path / "f.nii", np.ones((2, 3, 4, 2), np.float32), las))
    with pytest.raises(VolumeError, match=r"expected a 3D volume, got shape \(2, 3\)"):
        read_nifti(_save(tmp_path / "2d.nii", np.ones((2, 3), np.float32), las))
    with pytest.raises(VolumeError, match="file not found"):
        read_nifti(tmp_path / "missing.nii")
    (tmp_path / "text.nii").write_text("not a nifti")
    with pytest.raises(VolumeError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "text.nii")
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), las)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "noaff.nii"))
    with pytest.raises(VolumeError, match="qform_code and sform_code are both 0"):
        read_nifti_canonical(tmp_path / "noaff.nii")
    img.set_sform(las, code=1)  # one code is enough
    nib.save(img, str(tmp_path / "sform.nii"))
    assert read_nifti_canonical(tmp_path / "sform.nii")[0].shape == (2, 2, 2)


def test_check_label_values_rounds_only_resampling_noise() -> None:
    out = check_label_values(np.array([0.0, 1.0009, 1.9991, 4.0]), "x")
    assert out.dtype == np.int16 and out.tolist() == [0, 1, 2, 4]
    with pytest.raises(VolumeError, match=r"^lab: label has non-integer values"):
        check_label_values(np.array([0.0, 1.0011]), "lab")
    assert check_label_values(np.array([], dtype=np.float32), "x").shape == (0,)
    assert check_label_values(np.array([3, 7], dtype=np.int64), "x").dtype == np.int16
    with pytest.raises(VolumeError, match=r"^lab: label contains NaN"):
        check_label_values(np.array([0.0, np.nan]), "lab")
    with pytest.raises(VolumeError, match="not numeric"):
        check_label_values(np.array(["a"]), "lab")


def test_volume_fields_are_normalised_and_checked() -> None:
    v = Volume(np.zeros((1, 2, 2), np.int32), np.ones((1, 2, 2), np.float64), (1, 2, 3), "s", "MR", CHAOS_MR)
    assert v.label is not None
    assert v.image.dtype == np.float32 and v.label.dtype == np.int16 and v.spacing == (1.0, 2.0, 3.0)
    assert isinstance(v.spacing[0], float) and v.affine.dtype == np.float64 and v.shape == (1, 2, 2)
    assert v.slices_with("liver").tolist() == [0] and v.has_organ("liver") and not v.has_organ("spleen")
    assert v.organ_mask("liver").all()
    with pytest.raises(VolumeError, match=r"organ 'spleen' \(label 4\) is absent"):
        v.organ_mask("spleen")
    for spacing in ((1.0, 0.0, 1.0), (1.0, 1.0), (1.0, -2.0, 1.0)):
        with pytest.raises(VolumeError, match="spacing must be 3 positive numbers"):
            Volume(np.zeros((1, 2, 2)), None, spacing, "s", "MR", CHAOS_MR)  # type: ignore[arg-type]
    with pytest.raises(VolumeError, match=r"affine must be 4x4, got \(3, 3\)"):
        Volume(np.zeros((1, 2, 2)), None, (1, 1, 1), "s", "MR", CHAOS_MR, affine=np.eye(3))
    with pytest.raises(VolumeError, match="modality must be 'CT' or 'MR'"):
        Volume(np.zeros((1, 2, 2)), None, (1, 1, 1), "s", "PET", CHAOS_MR)  # type: ignore[arg-type]
    with pytest.raises(VolumeError, match=r"^a\.nii: image contains 2 NaN/inf voxels"):
        Volume(np.array([[[np.nan, np.inf]]]), None, (1, 1, 1), "s", "MR", CHAOS_MR, source="a.nii")
    with pytest.raises(VolumeError, match=r"^subject s: image must be 3D"):
        Volume(np.zeros((2, 2)), None, (1, 1, 1), "s", "MR", CHAOS_MR)


def test_save_nifti_without_a_source_file(tmp_path: Path) -> None:
    affine = np.diag([-0.5, 0.75, 4.0, 1.0])
    affine[:3, 3] = [7.0, 8.0, 9.0]
    v = Volume(np.zeros((4, 2, 3)), None, (4.0, 0.5, 0.75), "s", "MR", CHAOS_MR, affine=affine)
    pred = np.arange(24, dtype=np.uint8).reshape(4, 2, 3)
    out = save_nifti(pred, v, tmp_path / "p.nii")
    back = _load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.transpose(pred, (1, 2, 0)))
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_zooms() == (0.5, 0.75, 4.0)  # (h, w, z) from spacing (z, h, w)
    assert np.asarray(back.dataobj).dtype == np.uint8
    with pytest.raises(
        VolumeError, match=r"array shape \(4, 3, 2\) differs from reference volume \(4, 2, 3\)"
    ):
        save_nifti(np.zeros((4, 3, 2)), v, tmp_path / "q.nii")
    save_nifti(pred * 0, v, out, overwrite=True)
    assert not np.asarray(_load(out).dataobj).any()


def test_save_nifti_back_in_the_files_orientation_and_gzip_header(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 5, (3, 4, 2)).astype(np.int16)  # stored RAS
    ras = np.diag([0.5, 0.75, 4.0, 1.0])
    ras[:3, 3] = [1.0, 2.0, 3.0]
    _save(tmp_path / "img.nii.gz", data.astype(np.float32), ras)
    _save(tmp_path / "lab.nii.gz", data, ras)
    v = load_nifti_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", subject="s", modality="MR",
                        label_map=CHAOS_MR)  # fmt: skip
    assert v.source_geometry is not None and not v.source_geometry.is_identity and v.label is not None
    out = save_nifti(v.label, v, tmp_path / "out.nii.gz")
    back = _load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)  # the file's own axis order and flips
    np.testing.assert_allclose(back.affine, ras)
    assert back.header.get_zooms() == (0.5, 0.75, 4.0)
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00"  # gzip, mtime 0
    assert raw[8] == 4  # XFL 4: compressed with the fastest level (1)
    assert raw[10 : 10 + len(b"out.nii\x00")] == b"out.nii\x00"  # the member name without .gz
    assert gzip.decompress(raw)[:4] == (348).to_bytes(4, "little")  # an uncompressed NIfTI-1 header follows
    plain = save_nifti(v.label, v, tmp_path / "out.nii")
    assert plain.read_bytes()[:4] == (348).to_bytes(4, "little")


def test_read_mask_like_grids(tmp_path: Path) -> None:
    data = np.zeros((3, 4, 2), np.float32)
    ras = np.diag([0.5, 0.75, 4.0, 1.0])
    _save(tmp_path / "img.nii", data, ras)
    image = load_nifti_pair(tmp_path / "img.nii", None, subject="s", modality="MR", label_map=CHAOS_MR)
    lab = np.zeros((3, 4, 2), np.float32)
    lab[2, 1, 0] = 1.0
    _save(tmp_path / "lab.nii", lab, ras)
    got = read_mask_like(image, tmp_path / "lab.nii")
    # i flipped
    assert got.dtype == np.int16 and got.shape == (2, 3, 4) and got[0, 0, 1] == 1 and got.sum() == 1
    # stored in another axis order but covering the same voxels: reoriented the same way
    swapped = np.transpose(lab, (1, 0, 2))
    aff = np.zeros((4, 4))
    aff[0, 1], aff[1, 0], aff[2, 2], aff[3, 3] = 0.5, 0.75, 4.0, 1.0
    _save(tmp_path / "swapped.nii", swapped, aff)
    assert np.array_equal(read_mask_like(image, tmp_path / "swapped.nii"), got)
    # no affine in the mask: taken on the image's stored grid when the stored shape is the image's
    img = nib.Nifti1Image(lab, ras)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "noaff.nii"))
    assert np.array_equal(read_mask_like(image, tmp_path / "noaff.nii"), got)
    shifted = ras.copy()
    shifted[0, 3] = 2.0
    _save(tmp_path / "moved.nii", lab, shifted)
    with pytest.raises(VolumeError, match=r"voxel corners 2\.0 mm apart"):
        read_mask_like(image, tmp_path / "moved.nii")
    _save(tmp_path / "small.nii", lab[:2], ras)
    with pytest.raises(VolumeError, match=r"shape \(2, 4, 2\) against \(3, 4, 2\)"):
        read_mask_like(image, tmp_path / "small.nii")
    nudged = ras.copy()
    nudged[1, 3] = 5e-4  # within 1e-3
    _save(tmp_path / "nudged.nii", lab, nudged)
    assert np.array_equal(read_mask_like(image, tmp_path / "nudged.nii"), got)


def test_geometry_checks_and_grid_offsets() -> None:
    check_affine(np.diag([1.0, 1.0, 1.0, 1.0]), "x")
    tilt = np.eye(4)
    tilt[0, 1] = 0.009  # |cos| 0.009 < 0.01: accepted
    check_affine(tilt, "x")
    tilt[0, 1] = 0.011
    with pytest.raises(VolumeError, match="sheared"):
        check_affine(tilt, "x")
    tiny = np.diag([1.0, 1e-7, 1.0, 1.0])
    with pytest.raises(VolumeError, match="zero-length axis"):
        check_affine(tiny, "x")
    check_affine(np.diag([1.0, 2e-6, 1.0, 1.0]), "x")
    with pytest.raises(VolumeError, match="not a finite 4x4"):
        check_affine(np.full((4, 4), np.nan), "x")
    with pytest.raises(VolumeError, match="not a finite 4x4"):
        check_affine(np.eye(3), "x")
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    data = np.arange(8).reshape(2, 2, 2)
    out, _, _, src = to_canonical(data, las, (1.0, 1.0, 1.0), "x")
    assert out is data and src.is_identity and from_canonical(out, src) is out
    bad = SourceGeometry(affine=np.diag([1.0, 1.0, 1.0, 1.0]), shape=(3, 2, 2), zooms=(1.0, 1.0, 1.0),
                         transform=np.array([[0, -1], [1, 1], [2, 1]], dtype=float))  # fmt: skip
    with pytest.raises(VolumeError, match="differs from the source scan"):
        from_canonical(data, bad)
    assert SourceGeometry(las, (2, 2, 2), (1.0, 1.0, 1.0), src.transform).axcodes == ("L", "A", "S")
    # grid: plan rounds to whole pixels (at least 1), crops centred, pads centred
    assert InPlaneGrid.plan((10, 3), (1.0, 0.1), (2.5, 1.0), 4) == InPlaneGrid((10, 3), (4, 1), 4)
    g = InPlaneGrid.plan((6, 2), (1.0, 1.0), (1.0, 1.0), 4)  # scaled (6, 2): crop rows by 1, pad columns by 1
    x = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    y = g.apply(x, fill=-1.0)
    assert y[0].tolist() == [[-1, 2, 3, -1], [-1, 4, 5, -1], [-1, 6, 7, -1], [-1, 8, 9, -1]]
    back = g.invert(np.ones((1, 4, 4), bool))
    assert back[0].tolist() == [[False, False]] + [[True, True]] * 4 + [[False, False]]
    with pytest.raises(VolumeError, match="differ from the planned grid"):
        g.apply(np.zeros((1, 5, 2), np.float32))
    with pytest.raises(VolumeError, match="differ from the grid size 4"):
        g.invert(np.zeros((1, 3, 4), bool))
    half = InPlaneGrid.plan((4, 4), (1.0, 1.0), (2.0, 2.0), 2)  # scaled (2, 2) == size: the plain resize
    lab = np.zeros((1, 4, 4), np.float32)
    lab[0, 2:, 2:] = 3.0
    assert half.apply(lab, mode="nearest")[0].tolist() == [[0, 0], [0, 3]]
    assert half.apply(lab)[0].tolist() == [[0, 0], [0, 3]]  # bilinear of 2 x 2 blocks: the block's value
    m = np.array([[[False, True], [False, False]]])
    assert (
        half.invert(m)[0].tolist()
        == [[False, False, True, True], [False, False, True, True]] + [[False] * 4] * 2
    )


def test_a_loaded_scan_names_its_file(tmp_path: Path) -> None:
    """``Volume.source`` is the image file's path, with or without a label (the superpixel cache keys on that
    file's SHA-256). Kills ``load_nifti_pair__mutmut_14``, ``__mutmut_24`` (``None``) and ``__mutmut_26``
    (``"None"``): checked by hand, fail on the mutants, pass on main."""
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    image = _save(tmp_path / "img.nii.gz", np.zeros((2, 2, 2), np.float32), las)
    label = _save(tmp_path / "lab.nii.gz", np.ones((2, 2, 2), np.int16), las)
    alone = load_nifti_pair(image, None, subject="s", modality="MR", label_map=CHAOS_MR)
    assert alone.source == str(image)
    paired = load_nifti_pair(str(image), label, subject="s", modality="MR", label_map=CHAOS_MR)
    assert paired.source == str(image) and paired.label is not None and paired.label.all()


def test_numeric_key_sorts_numbers_first_then_names() -> None:
    """Numeric ids in numeric order, then the other ids by name. Kills ``numeric_key__mutmut_2`` (``int("b")``
    raises) and ``__mutmut_4`` (names keyed 0 sort first): checked by hand, fail on the mutants, pass on main."""
    assert sorted(["b", "10", "a", "2"], key=numeric_key) == ["2", "10", "a", "b"]
    assert numeric_key("7") == (7, "7") and numeric_key("s01") == (1 << 30, "s01")


def test_read_png_greys_an_rgb_slice(tmp_path: Path) -> None:
    """An RGB PNG comes back as one 2D greyscale array (ITU-R 601 luma, as Pillow's ``L``: red 76, green 150,
    blue 29, grey unchanged). Kills ``read_png__mutmut_3``, ``__mutmut_5`` (RGB kept, 3D), ``__mutmut_6`` and
    ``__mutmut_7`` (an unknown mode: ``ValueError``) and ``__mutmut_8``: checked by hand, fail on the mutants,
    pass on main."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = read_png(tmp_path / "rgb.png")
    assert got.dtype == np.uint8 and got.tolist() == [[76, 150], [29, 100]]


def test_read_png_keeps_16_and_32_bit_slices(tmp_path: Path) -> None:
    """16-bit (``I;16``) and 32-bit integer (``I``) slices are read as stored, not cut to 8 bits (which would
    clip 1000 and 40000 to 255). The installed Pillow opens 16-bit PNGs as ``I;16`` (older releases as ``I``)
    and cannot write an ``I`` PNG, so an int32 TIFF, read through the same call, gives the ``I`` mode. Kills
    ``read_png__mutmut_4``, ``__mutmut_8``, ``__mutmut_13``, ``__mutmut_14`` (16-bit) and ``__mutmut_11``,
    ``__mutmut_12`` (``I``): checked by hand, fail on the mutants, pass on main. ``__mutmut_9`` (``"L"`` dropped)
    is equivalent: converting an ``L`` image to ``L`` returns a copy, the same array."""
    Image.fromarray(np.array([[1000, 40000], [0, 255]], np.uint16)).save(tmp_path / "u16.png")
    got = read_png(tmp_path / "u16.png")
    assert got.dtype == np.uint16 and got.tolist() == [[1000, 40000], [0, 255]]
    Image.fromarray(np.array([[1000, -5, 70000]], np.int32)).save(tmp_path / "i32.tif")
    got = read_png(tmp_path / "i32.tif")
    assert got.dtype == np.int32 and got.tolist() == [[1000, -5, 70000]]
    Image.fromarray(np.array([[0, 7, 255]], np.uint8)).save(tmp_path / "l.png")
    assert read_png(tmp_path / "l.png").tolist() == [[0, 7, 255]]


def test_volume_refuses_a_non_numeric_image() -> None:
    """An image of digit strings is refused, not cast to float. Kills ``Volume.__post_init____mutmut_8``
    (``np.issubdtype(None, ...)`` is always true): checked by hand, fails on the mutant, passes on main."""
    with pytest.raises(VolumeError, match=r"^subject s: image dtype <U1 is not numeric"):
        Volume(np.array([[["1", "2"]]]), None, (1, 1, 1), "s", "MR", CHAOS_MR)


def test_volume_stores_the_affine_as_a_float64_array() -> None:
    """An affine given as a list or a float32 array is stored as a float64 ndarray. Kills
    ``Volume.__post_init____mutmut_83`` and ``__mutmut_84`` (the converted affine set on a misspelt attribute):
    checked by hand, fail on the mutants, pass on main."""
    rows = [[2.0, 0, 0, 1], [0, 3.0, 0, 2], [0, 0, 4.0, 3], [0, 0, 0, 1]]
    from_list = Volume(np.zeros((1, 1, 1)), None, (1, 1, 1), "s", "MR", CHAOS_MR, affine=rows)  # type: ignore[arg-type]
    assert isinstance(from_list.affine, np.ndarray) and from_list.affine.dtype == np.float64
    np.testing.assert_array_equal(from_list.affine, np.array(rows))
    f32 = np.array(rows, np.float32)
    from_f32 = Volume(np.zeros((1, 1, 1)), None, (1, 1, 1), "s", "MR", CHAOS_MR, affine=f32)
    assert from_f32.affine.dtype == np.float64 and from_f32.affine is not f32
