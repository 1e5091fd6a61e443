"""The synthetic phantom is deterministic, labelled and varies between subjects."""

from __future__ import annotations

import numpy as np
import pytest

from episodes.data.datasets import load_dataset
from episodes.data.phantom import make_phantom, make_phantom_dataset
from episodes.data.preprocess import fit_ct_stats, preprocess

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_reproducible_and_labelled(modality):
    a = make_phantom(7, modality=modality, shape=(16, 64, 64))
    b = make_phantom(7, modality=modality, shape=(16, 64, 64))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    for organ in ORGANS:
        assert a.has_organ(organ)
        assert 2 <= len(a.slices_with(organ)) < a.shape[0]
    c = make_phantom(8, modality=modality, shape=(16, 64, 64))
    assert not np.array_equal(a.label, c.label)


def test_anatomy_is_plausible():
    v = make_phantom(3, shape=(32, 96, 96))
    x = np.nonzero(v.label == 1)[2]
    assert x.mean() < 48  # liver on patient right = image left
    x = np.nonzero(v.label == 4)[2]
    assert x.mean() > 48  # spleen on the other side
    liver = (v.label == 1).sum()
    assert liver > 3 * (v.label == 4).sum() and liver > 3 * (v.label == 2).sum()
    # organs are not trivially separable by intensity: bowel/distractors overlap the organ range
    body = v.image > -500
    organ = v.label > 0
    lo, hi = np.percentile(v.image[organ], [10, 90])
    distractor = body & ~organ & (v.image > lo) & (v.image < hi)
    assert distractor.sum() > 0.1 * organ.sum()


def test_dataset_and_preprocess():
    vols = make_phantom_dataset(3, shape=(12, 48, 48), seed=1)
    assert [v.subject for v in vols] == ["0", "1", "2"]
    stats = fit_ct_stats(vols)
    p = preprocess(vols[0], size=64, ct_stats=stats)
    assert p.shape == (12, 64, 64) and p.normalized
    with pytest.raises(ValueError, match="ct_stats"):
        preprocess(vols[0])
    with pytest.raises(ValueError, match="already normalised"):
        preprocess(p, ct_stats=stats)
    mr = load_dataset("phantom-mr", n_subjects=2, shape=(12, 48, 48))
    assert mr[0].modality == "MR"
    with pytest.raises(ValueError, match="too small"):
        make_phantom(0, shape=(4, 48, 48))
    with pytest.raises(KeyError, match="choices"):
        load_dataset("imagenet")
