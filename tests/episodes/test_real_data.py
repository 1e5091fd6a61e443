"""Every subject of both real sets loads with the expected shapes, labels and organs.

The tables were measured on the SSL-ALPNet preprocessed copies (they match the provenance notes
shipped with the data, outside this repository)."""

from __future__ import annotations

import numpy as np
import pytest

from episodes.data.datasets import load_dataset
from episodes.data.loaders import load_btcv_png_folder, load_ssl_alpnet_folder
from episodes.data.preprocess import fit_ct_stats, preprocess

# id: (Z, slices with liver, RK, LK, spleen)  -- CHAOS T2-SPIR, 16 subjects
CHAOS = {
    "1": (37, 24, 14, 16, 14),
    "2": (31, 22, 14, 14, 11),
    "3": (36, 19, 13, 15, 14),
    "5": (36, 28, 14, 14, 11),
    "8": (34, 28, 18, 17, 21),
    "10": (36, 21, 14, 14, 11),
    "13": (36, 21, 14, 16, 12),
    "15": (31, 20, 16, 18, 14),
    "19": (36, 25, 14, 15, 13),
    "20": (31, 21, 17, 15, 17),
    "21": (33, 19, 11, 13, 9),
    "22": (38, 21, 14, 14, 15),
    "31": (34, 21, 12, 13, 14),
    "32": (46, 32, 15, 20, 16),
    "33": (34, 25, 15, 15, 16),
    "34": (35, 22, 15, 16, 13),
}

# id: (PNG slices, liver, spleen, RK, LK, gallbladder present) -- BTCV/SABS CT, 23 subjects
BTCV = {
    "0": (148, 75, 35, 41, 37, True),
    "1": (140, 54, 21, 29, 33, True),
    "2": (199, 65, 35, 40, 42, True),
    "3": (141, 56, 30, 29, 34, True),
    "4": (118, 50, 42, 40, 37, True),
    "5": (132, 53, 20, 32, 31, True),
    "7": (149, 54, 27, 20, 21, True),
    "8": (150, 81, 106, 51, 47, True),
    "10": (144, 53, 21, 35, 33, True),
    "11": (90, 36, 25, 22, 21, True),
    "12": (97, 37, 18, 20, 19, False),
    "13": (125, 56, 24, 30, 29, True),
    "14": (86, 35, 16, 18, 20, True),
    "15": (132, 25, 17, 21, 25, True),
    "16": (89, 40, 19, 25, 22, True),
    "17": (90, 48, 17, 21, 19, True),
    "18": (101, 47, 28, 30, 35, True),
    "19": (154, 61, 36, 37, 35, True),
    "20": (94, 62, 36, 36, 38, True),
    "21": (145, 59, 32, 35, 34, True),
    "22": (105, 38, 21, 24, 20, True),
    "23": (99, 32, 23, 20, 24, True),
    "24": (95, 39, 24, 22, 23, False),
}

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def chaos(chaos_dir):
    return load_ssl_alpnet_folder(chaos_dir)


@pytest.fixture(scope="module")
def btcv(btcv_dir):
    return load_btcv_png_folder(btcv_dir)


def test_chaos_every_subject(chaos):
    assert [v.subject for v in chaos] == sorted(CHAOS, key=int)
    for v in chaos:
        z, liver, rk, lk, spleen = CHAOS[v.subject]
        assert v.shape == (z, 256, 256)
        assert v.modality == "MR" and v.intensity == "raw"
        assert v.spacing == pytest.approx((7.7, 1.25, 1.25), abs=1e-3)
        assert set(np.unique(v.label)) == {0, 1, 2, 3, 4}
        counts = tuple(len(v.slices_with(o)) for o in ("liver", "right_kidney", "left_kidney", "spleen"))
        assert counts == (liver, rk, lk, spleen), v.subject
        assert v.image.min() >= 0 and 700 < v.image.max() < 1400


def test_btcv_every_subject(btcv):
    assert [v.subject for v in btcv] == sorted(BTCV, key=int)
    for v in btcv:
        n_png, liver, spleen, rk, lk, has_gb = BTCV[v.subject]
        assert v.shape == (n_png - 1, 257, 257)  # the empty last slice is dropped
        assert v.modality == "CT" and v.intensity == "window255"
        assert 0 <= v.image.min() and v.image.max() <= 255
        counts = tuple(len(v.slices_with(o)) for o in ("liver", "spleen", "right_kidney", "left_kidney"))
        assert counts == (liver, spleen, rk, lk), v.subject
        assert v.has_organ("gallbladder") == has_gb
        expected = set(range(14)) - (set() if has_gb else {4})
        assert set(np.unique(v.label)) == expected
        # organs are brighter than the rest of the body (the slices line up with the labels)
        assert v.image[v.label == 6].mean() > v.image[v.label == 0].mean() + 40


def test_btcv_last_slice_is_empty_when_kept(btcv_dir):
    (v,) = load_btcv_png_folder(btcv_dir, subjects=["0"], drop_last_slice=False)
    assert v.shape[0] == 148
    assert v.image[-1].max() == 0 and v.label[-1].max() == 0


def test_preprocess_real(chaos, btcv):
    mr = preprocess(chaos[0], size=256)
    assert abs(float(mr.image.mean())) < 1e-3 and abs(float(mr.image.std()) - 1) < 1e-3
    stats = fit_ct_stats(btcv[:5])
    ct = preprocess(btcv[6], size=256, ct_stats=stats)
    assert ct.shape == (btcv[6].shape[0], 256, 256)
    assert ct.label is not None and set(np.unique(ct.label)) <= set(range(14))
    # in-plane spacing grows by 257/256 and the affine follows it
    assert ct.spacing[1] == pytest.approx(btcv[6].spacing[1] * 257 / 256)


def test_registry_uses_env(chaos_dir, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", str(chaos_dir.parent))
    vols = load_dataset("chaos-mr", subjects=["1", "2"])
    assert [v.subject for v in vols] == ["1", "2"]
