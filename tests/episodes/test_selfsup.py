"""Self-supervised episodes: determinism, shapes, DataLoader workers, setting-2 exclusion, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from episodes.data.preprocess import preprocess
from episodes.pseudolabels import SuperpixelParams, compute_volume_superpixels
from episodes.sampling.augment import Augmenter
from episodes.sampling.selfsup import DEFAULT_MIN_SUPERPIXEL_PIXELS, EpisodeConfig, SelfSupervisedEpisodes
from episodes.sampling.types import Episode, EpisodeBatch, EpisodeInfo, collate_episodes

PARAMS = SuperpixelParams("felzenszwalb", {"min_size": 30})


@pytest.fixture
def data(make_volume):  # type: ignore[no-untyped-def]
    raws = [make_volume("1", seed=1), make_volume("2", seed=2)]
    maps = {v.subject: compute_volume_superpixels(v, PARAMS) for v in raws}
    vols = [preprocess(v, size=None) for v in raws]
    return vols, maps


def _dataset(data, **kw):  # type: ignore[no-untyped-def]
    vols, maps = data
    kw = {"min_superpixel_pixels": 50, "length": 8, "seed": 3, **kw}
    return SelfSupervisedEpisodes(vols, maps, **kw)


def _same(a: Episode, b: Episode) -> bool:
    return (
        all(
            torch.equal(getattr(a, n), getattr(b, n))
            for n in ("support_images", "support_masks", "query_images", "query_masks")
        )
        and a.info == b.info
    )


def test_shapes_and_binary_masks(data) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(data, shots=2, queries=3, channels=3)
    ep = ds[0]
    assert ep.support_images.shape == (2, 3, 48, 48) and ep.query_images.shape == (3, 3, 48, 48)
    assert ep.support_masks.shape == (2, 48, 48) and ep.query_masks.shape == (3, 48, 48)
    assert ep.support_images.dtype == torch.float32 and ep.support_masks.dtype == torch.float32
    assert set(ep.support_masks.unique().tolist()) <= {0.0, 1.0}
    assert (ep.support_masks.sum(dim=(1, 2)) > 0).all()
    assert torch.equal(ep.support_images[:, 0], ep.support_images[:, 2])  # tiled channel
    assert ep.info.kind == "superpixel" and ep.info.label >= 1 and ep.info.organ is None
    # support copies are differently augmented
    assert not torch.equal(ep.support_images[0], ep.support_images[1])


def test_mask_is_the_drawn_superpixel_without_augmentation(data) -> None:  # type: ignore[no-untyped-def]
    vols, maps = data
    ds = _dataset(data, augment="none")
    for i in range(len(ds)):
        ep = ds[i]
        vi = [v.subject for v in vols].index(ep.info.subject)
        expected = maps[ep.info.subject][ep.info.slice_index] == ep.info.label
        assert expected.sum() >= 50
        np.testing.assert_array_equal(ep.support_masks[0].numpy(), expected.astype(np.float32))
        np.testing.assert_array_equal(ep.query_images[0, 0].numpy(), vols[vi].image[ep.info.slice_index])


def test_determinism_and_epochs(data) -> None:  # type: ignore[no-untyped-def]
    a, b = _dataset(data), _dataset(data)
    assert _same(a[2], b[2])
    assert not _same(a[2], a[3])
    assert not _same(a[2], _dataset(data, seed=4)[2])
    b.set_epoch(1)
    assert not _same(a[2], b[2])
    b.set_epoch(0)
    assert _same(a[2], b[2])
    with pytest.raises(IndexError):
        a[8]


def test_dataloader_workers_match(data) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(data, length=6)
    batches0 = list(DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate_episodes))
    batches2 = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_episodes))
    assert len(batches0) == len(batches2) == 2
    for x, y in zip(batches0, batches2):
        assert x.support_images.shape == (3, 1, 3, 48, 48) and x.query_masks.shape == (3, 1, 48, 48)
        assert torch.equal(x.support_images, y.support_images) and torch.equal(x.query_masks, y.query_masks)
        assert x.infos == y.infos


def test_setting2_any_rule(data) -> None:  # type: ignore[no-untyped-def]
    # labels: liver slices 1..3, right kidney 2..4, spleen 4; 6 slices per volume, 2 volumes
    ds = _dataset(data, exclude_organs=("liver", "right_kidney"), augment="none", length=40)
    d = ds.describe()
    assert d["exclude_mode"] == "any" and d["exclude_organs"] == ["liver", "right_kidney"]
    assert d["n_slices_total"] == 12 and d["n_slices_excluded_by_organs"] == 8  # slices 1,2,3,4 (AND: 2,3)
    assert {ds[i].info.slice_index for i in range(40)} == {0, 5}
    kid = _dataset(data, exclude_organs=("rk", "left_kidney"), augment="none", length=40)
    assert kid.describe()["n_slices_excluded_by_organs"] == 6
    assert {kid[i].info.slice_index for i in range(40)} <= {0, 1, 5}


def test_small_superpixels_filtered(data) -> None:  # type: ignore[no-untyped-def]
    vols, maps = data
    maps = {k: v.copy() for k, v in maps.items()}
    maps["1"][0] = 0
    maps["1"][0, :3, :3] = 1  # slice 0 of subject 1: one 9-px superpixel only
    ds = SelfSupervisedEpisodes(vols, maps, min_superpixel_pixels=50, length=30, augment="none")
    assert ds.describe()["n_slices_without_eligible_superpixel"] == 1
    assert all((ds[i].info.subject, ds[i].info.slice_index) != ("1", 0) for i in range(30))


def test_errors(data, make_volume) -> None:  # type: ignore[no-untyped-def]
    vols, maps = data
    with pytest.raises(ValueError, match="single region"):
        SelfSupervisedEpisodes(vols, {**maps, "1": (maps["1"] > 0).astype(np.int32)})
    with pytest.raises(ValueError, match="no body"):
        SelfSupervisedEpisodes(vols, {**maps, "1": np.zeros_like(maps["1"])})
    with pytest.raises(ValueError, match="no superpixel map"):
        SelfSupervisedEpisodes(vols, {"1": maps["1"]})
    with pytest.raises(ValueError, match="shape"):
        SelfSupervisedEpisodes(vols, {**maps, "1": maps["1"][:, :10]})
    with pytest.raises(ValueError, match="normalised"):
        SelfSupervisedEpisodes([make_volume("1")], maps)
    with pytest.raises(ValueError, match="no usable slice"):
        SelfSupervisedEpisodes(vols, maps, min_superpixel_pixels=10**6)
    unlabelled = [v.with_arrays(v.image, None) for v in vols]
    with pytest.raises(ValueError, match="needs labels"):
        SelfSupervisedEpisodes(unlabelled, maps, exclude_organs=("liver",))
    with pytest.raises(KeyError, match="choices"):
        SelfSupervisedEpisodes(vols, maps, exclude_organs=("pancreas",))
    with pytest.raises(ValueError, match="augmentation preset"):
        SelfSupervisedEpisodes(vols, maps, augment="heavy")
    with pytest.raises(ValueError, match="shots"):
        SelfSupervisedEpisodes(vols, maps, shots=0)


def test_empty_support_after_augmentation_raises(data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(data, max_augment_tries=3)
    calls = []

    def empty(self, image, mask, seed):  # type: ignore[no-untyped-def]
        calls.append(seed)
        return image, np.zeros_like(mask)

    monkeypatch.setattr(Augmenter, "__call__", empty)
    with pytest.raises(RuntimeError, match="empty after 3 augmentations"):
        ds[0]
    assert len(calls) == 3


def test_augmenter_determinism() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 12:28] = 1
    for preset in ("alpnet", "alpnet-geometric", "strong"):
        aug = Augmenter(preset)
        x1, m1 = aug(img, mask, 7)
        x2, m2 = Augmenter(preset)(img, mask, 7)
        x3, _ = aug(img, mask, 8)
        assert np.array_equal(x1, x2) and np.array_equal(m1, m2) and not np.array_equal(x1, x3)
        assert set(np.unique(m1)) <= {0, 1} and x1.min() >= img.min() - 1e-5 and x1.max() <= img.max() + 1e-5
    x, m = Augmenter("none")(img, mask, 1)
    assert np.array_equal(x, img) and np.array_equal(m, mask)


def test_geometric_preset_keeps_intensities() -> None:
    """``alpnet-geometric`` warps exactly as ``alpnet`` for the same seed but leaves grey levels alone: the
    middle level of a three-level image survives in the interior of its region (``alpnet``'s gamma moves it)."""
    img = np.zeros((64, 64), np.float32)
    img[8:56, 8:56] = 2.0
    img[20:44, 20:44] = 1.0
    mask = (img > 0).astype(np.uint8)
    for seed in range(5):
        xg, mg = Augmenter("alpnet-geometric")(img, mask, seed)
        xa, ma = Augmenter("alpnet")(img, mask, seed)
        assert np.array_equal(mg, ma)
        assert np.isclose(xg, 1.0, atol=1e-5).sum() > 100
        assert np.isclose(xa, 1.0, atol=1e-5).sum() < 10


def test_episode_validation() -> None:
    info = EpisodeInfo("s", 0, 1, None, 0)
    img, msk = torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8)
    Episode(img, msk, img, msk, info)
    with pytest.raises(ValueError, match="binary"):
        Episode(img, msk + 0.5, img, msk, info)
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        Episode(img, torch.zeros(2, 8, 8), img, msk, info)
    with pytest.raises(ValueError, match="4D"):
        Episode(img[0], msk, img, msk, info)
    with pytest.raises(ValueError, match="float32"):
        Episode(img.double(), msk, img, msk, info)
    with pytest.raises(ValueError, match="kind"):
        EpisodeInfo("s", 0, 1, None, 0, kind="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        collate_episodes([Episode(img, msk, img, msk, info), Episode(img[:, :1], msk, img[:, :1], msk, info)])


def test_augmenter_backends_and_errors() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    with pytest.raises(ValueError, match="choices"):
        Augmenter("alpnet", backend="kornia")
    x1, m1 = Augmenter("alpnet", backend="albumentations")(img, mask, 5)
    x2, m2 = Augmenter("alpnet", backend="albumentations")(img, mask, 5)
    assert np.array_equal(x1, x2) and np.array_equal(m1, m2) and m1.dtype == np.uint8
    flat = np.full((32, 32), 2.5, np.float32)
    x, m = Augmenter("alpnet")(flat, mask, 3)
    assert (x == 2.5).all() and set(np.unique(m)) <= {0, 1}


def test_affine_inverse_hand_computed() -> None:
    from episodes.sampling.augment import AugmentationConfig, _affine_inverse

    # scale 2 only, 5x5 slice, centre (2, 2): output x maps to input 2 + (x - 2) / 2
    cfg = AugmentationConfig(0.0, 0, 0.0, (2.0, 2.0), 0.0, 1.0, (1.0, 1.0), 0.0, 0.0, (0.1, 0.1))
    m = _affine_inverse(cfg, np.random.default_rng(0), 5, 5)
    np.testing.assert_allclose(m, [[0.5, 0.0, 1.0], [0.0, 0.5, 1.0]], atol=1e-12)


def test_geometry_only_identity_and_mask_follows_image() -> None:
    from episodes.sampling.augment import _CONFIGS, AugmentationConfig, _augment_opencv

    unit = np.zeros((48, 48), np.float32)
    unit[10:30, 14:38] = 1.0
    mask = (unit > 0).astype(np.uint8)
    identity = AugmentationConfig(0.0, 0, 0.0, (1.0, 1.0), 0.0, 1.0, (1.0, 1.0), 0.0, 0.0, (0.1, 0.1))
    out, out_mask = _augment_opencv(identity, unit, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out, unit)
    np.testing.assert_array_equal(out_mask, mask)
    strong = _CONFIGS["strong"]
    geometry = AugmentationConfig(
        strong.rotate, strong.shift_px, strong.shear, strong.scale, strong.elastic_alpha, 5.0,
        (1.0, 1.0), 0.0, 0.0, (0.1, 0.1), p_gamma=0.0, p_extra=0.0,
    )  # fmt: skip
    for seed in range(5):
        out, out_mask = _augment_opencv(geometry, unit, mask, np.random.default_rng(seed))
        # the image (bilinear) and the mask (nearest) are warped by the same map
        assert set(np.unique(out_mask)) <= {0, 1}
        agree = ((out > 0.5) == (out_mask > 0)).mean()
        assert agree > 0.97, agree
        assert not np.array_equal(out_mask, mask)


def test_elastic_field_matches_ssl_alpnet_magnitude() -> None:
    import cv2
    from scipy.ndimage import gaussian_filter

    from episodes.sampling.augment import _CONFIGS, _elastic_field

    cfg = _CONFIGS["alpnet"]  # alpha 10, sigma 5
    rng = np.random.default_rng(0)
    ref = [gaussian_filter(rng.random((96, 96)) * 2 - 1, 5, mode="constant") * 10 for _ in range(20)]
    ours = [f for _ in range(10) for f in _elastic_field(cfg, rng, 96, 96, cv2)]
    inner = (slice(20, -20), slice(20, -20))
    std_ref = np.std([r[inner] for r in ref])
    std_ours = np.std([o[inner] for o in ours])
    assert abs(std_ours / std_ref - 1) < 0.15, (std_ours, std_ref)  # ~0.33 px


def test_episode_pickles_by_value() -> None:
    import pickle
    from multiprocessing.reduction import ForkingPickler

    info = EpisodeInfo("s", 0, 1, None, 0)
    base = torch.rand(2, 1, 32, 32)
    tiled = base.expand(-1, 3, -1, -1).contiguous()
    masks = (torch.rand(2, 32, 32) > 0.5).float()
    ep = Episode(tiled[:1], masks[:1], tiled[1:], masks[1:], info)
    batch = collate_episodes([ep, ep])
    rand = torch.rand(1, 1, 3, 32, 32)
    untiled = EpisodeBatch(rand, masks[:1, None], rand.clone(), masks[1:, None], (info,))
    half = batch.support_masks * 0.5
    soft = EpisodeBatch(batch.support_images, half, batch.query_images, batch.query_masks, batch.infos)
    for obj in (ep, batch, untiled, soft):
        data = bytes(ForkingPickler.dumps(obj))
        back = pickle.loads(data)
        assert type(back) is type(obj) and (back.infos if hasattr(back, "infos") else back.info) == (
            obj.infos if hasattr(obj, "infos") else obj.info
        )
        for name in ("support_images", "support_masks", "query_images", "query_masks"):
            a, b = getattr(obj, name), getattr(back, name)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) and b.is_contiguous()
    # tiled channels travel as one channel and binary masks as uint8: 2 * (3 + 1) * 4 kB raw -> ~2 * 1.25 kB
    raw = sum(
        getattr(batch, n).numel() * 4
        for n in ("support_images", "support_masks", "query_images", "query_masks")
    )
    assert len(ForkingPickler.dumps(batch)) < 0.45 * raw


