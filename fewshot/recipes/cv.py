"""Cross-validation of a recipe: fit it on each fold's training scans, score each fold's model, one report.

``cross_validate(recipe, out, folds=(0, 1, 2, 3, 4))`` plans every member run of every fold
(``out/fold<f>/members/<run>``), trains them through one queue (``jobs`` side by side, the recipe's threads per
member; finished runs are skipped and interrupted ones resume), and as soon as a fold's runs are finished assembles
that fold's trained model (``out/fold<f>/``, a :class:`~fewshot.recipes.bundle.Bundle`) and scores it with the
1-shot protocol and every requested k (``out/fold<f>/eval``, ``eval_<k>shot``). Each fold's
:class:`~fewshot.recipes.records.FoldRecord` is written to ``out/fold<f>/record.json``; ``out/results.json`` and
``out/results.md`` (:func:`~fewshot.recipes.records.markdown_report`) are rewritten after every fold, so an
interrupted run keeps what it finished. A rerun reuses the records of folds whose model did not change.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_json, atomic_write_text, read_json
from episodes.protocol.folds import TooFewSupportSlices
from fewshot.recipes.bundle import Bundle
from fewshot.recipes.evaluate import bundle_protocol, evaluate_bundle
from fewshot.recipes.fit import assemble, claim_output, default_jobs, modality_check, train_runs
from fewshot.recipes.records import FoldRecord, KShot, Scores, markdown_report
from fewshot.recipes.runs import DataSource, MemberRun, plan_runs, volumes_for
from fewshot.recipes.spec import Recipe

__all__ = ["CVResult", "cross_validate", "host", "read_records", "score_fold"]


@dataclass(frozen=True)
class CVResult:
    """The fold records (fold order) and the report's text."""

    records: tuple[FoldRecord, ...]
    report: str
    out: Path


def host() -> dict[str, Any]:
    """The machine: node name, CPU count, and :func:`fewshot.provenance.environment`'s CPU and GPU fields."""
    from fewshot.provenance import environment

    env = environment()
    return {"node": platform.node(), "cpus": os.cpu_count(),
            **{k: env.get(k) for k in ("cpu", "cpu_capability", "cpu_bf16", "gpu")}}


def _scores(ev: Any) -> dict[str, Scores]:
    return {step: Scores.of(sc) for step, sc in ev.extras.get("postprocess", {}).items()}


def score_fold(
    bundle: Bundle,
    out: Path,
    *,
    volumes: Sequence[Any],
    shots: Sequence[int] = (1,),
    batch_size: int = 16,
) -> tuple[Any, dict[int, KShot], float]:
    """Score a fold's model: the 1-shot evaluation into ``out/eval`` and every k > 1 into ``out/eval_<k>shot``
    (an organ with fewer than k x chunks support slices: chunks share slices, and the k-shot record says so)."""
    t0 = time.perf_counter()
    base = bundle_protocol(bundle)

    def at(k: int, share: bool = False) -> Any:
        return evaluate_bundle(
            bundle, protocol=dataclasses.replace(base, shots=k, share_support_slices=share), volumes=volumes,
            out=out / ("eval" if k == 1 else f"eval_{k}shot"), batch_size=batch_size, progress=True,
            resolution="native",
        )

    ev = at(1)
    seconds = time.perf_counter() - t0
    kshot: dict[int, KShot] = {}
    for k in sorted(set(shots) - {1}):
        try:
            kshot[k] = KShot(scores=_scores(at(k)))
        except TooFewSupportSlices as e:
            kshot[k] = KShot(scores=_scores(at(k, share=True)), shared=e.reason) if e.shareable else KShot(error=e.reason)
    return ev, kshot, seconds


