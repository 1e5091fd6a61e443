"""The ``fewshot`` commands: each ``cmd_<name>(args)`` runs one subcommand and returns its exit code.

Heavy imports (torch, Lightning) happen inside the commands so ``fewshot --help`` is instant.
User errors raise :class:`CLIError` (or ``ValueError``/``FileNotFoundError``...), which
:func:`fewshot.cli.main` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = [
    "CLIError",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_import_weights",
    "cmd_pretrain_genesis",
    "cmd_segment",
    "cmd_study",
    "cmd_superpixels",
    "cmd_train",
]

log = logging.getLogger("fewshot")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- shared helpers


def finetune_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``model.finetune`` fields the ``--finetune-*`` options change (``None``: none given)."""
    given = {name: getattr(args, f"finetune_{name}", None) for name in ("steps", "lr", "batch_size", "bf16")}
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    return changes or None


T = TypeVar("T")


def comma_list(
    text: str, cast: Callable[[str], T], *, option: str, minimum: float | None = None
) -> list[T]:
    """The non-empty items of ``option``'s comma list ``text``, stripped and converted by ``cast``.

    Raises :class:`CLIError` naming ``option`` and the item when the list is empty, ``cast``
    rejects an item, or an item is below ``minimum``. Shared by the commands and ``benchmarks/``.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CLIError(f"{option}: expected a comma list, got {text!r}")
    values: list[T] = []
    for item in items:
        try:
            value = cast(item)
        except ValueError:
            kind = getattr(cast, "__name__", "value")
            raise CLIError(f"{option}: {item!r} is not a valid {kind} (in {text!r})") from None
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            raise CLIError(f"{option}: every item must be >= {minimum:g}, got {item!r}")
        values.append(value)
    return values


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    from fewshot.config import parse_overrides

    return parse_overrides(pairs)


def _config_source(name: str | None) -> Any:
    """A YAML path, or the name of a packaged config (``demo_phantom``, ``ssl_alpnet_chaos_mr_setting1``...)."""
    from fewshot.configs import config_path

    if name is None:
        return None
    return config_path(name)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """An output file: refused (before any work) when it is a folder, exists without --overwrite, or its folder
    cannot be written."""
    from fewshot.outputs import check_output_file

    check_output_file(path, overwrite=overwrite)


def _at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Refuse an option below its minimum, e.g. ``{"size": 32}`` for ``--size``."""
    for name, minimum in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise CLIError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def parse_query_range(text: str) -> tuple[int, int]:
    """``"Z0:Z1"`` -> ``(Z0, Z1)`` with ``0 <= Z0 <= Z1`` (the slices ``Z0`` to ``Z1``, both included)."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        z0, z1 = int(lo), int(hi)
    except ValueError:
        raise CLIError(f"--query-range expects Z0:Z1 (e.g. 5:10, slices 5 to 10), got {text!r}") from None
    if not 0 <= z0 <= z1:
        raise CLIError(f"--query-range {text}: needs 0 <= Z0 <= Z1")
    return z0, z1


def parse_pairs(items: Sequence[str], option: str, example: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; an item without ``=`` is refused naming ``option``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CLIError(f"{option} expects NAME=VALUE (e.g. {option} {example}), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _load_raw(dataset: str, data: str | None, loader_args: dict[str, Any] | None = None) -> list[Any]:
    from episodes.data.datasets import load_dataset

    return load_dataset(dataset, data, **(loader_args or {}))


# ------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from fewshot.demo import run_demo

    overrides = _overrides(args.set)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    result = run_demo(out_dir=Path(args.out), overrides=overrides, overwrite=args.overwrite)
    print(result["markdown"])
    print(f"results, overlays and config in {args.out}/")
    return 0


# ------------------------------------------------------------------------------ superpixels


def cmd_superpixels(args: argparse.Namespace) -> int:
    from episodes.pseudolabels import SuperpixelParams, compute_dataset_superpixels_with_stats

    params = {k: _parse_value(v) for k, v in parse_pairs(args.param, "--param", "min_size=400").items()}
    _at_least(args, {"workers": 0})
    if args.export:
        from fewshot.outputs import check_writable_folder

        check_writable_folder(args.export, "--export")
    volumes = _load_raw(args.dataset, args.data)
    sp = SuperpixelParams(
        method=args.method,
        params=params,
        body_threshold=args.body_threshold,
        scaling=args.scaling,
        body_connectivity=args.body_connectivity,
    )
    maps, stats = compute_dataset_superpixels_with_stats(
        volumes, sp, cache_dir=args.cache, workers=args.workers, progress=not args.quiet
    )
    summary = {k: v for k, v in stats.to_dict().items() if k != "per_subject_regions"}
    summary["params"] = sp.to_dict()
    summary["cache_dir"] = str(args.cache)
    print(json.dumps(summary, indent=1))
    if args.export:
        _export_superpixels(volumes, maps, Path(args.export), args.overwrite)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from episodes.data.datasets import data_root
    from episodes.data.pack import pack_files, write_pack

    out = Path(args.out)
    if out.suffix != ".npz":
        raise CLIError(f"--out {out}: a pack's name ends in .npz")
    _at_least(args, {"parts": 1})
    taken = pack_files(out)
    if taken and not args.overwrite:
        raise CLIError(f"--out {out}: already there: {', '.join(map(str, taken))}; pass --overwrite to replace")
    volumes = _load_raw(args.dataset, args.data)
    files = write_pack(volumes, out, dataset=args.dataset, parts=args.parts)
    for old in set(taken) - set(files):  # replaced: a stale part beside the new pack would make it unreadable
        old.unlink()
    root = data_root(args.dataset, args.data)
    folder = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root is not None else 0
    slices = sum(v.shape[0] for v in volumes)
    size = sum(f.stat().st_size for f in files)
    print(
        f"packed {len(volumes)} scans ({slices} slices) of {args.dataset} into {out}: {size / 2**20:.1f} MiB"
        + (f" (the folder: {folder / 2**20:.1f} MiB)" if folder else "")
    )
    if len(files) > 1:
        print("in parts: " + ", ".join(f"{f.name} {f.stat().st_size / 2**20:.1f} MiB" for f in files))
    print(f"use it with: --dataset {args.dataset} --data {out}")
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    from fewshot.backbones import keras_resnet

    importers = {keras_resnet.BACKBONE: keras_resnet.import_keras_resnet50}
    target = Path(args.out) if args.out is not None else keras_resnet.default_path()
    if target.exists() and not args.overwrite:
        raise CLIError(f"{target} already exists; pass --overwrite to replace it")
    path = importers[args.backbone](args.source, target, overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {args.backbone} ImageNet weights")
    found = path.resolve() == keras_resnet.default_path().resolve()
    use = "--init imagenet" if found else f"--init imagenet --weights {path}"
    print(f"use them with: --backbone {args.backbone} {use} (config: model.backbone.name={args.backbone}, "
          f"model.init.scheme=imagenet)")
    return 0


def _export_superpixels(volumes: Sequence[Any], maps: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Write each map as NIfTI with its scan's geometry (inspect pseudo-labels in a viewer)."""
    from episodes.data.volumes import save_nifti

    out.mkdir(parents=True, exist_ok=True)
    for v in volumes:
        path = save_nifti(
            maps[v.subject].astype("int32"), v, out / f"superpix_{v.subject}.nii.gz", overwrite=overwrite
        )
        print(f"wrote {path}")