def test_episode_config_defaults_and_validation() -> None:
    cfg = EpisodeConfig()
    assert (cfg.shots, cfg.queries, cfg.augment) == (1, 1, "alpnet")
    assert cfg.min_superpixel_pixels == DEFAULT_MIN_SUPERPIXEL_PIXELS == 200
    for bad in ({"shots": 0}, {"queries": 1.5}, {"min_superpixel_pixels": True}):
        with pytest.raises(ValueError, match="integer >= 1"):
            EpisodeConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"augment='heavy'; choices: \['alpnet', 'alpnet-geometric', 'sabs', 'strong', 'none'\]"):
        EpisodeConfig(augment="heavy")


def test_from_config_equals_constructor(data) -> None:  # type: ignore[no-untyped-def]
    vols, maps = data
    cfg = EpisodeConfig(shots=2, queries=2, augment="strong", min_superpixel_pixels=50)
    a = SelfSupervisedEpisodes.from_config(vols, maps, cfg, channels=3, length=5, seed=7)
    b = SelfSupervisedEpisodes(
        vols,
        maps,
        shots=2,
        queries=2,
        channels=3,
        augment="strong",
        min_superpixel_pixels=50,
        length=5,
        seed=7,
    )
    assert a.describe() == b.describe() and a.config == cfg
    assert all(_same(a[i], b[i]) for i in range(5))
    c = SelfSupervisedEpisodes.from_config(
        vols, maps, cfg, channels=1, exclude_organs=("liver",), length=5, seed=7
    )
    assert c.describe()["exclude_organs"] == ["liver"]


