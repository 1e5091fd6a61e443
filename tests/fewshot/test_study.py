"""``fewshot.study``: the summary's numbers (fold means, folds 1-4, learning curves, steps-to-reach), the reuse of
scores, and a learning-curve study on the tiny phantom."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fewshot.cli import main
from fewshot.study import StudySpec, _markdown, paired_gains, sign_test, steps_to_reach, summarize
from tests.fewshot.phantom_args import TINY


def _row(init: str, fold: int, seed: int, mean: float, curve: list[tuple[int, float]] = ()) -> dict[str, Any]:
    return {
        "backbone": "cbr-small", "init": init, "head": "alpnet", "seed": seed, "fold": fold,
        "dice": {"liver": mean + 0.1, "mean": mean},
        "curve": [{"step": s, "dice": {"mean": m}} for s, m in curve],
    }  # fmt: skip


def test_steps_to_reach_is_the_first_scored_step_at_or_above_the_level() -> None:
    curve = [{"step": 500, "dice": {"mean": 0.61}}, {"step": 250, "dice": {"mean": 0.4}},
             {"step": 750, "dice": {"mean": 0.55}}]  # fmt: skip
    assert steps_to_reach(curve, 0.4) == 250  # equal counts, whatever the list's order
    assert steps_to_reach(curve, 0.6) == 500  # not the later dip
    assert steps_to_reach(curve, 0.62) is None


def test_summarize_fold_means_folds_1_to_4_curves_and_reach() -> None:
    rows = [
        _row("random", 0, 0, 0.70, [(1, 0.40), (2, 0.70)]),
        _row("random", 0, 1, 0.50, [(1, 0.30), (2, 0.50)]),
        _row("random", 1, 0, 0.60, [(1, 0.60), (2, 0.60)]),
        _row("random", 2, 0, 0.40, [(1, 0.20), (2, 0.40)]),
        _row("mim", 0, 0, 0.80, [(1, 0.80), (2, 0.80)]),
    ]
    random, mim = summarize(rows, reach=(0.5, 0.65))
    assert random["runs"] == 4 and mim["runs"] == 1
    assert random["mean"][0] == pytest.approx(0.55) and random["liver"][0] == pytest.approx(0.65)
    assert random["mean"][1] == pytest.approx(0.12909944, abs=1e-7)  # sample std of .7 .5 .6 .4
    assert random["folds"] == {0: pytest.approx(0.6), 1: pytest.approx(0.6), 2: pytest.approx(0.4)}
    assert random["folds_1_4"] == (pytest.approx(0.5), pytest.approx(0.14142136, abs=1e-7))  # folds 1, 2 only
    assert mim["folds_1_4"] is None
    assert [c["step"] for c in random["curve"]] == [1, 2]
    assert random["curve"][0]["mean"] == pytest.approx(0.375)
    # 0.5: reached at 2, 2, 1 and never -> median of (1, 2, 2, inf) is 2; 0.65: reached by one run of four
    assert random["reach"] == {0.5: {"median": 2, "reached": 3}, 0.65: {"median": None, "reached": 1}}
    assert mim["reach"] == {0.5: {"median": 1, "reached": 1}, 0.65: {"median": 1, "reached": 1}}

    table = _markdown([random, mim])
    assert "| cbr-small | random | alpnet | 4 | 65.0 ± 12.9 | 55.0 ± 12.9 | 50.0 ± 14.1 |" in table
    assert "| cbr-small | mim | alpnet | 1 | 90.0 ± 0.0 | 80.0 ± 0.0 | - |" in table
    assert "| cbr-small | random | alpnet | 60.0 | 60.0 | 40.0 |" in table  # per-fold means
    assert "| cbr-small | mim | alpnet | 80.0 | - | - |" in table
    assert "| cbr-small | random | alpnet | 37.5 ± 17.1 | 55.0 ± 12.9 | 2 (3/4) | never (1/4) |" in table


def test_paired_gains_are_run_for_run_over_the_baseline() -> None:
    """Each run minus the baseline run of its fold and seed; runs without a baseline partner are left out."""
    rows = [
        _row("random", 0, 0, 0.60), _row("random", 0, 1, 0.50), _row("random", 1, 0, 0.70),
        _row("mim", 0, 0, 0.65), _row("mim", 0, 1, 0.45), _row("mim", 1, 0, 0.80),
        _row("mim", 2, 0, 0.99),  # no random run on fold 2: no pair
        _row("meanvar", 1, 1, 0.70),  # no random run of seed 1 on fold 1: no pair, no entry
    ]  # fmt: skip
    (mim,) = paired_gains(rows, "random")
    assert (mim["init"], mim["baseline"], mim["above"]) == ("mim", "random", 2)
    assert [(p["fold"], p["seed"]) for p in mim["pairs"]] == [(0, 0), (0, 1), (1, 0)]
    assert [p["gain"] for p in mim["pairs"]] == pytest.approx([0.05, -0.05, 0.10])
    assert mim["gain"] == (pytest.approx(0.1 / 3), pytest.approx(0.07637626, abs=1e-7))
    assert mim["folds_1_4"] == (pytest.approx(0.10), 0.0)
    # the baseline is whichever init is named: gains over mim are the negatives
    assert [p["gain"] for p in paired_gains(rows, "mim")[0]["pairs"]] == pytest.approx([-0.05, 0.05, -0.10])
    table = _markdown(summarize(rows), [mim])
    assert "Gain in mean Dice over `random`" in table
    assert mim["sign_p"] == 1.0  # 2 up, 1 down: as likely as not
    assert "| cbr-small | mim | alpnet | 3 | +3.3 ± 7.6 | +10.0 ± 0.0 | 2 of 3 | 1.00 | 0: +5.0 / -5.0; 1: +10.0 |" in table
    assert "Gain in mean Dice" not in _markdown(summarize(rows))
    assert "curve" not in mim  # the runs have no curves


def test_paired_gains_along_the_learning_curves() -> None:
    """At each step every pair scored: the mean gain, the pairs above and their sign test."""
    rows = [
        _row("random", 0, 0, 0.60, [(1, 0.40), (2, 0.60)]), _row("random", 0, 1, 0.50, [(1, 0.30), (2, 0.50)]),
        _row("mim", 0, 0, 0.65, [(1, 0.50), (2, 0.65)]), _row("mim", 0, 1, 0.45, [(1, 0.40), (2, 0.45)]),
    ]  # fmt: skip
    (mim,) = paired_gains(rows, "random")
    assert [c["step"] for c in mim["curve"]] == [1, 2]
    assert mim["curve"][0] == {"step": 1, "gain": pytest.approx(0.10), "above": 2, "sign_p": 0.5}
    assert mim["curve"][1] == {"step": 2, "gain": pytest.approx(0.0), "above": 1, "sign_p": 1.0}
    table = _markdown(summarize(rows), [mim])
    assert "| cbr-small | mim | alpnet | +10.0 (2 of 2; 0.5) | +0.0 (1 of 2; 1) |" in table


def test_sign_test_exact_two_sided() -> None:
    assert sign_test(5, 0) == pytest.approx(2 / 32) and sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(6, 4) == pytest.approx(2 * (1 + 10 + 45 + 120 + 210) / 1024)  # 0.754
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def test_minutes_a_run_pretraining_and_training() -> None:
    """Mean minutes per run; a run whose pretraining time is unknown makes its init's pretraining time unknown."""
    rows = [
        {**_row("random", 0, 0, 0.5), "pretrain_minutes": 0.0, "train_minutes": 10.0},
        {**_row("random", 0, 1, 0.5), "pretrain_minutes": 0.0, "train_minutes": 12.0},
        {**_row("mim", 0, 0, 0.5), "pretrain_minutes": 16.0, "train_minutes": 11.0},
        {**_row("mim", 0, 1, 0.5), "pretrain_minutes": None, "train_minutes": 13.0},
    ]
    random, mim = summarize(rows)
    assert random["minutes"] == {"pretrain": 0.0, "train": pytest.approx(11.0)}
    assert mim["minutes"] == {"pretrain": None, "train": pytest.approx(12.0)}
    table = _markdown([random, mim])
    assert "| minutes a run: pretraining + training |" in table
    assert "| 50.0 ± 0.0 | 0.0 + 11.0 |" in table and "| 50.0 ± 0.0 | ? + 12.0 |" in table
    assert "minutes a run" not in _markdown(summarize([_row("random", 0, 0, 0.5)]))  # untimed rows: no column


