"""The one fold pipeline: split, CT statistics, superpixels, plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from episodes.data.phantom import make_phantom_dataset
from episodes.data.preprocess import fit_ct_stats
from episodes.data.volumes import Volume
from fewshot.config import load_config
from fewshot.pipeline import prepare_fold


@pytest.fixture(scope="module")
def volumes() -> list[Volume]:
    return make_phantom_dataset(6, modality="CT", shape=(12, 48, 48))


def _data(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config(
        {
            "data": {
                "dataset": "phantom-ct",
                "size": 32,
                "superpixel_workers": 0,
                "superpixels": {"params": {"min_size": 20}},
                "protocol": {"organs": ["liver"]},
                "cache_dir": str(tmp_path / "cache"),
            }
        }
    ).data


def test_stages_prepare_what_they_say(volumes: list[Volume], tmp_path: Path) -> None:
    data = _data(tmp_path)
    train = prepare_fold(data, volumes, stage="train", progress=False)
    assert train.plan is None and not train.test
    assert {v.subject for v in train.train} == set(train.split.train) == set(train.superpixels)
    assert all(v.normalized and v.shape[1:] == (32, 32) for v in train.train)
    assert train.superpixel_stats is not None and train.superpixel_stats.cache_misses == len(train.train)
    with pytest.raises(ValueError, match="training only"):
        train.require_plan()

    ev = prepare_fold(data, volumes, stage="evaluate")
    plan = ev.require_plan()
    assert set(ev.test) == {plan.split.support, *plan.split.queries}
    assert not set(ev.test) & set(ev.split.train)  # training never sees the evaluation scans
    assert not ev.train and not ev.superpixels
    # CT statistics come from the training split only, the same in both stages
    expected = fit_ct_stats([v for v in volumes if v.subject in ev.split.train])
    assert ev.norm_stats == train.norm_stats == expected
    assert ev.extras()["train_subjects"] == list(ev.split.train)

    both = prepare_fold(data, volumes, stage="both", progress=False)
    assert both.plan == plan and set(both.superpixels) == set(train.superpixels)
    for s in train.superpixels:
        np.testing.assert_array_equal(both.superpixels[s], train.superpixels[s])  # cache hit, same maps


def test_explicit_protocol_and_given_statistics(volumes: list[Volume], tmp_path: Path) -> None:
    data = _data(tmp_path)
    ids = [v.subject for v in volumes]
    protocol = replace(data.protocol, support_subject=ids[0], query_subjects=tuple(ids[1:]))
    fold = prepare_fold(
        data,
        volumes,
        stage="evaluate",
        protocol=protocol,
        fit_norm_stats=False,
        norm_stats=fit_ct_stats(volumes),
    )
    assert fold.require_plan().split.support == ids[0] and not fold.train_raw
    with pytest.raises(ValueError, match="no training subject"):
        prepare_fold(data, volumes, stage="train", protocol=protocol)
    with pytest.raises(ValueError, match="raw volumes"):
        prepare_fold(data, list(fold.test.values()), stage="evaluate", protocol=protocol)