# -------------------------------------------------------------------------- pretrain


def cmd_pretrain_genesis(args: argparse.Namespace) -> int:
    """``fewshot pretrain`` (and ``pretrain-genesis``): exit 0 when the weights are written, 75 when ``--time-limit``
    stopped the run first (its state kept in ``<out>.partial``; the same command resumes it)."""
    from episodes.data.preprocess import unit_slices
    from fewshot.device import default_device
    from fewshot.genesis import OBJECTIVE_NAMES, partial_path, run_pretrain_genesis

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    _at_least(args, {"steps": 1, "batch_size": 1, "size": 32, "checkpoint_every": 1})
    if args.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise CLIError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    device = str(default_device(args.device))
    raw = _load_raw(args.dataset, args.data)
    if args.fold is not None:  # the fold's training scans only, as fewshot fit pretrains a recipe member
        from episodes.protocol import Protocol
        from fewshot.pipeline import split_volumes

        _, raw, _ = split_volumes(Protocol(dataset=args.dataset, fold=args.fold), raw)
        print(f"fold {args.fold}: pretraining on its {len(raw)} training scans", flush=True)
    exclude = tuple(comma_list(args.exclude_organs, str, option="--exclude-organs")) if args.exclude_organs else ()
    try:
        images = unit_slices(raw, args.size, exclude_organs=exclude)
    except KeyError as e:  # an organ the data set does not label
        raise CLIError(f"--exclude-organs: {e.args[0]}") from None
    if exclude:
        print(f"left out: every slice with {', '.join(exclude)} ({len(images)} slices kept)", flush=True)
    if partial_path(out).is_file():
        print(f"resuming the unfinished run in {partial_path(out)}", flush=True)
    result = run_pretrain_genesis(
        images,
        backbone=args.backbone,
        steps=args.steps,
        out=out,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device,
        truncate=args.truncate,
        output_stride=args.output_stride,
        bf16=args.bf16,
        objective=args.objective,
        checkpoint_every=args.checkpoint_every,
        time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit,
    )
    what, loss = OBJECTIVE_NAMES[args.objective].title, OBJECTIVE_NAMES[args.objective].loss
    first, last = result.loss_drop()
    if not result.finished:
        print(
            f"{what} pretraining of {args.backbone}: stopped by --time-limit at step {len(result.losses)} of "
            f"{args.steps} ({loss} {first:.4f} -> {last:.4f}); its state is in {result.partial}: run the same command "
            "again to go on"
        )
        return 75
    print(
        f"{what} pretraining of {args.backbone}: {len(result.losses)} steps on {len(images)} slices"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
        + f", {loss} {first:.4f} -> {last:.4f}; weights: {result.out}\n"
        f"use them with: --backbone {args.backbone} --init {args.objective} --weights {result.out}"
        + (f" --truncate {args.truncate}" if args.truncate else "")
        + (f" (and model.backbone.output_stride: {args.output_stride})" if args.output_stride else "")
    )
    return 0


