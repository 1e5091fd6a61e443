"""A recipe's member runs: one ordinary ``fewshot train`` run per member (and per label group in setting 2).

:func:`plan_runs` resolves every run's config (the member's config, its overrides, the recipe's inference
settings, the data source, fold, setting and organs, and the caller's overrides) before anything trains, so
a bad member or data option fails at once. :func:`train_run` runs one of them: Models Genesis pretraining on the
run's training scans when the member asks for it (``<run>/genesis.pt``, reused when present), then
:func:`fewshot.training.train`, which resumes from ``<run>/checkpoints/last.ckpt``. Each run's folder is a plain
training folder (``config.yaml``, ``checkpoints/last.ckpt``, logs), so it can be inspected, resumed with
``fewshot train --config <run>/config.yaml`` or handed to a cluster scheduler.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from episodes.data.labels import canonical_organ
from fewshot.config import ExperimentConfig, load_config
from fewshot.recipes.spec import Recipe

__all__ = ["DataSource", "MemberRun", "finished_result", "is_finished", "plan_runs", "train_run"]


@dataclass(frozen=True)
class DataSource:
    """Where a recipe trains: a registered dataset, its folder and loader arguments.

    ``dataset=None`` keeps each member config's dataset (the recipe's own data), ``data_dir=None`` its folder
    (``$FEWSHOT_DATA/<dataset folder>`` for the packaged data sets). Loader arguments are replaced, not merged,
    when the dataset changes (a phantom's ``n_subjects`` means nothing to a NIfTI folder).
    """

    dataset: str | None = None
    data_dir: str | None = None
    loader_args: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MemberRun:
    """One training run of a recipe: a member, the organs its model is tested on, its folder and config."""

    member: str
    index: int
    organs: tuple[str, ...]
    group: int
    out_dir: Path
    config: dict[str, Any]
    genesis_steps: int = 0
    genesis_bf16: bool = False
    pretrain_objective: str = "genesis"
    threads: int | None = None
    fold: int | None = None
    label: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.out_dir.name

    def experiment(self, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        return load_config(self.config, dict(overrides or {}))

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"


def run_folder_name(member: str, organs: Sequence[str], grouped: bool) -> str:
    """``<member>`` (one model per member) or ``<member>_<organs>`` (one per label group)."""
    return f"{member}_{'+'.join(organs)}" if grouped else member


def plan_runs(
    recipe: Recipe,
    out: Path,
    *,
    data: DataSource | None = None,
    fold: int | None = None,
    setting: int = 1,
    organs: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    label: str = "",
) -> list[MemberRun]:
    """Every run of ``recipe`` trained into ``out/members/``, with its resolved config (nothing trains here).

    ``fold=None`` trains on every scan (no held-out subjects); ``setting=2`` trains one model per label group,
    each without that group's slices (the organs' groups, :meth:`Recipe.groups_for`). ``overrides`` (dotted
    keys) apply to every member after its own. The superpixel cache ``out/cache/superpixels`` is shared.
    """
    data = data or DataSource()
    if setting not in (1, 2):
        raise ValueError(f"setting must be 1 or 2, got {setting}")
    base = recipe.member_config(0, overrides)
    tested = tuple(canonical_organ(o) for o in organs) if organs else tuple(base.data.protocol.organs)
    groups = recipe.groups_for(tested, setting)
    runs = []
    for index, member in enumerate(recipe.members):
        for gi, group in enumerate(groups):
            folder = out / "members" / run_folder_name(member.name, group, len(groups) > 1)
            over: dict[str, Any] = {
                **(overrides or {}),  # first: the run's fold, setting, organs and folders are the plan's
                "data.protocol.fold": fold,
                "data.protocol.setting": setting,
                "data.protocol.organs": list(group),
                "out_dir": str(folder),
                "data.cache_dir": str(out / "cache" / "superpixels"),
            }
            if data.dataset is not None:  # another dataset drops the member's loader_args (load_config)
                over["data.dataset"] = data.dataset
            if data.data_dir is not None:
                over["data.data_dir"] = str(data.data_dir)
            if data.loader_args is not None:
                over["data.loader_args"] = dict(data.loader_args)
            cfg = recipe.member_config(index, over)
            if setting == 2 and tuple(cfg.data.train_exclusions()) != tuple(recipe.group_of(group[0])):
                # a recipe's own label groups: exclude the whole group, as the protocol does for its groups
                cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, exclude_organs=recipe.group_of(group[0])))
            runs.append(MemberRun(
                member=member.name, index=index, organs=tuple(group), group=gi, out_dir=folder,
                config=cfg.to_dict(), genesis_steps=member.genesis_steps, genesis_bf16=member.genesis_bf16,
                pretrain_objective=member.pretrain_objective,
                threads=recipe.threads_per_member,
                fold=fold, label=label,
            ))
    return runs


def _training_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without the keys that do not change training (inference settings, where things are written)."""
    view = copy.deepcopy(dict(config))
    model = view.get("model", {})
    for key in ("fg_threshold", "tta", "finetune", "intensity_prior"):
        model.pop(key, None)
    if view.get("data", {}).get("episodes", {}).get("shots", 1) == 1:
        model.get("head", {}).pop("shot_fusion", None)
    view.pop("out_dir", None)
    view.get("data", {}).pop("cache_dir", None)
    view.get("data", {}).pop("data_dir", None)
    init = model.get("init", {})
    if init.get("scheme") in ("genesis", "mim"):  # the pretrained file's place, not its content (in the checkpoint)
        init.pop("weights", None)
    return view


