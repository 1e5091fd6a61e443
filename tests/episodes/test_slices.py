"""Slice inputs: which slice feeds each channel (hand-computed), stacking, errors."""

from __future__ import annotations

import numpy as np
import pytest

from episodes.data.slices import channel_slices, check_slice_input, stack_slices


def test_channel_slices_hand_computed() -> None:
    assert channel_slices(3, 6, 3, "tile") == [3, 3, 3]
    assert channel_slices(3, 6, 3, "adjacent") == [2, 3, 4]
    assert channel_slices(0, 6, 3, "adjacent") == [0, 0, 1]  # the ends repeat the edge slice
    assert channel_slices(5, 6, 5, "adjacent") == [3, 4, 5, 5, 5]
    assert channel_slices(0, 1, 1, "adjacent") == [0]
    with pytest.raises(IndexError):
        channel_slices(6, 6, 3, "adjacent")


def test_stack_slices() -> None:
    volume = np.arange(4 * 2 * 2, dtype=np.float64).reshape(4, 2, 2)
    out = stack_slices(volume, [0, 2], 3, "adjacent")
    assert out.shape == (2, 3, 2, 2) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], volume[[0, 0, 1]])
    np.testing.assert_array_equal(out[1], volume[[1, 2, 3]])
    np.testing.assert_array_equal(stack_slices(volume, [3], 2, "tile")[0], volume[[3, 3]])
    assert stack_slices(volume, [], 3, "adjacent").shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match=r"\(Z, H, W\)"):
        stack_slices(volume[0], [0], 3)


def test_check_slice_input() -> None:
    assert check_slice_input("adjacent", 3) == "adjacent"
    assert check_slice_input("tile", 2) == "tile"
    with pytest.raises(ValueError, match="odd"):
        check_slice_input("adjacent", 4)
    with pytest.raises(ValueError, match="one of"):
        check_slice_input("2.5d", 3)
