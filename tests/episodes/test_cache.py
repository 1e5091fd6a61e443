"""Superpixel cache: hits, invalidation (params, content, version), atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

import episodes.pseudolabels.cache as cache
from episodes.pseudolabels import SuperpixelParams, compute_dataset_superpixels_with_stats

PARAMS = SuperpixelParams("felzenszwalb", {"min_size": 30})


def _run(vols, tmp_path, params=PARAMS):  # type: ignore[no-untyped-def]
    return compute_dataset_superpixels_with_stats(vols, params, cache_dir=tmp_path, workers=0, progress=False)


def test_hit_and_param_change(make_volume, tmp_path) -> None:  # type: ignore[no-untyped-def]
    vols = [make_volume("1", z=3), make_volume("2", z=2, seed=5)]
    maps1, s1 = _run(vols, tmp_path)
    assert (s1.cache_hits, s1.cache_misses) == (0, 2)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    maps2, s2 = _run(vols, tmp_path)
    assert (s2.cache_hits, s2.cache_misses) == (2, 0)
    for k in maps1:
        np.testing.assert_array_equal(maps1[k], maps2[k])
    _, s3 = _run(vols, tmp_path, SuperpixelParams("felzenszwalb", {"min_size": 31}))
    assert (s3.cache_hits, s3.cache_misses) == (0, 2)
    _, s4 = _run(vols, tmp_path, SuperpixelParams("felzenszwalb", {"min_size": 30}, body_threshold=60.0))
    assert s4.cache_misses == 2


def test_content_change_invalidates(make_volume, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make_volume("1", z=2)
    _run([v], tmp_path)
    image = v.image.copy()
    image[0, 20, 20] += 1.0
    _, stats = _run([v.with_arrays(image, v.label)], tmp_path)
    assert stats.cache_misses == 1
    _, stats = _run([v], tmp_path)
    assert stats.cache_hits == 1


def test_version_change_invalidates(make_volume, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    v = make_volume("1", z=2)
    _run([v], tmp_path)
    monkeypatch.setattr(cache, "library_version", lambda: "999.0")
    _, stats = _run([v], tmp_path)
    assert (stats.cache_hits, stats.cache_misses) == (0, 1)


def test_atomic_write_leaves_nothing(make_volume, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OSError, match="disk full"):
        _run([make_volume("1", z=2)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_entry_is_recomputed(make_volume, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = make_volume("1", z=2)
    maps, _ = _run([v], tmp_path)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable"):
        maps2, stats = _run([v], tmp_path)
    assert stats.cache_misses == 1
    np.testing.assert_array_equal(maps["1"], maps2["1"])


def test_save_load_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seg = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    path = cache.save_superpixels(tmp_path, "a/b", "f" * 64, seg, meta={"x": 1})
    assert path.name == "superpixels_a_b_ffffffffffffffff.npz"
    np.testing.assert_array_equal(cache.load_superpixels(tmp_path, "a/b", "f" * 64), seg)
    assert cache.load_superpixels(tmp_path, "a/b", "e" * 64) is None
    with pytest.warns(UserWarning, match="shape"):
        assert cache.load_superpixels(tmp_path, "a/b", "f" * 64, expected_shape=(1, 3, 4)) is None


def test_storage_dtype_is_compact_and_load_returns_int32(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for top, dtype in ((255, np.uint8), (256, np.uint16), (70000, np.int32)):
        seg = np.zeros((2, 4, 4), np.int32)
        seg[1, 2, 3] = top
        path = cache.save_superpixels(tmp_path, f"s{top}", "a" * 64, seg)
        with np.load(path) as data:
            assert data["superpixels"].dtype == dtype
        loaded = cache.load_superpixels(tmp_path, f"s{top}", "a" * 64)
        assert loaded is not None and loaded.dtype == np.int32
        np.testing.assert_array_equal(loaded, seg)
    neg = np.full((1, 2, 2), -3, np.int32)
    cache.save_superpixels(tmp_path, "neg", "b" * 64, neg)
    np.testing.assert_array_equal(cache.load_superpixels(tmp_path, "neg", "b" * 64), neg)


def test_entries_written_by_savez_compressed_still_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seg = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    path = cache.cache_path(tmp_path, "old", "c" * 64)
    np.savez_compressed(path, superpixels=seg, key=np.array("c" * 64), meta=np.array("{}"))
    np.testing.assert_array_equal(cache.load_superpixels(tmp_path, "old", "c" * 64), seg)


def test_array_digest_is_sha256_of_shape_dtype_bytes() -> None:
    import hashlib

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = hashlib.sha256(b"(3, 4)|<f4|" + a.tobytes()).hexdigest()
    assert cache.array_digest(a) == expected
    assert cache.array_digest(np.asfortranarray(a)) == expected  # C-order bytes
    assert cache.array_digest(a.T) != expected


def test_cache_key_unchanged_by_the_refactor(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Pinned keys (computed before the code moved into ``episodes.pseudolabels``): moving
    the code or adding OPTIONAL_PARAMS must not invalidate existing cache entries."""
    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import Volume
    from episodes.pseudolabels import superpixel_input

    monkeypatch.setattr(cache, "library_version", lambda: "0.1.0")
    image = np.random.default_rng(0).uniform(0, 400, (3, 16, 16)).astype(np.float32)
    v = Volume(image=image, label=None, spacing=(1, 1, 1), subject="7", modality="MR", label_map=CHAOS_MR)
    key = cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams())
    assert key == "1d558b05c55e7e8364f1e4c9230784982efcee05c70b5c54b63a881e31177c10"
    key = cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams("slic"))
    assert key == "37b29a8958f45e80b2a15c381519e7d75e775af8a9d6191844e1671faab3fb2d"


