"""``fewshot`` command line: demo, superpixels, pretrain-genesis, train, evaluate, segment, study.

Every command has ``--help``. Heavy imports (torch, Lightning) happen inside the commands so
``fewshot --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["build_parser", "main"]

log = logging.getLogger("fewshot")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- shared helpers


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


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
    if path.exists() and not overwrite:
        raise CLIError(f"{path} exists; pass --overwrite to replace it")


def _load_raw(dataset: str, data: str | None, loader_args: dict[str, Any] | None = None) -> list[Any]:
    from episodes.datasets import load_dataset

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
    from episodes.superpixels import SuperpixelParams, compute_dataset_superpixels_with_stats

    volumes = _load_raw(args.dataset, args.data)
    params: dict[str, Any] = {}
    for pair in args.param:
        key, _, value = pair.partition("=")
        params[key] = _parse_value(value)
    sp = SuperpixelParams(method=args.method, params=params, body_threshold=args.body_threshold)
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


def _export_superpixels(volumes: Sequence[Any], maps: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Write each map as NIfTI with its scan's geometry (inspect pseudo-labels in a viewer)."""
    from episodes.volumes import save_nifti

    out.mkdir(parents=True, exist_ok=True)
    for v in volumes:
        path = save_nifti(
            maps[v.subject].astype("int32"), v, out / f"superpix_{v.subject}.nii.gz", overwrite=overwrite
        )
        print(f"wrote {path}")


# -------------------------------------------------------------------------- pretrain-genesis


def cmd_pretrain_genesis(args: argparse.Namespace) -> int:

    from episodes.preprocess import unit_slices
    from fewshot.genesis import run_pretrain_genesis

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    images = unit_slices(_load_raw(args.dataset, args.data), args.size)
    result = run_pretrain_genesis(
        images,
        backbone=args.backbone,
        steps=args.steps,
        out=out,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device or ("cuda" if _cuda() else "cpu"),
    )
    first, last = result.loss_drop()
    print(
        f"Models Genesis pretraining of {args.backbone}: {len(result.losses)} steps on {len(images)} slices, "
        f"restoration MSE {first:.4f} -> {last:.4f}; weights: {result.out}\n"
        f"use them with: --backbone {args.backbone} --init genesis --weights {result.out}"
    )
    return 0


# ------------------------------------------------------------------------------------ train


