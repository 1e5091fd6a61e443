from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fewshot.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    resolve_channels_last,
    resolve_precision,
    save_config,
    to_dict,
)
from fewshot.configs import CONFIG_DIR


def test_defaults_are_the_ssl_alpnet_recipe() -> None:
    cfg = load_config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (1e-3, 0.9, 5e-4)
    assert (cfg.optim.lr_gamma, cfg.optim.lr_step) == (0.95, 1000)
    assert cfg.optim.ce_weights == (0.05, 1.0) and cfg.optim.align_weight == 1.0
    assert cfg.train.steps == 100_100 and cfg.train.batch_size == 1
    assert cfg.data.superpixel_method == "felzenszwalb"
    assert cfg.data.superpixel_params == {"scale": 1.0, "sigma": 1.0, "min_size": 400}
    assert cfg.data.organs == ("liver", "right_kidney", "left_kidney", "spleen")


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "model.backbone": "cbr-tiny",
            "data.organs": ["liver", "spleen"],
            "data.loader_args": {"n_subjects": 6, "shape": [12, 64, 64]},
            "train.devices": 2,
            "optim.ce_weights": [0.1, 1],
            "out_dir": str(tmp_path / "run"),
        },
    )
    assert cfg.optim.ce_weights == (0.1, 1.0) and isinstance(cfg.optim.ce_weights, tuple)
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)


def test_overrides_merge_into_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 7, batch_size: 2}\ndata: {dataset: phantom-mr}\n")
    cfg = load_config(path, {"train.steps": 9})
    assert (cfg.train.steps, cfg.train.batch_size, cfg.data.dataset) == (9, 2, "phantom-mr")


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"data": {"foo": 1}}, r"unknown key\(s\) \['foo'\] in data; valid keys: \['dataset'"),
        ({"bogus": 1}, r"unknown key\(s\) \['bogus'\] in ExperimentConfig; valid keys: \['data', 'model'"),
        ({"train": {"steps": "many"}}, "train.steps must be an integer"),
        ({"optim": {"ce_weights": [1.0]}}, "optim.ce_weights must have 2 entries"),
        ({"data": {"dataset": "mnist"}}, "choices"),
        ({"model": {"head": "unet"}}, "unknown head 'unet'"),
        ({"data": {"channels": 1}}, "model.in_channels=3 must equal data.channels=1"),
        ({"train": {"steps": 0}}, "train.steps must be >= 1"),
    ],
)
def test_invalid_configs_raise(tree: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(tree)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_setting2_excludes_label_groups_of_test_organs() -> None:
    assert load_config({"data": {"setting": 1}}).data.excluded_organs == ()
    s2 = load_config({"data": {"setting": 2, "organs": ["liver"]}}).data
    assert s2.excluded_organs == ("liver", "spleen")
    explicit = load_config({"data": {"setting": 2, "exclude_organs": ["left_kidney"]}}).data
    assert explicit.excluded_organs == ("left_kidney",)


def test_precision_and_channels_last_resolution() -> None:
    assert resolve_precision("auto", on_cuda=True) == "16-mixed"
    assert resolve_precision("auto", on_cuda=False) == "32-true"
    assert resolve_precision("bf16-mixed", on_cuda=True) == "bf16-mixed"
    assert resolve_channels_last(None, on_cuda=True) and not resolve_channels_last(None, on_cuda=False)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    if path.name.startswith("ssl_alpnet"):
        assert (cfg.model.backbone, cfg.model.head, cfg.train.steps) == ("resnet101", "alpnet", 100_100)
        assert cfg.data.setting == (2 if "setting2" in path.name else 1)


def test_shipped_configs_cover_published_settings() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    for ds in ("chaos_mr", "btcv_ct"):
        for s in (1, 2):
            assert f"ssl_alpnet_{ds}_setting{s}.yaml" in names
    assert {"demo_phantom.yaml", "cpu_chaos_30min.yaml"} <= names


def test_parse_overrides_reads_yaml_values() -> None:
    from fewshot.config import parse_overrides

    assert parse_overrides(["train.steps=5", "data.organs=[liver, spleen]", "model.weights=null"]) == {
        "train.steps": 5,
        "data.organs": ["liver", "spleen"],
        "model.weights": None,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.steps"])
