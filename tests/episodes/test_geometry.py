"""Canonical orientation, affine checks, in-plane resampling and FOV-independent MR statistics."""

from __future__ import annotations

import numpy as np
import pytest

from episodes.data.geometry import CANONICAL_AXCODES, InPlaneGrid, check_affine, from_canonical, to_canonical
from episodes.data.labels import CHAOS_MR
from episodes.data.preprocess import preprocess, resize_volume
from episodes.data.volumes import Volume, VolumeError


@pytest.mark.parametrize("perm", [(0, 1, 2), (1, 0, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(), (0,), (1, 2)])
def test_to_canonical_round_trip_keeps_world_positions(perm: tuple[int, int, int], flips: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    las = rng.normal(size=(5, 6, 7))
    base = np.diag([-1.5, 2.0, 3.0, 1.0])
    base[:3, 3] = [10, -20, 30]
    stored, index = np.transpose(las, perm), np.eye(4)[:, [*perm, 3]]
    for axis in flips:
        stored = np.flip(stored, axis)
        f = np.eye(4)
        f[axis, axis], f[axis, 3] = -1, stored.shape[axis] - 1
        index = index @ f
    affine = base @ index
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    out, out_affine, out_zooms, source = to_canonical(stored, affine, zooms, "scan")  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, las)
    np.testing.assert_allclose(out_affine, base)
    assert out_zooms == (1.5, 2.0, 3.0) and source.is_identity == (perm == (0, 1, 2) and not flips)
    np.testing.assert_array_equal(from_canonical(out, source), stored)
    assert CANONICAL_AXCODES == ("L", "A", "S")


def test_unreadable_affines_are_refused() -> None:
    with pytest.raises(VolumeError, match=r"scan\.nii: the affine has a zero-length axis"):
        check_affine(np.zeros((4, 4)), "scan.nii")
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(VolumeError, match="sheared"):
        check_affine(sheared, "scan.nii")
    oblique = np.eye(4)
    t = np.deg2rad(20)
    oblique[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    check_affine(oblique @ np.diag([0.8, 0.8, 5.0, 1.0]), "scan.nii")  # rotated is fine


def test_in_plane_grid_plain_resize_and_inverse() -> None:
    img = np.random.default_rng(1).normal(size=(3, 40, 40)).astype(np.float32)
    v = Volume(image=img, label=None, spacing=(5.0, 1.0, 1.0), subject="1", modality="MR", label_map=CHAOS_MR)
    plain = InPlaneGrid.plan((40, 40), (1.0, 1.0), (2.0, 2.0), 20)
    np.testing.assert_array_equal(plain.apply(img), resize_volume(v, 20).image)  # the old resize, bit for bit
    grid = InPlaneGrid.plan((40, 40), (1.0, 1.0), (2.0, 2.0), 32)  # 20 px of content padded to 32
    mask = np.zeros((3, 32, 32), bool)
    mask[:, 6:26, 6:26] = True
    assert grid.invert(mask).all()
    assert InPlaneGrid.plan((40, 40), (1.0, 1.0), (4.0, 4.0), 6).invert(np.ones((3, 6, 6), bool)).sum() == 3 * 24 * 24


def test_resize_with_spacing_keeps_world_positions() -> None:
    label = np.zeros((2, 30, 50), np.int16)
    label[:, 10:20, 20:30] = 1
    v = Volume(image=label.astype(np.float32), label=label, spacing=(5.0, 1.0, 1.0), subject="1", modality="MR",
               label_map=CHAOS_MR, affine=np.diag([1.0, 1.0, 5.0, 1.0]))  # fmt: skip
    r = resize_volume(v, 32, spacing=2.0)  # 15 x 25 px of content, centred in 32 x 32
    assert r.shape == (2, 32, 32) and r.spacing == (5.0, 2.0, 2.0) and r.source_geometry is None
    centre = np.argwhere(r.label[0] == 1).mean(0)
    world = r.affine @ [centre[0], centre[1], 0, 1]
    np.testing.assert_allclose(world[:2], [14.5, 24.5], atol=0.6)  # the square's centre in the source


def test_mr_statistics_window_ignores_extra_air() -> None:
    rng = np.random.default_rng(2)
    img = rng.uniform(100, 900, size=(4, 20, 20)).astype(np.float32)
    padded = np.pad(img, ((0, 0), (10, 10), (10, 10)))
    kw = {"spacing": (5.0, 1.0, 1.0), "modality": "MR", "label_map": CHAOS_MR, "label": None}
    plain = preprocess(Volume(image=img, subject="1", **kw), size=None)  # type: ignore[arg-type]
    window = preprocess(Volume(image=padded, subject="1", **kw), size=None, stats_window=(slice(10, 30), slice(10, 30)))  # type: ignore[arg-type]
    np.testing.assert_allclose(window.image[:, 10:30, 10:30], plain.image, atol=1e-5)
