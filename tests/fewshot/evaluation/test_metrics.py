from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot.evaluation.metrics import (
    Counts,
    ScanScore,
    confusion_counts,
    dice,
    dice_from_counts,
    precision,
    precision_from_counts,
    recall,
    recall_from_counts,
)


def test_hand_computed_counts_and_scores() -> None:
    pred = np.array([[1, 1, 0], [1, 0, 0]])
    target = np.array([[1, 0, 0], [1, 1, 0]])
    c = confusion_counts(pred, target)
    assert c == Counts(tp=2, fp=1, fn=1)
    assert dice(pred, target) == pytest.approx(4 / 6)
    assert precision(pred, target) == pytest.approx(2 / 3)
    assert recall(pred, target) == pytest.approx(2 / 3)
    assert dice(torch.tensor(pred), torch.tensor(target)) == pytest.approx(4 / 6)


def test_against_voxel_loop_on_random_3d_masks() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((5, 7, 9)) > 0.6
    target = rng.random((5, 7, 9)) > 0.5
    tp = fp = fn = 0
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        tp += p and t
        fp += p and not t
        fn += t and not p
    assert confusion_counts(pred, target) == Counts(tp, fp, fn)
    assert dice(pred, target) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_empty_cases_are_defined() -> None:
    assert dice_from_counts(Counts(0, 0, 0)) == 1.0
    assert precision_from_counts(Counts(0, 0, 0)) == 1.0
    assert recall_from_counts(Counts(0, 0, 0)) == 1.0
    # organ missed entirely: nothing predicted, ground truth present
    assert dice_from_counts(Counts(0, 0, 5)) == 0.0
    assert precision_from_counts(Counts(0, 0, 5)) == 0.0
    assert recall_from_counts(Counts(0, 0, 5)) == 0.0
    # false alarm on an empty ground truth
    assert dice_from_counts(Counts(0, 3, 0)) == 0.0
    assert recall_from_counts(Counts(0, 3, 0)) == 0.0
    assert precision_from_counts(Counts(0, 3, 0)) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="does not match target shape"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="binary"):
        confusion_counts(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        Counts(-1, 0, 0)


def test_scan_score_sums_before_ratio() -> None:
    # two slices: Dice of the summed counts, not the mean of slice Dice values
    s1, s2 = Counts(tp=1, fp=0, fn=0), Counts(tp=0, fp=0, fn=9)
    score = ScanScore(subject="a", organ="liver", counts=s1 + s2, n_slices=2)
    assert score.dice == pytest.approx(2 / 11)
    assert set(score.to_dict()) == {"subject", "organ", "dice", "precision", "recall"}
