"""``fit``: train a recipe on any dataset the loaders read, into one trained-model folder (a bundle).

1. :func:`~fewshot.recipes.runs.plan_runs` resolves every member run's config (a bad option fails here);
2. the runs train through one queue (:func:`~fewshot.recipes.jobs.run_jobs`): ``jobs`` at a time, each with the
   recipe's torch thread count; finished runs are skipped and interrupted ones resume, so rerunning the same
   command continues where it stopped;
3. once every run is finished, :func:`~fewshot.recipes.bundle.write_bundle` writes the manifest.

``member=I`` trains only run ``I`` (of :func:`plan_runs`' list) and writes no manifest: one array task of a
cluster job; the same command without ``member`` then finds every run finished and assembles the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.recipes.bundle import Bundle, data_fingerprint, write_bundle
from fewshot.recipes.jobs import Job, available_cores, run_jobs
from fewshot.recipes.runs import (
    DataSource,
    MemberRun,
    finished_result,
    is_finished,
    plan_runs,
    train_run,
    volumes_for,
)
from fewshot.recipes.spec import Recipe

__all__ = ["FitResult", "assemble", "claim_output", "default_jobs", "fit", "modality_check", "train_runs", "training_volumes"]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: the runs, which of them trained now, and the bundle (``None`` with ``member``)."""

    out: Path
    runs: tuple[MemberRun, ...]
    trained: tuple[str, ...]
    bundle: Bundle | None
    seconds: float


def default_jobs(recipe: Recipe, n_runs: int) -> int:
    """Runs side by side: as many as the cores hold at the recipe's threads per member (at most ``n_runs``)."""
    per = recipe.threads_per_member or available_cores()
    return max(1, min(n_runs, available_cores() // per))


def train_runs(
    runs: Sequence[MemberRun],
    *,
    jobs: int,
    logs: Path,
    on_done: Callable[[MemberRun, dict[str, Any]], None],
    volumes: Sequence[Any] | None = None,
    poll_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Train every unfinished run of ``runs`` (``jobs`` at a time); ``on_done(run, result)`` for each run, the
    finished ones included (their result read back without training). Returns the names of the runs trained."""
    todo = []
    for run in runs:
        if is_finished(run):
            say(f"== {run.label}{run.name}: finished ({run.checkpoint})")
            on_done(run, finished_result(run))
        else:
            todo.append(run)
    if not todo:
        return []
    job_list = [
        Job(name=f"{run.label}{run.name}", fn=train_run, args=(run,) if jobs > 1 else (run, volumes),
            log=logs / f"{(run.label + run.name).replace('/', '_')}.log",
            threads=run.threads)
        for run in todo
    ]
    run_jobs(job_list, parallel=jobs, on_done=lambda i, result: on_done(todo[i], result), poll_s=poll_s, say=say)
    return [run.name for run in todo]


def fit(
    recipe: Recipe,
    out: str | Path,
    *,
    data: DataSource | None = None,
    fold: int | None = None,
    setting: int = 1,
    organs: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    jobs: int | None = None,
    member: int | None = None,
    poll_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> FitResult:
    """Train ``recipe`` into ``out`` (see the module docstring) and return the trained model.

    Args:
        recipe: a :class:`~fewshot.recipes.spec.Recipe` (:func:`~fewshot.recipes.spec.load_recipe`).
        out: the trained-model folder.
        data: the dataset, folder and loader arguments (default: the recipe's own data).
        fold: train on fold ``0..4``'s training scans, or on every scan (``None``).
        setting: 1, or 2 (one model per label group, each trained without its group's slices).
        organs: the organs the model is for (default: the members' config's).
        overrides: dotted config keys for every member (e.g. ``{"train.steps": 500}``).
        jobs: runs trained side by side (default :func:`default_jobs`).
        member: train only this run (an index into the planned runs) and write no manifest.
    """
    t0 = time.perf_counter()
    out = Path(out)
    data = data or DataSource()
    runs = plan_runs(recipe, out, data=data, fold=fold, setting=setting, organs=organs, overrides=overrides)
    if member is not None:
        if not 0 <= member < len(runs):
            raise ValueError(f"--member {member}: this recipe has runs 0..{len(runs) - 1} "
                             f"({', '.join(r.name for r in runs)})")
        runs_to_train = [runs[member]]
    else:
        runs_to_train = runs
    n_jobs = jobs if jobs is not None else default_jobs(recipe, len(runs_to_train))
    if n_jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {n_jobs}")
    volumes = volumes_for(runs[0].experiment())
    modality_check(recipe, runs[0], volumes)
    claim_output(out, "fit")  # every input checked: now the folder may be made
    results: dict[str, dict[str, Any]] = {}

    def done(run: MemberRun, result: dict[str, Any]) -> None:
        results[run.name] = result
        minutes = (result.get("train_wall_seconds", 0.0) + result.get("genesis_seconds", 0.0)) / 60
        say(f"   {run.name}: {result['steps']} steps ({minutes:.1f} min)")

    trained = train_runs(runs_to_train, jobs=n_jobs, logs=out / "logs", on_done=done,
                         volumes=volumes if n_jobs == 1 else None,
                         poll_s=poll_s, say=say)
    if member is not None:
        say(f"run {member} ({runs[member].name}) finished; run the command without --member once every run is "
            "finished to assemble the model")
        return FitResult(out, tuple(runs), tuple(trained), None, time.perf_counter() - t0)
    bundle = assemble(out, recipe, runs, results, volumes, setting=setting, fold=fold)
    say(f"trained model: {out} ({bundle.describe()})")
    return FitResult(out, tuple(runs), tuple(trained), bundle, time.perf_counter() - t0)


def assemble(
    out: Path,
    recipe: Recipe,
    runs: Sequence[MemberRun],
    results: Mapping[str, Mapping[str, Any]],
    volumes: Sequence[Any],
    *,
    setting: int,
    fold: int | None,
) -> Bundle:
    """Write the manifest of the finished ``runs`` (their training scans fingerprinted) into ``out``."""
    fingerprint = data_fingerprint(training_volumes(runs[0], volumes))
    return write_bundle(out, recipe, runs, results, setting=setting, fold=fold, fingerprint=fingerprint)


def claim_output(out: Path, command: str) -> None:
    """Check ``out`` can be written before any work; a folder this call makes is marked as the library's."""
    from fewshot.outputs import check_writable_folder, mark_output_dir

    check_writable_folder(out, "--out")
    if not out.exists():
        mark_output_dir(out, command)


def training_volumes(run: MemberRun, volumes: Sequence[Any]) -> list[Any]:
    """The volumes ``run`` trains on (its fold's training split; every volume for ``fold=None``)."""
    from fewshot.pipeline import split_volumes

    return split_volumes(run.experiment().data.protocol, volumes)[1]


def modality_check(recipe: Recipe, run: MemberRun, volumes: Sequence[Any]) -> None:
    """Refuse scans of another modality than the recipe's (its intensity handling and settings are modality-specific)."""
    found = sorted({v.modality for v in volumes})
    if found != [recipe.modality]:
        data = run.experiment().data
        where = data.dataset + (f" ({data.data_dir})" if data.data_dir else "")
        raise ValueError(
            f"recipe {recipe.name} is for {recipe.modality} scans, and {where} holds {'/'.join(found) or 'no scans'}: "
            f"pick a recipe for {'/'.join(found)} (`fewshot recipes`), or, for a nifti folder of "
            f"{recipe.modality} scans, say so (--modality {recipe.modality})"
        )
