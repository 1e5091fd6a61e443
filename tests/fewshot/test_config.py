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
    assert cfg.data.superpixels.method == "felzenszwalb"
    assert cfg.data.superpixels.params == {"min_size": 400, "scale": 1.0, "sigma": 1.0}
    assert cfg.data.protocol.organs == ("liver", "right_kidney", "left_kidney", "spleen")
    assert cfg.data.protocol.dataset == cfg.data.dataset == "chaos-mr"
    assert (cfg.seed, cfg.train_seed) == (0, 1234)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "model.backbone": "cbr-tiny",
            "model.head": {"name": "panet", "feature_dim": 32},
            "data.protocol.organs": ["liver", "spleen"],
            "data.dataset": "phantom-ct",
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
        ({"model": {"head": {"name": "panet", "window_test": 1}}}, r"unknown key\(s\) \['window_test'\]"),
        ({"model": {"backbone": "resnet7"}}, "resnet7"),
        ({"model": {"init": "imagenet:v2"}}, "imagenet:v2"),
        ({"data": {"protocol": {"fold": 7}}}, "fold must be in 0..4"),
        ({"data": {"protocol": {"dataset": "btcv-ct"}}}, "differs from data.dataset='chaos-mr'"),
        ({"data": {"superpixels": {"method": "felzenszwalb", "params": {"foo": 1}}}}, "foo"),
        ({"data": {"channels": 1}}, "model.backbone.in_channels=3 must equal data.channels=1"),
        ({"train": {"steps": 0}}, "train.steps must be >= 1"),
        ({"train": {"precision": "bf17"}}, r"train.precision must be one of auto, 32-true, 16-mixed, bf16-mixed.*'bf17'"),
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
    assert load_config({"data": {"protocol": {"setting": 1}}}).data.train_exclusions() == ()
    s2 = load_config({"data": {"protocol": {"setting": 2, "organs": ["liver"]}}}).data
    assert s2.train_exclusions() == ("liver", "spleen")
    explicit = load_config({"data": {"protocol": {"setting": 2}, "exclude_organs": ["left_kidney"]}}).data
    assert explicit.train_exclusions() == ("left_kidney",)


def test_legacy_flat_keys_load_with_a_deprecation_message() -> None:
    legacy = {
        "data": {
            "dataset": "phantom-ct",
            "superpixel_method": "slic",
            "superpixel_params": {"n_segments": 50},
            "min_superpixel_pixels": 40,
            "fold": 2,
            "setting": 2,
            "shots": 3,
            "organs": ["liver"],
        },
        "model": {
            "backbone": "cbr-small",
            "truncate": "block2",
            "init": "random:xavier",
            "weights": None,
            "head": "alpnet",
            "feature_dim": 64,
            "alp_window_test": 1,
            "alp_threshold": 0.9,
            "seed": 5,
        },
        "train": {"seed": 5 + 1234, "steps": 3},
    }
    with pytest.warns(FutureWarning, match=r"data\.superpixel_method -> data\.superpixels\.method"):
        cfg = load_config(legacy)
    nested = {
        "data": {
            "dataset": "phantom-ct",
            "superpixels": {"method": "slic", "params": {"n_segments": 50}},
            "episodes": {"min_superpixel_pixels": 40, "shots": 3},
            "protocol": {"fold": 2, "setting": 2, "shots": 3, "organs": ["liver"]},
        },
        "model": {
            "backbone": {"name": "cbr-small", "truncate": "block2"},
            "init": "random:xavier",
            "head": {"name": "alpnet", "feature_dim": 64, "window_test": 1, "threshold": 0.9},
        },
        "train": {"steps": 3},
        "seed": 5,
    }
    assert cfg == load_config(nested)
    with pytest.raises(ConfigError, match="one seed"):
        load_config({"train": {"seed": 7}, "seed": 1})


def test_switching_the_head_keeps_only_its_fields() -> None:
    base = {"model": {"head": {"name": "alpnet", "feature_dim": 64, "window_test": 1}}}
    cfg = load_config(base, {"model.head.name": "panet"})
    assert cfg.model.head.name == "panet" and cfg.model.head.feature_dim == 64
    assert load_config(base, {"model.head.feature_dim": 32}).model.head.window_test == 1


def test_precision_and_channels_last_resolution() -> None:
    assert resolve_precision("auto", on_cuda=True) == "16-mixed"
    assert resolve_precision("auto", on_cuda=False) == "32-true"
    assert resolve_precision("bf16-mixed", on_cuda=True) == "bf16-mixed"
    assert resolve_channels_last(None, on_cuda=True) and not resolve_channels_last(None, on_cuda=False)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the shipped configs use the current keys
        cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    if path.name.startswith("ssl_alpnet"):
        assert (cfg.model.backbone.name, cfg.model.head.name, cfg.train.steps) == (
            "resnet101",
            "alpnet",
            100_100,
        )
        assert cfg.data.protocol.setting == 1


