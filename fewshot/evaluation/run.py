"""Evaluate a trained checkpoint under a protocol: :func:`run_evaluation`.

The checkpoint's model and saved config are loaded (:mod:`fewshot.checkpoint`), the fold is
prepared by the one fold pipeline (:func:`fewshot.pipeline.prepare_fold`, ``stage="evaluate"``,
CT normalised with the statistics stored in the checkpoint), the protocol's support and query
scans are scored (:func:`fewshot.evaluation.scoring.evaluate`) and, with ``out``, the results,
plan, config and overlay pictures are written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from episodes.atomic import atomic_write_text
from episodes.data.preprocess import NormStats
from episodes.data.volumes import Volume
from episodes.protocol import Protocol
from fewshot.checkpoint import LoadedCheckpoint, load_model_from_checkpoints
from fewshot.config import ExperimentConfig, save_config, to_dict
from fewshot.config.model import FinetuneConfig, check_finetune
from fewshot.device import default_device
from fewshot.evaluation.overlays import save_overlays
from fewshot.evaluation.results import EvaluationResult
from fewshot.evaluation.scoring import TunedModels, evaluate
from fewshot.heads.alpnet import ALPNetConfig, ALPNetHead
from fewshot.heads.functional import check_fusion
from fewshot.models import model_heads
from fewshot.outputs import mark_output_dir
from fewshot.pipeline import prepare_fold
from fewshot.provenance import environment, git_commit

__all__ = ["check_protocol", "inference_config", "output_paths", "run_evaluation"]


def output_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`run_evaluation` writes: a folder (``results.json``, ``results.md``, ``plan.json``,
    ``config.yaml``, ``overlays/``) or, for ``out`` ending in ``.json``, that file with the others beside
    it named after its stem (``<stem>.md``, ``<stem>.plan.json``, ``<stem>.config.yaml``, ``<stem>_overlays/``).
    """
    out = Path(out)
    if out.suffix == ".json":
        base = out.with_suffix("")
        return {
            "results": out,
            "markdown": base.with_suffix(".md"),
            "plan": base.with_name(base.name + ".plan.json"),
            "config": base.with_name(base.name + ".config.yaml"),
            "overlays": base.with_name(base.name + "_overlays"),
        }
    return {
        "results": out / "results.json",
        "markdown": out / "results.md",
        "plan": out / "plan.json",
        "config": out / "config.yaml",
        "overlays": out / "overlays",
    }


def check_protocol(loaded: LoadedCheckpoint, protocol: Protocol, used: set[str], *, allow_train_overlap: bool) -> None:
    """Refuse evaluation scans the model trained on (same dataset and subject) and setting-2 protocols
    for a model that saw slices of the tested organ groups."""
    trained_on = loaded.payload.get("dataset", loaded.config.data.dataset)
    overlap = sorted(used & set(loaded.payload.get("train_subjects", []))) if trained_on == protocol.dataset else []
    if overlap and not allow_train_overlap:
        raise ValueError(
            f"subjects {overlap} of {protocol.dataset} are evaluation scans (support/query) of this protocol but "
            f"were used to train {loaded.path}; evaluate the fold the model was trained for (training fold "
            f"{loaded.config.data.protocol.fold}) or pass --allow-train-overlap"
        )
    if protocol.setting == 2:
        trained_without = set(loaded.config.data.train_exclusions())
        needed = {o for organ in protocol.organs for o in protocol.excluded_organs(organ)}
        if not needed <= trained_without:
            raise ValueError(
                f"setting 2 needs a model trained without slices of {sorted(needed)}, but {loaded.path} excluded "
                f"only {sorted(trained_without)}; train with --setting 2"
            )


def _resolution_note(resolution: str, fold: Any) -> str:
    if fold.data.spacing is not None:
        return (
            f"labels resampled with the scans to {fold.data.spacing} mm pixels and cropped/padded to "
            f"{fold.data.size} px (data.spacing; nearest)"
        )
    if resolution == "model":
        return f"labels resized to the model input ({fold.data.size} px)"
    sizes = sorted({f"{v.shape[1]}x{v.shape[2]}" for v in fold.test_raw})
    return f"native labels ({', '.join(sizes)} px; predictions upsampled from {fold.data.size} px)"


