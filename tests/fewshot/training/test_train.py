from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from episodes.data.volumes import Volume
from episodes.processes import Terminated
from fewshot.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint, snapshot_path
from fewshot.config import ConfigError, ExperimentConfig, ModelConfig, load_config
from fewshot.models import create_model
from fewshot.pipeline import prepare_fold
from fewshot.training import StepBatchSampler, train
from fewshot.training.data import EpisodeDataModule
from fewshot.training.module import FewShotModule, flatten_episode_batch, foreground_dice, weighted_ce
from tests.fewshot.training.states import assert_same_training_state


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("superpixels"))


@pytest.fixture(scope="module")
def cfg_of(tiny_config: Callable[..., ExperimentConfig]) -> Callable[..., ExperimentConfig]:
    """``cfg_of(out, cache, **train)``: the tiny config, 4 steps, lr 0.05 halved every 2 steps."""

    def make(out: Path, cache: str, **train: Any) -> ExperimentConfig:
        optim = {"lr": 0.05, "lr_step": 2, "lr_gamma": 0.5}
        return tiny_config(out, cache, optim, **{"steps": 4, "ckpt_every": 2, **train})

    return make


@pytest.fixture(scope="module")
def trained(volumes: list[Volume], cache_dir: str, tmp_path_factory: pytest.TempPathFactory, cfg_of: Callable[..., ExperimentConfig]) -> Any:
    out = tmp_path_factory.mktemp("full")
    return train(cfg_of(out, cache_dir, keep_every=2), volumes=volumes), out


# ------------------------------------------------------------------------------------ pure parts


def test_flatten_episode_batch_repeats_support_per_query() -> None:
    s_img = torch.arange(2 * 1 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 1, 2, 2)
    s_msk = torch.ones(2, 1, 2, 2)
    q_img = torch.randn(2, 3, 1, 2, 2)
    q_msk = torch.zeros(2, 3, 2, 2)
    a, b, c, d = flatten_episode_batch(s_img, s_msk, q_img, q_msk)
    assert (
        a.shape == (6, 1, 1, 2, 2)
        and b.shape == (6, 1, 2, 2)
        and c.shape == (6, 1, 2, 2)
        and d.shape == (6, 2, 2)
    )
    assert torch.equal(a[2], s_img[0]) and torch.equal(a[3], s_img[1])
    assert torch.equal(c[4], q_img[1, 1])
    with pytest.raises(ValueError, match="query masks"):
        flatten_episode_batch(s_img, s_msk, q_img, q_msk[:, :2])


def test_weighted_ce_and_fg_dice_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixel0 -> fg, pixel1 -> bg
    target = torch.tensor([[[1, 1]]])
    lp = torch.log_softmax(logits, 1)[0, :, 0]
    expected = -(1.0 * lp[1, 0] + 1.0 * lp[1, 1]) / 2.0  # both fg pixels, weight 1 each
    assert weighted_ce(logits, target, (0.05, 1.0)).item() == pytest.approx(expected.item())
    target2 = torch.tensor([[[1, 0]]])
    expected2 = -(1.0 * lp[1, 0] + 0.05 * lp[0, 1]) / 1.05
    assert weighted_ce(logits, target2, (0.05, 1.0)).item() == pytest.approx(expected2.item())
    assert foreground_dice(logits, target).item() == pytest.approx(2 / 3)


def test_step_batch_sampler_partitions_and_resumes() -> None:
    r0 = list(StepBatchSampler(3, 2, rank=0, world_size=2))
    r1 = list(StepBatchSampler(3, 2, rank=1, world_size=2))
    assert r0 == [[0, 1], [4, 5], [8, 9]] and r1 == [[2, 3], [6, 7], [10, 11]]
    resumed = StepBatchSampler(3, 2, rank=0, world_size=2, start_step=1)
    assert list(resumed) == r0[1:] and len(resumed) == 3


# ------------------------------------------------------------------------------------ training