def is_finished(run: MemberRun) -> bool:
    """Whether ``run``'s checkpoint exists, reached its steps, and was trained with the run's config (up to
    inference settings and locations)."""
    if not run.checkpoint.is_file() or not (run.out_dir / "train_result.json").is_file():
        return False  # (a run killed after its last checkpoint, before its record: train() writes the record)
    from fewshot.checkpoint import load_checkpoint, read_payload

    ckpt = load_checkpoint(run.checkpoint)
    stored = load_config(read_payload(ckpt, run.checkpoint)["config"]).to_dict()
    want = run.experiment().to_dict()
    if run.genesis_steps:
        scheme = stored["model"]["init"]["scheme"]
        want["model"]["init"] = stored["model"]["init"] if scheme == run.pretrain_objective else None
    done = int(ckpt.get("global_step", -1)) >= int(want["train"]["steps"])
    return done and _training_view(stored) == _training_view(want)


_VOLUMES: dict[str, list[Any]] = {}


def volumes_for(cfg: ExperimentConfig) -> list[Any]:
    """The raw volumes of ``cfg.data``, loaded once per process (one data source kept at a time)."""
    from fewshot.pipeline import load_volumes

    data = cfg.data
    key = repr((data.dataset, data.data_dir, sorted(dict(data.loader_args).items())))
    if key not in _VOLUMES:
        _VOLUMES.clear()
        _VOLUMES[key] = load_volumes(data)
    return _VOLUMES[key]


def train_run(run: MemberRun, volumes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Train one run (Genesis pretraining first when asked; resumes); returns what the bundle records of it."""
    from fewshot.genesis import OBJECTIVE_NAMES
    from fewshot.study import fold_genesis_weights
    from fewshot.training import train

    cfg = run.experiment()
    vols = list(volumes) if volumes is not None else volumes_for(cfg)
    genesis_s = 0.0
    if run.genesis_steps:
        t0 = time.perf_counter()
        objective = run.pretrain_objective
        weights, pretrained = fold_genesis_weights(
            cfg, vols, run.genesis_steps, run.out_dir / f"{objective}.pt", bf16=run.genesis_bf16, objective=objective
        )
        genesis_s = time.perf_counter() - t0
        if pretrained is not None:
            first, last = pretrained.loss_drop()
            loss = OBJECTIVE_NAMES[objective].loss
            print(f"  {objective}: {run.genesis_steps} steps, {loss} {first:.4f} -> {last:.4f}", flush=True)
        cfg = run.experiment({"model.init.scheme": objective, "model.init.weights": weights})
    run.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = train(cfg, volumes=vols, resume=True)
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training {run.out_dir} wrote no checkpoint")
    timing = {"genesis_seconds": genesis_s, "train_wall_seconds": wall, "steps_run": result.steps_run,
              "steps_per_s": result.steps_per_s}
    from episodes.atomic import atomic_write_json, read_json

    record = run.out_dir / "fit_run.json"
    if result.steps_run == 0 and record.is_file():  # already trained: keep the timing of the call that trained
        timing = read_json(record, "fit run record")
    else:
        atomic_write_json(record, timing)
    return {"checkpoint": str(result.checkpoint), "steps": result.steps, **timing}


def finished_result(run: MemberRun) -> dict[str, Any]:
    """What :func:`train_run` returned for a run that :func:`is_finished`, read back from the run's records
    (no data loaded, nothing trained). A run finished by a plain ``fewshot train`` has no ``fit_run.json``:
    its training time is ``train_result.json``'s."""
    from episodes.atomic import read_json

    trained = read_json(run.out_dir / "train_result.json", "training record")
    record = run.out_dir / "fit_run.json"
    timing = read_json(record, "fit run record") if record.is_file() else {
        "genesis_seconds": 0.0, "train_wall_seconds": trained["seconds"], "steps_run": trained["steps_run"],
        "steps_per_s": trained["steps_per_s"],
    }
    return {"checkpoint": str(run.checkpoint), "steps": int(trained["steps"]), **timing}