def test_supervoxel_queries_come_from_nearby_slices(make_volume) -> None:  # type: ignore[no-untyped-def]
    """query_distance d: the query is slice z' (0 < |z' - z| <= d) of the same supervoxel, covering at
    least min_superpixel_pixels there; d = 0 leaves the SSL-ALPNet stream unchanged."""
    raws = [make_volume("1", seed=1, z=8), make_volume("2", seed=2, z=8)]
    params = SuperpixelParams("slic3d", {"segment_voxels": 600})
    maps = {v.subject: compute_volume_superpixels(v, params) for v in raws}
    vols = [preprocess(v, size=None) for v in raws]
    d = 2
    ds = SelfSupervisedEpisodes(vols, maps, augment="none", min_superpixel_pixels=30, query_distance=d, length=40)
    moved = 0
    for i in range(len(ds)):
        ep = ds[i]
        z, zq = ep.info.slice_index, ep.info.query_slice_index
        vol = vols[[v.subject for v in vols].index(ep.info.subject)]
        sp = maps[ep.info.subject]
        np.testing.assert_array_equal(ep.support_masks[0].numpy(), (sp[z] == ep.info.label).astype(np.float32))
        if zq is None:  # no other slice of this supervoxel is large enough
            near = [c for c in range(max(0, z - d), min(8, z + d + 1)) if c != z]
            assert all((sp[c] == ep.info.label).sum() < 30 for c in near)
            zq = z
        else:
            moved += 1
            assert 0 < abs(zq - z) <= d
            assert (sp[zq] == ep.info.label).sum() >= 30
        np.testing.assert_array_equal(ep.query_masks[0].numpy(), (sp[zq] == ep.info.label).astype(np.float32))
        np.testing.assert_array_equal(ep.query_images[0, 0].numpy(), vol.image[zq])
    assert moved > len(ds) // 2
    assert ds.describe()["query_distance"] == d and ds.config.query_distance == d
    same = SelfSupervisedEpisodes(vols, maps, augment="none", min_superpixel_pixels=30, length=5)
    explicit = SelfSupervisedEpisodes(vols, maps, augment="none", min_superpixel_pixels=30, length=5, query_distance=0)
    assert all(_same(same[i], explicit[i]) and same[i].info.query_slice_index is None for i in range(5))
    with pytest.raises(ValueError, match="query_distance must be an integer >= 0"):
        EpisodeConfig(query_distance=-1)