def test_shipped_configs_cover_published_settings() -> None:
    """Setting 2 is a recipe option (one model per label group), not a config: the removed setting-2 configs name
    the command that replaces them."""
    from fewshot.configs import config_path

    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    for ds in ("chaos_mr", "btcv_ct"):
        assert f"ssl_alpnet_{ds}_setting1.yaml" in names
        assert f"ssl_alpnet_{ds}_setting2.yaml" not in names
        with pytest.raises(FileNotFoundError, match="--setting 2"):
            config_path(f"ssl_alpnet_{ds}_setting2")
    assert {"demo_phantom.yaml", "mri_cbr_small.yaml"} <= names


def test_parse_overrides_reads_yaml_values() -> None:
    from fewshot.config import parse_overrides

    assert parse_overrides(
        ["train.steps=5", "data.protocol.organs=[liver, spleen]", "model.init.weights=null"]
    ) == {
        "train.steps": 5,
        "data.protocol.organs": ["liver", "spleen"],
        "model.init.weights": None,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.steps"])


def test_query_distance_needs_supervoxels() -> None:
    from episodes.pseudolabels import SuperpixelParams
    from episodes.sampling import EpisodeConfig
    from fewshot.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match="per slice"):
        DataConfig(episodes=EpisodeConfig(query_distance=2))
    cfg = DataConfig(superpixels=SuperpixelParams("slic3d"), episodes=EpisodeConfig(query_distance=2))
    assert cfg.episodes.query_distance == 2


def test_model_threshold_validated_and_saved() -> None:
    from fewshot.config import ModelConfig

    assert ModelConfig().fg_threshold == 0.5
    cfg = ModelConfig(fg_threshold=0.7)
    assert ModelConfig(**cfg.to_dict()).fg_threshold == 0.7
    for bad in (0.0, 1.0, -0.1, "high", True):
        with pytest.raises(ValueError, match=r"ModelConfig.fg_threshold must be a probability in \(0, 1\)"):
            ModelConfig(fg_threshold=bad)  # type: ignore[arg-type]


def test_model_tta_validated_and_saved() -> None:
    from fewshot.config import ModelConfig

    assert ModelConfig().tta == "none"
    assert ModelConfig(**ModelConfig(tta="flip").to_dict()).tta == "flip"
    with pytest.raises(ValueError, match=r"ModelConfig.tta must be one of \['none', 'flip'\], got 'rotate'"):
        ModelConfig(tta="rotate")


def test_model_intensity_prior_validated_and_saved() -> None:
    from fewshot.config import ModelConfig

    assert ModelConfig().intensity_prior == 0.0
    assert ModelConfig(**ModelConfig(intensity_prior=0.5).to_dict()).intensity_prior == 0.5
    for bad in (-0.1, float("inf"), "strong", True):
        with pytest.raises(ValueError, match=r"ModelConfig.intensity_prior must be a finite weight >= 0"):
            ModelConfig(intensity_prior=bad)  # type: ignore[arg-type]


def test_model_slice_input_validated_and_saved() -> None:
    from fewshot.config import ModelConfig

    assert ModelConfig().slice_input == "tile"
    cfg = ModelConfig(backbone={"name": "cbr-small", "in_channels": 3}, slice_input="adjacent")
    assert ModelConfig(**cfg.to_dict()).slice_input == "adjacent"
    with pytest.raises(ValueError, match=r"ModelConfig.slice_input='adjacent' needs an odd number"):
        ModelConfig(backbone={"name": "cbr-small", "in_channels": 2}, slice_input="adjacent")
    with pytest.raises(ValueError, match=r"ModelConfig.slice_input must be one of \['tile', 'adjacent'\]"):
        ModelConfig(slice_input="2.5d")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_ct_recipe_is_its_pinned_float32_recipe_in_bf16() -> None:
    """ct_cbr_small with train.precision=32-true is the float32 recipe whose 5 folds the README reports
    (benchmarks/results/archive/btcv_ct_setting1_cpu_4500steps_sp200.config.yaml), with the intensity veto and the
    threshold chosen with it at inference (its training unchanged)."""
    pinned = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "archive" / "btcv_ct_setting1_cpu_4500steps_sp200.config.yaml"
    now = _flat(load_config(CONFIG_DIR / "ct_cbr_small.yaml").to_dict())
    before = _flat(load_config(pinned).to_dict())
    assert {k: now.get(k) for k in now.keys() | before.keys() if now.get(k) != before.get(k)} == {
        "train.precision": "bf16-mixed", "model.intensity_prior": 0.5, "model.fg_threshold": 0.6,
        "out_dir": "runs/ct_cbr_small",  # the config's new name (was cpu_btcv_30min): where it writes, not how it trains
    }
    assert load_config(CONFIG_DIR / "ct_cbr_small.yaml", {"train.precision": "32-true"}).train.precision == "32-true"