def test_cache_key_of_scaling_only_when_not_default(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``scaling`` enters the cache key only when it is not ``"minmax"``: the default and an explicit
    ``"minmax"`` keep the key pinned above (and the configs' explicit SSL-ALPNet parameters give it too)."""
    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import Volume
    from episodes.pseudolabels import superpixel_input

    monkeypatch.setattr(cache, "library_version", lambda: "0.1.0")
    image = np.random.default_rng(0).uniform(0, 400, (3, 16, 16)).astype(np.float32)
    v = Volume(image=image, label=None, spacing=(1, 1, 1), subject="7", modality="MR", label_map=CHAOS_MR)
    pinned = "1d558b05c55e7e8364f1e4c9230784982efcee05c70b5c54b63a881e31177c10"
    explicit = SuperpixelParams("felzenszwalb", {"scale": 1.0, "sigma": 1.0, "min_size": 400}, scaling="minmax")
    assert cache.superpixel_cache_key(v, superpixel_input(v), explicit) == pinned
    raw = cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams(scaling="none"))
    assert raw != pinned
    assert raw == "3c5954d77f91bb8d1e708e18bb0d56a54340945b1841cf5ac53b827ba08048f6"


def test_cache_key_of_body_connectivity_only_when_not_default(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import Volume
    from episodes.pseudolabels import superpixel_input

    monkeypatch.setattr(cache, "library_version", lambda: "0.1.0")
    image = np.random.default_rng(0).uniform(0, 400, (3, 16, 16)).astype(np.float32)
    v = Volume(image=image, label=None, spacing=(1, 1, 1), subject="7", modality="MR", label_map=CHAOS_MR)
    pinned = "1d558b05c55e7e8364f1e4c9230784982efcee05c70b5c54b63a881e31177c10"
    assert cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams(body_connectivity=4)) == pinned
    eight = cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams(body_connectivity=8))
    both = cache.superpixel_cache_key(v, superpixel_input(v), SuperpixelParams(scaling="none", body_connectivity=8))
    assert len({pinned, eight, both}) == 3