def inference_config(
    loaded: LoadedCheckpoint,
    *,
    shot_fusion: str | None = None,
    alp_window: int | None = None,
    alp_threshold: float | None = None,
    alp_decision_window: int | None = None,
    threshold: float | None = None,
    tta: str | None = None,
    finetune: FinetuneConfig | Mapping[str, Any] | None = None,
    intensity_prior: float | None = None,
) -> ExperimentConfig:
    """The trained config with these test-time settings; the head's are also set on ``loaded.model.head``.

    ``threshold``, ``tta``, ``finetune`` and ``intensity_prior`` become the returned ``model.fg_threshold``,
    ``model.tta``, ``model.finetune`` and ``model.intensity_prior`` (pass those to :func:`~fewshot.evaluation.evaluate`; the model itself is left as trained).
    A setting left ``None`` takes the trained config's value (not the head's current one), so one
    loaded checkpoint can be evaluated several ways in a row. Raises ``ValueError`` for a setting
    the head does not have (ALP settings on a non-ALPNet head) or a value its config rejects.
    """
    cfg = loaded.config
    trained = cfg.model.head
    heads = model_heads(loaded.model)
    head = heads[0]
    changes: dict[str, Any] = {}
    if shot_fusion is not None:
        if not hasattr(trained, "shot_fusion") or not hasattr(head, "shot_fusion"):
            raise ValueError(f"head {trained.name!r} has no shot fusion setting (only panet/alpnet/sgone)")
        changes["shot_fusion"] = check_fusion(shot_fusion)
    for name, value in (("window_test", alp_window), ("threshold", alp_threshold)):
        if value is not None:
            if not isinstance(head, ALPNetHead):
                raise ValueError(f"head {trained.name!r} has no ALP {name} (only alpnet)")
            changes[name] = value
    if alp_decision_window is not None:  # 0 turns SSL-ALPNet's local-vs-global check off
        if not isinstance(head, ALPNetHead):
            raise ValueError(f"head {trained.name!r} has no ALP decision_window (only alpnet)")
        changes["decision_window"] = alp_decision_window or None
    resolved = replace(trained, **changes)  # the head config validates the values
    for h in heads:  # an ensemble's members all get the settings
        if hasattr(h, "shot_fusion"):
            h.shot_fusion = getattr(resolved, "shot_fusion", h.shot_fusion)
        if isinstance(h, ALPNetHead) and isinstance(resolved, ALPNetConfig):
            h.window_test, h.threshold = resolved.window_test, resolved.threshold
            h.decision_window = resolved.decision_window
    model_changes: dict[str, Any] = {}
    if threshold is not None:
        model_changes["fg_threshold"] = threshold
    if tta is not None:
        model_changes["tta"] = tta
    if finetune is not None:  # a mapping changes only the fields it names
        model_changes["finetune"] = check_finetune(finetune, base=cfg.model.finetune)
    if intensity_prior is not None:
        model_changes["intensity_prior"] = intensity_prior
    return replace(cfg, model=replace(cfg.model, head=resolved, **model_changes))  # validated there too


