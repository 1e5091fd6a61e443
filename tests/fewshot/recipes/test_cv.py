"""Cross-validation as a library command: typed fold records, the report, and ``fewshot cv`` on the phantom."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from fewshot.cli import main
from fewshot.cli.commands import CLIError
from fewshot.cli.recipe_commands import parse_folds
from fewshot.recipes.cv import read_records
from fewshot.recipes.jobs import Job, run_jobs
from fewshot.recipes.records import FoldRecord, KShot, Scores, markdown_report

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")


def _scores(values: tuple[float, float, float, float]) -> Scores:
    per = dict(zip(ORGANS, values))
    mean = sum(values) / 4
    return Scores(dice={**per, "mean": mean}, precision={**per, "mean": mean}, recall={**per, "mean": mean})


def _record(fold: int, values: tuple[float, float, float, float]) -> FoldRecord:
    return FoldRecord(
        dataset="chaos-mr", setting=1, fold=fold, recipe="mri-cpu",
        scores={"none": _scores(values), "lcc": _scores(tuple(v + 0.01 for v in values))},  # type: ignore[arg-type]
        kshot={3: KShot(scores={"none": _scores(values), "lcc": _scores(values)})} if fold != 2 else
        {3: KShot(error="left_kidney has 2 slices")},
        members=({"name": "seed0", "steps": 10, "genesis_steps": 0},), train_seconds=600, lane_seconds=600,
        eval_seconds=30, commit="abc",
    )


def test_report_gives_every_fold_the_means_and_the_folds_that_chose_nothing() -> None:
    recs = [_record(f, (0.5 + 0.1 * f, 0.8, 0.7, 0.6)) for f in range(5)]
    text = markdown_report(recs)
    # fold means: (0.5 + 0.1 f + 2.1) / 4 -> 65.00, 67.50, 70.00, 72.50, 75.00
    assert "| fold 0 | 50.00 | 80.00 | 70.00 | 60.00 | 65.00 |" in text
    assert "**folds 0,1,2,3,4: mean ± std** | 70.00 ± 15.81 | 80.00 ± 0.00 | 70.00 ± 0.00 | 60.00 ± 0.00 | 70.00 ± 3.95" in text
    assert "**folds 1-4 (chose nothing): mean ± std** | 75.00 ± 12.91 |" in text
    assert "| 71.25 ± 3.23 |" in text  # the folds 1-4 mean of the fold means
    assert "+ LCC" in text and "SSL-ALPNet (ECCV'20), published 5-fold | 76.10" in text
    assert "| 3 | 0,1,3,4 |" in text and "3-shot, fold 2: not possible: left_kidney has 2 slices" in text


def test_report_of_some_folds_gives_the_mean_of_those_that_chose_nothing() -> None:
    """A run of folds 0-2 (a cross-validation still going) already reports folds 1-2 apart from fold 0; a run
    without fold 0 has no such row (all its folds chose nothing: the mean row is that number), nor has a run of
    folds 0-1 (fold 1's row is)."""
    recs = [_record(f, (0.5 + 0.1 * f, 0.8, 0.7, 0.6)) for f in range(3)]
    text = markdown_report(recs)
    assert "**folds 1,2 (chose nothing): mean ± std** | 65.00 ± 7.07 |" in text
    assert "| 68.75 ± 1.77 |" in text  # the mean of fold means 67.50 and 70.00
    assert "chose nothing" not in markdown_report(recs[1:]) and "chose nothing" not in markdown_report(recs[:1])
    assert "chose nothing" not in markdown_report(recs[:2])  # fold 1's own row is that number: no "folds 1" row


def test_the_members_column_names_each_members_pretraining() -> None:
    """A member's pretraining steps are named by its objective (records written before objectives: Genesis)."""
    rec = dataclasses.replace(_record(0, (0.5, 0.8, 0.7, 0.6)), members=(
        {"name": "a", "steps": 10, "genesis_steps": 5},
        {"name": "b", "steps": 10, "genesis_steps": 7, "pretrain_objective": "mim"},
        {"name": "c", "steps": 10, "genesis_steps": 0, "pretrain_objective": "mim"},
    ))
    assert "| a 10 steps after 5 Genesis, b 10 steps after 7 MIM, c 10 steps |" in markdown_report(
        [rec]
    )


def test_fold_records_round_trip_through_json() -> None:
    rec = _record(1, (0.1, 0.2, 0.3, 0.4))
    back = FoldRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back == rec and back.dice["mean"] == pytest.approx(0.25)


@pytest.mark.parametrize(("text", "folds"), [("0-4", [0, 1, 2, 3, 4]), ("0,2", [0, 2]), ("0-1,4", [0, 1, 4])])
def test_folds_option(text: str, folds: list[int]) -> None:
    assert parse_folds(text) == folds


@pytest.mark.parametrize("text", ["0-5", "a", "1,1", ""])
def test_bad_folds_option(text: str) -> None:
    with pytest.raises(CLIError, match="--folds"):
        parse_folds(text)


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


@pytest.mark.slow
def test_job_queue_in_processes_equals_in_process_and_names_a_failed_log(tmp_path: Path) -> None:
    jobs = [Job(f"j{i}", _square, (i,), tmp_path / f"j{i}.log", threads=1) for i in range(3)]
    one: dict[int, int] = {}
    two: dict[int, int] = {}
    run_jobs(jobs, parallel=1, on_done=one.__setitem__, say=lambda _: None)
    run_jobs(jobs, parallel=2, on_done=two.__setitem__, poll_s=0.2, say=lambda _: None)
    assert one == two == {0: 0, 1: 1, 2: 4}
    failing = [*jobs[:1], Job("bad", _fail, (7,), tmp_path / "bad.log")]
    with pytest.raises(ValueError, match=r"bad failed: bad input 7; its log: .*bad\.log"):
        run_jobs(failing, parallel=2, on_done=lambda i, r: None, poll_s=0.2, say=lambda _: None)


@pytest.mark.slow
def test_cv_on_the_phantom_writes_records_report_and_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "one", "description": "one phantom model", "modality": "CT", "dataset": "phantom-ct",
        "members": [{"name": "m", "config": "demo_phantom"}], "threads_per_member": 1,
    }))
    args = ["cv", "--recipe", str(recipe), "--folds", "0,1", "--shots", "1,3", "--steps", "8",
            "--set", "train.num_workers=0", "--set", "train.progress_bar=false", "--out", str(tmp_path / "cv")]
    assert main(args) == 0
    out = tmp_path / "cv"
    records = read_records(out)
    assert [r.fold for r in records] == [0, 1]
    assert all(set(r.scores) == {"none", "lcc"} and 3 in r.kshot and r.members[0]["steps"] == 8 for r in records)
    report = (out / "results.md").read_text()
    assert "| fold 0 |" in report and "| fold 1 |" in report and "**folds 0,1: mean ± std**" in report
    assert (out / "fold0" / "fewshot-model.json").is_file() and (out / "fold1" / "eval" / "results.json").is_file()
    first = [r.dice for r in records]
    capsys.readouterr()
    assert main(args) == 0  # a rerun trains and scores nothing: the folds' models did not change
    said = capsys.readouterr().out
    assert said.count("finished (") == 2 and said.count("scored before") == 2
    assert [r.dice for r in read_records(out)] == first
