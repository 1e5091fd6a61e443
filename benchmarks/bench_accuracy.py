"""Accuracy benchmark on real data: train + evaluate folds, compare with published Dice.

Trains the self-supervised model of a packaged config on each requested fold, evaluates it with
the SSL-ALPNet 1-shot protocol and prints our per-organ Dice (%) beside the published rows
(SSL-ALPNet, Ouyang et al. ECCV 2020, Table 1; GMRD, TMI 2024), plus training steps/s, evaluation scans/s, peak
memory and the backbone/init/head used. Writes ``results.json``, ``results.md`` and the resolved
config of every fold to ``--out``.

Budgets:

* ``cpu``: ``cpu_<dataset>_30min.yaml`` (a recipe tuned for 2 CPU cores and 30 minutes; setting 2
  is the same recipe with ``data.setting=2``);
* ``gpu``: the full SSL-ALPNet recipe, ``ssl_alpnet_<dataset>_setting{1,2}.yaml`` (needs the
  ImageNet ResNet-101 file, see the README).

Setting 2 trains **two models per fold**, as SSL-ALPNet does: one whose training slices exclude the
kidneys and that is tested on them, one excluding liver + spleen and tested on those (each in its own
``..._fold<f>_<organs>`` folder); the fold's record joins their organs.

``--shots 1,3,5`` also evaluates every checkpoint with 3 and 5 support slices per chunk (fused as the recipe's
``model.head.shot_fusion``, at its threshold) and adds a k-shot table; a k that a support scan cannot give (an
organ with fewer than k x 3 slices) is scored with neighbouring chunks sharing support slices and named under
the table (``Protocol.share_support_slices``); one with fewer than k slices is named instead of a number.

``--jobs 2`` trains two runs (folds, or setting 2's label groups) at once, each in a spawned process with CPU
cores / 2 torch threads and its output in ``OUT/logs/<run>.log`` (:func:`run_tasks`); the fold table is the same.

``--ensemble A/results.json B/results.json`` trains nothing: each fold that every given run trained (e.g. the
recipe with ``--set seed=0`` and ``--set seed=1``) is scored as one model, the mean of the runs' foreground
probabilities (:func:`ensemble_fold`); the report lists each member's Dice beside the ensemble's, and "train min"
adds the members' training up. Setting-2 runs (one model per label group) are joined group by group: each group's
organs are scored by the ensemble of that group's models.

``--member CONFIG [KEY=VALUE ...]``, given twice or more, trains every member (a packaged config or YAML with its
own ``--set``-style overrides, e.g. ``--member cpu_btcv_30min seed=1``) on every fold, each into
``OUT/member<i>/`` with its own results, all through one job queue (``--jobs``), then scores each fold's members
as one ensemble into ``OUT``: the CT setting-1 recipe in one command. ``genesis_steps=N`` among a member's
``KEY=VALUE`` pretrains that member's encoder with N Models Genesis steps on the fold's training scans first
(``--genesis-steps`` for every member); its report names each member's init. With ``--setting 2`` each member
trains one model per label group, as a plain run does.

``--time-limit-min`` stops training once that much wall-clock time has passed since the fold
started (data loading, Genesis pretraining and superpixels included; evaluation excluded), through
a Lightning callback that sets ``trainer.should_stop``; the steps actually reached are recorded.

Example (the CPU recipe, CHAOS MRI setting 1 fold 0, 30 minutes in total)::

    FEWSHOT_DATA=/work/shared/data nice -n 5 python benchmarks/bench_accuracy.py \\
        --dataset chaos-mr --budget cpu --setting 1 --folds 0 --time-limit-min 27 --out runs/bench_acc
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from episodes.protocol.folds import SHARE_HINT, TooFewSupportSlices
from fewshot.provenance import environment

__all__ = [
    "PUBLISHED", "FoldTask", "TimeBudget", "combine_groups", "ensemble_fold", "evaluate_fold", "group_tasks", "main",
    "markdown_report", "run_fold", "run_tasks",
    "setting_groups",
]

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")
DATASETS = ("chaos-mr", "btcv-ct")

#: Published 1-way 1-shot Dice (%) from anchors.md §2.1 (5-fold means): liver, RK, LK, spleen, mean.
PUBLISHED: dict[tuple[str, int], list[tuple[str, tuple[float, float, float, float, float]]]] = {
    ("chaos-mr", 1): [
        ("SSL-ALPNet (ECCV'20)", (76.10, 85.18, 81.92, 72.18, 78.84)),
        ("GMRD (TMI'24, best non-SAM)", (81.42, 90.12, 83.96, 76.09, 82.90)),
    ],
    ("chaos-mr", 2): [
        ("SSL-ALPNet (ECCV'20)", (73.05, 78.39, 73.63, 67.02, 73.02)),
        ("GMRD (TMI'24, best non-SAM)", (80.25, 86.66, 78.65, 73.25, 79.70)),
    ],
    ("btcv-ct", 1): [
        ("SSL-ALPNet (ECCV'20)", (78.29, 71.81, 72.36, 70.96, 73.35)),
        ("GMRD (TMI'24, best non-SAM)", (79.60, 74.46, 81.70, 78.31, 78.52)),
    ],
    ("btcv-ct", 2): [
        ("SSL-ALPNet (ECCV'20)", (73.67, 54.82, 63.34, 60.25, 63.02)),
        ("GMRD (TMI'24, best non-SAM)", (80.39, 76.17, 77.40, 75.30, 77.32)),
    ],
}


class TimeBudget(Callback):
    """Stops training once ``budget_s`` seconds have passed since ``start`` (``time.perf_counter``).

    ``start=None`` starts the clock when training starts. After fitting, ``steps_reached`` is
    the global step at which training stopped and ``stopped`` tells whether the budget ended it.
    The decision is reduced over processes (any rank over budget stops all), so DDP ranks stop
    at the same step.
    """

    def __init__(self, budget_s: float, start: float | None = None) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.budget_s = float(budget_s)
        self.start = start
        self.stopped = False
        self.steps_reached = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps_reached = int(trainer.global_step)
        if self.start is None:  # not started through on_train_start (e.g. called directly)
            self.start = time.perf_counter()
        over = time.perf_counter() - self.start >= self.budget_s
        # any rank over budget stops all of them at the same step (no DDP hang on uneven clocks)
        if trainer.strategy.reduce_boolean_decision(over, all=False) and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped = True


def _config_name(dataset: str, budget: str, setting: int) -> str:
    if dataset.startswith("phantom"):
        return "demo_phantom"
    ds = dataset.replace("-", "_")
    if budget == "cpu":
        return f"cpu_{ds.split('_')[0]}_30min"
    return f"ssl_alpnet_{ds}_setting{setting}"


def _peak_memory_mb() -> dict[str, float]:
    """Peak RSS of this process and of its (waited-for) children, MiB (Linux ``ru_maxrss`` is KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    out = {
        "cpu_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "cpu_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _genesis_weights(cfg: Any, volumes: list[Any], steps: int, out: Path) -> str:
    from fewshot.study import fold_genesis_weights

    path, result = fold_genesis_weights(cfg, volumes, steps, out)
    if result is not None:
        first, last = result.loss_drop()
        print(f"  genesis: {steps} steps, restoration MSE {first:.4f} -> {last:.4f}", flush=True)
    return path


def evaluate_fold(
    checkpoint: str | Path | Sequence[str | Path],
    cfg: Any,
    volumes: list[Any],
    fold_dir: Path,
    *,
    shots: Sequence[int] = (1,),
    eval_batch_size: int = 16,
    resolution: str = "native",
) -> tuple[Any, float, dict[str, Any]]:
    """Evaluate a fold's checkpoint (or several, as one ensemble) with ``cfg``'s inference settings into
    ``fold_dir/eval*``: the 1-shot result, its wall seconds, and the k-shot evaluations of ``shots`` (k > 1)."""
    from fewshot.checkpoint import load_model_from_checkpoints
    from fewshot.evaluation import run_evaluation

    t0 = time.perf_counter()
    loaded = load_model_from_checkpoints(checkpoint, inference={
        "fg_threshold": cfg.model.fg_threshold, "tta": cfg.model.tta, "intensity_prior": cfg.model.intensity_prior,
    })

    def at(k: int, share: bool = False) -> Any:
        return run_evaluation(
            loaded, protocol=replace(cfg.data.protocol, shots=k, share_support_slices=share), volumes=volumes,
            out=fold_dir / ("eval" if k == 1 else f"eval_{k}shot"), batch_size=eval_batch_size,
            progress=True, postprocess=("none", "lcc"), resolution=resolution,  # type: ignore[arg-type]
            threshold=cfg.model.fg_threshold, shot_fusion=getattr(cfg.model.head, "shot_fusion", None),
            tta=cfg.model.tta, finetune=cfg.model.finetune, intensity_prior=cfg.model.intensity_prior,
        )

    ev = at(1)
    wall = time.perf_counter() - t0
    kshot: dict[str, Any] = {}
    for k in sorted(set(shots) - {1}):
        try:
            kshot[str(k)] = dict(at(k).extras["postprocess"])
        except TooFewSupportSlices as e:  # the support scan has fewer organ slices than k x chunks
            if e.shareable:  # neighbouring chunks share support slices, and the table says so
                kshot[str(k)] = {**at(k, share=True).extras["postprocess"], "shared": e.reason}
                print(f"   {k}-shot: {e.reason}; scored with chunks sharing support slices", flush=True)
            else:  # fewer organ slices than k
                kshot[str(k)] = {"error": e.reason}
                print(f"   {k}-shot: not possible: {e.reason}", flush=True)
    return ev, wall, kshot


def run_fold(
    dataset: str,
    budget: str,
    setting: int,
    fold: int,
    out: Path,
    *,
    volumes: list[Any],
    steps: int | None = None,
    time_limit_min: float | None = None,
    overrides: dict[str, Any] | None = None,
    config: str | None = None,
    genesis_steps: int = 0,
    eval_batch_size: int = 16,
    resolution: str = "native",
    previous: dict[str, Any] | None = None,
    organs: Sequence[str] | None = None,
    shots: Sequence[int] = (1,),
    resume: bool = False,
) -> dict[str, Any]:
    """Train + evaluate one fold; returns a JSON-able record (scores in [0, 1]).

    ``shots``: besides the recipe's own 1-shot evaluation (the record's scores), evaluate the same
    checkpoint with every ``k > 1`` support slices per chunk, fused as the recipe's
    ``model.head.shot_fusion`` says, at the same threshold: ``record["kshot"][str(k)]`` holds the scores
    without and with LCC, or ``{"error": ...}`` when the support scan has too few organ slices for k shots.

    ``organs``: test (and, in setting 2, exclude from training) only these organs, in a fold folder of
    their own (``..._fold<f>_<organs>``): one setting-2 label group (see :func:`setting_groups`).

    ``previous``: this fold's record from an earlier run in the same ``out`` (``--reuse``). When its
    checkpoint exists and was trained with the same config up to inference-only keys
    (:data:`INFERENCE_KEYS`), it is evaluated again instead of retrained; the record keeps the earlier
    training statistics and says ``"reused": true``.

    ``resume``: continue the fold's training from ``<fold>/train/checkpoints/last.ckpt`` when it exists (an
    interrupted run, or one trained for fewer steps: ``train.steps`` may be raised, the data, model, optimiser
    and seed must be the same, see :func:`fewshot.training.train`); the record's ``train.steps_run``,
    ``fit_seconds`` and ``steps_per_s`` then count this run's steps only. Default: train from step 0.
    """
    from fewshot.config import load_config, save_config
    from fewshot.configs import config_path
    from fewshot.training import train

    t_fold = time.perf_counter()
    fold_dir = out / _fold_dir_name(dataset, setting, fold, organs)
    over: dict[str, Any] = {
        "data.protocol.fold": fold,
        "data.protocol.setting": setting,
        "out_dir": str(fold_dir / "train"),
    }
    if steps is not None:
        over["train.steps"] = steps
    over.update(overrides or {})
    if organs:  # after the overrides: a --set data.protocol.organs lists every group's organs, this run tests its own
        over["data.protocol.organs"] = list(organs)
    name = config or _config_name(dataset, budget, setting)
    cfg = load_config(config_path(name), over)
    if cfg.data.dataset != dataset:
        raise ValueError(f"config {name} is for dataset {cfg.data.dataset!r}, not {dataset!r}")
    genesis_s = 0.0
    if genesis_steps > 0:
        t0 = time.perf_counter()
        weights = _genesis_weights(cfg, volumes, genesis_steps, fold_dir / "genesis.pt")
        genesis_s = time.perf_counter() - t0
        cfg = load_config(config_path(name), {**over, "model.init.scheme": "genesis", "model.init.weights": weights})
    fold_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(cfg.out_dir) / "checkpoints" / "last.ckpt"
    if previous is not None and not _reusable(checkpoint, cfg):
        print(f"   not reusing {checkpoint}: missing, unfinished or trained with another config", flush=True)
        previous = None
    save_config(cfg, fold_dir / "config.yaml")

    def evaluate(ckpt: str | Path) -> tuple[Any, float, dict[str, Any]]:
        return evaluate_fold(ckpt, cfg, volumes, fold_dir, shots=shots, eval_batch_size=eval_batch_size,
                             resolution=resolution)

    if previous is not None:
        print(f"   reusing {checkpoint}", flush=True)
        ev, eval_wall, kshot = evaluate(checkpoint)
        seconds = ev.extras.get("timing", {}).get("seconds")
        return {
            **previous,
            "checkpoint": str(checkpoint),
            "config": cfg.to_dict(),
            "reused": True,
            **_scores_of(ev),
            "kshot": kshot,
            "eval": {**previous["eval"], "seconds": seconds, "wall_seconds": eval_wall},
        }

    callbacks: list[Callback] = []
    budget_cb = None
    if time_limit_min is not None:
        budget_cb = TimeBudget(time_limit_min * 60.0, start=t_fold)
        callbacks.append(budget_cb)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr = train(cfg, volumes=volumes, resume=resume, callbacks=callbacks)
    train_wall = time.perf_counter() - t0
    mem_train = _peak_memory_mb()
    if tr.checkpoint is None:
        raise RuntimeError(f"training of {fold_dir} wrote no checkpoint")
    ev, eval_wall, kshot = evaluate(tr.checkpoint)
    timing = dict(ev.extras.get("timing", {}))
    return {
        "checkpoint": str(tr.checkpoint),
        "reused": False,
        "dataset": dataset,
        "setting": setting,
        "fold": fold,
        "config_name": name,
        "overrides": {k: v for k, v in over.items() if k not in _PER_FOLD_KEYS},
        "config": cfg.to_dict(),
        "host": host(),
        "model": {
            "backbone": cfg.model.backbone.name,
            "truncate": cfg.model.backbone.truncate,
            "output_stride": cfg.model.backbone.output_stride,
            "init": cfg.model.init.scheme,
            "head": cfg.model.head.name,
            "feature_dim": getattr(cfg.model.head, "feature_dim", None),
            "size": cfg.data.size,
            "slice_input": cfg.model.slice_input,
        },
        **_scores_of(ev),
        "kshot": kshot,
        "train": {
            "steps": tr.steps,
            "steps_planned": cfg.train.steps,
            "steps_run": tr.steps_run,
            "resumed_from": tr.resumed_from,
            "stopped_by_time_limit": bool(budget_cb is not None and budget_cb.stopped),
            "fit_seconds": tr.seconds,
            "steps_per_s": tr.steps_per_s,
            "wall_seconds": train_wall,
            "genesis_steps": genesis_steps,
            "genesis_seconds": genesis_s,
            "losses": tr.losses,
            "peak_memory_mb": mem_train,
        },
        "eval": {
            "seconds": timing.get("seconds"),
            "wall_seconds": eval_wall,
            "scans": timing.get("scans"),
            "scans_per_s": timing.get("scans_per_s"),
            "slices_per_s": timing.get("slices_per_s"),
            "device": timing.get("device"),
        },
        "total_wall_seconds": time.perf_counter() - t_fold,
        "peak_memory_mb": _peak_memory_mb(),
        "out_dir": str(fold_dir),
    }


def ensemble_fold(
    members: Sequence[dict[str, Any]],
    out: Path,
    *,
    volumes: list[Any],
    shots: Sequence[int] = (1,),
    eval_batch_size: int = 16,
    resolution: str = "native",
    organs: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one fold's trained runs (the fold records of several earlier ``bench_accuracy`` runs, e.g. one
    recipe with different seeds) as one ensemble (the mean of their foreground probabilities), with the
    first run's inference settings; returns the fold record of the ensemble.

    Its training statistics are the members' together: ``train.wall_seconds`` and ``fit_seconds`` add up
    (the training cost of the ensemble), ``steps_per_s`` is their mean; ``ensemble`` lists each member's
    checkpoint, seed, commit, steps, training minutes and machine.

    Setting 2 (records with one model per label group, ``"groups"``): each group's models of all members are
    one ensemble for that group's organs, and the groups are joined as :func:`combine_groups` joins one run's;
    ``ensemble`` then lists each member's models of all groups, with the member's own fold mean.
    ``organs``: the label group these records test (the fold folder's name; set by that recursion).
    ``overrides``: dotted inference settings (:data:`INFERENCE_KEYS`) that replace the first run's.
    """
    from fewshot.config import load_config, save_config, to_dict

    first = members[0]
    key = (first["dataset"], first["setting"], first["fold"])
    for m in members:
        if (m["dataset"], m["setting"], m["fold"]) != key:
            raise ValueError(f"--ensemble: fold records of different folds: {key} and "
                             f"{(m['dataset'], m['setting'], m['fold'])}")
    if any("groups" in m for m in members):
        n_groups = len(first.get("groups") or [])
        if not all(len(m.get("groups") or []) == n_groups for m in members):
            raise ValueError(f"--ensemble: fold {key}: setting-2 records with one model per label group and "
                             "records without them (or with other groups) cannot be one ensemble")
        group_recs = []
        for group in first["groups"]:
            tested = sorted(set(group["dice"]) - {"mean"})
            parts = [_group_record(m, tested) for m in members]
            found = [part for part in parts if part is not None]
            if len(found) != len(parts):
                raise ValueError(f"--ensemble: fold {key}: not every run trained a model for {'+'.join(tested)} "
                                 "(setting 2 needs the same label groups in each run)")
            group_recs.append(ensemble_fold(
                found, out, volumes=volumes, shots=shots, eval_batch_size=eval_batch_size, resolution=resolution,
                organs=tuple(found[0]["config"]["data"]["protocol"]["organs"]), overrides=overrides,
            ))
        return {**combine_groups(group_recs), "ensemble": [_member_entry(m) for m in members]}
    cfg = load_config(first["config"], dict(overrides or {}))
    fold_dir = out / _fold_dir_name(first["dataset"], first["setting"], first["fold"], organs)
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, fold_dir / "config.yaml")
    ev, eval_wall, kshot = evaluate_fold(
        [m["checkpoint"] for m in members], cfg, volumes, fold_dir, shots=shots,
        eval_batch_size=eval_batch_size, resolution=resolution,
    )
    trains = [m["train"] for m in members]
    timing = dict(ev.extras.get("timing", {}))
    return {
        **first,
        "config": to_dict(cfg),  # the first run's, with the inference settings the ensemble was scored with
        "checkpoint": [m["checkpoint"] for m in members],
        "reused": False,
        **_scores_of(ev),
        "commit": ", ".join(dict.fromkeys(str(m.get("commit")) for m in members)),
        "host": next((m["host"] for m in members if m.get("host")), None),
        "kshot": kshot,
        "ensemble": [_member_entry(m) for m in members],
        "train": {
            **first["train"],
            "fit_seconds": sum(t["fit_seconds"] for t in trains),
            "wall_seconds": sum(t["wall_seconds"] for t in trains),
            "genesis_seconds": sum(t.get("genesis_seconds", 0.0) for t in trains),
            "steps_per_s": sum(t["steps_per_s"] for t in trains) / len(trains),
            "stopped_by_time_limit": any(t["stopped_by_time_limit"] for t in trains),
        },
        "eval": {**first["eval"], "seconds": timing.get("seconds"), "wall_seconds": eval_wall,
                 "scans_per_s": timing.get("scans_per_s")},
        "total_wall_seconds": sum(m["total_wall_seconds"] for m in members) + eval_wall,
        "out_dir": str(fold_dir),
    }


def _member_entry(m: dict[str, Any]) -> dict[str, Any]:
    """What an ensemble record says about one member run (its fold record ``m``)."""
    return {
        "checkpoint": m["checkpoint"], "seed": (m.get("config") or {}).get("seed"), "commit": m.get("commit"),
        "steps": m["train"]["steps"], "genesis_steps": m["train"].get("genesis_steps"),
        "train_minutes": _train_seconds(m["train"]) / 60,
        "dice_mean": m["dice"]["mean"], "host": m.get("host"), "model": m.get("model"),
        "config_name": m.get("config_name"), "overrides": m.get("overrides") or {},
        "inference": _inference_of(m),
    }


def _inference_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The inference settings (:data:`fewshot.checkpoint.INFERENCE_FIELDS`) a fold record was scored with."""
    from fewshot.checkpoint import INFERENCE_FIELDS

    model = (record.get("config") or {}).get("model") or {}
    return {k: model[k] for k in INFERENCE_FIELDS if k in model}


def setting_groups(config: Any) -> list[tuple[str, ...]]:
    """The organ groups that need a training run of their own: ``[all organs]`` in setting 1; in setting 2
    one per label group (SSL-ALPNet trains one model excluding the kidneys and tests them, another excluding
    liver + spleen), :meth:`episodes.protocol.Protocol.training_runs`."""
    return [tuple(tested) for tested, _ in config.data.protocol.training_runs()]


def combine_groups(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One fold record from the records of its setting-2 groups (disjoint organs): per-organ scores side by
    side, means recomputed over all organs; times, steps/s and memory summed or maxed. The group records are
    kept under ``"groups"`` (what ``--reuse`` reads)."""
    if len(records) == 1:
        return dict(records[0])

    def merged(key: str, scores: Sequence[dict[str, Any]]) -> dict[str, float]:
        per_organ = {o: v for sc in scores for o, v in sc[key].items() if o != "mean"}
        return {**per_organ, "mean": statistics.fmean(per_organ.values())}

    def scores_of(sc: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {k: merged(k, sc) for k in ("dice", "precision", "recall")}

    first = records[0]
    steps_post = set.intersection(*(set(r["postprocess"]) for r in records))
    trains, evals = [r["train"] for r in records], [r["eval"] for r in records]
    fit = sum(t["fit_seconds"] for t in trains)
    eval_s = sum(e["seconds"] or 0.0 for e in evals)
    scans = sum(e["scans"] or 0 for e in evals)
    memory = {k: max(r["peak_memory_mb"].get(k, 0.0) for r in records) for k in first["peak_memory_mb"]}
    return {
        **{k: v for k, v in first.items() if k not in ("groups", "checkpoint")},
        **scores_of(records),
        "postprocess": {step: scores_of([r["postprocess"][step] for r in records]) for step in sorted(steps_post)},
        "kshot": _combine_kshot([r.get("kshot", {}) for r in records], scores_of),
        "reused": all(r.get("reused") for r in records),
        "checkpoint": [r["checkpoint"] for r in records],
        "train": {
            **first["train"],
            "stopped_by_time_limit": any(t["stopped_by_time_limit"] for t in trains),
            "fit_seconds": fit,
            "steps_per_s": sum(t.get("steps_run", t["steps"]) for t in trains) / fit if fit else 0.0,
            "wall_seconds": sum(t["wall_seconds"] for t in trains),
            "genesis_seconds": sum(t["genesis_seconds"] for t in trains),
            "losses": None,
            "runs": len(records),
        },
        "eval": {
            **first["eval"],
            "seconds": eval_s,
            "wall_seconds": sum(e["wall_seconds"] for e in evals),
            "scans": scans,
            "scans_per_s": scans / eval_s if eval_s else None,
            "slices_per_s": None,
        },
        "total_wall_seconds": sum(r["total_wall_seconds"] for r in records),
        "peak_memory_mb": memory,
        "groups": [dict(r) for r in records],
    }


def _combine_kshot(parts: Sequence[dict[str, Any]], scores_of: Any) -> dict[str, Any]:
    """The groups' k-shot scores joined per k (an error in any group is the fold's error for that k)."""
    joined: dict[str, Any] = {}
    for k in sorted(set.intersection(*(set(p) for p in parts)), key=int):
        errors = [p[k]["error"] for p in parts if "error" in p[k]]
        shared = [p[k]["shared"] for p in parts if "shared" in p[k]]
        joined[k] = {"error": "; ".join(errors)} if errors else {
            step: scores_of([p[k][step] for p in parts]) for step in ("none", "lcc")
        } | ({"shared": "; ".join(shared)} if shared else {})
    return joined


#: Config keys that only change inference: a checkpoint trained with other values is still reusable.
#: ``model.head.shot_fusion`` counts only when the training episodes have one shot (nothing to fuse).
INFERENCE_KEYS = (
    "model.fg_threshold", "model.tta", "model.finetune", "model.intensity_prior", "model.head.shot_fusion",
)
#: Config keys that say where a run was written, not how it trained: an output folder copied or moved elsewhere
#: is still reusable.
LOCATION_KEYS = ("out_dir",)


def _training_view(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the inference-only and location keys (:data:`INFERENCE_KEYS`, :data:`LOCATION_KEYS`)."""
    view = copy.deepcopy(config)
    one_shot = view.get("data", {}).get("episodes", {}).get("shots", 1) == 1
    for key in (*INFERENCE_KEYS, *LOCATION_KEYS):
        if key == "model.head.shot_fusion" and not one_shot:
            continue
        *parents, leaf = key.split(".")
        node = view
        for name in parents:
            node = node.get(name, {})
        node.pop(leaf, None)
    return view


def _reusable(checkpoint: Path, cfg: Any) -> bool:
    """Whether ``checkpoint`` exists and was trained with ``cfg`` (up to inference keys; the saved config is
    read with today's defaults filled in) for all of its steps."""
    if not checkpoint.is_file():
        return False
    from fewshot.checkpoint import load_checkpoint, read_payload
    from fewshot.config import load_config

    ckpt = load_checkpoint(checkpoint)
    trained = load_config(read_payload(ckpt, checkpoint)["config"]).to_dict()
    done = int(ckpt.get("global_step", -1)) >= cfg.train.steps
    return done and _training_view(trained) == _training_view(cfg.to_dict())


def _group_record(record: dict[str, Any] | None, organs: Sequence[str]) -> dict[str, Any] | None:
    """The group record of ``organs`` inside an earlier combined fold ``record`` (``--reuse``)."""
    for group in (record or {}).get("groups", []):
        if set(group["dice"]) - {"mean"} == set(organs):
            return dict(group)
    return None


def _scores_of(ev: Any) -> dict[str, Any]:
    return {
        "dice": dict(ev.dice),
        "precision": dict(ev.precision),
        "recall": dict(ev.recall),
        "postprocess": dict(ev.extras.get("postprocess", {})),
        "resolution": ev.extras.get("resolution"),
        "fg_threshold": ev.extras.get("threshold"),
        "tta": ev.extras.get("tta", "none"),
        "finetune": ev.extras.get("finetune"),
        "intensity_prior": ev.extras.get("intensity_prior", 0.0),
        # the code that trained the model (the checkout may move on while a long run trains)
        "commit": ev.extras.get("trained_with_commit") or ev.extras.get("commit"),
        "eval_commit": ev.extras.get("commit"),
    }


def _finetune_label(finetune: dict[str, Any]) -> str:
    """How a record's test-time fine-tuning reads in a table row."""
    return f"support fine-tuning {finetune['steps']} steps at lr {finetune['lr']:g}"


def _train_precision(record: dict[str, Any]) -> str:
    """The record's ``train.precision`` (``auto`` for records without a config)."""
    return str((record.get("config") or {}).get("train", {}).get("precision", "auto"))


def _fg_threshold(record: dict[str, Any]) -> float:
    """The record's inference threshold (records written before it was stored: from its config)."""
    value = record.get("fg_threshold")
    if value is None:
        value = (record.get("config") or {}).get("model", {}).get("fg_threshold", 0.5)
    return float(value)


def _backbone_name(model: dict[str, Any]) -> str:
    """``backbone[/truncate]`` of a fold record's ``model``."""
    return f"{model['backbone']}{'/' + model['truncate'] if model.get('truncate') else ''}"


def _train_seconds(train: dict[str, Any]) -> float:
    """A fold record's training wall time with its Models Genesis pretraining (absent in older records)."""
    return float(train["wall_seconds"] + train.get("genesis_seconds", 0.0))


def _mixed_ensemble(record: dict[str, Any]) -> bool:
    """Whether an ensemble record's members differ in backbone, init or steps (older records name no member model)."""
    members = record.get("ensemble") or []
    return len({_member_kind(e) for e in members}) > 1


def _member_kind(member: dict[str, Any]) -> str:
    """``backbone[/truncate] N steps`` of one ensemble member, with its init when not random (``after G Genesis
    steps`` when the record says how many)."""
    model = member.get("model") or {}
    name = _backbone_name(model) if model else "?"
    init, genesis = model.get("init"), member.get("genesis_steps")
    pre = f" after {genesis} Genesis steps" if genesis else f", init {init}" if init not in (None, "random") else ""
    return f"{name} {member['steps']} steps{pre}"


def _ensemble_label(record: dict[str, Any]) -> str:
    """``ensemble of N (seeds ...)``, or for members of different backbones / steps
    ``ensemble of N (cbr-small/block3 4500 steps: seeds 0, 1, 2; resnet50/layer2 5000 steps: seed 0)``."""
    members = record["ensemble"]
    if not _mixed_ensemble(record):
        return f"ensemble of {len(members)} (seeds {', '.join(str(e['seed']) for e in members)})"
    kinds: dict[str, list[str]] = {}
    for e in members:
        kinds.setdefault(_member_kind(e), []).append(str(e["seed"]))
    parts = [f"{k}: seed{'s' if len(v) > 1 else ''} {', '.join(v)}" for k, v in kinds.items()]
    return f"ensemble of {len(members)} ({'; '.join(parts)})"


def _config_names(record: dict[str, Any]) -> list[str]:
    """The config name (with ``--set`` overrides) of a fold record, or of each of an ensemble's members."""
    sources = [e for e in record.get("ensemble") or [] if e.get("config_name")] or [record]
    return [
        str(r["config_name"])
        + (" with " + ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) if r.get("overrides") else "")
        for r in sources
    ]


def _row(label: str, values: Sequence[float]) -> str:
    return f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |"


def _mean_std(values: Sequence[float]) -> str:
    m = statistics.fmean(values)
    return f"{m:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def _scores(r: dict[str, Any], step: str) -> dict[str, dict[str, float]]:
    return r["postprocess"].get(step) or {k: r[k] for k in ("dice", "precision", "recall")}


def kshot_table(recs: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: Dice (%) per organ for 1 and every evaluated k > 1 support slices per chunk, mean ±
    std over the folds where k was possible, the same mean with LCC, then (several folds) each fold's mean
    Dice per k; folds where a k was not possible are named."""
    ks = sorted({k for r in recs for k in r.get("kshot", {})}, key=int)
    if not ks:
        return []
    fusion = (recs[0].get("config") or {}).get("model", {}).get("head", {}).get("shot_fusion", "prototypes")
    organs = [o for o in recs[0]["dice"] if o != "mean"]
    lines = [
        "", f"k-shot: k support slices per chunk (fused: {fusion}), the same checkpoints and threshold:", "",
        "| shots | folds | " + " | ".join(o.replace("_", " ") for o in organs) + " | mean | mean + LCC |",
        "|---:|---|" + "---:|" * (len(organs) + 2),
    ]
    notes: list[str] = []
    per_fold: list[str] = []
    for k in ["1", *ks]:
        ok: list[tuple[dict[str, Any], dict[str, Any]]]
        if k == "1":
            ok = [(r, {"none": _scores(r, "none"), "lcc": _scores(r, "lcc")}) for r in recs]
        else:
            ok = [(r, r["kshot"][k]) for r in recs if k in r.get("kshot", {}) and "error" not in r["kshot"][k]]
            notes += [
                f"Not possible: {k}-shot, fold {r['fold']}: {r['kshot'][k]['error']}"
                for r in recs if "error" in r.get("kshot", {}).get(k, {})
            ] + [  # results written before TooFewSupportSlices.reason keep the hint: strip it
                f"Shared support slices: {k}-shot, fold {r['fold']}: {sc['shared'].removesuffix(SHARE_HINT)}; "
                f"scored with neighbouring chunks sharing slices (each chunk: the {k} organ slices around its "
                "percentile)"
                for r, sc in ok if "shared" in sc
            ]
        if not ok:
            lines.append(f"| {k} | none | " + " | ".join(["n/a"] * (len(organs) + 2)) + " |")
            continue
        cells = [_mean_std([100 * sc["none"]["dice"][o] for _, sc in ok]) for o in (*organs, "mean")]
        cells.append(_mean_std([100 * sc["lcc"]["dice"]["mean"] for _, sc in ok]))
        lines.append(f"| {k} | {','.join(str(r['fold']) for r, _ in ok)} | " + " | ".join(cells) + " |")
        by_fold = {r["fold"]: sc for r, sc in ok}
        per_fold.append(
            f"| {k} | "
            + " | ".join(
                f"{100 * by_fold[r['fold']]['none']['dice']['mean']:.2f}" if r["fold"] in by_fold else "n/a"
                for r in recs
            )
            + " |"
        )
    if len(recs) > 1:  # each fold's k-shot mean, so the report alone keeps every number behind the means
        lines += [
            "", "Mean Dice per fold:", "",
            "| shots | " + " | ".join(f"fold {r['fold']}" for r in recs) + " |",
            "|---:|" + "---:|" * len(recs),
            *per_fold,
        ]
    return lines + (["", *notes] if notes else [])


def markdown_report(records: Sequence[dict[str, Any]]) -> str:
    """Per dataset/setting: Dice (%) per organ, precision and recall per fold, the mean ± std over folds,
    the same with LCC post-processing, then the published rows; config, commit and timing below."""
    lines: list[str] = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    for (dataset, setting), recs in groups.items():
        # the protocol's organs (all four for the real datasets) in the published tables' order
        tested = [o for o in recs[0]["dice"] if o != "mean"]
        organs = [o for o in ORGANS if o in tested] + [o for o in tested if o not in ORGANS]
        cols = (*organs, "mean")
        lines += [f"### {dataset}, setting {setting}, 1-shot 3D Dice (%)", ""]
        if recs[0].get("resolution"):
            lines += [f"Scored against {recs[0]['resolution']}.", ""]
        lines.append("| method | " + " | ".join(o.replace("_", " ") for o in organs) + " | mean | precision | recall |")
        lines.append("|---|" + "---:|" * (len(organs) + 3))
        for step, suffix in (("none", ""), ("lcc", " + LCC post-processing")):
            for r in recs:
                sc = _scores(r, step)
                m = r["model"]
                precision = _train_precision(r)
                mixed = _mixed_ensemble(r)  # members of different backbones / steps: the ensemble names them
                # the init when every model shares it (members of different inits: each member's kind names its own)
                inits = {(e.get("model") or {}).get("init", m["init"]) for e in r.get("ensemble") or []} or {m["init"]}
                label = (
                    f"ours fold {r['fold']}{suffix}: "
                    + ("" if mixed else _backbone_name(m))
                    + (f", output stride {m['output_stride']}" if m.get("output_stride") and not mixed else "")
                    + ("" if mixed else ", ")
                    + (f"init {m['init']}, " if len(inits) == 1 else "")
                    + f"{m['head']}, "
                    f"{m['size']} px"
                    + (f", {m['slice_input']} slices" if m.get("slice_input", "tile") != "tile" else "")
                    + ("" if mixed else f", {r['train']['steps']} steps")
                    + (f", {_ensemble_label(r)}" if r.get("ensemble") else "")
                    + (f", {precision} training" if precision not in ("auto", "32-true", "32") else "")
                    + (f", p > {_fg_threshold(r):g}" if _fg_threshold(r) != 0.5 else "")
                    + (f", {r['tta']} TTA" if r.get("tta", "none") != "none" else "")
                    + (f", {_finetune_label(r['finetune'])}" if (r.get("finetune") or {}).get("steps") else "")
                    + (f", intensity prior {r['intensity_prior']:g}" if r.get("intensity_prior") else "")
                )
                values = [100 * sc["dice"][o] for o in cols] + [100 * sc[k]["mean"] for k in ("precision", "recall")]
                lines.append(_row(label, values))
            if len(recs) > 1:
                cells = [
                    _mean_std([100 * _scores(r, step)["dice"][o] for r in recs]) for o in cols
                ] + [_mean_std([100 * _scores(r, step)[k]["mean"] for r in recs]) for k in ("precision", "recall")]
                folds = ",".join(str(r["fold"]) for r in recs)
                lines.append(f"| **ours, folds {folds}: mean ± std{suffix}** | " + " | ".join(cells) + " |")
        for label, published in PUBLISHED.get((dataset, setting), []) if tuple(organs) == ORGANS else []:
            lines.append(_row(f"{label}, published 5-fold (no post-processing)", published) + " | |")
        lines += kshot_table(recs)
        names = sorted({name for r in recs for name in _config_names(r)})
        commits = sorted({str(r.get("commit")) for r in recs})
        lines += ["", f"Config: {'; '.join(names)}; commit {', '.join(commits)}."]
        lines += ["", "| fold | steps | train min | steps/s | eval scans/s | total min | peak RSS MiB |"]
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for r in recs:
            t, e, mem = r["train"], r["eval"], r["peak_memory_mb"]
            resumed = f" (resumed at {t['steps'] - t['steps_run']})" if t.get("resumed_from") else ""
            speed = "n/a" if t.get("steps_run") == 0 else f"{t['steps_per_s']:.3f}"  # resumed when already done
            rss = max(mem["cpu_rss_self_mb"], mem["cpu_rss_children_mb"])
            gpu = f" (GPU {mem['cuda_max_allocated_mb']:.0f})" if "cuda_max_allocated_mb" in mem else ""
            steps = " + ".join(str(e["steps"]) for e in r["ensemble"]) if _mixed_ensemble(r) else t["steps"]
            lines.append(
                f"| {r['fold']} | {steps}{resumed}{' (time limit)' if t['stopped_by_time_limit'] else ''} | "
                f"{_train_seconds(t) / 60:.1f} | {speed} | {e['scans_per_s']:.3f} | "
                f"{r['total_wall_seconds'] / 60:.1f} | {rss:.0f}{gpu} |"
            )
        ens = [r for r in recs if r.get("ensemble")]
        if ens:  # every member's own 1-shot mean beside the ensemble's, so the report shows what ensembling gave
            # one column per run given to --ensemble (in that order), named by its seed: two runs may share a seed
            runs = ens[0]["ensemble"]
            mixed = _mixed_ensemble(ens[0])
            head = [(_member_kind(e) + ", " if mixed else "") + f"seed {e['seed']}" for e in runs]
            lines += [
                "", "Ensemble members (1-shot mean Dice of each model alone, and of the ensemble; train min above adds "
                "the members' training up):", "",
                "| fold | " + " | ".join(head) + " | members' mean | ensemble | gain |",
                "|---:|" + "---:|" * (len(runs) + 3),
            ]
            for r in ens:
                alone = [100 * e["dice_mean"] for e in r["ensemble"]]
                mean_alone = sum(alone) / len(alone)
                lines.append(
                    f"| {r['fold']} | " + " | ".join(f"{a:.2f}" for a in alone)
                    + f" | {mean_alone:.2f} | {100 * r['dice']['mean']:.2f} | {100 * r['dice']['mean'] - mean_alone:+.2f} |"
                )
            other = dict.fromkeys(  # members scored alone with other inference settings than the ensemble's
                f"{head[i]}: {k} {v}" for r in ens for i, e in enumerate(r["ensemble"])
                for k, v in (e.get("inference") or {}).items() if v != _inference_of(r).get(k)
            )
            if other:
                lines += ["", "Each model alone is scored as its own run was, here with other inference settings than "
                          f"the ensemble's ({', '.join(f'{k} {v}' for k, v in _inference_of(ens[0]).items())}): "
                          + "; ".join(other) + "."]
        if any(r["train"].get("genesis_seconds") for r in recs):
            lines += ["", "Train min includes the Models Genesis pretraining on the fold's training scans "
                      "(`--genesis-steps`)."]
        if any(r["train"].get("resumed_from") for r in recs):
            lines += ["", "A resumed fold's train min and steps/s count the steps of its last run only (`--resume`)."]
        lines.append("")
    hosts = list(dict.fromkeys(_host_line(r["host"]) for r in records if r.get("host")))
    if hosts:  # the machines the folds trained on (merged results can come from several)
        loads = "; ".join(f"fold {r['fold']} {r['load_average_end']}" for r in records if r.get("load_average_end"))
        lines += [f"Host: {'; '.join(hosts)}" + (f"; load average at each fold's end: {loads}" if loads else "") + ".", ""]
    else:  # records from before 2026-12-04 (not necessarily this machine's)
        lines += ["Host: not recorded.", ""]
    return "\n".join(lines)


_PER_FOLD_KEYS = ("data.protocol.fold", "data.protocol.setting", "data.protocol.organs", "out_dir", "train.steps")


def host() -> dict[str, Any]:
    """The machine a fold trained on: node name, CPU count and :func:`fewshot.provenance.environment`'s
    CPU and GPU fields (the report's Host line reads these, so merged results name their own machines)."""
    env = environment()
    return {"node": platform.node(), "cpus": os.cpu_count(), **{k: env[k] for k in ("cpu", "cpu_capability", "cpu_bf16", "gpu")}}


def _host_line(h: dict[str, Any]) -> str:
    bf16 = "hardware bf16" if h.get("cpu_bf16") == "native" else "no hardware bf16"
    gpu = f", GPU {h['gpu']}" if h.get("gpu") else ""
    return f"{h['node']}, {h['cpus']} CPUs ({h.get('cpu') or 'unknown CPU'}, {h.get('cpu_capability')}, {bf16}){gpu}"


def _fold_dir_name(dataset: str, setting: int, fold: int, organs: Sequence[str] | None) -> str:
    """The folder (and ``--jobs`` log) name of one training run: ``<dataset>_setting<s>_fold<f>[_<organs>]``."""
    return f"{dataset}_setting{setting}_fold{fold}{'_' + '+'.join(organs) if organs else ''}"


@dataclass(frozen=True)
class FoldTask:
    """One :func:`run_fold` call of a benchmark run: a fold, or one setting-2 label group of a fold."""

    label: str  # what progress lines call it
    fold_key: tuple[Any, ...]  # (dataset, fold[, member]): the tasks sharing it are joined into one fold record
    groups: int  # how many tasks share fold_key
    config_name: str  # the packaged config name or YAML path the volumes are loaded with
    kwargs: dict[str, Any]  # run_fold's arguments except ``volumes``
    prefix: str = ""  # of the run's log name (``member<i>_`` for --member runs, which share fold names)

    @property
    def name(self) -> str:
        kw = self.kwargs
        return self.prefix + _fold_dir_name(kw["dataset"], kw["setting"], kw["fold"], kw.get("organs"))


def group_tasks(
    groups: Sequence[tuple[str, ...]],
    before: dict[str, Any] | None,
    kwargs: dict[str, Any],
    what: str,
    suffix: str,
    fold_key: tuple[Any, ...],
    config_name: str,
    prefix: str = "",
) -> list[FoldTask]:
    """One fold's training runs: one task for setting 1, one per label group in setting 2 (each testing its own
    organs, with its part of ``before``, the fold's earlier record for ``--reuse``). ``kwargs``: the rest of
    :func:`run_fold`'s arguments; ``what`` + ``suffix`` name the task in progress lines, the group between them."""
    tasks = []
    for gi, organs in enumerate(groups):
        part = f" ({'+'.join(organs)}: training {gi + 1} of {len(groups)})" if len(groups) > 1 else ""
        run = {
            **kwargs,
            "previous": before if len(groups) == 1 else _group_record(before, organs),
            "organs": organs if len(groups) > 1 else None,
        }
        tasks.append(FoldTask(f"{what}{part}{suffix}", fold_key, len(groups), config_name, run, prefix=prefix))
    return tasks


_VOLUMES: dict[str, list[Any]] = {}


def _volumes_for(task: FoldTask) -> list[Any]:
    """The volumes ``task`` trains and is tested on, loaded once per process (one dataset kept at a time)."""
    from fewshot.config import load_config
    from fewshot.configs import config_path
    from fewshot.pipeline import load_volumes

    kw = task.kwargs
    key = repr((task.config_name, sorted(kw["overrides"].items()), kw["setting"]))
    if key not in _VOLUMES:
        cfg = load_config(
            config_path(task.config_name), {**kw["overrides"], "data.protocol.setting": kw["setting"]}
        )
        _VOLUMES.clear()
        _VOLUMES[key] = load_volumes(cfg.data)
    return _VOLUMES[key]


def _run_in_worker(task: FoldTask, threads: int, log: Path) -> dict[str, Any]:
    """A ``--jobs`` worker process runs ``task`` with ``threads`` torch threads, all its output going to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    torch.set_num_threads(threads)
    from fewshot.cli import quiet_logs

    quiet_logs()
    print(f"== {task.label}, {threads} torch thread(s), load {_load()}", flush=True)
    record = run_fold(**task.kwargs, volumes=_volumes_for(task))
    print(f"   {_summary(record)}", flush=True)
    return record


def _summary(record: dict[str, Any]) -> str:
    """One line: a fold record's Dice per organ, steps, steps/s, wall minutes and the load average."""
    d, tr = record["dice"], record["train"]
    return (
        "Dice " + " ".join(f"{o} {100 * v:.2f}" for o, v in d.items())
        + f" | steps {tr['steps']} ({tr['steps_per_s']:.3f}/s) | total {record['total_wall_seconds'] / 60:.1f} min"
        + f" | load {_load()}"
    )


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (its last 4 KiB; progress bars may end lines with carriage returns)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1] if lines else ""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_tasks(
    tasks: Sequence[FoldTask],
    *,
    jobs: int,
    out: Path,
    on_fold: Any,
    threads: int | None = None,
    poll_s: float = 60.0,
) -> None:
    """Runs ``tasks`` and calls ``on_fold(group_records)`` once all tasks of a fold are done (records in task order).

    ``jobs == 1``: one after another in this process, output to the terminal. ``jobs > 1``: up to ``jobs`` tasks at
    once, each in a spawned worker process with ``threads`` torch threads (default: CPU cores // jobs) and its output
    in ``out/logs/<run>.log``; every ``poll_s`` seconds the last line of each log that changed is printed. A task
    that fails stops the run: tasks not started are cancelled, running ones finish (their folds are reported), then
    a ``RuntimeError`` names the failed run and its log.
    """
    parts: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}

    def finished(i: int, record: dict[str, Any]) -> None:
        task = tasks[i]
        got = parts.setdefault(task.fold_key, {})
        got[i] = record
        if len(got) == task.groups:
            on_fold([got[j] for j in sorted(got)])
            del parts[task.fold_key]

    if jobs == 1:
        for i, task in enumerate(tasks):
            print(f"== {task.label}, load {_load()}", flush=True)
            finished(i, run_fold(**task.kwargs, volumes=_volumes_for(task)))
        return

    import concurrent.futures as cf
    import multiprocessing

    threads = threads or max(1, _cores() // jobs)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failure: tuple[int, Exception] | None = None
    shown: dict[int, str] = {}
    here = str(Path(__file__).resolve().parent)
    path_added = here not in sys.path
    if path_added:  # spawned workers import this script by its module name when it was imported, not run
        sys.path.insert(0, here)
    try:
        with cf.ProcessPoolExecutor(
            min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures: dict[cf.Future[dict[str, Any]], int] = {}
            for i, task in enumerate(tasks):
                log = logs / f"{task.name}.log"
                log.write_text("")
                futures[pool.submit(_run_in_worker, task, threads, log)] = i
                print(f"== {task.label}: {threads} torch thread(s), log {log}", flush=True)
            waiting = set(futures)
            while waiting:
                done, waiting = cf.wait(waiting, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    i = futures[future]
                    if future.cancelled():
                        continue
                    try:
                        record = future.result()
                    except Exception as err:  # re-raised below, once the running tasks have finished
                        if failure is None:
                            failure = (i, err)
                            for other in waiting:
                                other.cancel()
                            print(
                                f"   {tasks[i].label} failed: {err!r}; waiting for the running tasks", flush=True
                            )
                        continue
                    finished(i, record)
                for future in waiting:
                    i = futures[future]
                    line = _last_line(logs / f"{tasks[i].name}.log")
                    if future.running() and line and line != shown.get(i):
                        shown[i] = line
                        print(f"   [{tasks[i].name}] {line}", flush=True)
    finally:
        if path_added:
            sys.path.remove(here)
    if failure is not None:
        bad, error = failure
        log = logs / f"{tasks[bad].name}.log"
        raise RuntimeError(f"{tasks[bad].label} failed: {error!r}; its log: {log}") from error


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", choices=[*DATASETS, "both", "phantom-ct"], default="chaos-mr",
        help="phantom-ct: the built-in synthetic phantom (config demo_phantom), a quick check of the benchmark itself",
    )
    p.add_argument("--budget", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--setting", type=int, choices=[1, 2], default=1)
    p.add_argument("--folds", default="0", help="comma list of folds, e.g. 0,1,2,3,4")
    p.add_argument("--out", default="runs/bench_accuracy", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=None,
        help="stop training this many minutes after the fold started (evaluation not included)",
    )
    p.add_argument("--config", default=None, help="packaged config name or YAML path instead of the budget's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override (with --ensemble: inference settings only, e.g. model.fg_threshold)")
    p.add_argument(
        "--genesis-steps", type=int, default=0, help="Models Genesis pretraining steps first (init genesis)"
    )
    p.add_argument("--eval-batch-size", type=int, default=16, help="query slices per forward pass")
    p.add_argument(
        "--shots", default="1",
        help="comma list of support slices per chunk to evaluate every checkpoint with, e.g. 1,3,5 "
        "(k > 1 fused as the recipe's model.head.shot_fusion; a k-shot table joins the report)",
    )
    p.add_argument(
        "--resolution",
        choices=["native", "model"],
        default="native",
        help="score against the native 256-px labels (headline) or the labels resized to data.size",
    )
    p.add_argument(
        "--reuse", action="store_true",
        help="evaluate, instead of retraining, every fold whose checkpoint in --out (from its results.json) was "
        "trained with the same config up to inference-only keys (model.fg_threshold, model.tta, model.finetune; "
        "model.head.shot_fusion for 1-shot training)",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue each fold's training from its last.ckpt in --out when there is one (an interrupted run, or "
        "one trained for fewer steps; the same config but train.steps), instead of training from step 0",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many fold runs (folds, or setting 2's label groups) at once, each in its own process "
        "with CPU cores / JOBS torch threads and its log in OUT/logs/ (on 2 CPU cores, --jobs 2 trained "
        "1.13x as many steps per second as --jobs 1; use --set train.num_workers=1; the thread count changes Dice)",
    )
    p.add_argument(
        "--merge", nargs="+", default=None, metavar="RESULTS_JSON",
        help="no training: combine the fold records of earlier runs' results.json files into one table in --out",
    )
    p.add_argument(
        "--ensemble", nargs="+", default=None, metavar="RESULTS_JSON",
        help="no training: score each fold trained by all of these earlier runs (e.g. the recipe with --set seed=0 "
        "and seed=1) as one ensemble (mean foreground probability) into --out; train min adds the members' up",
    )
    p.add_argument(
        "--member", action="append", nargs="+", default=None, metavar="SPEC",
        help="CONFIG [KEY=VALUE ...], twice or more: train each member (a config with its own overrides, e.g. "
        "--member cpu_btcv_30min seed=1) on every fold into OUT/member<i>/, then score each fold's members as one "
        "ensemble into OUT (--set applies to every member; in setting 2 each member trains one model per label "
        f"group); {GENESIS_KEY}=N pretrains that member with N Models Genesis steps first (default --genesis-steps)",
    )
    args = p.parse_args(argv)
    from fewshot.cli import comma_list, quiet_logs

    quiet_logs()

    from episodes.atomic import read_json
    from fewshot.config import load_config, parse_overrides
    from fewshot.configs import config_path

    if args.jobs < 1:
        p.error(f"--jobs: expected a positive integer, got {args.jobs}")
    folds = comma_list(args.folds, int, option="--folds", minimum=0)
    shots = sorted(set(comma_list(args.shots, int, option="--shots", minimum=1)))
    datasets = list(DATASETS) if args.dataset == "both" else [args.dataset]
    if args.config is not None and len(datasets) > 1:
        p.error("--config applies to one dataset; pick --dataset chaos-mr or btcv-ct")
    overrides = parse_overrides(args.set)
    out = Path(args.out)  # made by its writers (write_report, the fold and log folders), after the inputs are checked
    run_argv = sys.argv[1:] if argv is None else list(argv)
    records: list[dict[str, Any]] = []

    def write_report() -> str:
        return write_results(out, records, run_argv)

    if args.merge:
        for path in args.merge:
            records += read_json(path, "bench_accuracy results")["folds"]
        keys = [(r["dataset"], r["setting"], r["fold"]) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError(f"--merge: a (dataset, setting, fold) appears twice: {sorted(keys)}")
        records.sort(key=lambda r: (r["dataset"], r["setting"], r["fold"]))
        print(write_report())
        return 0
    def ensemble_runs(runs: list[list[dict[str, Any]]], what: Sequence[str]) -> int:
        """Score each (dataset, setting, fold) that every run holds as one ensemble of the runs' models."""
        by_key = [{(r["dataset"], r["setting"], r["fold"]): r for r in run} for run in runs]
        common_keys = sorted(set.intersection(*(set(run) for run in by_key)))
        if not common_keys:
            raise ValueError(f"--ensemble: no (dataset, setting, fold) is in all of {list(what)}")
        from fewshot.pipeline import load_volumes

        loaded_volumes: dict[str, list[Any]] = {}  # one load per data source, not per fold
        for fold_key in common_keys:
            members = [run[fold_key] for run in by_key]
            data = load_config(members[0]["config"]).data
            source = repr((data.dataset, data.data_dir, sorted(dict(data.loader_args).items())))
            if source not in loaded_volumes:
                loaded_volumes[source] = load_volumes(data)
            volumes = loaded_volumes[source]
            print(f"== {fold_key[0]} setting {fold_key[1]} fold {fold_key[2]}: ensemble of {len(members)}", flush=True)
            rec = ensemble_fold(members, out, volumes=volumes, shots=shots, eval_batch_size=args.eval_batch_size,
                                resolution=args.resolution, overrides=overrides if args.ensemble else None)
            records.append(rec)
            print(f"   {rec['dataset']} fold {rec['fold']}: {_summary(rec)}", flush=True)
            write_report()
        print(write_report())
        return 0

    if args.ensemble:
        if len(args.ensemble) < 2:
            p.error("--ensemble: give the results.json of at least 2 runs")
        trained = sorted(k for k in overrides if not any(k == i or k.startswith(i + ".") for i in INFERENCE_KEYS))
        if trained:
            p.error(f"--ensemble scores trained models: --set takes inference settings only ({', '.join(INFERENCE_KEYS)}), "
                    f"got {', '.join(trained)}")
        return ensemble_runs(
            [read_json(path, "bench_accuracy results")["folds"] for path in args.ensemble], args.ensemble
        )
    if args.member:
        if len(args.member) < 2:
            p.error("--member: give at least 2 members (one model is a plain run)")
        if args.config is not None or len(datasets) > 1:
            p.error("--member: one --dataset, and each member's config in its --member (not --config)")
        return train_members(args, datasets[0], folds, shots, overrides, out, run_argv, ensemble_runs)
    earlier = earlier_records(out) if args.reuse else {}  # the folds a plain run may evaluate instead of train
    tasks: list[FoldTask] = []
    common = dict(
        budget=args.budget, setting=args.setting, out=out, steps=args.steps, time_limit_min=args.time_limit_min,
        overrides=overrides, config=args.config, genesis_steps=args.genesis_steps,
        eval_batch_size=args.eval_batch_size, resolution=args.resolution, shots=shots, resume=args.resume,
    )
    for dataset in datasets:
        name = args.config or _config_name(dataset, args.budget, args.setting)
        base = load_config(config_path(name), {**overrides, "data.protocol.setting": args.setting})
        groups = setting_groups(base)
        for fold in folds:
            tasks += group_tasks(
                groups, earlier.get((dataset, args.setting, fold)), {**common, "dataset": dataset, "fold": fold},
                f"{dataset} setting {args.setting} fold {fold}", f" ({name})", (dataset, fold), name,
            )

    def fold_done(group_recs: list[dict[str, Any]]) -> None:
        rec = combine_groups(group_recs)
        rec["load_average_end"] = _load()
        records.append(rec)
        records.sort(key=lambda r: (datasets.index(r["dataset"]), folds.index(r["fold"])))
        print(f"   {rec['dataset']} fold {rec['fold']}: {_summary(rec)}", flush=True)
        write_report()  # after every fold, so an interrupted run keeps the folds it finished

    run_tasks(tasks, jobs=args.jobs, out=out, on_fold=fold_done)
    print(write_report())
    return 0


def write_results(out: Path, records: Sequence[dict[str, Any]], argv: Sequence[str]) -> str:
    """Write ``out/results.md`` (the :func:`markdown_report` of ``records``, returned) and ``out/results.json``
    (``argv`` and the fold records)."""
    from episodes.atomic import atomic_write_json

    report = markdown_report(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report)
    atomic_write_json(out / "results.json", {"argv": list(argv), "folds": list(records)})
    return report


def earlier_records(out: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The fold records of an earlier run's ``out/results.json`` by (dataset, setting, fold); none without one."""
    from episodes.atomic import read_json

    if not (out / "results.json").is_file():
        return {}
    folds = read_json(out / "results.json", "bench_accuracy results")["folds"]
    return {(r["dataset"], r["setting"], r["fold"]): r for r in folds}


def train_members(
    args: argparse.Namespace,
    dataset: str,
    folds: Sequence[int],
    shots: Sequence[int],
    overrides: dict[str, Any],
    out: Path,
    argv: Sequence[str],
    ensemble_runs: Callable[[list[list[dict[str, Any]]], Sequence[str]], int],
) -> int:
    """``--member``: train every member on every fold through one job queue (member ``i`` into
    ``out/member<i>/``, with its own ``results.json``), then score each fold's members as one ensemble."""
    from fewshot.config import load_config, parse_overrides
    from fewshot.configs import config_path

    members = []
    for i, (name, *sets) in enumerate(args.member):
        genesis, sets = member_genesis_steps(sets, args.genesis_steps)
        over = {**overrides, **parse_overrides(sets)}
        # a bad member fails before training
        groups = setting_groups(load_config(config_path(name), {**over, "data.protocol.setting": args.setting}))
        member_out = out / f"member{i}"
        members.append(
            _Member(name, over, genesis, member_out, earlier_records(member_out) if args.reuse else {}, groups)
        )
    tasks: list[FoldTask] = []
    setting = args.setting
    for fold in folds:  # fold by fold, so the first folds' ensembles can be read while later ones train
        for i, m in enumerate(members):
            sets = [f"{k}={v}" for k, v in m.overrides.items()]
            if m.genesis_steps:
                sets.append(f"{GENESIS_KEY}={m.genesis_steps}")
            kwargs = dict(
                dataset=dataset, budget=args.budget, setting=setting, fold=fold, out=m.out, steps=args.steps,
                time_limit_min=args.time_limit_min, overrides=m.overrides, config=m.config,
                genesis_steps=m.genesis_steps, eval_batch_size=args.eval_batch_size, resolution=args.resolution,
                shots=shots, resume=args.resume,
            )
            tasks += group_tasks(
                m.groups, m.earlier.get((dataset, setting, fold)), kwargs, f"{dataset} setting {setting} fold {fold}",
                f", member {i} ({' '.join([m.config, *sets])})", (dataset, fold, i), m.config, prefix=f"member{i}_",
            )
    done: list[list[dict[str, Any]]] = [[] for _ in members]

    def member_done(group_recs: list[dict[str, Any]]) -> None:
        rec = combine_groups(group_recs)
        rec["load_average_end"] = _load()
        i = next(j for j, m in enumerate(members) if Path(rec["out_dir"]).is_relative_to(m.out))
        done[i] = sorted([*done[i], rec], key=lambda r: folds.index(r["fold"]))
        print(f"   member {i} fold {rec['fold']}: {_summary(rec)}", flush=True)
        write_results(members[i].out, done[i], argv)

    run_tasks(tasks, jobs=args.jobs, out=out, on_fold=member_done)
    return ensemble_runs(done, [str(m.out) for m in members])


class _Member(NamedTuple):
    """One ``--member``: its config, overrides, Models Genesis steps, output folder, earlier fold records and the
    label groups it trains a model for (:func:`setting_groups`)."""

    config: str
    overrides: dict[str, Any]
    genesis_steps: int
    out: Path
    earlier: dict[tuple[str, int, int], dict[str, Any]]
    groups: list[tuple[str, ...]]


#: The one ``--member`` key that is not a config override: that member's Models Genesis pretraining steps.
GENESIS_KEY = "genesis_steps"


def member_genesis_steps(sets: Sequence[str], default: int) -> tuple[int, list[str]]:
    """Split a ``--member``'s ``KEY=VALUE`` list into its Models Genesis steps (``genesis_steps=N``; default:
    ``--genesis-steps``) and the config overrides."""
    steps, rest = default, []
    for item in sets:
        key, _, value = item.partition("=")
        if key.strip() != GENESIS_KEY:
            rest.append(item)
            continue
        try:
            steps = int(value)
        except ValueError:
            raise ValueError(f"--member {GENESIS_KEY}={value!r}: give a whole number of steps") from None
        if steps < 0:
            raise ValueError(f"--member {GENESIS_KEY}={steps}: give 0 (none) or more steps")
    return steps, rest


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` for the command line: a user error (bad path, bad ``--set`` value) prints one line, exit 2."""
    from fewshot.cli import run_reporting_user_errors

    return run_reporting_user_errors("bench_accuracy.py", lambda: main(argv))


if __name__ == "__main__":
    raise SystemExit(cli())