def _experiment_from_args(args: argparse.Namespace) -> Any:
    from fewshot.config import load_config

    overrides: dict[str, Any] = {}
    mapping = {
        "dataset": "data.dataset",
        "data": "data.data_dir",
        "setting": "data.setting",
        "fold": "data.fold",
        "size": "data.size",
        "backbone": "model.backbone",
        "init": "model.init",
        "weights": "model.weights",
        "truncate": "model.truncate",
        "head": "model.head",
        "steps": "train.steps",
        "batch_size": "train.batch_size",
        "workers": "train.num_workers",
        "seed": "train.seed",
        "accelerator": "train.accelerator",
        "devices": "train.devices",
        "num_nodes": "train.num_nodes",
        "strategy": "train.strategy",
        "out": "out_dir",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "organs", None):
        overrides["data.organs"] = _csv(args.organs)
    if getattr(args, "devices", None) is not None:
        overrides["train.devices"] = _parse_value(args.devices)
    overrides.update(_overrides(args.set))
    return load_config(_config_source(args.config), overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot.training.train import train

    cfg = _experiment_from_args(args)
    result = train(cfg, resume=not args.no_resume)
    print(json.dumps(result.to_dict(), indent=1))
    return 0


# --------------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from episodes.labels import ABDOMINAL_ORGANS
    from episodes.protocol import Protocol
    from fewshot.config import load_config
    from fewshot.evaluation.evaluate import run_evaluation
    from fewshot.training.train import load_checkpoint

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = load_config(ckpt["fewshot"]["config"]) if "fewshot" in ckpt else None
    dataset = args.dataset or (cfg.data.dataset if cfg else None)
    if dataset is None:
        raise CLIError("--dataset is required")
    trained = cfg.data if cfg is not None else None
    volumes = _load_raw(
        dataset, args.data, dict(trained.loader_args) if trained and dataset == trained.dataset else None
    )
    support_subject = args.support_subject
    query_subjects = tuple(_csv(args.query_subjects)) if args.query_subjects else None
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
        clash = {v.subject for v in volumes} & {support_subject}
        if clash:
            volumes = [v for v in volumes if v.subject != support_subject]
        volumes = [*support, *volumes]
        if query_subjects is None:
            query_subjects = tuple(v.subject for v in volumes if v.subject != support_subject)
    organs = (
        tuple(_csv(args.organs)) if args.organs else (tuple(trained.organs) if trained else ABDOMINAL_ORGANS)
    )
    protocol = Protocol(
        dataset=dataset,
        fold=args.fold if args.fold is not None else (trained.fold if trained else 0),
        setting=args.setting if args.setting is not None else (trained.setting if trained else 1),
        organs=organs,
        shots=args.shots,
        support_subject=support_subject,
        query_subjects=query_subjects,
    )
    result = run_evaluation(
        args.checkpoint,
        protocol=protocol,
        volumes=volumes,
        out=out,
        batch_size=args.batch_size,
        device=args.device,
        overlays=args.overlays,
        allow_train_overlap=args.allow_train_overlap,
    )
    print(
        result.to_markdown(
            title=f"{dataset} fold {protocol.fold} setting {protocol.setting}, {args.shots}-shot"
        )
    )
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------- segment


def cmd_segment(args: argparse.Namespace) -> int:
    from fewshot.segment import segment_files

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    query_range = None
    if args.query_range:
        lo, _, hi = args.query_range.partition(":")
        query_range = (int(lo), int(hi))
    report = segment_files(
        checkpoint=args.checkpoint,
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
    )
    print(json.dumps(report, indent=1))
    return 0


# ------------------------------------------------------------------------------------ study


def cmd_study(args: argparse.Namespace) -> int:
    from fewshot.study import StudySpec, run_study

    spec = StudySpec(
        backbones=tuple(_csv(args.backbones)),
        inits=tuple(_csv(args.inits)),
        heads=tuple(_csv(args.heads)),
        seeds=tuple(int(s) for s in _csv(args.seeds)),
        folds=tuple(int(f) for f in _csv(args.folds)),
        steps=args.steps,
        genesis_steps=args.genesis_steps,
        weights=dict(pair.split("=", 1) for pair in args.weights),
    )
    overrides = _overrides(args.set)
    if args.dataset:
        overrides["data.dataset"] = args.dataset
    if args.data:
        overrides["data.data_dir"] = args.data
    table = run_study(
        spec, base_config=_config_source(args.config), overrides=overrides, out_dir=Path(args.out)
    )
    print(table)
    return 0


# ----------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from episodes import __version__

    p = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot medical image segmentation trained without annotations.",
    )
    p.add_argument("--version", action="version", version=f"fewshot-medseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=fn)
        return sp

    def set_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any config key, e.g. --set train.steps=500 --set model.feature_dim=128",
        )

    d = add("demo", cmd_demo, "the whole pipeline on the built-in synthetic phantom (no data, CPU, minutes)")
    d.add_argument("--out", default="fewshot-demo", help="output folder (default: fewshot-demo)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: from demo_phantom.yaml)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    set_opt(d)

    s = add("superpixels", cmd_superpixels, "compute (and cache) superpixel pseudo-labels for a dataset")
    s.add_argument(
        "--dataset", required=True, help="chaos-mr | btcv-ct | chaos-dicom | nifti | phantom-ct | phantom-mr"
    )
    s.add_argument("--data", default=None, help="data folder (default: $FEWSHOT_DATA/<dataset folder>)")
    s.add_argument("--method", default="felzenszwalb", help="felzenszwalb | slic | fast-slic")
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method parameter, e.g. min_size=400",
    )
    s.add_argument(
        "--body-threshold", type=float, default=None, help="body-mask threshold (default per modality)"
    )
    s.add_argument("--cache", default=".fewshot_cache/superpixels", help="cache folder")
    s.add_argument("--workers", type=int, default=2, help="worker processes")
    s.add_argument("--export", default=None, help="also write superpix_<id>.nii.gz files here")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    g = add(
        "pretrain-genesis", cmd_pretrain_genesis, "Models Genesis self-supervised restoration pretraining"
    )
    g.add_argument("--dataset", required=True)
    g.add_argument("--data", default=None)
    g.add_argument("--backbone", default="unet", help="unet | cbr-small | resnet50 | any registered backbone")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--size", type=int, default=256, help="slice size (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    g.add_argument("--out", required=True, help="weights file to write (e.g. genesis_unet.pt)")
    g.add_argument("--overwrite", action="store_true")

    t = add("train", cmd_train, "self-supervised training on superpixel episodes")
    t.add_argument(
        "--config", default=None, help="YAML file or packaged config name (e.g. ssl_alpnet_chaos_mr_setting1)"
    )
    t.add_argument("--dataset", default=None)
    t.add_argument("--data", default=None)
    t.add_argument("--backbone", default=None)
    t.add_argument(
        "--init",
        default=None,
        help="random[:kaiming|xavier|uniform] | imagenet | genesis | meanvar | transfuse:K",
    )
    t.add_argument(
        "--weights", default=None, help="weights file for imagenet / genesis / meanvar / transfuse"
    )
    t.add_argument("--truncate", default=None, help="cut the backbone after this stage (e.g. layer3)")
    t.add_argument("--head", default=None, help="sgone | panet | alpnet | dpcn")
    t.add_argument("--setting", type=int, choices=(1, 2), default=None)
    t.add_argument("--fold", type=int, default=None)
    t.add_argument(
        "--organs", default=None, help="comma-separated test organs (setting 2 excludes their slices)"
    )
    t.add_argument("--size", type=int, default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--workers", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--accelerator", default=None, help="auto | cpu | gpu")
    t.add_argument("--devices", default=None, help="auto | N | [0,1]")
    t.add_argument("--num-nodes", type=int, default=None)
    t.add_argument("--strategy", default=None, help="auto | ddp | ddp_spawn | ...")
    t.add_argument("--out", default=None, help="output folder (checkpoints, logs, config)")
    t.add_argument(
        "--no-resume", action="store_true", help="do not continue from <out>/checkpoints/last.ckpt"
    )
    set_opt(t)

    e = add("evaluate", cmd_evaluate, "1-way k-shot evaluation under the SSL-ALPNet protocol")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", default=None, help="default: the training dataset")
    e.add_argument("--data", default=None)
    e.add_argument("--fold", type=int, default=None)
    e.add_argument("--setting", type=int, choices=(1, 2), default=None)
    e.add_argument("--shots", type=int, default=1)
    e.add_argument("--organs", default=None, help="comma-separated organs (default: the training config's)")
    e.add_argument(
        "--support-data", default=None, help="folder holding the support subject (held-out evaluation)"
    )
    e.add_argument(
        "--support-dataset", default=None, help="dataset layout of --support-data (default: --dataset)"
    )
    e.add_argument("--support-subject", default=None)
    e.add_argument("--query-subjects", default=None, help="comma-separated query subject ids")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default=None)
    e.add_argument("--overlays", type=int, default=3, help="overlay PNGs per organ (0: none)")
    e.add_argument("--allow-train-overlap", action="store_true")
    e.add_argument(
        "--out", required=True, help="results folder (results.json, results.md, plan.json, overlays/)"
    )
    e.add_argument("--overwrite", action="store_true")

    sg = add(
        "segment",
        cmd_segment,
        "segment a new scan from one annotated scan; writes NIfTI with the query's geometry",
    )
    sg.add_argument("--checkpoint", required=True)
    sg.add_argument("--support", required=True, help="annotated scan (NIfTI)")
    sg.add_argument(
        "--support-mask", required=True, help="its mask (NIfTI: binary, or a label map with --label-map)"
    )
    sg.add_argument("--organ", required=True, help="organ name, e.g. liver")
    sg.add_argument(
        "--label-map", default=None, help="chaos-mr | btcv-ct | phantom, when the mask holds several labels"
    )
    sg.add_argument("--query", required=True, help="scan to segment (NIfTI)")
    sg.add_argument("--modality", choices=("CT", "MR"), default=None, help="default: the checkpoint's")
    sg.add_argument("--shots", type=int, default=1)
    sg.add_argument("--chunks", type=int, default=3)
    sg.add_argument(
        "--query-range", default=None, metavar="Z0:Z1", help="slices holding the organ (default: all)"
    )
    sg.add_argument("--allow-spacing-mismatch", action="store_true")
    sg.add_argument("--device", default=None)
    sg.add_argument("--out", required=True, help="prediction file (.nii.gz)")
    sg.add_argument("--overwrite", action="store_true")

    st = add(
        "study", cmd_study, "does the initialisation matter? train/evaluate a grid and compare (mean ± std)"
    )
    st.add_argument("--config", default="demo_phantom", help="base config (default: demo_phantom)")
    st.add_argument("--dataset", default=None)
    st.add_argument("--data", default=None)
    st.add_argument("--backbones", default="cbr-small")
    st.add_argument("--inits", default="random,genesis")
    st.add_argument("--heads", default="alpnet")
    st.add_argument("--seeds", default="0,1")
    st.add_argument("--folds", default="0")
    st.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    st.add_argument(
        "--genesis-steps", type=int, default=200, help="pretraining steps when --inits has genesis"
    )
    st.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="INIT=FILE",
        help="weights per init, e.g. imagenet=resnet50.pth",
    )
    st.add_argument("--out", default="fewshot-study")
    set_opt(st)
    return p


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"fewshot {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"fewshot {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
