"""Recipes as data: the packaged recipes, strict loading, label groups, and the setting-2 trap."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest
import yaml

from fewshot.config import ConfigError, load_config
from fewshot.configs import config_path
from fewshot.recipes import DataSource, list_recipes, load_recipe, plan_runs
from fewshot.training.train import check_one_label_group


def test_packaged_recipes_load_and_name_what_they_measured() -> None:
    names = list_recipes()
    assert {"mri-cpu", "ct-cpu", "mri-gpu", "phantom"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.members and recipe.description
    mri = load_recipe("mri-cpu").measured[0]
    assert (mri.dataset, mri.setting, len(mri.folds)) == ("chaos-mr", 1, 5)
    assert round(mri.mean, 2) == 71.36  # the published 5-fold table, benchmarks/results/chaos-mr_s1_mri-cpu_5fold.md
    assert round(mri.unchosen_mean or 0, 2) == round((68.78 + 63.64 + 75.26 + 74.95) / 4, 2)
    assert round(load_recipe("ct-cpu").measured[0].mean, 2) == 62.28
    partial = dataclasses.replace(mri, folds=(70.0, 60.0, 64.0))
    assert partial.unchosen_mean == 62.0 and dataclasses.replace(mri, folds=(70.0,)).unchosen_mean is None


@pytest.mark.parametrize(
    ("recipe", "config", "member_overrides"),
    [
        ("mri-cpu", "mri_cbr_small", [{"seed": 0}, {"seed": 1}]),
        ("ct-cpu", "ct_cbr_small", [{}]),
    ],
)
def test_recipe_members_are_the_measured_configs(recipe: str, config: str, member_overrides: list[dict]) -> None:
    """A move, not a retune: each member's config (with the recipe's inference settings written in) is the packaged
    config the stored numbers were measured with, key for key."""
    r = load_recipe(recipe)
    for i, over in enumerate(member_overrides):
        measured = load_config(config_path(config), {**over, "train.num_workers": 1}).to_dict()
        assert r.member_config(i).to_dict() == measured
    assert r.threads_per_member == 1


def test_ct_recipe_pretrains_both_members_and_vetoes() -> None:
    r = load_recipe("ct-cpu")
    assert [m.genesis_steps for m in r.members] == [1000, 1000]
    assert [r.member_config(i).model.backbone.name for i in range(2)] == ["cbr-small", "resnet50"]
    assert (r.inference.fg_threshold, r.inference.intensity_prior) == (0.6, 0.5)


def test_unknown_recipe_lists_the_packaged_ones() -> None:
    with pytest.raises(FileNotFoundError, match=r"unknown recipe 'mri-cpux'.*mri-cpu"):
        load_recipe("mri-cpux")


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _tree() -> dict:
    return {
        "name": "mine", "description": "d", "modality": "CT", "dataset": "phantom-ct",
        "members": [{"config": "demo_phantom"}],
    }


def test_misspelled_keys_are_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['membrs'\].*valid keys"):
        load_recipe(_write(tmp_path, {**{k: v for k, v in _tree().items() if k != "members"},
                                      "membrs": [{"config": "demo_phantom"}]}))
    with pytest.raises(ConfigError, match="genesis_step"):
        load_recipe(_write(tmp_path, {**_tree(), "members": [{"config": "demo_phantom", "genesis_step": 3}]}))
    with pytest.raises(ConfigError, match=r"fg_treshold.\] in inference"):
        load_recipe(_write(tmp_path, {**_tree(), "inference": {"fg_treshold": 0.6}}))


def test_a_bad_member_override_fails_when_the_recipe_is_read(tmp_path: Path) -> None:
    tree = {**_tree(), "members": [{"config": "demo_phantom", "overrides": {"train.stepz": 3}}]}
    with pytest.raises(ConfigError, match=r"member member0 .*stepz"):
        load_recipe(_write(tmp_path, tree))


def test_member_config_beside_the_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(config_path("demo_phantom").read_text())
    recipe = load_recipe(_write(tmp_path, {**_tree(), "members": [{"config": "mine.yaml", "name": "a"}]}))
    assert recipe.member_config(0).data.dataset == "phantom-ct"


def test_setting2_plans_one_model_per_label_group_and_member(tmp_path: Path) -> None:
    recipe = load_recipe("phantom")
    runs = plan_runs(recipe, tmp_path, fold=1, setting=2)
    assert [r.name for r in runs] == [
        "seed0_right_kidney+left_kidney", "seed0_liver+spleen", "seed1_right_kidney+left_kidney", "seed1_liver+spleen",
    ]
    for run in runs:
        cfg = run.experiment()
        assert set(cfg.data.train_exclusions()) == set(run.organs)  # each group's model never sees its organs
        assert cfg.data.protocol.fold == 1
        check_one_label_group(cfg)  # one group per run: accepted
    assert plan_runs(recipe, tmp_path, setting=2, organs=["liver"])[0].organs == ("liver",)


def test_plain_setting2_over_two_label_groups_is_refused_in_one_line() -> None:
    cfg = load_config(config_path("demo_phantom"), {"data.protocol.setting": 2})
    with pytest.raises(ValueError, match=r"spans 2 label groups.*fewshot fit --recipe R --setting 2.*--organs"):
        check_one_label_group(cfg)
    deliberate = load_config(config_path("demo_phantom"), {"data.protocol.setting": 2,
                                                            "data.exclude_organs": ["liver", "spleen"]})
    check_one_label_group(deliberate)


def test_fold_all_trains_on_every_scan_and_new_data_drops_the_phantom_loader_args(tmp_path: Path) -> None:
    recipe = load_recipe("phantom")
    (run, *_) = plan_runs(recipe, tmp_path, fold=None, data=DataSource(dataset="nifti", data_dir=str(tmp_path)))
    cfg = run.experiment()
    assert cfg.data.protocol.fold is None and dict(cfg.data.loader_args) == {}
    split = cfg.data.protocol.split(["a", "b", "c"])
    assert split.train == ("a", "b", "c") and split.support is None and split.queries == ()


def test_measured_results_files_exist_and_are_the_current_ones() -> None:
    """Every measured row names its results file: one current file per recipe in benchmarks/results/ (the
    rest is under benchmarks/results/archive/), named data set, setting, recipe, folds."""
    root = Path(__file__).resolve().parents[3]
    for name in list_recipes():
        for m in load_recipe(name).measured:
            path = root / m.results
            assert path.is_file() and path.with_suffix("").with_suffix(".results.json").is_file(), m.results
            assert path.parent.name == "results" and path.name.startswith(f"{m.dataset}_s{m.setting}_{name}_")


def test_recipes_table_names_which_folds_its_unchosen_mean_covers(capsys: pytest.CaptureFixture[str]) -> None:
    """``fewshot recipes``: the "folds 1-4" column is the mean of folds 1-4 once five are measured, and says which
    folds it covers while a cross-validation is partial; a fold-0-only entry leaves it empty."""
    from fewshot.cli import main

    assert main(["recipes"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| mri-cpu |")]
    measured = load_recipe("mri-cpu").measured
    assert len(rows) == len(measured)
    for row, m in zip(rows, measured, strict=True):
        later = row[6]
        if len(m.folds) == 1:
            assert later == ""
        else:
            assert later.startswith(f"{statistics.fmean(m.folds[1:]):.2f}")
            assert ("(fold" in later) == (len(m.folds) < 5), later


def test_recipes_table_ends_with_every_published_mean(capsys: pytest.CaptureFixture[str]) -> None:
    """``fewshot recipes`` closes with the published 5-fold means of both settings, one column per data set and
    setting, so a setting-2 row has its comparison too."""
    from fewshot.cli import main
    from fewshot.recipes.records import PUBLISHED

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| published"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    assert columns == [f"{ds} setting {st}" for ds, st in PUBLISHED]
    for (ds, st), entries in PUBLISHED.items():
        for label, values in entries:
            row = next(line for line in lines if line.startswith(f"| {label} |"))
            cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
            assert cells[columns.index(f"{ds} setting {st}")] == f"{values[-1]:.2f}"
    assert "73.02" in " ".join(lines) and "63.02" in " ".join(lines)
