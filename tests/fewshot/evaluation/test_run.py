"""run_evaluation's protocol checks: training overlap is judged per (dataset, subject)."""

from __future__ import annotations

import pytest

from episodes.protocol import Protocol
from fewshot.checkpoint import LoadedCheckpoint
from fewshot.config import load_config
from fewshot.evaluation.run import check_protocol


def _loaded(dataset: str, subjects: list[str], setting: int = 1) -> LoadedCheckpoint:
    cfg = load_config({"data": {"dataset": dataset, "protocol": {"setting": setting}}})
    return LoadedCheckpoint(
        model=None, config=cfg, payload={"dataset": dataset, "train_subjects": subjects}, global_step=1, path="m.ckpt"
    )


def test_same_ids_in_another_dataset_are_not_an_overlap() -> None:
    phantom = _loaded("phantom-ct", ["2", "3", "5"])
    chaos = Protocol("chaos-mr", support_subject="2", query_subjects=("3", "5"))
    check_protocol(phantom, chaos, {"2", "3", "5"}, allow_train_overlap=False)  # no error


def test_training_subjects_of_the_same_dataset_are_refused() -> None:
    phantom = _loaded("phantom-ct", ["2", "3", "5"])
    same = Protocol("phantom-ct", support_subject="2", query_subjects=("7",))
    with pytest.raises(ValueError, match=r"\['2'\] of phantom-ct .* --allow-train-overlap"):
        check_protocol(phantom, same, {"2", "7"}, allow_train_overlap=False)
    check_protocol(phantom, same, {"2", "7"}, allow_train_overlap=True)


def test_setting_2_needs_a_model_trained_without_the_group() -> None:
    s1 = _loaded("phantom-ct", [])
    with pytest.raises(ValueError, match="train with --setting 2"):
        check_protocol(s1, Protocol("phantom-ct", setting=2, organs=("liver",)), set(), allow_train_overlap=False)
    s2 = _loaded("phantom-ct", [], setting=2)
    check_protocol(s2, Protocol("phantom-ct", setting=2, organs=("liver",)), set(), allow_train_overlap=False)