# ------------------------------------------------------------------------------------ train


def _experiment_from_args(args: argparse.Namespace) -> Any:
    from fewshot.config import ConfigError, load_config

    overrides: dict[str, Any] = {}
    mapping = {
        "dataset": "data.dataset",
        "data": "data.data_dir",
        "setting": "data.protocol.setting",
        "fold": "data.protocol.fold",
        "size": "data.size",
        "backbone": "model.backbone.name",
        "truncate": "model.backbone.truncate",
        "init": "model.init.scheme",
        "weights": "model.init.weights",
        "weights_sha256": "model.init.sha256",
        "head": "model.head.name",
        "steps": "train.steps",
        "batch_size": "train.batch_size",
        "workers": "train.num_workers",
        "seed": "seed",
        "accelerator": "train.accelerator",
        "num_nodes": "train.num_nodes",
        "strategy": "train.strategy",
        "out": "out_dir",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "organs", None):
        overrides["data.protocol.organs"] = comma_list(args.organs, str, option="--organs")
    if getattr(args, "devices", None) is not None:
        overrides["train.devices"] = _parse_value(args.devices)
    overrides.update(_overrides(args.set))
    if overrides.get("model.backbone.truncate") == "none":
        overrides["model.backbone.truncate"] = None
    try:
        return load_config(_config_source(args.config), overrides)
    except ConfigError as e:
        if getattr(args, "backbone", None) and getattr(args, "truncate", None) is None and "truncate" in str(e):
            _check_truncate_fits(args, {k: v for k, v in overrides.items() if not k.startswith("model.backbone")})
        raise