def run_evaluation(
    checkpoint: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | LoadedCheckpoint,
    *,
    protocol: Protocol | None = None,
    volumes: Sequence[Volume] | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    overlays: int = 0,
    allow_train_overlap: bool = False,
    title: str | None = None,
    progress: bool = False,
    postprocess: str | Sequence[str] = "none",
    resolution: Literal["native", "model"] = "native",
    shot_fusion: str | None = None,
    threshold: float | None = None,
    tta: str | None = None,
    alp_window: int | None = None,
    alp_threshold: float | None = None,
    alp_decision_window: int | None = None,
    finetune: FinetuneConfig | Mapping[str, Any] | None = None,
    intensity_prior: float | None = None,
) -> EvaluationResult:
    """Evaluate a :func:`fewshot.training.train` checkpoint under a protocol.

    Args:
        checkpoint: ``last.ckpt`` of a training run, several of them (evaluated as one ensemble: the mean
            of their foreground probabilities, :func:`~fewshot.checkpoint.load_model_from_checkpoints`), or a
            model already loaded (:func:`~fewshot.checkpoint.load_model_from_checkpoints`), which is then not
            read again.
        protocol: default: the training config's protocol (fold, setting, organs, shots, chunks).
        volumes: raw volumes of the whole dataset (default: loaded from the training config);
            the support and query scans are preprocessed like the training scans (CT: with the
            training split's statistics stored in the checkpoint).
        out: if given, a folder or a ``.json`` path for the results, plan, config and
            (``overlays > 0``) overlay PNGs; see :func:`output_paths`.
        batch_size: query slices per forward pass.
        device: default CUDA when available, else CPU.
        overlays: slices per organ to render.
        allow_train_overlap: allow support/query subjects that were used for training.
        title: heading of ``results.md`` (default: dataset, fold, setting and shots).
        progress: report each scored query scan on stderr.
        postprocess: ``"none"``, ``"lcc"`` (3D largest connected component) or several (the first
            gives the scores; all are in ``extras["postprocess"]``), see :func:`~fewshot.evaluation.evaluate`.
        resolution: ``"native"`` scores against the scans' own labels (the 256-px labels of the
            SSL-ALPNet data; predictions upsampled from the model's ``data.size``), ``"model"`` against
            the labels resized to ``data.size``.
        shot_fusion: how k > 1 support slices are combined (``"prototypes"`` or ``"scores"``, see
            :func:`fewshot.heads.functional.alp_segment`); default: the trained head's setting.
        threshold: foreground probability threshold; default: the trained config's ``model.fg_threshold``.
        tta: test-time augmentation (``"none"``, ``"flip"``); default: the trained config's ``model.tta``.
        alp_window: ALPNet's pooling window at test time (``model.head.window_test``); default: the
            trained head's.
        alp_threshold: ALPNet's cell threshold (``model.head.threshold``: the pooled-mask mean a cell
            needs to become a local prototype); default: the trained head's.
        alp_decision_window: window of SSL-ALPNet's local-vs-global-only foreground check
            (``model.head.decision_window``, 4 in SSL-ALPNet; ``0``: off); default: the trained head's.
        finetune: test-time fine-tuning (a mapping changes the named fields of the trained ``model.finetune``).
        intensity_prior: weight of the support-intensity prior (``model.intensity_prior``); default: the trained
            config's.

    The test-time settings given here (shot fusion, ALP, threshold, TTA, fine-tuning, intensity prior) are written into the
    ``config.yaml`` saved beside the results.
    """
    if resolution not in ("native", "model"):
        raise ValueError(f"resolution must be 'native' or 'model', got {resolution!r}")
    dev = default_device(device)
    if isinstance(checkpoint, LoadedCheckpoint):
        loaded = checkpoint
        loaded.model.to(dev)
    else:
        loaded = load_model_from_checkpoints(
            checkpoint, map_location=dev,
            inference={"fg_threshold": threshold, "tta": tta, "intensity_prior": intensity_prior},
        )
    cfg = inference_config(
        loaded, shot_fusion=shot_fusion, alp_window=alp_window, alp_threshold=alp_threshold, threshold=threshold, tta=tta,
        finetune=finetune, intensity_prior=intensity_prior, alp_decision_window=alp_decision_window,
    )
    threshold, tta, prior = cfg.model.fg_threshold, cfg.model.tta, cfg.model.intensity_prior
    protocol = protocol if protocol is not None else cfg.data.protocol
    data = cfg.data if protocol.dataset == cfg.data.dataset else replace(cfg.data, dataset=protocol.dataset,
                                                                         protocol=protocol, loader_args={})
    stats = loaded.payload.get("norm_stats")
    fold = prepare_fold(
        data,
        volumes,
        stage="evaluate",
        protocol=protocol,
        norm_stats=NormStats(**stats) if stats else None,
        fit_norm_stats=False,
    )
    plan = fold.require_plan()
    check_protocol(loaded, protocol, set(fold.test), allow_train_overlap=allow_train_overlap)
    # with data.spacing the model grid is not a plain resize of the scan: score on it (labels resampled, nearest)
    native = resolution == "native" and data.spacing is None
    reference = {v.subject: v for v in fold.test_raw} if native else None
    tuned: TunedModels | None = {} if out is not None and overlays > 0 else None  # overlays picture these copies
    result = evaluate(
        loaded.model, plan, fold.test, batch_size=batch_size, device=dev, config=to_dict(cfg),
        progress=progress, postprocess=postprocess, reference=reference, threshold=threshold,
        tta=tta, finetune=cfg.model.finetune, tuned=tuned, intensity_prior=prior,
    )
    init_report: dict[str, Any] = loaded.payload.get("init_report") or {}
    head = model_heads(loaded.model)[0]
    result = replace(
        result,
        extras={
            **dict(result.extras),
            "checkpoint": loaded.path,
            "global_step": loaded.global_step,
            "init": init_report.get("init"),
            "trained_with_library_version": loaded.payload.get("library_version"),
            "trained_with_commit": loaded.payload.get("commit"),
            "resolution": _resolution_note(resolution, fold),
            "shot_fusion": getattr(head, "shot_fusion", None),
            **(
                {"alp_window_test": head.window_test, "alp_threshold": head.threshold}
                if isinstance(head, ALPNetHead)
                else {}
            ),
            **(
                {"alp_decision_window": head.decision_window}
                if isinstance(head, ALPNetHead) and head.decision_window is not None
                else {}
            ),
            **({"ensemble": loaded.payload["ensemble"]} if "ensemble" in loaded.payload else {}),
            "environment": environment(),
            "commit": git_commit(),
        },
    )
    if out is not None:
        paths = output_paths(out)
        if Path(out).suffix != ".json":
            mark_output_dir(out, "evaluate")
        result.to_json(paths["results"])
        heading = title or (
            f"{protocol.dataset} fold {protocol.fold}, setting {protocol.setting}, {protocol.shots}-shot"
            if protocol.support_subject is None
            else f"{protocol.dataset}: support {protocol.support_subject}, queries {', '.join(plan.split.queries)}, "
            f"setting {protocol.setting}, {protocol.shots}-shot"
        )
        atomic_write_text(paths["markdown"], result.to_markdown(title=heading))
        plan.to_json(paths["plan"])
        save_config(cfg, paths["config"])
        if overlays > 0:
            scan_dice = {(str(r["organ"]), str(r["subject"])): float(r["dice"]) for r in result.per_scan}
            save_overlays(
                loaded.model, plan, fold.test, paths["overlays"], n=overlays, device=dev, scan_dice=scan_dice,
                threshold=threshold, tta=tta, finetune=cfg.model.finetune, tuned=tuned, intensity_prior=prior,
            )
    return result