def test_ct_resnet50_member_is_the_ct_recipe_with_another_backbone() -> None:
    """ct_resnet50 is ct_cbr_small with ResNet-50/layer2 and 5,000 steps (its 5 folds were trained with those
    three --set overrides on ct_cbr_small; benchmarks/results/btcv_ct_setting1_cpu_ens4*)."""
    base = _flat(load_config(CONFIG_DIR / "ct_cbr_small.yaml").to_dict())
    r50 = _flat(load_config(CONFIG_DIR / "ct_resnet50.yaml").to_dict())
    assert {k: r50.get(k) for k in base.keys() | r50.keys() if base.get(k) != r50.get(k)} == {
        "model.backbone.name": "resnet50",
        "model.backbone.truncate": "layer2",
        "train.steps": 5000,
        "out_dir": "runs/ct_resnet50",
    }


def test_gpu_mri_recipe_is_the_cpu_recipe_scaled_to_256_px_and_resnet50() -> None:
    """mri_resnet50_256 changes only resolution-bound sizes, the backbone and the device settings of
    mri_cbr_small, so its numbers compare with the CPU recipe's (benchmarks/results/chaos-mr_s1_mri-gpu_folds0-2.md)."""
    cpu = _flat(load_config(CONFIG_DIR / "mri_cbr_small.yaml").to_dict())
    gpu = _flat(load_config(CONFIG_DIR / "mri_resnet50_256.yaml").to_dict())
    changed = {k: gpu[k] for k in cpu.keys() | gpu.keys() if cpu.get(k) != gpu.get(k)}
    assert changed == {
        "data.size": 256,
        "data.superpixels.params.min_size": 400,
        "data.episodes.min_superpixel_pixels": 200,
        "data.superpixel_workers": 6,
        "model.backbone.name": "resnet50",
        "model.backbone.truncate": "layer2",
        "model.backbone.output_stride": None,
        "train.accelerator": "auto",
        "train.num_workers": 6,
        "train.ckpt_every": 1000,
        "train.log_every": 50,
        "out_dir": "runs/mri_resnet50_256",
        # test-time fine-tuning was chosen for the CPU recipe after the GPU runs; not measured on the GPU
        "model.finetune.steps": 0,
        "model.finetune.lr": 0.001,
        "model.finetune.bf16": False,
    }
    assert gpu["model.head.window_train"] == 4 and gpu["train.steps"] == 10_000


@pytest.mark.parametrize("name", ["ssl_alpnet_chaos_mr_setting1", "ssl_alpnet_btcv_ct_setting1"])
def test_ssl_alpnet_configs_are_the_reference_recipe(name: str) -> None:
    """The packaged SSL-ALPNet configs use the reference's augmentation, superpixel input and ALP decision."""
    from episodes.pseudolabels import SuperpixelParams

    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.data.episodes.augment == "sabs"
    assert cfg.data.superpixels == SuperpixelParams(
        "felzenszwalb", {"min_size": 400, "sigma": 1.0, "scale": 1.0}, scaling="none", body_connectivity=8
    )
    head = cfg.model.head
    assert (head.name, head.window_train, head.window_test, head.decision_window, head.threshold) == (  # type: ignore[attr-defined]
        "alpnet", 4, 2, 4, 0.95
    )
    assert cfg.model.fg_threshold == 0.5 and cfg.data.size == 256 and cfg.model.backbone.name == "resnet101"


@pytest.mark.parametrize("name", ["mri_cbr_small", "ct_cbr_small", "ct_resnet50", "mri_resnet50_256", "demo_phantom"])
def test_other_configs_keep_the_defaults_of_the_new_options(name: str) -> None:
    """The new options default to today's behaviour, and the other packaged configs do not set them."""
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.data.superpixels.scaling == "minmax" and cfg.data.superpixels.body_connectivity == 4
    assert set(cfg.data.superpixels.to_dict()) == {"method", "params", "body_threshold"}  # cache keys as before
    assert getattr(cfg.model.head, "decision_window", None) is None
    assert cfg.data.episodes.augment != "sabs"
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    assert "decision_window" not in text and "scaling" not in text and "body_connectivity" not in text


def test_renamed_configs_still_load_by_their_old_names() -> None:
    """The configs named after a 30-minute budget were renamed for what they are; old names keep working."""
    from fewshot.configs import RENAMED, config_path

    for old, new in RENAMED.items():
        assert config_path(old) == config_path(new) == CONFIG_DIR / f"{new}.yaml"