def test_adjacent_slices_fill_the_channels(data) -> None:  # type: ignore[no-untyped-def]
    vols, _ = data
    ds = _dataset(data, slice_input="adjacent", channels=3, augment="none", length=30)
    assert ds.describe()["slice_input"] == "adjacent"
    seen_edge = False
    for i in range(len(ds)):
        ep = ds[i]
        image = vols[[v.subject for v in vols].index(ep.info.subject)].image
        z, depth = ep.info.slice_index, image.shape[0]
        below, above = image[max(z - 1, 0)], image[min(z + 1, depth - 1)]  # the ends repeat the edge slice
        seen_edge |= z in (0, depth - 1)
        for got in (ep.support_images[0], ep.query_images[0]):
            np.testing.assert_array_equal(got.numpy(), np.stack([below, image[z], above]))
    assert seen_edge
    # every channel gets the same warp: the middle channel is the tiled dataset's image
    a = _dataset(data, slice_input="adjacent", augment="alpnet-geometric", length=4)[1]
    b = _dataset(data, augment="alpnet-geometric", length=4)[1]
    assert a.info == b.info
    torch.testing.assert_close(a.support_images[:, 1], b.support_images[:, 1], atol=1e-5, rtol=0)
    assert torch.equal(a.support_masks, b.support_masks)
    assert not torch.equal(a.support_images[:, 0], a.support_images[:, 1])


