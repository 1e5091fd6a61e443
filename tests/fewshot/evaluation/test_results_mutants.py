"""Metrics and evaluation results to the last digit: the mutants of metrics.py and results.py these kill are
listed in docs/mutation-survivors.md. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fewshot.evaluation.metrics import (
    Counts,
    ScanScore,
    confusion_counts,
    dice_from_counts,
    precision,
    precision_from_counts,
    recall,
    recall_from_counts,
)
from fewshot.evaluation.results import EvaluationResult, _mean, aggregate, summarize_scans

# ------------------------------------------------------------------------------------ metrics


def test_counts_add_field_by_field_and_refuse_each_negative() -> None:
    assert Counts(1, 2, 3) + Counts(10, 20, 30) == Counts(11, 22, 33)
    assert Counts(0, 0, 0).tp == 0  # zeros are fine
    for bad in ((-1, 0, 0), (0, -1, 0), (0, 0, -1)):
        with pytest.raises(ValueError, match=f"tp={bad[0]} fp={bad[1]} fn={bad[2]}"):
            Counts(*bad)


def test_ratios_with_unequal_counts() -> None:
    c = Counts(tp=3, fp=1, fn=2)
    assert dice_from_counts(c) == 6 / 9  # 2*3 / (2*3 + 1 + 2)
    assert precision_from_counts(c) == 3 / 4
    assert recall_from_counts(c) == 3 / 5
    # the empty ratios: only the other count decides
    assert precision_from_counts(Counts(0, 0, 2)) == 0.0 and precision_from_counts(Counts(0, 0, 0)) == 1.0
    assert recall_from_counts(Counts(0, 2, 0)) == 0.0 and recall_from_counts(Counts(0, 0, 0)) == 1.0
    assert dice_from_counts(Counts(0, 1, 0)) == 0.0 and dice_from_counts(Counts(0, 0, 0)) == 1.0


def test_confusion_counts_of_float_and_int_masks_and_named_errors() -> None:
    pred = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    target = np.array([1, 0, 1, 1, 0], dtype=np.uint8)
    assert confusion_counts(pred, target) == Counts(tp=2, fp=1, fn=1)
    assert precision(pred, target) == 2 / 3 and recall(pred, target) == 2 / 3
    with pytest.raises(ValueError, match=r"^pred must be binary"):
        confusion_counts(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^target must be binary \(bool or 0/1\), got values \[0, 1, 2\]"):
        confusion_counts(np.array([0, 1, 1]), np.array([0, 2, 1]))


def test_scan_score_dict_values() -> None:
    s = ScanScore(subject="7", organ="liver", counts=Counts(tp=3, fp=1, fn=2), n_slices=4)
    assert s.to_dict() == {
        "subject": "7",
        "organ": "liver",
        "dice": 6 / 9,
        "precision": 3 / 4,
        "recall": 3 / 5,
    }


# ------------------------------------------------------------------------------------ results


def _result(dice: float = 0.5, **extras: object) -> EvaluationResult:
    return EvaluationResult(
        dice={"liver": dice, "spleen": 0.25, "mean": (dice + 0.25) / 2},
        precision={"liver": 1.0, "spleen": 0.0, "mean": 0.5},
        recall={"liver": 0.75, "spleen": 0.5, "mean": 0.625},
        per_scan=({"subject": "1", "organ": "liver", "dice": dice, "precision": 1.0, "recall": 0.75},),
        config={"seed": 3},
        library_version="9.9",
        extras=dict(extras),
    )


def test_result_validation_bounds() -> None:
    _result(dice=0.0)
    _result(dice=1.0)  # both ends of [0, 1] are scores
    for bad in (1.0001, -0.0001):
        with pytest.raises(ValueError, match="floats in"):
            _result(dice=bad)
    with pytest.raises(ValueError, match="floats in"):
        EvaluationResult(dice={"mean": 1}, precision={"mean": 0.5}, recall={"mean": 0.5}, per_scan=())  # int
    for name in ("dice", "precision", "recall"):
        scores = {"dice": {"mean": 0.5}, "precision": {"mean": 0.5}, "recall": {"mean": 0.5}}
        scores[name] = {"liver": 0.5}
        with pytest.raises(ValueError, match=f"^{name} scores lack the 'mean' entry"):
            EvaluationResult(**scores, per_scan=())  # type: ignore[arg-type]
    for key in ("dice", "per_scan", "config", "library_version"):
        with pytest.raises(ValueError, match=f"must not override result keys \\['{key}'\\]"):
            EvaluationResult(
                dice={"mean": 0.5},
                precision={"mean": 0.5},
                recall={"mean": 0.5},
                per_scan=(),
                extras={key: 1},
            )
    assert _result(timing={"seconds": 1.0}).extras == {"timing": {"seconds": 1.0}}


def test_result_dict_round_trip_and_json(tmp_path: Path) -> None:
    r = _result(timing={"seconds": 2.0})
    d = r.to_dict()
    assert d == {
        "dice": {"liver": 0.5, "spleen": 0.25, "mean": 0.375},
        "precision": {"liver": 1.0, "spleen": 0.0, "mean": 0.5},
        "recall": {"liver": 0.75, "spleen": 0.5, "mean": 0.625},
        "per_scan": [{"subject": "1", "organ": "liver", "dice": 0.5, "precision": 1.0, "recall": 0.75}],
        "config": {"seed": 3},
        "library_version": "9.9",
        "timing": {"seconds": 2.0},
    }
    assert list(d) == ["dice", "precision", "recall", "per_scan", "config", "library_version", "timing"]
    back = EvaluationResult.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d and back.extras == {"timing": {"seconds": 2.0}}
    # numbers and the version read back as float and str
    raw = {**d, "dice": {"liver": 1, "spleen": 0, "mean": 0}, "library_version": 1}
    back = EvaluationResult.from_dict(raw)
    assert back.dice == {"liver": 1.0, "spleen": 0.0, "mean": 0.0} and isinstance(back.dice["liver"], float)
    assert back.library_version == "1"
    for key in ("dice", "precision", "recall", "per_scan", "config", "library_version"):
        with pytest.raises(ValueError, match=f"lacks keys \\['{key}'\\]"):
            EvaluationResult.from_dict({k: v for k, v in d.items() if k != key})
    path = r.to_json(tmp_path / "r.json")
    assert path == tmp_path / "r.json"
    assert json.loads(path.read_text()) == d
    assert EvaluationResult.from_json(path).to_dict() == d


def test_markdown_table_exactly() -> None:
    r = _result(
        postprocess={
            "none": {},  # the first step is the result itself: no extra rows
            "lcc": {
                "dice": {"liver": 0.125, "spleen": 0.5, "mean": 0.3125},
                "precision": {"liver": 1.0, "spleen": 0.5, "mean": 0.75},
                "recall": {"liver": 0.0, "spleen": 0.25, "mean": 0.125},
            },
        },
        false_positives={"liver": {"background": 3, "spleen": 1}, "spleen": {}},
        resolution="reference labels",
        threshold=0.3,
    )
    assert r.to_markdown("Fold 0") == (
        "### Fold 0\n"
        "\n"
        "| metric | liver | spleen | mean |\n"
        "|---|---:|---:|---:|\n"
        "| Dice (%) | 50.00 | 25.00 | 37.50 |\n"
        "| Precision (%) | 100.00 | 0.00 | 50.00 |\n"
        "| Recall (%) | 75.00 | 50.00 | 62.50 |\n"
        "| Dice (%), post-processed: lcc | 12.50 | 50.00 | 31.25 |\n"
        "| Precision (%), post-processed: lcc | 100.00 | 50.00 | 75.00 |\n"
        "| Recall (%), post-processed: lcc | 0.00 | 25.00 | 12.50 |\n"
        "\n"
        "False positives by true region (% of each organ's false-positive voxels):\n"
        "\n"
        "| organ | FP voxels | background | spleen |\n"
        "|---|---:|---:|---:|\n"
        "| liver | 4 | 75.0 | 25.0 |\n"
        "\n"
        "Scored against reference labels.\n"
        "\n"
        "Foreground where the predicted probability > 0.3 (0.5 = argmax).\n"
    )
    plain = _result(threshold=0.5).to_markdown()
    assert plain.startswith("| metric | liver | spleen | mean |\n") and plain.count("\n") == 5
    # an organ's own column is "-"
    assert (
        _result(false_positives={"liver": {"spleen": 1}, "spleen": {"liver": 2}})
        .to_markdown()
        .endswith(
            "| organ | FP voxels | spleen | liver |\n|---|---:|---:|---:|\n| liver | 1 | 100.0 | - |\n| spleen | 2 | - | 100.0 |\n"
        )
    )


def test_mean_summaries_and_aggregate() -> None:
    assert _mean([0.25, 0.5]) == 0.375
    assert _mean([1e16, 1.0, -1e16]) == 1 / 3  # math.fsum: exact, where sum() would give 0
    with pytest.raises(ValueError, match="empty"):
        _mean([])
    rows = {
        "liver": [
            {"dice": 0.5, "precision": 1.0, "recall": 0.25},
            {"dice": 1.0, "precision": 0.5, "recall": 0.75},
        ],
        "spleen": [{"dice": 0.0, "precision": 0.25, "recall": 1.0}],
    }
    assert summarize_scans(rows) == {
        "dice": {"liver": 0.75, "spleen": 0.0, "mean": 0.375},
        "precision": {"liver": 0.75, "spleen": 0.25, "mean": 0.5},
        "recall": {"liver": 0.5, "spleen": 1.0, "mean": 0.75},
    }
    a, b = _result(dice=0.5, protocol={"fold": 0}), _result(dice=1.0, protocol={"fold": 1})
    agg = aggregate([a, b])
    assert agg.dice == {"liver": 0.75, "spleen": 0.25, "mean": 0.5}  # (0.375 + 0.625) / 2
    assert agg.precision == a.precision and agg.recall == a.recall
    assert [s["fold"] for s in agg.per_scan] == [0, 1] and agg.per_scan[1]["dice"] == 1.0
    assert agg.config == {"seed": 3} and agg.library_version == "9.9"
    assert agg.extras["n_folds"] == 2
    assert agg.extras["folds"][1] == {
        "protocol": {"fold": 1},
        "dice": dict(b.dice),
        "precision": dict(b.precision),
        "recall": dict(b.recall),
    }
    with pytest.raises(ValueError, match="no results"):
        aggregate([])
    other = EvaluationResult(
        dice={"kidney": 0.5, "mean": 0.5},
        precision={"kidney": 0.5, "mean": 0.5},
        recall={"kidney": 0.5, "mean": 0.5},
        per_scan=(),
    )
    with pytest.raises(ValueError, match=r"result 1 has organs \['kidney'\]"):
        aggregate([a, other])


def test_aggregate_of_one_fold_and_a_corrupt_result_file(tmp_path: Path) -> None:
    """Survivors of the 2026-12-06 full run: ``aggregate`` took its config and version from ``results[1]`` (one
    fold failed with an IndexError), and a corrupt result file's error named what it held."""
    one = aggregate([_result(0.25)])
    assert one.dice["mean"] == 0.25 and one.config == _result().config
    assert one.library_version == _result().library_version
    bad = tmp_path / "results.json"
    bad.write_text("[1,")
    with pytest.raises(ValueError, match=r"results\.json: cannot read evaluation result \("):
        EvaluationResult.from_json(bad)
