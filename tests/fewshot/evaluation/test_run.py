"""run_evaluation's protocol checks: training overlap is judged per (dataset, subject)."""

from __future__ import annotations

import pytest

from episodes.protocol import Protocol
from fewshot.checkpoint import LoadedCheckpoint
from fewshot.config import load_config
from fewshot.evaluation.run import check_protocol, inference_config


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


def _built(head: dict[str, object]) -> LoadedCheckpoint:
    from fewshot.models import create_model

    cfg = load_config({"model": {"backbone": {"name": "cbr-tiny", "truncate": "block2"}, "head": head}})
    return LoadedCheckpoint(
        model=create_model(cfg.model, seed=0).eval(), config=cfg, payload={}, global_step=1, path="m.ckpt"
    )


def test_inference_config_sets_alp_head_and_returns_it_as_config() -> None:
    loaded = _built({"name": "alpnet", "window_test": 2, "threshold": 0.95})
    cfg = inference_config(loaded, alp_window=1, alp_threshold=0.5, shot_fusion="scores")
    head = loaded.model.head
    assert (head.window_test, head.threshold, head.shot_fusion) == (1, 0.5, "scores")
    assert (cfg.model.head.window_test, cfg.model.head.threshold, cfg.model.head.shot_fusion) == (1, 0.5, "scores")
    assert loaded.config.model.head.window_test == 2  # the trained config is not changed
    # a setting left None goes back to the trained value, not the one set by the previous call
    again = inference_config(loaded)
    assert (head.window_test, head.threshold, head.shot_fusion) == (2, 0.95, "prototypes")
    assert again == loaded.config
    with pytest.raises(ValueError, match="ALP windows must be >= 1"):
        inference_config(loaded, alp_window=0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        inference_config(loaded, alp_threshold=1.0)
    assert head.window_test == 2  # a rejected value changes nothing


def test_inference_config_sets_the_alp_decision_window() -> None:
    loaded = _built({"name": "alpnet"})
    head = loaded.model.head
    assert head.decision_window is None
    cfg = inference_config(loaded, alp_decision_window=4)
    assert head.decision_window == 4 == cfg.model.head.decision_window
    assert inference_config(loaded).model.head.decision_window is None and head.decision_window is None
    trained4 = _built({"name": "alpnet", "decision_window": 4})
    assert trained4.model.head.decision_window == 4
    assert inference_config(trained4, alp_decision_window=0).model.head.decision_window is None  # 0: off
    assert trained4.model.head.decision_window is None
    with pytest.raises(ValueError, match="decision_window must be an integer >= 1 or null"):
        inference_config(loaded, alp_decision_window=-2)


def test_inference_config_refuses_alp_settings_on_other_heads() -> None:
    loaded = _built({"name": "panet"})
    with pytest.raises(ValueError, match="head 'panet' has no ALP window_test"):
        inference_config(loaded, alp_window=1)
    with pytest.raises(ValueError, match="head 'panet' has no ALP decision_window"):
        inference_config(loaded, alp_decision_window=4)
    assert inference_config(loaded, shot_fusion="scores").model.head.shot_fusion == "scores"


def test_inference_config_records_threshold_and_tta_without_changing_the_model() -> None:
    loaded = _built({"name": "panet"})
    cfg = inference_config(loaded, threshold=0.7, tta="flip")
    assert (cfg.model.fg_threshold, cfg.model.tta) == (0.7, "flip")
    assert (loaded.config.model.fg_threshold, loaded.model.config.fg_threshold, loaded.model.config.tta) == (0.5, 0.5, "none")
    assert inference_config(loaded) == loaded.config
    with pytest.raises(ValueError, match="tta"):
        inference_config(loaded, tta="rotate")
    with pytest.raises(ValueError, match="fg_threshold"):
        inference_config(loaded, threshold=1.5)
