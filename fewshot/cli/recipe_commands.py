"""The recipe commands: ``fewshot recipes``, ``fewshot fit`` and ``fewshot cv`` (and ``--model`` helpers)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewshot.cli.commands import CLIError, _overrides, comma_list

__all__ = ["cmd_cv", "cmd_fit", "cmd_recipes", "parse_fold", "parse_folds"]


def parse_fold(text: str | None) -> int | None:
    """``--fold``: ``0``..``4``, or ``all`` (every scan trains; nothing held out)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        fold = int(text)
    except ValueError:
        raise CLIError(f"--fold: expected 0..4 or all, got {text!r}") from None
    if not 0 <= fold <= 4:
        raise CLIError(f"--fold: expected 0..4 or all, got {fold}")
    return fold


def parse_folds(text: str) -> list[int]:
    """``--folds``: ``0-4``, ``0,2,3`` or a mix (``0-2,4``)."""
    folds: list[int] = []
    for part in comma_list(text, str, option="--folds"):
        lo, dash, hi = part.partition("-")
        try:
            items = list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            raise CLIError(f"--folds: {part!r} is not a fold or a range like 0-4 (in {text!r})") from None
        folds += items
    bad = [f for f in folds if not 0 <= f <= 4]
    if bad or not folds or len(set(folds)) != len(folds):
        raise CLIError(f"--folds: expected distinct folds in 0..4, got {text!r}")
    return folds


def _data_source(args: argparse.Namespace) -> Any:
    from fewshot.recipes import DataSource

    loader_args = None
    if getattr(args, "modality", None):
        loader_args = {"modality": args.modality}
    return DataSource(dataset=args.dataset, data_dir=args.data, loader_args=loader_args)