def cross_validate(
    recipe: Recipe,
    out: str | Path,
    *,
    data: DataSource | None = None,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    setting: int = 1,
    organs: Sequence[str] | None = None,
    shots: Sequence[int] = (1,),
    overrides: Mapping[str, Any] | None = None,
    jobs: int | None = None,
    batch_size: int = 16,
    poll_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> CVResult:
    """Fit and score ``recipe`` on ``folds`` into ``out`` (see the module docstring)."""
    out = Path(out)
    data = data or DataSource()
    if not folds or len(set(folds)) != len(folds):
        raise ValueError(f"folds must be distinct, got {list(folds)}")
    plans = {f: plan_runs(recipe, out / f"fold{f}", data=data, fold=f, setting=setting, organs=organs,
                          overrides=overrides, label=f"fold{f}/") for f in folds}
    first = plans[folds[0]][0]
    volumes = volumes_for(first.experiment())
    modality_check(recipe, first, volumes)
    claim_output(out, "cv")
    all_runs = [r for f in folds for r in plans[f]]
    n_jobs = jobs if jobs is not None else default_jobs(recipe, len(all_runs))
    records: dict[int, FoldRecord] = {}
    results: dict[int, dict[str, dict[str, Any]]] = {f: {} for f in folds}
    key = (recipe.name, setting)

    def report() -> str:
        text = markdown_report([records[f] for f in folds if f in records],
                               recipe_line=f"Recipe {recipe.name}: {recipe.description}")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.md", text)
        atomic_write_json(out / "results.json", {
            "recipe": recipe.to_dict(), "setting": setting, "shots": list(shots),
            "folds": [records[f].to_dict() for f in folds if f in records],
        })
        return text

    def fold_done(fold: int) -> None:
        runs = plans[fold]
        fold_dir = out / f"fold{fold}"
        bundle = assemble(fold_dir, recipe, runs, results[fold], volumes, setting=setting, fold=fold)
        previous = fold_dir / "record.json"
        if previous.is_file():
            old = read_json(previous, "fold record")
            same = old.get("manifest_members") == [m.sha256 for m in bundle.members]
            if same and set(shots) - {1} <= {int(k) for k in old["record"].get("kshot", {})} and old.get("key") == list(key):
                records[fold] = FoldRecord.from_dict(old["record"])
                say(f"== fold {fold}: scored before ({previous})")
                report()
                return
        say(f"== fold {fold}: scoring {bundle.describe()}")
        ev, kshot, seconds = score_fold(bundle, fold_dir, volumes=volumes, shots=shots, batch_size=batch_size)
        lanes = [m.train_seconds + m.genesis_seconds for m in bundle.members]  # Genesis included
        rec = FoldRecord(
            dataset=bundle.dataset, setting=setting, fold=fold, recipe=recipe.name, scores=_scores(ev),
            headline=bundle.inference.postprocess, kshot=kshot,
            members=tuple({"name": m.name, "organs": list(m.organs), "steps": m.steps, "seed": m.seed,
                           "genesis_steps": m.genesis_steps, "pretrain_objective": m.pretrain_objective,
                           "sha256": m.sha256,
                           "minutes": lane / 60} for m, lane in zip(bundle.members, lanes)),
            train_seconds=sum(lanes), lane_seconds=max(lanes), eval_seconds=seconds,
            model=str(fold_dir), commit=str(bundle.manifest.get("commit")), host=host(),
        )
        records[fold] = rec
        atomic_write_json(previous, {"key": list(key), "manifest_members": [m.sha256 for m in bundle.members],
                                     "record": rec.to_dict()})
        mean = 100 * rec.dice["mean"]
        say(f"   fold {fold}: mean Dice {mean:.2f} (" + ", ".join(
            f"{o} {100 * v:.2f}" for o, v in rec.dice.items() if o != "mean") + ")")
        report()

    def run_done(run: MemberRun, result: dict[str, Any]) -> None:
        fold = int(run.fold)  # type: ignore[arg-type]
        results[fold][run.name] = result
        if len(results[fold]) == len(plans[fold]):
            fold_done(fold)

    train_runs(all_runs, jobs=n_jobs, logs=out / "logs", on_done=run_done,
               volumes=volumes if n_jobs == 1 else None, poll_s=poll_s, say=say)
    text = report()
    return CVResult(tuple(records[f] for f in folds), text, out)


def read_records(out: str | Path) -> list[FoldRecord]:
    """The fold records of an earlier ``cross_validate`` into ``out``."""
    data = read_json(Path(out) / "results.json", "cross-validation results")
    return [FoldRecord.from_dict(r) for r in data["folds"]]

