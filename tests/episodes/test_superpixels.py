"""Superpixel generation: per-slice methods, body mask, dataset level, real CHAOS slice."""

from __future__ import annotations

import re

import numpy as np
import pytest

from episodes.data.volumes import VolumeError
from episodes.pseudolabels import (
    DEFAULT_PARAMS,
    METHODS,
    OPTIONAL_PARAMS,
    SuperpixelParams,
    body_mask,
    compute_dataset_superpixels_with_stats,
    compute_superpixels,
    compute_volume_superpixels,
    superpixel_input,
)
from episodes.pseudolabels.params import valid_params


def _slice(size: int = 48) -> np.ndarray:
    img = np.zeros((size, size), dtype=np.float32)
    img[6:-6, 6:-6] = 200.0
    img[10:24, 10:24] = 600.0
    img[26:40, 26:40] = 900.0
    return img


def test_body_mask_largest_component_and_fill() -> None:
    img = np.zeros((20, 20), dtype=np.float32)
    img[2:15, 2:15] = 100.0
    img[6:9, 6:9] = 0.0  # hole inside the body -> filled
    img[17:19, 17:19] = 100.0  # small separate blob -> dropped
    mask = body_mask(img, 50.0)
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:15, 2:15] = True
    np.testing.assert_array_equal(mask, expected)
    assert not body_mask(np.zeros((8, 8)), 1e-4).any()


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_methods_inside_body_and_relabelled(method: str) -> None:
    img = _slice()
    mask = body_mask(img, 50.0)
    params = {"min_size": 20} if method == "felzenszwalb" else {"n_segments": 16}
    seg = compute_superpixels(img, method, body_mask=mask, **params)
    assert seg.dtype == np.int32 and seg.shape == img.shape
    assert (seg[~mask] == 0).all() and (seg[mask] > 0).all()
    ids = np.unique(seg[seg > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) >= 3  # at least the three intensity plateaus


def test_fast_slic_basic() -> None:
    pytest.importorskip("fast_slic")
    img = _slice(64)
    mask = body_mask(img, 50.0)
    seg = compute_superpixels(img, "fast-slic", body_mask=mask, num_components=30)
    assert seg.dtype == np.int32 and (seg[~mask] == 0).all() and (seg[mask] > 0).all()
    ids = np.unique(seg[seg > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert 5 <= len(ids) <= 40


def test_unknown_method_lists_choices() -> None:
    with pytest.raises(ValueError, match="choices"):
        compute_superpixels(_slice(), "watershed")
    with pytest.raises(ValueError, match="fast-slic"):
        SuperpixelParams("quickshift")


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2D"):
        compute_superpixels(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="body_mask shape"):
        compute_superpixels(_slice(), body_mask=np.ones((3, 3), bool))
    assert not compute_superpixels(_slice(), body_mask=np.zeros((48, 48), bool)).any()


def test_params_defaults_and_dict() -> None:
    p = SuperpixelParams("felzenszwalb", {"min_size": 100})
    assert p.to_dict() == {
        "method": "felzenszwalb",
        "params": {"min_size": 100, "scale": 1.0, "sigma": 1.0},
        "body_threshold": None,
    }
    assert SuperpixelParams.from_dict(p.to_dict()) == p
    assert SuperpixelParams("fast_slic").method == "fast-slic"
    assert set(METHODS) == {"felzenszwalb", "slic", "fast-slic", "slic3d"}


def test_unknown_params_refused_listing_valid() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("unknown felzenszwalb parameter(s) ['foo']; valid: min_size, scale, sigma"),
    ):
        SuperpixelParams("felzenszwalb", {"foo": 1, "min_size": 3})
    with pytest.raises(ValueError, match=r"unknown slic parameter\(s\) \['min_size'\]; valid: compactness, "):
        SuperpixelParams("slic", {"min_size": 3})
    with pytest.raises(ValueError, match=r"unknown felzenszwalb parameter\(s\) \['minsize'\]"):
        compute_superpixels(_slice(), "felzenszwalb", minsize=3)
    assert valid_params("fast_slic") == tuple(
        sorted({*DEFAULT_PARAMS["fast-slic"], *OPTIONAL_PARAMS["fast-slic"]})
    )


def test_optional_params_passed_but_not_filled_in() -> None:
    # defaults only: the cache key content (to_dict) is what it was before OPTIONAL_PARAMS existed
    for method in METHODS:
        assert SuperpixelParams(method).params == dict(sorted(DEFAULT_PARAMS[method].items()))
    p = SuperpixelParams("slic", {"max_num_iter": 3, "enforce_connectivity": False})
    assert p.params["max_num_iter"] == 3 and "slic_zero" not in p.params
    img = _slice()
    default = compute_superpixels(img, "slic", n_segments=20)
    explicit = compute_superpixels(
        img, "slic", n_segments=20, **{k: v for k, v in OPTIONAL_PARAMS["slic"].items()}
    )
    np.testing.assert_array_equal(default, explicit)  # OPTIONAL_PARAMS lists the values in effect
    assert (
        compute_superpixels(img, "slic", n_segments=20, max_num_iter=1, enforce_connectivity=False).max() > 0
    )


def test_valid_params_cover_the_backends() -> None:
    """Every keyword of the skimage backends is accepted, except those the wrapper fixes or arrays."""
    import inspect

    from skimage.segmentation import felzenszwalb, slic

    fixed = {"image", "channel_axis", "start_label", "spacing", "mask", "convert2lab"}
    for method, fn in (("felzenszwalb", felzenszwalb), ("slic", slic)):
        names = set(inspect.signature(fn).parameters) - fixed
        assert names == set(valid_params(method)), method
        for name, value in OPTIONAL_PARAMS[method].items():
            assert inspect.signature(fn).parameters[name].default == value, (method, name)


def test_volume_level_rejects_normalised(raw_mr) -> None:  # type: ignore[no-untyped-def]
    from episodes.data.preprocess import preprocess

    with pytest.raises(VolumeError, match="raw"):
        superpixel_input(preprocess(raw_mr, size=None))


def test_dataset_level_matches_single_process(make_volume) -> None:  # type: ignore[no-untyped-def]
    vols = [make_volume("1", seed=1), make_volume("2", seed=2, z=3)]
    params = SuperpixelParams("felzenszwalb", {"min_size": 30})
    maps, stats = compute_dataset_superpixels_with_stats(
        vols, params, cache_dir=None, workers=2, progress=False, slices_per_task=2
    )
    assert list(maps) == ["1", "2"]
    for v in vols:
        np.testing.assert_array_equal(maps[v.subject], compute_volume_superpixels(v, params))
    assert stats.n_volumes == 2 and stats.n_slices == 9 and stats.cache_misses == 2 and stats.cache_hits == 0
    assert stats.regions_min >= 3


def test_dataset_volume_without_body(make_volume) -> None:  # type: ignore[no-untyped-def]
    v = make_volume("dark")
    dark = v.with_arrays(np.full(v.shape, 10.0, np.float32), v.label)
    with pytest.raises(VolumeError, match="body threshold"):
        compute_dataset_superpixels_with_stats([dark], cache_dir=None, workers=0, progress=False)


@pytest.mark.realdata
def test_felzenszwalb_real_chaos_slice(chaos_dir) -> None:  # type: ignore[no-untyped-def]
    from episodes.data.loaders import load_ssl_alpnet_folder

    (vol,) = load_ssl_alpnet_folder(chaos_dir, subjects=["1"])
    image = superpixel_input(vol)
    z = vol.shape[0] // 2
    mask = body_mask(image[z], 1e-4 + 50)
    seg = compute_superpixels(image[z], "felzenszwalb", body_mask=mask)
    n = int(seg.max())
    # SSL-ALPNet setting (min_size=400 on a 0-255 scale) on a 256x256 MR slice: ~20-30 regions in the body.
    assert 10 <= n <= 60, n
    assert (seg[~mask] == 0).all() and (seg[mask] > 0).all()
    assert 0.2 < mask.mean() < 0.9


def _scipy_body_mask(img: np.ndarray, threshold: float) -> np.ndarray:
    """The original recipe: scipy label → largest component → binary_fill_holes."""
    from scipy import ndimage

    above = img > threshold
    if not above.any():
        return np.zeros(img.shape, bool)
    lab, n = ndimage.label(above)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        above = lab == int(np.argmax(sizes))
    return np.asarray(ndimage.binary_fill_holes(above), dtype=bool)


def test_body_mask_matches_scipy_recipe() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        img = (rng.random((24, 30)) < rng.uniform(0.3, 0.9)).astype(np.float32) * 100.0
        np.testing.assert_array_equal(body_mask(img, 50.0), _scipy_body_mask(img, 50.0), err_msg=str(i))


def test_body_mask_tie_keeps_first_component_in_raster_order() -> None:
    img = np.zeros((12, 12), np.float32)
    img[1:4, 6:9] = 100.0  # 9 px, first in raster order
    img[7:10, 1:4] = 100.0  # 9 px
    expected = np.zeros((12, 12), bool)
    expected[1:4, 6:9] = True
    np.testing.assert_array_equal(body_mask(img, 50.0), expected)
    # a hole touching nothing but the body is filled; a notch open to the border is not
    img = np.zeros((8, 8), np.float32)
    img[1:7, 1:7] = 100.0
    img[3, 3] = 0.0  # hole
    img[0:3, 5] = 0.0  # notch reaching the top border through row 0
    mask = body_mask(img, 50.0)
    assert mask[3, 3] and not mask[1, 5] and not mask[2, 5]


def test_relabel_first_appearance_order() -> None:
    from episodes.pseudolabels.algorithms import _relabel_inside

    seg = np.array([[7, 7, 3, 3], [9, 7, 3, 5], [9, 9, 5, 5]])
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    expected = np.array([[0, 1, 2, 2], [3, 1, 2, 0], [3, 3, 4, 4]], np.int32)
    np.testing.assert_array_equal(_relabel_inside(seg, mask), expected)
    np.testing.assert_array_equal(_relabel_inside(seg - 20, mask), expected)  # negative ids: sorting path
    np.testing.assert_array_equal(_relabel_inside(seg * 10**6, mask), expected)  # sparse ids
    assert not _relabel_inside(seg, np.zeros_like(mask)).any()


def test_fast_slic_arch_matches_standard() -> None:
    fast_slic = pytest.importorskip("fast_slic")
    from episodes.pseudolabels.algorithms import _fast_slic, _fast_slic_class

    assert _fast_slic_class().__name__ in ("Slic", "SlicAvx2")
    img = _slice(64)
    grey = np.rint((img - img.min()) * (255.0 / (img.max() - img.min()))).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    ref = fast_slic.Slic(num_components=30, compactness=10.0, num_threads=1).iterate(rgb)
    np.testing.assert_array_equal(_fast_slic(img, {"num_components": 30, "compactness": 10.0}), ref)


def test_dataset_level_all_chunks_in_workers(make_volume, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import episodes.pseudolabels.parallel as parallel

    vols = [make_volume("1", seed=1, z=4), make_volume("2", seed=2, z=3)]
    params = SuperpixelParams("felzenszwalb", {"min_size": 30})
    monkeypatch.setattr(parallel, "_MAIN_PROCESS_COMPUTES", False)  # every chunk goes through a worker
    maps, stats = compute_dataset_superpixels_with_stats(
        vols, params, cache_dir=None, workers=3, progress=False, slices_per_task=1
    )
    for v in vols:
        np.testing.assert_array_equal(maps[v.subject], compute_volume_superpixels(v, params))
    assert stats.n_slices == 7
    # an error inside a worker is re-raised in the caller with its original type
    bad = SuperpixelParams("felzenszwalb", {"min_size": "thirty"})  # a str reaches the backend
    with pytest.raises(TypeError, match="str"):
        compute_dataset_superpixels_with_stats(vols, bad, cache_dir=None, workers=2, progress=False)


def test_dataset_level_small_shm_warns_and_runs_in_process(make_volume, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import episodes.pseudolabels.parallel as parallel

    monkeypatch.setattr(parallel, "shm_free_bytes", lambda: 1024)
    vols = [make_volume("1", z=3)]
    params = SuperpixelParams("felzenszwalb", {"min_size": 30})
    with pytest.warns(UserWarning, match="shared memory"):
        maps, _ = compute_dataset_superpixels_with_stats(
            vols, params, cache_dir=None, workers=2, progress=False, slices_per_task=1
        )
    np.testing.assert_array_equal(maps["1"], compute_volume_superpixels(vols[0], params))


def test_slic3d_supervoxels_span_slices(make_volume) -> None:  # type: ignore[no-untyped-def]
    """3D SLIC: ids are numbered over the volume, shared by neighbouring slices, 0 outside the body;
    the dataset driver (whole volumes per task, 2 processes) gives the single-process maps."""
    from episodes.pseudolabels import VOLUMETRIC_METHODS

    assert VOLUMETRIC_METHODS == ("slic3d",) and "slic3d" in METHODS
    vols = [make_volume("1", seed=1, z=8), make_volume("2", seed=2, z=5)]
    params = SuperpixelParams("slic3d", {"segment_voxels": 400})
    assert params.volumetric and not SuperpixelParams().volumetric
    maps, stats = compute_dataset_superpixels_with_stats(
        vols, params, cache_dir=None, workers=2, progress=False, slices_per_task=2
    )
    for v in vols:
        seg = maps[v.subject]
        np.testing.assert_array_equal(seg, compute_volume_superpixels(v, params))
        body = np.stack([body_mask(s, 50.0) for s in superpixel_input(v)])
        assert (seg[~body] == 0).all() and (seg[body] > 0).all()
        ids = np.unique(seg[seg > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # one numbering for the volume
        shared = set(np.unique(seg[0])) & set(np.unique(seg[1])) - {0}
        assert shared, "a supervoxel must continue into the next slice"
        # more than one region, and each id lies in one z-run of consecutive slices
        assert len(ids) >= 3
        for i in ids:
            zs = np.flatnonzero((seg == i).any(axis=(1, 2)))
            assert zs[-1] - zs[0] + 1 == len(zs)
    # per-slice region counts count distinct ids (not the maximum id)
    first = maps["1"][0]
    assert stats.per_subject_regions["1"][0] == len(np.unique(first[first > 0]))
    # a single slice cannot be segmented into supervoxels
    with pytest.raises(ValueError, match="whole volumes"):
        compute_superpixels(_slice(), "slic3d")
    with pytest.raises(ValueError, match="segment_voxels"):
        compute_volume_superpixels(vols[0], SuperpixelParams("slic3d", {"segment_voxels": 0}))


def test_slic3d_cache_key_includes_spacing(make_volume) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from episodes.pseudolabels.cache import superpixel_cache_key

    v = make_volume("1")
    w = replace(v, spacing=(2.0, 1.0, 1.0))
    image = superpixel_input(v)
    sv, flat = SuperpixelParams("slic3d"), SuperpixelParams()
    assert superpixel_cache_key(v, image, sv) != superpixel_cache_key(w, image, sv)
    assert superpixel_cache_key(v, image, flat) == superpixel_cache_key(w, image, flat)  # 2D keys unchanged


# ----------------------------------------------------------------------------- scaling option


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_scaling_default_is_minmax_and_reproduces_todays_superpixels(modality: str) -> None:
    """The default (no ``scaling`` given) and an explicit ``"minmax"`` give the same maps on phantom slices,
    and both equal felzenszwalb on the slice min-max scaled to [0, 255] (what the library did before)."""
    from skimage.segmentation import felzenszwalb

    from episodes.data.phantom import make_phantom

    volume = make_phantom(3, modality=modality, shape=(12, 64, 64))  # type: ignore[arg-type]
    default, explicit = SuperpixelParams(), SuperpixelParams(scaling="minmax")
    assert default == explicit and default.scaling == "minmax"
    np.testing.assert_array_equal(compute_volume_superpixels(volume, default), compute_volume_superpixels(volume, explicit))
    image = superpixel_input(volume)[6]
    mask = body_mask(image, default.threshold_for(volume))
    seg = compute_superpixels(image, body_mask=mask)
    np.testing.assert_array_equal(seg, compute_superpixels(image, body_mask=mask, scaling="minmax"))
    lo, hi = float(image.min()), float(image.max())
    manual = felzenszwalb((image.astype(np.float64) - lo) * (255.0 / (hi - lo)), scale=1.0, sigma=1.0, min_size=400)
    assert seg.max() > 1
    # same partition inside the body (ids are renumbered by first appearance)
    pairs = {(int(a), int(b)) for a, b in zip(seg[mask], manual[mask], strict=True)}
    assert len(pairs) == int(seg.max()) == len({b for _, b in pairs})


def test_scaling_none_runs_on_stored_intensities() -> None:
    """``"none"``: felzenszwalb on the slice as it is (SSL-ALPNet). skimage compares edge weights with
    ``scale / 255 / |C|``, so the intensity units matter where neighbours differ by less than ~0.004: a slice
    with a gentle ramp in raw units merges into fewer regions unscaled than stretched to [0, 255]. On a slice
    that spans exactly [0, 255] (SSL-ALPNet's CT) the two scalings agree bit for bit."""
    from skimage.segmentation import felzenszwalb

    yy, xx = np.mgrid[:48, :48]
    ramp = (100.0 + 0.003 * xx + 0.002 * yy).astype(np.float32)
    ramp[20:30, 20:30] += 0.2
    raw = compute_superpixels(ramp, scaling="none", min_size=5)
    scaled = compute_superpixels(ramp, min_size=5)
    assert raw.max() < scaled.max()
    manual = felzenszwalb(ramp.astype(np.float64), scale=1.0, sigma=1.0, min_size=5)
    pairs = {(int(a), int(b)) for a, b in zip(raw.ravel(), manual.ravel(), strict=True)}
    assert len(pairs) == int(raw.max()) == len({b for _, b in pairs})  # the same partition, renumbered
    ct = _slice()
    ct = (ct - ct.min()) * (255.0 / (ct.max() - ct.min()))
    assert (ct.min(), ct.max()) == (0.0, 255.0)
    np.testing.assert_array_equal(
        compute_superpixels(ct, scaling="none", min_size=20), compute_superpixels(ct, min_size=20)
    )


def test_scaling_validated_serialised_and_volume_level(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import episodes.pseudolabels.parallel as parallel
    from episodes.pseudolabels import SCALINGS

    assert SCALINGS == ("minmax", "none")
    with pytest.raises(ValueError, match=re.escape("unknown superpixel scaling 'raw'; choices: ['minmax', 'none']")):
        SuperpixelParams(scaling="raw")
    with pytest.raises(ValueError, match="only supported by \\['felzenszwalb'\\], not 'slic'"):
        SuperpixelParams("slic", scaling="none")
    with pytest.raises(ValueError, match="not 'fast-slic'"):
        compute_superpixels(_slice(), "fast-slic", scaling="none")
    raw = SuperpixelParams("felzenszwalb", {"min_size": 30}, scaling="none")
    assert raw.to_dict() == {
        "method": "felzenszwalb",
        "params": {"min_size": 30, "scale": 1.0, "sigma": 1.0},
        "body_threshold": None,
        "scaling": "none",
    }
    assert "scaling" not in SuperpixelParams().to_dict()  # the default keeps its old dict (and cache key)
    assert SuperpixelParams.from_dict(raw.to_dict()) == raw
    assert SuperpixelParams.from_dict(SuperpixelParams().to_dict()).scaling == "minmax"
    with pytest.raises(KeyError, match="valid: method, params, body_threshold, scaling"):
        SuperpixelParams.from_dict({"scalings": "none"})
    # the option reaches the worker processes of the data-set driver (on volumes where it makes a difference)
    vols = [_ramp_volume("1", 3), _ramp_volume("2", 2)]
    monkeypatch.setattr(parallel, "_MAIN_PROCESS_COMPUTES", False)
    maps, _ = compute_dataset_superpixels_with_stats(
        vols, raw, cache_dir=None, workers=2, progress=False, slices_per_task=1
    )
    for v in vols:
        expected = compute_volume_superpixels(v, raw)
        np.testing.assert_array_equal(maps[v.subject], expected)
        np.testing.assert_array_equal(expected, _felzenszwalb_volume(v, min_size=30))
        assert not np.array_equal(expected, compute_volume_superpixels(v, SuperpixelParams("felzenszwalb", {"min_size": 30})))


def _ramp_volume(subject: str, z: int):  # type: ignore[no-untyped-def]
    """Raw MR-like volume: a body of ~100 units with gentle ramps (steps < 0.004 between neighbours)."""
    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import Volume

    yy, xx = np.mgrid[:40, :40]
    image = np.zeros((z, 40, 40), np.float32)
    for k in range(z):
        image[k, 4:36, 4:36] = (100.0 + 0.003 * xx + (0.001 + 0.001 * k) * yy)[4:36, 4:36]
        image[k, 12 + k : 22 + k, 14:26] += 0.2
    return Volume(image=image, label=None, spacing=(1, 1, 1), subject=subject, modality="MR", label_map=CHAOS_MR)


def _felzenszwalb_volume(volume, **params):  # type: ignore[no-untyped-def]
    """Per-slice unscaled felzenszwalb inside the body mask, written out (the reference recipe)."""
    from skimage.segmentation import felzenszwalb

    from episodes.pseudolabels.algorithms import _relabel_inside

    image = superpixel_input(volume)
    out = np.zeros(image.shape, np.int32)
    for z, sl in enumerate(image):
        mask = body_mask(sl, 1e-4 + 50)
        if mask.any():
            out[z] = _relabel_inside(felzenszwalb(sl.astype(np.float64), **{"scale": 1.0, "sigma": 1.0, **params}), mask)
    return out


# ----------------------------------------------------------------------- body-mask connectivity


def _diagonal_blobs() -> np.ndarray:
    """A 5x5 blob (25 px) and a 4x4 blob (16 px) touching only at one corner, both above 1."""
    img = np.zeros((14, 14), np.float32)
    img[1:6, 1:6] = 5.0
    img[6:10, 6:10] = 5.0
    return img


def test_body_connectivity_hand_computed() -> None:
    img = _diagonal_blobs()
    four = body_mask(img, 1.0)
    eight = body_mask(img, 1.0, connectivity=8)
    assert int(four.sum()) == 25 and not four[6:10, 6:10].any()  # the largest 4-connected component only
    assert int(eight.sum()) == 41  # both blobs: they touch diagonally
    np.testing.assert_array_equal(body_mask(img, 1.0, connectivity=4), four)
    with pytest.raises(ValueError, match=re.escape("body_connectivity must be one of [4, 8]")):
        body_mask(img, 1.0, connectivity=6)


def _reference_body_mask(img: np.ndarray, threshold: float) -> np.ndarray:
    """SSL-ALPNet's ``fg_mask2d``: skimage label (8-connected) → largest component → binary_fill_holes."""
    from scipy import ndimage
    from skimage.measure import label

    labels = label(img > threshold)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return np.asarray(ndimage.binary_fill_holes(largest), dtype=bool)


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_body_connectivity_8_matches_the_reference_recipe(seed: int, opencv: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import episodes.pseudolabels.algorithms as algorithms

    if not opencv:  # the scipy fallback
        monkeypatch.setattr(algorithms, "_cv2", lambda: None)
    rng = np.random.default_rng(seed)
    img = (rng.random((40, 40)) > 0.55).astype(np.float32) * 100.0  # many diagonal contacts
    np.testing.assert_array_equal(body_mask(img, 50.0, connectivity=8), _reference_body_mask(img, 50.0))
    assert not np.array_equal(body_mask(img, 50.0), _reference_body_mask(img, 50.0))


def test_body_connectivity_params_and_volume_level(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import episodes.pseudolabels.parallel as parallel
    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import Volume
    from episodes.pseudolabels import BODY_CONNECTIVITIES

    assert BODY_CONNECTIVITIES == (4, 8) and SuperpixelParams().body_connectivity == 4
    for bad in (6, True, "8"):
        with pytest.raises(ValueError, match="body_connectivity must be one of"):
            SuperpixelParams(body_connectivity=bad)  # type: ignore[arg-type]
    p8 = SuperpixelParams("felzenszwalb", {"min_size": 5}, body_connectivity=8)
    assert p8.to_dict()["body_connectivity"] == 8 and "body_connectivity" not in SuperpixelParams().to_dict()
    assert SuperpixelParams.from_dict(p8.to_dict()) == p8
    image = np.stack([_diagonal_blobs() * 20, _diagonal_blobs()[::-1] * 20])  # 100 > the MR threshold 50
    v = Volume(image=image, label=None, spacing=(1, 1, 1), subject="d", modality="MR", label_map=CHAOS_MR)
    monkeypatch.setattr(parallel, "_MAIN_PROCESS_COMPUTES", False)
    maps, _ = compute_dataset_superpixels_with_stats(
        [v, Volume(image=image[::-1].copy(), label=None, spacing=(1, 1, 1), subject="e", modality="MR", label_map=CHAOS_MR)],
        p8, cache_dir=None, workers=2, progress=False, slices_per_task=1,
    )
    inside8 = maps["d"] > 0
    assert [int(s.sum()) for s in inside8] == [41, 41]
    np.testing.assert_array_equal(inside8, compute_volume_superpixels(v, p8) > 0)
    four = compute_volume_superpixels(v, SuperpixelParams("felzenszwalb", {"min_size": 5})) > 0
    assert [int(s.sum()) for s in four] == [25, 25]
