"""``fewshot segment`` preprocesses a long CT a slab of slices at a time, with the same result."""

from __future__ import annotations

import numpy as np
import pytest

from episodes.data.phantom import make_phantom
from episodes.data.preprocess import NormStats, preprocess
from fewshot import segment


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_slabs_give_the_whole_volume_result(modality: str, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = make_phantom(7, modality=modality, shape=(13, 56, 48))
    stats = NormStats(mean=80.0, std=50.0) if modality == "CT" else None
    whole = preprocess(volume, size=32, ct_stats=stats)
    monkeypatch.setattr(segment, "SLAB", 4)  # 13 slices: slabs of 4, 4, 4 and 1
    slabs = segment._preprocess_slabs(volume, 32, stats)
    np.testing.assert_array_equal(slabs.image, whole.image)
    np.testing.assert_array_equal(slabs.label, whole.label)
    assert slabs.spacing == whole.spacing and np.array_equal(slabs.affine, whole.affine)
    bare = segment._geometry_only(volume)
    assert bare.shape == volume.shape and bare.image.strides == (0, 0, 0)  # no voxels kept