def _check_truncate_fits(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """``--backbone`` on a config that cuts its backbone after a stage the new one lacks: say what to do."""
    from fewshot.backbones import get_backbone_spec
    from fewshot.config import load_config

    truncate = load_config(_config_source(args.config), overrides).model.backbone.truncate
    stages = get_backbone_spec(args.backbone).stages
    if truncate is not None and stages and truncate not in stages:
        raise CLIError(
            f"the config cuts the backbone after stage {truncate!r}, which {args.backbone} does not have; add "
            f"--truncate STAGE (one of {', '.join(stages)}) or --truncate none"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot.training import train

    cfg = _experiment_from_args(args)
    result = train(cfg, resume=not args.no_resume)
    print(json.dumps(result.to_dict(), indent=1))
    return 0


# --------------------------------------------------------------------------------- evaluate


def protocol_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol fields ``evaluate``'s options change (``--fold``, ``--setting``, ``--shots``, ``--chunks``,
    ``--organs``, ``--share-support-slices``); the others keep the trained protocol's values."""
    changes: dict[str, Any] = {}
    for name in ("fold", "setting", "shots", "chunks"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if args.organs:
        changes["organs"] = tuple(comma_list(args.organs, str, option="--organs"))
    if args.share_support_slices:
        changes["share_support_slices"] = True
    return changes


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fewshot.cli.recipe_commands import model_or_checkpoints
    from fewshot.outputs import mark_output_dir
    from fewshot.training.lock import train_lock

    out = Path(args.out)
    _check_evaluate_out(out, args.overwrite)
    _at_least(args, {"batch_size": 1, "overlays": 0, "shots": 1, "chunks": 1})
    bundle = model_or_checkpoints(args)  # a missing or altered model is refused before any folder is made
    folder = out.parent if out.suffix == ".json" else out
    if out.suffix != ".json" and not out.exists():
        mark_output_dir(out, "evaluate")
    # One evaluate per results folder at a time: a second one fails at once instead of mixing their files.
    with train_lock(folder, name=f".{out.name}.evaluate.lock" if out.suffix == ".json" else ".evaluate.lock",
                    command="evaluate"):
        return _evaluate(args, out, bundle)


def _evaluate(args: argparse.Namespace, out: Path, bundle: Any) -> int:
    from dataclasses import replace

    from fewshot.checkpoint import load_model_from_checkpoints
    from fewshot.cli.recipe_commands import evaluate_model
    from fewshot.device import default_device
    from fewshot.evaluation import run_evaluation
    from fewshot.evaluation.postprocess import POSTPROCESS

    if bundle is not None:
        if args.support_data:
            raise CLIError("--support-data works with --checkpoint; with --model name a --support-subject of --data")
        result = evaluate_model(args, bundle, out)
        title = (out / "results.md") if out.suffix != ".json" else out.with_suffix(".md")
        print(title.read_text() if title.is_file() else result.to_markdown())
        print(f"wrote {out}")
        return 0
    loaded = load_model_from_checkpoints(
        args.checkpoint, map_location=default_device(args.device),
        inference={"fg_threshold": args.fg_threshold, "tta": args.tta, "intensity_prior": args.intensity_prior},
    )
    trained = loaded.config.data
    dataset = args.dataset or trained.dataset
    loader_args = dict(trained.loader_args) if dataset == trained.dataset else {}
    if args.label_map:
        if dataset != "nifti":
            raise CLIError(f"--label-map applies to --dataset nifti folders; {dataset} has its own label map")
        loader_args["label_map"] = args.label_map
    volumes = _load_raw(dataset, args.data, loader_args)
    if loaded.global_step < loaded.config.train.steps:
        log.warning(
            "%s is at step %d of its train.steps=%d: the training run did not finish (scoring it anyway)",
            loaded.path, loaded.global_step, loaded.config.train.steps,
        )
    support_subject = args.support_subject
    query_subjects = tuple(comma_list(args.query_subjects, str, option="--query-subjects")) if args.query_subjects else None
    if args.support_data:
        if not support_subject:
            raise CLIError("--support-data needs --support-subject")
        support = [
            v
            for v in _load_raw(args.support_dataset or dataset, args.support_data)
            if v.subject == support_subject
        ]
        if not support:
            raise CLIError(f"subject {support_subject!r} not found in {args.support_data}")
        volumes = [support[0], *(v for v in volumes if v.subject != support_subject)]
        if query_subjects is None:
            query_subjects = tuple(v.subject for v in volumes if v.subject != support_subject)
    # The trained protocol (chunks, shots, organs...) with the options given here replacing its fields.
    changes = {"dataset": dataset, "support_subject": support_subject, "query_subjects": query_subjects,
               **protocol_changes(args)}
    protocol = replace(trained.protocol, **changes)
    head = args.postprocess or "none"  # checkpoints carry no post-processing setting
    result = run_evaluation(
        loaded,
        protocol=protocol,
        volumes=volumes,
        out=out,
        batch_size=args.batch_size,
        device=args.device,
        overlays=args.overlays,
        allow_train_overlap=args.allow_train_overlap,
        postprocess=(head, *(p for p in POSTPROCESS if p != head)),
        resolution=args.resolution,
        shot_fusion=args.shot_fusion,
        threshold=args.fg_threshold,
        tta=args.tta,
        finetune=finetune_options(args),
        intensity_prior=args.intensity_prior,
        alp_window=args.alp_window,
        alp_threshold=args.alp_threshold,
        alp_decision_window=args.alp_decision_window,
        progress=True,
    )
    title = (out / "results.md") if out.suffix != ".json" else out.with_suffix(".md")
    print(title.read_text() if title.is_file() else result.to_markdown())
    print(f"wrote {out}")
    return 0


def _check_evaluate_out(out: Path, overwrite: bool) -> None:
    """``--out`` of evaluate: a ``.json`` file or a folder, checked before the checkpoint is even read."""
    from fewshot.outputs import check_output_dir, check_output_file

    if out.suffix == ".json":
        check_output_file(out, overwrite=overwrite)
    else:
        check_output_dir(out, overwrite=overwrite)


# ---------------------------------------------------------------------------------- segment


def cmd_segment(args: argparse.Namespace) -> int:
    from fewshot.segment import segment_files

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    _at_least(args, {"shots": 1, "chunks": 1})
    query_range = parse_query_range(args.query_range) if args.query_range else None
    from fewshot.cli.recipe_commands import model_or_checkpoints

    bundle = model_or_checkpoints(args)
    report = segment_files(
        checkpoint=args.checkpoint if bundle is None else bundle,
        support=args.support,
        support_mask=args.support_mask,
        organ=args.organ,
        query=args.query,
        out=out,
        label_map=args.label_map,
        modality=args.modality,
        shots=args.shots,
        chunks=args.chunks,
        query_range=query_range,
        allow_spacing_mismatch=args.allow_spacing_mismatch,
        device=args.device,
        overwrite=args.overwrite,
        fg_threshold=args.fg_threshold,
        tta=args.tta,
        finetune=finetune_options(args),
        intensity_prior=args.intensity_prior,
        postprocess=args.postprocess,
    )
    print(json.dumps(report, indent=1))
    return 0


# ------------------------------------------------------------------------------------ study


def cmd_study(args: argparse.Namespace) -> int:
    from fewshot.study import StudySpec, run_study

    spec = StudySpec(
        backbones=tuple(comma_list(args.backbones, str, option="--backbones")),
        inits=tuple(comma_list(args.inits, str, option="--inits")),
        heads=tuple(comma_list(args.heads, str, option="--heads")),
        seeds=tuple(comma_list(args.seeds, int, option="--seeds")),
        folds=tuple(comma_list(args.folds, int, option="--folds", minimum=0)),
        steps=args.steps,
        genesis_steps=args.genesis_steps,
        pretrain_bf16=args.pretrain_bf16,
        eval_every=args.eval_every,
        reach=tuple(comma_list(args.reach, float, option="--reach")) if args.reach else (),
        weights=parse_pairs(args.weights, "--weights", "imagenet=resnet50.pth"),
    )
    overrides = _overrides(args.set)
    if args.dataset:
        overrides["data.dataset"] = args.dataset
    if args.data:
        overrides["data.data_dir"] = args.data
    _at_least(args, {"jobs": 1, "threads": 1})
    table = run_study(
        spec, base_config=_config_source(args.config), overrides=overrides, out_dir=Path(args.out), jobs=args.jobs,
        threads=args.threads,
    )
    print(table)
    return 0