def test_adjacent_slices_keep_excluded_organs_out_of_training(data) -> None:  # type: ignore[no-untyped-def]
    # liver on slices 1..3 of each 6-slice volume: slices 0 and 4 neighbour it, so only slice 5 is left
    tiled = _dataset(data, exclude_organs=("liver",), augment="none", length=40)
    assert {tiled[i].info.slice_index for i in range(40)} == {0, 4, 5}
    ds = _dataset(data, exclude_organs=("liver",), augment="none", length=40, slice_input="adjacent")
    assert ds.describe()["n_slices_excluded_by_organs"] == 10
    assert {ds[i].info.slice_index for i in range(40)} == {5}


def test_adjacent_slices_need_an_odd_channel_count(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="odd number of input channels"):
        _dataset(data, slice_input="adjacent", channels=2)
    with pytest.raises(ValueError, match="slice_input must be one of"):
        _dataset(data, slice_input="volume")


def test_augmenter_warps_every_channel_alike() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:25, 12:30] = 1
    stack = np.stack([plane, plane, plane], axis=-1)
    geometric = Augmenter("alpnet-geometric")
    out, out_mask = geometric(stack, mask, seed=5)
    assert out.shape == (40, 40, 3) and out.dtype == np.float32
    single, single_mask = geometric(plane, mask, seed=5)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], single, atol=1e-5)
    assert np.array_equal(out_mask, single_mask)
    # intensity changes too are shared (gamma, contrast), except the noise, drawn per channel like a scan's
    aug = Augmenter("alpnet")
    for seed in range(20):
        out, out_mask = aug(stack, mask, seed=seed)
        assert np.array_equal(out_mask, aug(plane, mask, seed=seed)[1])
        span = float(plane.max() - plane.min())
        assert np.abs(out[..., 0] - out[..., 2]).max() <= 0.2 * span
    with pytest.raises(ValueError, match=r"\(H, W, C <= 4\)"):
        aug(np.zeros((40, 40, 5), np.float32), mask, seed=0)
