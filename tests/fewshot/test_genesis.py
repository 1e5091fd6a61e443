"""Models Genesis 2D transforms, the restoration model and a short pretraining run."""

from __future__ import annotations

import hashlib
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

import fewshot
from fewshot.backbones import WeightsRecord, create_backbone
from fewshot.genesis import (
    GenesisConfig,
    GenesisModel,
    bezier_curve,
    flip_pair,
    genesis_pair,
    inner_cutout,
    local_pixel_shuffle,
    masked_pair,
    nonlinear_transform,
    outer_cutout,
    partial_path,
    pretrain_genesis,
    run_pretrain_genesis,
    sorted_samples,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(seed: int = 0, side: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).random((side, side)).astype(np.float32)


def _smooth_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Sums of random low-frequency cosines, scaled to [0, 1] per image: ``(n, side, side)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(n):
        img = sum(
            rng.normal()
            * np.cos(2 * np.pi * (rng.integers(1, 3) * yy + rng.integers(0, 3) * xx) + rng.random() * 6)
            for _ in range(3)
        )
        img = (img - img.min()) / (img.max() - img.min())
        out.append(img)
    return np.stack(out).astype(np.float32)


def test_bezier_endpoints_and_reverse_order() -> None:
    x, y = bezier_curve(np.array([[0, 0], [0.2, 0.9], [0.7, 0.1], [1, 1]]), n_times=11)
    assert (x[0], y[0], x[-1], y[-1]) == (1.0, 1.0, 0.0, 0.0)  # official sampling runs last -> first


@pytest.mark.parametrize("seed", range(12))
def test_nonlinear_transform_is_monotonic(seed: int) -> None:
    img = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    out = nonlinear_transform(img, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    d = np.diff(out.ravel())
    assert (d >= -1e-6).all() or (d <= 1e-6).all()
    assert np.array_equal(out, nonlinear_transform(img, np.random.default_rng(seed)))


def test_sorted_samples_equals_np_sort() -> None:
    """The Bezier samples are monotonic (control values in [0, 1]), so reversing replaces sorting: same bytes."""
    rng = np.random.default_rng(0)
    controls = [(rng.random(2), rng.random(2)) for _ in range(200)] + [(np.ones(2), np.zeros(2))]  # + the flattest
    for p1, p2 in controls:
        for values in bezier_curve(np.array([[0.0, 0.0], p1, p2, [1.0, 1.0]])):
            assert sorted_samples(values).tobytes() == np.sort(values).tobytes()
    wiggly = np.array([0.3, 0.1, 0.2, 0.2, 0.0])
    for values in (wiggly, wiggly[::-1].copy(), np.sort(wiggly), np.zeros(3)):  # not monotonic, and the easy cases
        assert sorted_samples(values).tobytes() == np.sort(values).tobytes()


def test_nonlinear_transform_inverts_about_half_the_time() -> None:
    img = np.array([[0.0, 1.0]], dtype=np.float32)
    dec = sum(nonlinear_transform(img, np.random.default_rng(s))[0, 1] < 0.5 for s in range(60))
    assert 15 < dec < 45


def test_local_pixel_shuffle_is_a_local_permutation() -> None:
    img = _image(1)
    out = local_pixel_shuffle(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.array_equal(np.sort(out.ravel()), np.sort(img.ravel()))  # whole-image multiset kept
    assert not np.array_equal(out, img)
    # pixels move at most (block side - 1) = 64 // 10 - 1 = 5 per axis per block; each 16x16 tile's
    # values stay within the tile dilated by a few blocks: compare means of coarse tiles
    coarse_in = img.reshape(4, 16, 4, 16).mean((1, 3))
    coarse_out = out.reshape(4, 16, 4, 16).mean((1, 3))
    assert np.abs(coarse_in - coarse_out).max() < 0.1
    assert np.array_equal(out, local_pixel_shuffle(img, np.random.default_rng(0)))


def test_local_pixel_shuffle_single_block_multiset() -> None:
    img = _image(2, side=40)
    out = local_pixel_shuffle(img, np.random.default_rng(3), n_blocks=1)
    changed = np.argwhere(out != img)
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert y1 - y0 < 4 and x1 - x0 < 4  # 40 // 10 = 4
    box_in, box_out = img[y0 : y1 + 1, x0 : x1 + 1], out[y0 : y1 + 1, x0 : x1 + 1]
    assert np.array_equal(np.sort(box_in.ravel()), np.sort(box_out.ravel()))


def _changed_boxes_bbox(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    idx = np.argwhere(a != b)
    (y0, x0), (y1, x1) = idx.min(0), idx.max(0)
    return int(y0), int(x0), int(y1), int(x1)


@pytest.mark.parametrize("seed", range(8))
def test_inner_cutout_boxes_within_bounds(seed: int) -> None:
    img = np.full((60, 60), 2.0, dtype=np.float32)  # 2.0 is never drawn by U(0,1) noise
    out = inner_cutout(img, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.float32
    noisy = out != 2.0
    if not noisy.any():  # zero boxes happens with p 0.05
        return
    assert out[noisy].min() >= 0 and out[noisy].max() < 1
    y0, x0, y1, x1 = _changed_boxes_bbox(out, img)
    assert y0 >= 3 and x0 >= 3 and y1 <= 60 - 4 and x1 <= 60 - 4
    assert noisy.sum() >= 10 * 10  # at least one box of side >= 60 // 6
    assert noisy.sum() <= 5 * 20 * 20  # at most 5 boxes of side <= 60 // 3


@pytest.mark.parametrize("seed", range(8))
def test_outer_cutout_keeps_boxes_of_original(seed: int) -> None:
    img = np.full((70, 70), 2.0, dtype=np.float32)
    out = outer_cutout(img, np.random.default_rng(seed))
    kept = out == 2.0
    lo, hi = 70 - 4 * 70 // 7, 70 - 3 * 70 // 7  # box sides in [30, 40]
    assert kept.sum() >= lo * lo and kept.sum() <= 5 * hi * hi
    ky, kx = np.nonzero(kept)
    assert ky.min() >= 3 and kx.min() >= 3 and ky.max() <= 66 and kx.max() <= 66
    assert out[~kept].min() >= 0 and out[~kept].max() < 1


def test_flip_pair_flips_both() -> None:
    img = _image(4, side=8)
    for s in range(20):
        x, y = flip_pair(img.copy(), img.copy(), np.random.default_rng(s), prob=0.9)
        assert np.array_equal(x, y)


def test_genesis_pair_shapes_determinism_and_probabilities() -> None:
    img = _image(5, side=48)
    a = genesis_pair(img, np.random.default_rng(11))
    b = genesis_pair(img, np.random.default_rng(11))
    assert a[0].shape == a[1].shape == img.shape and a[0].dtype == a[1].dtype == np.float32
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    identity = GenesisConfig(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=0)
    x, y = genesis_pair(img, np.random.default_rng(0), identity)
    assert np.array_equal(x, img) and np.array_equal(y, img)
    with pytest.raises(ValueError, match="2D"):
        genesis_pair(img[None], np.random.default_rng(0))


@pytest.mark.parametrize("name", ["unet", "cbr-small"])
def test_genesis_model_restores_input_shape(name: str) -> None:
    model = GenesisModel(create_backbone(name, in_channels=1))
    x = torch.rand(2, 1, 32, 32)
    y = model(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    torch.nn.functional.mse_loss(y, x).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pretraining_lowers_loss_and_weights_load(tmp_path: Path) -> None:
    images = _smooth_images(32, 32)
    out = tmp_path / "sub" / "genesis_unet.pt"
    res = run_pretrain_genesis(
        images, backbone="unet", steps=30, out=out, batch_size=4, lr=2e-3, seed=0, in_channels=1
    )
    assert len(res.losses) == 30 and res.out == out and out.is_file()
    assert np.mean(res.losses[-5:]) < 0.8 * np.mean(res.losses[:5])
    assert not list(out.parent.glob("*.tmp*"))
    blob = torch.load(out, weights_only=True)
    assert blob["meta"]["backbone"] == "unet" and blob["meta"]["steps"] == 30
    assert blob["meta"]["final_loss"] == pytest.approx(res.losses[-1])
    assert blob["meta"]["version"] == fewshot.__version__ == version("fewshot-medseg")  # not None
    assert blob["meta"]["data_sha256"] == hashlib.sha256(images.astype(np.float32).tobytes()).hexdigest()
    record = WeightsRecord.from_dict(blob["meta"]["record"])
    assert (record.init, record.file, record.mean, record.std) == ("genesis", out.name, (0.0,), (1.0,))
    bb = create_backbone("unet", init="genesis", weights=out, in_channels=1)
    assert set(blob["state_dict"]) == set(bb.state_dict())
    assert all(torch.equal(v, blob["state_dict"][k]) for k, v in bb.state_dict().items())
    report = bb.init_report
    assert report is not None and report.randomized == [] and report.record == record
    assert report.to_dict()["source"] == str(out)
    assert report.to_dict()["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="'unet', not 'cbr-small'"):
        create_backbone("cbr-small", init="genesis", weights=out)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_pretrain_genesis(images * 2, backbone="unet", steps=1, out=out)


def test_genesis_result_loss_drop() -> None:
    from fewshot.genesis import GenesisResult

    # 10 losses -> k = 2: mean of the first two and of the last two
    result = GenesisResult(losses=[1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1])
    assert result.loss_drop() == pytest.approx((0.9, 0.15))
    with pytest.raises(ValueError, match="no losses"):
        GenesisResult().loss_drop()


def test_pretraining_a_truncated_encoder(tmp_path: Path) -> None:
    """The encoder is pretrained as the few-shot model cuts it: its file holds exactly those keys."""
    out = tmp_path / "genesis_cbr.pt"
    run_pretrain_genesis(
        _smooth_images(8, 32), backbone="cbr-small", steps=2, out=out, batch_size=2, in_channels=1,
        truncate="block3", output_stride=4,
    )
    blob = torch.load(out, weights_only=True)
    assert (blob["meta"]["truncate"], blob["meta"]["output_stride"]) == ("block3", 4)
    cut = create_backbone("cbr-small", in_channels=1, truncate="block3", output_stride=4)
    assert set(blob["state_dict"]) == set(cut.state_dict())
    assert len(blob["state_dict"]) < len(create_backbone("cbr-small", in_channels=1).state_dict())
    bb = create_backbone(
        "cbr-small", init="genesis", weights=out, in_channels=1, truncate="block3", output_stride=4
    )
    assert bb.init_report is not None and bb.init_report.randomized == []
    assert all(torch.equal(v, blob["state_dict"][k]) for k, v in bb.state_dict().items())
    with pytest.raises(ValueError, match=r"pretrained with truncate='block3' \(output stride 4\).*block4"):
        create_backbone("cbr-small", init="genesis", weights=out, in_channels=1)


def test_bf16_pretraining_lowers_loss_and_is_recorded(tmp_path: Path) -> None:
    """The opt-in bfloat16 autocast trains (its own digits) and says so in the file; float32 stays the default."""
    images = _smooth_images(32, 32)
    kwargs = {"backbone": "cbr-small", "steps": 30, "batch_size": 4, "lr": 2e-3, "seed": 0, "in_channels": 1}
    half = run_pretrain_genesis(images, out=tmp_path / "bf16.pt", bf16=True, truncate="block2", **kwargs)
    full = run_pretrain_genesis(images, out=tmp_path / "fp32.pt", truncate="block2", **kwargs)
    assert np.mean(half.losses[-5:]) < 0.8 * np.mean(half.losses[:5]) and half.losses != full.losses
    assert torch.load(half.out, weights_only=True)["meta"]["bf16"] is True
    assert "bf16" not in torch.load(full.out, weights_only=True)["meta"]


def test_masked_pair_masks_whole_patches_with_the_mean() -> None:
    """60 % of the 16-px patches (round(0.6 * 16) = 10 of a 64x64 image's 16) are replaced by the image's mean; the
    target is the image (flipped or not, as the input) and the weight marks exactly the replaced pixels."""
    image = _image(3)
    for seed in range(5):
        x, y, w = masked_pair(image, np.random.default_rng(seed), patch=16, ratio=0.6)
        assert x.shape == y.shape == w.shape == (64, 64) and x.dtype == y.dtype == w.dtype == np.float32
        cells = w.reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, 256)
        assert set(np.unique(cells.min(1) == cells.max(1))) == {True}  # whole patches
        assert int(cells[:, 0].sum()) == 10
        assert np.allclose(x[w > 0], image.mean()) and np.array_equal(x[w == 0], y[w == 0])
        assert any(np.array_equal(y, f) for f in (image, image[::-1], image[:, ::-1], image[::-1, ::-1]))
    # a side that is not a multiple of the patch: the last patches are cut, at least one patch is masked
    x, _, w = masked_pair(_image(1, 20), np.random.default_rng(0), patch=16, ratio=0.01)
    assert w.shape == (20, 20) and w.sum() > 0
    with pytest.raises(ValueError, match="ratio"):
        masked_pair(image, np.random.default_rng(0), ratio=1.0)


def test_mim_pretraining_lowers_the_masked_loss_and_loads_as_init_mim(tmp_path: Path) -> None:
    """``objective='mim'``: the masked-patch L1 falls, the file says so, loads with ``init='mim'`` and is refused by
    ``init='genesis'`` (and a Genesis file by ``init='mim'``)."""
    images = _smooth_images(32, 32)
    kwargs = {"backbone": "cbr-small", "steps": 30, "batch_size": 4, "lr": 2e-3, "seed": 0, "in_channels": 1}
    res = pretrain_genesis(images, out=tmp_path / "mim.pt", truncate="block2", objective="mim", mask_patch=8,
                           **kwargs)
    assert np.mean(res.losses[-5:]) < 0.8 * np.mean(res.losses[:5])
    meta = torch.load(res.out, weights_only=True)["meta"]
    assert (meta["objective"], meta["mask_patch"], meta["mask_ratio"], meta["record"]["init"]) == ("mim", 8, 0.6, "mim")
    bb = create_backbone("cbr-small", init="mim", weights=res.out, in_channels=1, truncate="block2")
    assert bb.init_report is not None and bb.init_report.randomized == []
    with pytest.raises(ValueError, match="pretrained with objective 'mim': load it with init 'mim'"):
        create_backbone("cbr-small", init="genesis", weights=res.out, in_channels=1, truncate="block2")
    genesis = run_pretrain_genesis(images, out=tmp_path / "g.pt", truncate="block2", **{**kwargs, "steps": 1})
    with pytest.raises(ValueError, match="objective 'genesis': load it with init 'genesis'"):
        create_backbone("cbr-small", init="mim", weights=genesis.out, in_channels=1, truncate="block2")
    with pytest.raises(ValueError, match="objective must be one of"):
        pretrain_genesis(images, out=tmp_path / "x.pt", objective="mae", **kwargs)


@pytest.mark.parametrize("objective", ["genesis", "mim"])
def test_a_stopped_pretraining_resumes_to_the_same_weights(tmp_path: Path, objective: str) -> None:
    """Stopped by its time limit after step 1, then checkpointed every 2 steps and run again: the same losses and
    bit-identical weights as one uninterrupted run; the partial file is gone once the weights are written. A partial
    file of other settings is refused, not resumed."""
    images = _smooth_images(8, 32)
    kwargs = {"backbone": "cbr-small", "steps": 6, "batch_size": 2, "seed": 1, "in_channels": 1,
              "truncate": "block2", "objective": objective, "mask_patch": 8}
    whole = pretrain_genesis(images, lr=1e-3, out=tmp_path / "whole.pt", **kwargs)
    out = tmp_path / "parts.pt"
    first = pretrain_genesis(images, lr=1e-3, out=out, time_limit_s=0.0, **kwargs)
    assert not first.finished and len(first.losses) == 1 and first.partial == partial_path(out)
    assert partial_path(out).is_file() and not out.exists()
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        pretrain_genesis(images, lr=5e-3, out=out, **kwargs)
    state = torch.load(partial_path(out), weights_only=True)
    assert 0 < state["seconds"] < 600  # the first call's wall time; say it took 1,000 s (an earlier session):
    torch.save({**state, "seconds": 1000.0}, partial_path(out))
    t0 = time.perf_counter()
    second = pretrain_genesis(images, lr=1e-3, out=out, checkpoint_every=2, **kwargs)
    assert 1000.0 < torch.load(out, weights_only=True)["meta"]["seconds"] <= 1000.0 + time.perf_counter() - t0
    assert second.finished and second.resumed_from == 1 and second.losses == whole.losses
    assert not partial_path(out).exists()
    a = torch.load(whole.out, weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert 0 < torch.load(whole.out, weights_only=True)["meta"]["seconds"] < 600  # its wall time