def test_fold_0_alone_has_no_folds_1_to_4_column() -> None:
    table = _markdown(summarize([_row("random", 0, 0, 0.5), _row("random", 0, 1, 0.7)]))
    assert "folds 1-4" not in table and "per fold" not in table and "training steps" not in table


def test_spec_refuses_reach_without_kept_checkpoints_and_bad_levels() -> None:
    with pytest.raises(ValueError, match="set eval_every"):
        StudySpec(backbones=("cbr-tiny",), inits=("random",), reach=(0.5,))
    with pytest.raises(ValueError, match=r"reach levels are mean Dice in \(0, 1\]"):
        StudySpec(backbones=("cbr-tiny",), inits=("random",), eval_every=2, reach=(60.0,))
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        StudySpec(backbones=("cbr-tiny",), inits=("random",), eval_every=0)
    with pytest.raises(ValueError, match=r"weights file for genesis not found: /nonexistent\.pt"):
        StudySpec(backbones=("cbr-tiny",), inits=("random", "genesis"), weights={"genesis": "/nonexistent.pt"})
    StudySpec(backbones=("cbr-tiny",), inits=("random", "meanvar"), weights={"meanvar": "mim"})  # a pretrainer's name


def test_cli_reach_without_eval_every_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["study", "--reach", "0.5", "--out", str(out), *TINY]) == 2
    assert "set eval_every" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_learning_curves_meanvar_of_mim_and_scores_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kept checkpoint is scored by ``run_evaluation`` (its results file is the curve's point); ``meanvar=mim``
    draws from the fold's MIM file, the one the ``mim`` run starts from, and that file is read once for its time;
    a rerun trains and scores nothing again, unless a checkpoint changed."""
    import fewshot.study as study

    out = tmp_path / "study"
    cmd = ["study", "--backbones", "cbr-tiny", "--inits", "random,meanvar,mim", "--weights", "meanvar=mim",
           "--seeds", "0", "--folds", "0,1", "--steps", "4", "--eval-every", "2", "--reach", "0.01,0.99",
           "--genesis-steps", "2", "--out", str(out), *TINY]  # fmt: skip
    assert main(cmd) == 0
    table = capsys.readouterr().out
    data = json.loads((out / "study.json").read_text())
    assert [(r["init"], r["fold"]) for r in data["runs"]] == [  # fold by fold
        ("random", 0), ("meanvar", 0), ("mim", 0), ("random", 1), ("meanvar", 1), ("mim", 1)
    ]  # fmt: skip
    for r in data["runs"]:
        run = Path(r["run_dir"])
        assert [c["step"] for c in r["curve"]] == [2, 4]
        assert r["curve"][0]["dice"] == json.loads((run / "eval-step2" / "results.json").read_text())["dice"]
        assert r["curve"][1]["dice"] == r["dice"] == json.loads((run / "eval" / "results.json").read_text())["dice"]
        assert r["curve"][0]["dice"] != r["curve"][1]["dice"]  # two checkpoints, two scores
        steps_per_s = json.loads((run / "train_result.json").read_text())["steps_per_s"]
        assert r["train_minutes"] == pytest.approx(4 / steps_per_s / 60)
        if r["init"] != "random":
            ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            source = ckpt["fewshot"]["init_report"]["source"]
            assert source == str(out / "mim" / f"cbr-tiny_fold{r['fold']}_seed0.pt")
            # the pretraining's time counts for the init that needed it, from the file's own record
            seconds = torch.load(source, weights_only=True)["meta"]["seconds"]
            assert r["pretrain_minutes"] == pytest.approx(seconds / 60) and seconds > 0
        else:
            assert r["pretrain_minutes"] == 0.0
    assert "folds 1-4 mean" in table and "| to 1 | to 99 |" in table and "never (0/2)" in table
    assert [(g["init"], len(g["pairs"])) for g in data["gains"]] == [("meanvar", 2), ("mim", 2)]  # over random
    assert [[c["step"] for c in g["curve"]] for g in data["gains"]] == [[2, 4], [2, 4]]
    assert "after each number of training steps (pairs above; sign test p)" in table
    assert (out / "study.png").is_file()
    assert data["overrides"]["model.backbone.name"] == "cbr-tiny" and data["commit"] and data["environment"]["torch"]
    from fewshot.config import load_config

    assert load_config(out / "config.yaml").model.backbone.name == "cbr-tiny"

    calls: list[Path] = []
    real = study.run_evaluation
    timed: list[str | None] = []
    real_minutes = study._pretrain_minutes

    def counting(checkpoint: Path, **kwargs: Any) -> Any:
        calls.append(Path(checkpoint))
        return real(checkpoint, **kwargs)

    def timing(weights: str | None) -> float | None:
        timed.append(weights)
        return real_minutes(weights)

    monkeypatch.setattr(study, "run_evaluation", counting)
    monkeypatch.setattr(study, "_pretrain_minutes", timing)
    assert main(cmd) == 0
    assert calls == [] and json.loads((out / "study.json").read_text())["runs"] == data["runs"]
    assert timed == [None, str(out / "mim" / "cbr-tiny_fold0_seed0.pt"), str(out / "mim" / "cbr-tiny_fold1_seed0.pt")]
    # a changed checkpoint is scored again (here: the same weights saved anew, so the same Dice)
    step2 = Path(data["runs"][0]["run_dir"]) / "checkpoints" / "step-2.ckpt"
    torch.save({**torch.load(step2, map_location="cpu", weights_only=False), "note": "re-saved"}, step2)
    assert main(cmd) == 0
    assert calls == [step2]
    assert json.loads((out / "study.json").read_text())["runs"] == data["runs"]


@pytest.mark.slow
def test_jobs_run_the_cells_side_by_side_then_summarize_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--jobs 2``: each (fold, seed) cell in its own process with its own log; the summary covers every run, and
    a sequential rerun trains nothing (every run is finished)."""
    out = tmp_path / "study"
    cmd = ["study", "--backbones", "cbr-tiny", "--inits", "random", "--seeds", "0,1", "--steps", "2",
           "--out", str(out), *TINY]  # fmt: skip
    assert main([*cmd, "--jobs", "2", "--threads", "1"]) == 0
    assert "| cbr-tiny | random | alpnet | 2 |" in capsys.readouterr().out
    for seed in (0, 1):
        log = (out / "logs" / f"fold0_seed{seed}.log").read_text()
        assert log.startswith(f"== fold0_seed{seed}: 1 torch thread(s)") and "Trainer.fit" in log
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert [(r["seed"], r["steps"]) for r in runs] == [(0, 2), (1, 2)]
    assert main(cmd) == 0
    assert json.loads((out / "study.json").read_text())["runs"] == runs
    assert main([*cmd, "--jobs", "0"]) == 2
