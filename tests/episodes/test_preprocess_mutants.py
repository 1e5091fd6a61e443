"""Intensity normalisation and in-plane resampling to exact, hand-worked values (docs/mutation-survivors.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from episodes.data.geometry import InPlaneGrid, to_canonical
from episodes.data.labels import CHAOS_MR
from episodes.data.preprocess import (
    CT_WINDOW,
    MR_PERCENTILE,
    NormStats,
    clip_percentile,
    fit_ct_stats,
    in_plane_grid,
    preprocess,
    resize_volume,
    to_unit_range,
    unit_slices,
    window_ct,
)
from episodes.data.volumes import Volume, VolumeError, load_nifti_pair, save_nifti


def _vol(image: np.ndarray, modality: str = "MR", intensity: str = "raw", **kw: object) -> Volume:
    kw.setdefault("spacing", (3.0, 1.0, 2.0))
    return Volume(image=image, label=kw.pop("label", None), subject="v", modality=modality,  # type: ignore[arg-type]
                  label_map=CHAOS_MR, intensity=intensity, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_constants_and_norm_stats() -> None:
    assert CT_WINDOW == (-125.0, 275.0) and MR_PERCENTILE == 99.5
    assert NormStats(1.5, 2.0).to_dict() == {"mean": 1.5, "std": 2.0}
    NormStats(0.0, 1e-9)  # any positive std
    for mean, std in ((0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0), (0.0, float("inf"))):
        with pytest.raises(ValueError, match="invalid normalisation stats"):
            NormStats(mean, std)


def test_ct_window_and_percentile_clip() -> None:
    hu = np.array([-300.0, -125.0, 75.0, 175.0, 275.0, 1000.0])
    out = window_ct(hu)
    assert out.dtype == np.float32 and out.tolist() == [0.0, 0.0, 127.5, 191.25, 255.0, 255.0]
    assert window_ct(np.array([0.0, 5.0, 10.0]), (0.0, 10.0)).tolist() == [0.0, 127.5, 255.0]
    x = np.arange(201, dtype=np.float64)  # 99.5th percentile, linear: 0.995 * 200 = 199
    clipped = clip_percentile(x)
    assert clipped.dtype == np.float32 and clipped[-1] == 199.0 and clipped[-2] == 199.0 and clipped[0] == 0.0
    assert clip_percentile(x, 50.0).max() == 100.0


def test_fit_ct_stats_over_all_voxels_of_windowed_volumes() -> None:
    a = _vol(np.full((1, 2, 2), 10.0), "CT", "window255")
    b = _vol(np.full((1, 2, 4), 40.0), "CT", "window255")  # 4 voxels of 10, 8 of 40: mean 30, std sqrt(200)
    s = fit_ct_stats([a, b])
    assert s.mean == pytest.approx(30.0, abs=1e-12) and s.std == pytest.approx(np.sqrt(200.0), rel=1e-12)
    hu = _vol(np.array([[[-125.0, 275.0]]]), "CT", "hu")  # windowed: 0 and 255
    s = fit_ct_stats([hu])
    assert s.mean == pytest.approx(127.5) and s.std == pytest.approx(127.5)
    # a constant volume: the std is floored at sqrt(1e-12)
    assert fit_ct_stats([_vol(np.full((1, 1, 3), 7.0), "CT", "window255")]).std == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="no volumes"):
        fit_ct_stats([])
    with pytest.raises(VolumeError, match="needs CT volumes, got MR"):
        fit_ct_stats([_vol(np.ones((1, 1, 1)))])
    with pytest.raises(VolumeError, match="intensity 'raw'"):
        fit_ct_stats([_vol(np.ones((1, 1, 1)), "CT", "raw")])


def test_preprocess_mr_ct_and_sizes() -> None:
    x = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)  # 0..199
    v = _vol(x)
    out = preprocess(v, size=None)
    top = 0.995 * 199  # the 99.5th percentile of 0..199
    ref = np.minimum(x.astype(np.float64), top)
    np.testing.assert_allclose(out.image, (ref - ref.mean()) / ref.std(), rtol=0, atol=2e-6)
    assert out.normalized and out.image.dtype == np.float32 and out.shape == (2, 10, 10)
    assert out.spacing == v.spacing
    with pytest.raises(VolumeError, match="already normalised"):
        preprocess(out)
    with pytest.raises(VolumeError, match="constant MR image"):
        preprocess(_vol(np.full((1, 4, 4), 3.0)), size=None)
    flat_corner = x.copy()
    flat_corner[:, :2, :2] = 7.0
    with pytest.raises(VolumeError, match="constant MR image"):  # constant inside the statistics window
        preprocess(_vol(flat_corner), size=None, stats_window=(slice(0, 2), slice(0, 2)))
    # stats from a window: rows 0..4, cols 0..4 of both slices
    win = preprocess(_vol(x), size=None, stats_window=(slice(0, 5), slice(0, 5)))
    ref_win = x[:, :5, :5].astype(np.float64)
    top = np.percentile(ref_win, 99.5)
    clipped = np.minimum(ref_win, top)
    expected = (np.minimum(x, top) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(win.image, expected, rtol=0, atol=2e-5)
    ct = _vol(np.array([[[-125.0, 75.0], [275.0, 75.0]]]), "CT", "hu")
    out = preprocess(ct, size=None, ct_stats=NormStats(100.0, 50.0))
    np.testing.assert_allclose(out.image, [[[-2.0, 0.55], [3.1, 0.55]]], rtol=1e-6)  # (w - 100) / 50
    with pytest.raises(ValueError, match="ct_stats fitted on the training split"):
        preprocess(ct, size=None)
    with pytest.raises(ValueError, match="needs a size"):
        preprocess(v, size=None, spacing=1.0)
    sized = preprocess(v, size=5)
    assert sized.shape == (2, 5, 5) and sized.spacing == (3.0, 2.0, 4.0)
    spaced = preprocess(v, size=4, spacing=2.5)
    assert spaced.shape == (2, 4, 4) and spaced.spacing == pytest.approx((3.0, 2.5, 2.5))


def test_plain_resize_values_affine_and_labels() -> None:
    img = np.arange(24, dtype=np.float32).reshape(1, 4, 6)  # value 6 * row + col
    label = (np.arange(24).reshape(1, 4, 6) % 5).astype(np.int16)
    affine = np.array([[1.0, 0, 0, 10], [0, 1.0, 0, 20], [0, 0, 3.0, 30], [0, 0, 0, 1]])
    v = _vol(img, label=label, affine=affine, spacing=(3.0, 1.0, 2.0))
    assert resize_volume(v, 4) is not v  # 4 x 6 is not square
    r = resize_volume(v, 2)
    assert (
        r.label is not None
    )  # rows by 2 (bilinear: mean of rows 2i, 2i+1), columns by 3 (the middle column)
    # output (i, j) samples source row 2i + 0.5 and column 3j + 1: 6 * (2i + 0.5) + 3j + 1
    np.testing.assert_allclose(r.image[0], [[4.0, 7.0], [16.0, 19.0]], rtol=1e-6)
    # nearest
    assert r.label.tolist() == [[[label[0, 0, 0], label[0, 0, 3]], [label[0, 2, 0], label[0, 2, 3]]]]
    assert r.spacing == (3.0, 2.0, 6.0)
    np.testing.assert_array_equal(r.affine[:, 0], [2.0, 0, 0, 0])
    np.testing.assert_array_equal(r.affine[:, 1], [0, 3.0, 0, 0])
    np.testing.assert_array_equal(r.affine[:, 2:], affine[:, 2:])
    square = _vol(np.zeros((1, 3, 3), np.float32))
    assert resize_volume(square, 3) is square
    assert resize_volume(_vol(np.zeros((1, 2, 2), np.float32)), 4).label is None


def test_in_plane_grid_and_resampled_geometry() -> None:
    v = _vol(np.zeros((1, 6, 8), np.float32), spacing=(3.0, 1.0, 2.0))
    g = in_plane_grid(v, 10, 2.0)  # 6 x 1 mm -> 3 px, 8 x 2 mm -> 8 px
    assert g == InPlaneGrid(source=(6, 8), scaled=(3, 8), size=10)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="must be > 0 mm"):
            in_plane_grid(v, 10, bad)
    label = np.zeros((1, 6, 8), np.int16)
    label[0, 2:4, 2:6] = 1
    img = np.arange(48, dtype=np.float32).reshape(1, 6, 8) + 5.0
    v = _vol(img, label=label, spacing=(3.0, 1.0, 2.0), affine=np.diag([1.0, 2.0, 3.0, 1.0]))
    same = resize_volume(_vol(np.zeros((1, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0)), 4, spacing=1.0)
    assert same.shape == (1, 4, 4)
    # scaled (3, 8): rows padded 3 -> 4 (pad 0), columns cropped 8 -> 4 (crop 2)
    r = resize_volume(v, 4, spacing=2.0)
    assert r.label is not None
    assert r.shape == (1, 4, 4) and r.spacing == (3.0, 2.0, 2.0)
    assert r.image[0, 3].tolist() == [5.0] * 4  # padded with the image's minimum
    assert r.label[0, 3].tolist() == [0] * 4
    # output (i, j) -> scaled (i, j + 2) -> source (2 (i + 0.5) - 0.5, j + 2): affine @ to_source
    to_source = np.array([[2.0, 0, 0, 0.5], [0, 1.0, 0, 2.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(r.affine, np.diag([1.0, 2.0, 3.0, 1.0]) @ to_source)
    wide = resize_volume(_vol(np.zeros((1, 8, 2), np.float32), spacing=(1.0, 1.0, 1.0)), 4, spacing=1.0)
    # scaled (8, 2): rows cropped by 2, columns padded by 1 -> shift (2, -1)
    np.testing.assert_allclose(wide.affine[:2, 3], [2.0, -1.0])


def test_unit_range_and_unit_slices() -> None:
    assert to_unit_range(np.array([2.0, 4.0, 6.0])).tolist() == [0.0, 0.5, 1.0]
    flat = to_unit_range(np.array([3.0, 3.0 + 1e-9]))
    assert flat.dtype == np.float32 and flat.tolist() == [0.0, 0.0]
    assert to_unit_range(np.array([0.0, 2e-8])).tolist() == [0.0, 1.0]
    img = np.zeros((3, 2, 2), np.float32)
    img[0] = [[0, 1], [2, 4]]
    img[2] = [[-125, 275], [75, 75]]
    mr = unit_slices([_vol(img)])
    assert mr.shape == (2, 2, 2) and mr.dtype == np.float32  # the constant slice 1 is dropped
    assert mr[0].tolist() == [[0.0, 0.25], [0.5, 1.0]] and mr[1].tolist() == [[0.0, 1.0], [0.5, 0.5]]
    ct = unit_slices([_vol(np.array([[[-500.0, -125.0], [75.0, 1000.0]]]), "CT", "hu")])
    assert ct[0].tolist() == [[0.0, 0.0], [0.5, 1.0]]  # windowed to [-125, 275] first
    big = unit_slices([_vol(img)], size=4)
    assert big.shape == (2, 4, 4) and big.min() >= 0.0 and big.max() <= 1.0 and big[0, 0, 0] == 0.0
    assert unit_slices([_vol(img)], size=2).shape == (2, 2, 2)
    with pytest.raises(VolumeError, match="no non-empty slices"):
        unit_slices([_vol(np.zeros((2, 2, 2), np.float32))])
    with pytest.raises(VolumeError, match="needs raw volumes"):
        unit_slices([preprocess(_vol(img), size=None)])


def test_unit_slices_leave_out_the_slices_of_excluded_organs() -> None:
    """Setting 2: the pretraining slices are those the episodes keep, every slice holding any excluded organ gone
    (SSL-ALPNet's rule), so no held-out organ reaches any part of training."""
    img = np.stack([np.full((4, 4), z, np.float32) + np.eye(4, dtype=np.float32) for z in range(5)])
    label = np.zeros((5, 4, 4), np.int16)
    label[1, 0, 0] = CHAOS_MR.value("liver")
    label[3, 2, 2] = CHAOS_MR.value("spleen")
    label[4, 1, 1] = CHAOS_MR.value("left_kidney")
    vol = _vol(img, label=label)
    assert vol.slices_with_any(["liver", "spleen"]).tolist() == [False, True, False, True, False]
    assert vol.slices_with_any([]).tolist() == [False] * 5
    kept = unit_slices([vol], exclude_organs=("liver", "spleen"))
    np.testing.assert_array_equal(kept, unit_slices([vol])[[0, 2, 4]])
    assert unit_slices([vol], exclude_organs=("left_kidney",)).shape[0] == 4
    with pytest.raises(VolumeError, match="excluding the slices of liver needs labels"):
        unit_slices([_vol(img)], exclude_organs=("liver",))
    with pytest.raises(KeyError, match="unknown organ 'lung'"):
        unit_slices([vol], exclude_organs=("lung",))
    everywhere = np.full((5, 4, 4), CHAOS_MR.value("liver"), np.int16)
    with pytest.raises(VolumeError, match="no non-empty slices outside the slices of liver"):
        unit_slices([_vol(img, label=everywhere)], exclude_organs=("liver",))


def test_preprocess_keeps_labels_default_size_and_low_contrast_mr() -> None:
    """Survivors of the full run (2026-12-06): ``preprocess`` dropping the label, its default size, an asymmetric
    statistics window read as ``[rows, rows]``, and the constant-image test at ``std < 1.00000001``."""
    x = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    label = (np.arange(2 * 10 * 12).reshape(2, 10, 12) % 3).astype(np.int16)
    out = preprocess(_vol(x, label=label), size=None)
    assert out.label is not None and np.array_equal(out.label, label)
    assert preprocess(_vol(x)).shape == (2, 256, 256)  # the default size
    low = preprocess(_vol(x / 1000.0), size=None)  # std 0.07: low contrast, not constant
    assert np.isfinite(low.image).all() and low.image.std() == pytest.approx(1.0, rel=1e-5)
    low_win = preprocess(_vol(x / 1000.0), size=None, stats_window=(slice(0, 5), slice(0, 5)))
    assert np.isfinite(low_win.image).all()  # a statistics window of std 0.04 is not constant either
    # 3 rows, 8 columns: [cols, cols] or [rows, rows] read other voxels
    rows, cols = slice(0, 3), slice(4, 12)
    win = preprocess(_vol(x), size=None, stats_window=(rows, cols))
    ref = x[:, rows, cols].astype(np.float64)
    top = np.percentile(ref, 99.5)
    clipped = np.minimum(ref, top)
    np.testing.assert_allclose(
        win.image, (np.minimum(x, top) - clipped.mean()) / clipped.std(), rtol=0, atol=2e-5
    )


def test_resizing_drops_the_file_geometry_and_odd_crops_shift_by_whole_pixels(tmp_path: Path) -> None:
    """A resized or resampled volume no longer has its file's grid (``source_geometry`` must be dropped, or a
    prediction would be written back on the wrong grid); an odd crop or pad shifts the affine by a whole pixel."""
    image = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    path = tmp_path / "v.nii.gz"
    save_nifti(image, _vol(image, spacing=(3.0, 1.0, 1.0)), path)
    read = load_nifti_pair(path, None, subject="v", modality="MR", label_map=CHAOS_MR)
    assert read.source_geometry is not None
    assert resize_volume(read, 4).source_geometry is None
    assert resize_volume(read, 4, spacing=2.0).source_geometry is None
    # rows 7 -> 4 (crop 3: shift 1, not 1.5), columns 3 -> 4 (pad 1: shift 0, not -0.5)
    odd = resize_volume(_vol(np.zeros((1, 7, 3), np.float32), spacing=(1.0, 1.0, 1.0)), 4, spacing=1.0)
    np.testing.assert_array_equal(odd.affine[:2, 3], [1.0, 0.0])
    wide = resize_volume(_vol(np.zeros((1, 3, 9), np.float32), spacing=(1.0, 1.0, 1.0)), 4, spacing=1.0)
    np.testing.assert_array_equal(wide.affine[:2, 3], [0.0, 2.0])  # pad 1: 0; crop 5: 2 (not 2.5)


def test_unit_slices_of_several_volumes_keeps_every_volume() -> None:
    a = np.zeros((2, 2, 2), np.float32)
    a[0] = [[0, 1], [2, 4]]
    b = np.zeros((1, 2, 2), np.float32)
    b[0] = [[4, 2], [1, 0]]
    out = unit_slices([_vol(a), _vol(b)])  # a's slice 1 is constant and dropped
    assert out.shape == (2, 2, 2) and out[0].tolist() == [[0.0, 0.25], [0.5, 1.0]]
    assert out[1].tolist() == [[1.0, 0.5], [0.25, 0.0]]


def test_a_bad_affine_names_the_file() -> None:
    """``to_canonical`` passes the file's name to the affine check (a survivor passed ``None``: "None: the affine
    is not ..."). The other geometry survivors are judged equivalent in docs/mutation-survivors.md."""
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(VolumeError, match=r"^scans/a\.nii\.gz: the affine is not a finite 4x4 matrix"):
        to_canonical(np.zeros((2, 2, 2), np.float32), bad, (1.0, 1.0, 1.0), "scans/a.nii.gz")


def test_resampling_onto_a_grid_that_already_fits_returns_the_volume() -> None:
    """When the scan already has ``size x size`` pixels of ``spacing`` mm, the same volume comes back; a square
    scan of the right size but another pixel size is still resampled. Kills ``_resample_volume__mutmut_8``
    (``scaled != source == (size, size)``): checked by hand, fails on the mutant, passes on main."""
    v = _vol(np.arange(16, dtype=np.float32).reshape(1, 4, 4), spacing=(1.0, 1.0, 1.0))
    assert resize_volume(v, 4, spacing=1.0) is v
    coarse = resize_volume(v, 4, spacing=2.0)  # scaled (2, 2), padded to 4 x 4
    assert coarse is not v and coarse.spacing == (1.0, 2.0, 2.0)
    # bilinear halving: means of 2 x 2 blocks (2.5, 4.5, 10.5, 12.5) in the centre, the minimum 0 around them
    np.testing.assert_allclose(coarse.image[0, 1:3, 1:3], [[2.5, 4.5], [10.5, 12.5]])
    assert coarse.image[0, 0].tolist() == [0.0] * 4


def test_unit_slices_resize_without_aligned_corners() -> None:
    """A ramp 0, 1/3, 2/3, 1 halved to 2 pixels gives the means of pixel pairs, 1/6 and 5/6
    (``align_corners=False``), not the end pixels 0 and 1. Kills ``unit_slices__mutmut_35``: checked by hand,
    fails on the mutant, passes on main."""
    ramp = np.tile(np.arange(4, dtype=np.float32), (1, 4, 1))  # every row 0, 1, 2, 3
    out = unit_slices([_vol(ramp)], size=2)
    np.testing.assert_allclose(out[0], [[1 / 6, 5 / 6], [1 / 6, 5 / 6]], rtol=0, atol=1e-6)