def _organs(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(comma_list(args.organs, str, option="--organs")) if args.organs else None


def _recipe(args: argparse.Namespace) -> Any:
    from fewshot.recipes import load_recipe

    return load_recipe(args.recipe)


def _check_jobs(jobs: int | None) -> None:
    if jobs is not None and jobs < 1:
        raise CLIError(f"--jobs: expected a positive number of runs side by side, got {jobs}")


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from fewshot.genesis import OBJECTIVE_NAMES
    from fewshot.recipes import list_recipes, load_recipe

    if args.name:
        recipe = load_recipe(args.name)
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False).rstrip())
        print(f"# file: {recipe.source}")
        return 0
    rows = ["| recipe | for | members | setting | folds | mean Dice % | folds 1-4 | min/fold | hardware |",
            "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name in list_recipes():
        r = load_recipe(name)
        members = " + ".join(
            f"{r.member_config(i).model.backbone.name}" + (
                f" ({OBJECTIVE_NAMES[m.pretrain_objective].short} {m.genesis_steps})" if m.genesis_steps else ""
            )
            for i, m in enumerate(r.members)
        )
        measured = r.measured or ()
        if not measured:
            rows.append(f"| {name} | {r.modality} ({r.dataset}) | {members} | | | not measured | | | |")
        for m in measured:
            n = len(m.folds)
            span = "" if n == 5 else " (fold 1)" if n == 2 else f" (folds 1-{n - 1})"
            later = "" if m.unchosen_mean is None else f"{m.unchosen_mean:.2f}{span}"
            rows.append(f"| {name} | {r.modality} ({r.dataset}) | {members} | {m.setting} | {len(m.folds)} | "
                        f"{m.mean:.2f} | {later} | {m.minutes_per_fold:g} | {m.hardware} |")
    from fewshot.recipes.records import PUBLISHED

    print("\n".join(rows))
    print("\n" + "\n".join(_published_table(PUBLISHED)))
    print("\nFold 0 chose every packaged recipe's settings; folds 1-4 chose nothing. "
          "`fewshot recipes NAME` shows one recipe in full.")
    return 0


def _published_table(published: Mapping[tuple[str, int], Sequence[tuple[str, Sequence[float]]]]) -> list[str]:
    """The published 5-fold mean Dice as a Markdown table: a row per method, a column per data set and setting."""
    columns = list(published)
    methods = list(dict.fromkeys(label for entries in published.values() for label, _ in entries))
    means = {(label, column): values[-1] for column in columns for label, values in published[column]}
    lines = ["| published, 5-fold mean Dice % | " + " | ".join(f"{ds} setting {st}" for ds, st in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label in methods:
        cells = (f"{means[label, c]:.2f}" if (label, c) in means else "" for c in columns)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``fit``/``cv``: the recipe, and the dotted overrides of ``--set`` and ``--steps`` (``--jobs`` checked)."""
    _check_jobs(args.jobs)
    recipe = _recipe(args)
    overrides = _overrides(args.set)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    return recipe, overrides


def cmd_fit(args: argparse.Namespace) -> int:
    from fewshot.genesis import OBJECTIVE_NAMES
    from fewshot.recipes import fit, plan_runs

    recipe, overrides = _recipe_and_overrides(args)
    fold = parse_fold(args.fold)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder for the trained model")
    if args.list_runs:
        runs = plan_runs(recipe, out, data=_data_source(args), fold=fold, setting=args.setting,
                         organs=_organs(args), overrides=overrides)
        for i, run in enumerate(runs):
            short = OBJECTIVE_NAMES[run.pretrain_objective].short
            genesis = f", {run.genesis_steps} {short} steps first" if run.genesis_steps else ""
            print(f"{i}\t{run.name}\t{run.out_dir}\t(organs {'+'.join(run.organs)}{genesis})")
        return 0
    result = fit(recipe, out, data=_data_source(args), fold=fold, setting=args.setting, organs=_organs(args),
                 overrides=overrides, jobs=args.jobs, member=args.member)
    if result.bundle is not None:
        print(f"use it with: fewshot evaluate --model {out} ... | fewshot segment --model {out} ...")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from fewshot.recipes.cv import cross_validate

    recipe, overrides = _recipe_and_overrides(args)
    shots = sorted(set(comma_list(args.shots, int, option="--shots", minimum=1)))
    result = cross_validate(recipe, Path(args.out), data=_data_source(args), folds=parse_folds(args.folds),
                            setting=args.setting, organs=_organs(args), shots=shots, overrides=overrides,
                            jobs=args.jobs, batch_size=args.batch_size)
    print(result.report)
    print(f"wrote {result.out}/results.md and results.json")
    return 0


def add_recipe_commands(sub: Any, add: Any, set_opt: Any, datasets: str, names: dict[str, list[str]]) -> None:
    """The ``recipes``, ``fit`` and ``cv`` subparsers."""
    r = add("recipes", cmd_recipes, "list the packaged recipes with what they measured (or show one)")
    r.add_argument("name", nargs="?", default=None, help="a recipe name or file: print it in full")

    def data_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--recipe", required=True, help="a packaged recipe (`fewshot recipes`) or a recipe YAML file")
        p.add_argument("--dataset", default=None, choices=names["dataset"], metavar="DATASET",
                       help="default: the recipe's own dataset; " + datasets)
        p.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
        p.add_argument("--modality", choices=("CT", "MR"), default=None,
                       help="modality of a nifti folder's scans (default: the loader's, CT for nifti)")
        p.add_argument("--setting", type=int, choices=(1, 2), default=1,
                       help="2: one model per label group, each trained without its group's slices (SSL-ALPNet)")
        p.add_argument("--organs", default=None, help="comma-separated organs (default: the recipe's)")
        p.add_argument("--steps", type=int, default=None, help="training steps of every member (default: the recipe's)")
        p.add_argument("--jobs", type=int, default=None,
                       help="member runs trained side by side (default: CPU cores / the recipe's threads per member)")
        set_opt(p)

    f = add("fit", cmd_fit, "train a recipe on a dataset into one trained-model folder (resumable)",
            epilog="Every member is an ordinary `fewshot train` run in OUT/members/<run>/. Rerun the same command to "
            "resume. On a cluster: `--list-runs` prints the runs, `--member I` trains run I alone (one array task), "
            "then the command without --member assembles the model.")
    data_opts(f)
    f.add_argument("--fold", default="all", help="0..4: train on that fold's training scans (to evaluate on its "
                   "held-out scans); all: every scan")
    f.add_argument("--member", type=int, default=None, metavar="I", help="train only run I (see --list-runs)")
    f.add_argument("--list-runs", action="store_true", help="print the member runs and exit")
    f.add_argument("--out", required=True, help="the trained-model folder")

    c = add("cv", cmd_cv, "cross-validate a recipe: fit and score it on each fold, one report (resumable)")
    data_opts(c)
    c.add_argument("--folds", default="0-4", help="folds, e.g. 0-4 or 0,2")
    c.add_argument("--shots", default="1", help="support slices per chunk to score, e.g. 1,3")
    c.add_argument("--batch-size", type=int, default=16, help="query slices per forward pass")
    c.add_argument("--out", required=True, help="output folder (a trained model per fold, results.md/json)")


def model_or_checkpoints(args: argparse.Namespace) -> Any:
    """The bundle of ``--model`` (verified), or ``None`` with ``--checkpoint``; exactly one must be given."""
    if (args.model is None) == (args.checkpoint is None):
        raise CLIError("give a trained model folder (--model DIR) or checkpoint files (--checkpoint CKPT ...), "
                       "one of the two")
    if args.model is None:
        return None
    from fewshot.recipes import load_bundle

    return load_bundle(args.model)


def evaluate_model(args: argparse.Namespace, bundle: Any, out: Path) -> Any:
    """``fewshot evaluate --model``: the bundle's protocol with the options given, scored as one model per group."""
    from fewshot.cli.commands import _load_raw, finetune_options, protocol_changes
    from fewshot.recipes.evaluate import bundle_protocol, evaluate_bundle

    run_cfg = bundle.run_config()
    dataset = args.dataset or bundle.dataset
    same = dataset == run_cfg.data.dataset
    data_dir = args.data if args.data is not None else (run_cfg.data.data_dir if same else None)
    volumes = _load_raw(dataset, data_dir, dict(run_cfg.data.loader_args) if same else None)
    changes: dict[str, Any] = {"dataset": dataset, **protocol_changes(args)}
    if args.support_subject:
        changes["support_subject"] = args.support_subject
    if args.query_subjects:
        changes["query_subjects"] = tuple(comma_list(args.query_subjects, str, option="--query-subjects"))
    protocol = bundle_protocol(bundle, run_cfg, **changes)
    return evaluate_bundle(
        bundle, protocol=protocol, volumes=volumes, out=out,
        inference={"fg_threshold": args.fg_threshold, "tta": args.tta, "intensity_prior": args.intensity_prior},
        finetune=finetune_options(args), postprocess=args.postprocess,
        shot_fusion=args.shot_fusion, device=args.device, batch_size=args.batch_size, overlays=args.overlays,
        allow_train_overlap=args.allow_train_overlap, resolution=args.resolution, alp_window=args.alp_window,
        alp_threshold=args.alp_threshold, progress=True,
    )