def test_fast_dev_run(volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]) -> None:
    result = train(cfg_of(tmp_path, cache_dir), volumes=volumes, fast_dev_run=True)
    assert result.checkpoint is None and result.steps == 1
    assert np.isfinite(result.losses["loss"]) and result.losses["loss"] > 0
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_mixed_trains_on_cpu_and_warns_when_emulated(
    volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool) -> None:
    import sys

    monkeypatch.setattr(sys.modules["fewshot.training.train"], "cpu_bf16_native", lambda: native)
    with caplog.at_level("WARNING", logger="fewshot"):
        result = train(cfg_of(tmp_path, cache_dir, precision="bf16-mixed"), volumes=volumes, fast_dev_run=True)
    assert result.steps == 1 and np.isfinite(result.losses["loss"])
    emulated = [r.getMessage() for r in caplog.records if "without hardware bfloat16" in r.getMessage()]
    assert emulated == ([] if native else [emulated[0]]) and (native or "32-true" in emulated[0])


def test_progress_is_plain_lines_off_a_terminal(
    volumes: list[Volume], cache_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg_of: Callable[..., ExperimentConfig]) -> None:
    import io

    from fewshot.training.progress import LineProgress, training_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert training_progress(True, Terminal()) == (True, [])  # Lightning's own bar
    assert training_progress(False, io.StringIO()) == (False, [])
    show_bar, callbacks = training_progress(True, io.StringIO())
    assert not show_bar and [type(c) for c in callbacks] == [LineProgress]

    train(cfg_of(tmp_path, cache_dir, progress_bar=True), volumes=volumes)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert [line.split()[1] for line in lines] == ["25%", "50%", "75%", "100%"], err
    assert lines[0].startswith("train: 25% (1/4 steps, loss ") and "fg_dice " in lines[0] and "ETA" in lines[0]


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_continues_schedule_and_matches_uninterrupted_run(
    trained: Any, volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]) -> None:
    """Stopped after step 1 and resumed to step 4, a run ends in the bits of the uninterrupted 4 steps (weights,
    optimiser, schedule, step counters), keeps one log per call, and refuses a changed config.

    Fails if the resumed sampler starts one step off, if the optimiser state is dropped on load (momentum
    restarts), or if the learning-rate schedule's state is dropped on load (lr 0.025, not 0.0125, at step 4).
    """
    full, _ = trained
    cfg = cfg_of(tmp_path, cache_dir)
    first = train(cfg, volumes=volumes, callbacks=[_StopAt(1)])
    assert first.steps == 1
    second = train(cfg, volumes=volumes)
    assert second.resumed_from is not None and second.steps == 4 and second.steps_run == 3
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(second.checkpoint)
    assert a["global_step"] == b["global_step"] == 4
    # lr 0.05 halved every 2 steps: 0.0125 after 4 steps, in both runs
    for ck in (a, b):
        assert ck["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0125)
        assert ck["lr_schedulers"][0]["last_epoch"] == 4
    # Weights, optimiser, schedule and step counters to the bit. Not the epoch counters: Lightning closes the epoch
    # when a callback sets `should_stop` (here at step 1), so the resumed steps count as epoch 1 (the CSV log's
    # `epoch` column shows it); training never reads the epoch (episodes are indexed by step, StepBatchSampler
    # has no set_epoch). A kill or a signal saves mid-epoch, and matches the epoch too (test_faults.py).
    assert_same_training_state(a, b, "after the resume", ignore=("epoch", "loops.fit_loop.epoch_progress"))
    assert len(list((tmp_path / "logs").iterdir())) == 2  # one CSV log version per call
    record = (tmp_path / "train_result.json").read_text()
    assert json.loads(record)["steps_run"] == 3
    assert train(cfg, volumes=volumes).steps_run == 0  # already at train.steps: nothing to train
    assert (tmp_path / "train_result.json").read_text() == record  # the record of the run that trained is kept
    changed = load_config({**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"], "lr": 0.1}})
    with pytest.raises(ValueError, match=r"config changed \(optim.lr: 0.05 -> 0.1\)"):
        train(changed, volumes=volumes)


def test_checkpoint_loads_weights_only(trained: Any) -> None:
    result, out = trained
    raw = torch.load(result.checkpoint, weights_only=True)
    payload = raw["fewshot"]
    assert payload["config"]["model"]["backbone"]["name"] == "cbr-tiny"
    assert payload["init_report"]["init"] == "random"
    assert payload["norm_stats"]["std"] > 0 and isinstance(payload["library_version"], str)
    assert payload["dataset"] == "phantom-ct" and payload["train_subjects"]
    assert payload["environment"]["torch"] and "commit" in payload  # versions and source, recorded per run
    env = payload["environment"]
    assert env["cpu_capability"] and env["cpu_bf16"] in ("native", "emulated") and int(env["torch_threads"]) >= 1
    assert env["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    loaded = load_model_from_checkpoint(result.checkpoint)
    model = loaded.model
    assert not model.training and loaded.config.out_dir == str(out) and loaded.global_step == 4
    # the saved config reloads exactly, and the rebuilt model carries it (not a stand-in "random" init)
    assert loaded.config == load_config(payload["config"]) and model.config == loaded.config.model
    x = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., 20:40, 20:40] = 1
    assert model(x[:1, None], masks, x).logits.shape == (2, 2, 64, 64)
    assert (out / "train_result.json").is_file() and result.steps_per_s > 0


def test_a_plain_loop_over_the_module_losses_reproduces_train(
    trained: Any, volumes: list[Volume], cache_dir: str, cfg_of: Callable[..., ExperimentConfig]
) -> None:
    """The bare loop of benchmarks/bench_training_cost.py: the module's losses, its optimiser and scheduler and the
    run's episodes (``EpisodeDataModule.for_experiment``) stepped by hand give train()'s weights bit for bit."""
    result, out = trained
    cfg = cfg_of(out, cache_dir, keep_every=2)
    pl.seed_everything(cfg.train_seed, workers=True, verbose=False)
    module = FewShotModule(create_model(cfg.model, seed=cfg.seed), cfg.optim, cfg.to_dict()).train()
    fold = prepare_fold(cfg.data, volumes, stage="train", progress=False)
    loader = EpisodeDataModule.for_experiment(cfg, fold.train, fold.superpixels).train_dataloader()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    for batch in loader:
        loss, parts = module.losses(batch)
        assert set(parts) == {"ce", "align", "fg_dice"} and not parts["fg_dice"].requires_grad
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    stored = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    weights = module.model.state_dict()
    assert len(loader) == 4 and all(torch.equal(stored[f"model.{k}"], v) for k, v in weights.items())


def test_keep_every_keeps_a_loadable_checkpoint_per_interval(trained: Any) -> None:
    result, out = trained
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*.ckpt"))
    assert kept == ["step-2.ckpt", "step-4.ckpt"]
    assert snapshot_path(out, 2) == out / "checkpoints" / "step-2.ckpt"
    early, final = load_checkpoint(snapshot_path(out, 2)), load_checkpoint(snapshot_path(out, 4))
    last = load_checkpoint(result.checkpoint)
    assert early["global_step"] == 2 and final["global_step"] == 4
    for k, v in last["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][k], v, msg=f"step-4 snapshot differs from last.ckpt at {k}")
    assert any(not torch.equal(early["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert load_model_from_checkpoint(snapshot_path(out, 2)).global_step == 2  # each one evaluates alone
    with pytest.raises(ConfigError, match="keep_every"):
        load_config({"train": {"keep_every": 0}})


def test_adnet_head_trains_its_threshold_and_reloads_it(
    volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]
) -> None:
    base = cfg_of(tmp_path, cache_dir).to_dict()
    base["model"]["head"] = {"name": "adnet", "feature_dim": 8, "init_threshold": -10.0}
    cfg = load_config(base)
    result = train(cfg, volumes=volumes)
    # the loss is ce + align + the threshold loss t / 20, and t has left its start
    losses = result.losses
    assert losses["loss"] == pytest.approx(losses["ce"] + losses["align"] + losses["aux"], abs=1e-5)
    t = load_model_from_checkpoint(result.checkpoint).model.head.t.detach()
    assert float(t) != pytest.approx(-10.0, abs=1e-6)
    assert losses["aux"] == pytest.approx(float(t) / 20.0, abs=0.05)


def test_adjacent_slice_input_trains_and_is_fed_alike_at_evaluation(
    volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]
) -> None:
    from fewshot.evaluation import run_evaluation
    from fewshot.segment import segment_volume

    base = cfg_of(tmp_path / "train", cache_dir).to_dict()
    base["model"]["slice_input"] = "adjacent"
    result = train(load_config(base), volumes=volumes)
    loaded = load_model_from_checkpoint(result.checkpoint)
    model = loaded.model
    assert model.config.slice_input == "adjacent"
    fed: list[torch.Tensor] = []
    model.backbone.register_forward_pre_hook(lambda _m, args: fed.append(args[0].detach().clone()))
    res = run_evaluation(loaded, volumes=volumes)
    assert 0.0 <= res.dice["mean"] <= 1.0 and fed
    assert all(x.shape[1] == 3 for x in fed)
    assert any(not torch.equal(x[:, 0], x[:, 1]) for x in fed)  # neighbours, not the slice tiled
    # segment_volume takes the mode from the model too: the same prediction as when told explicitly
    sup, qry = volumes[0], volumes[1]
    norm = [v.__class__(v.image.astype(np.float32), v.label, v.spacing, v.subject, v.modality, v.label_map,
                        normalized=True) for v in (sup, qry)]
    mask = norm[0].label == norm[0].label_map.value("liver")
    auto = segment_volume(model, norm[0], mask, norm[1])
    told = segment_volume(model, norm[0], mask, norm[1], slice_input="adjacent")
    tiled = segment_volume(model, norm[0], mask, norm[1], slice_input="tile")
    assert np.array_equal(auto, told) and not np.array_equal(auto, tiled)


def test_corrupt_and_foreign_checkpoints(trained: Any, tmp_path: Path) -> None:
    result, _ = trained
    data = Path(result.checkpoint).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model_from_checkpoint(truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt"):
        load_model_from_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_model_from_checkpoint(tmp_path / "missing.ckpt")
    other = create_model(ModelConfig(backbone="cbr-small", head="alpnet"))
    with pytest.raises(CheckpointError, match=r"'cbr-tiny'.*'cbr-small'"):
        load_model_from_checkpoint(result.checkpoint, model=other)


def test_run_evaluation_on_trained_checkpoint(trained: Any, volumes: list[Volume], tmp_path: Path) -> None:
    from episodes.data.preprocess import NormStats
    from fewshot.evaluation import evaluate, run_evaluation
    from fewshot.pipeline import prepare_fold

    result, _ = trained
    res = run_evaluation(result.checkpoint, volumes=volumes, out=tmp_path, overlays=1)
    assert set(res.dice) == {"liver", "spleen", "mean"}
    # the checkpoint's model scored on its fold's held-out scans, normalised with its stored CT statistics
    loaded = load_model_from_checkpoint(result.checkpoint)
    stats = NormStats(**loaded.payload["norm_stats"])
    fold = prepare_fold(loaded.config.data, volumes, stage="evaluate", norm_stats=stats, progress=False)
    direct = evaluate(loaded.model, fold.require_plan(), fold.test)
    assert res.per_scan == direct.per_scan  # from the same TP/FP/FN counts: exactly
    assert res.dice == pytest.approx(direct.dice)
    assert res.extras["global_step"] == 4
    assert {"results.json", "results.md", "plan.json", "config.yaml"} <= {p.name for p in tmp_path.iterdir()}
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    with pytest.raises(ValueError, match="used to train"):
        run_evaluation(result.checkpoint, volumes=volumes, protocol=res_protocol_on_train_subjects())


def res_protocol_on_train_subjects() -> Any:
    from episodes.protocol import Protocol

    return Protocol("phantom-ct", organs=("liver",), support_subject="2", query_subjects=("3",))


def test_ddp_spawn_two_cpu_processes(volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]) -> None:
    cfg = cfg_of(tmp_path, cache_dir, steps=2, devices=2, strategy="ddp_spawn")
    result = train(cfg, volumes=volumes)
    assert result.steps == 2
    ck = load_checkpoint(result.checkpoint)
    assert ck["global_step"] == 2 and ck["fewshot"]["episodes"]["length"] == 2 * 2 * 1


def test_checkpoints_of_one_fold_load_as_an_ensemble_and_other_folds_are_refused(trained: Any, tmp_path: Path) -> None:
    from fewshot.checkpoint import CHECKPOINT_KEY, load_model_from_checkpoints
    from fewshot.models import EnsembleSegmenter

    _result, out = trained
    paths = [snapshot_path(out, 2), snapshot_path(out, 4)]
    assert not isinstance(load_model_from_checkpoints(paths[:1]).model, EnsembleSegmenter)
    ens = load_model_from_checkpoints(paths)
    assert isinstance(ens.model, EnsembleSegmenter) and not ens.model.training
    assert [m["global_step"] for m in ens.payload["ensemble"]] == [2, 4]
    assert ens.path == f"{paths[0]} + {paths[1]}" and ens.config == load_model_from_checkpoint(paths[0]).config
    ckpt = load_checkpoint(paths[1])
    ckpt[CHECKPOINT_KEY]["config"]["data"]["protocol"]["fold"] = 1
    other = tmp_path / "fold1.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match=r"they differ in protocol fold \(0 against 1\)"):
        load_model_from_checkpoints([paths[0], other])
    with pytest.raises(ValueError, match="no checkpoint given"):
        load_model_from_checkpoints([])


def test_ensemble_members_with_other_stored_inference_settings_need_the_value_given(trained: Any, tmp_path: Path) -> None:
    from fewshot.checkpoint import CHECKPOINT_KEY, load_model_from_checkpoints

    _result, out = trained
    first = snapshot_path(out, 2)
    ckpt = load_checkpoint(snapshot_path(out, 4))
    ckpt[CHECKPOINT_KEY]["config"]["model"]["intensity_prior"] = 0.5  # e.g. trained after the config gained it
    later = tmp_path / "later.ckpt"
    torch.save(ckpt, later)
    with pytest.raises(CheckpointError, match=r"intensity_prior=0.5, member 0 0.0: members must agree \(give the "
                       r"setting explicitly, e.g. --intensity-prior"):
        load_model_from_checkpoints([first, later])
    ens = load_model_from_checkpoints([first, later], inference={"intensity_prior": 0.25, "tta": None})
    assert [m.config.intensity_prior for m in ens.model.members] == [0.25, 0.25]
    assert ens.config.model.intensity_prior == 0.25 and ens.model.config.intensity_prior == 0.25
    assert ens.config.model.tta == ens.model.config.tta == "none"  # None keeps the stored value
    single = load_model_from_checkpoints([first], inference={"fg_threshold": 0.8})
    assert single.model.config.fg_threshold == single.config.model.fg_threshold == 0.8
    with pytest.raises(ValueError, match=r"not inference settings: \['seed'\]"):
        load_model_from_checkpoints([first, later], inference={"seed": 1})
    with pytest.raises(ValueError, match=r"intensity_prior must be a finite weight >= 0"):
        load_model_from_checkpoints([first], inference={"intensity_prior": -1.0})


# ---------------------------------------------------------------- refused resumes, faults, outputs (issue 39)


def _copy_run(trained: Any, tmp_path: Path) -> Path:
    import shutil

    _, out = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


def test_refused_resume_names_the_key_and_leaves_config_yaml(
    trained: Any, volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]
) -> None:
    out = _copy_run(trained, tmp_path)
    before = (out / "config.yaml").read_bytes()
    panet = load_config(cfg_of(out, cache_dir).to_dict(), {"model.head.name": "panet"})
    with pytest.raises(ValueError, match=r"config changed \(model.head.name: 'alpnet' -> 'panet'") as info:
        train(panet, volumes=volumes)
    assert "'backbone'" not in str(info.value)  # the differing keys, not the whole model section
    with pytest.raises(ValueError, match=r"it is at step 4, past train.steps=2; pass --steps 4 or more"):
        train(cfg_of(out, cache_dir, steps=2), volumes=volumes)
    assert (out / "config.yaml").read_bytes() == before  # neither refusal rewrote the run's config
    done = train(cfg_of(out, cache_dir), volumes=volumes)  # the same steps: nothing to train, nothing rewritten
    assert done.steps == 4 and done.steps_run == 0 and (out / "config.yaml").read_bytes() == before


def test_no_versioned_last_checkpoint(
    volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig]
) -> None:
    train(cfg_of(tmp_path, cache_dir, steps=6, ckpt_every=10, keep_every=3), volumes=volumes)  # as in the issue
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("last*")) == ["last.ckpt"]  # no last-v1.ckpt


class _FullDiskFile:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes are written (the disk fills)."""

    def __init__(self, path: Any, room: int) -> None:
        import builtins

        self._f, self._room = builtins.open(path, "wb"), room

    def write(self, data: bytes) -> int:
        import errno

        if len(data) > self._room:
            self._f.write(bytes(data)[: self._room])
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def test_disk_full_during_checkpoint_write_keeps_the_previous_checkpoint(
    trained: Any, volumes: list[Volume], cache_dir: str, tmp_path: Path, cfg_of: Callable[..., ExperimentConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    from episodes import atomic
    from fewshot.cli import user_error_message

    out = _copy_run(trained, tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def full_disk(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        if mode == "wb" and ".last.ckpt." in str(path):
            return _FullDiskFile(path, room=4096)
        return builtins.open(path, mode, **kwargs)

    monkeypatch.setattr(atomic, "open", full_disk, raising=False)
    with pytest.raises(OSError) as info:
        train(cfg_of(out, cache_dir, steps=6), volumes=volumes)  # resumes at 4; the save at step 6 fails
    message = user_error_message(info.value)
    assert message == f"No space left on device while writing {last} (the previous last.ckpt is unchanged)"
    assert last.read_bytes() == before and load_checkpoint(last)["global_step"] == 4
    assert not list(last.parent.glob(".*.tmp"))  # the partial temporary file was removed
    monkeypatch.undo()
    assert train(cfg_of(out, cache_dir, steps=6), volumes=volumes).steps == 6  # and it resumes from there


def test_evaluate_outputs_warnings_and_two_runs_in_one_out(
    trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import fcntl
    import os

    from fewshot.cli import main
    from fewshot.outputs import MARKER

    _, run = trained
    out = tmp_path / "ev"
    early = ["evaluate", "--checkpoint", str(snapshot_path(run, 2)), "--overlays", "0", "--out", str(out)]
    assert main(early) == 0
    assert "at step 2 of its train.steps=4" in caplog.text  # an unfinished run is scored, with a word
    assert (out / MARKER).is_file() and (out / "results.json").is_file()
    capsys.readouterr()
    assert main(early) == 2 and "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    fd = os.open(out / ".evaluate.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first evaluate still running in the folder
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        results = (out / "results.json").read_bytes()
        assert main([*early, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"another fewshot evaluate (pid {os.getpid()}) is using {out}" in err, err
        assert (out / "results.json").read_bytes() == results
    finally:
        os.close(fd)
    assert main([*early, "--overwrite"]) == 0  # once the first is done


def test_lightnings_own_sigterm_stop_is_reported_as_terminated(
    volumes: list[Volume], tiny_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    """A SIGTERM reaches Lightning's handler too, and Lightning's loop ends the step with ``SIGTERMException`` (a
    ``SystemExit`` of status 0) when its check runs before ours: seen once as ``fewshot train`` exiting 0 after a
    SIGTERM. ``train`` must treat it as the signal it is: ``Terminated`` (status 143) and ``last.ckpt`` saved at the
    whole step it stopped after."""
    from pytorch_lightning.callbacks import Callback

    class LightningSawSigterm(Callback):  # type: ignore[misc]
        def on_train_batch_start(self, trainer: Any, *_: Any) -> None:
            if trainer.global_step == 2:
                trainer._signal_connector.received_sigterm = True  # what Lightning's handler sets

    cfg = tiny_config(tmp_path / "run", None, None, steps=6, ckpt_every=100)
    with pytest.raises(Terminated):
        train(cfg, volumes=volumes, callbacks=[LightningSawSigterm()])
    assert int(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]) == 3
