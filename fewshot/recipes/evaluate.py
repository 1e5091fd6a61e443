"""Evaluate a trained model folder (:class:`~fewshot.recipes.bundle.Bundle`) under the protocol.

One label group (setting 1): :func:`fewshot.evaluation.run_evaluation` of its members as one ensemble, with the
bundle's inference settings. Several (setting 2, one model per label group): each group's organs are scored by
that group's models, into ``out/<organs>/``, and :func:`combine_results` joins them into one result whose means
are recomputed over all organs (written to ``out``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_text
from episodes.protocol import Protocol
from fewshot.evaluation.results import SCORES, EvaluationResult
from fewshot.recipes.bundle import Bundle, BundleError

__all__ = ["bundle_protocol", "combine_results", "evaluate_bundle"]


def bundle_protocol(bundle: Bundle, run_config: Any = None, **changes: Any) -> Protocol:
    """The protocol the bundle was trained for (dataset, fold, setting, organs), with ``changes``
    (``None`` values ignored). ``run_config``: :meth:`Bundle.run_config`, when the caller has read it already."""
    first = (run_config or bundle.run_config()).data.protocol
    base = dataclasses.replace(first, organs=bundle.organs, setting=bundle.setting)
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _merged(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
    per_organ = {o: float(v) for sc in scores for o, v in sc.items() if o != "mean"}
    return {**per_organ, "mean": statistics.fmean(per_organ.values())}


def combine_results(results: Sequence[EvaluationResult]) -> EvaluationResult:
    """One result from results over disjoint organs (setting 2's groups): scores side by side, means over all
    organs, per-scan rows joined; ``extras["postprocess"]`` joined per step; the group results under ``"groups"``."""
    if len(results) == 1:
        return results[0]
    steps = set.intersection(*(set(r.extras.get("postprocess", {})) for r in results))
    post = {
        step: {k: _merged([r.extras["postprocess"][step][k] for r in results]) for k in SCORES} for step in sorted(steps)
    }
    timing = [r.extras.get("timing", {}) for r in results]
    seconds = sum(float(t.get("seconds") or 0.0) for t in timing)
    scans = sum(int(t.get("scans") or 0) for t in timing)
    first = results[0]
    return EvaluationResult(
        dice=_merged([r.dice for r in results]),
        precision=_merged([r.precision for r in results]),
        recall=_merged([r.recall for r in results]),
        per_scan=tuple(s for r in results for s in r.per_scan),
        config=first.config,
        library_version=first.library_version,
        extras={
            **{k: v for k, v in first.extras.items() if k not in ("postprocess", "timing", "checkpoint", "ensemble")},
            "postprocess": post,
            "timing": {"seconds": seconds, "scans": scans, "scans_per_s": scans / seconds if seconds else None},
            "groups": [r.to_dict() | {"per_scan": None} for r in results],
        },
    )


def evaluate_bundle(
    bundle: Bundle,
    *,
    protocol: Protocol | None = None,
    volumes: Sequence[Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    inference: Mapping[str, Any] | None = None,
    finetune: Mapping[str, Any] | None = None,
    postprocess: str | None = None,
    shot_fusion: str | None = None,
    device: Any = None,
    **kwargs: Any,
) -> EvaluationResult:
    """Score ``bundle`` (its members as one model per label group) under ``protocol`` (default: the fold and
    setting it was trained for, all its organs).

    ``inference`` (``fg_threshold``, ``tta``, ``intensity_prior``), ``finetune`` (fields of ``model.finetune``),
    ``postprocess`` and ``shot_fusion`` replace the bundle's settings where given; ``kwargs`` go to
    :func:`fewshot.evaluation.run_evaluation` (``batch_size``, ``overlays``, ``resolution``, ``progress``...).
    """
    from fewshot.device import default_device
    from fewshot.evaluation import run_evaluation
    from fewshot.evaluation.postprocess import POSTPROCESS

    protocol = protocol or bundle_protocol(bundle)
    if volumes is not None:
        found = sorted({v.modality for v in volumes})
        if found != [bundle.modality]:
            raise BundleError(
                f"--model {bundle.root} was trained on {bundle.modality} scans; these are {'/'.join(found)}: the "
                f"intensity handling and the features are modality-specific; use a model trained on {'/'.join(found)}"
            )
    inf = bundle.inference
    settings = bundle.inference_settings(inference)
    tune = bundle.finetune_settings(finetune)
    head_step = postprocess or inf.postprocess
    steps = (head_step, *(p for p in POSTPROCESS if p != head_step))
    dev = default_device(device)
    results = []
    groups = [g for g in bundle.groups if set(g) & set(protocol.organs)]
    if not groups:
        raise BundleError(f"--model {bundle.root} was trained for {', '.join(bundle.organs)}, not "
                          f"{', '.join(protocol.organs)}")
    for group in groups:
        organs = tuple(o for o in protocol.organs if o in group)
        loaded = bundle.load(group, map_location=dev, inference=settings)
        target = None
        if out is not None:
            target = Path(out) if len(groups) == 1 else Path(out) / "+".join(organs)
        results.append(run_evaluation(
            loaded, protocol=dataclasses.replace(protocol, organs=organs), volumes=volumes, out=target,
            threshold=settings["fg_threshold"], tta=settings["tta"], intensity_prior=settings["intensity_prior"],
            finetune=tune, postprocess=steps, shot_fusion=shot_fusion or inf.shot_fusion, device=dev, **kwargs,
        ))
    result = combine_results(results)
    result = dataclasses.replace(result, extras={**result.extras, "model": str(bundle.root), "recipe": bundle.recipe,
                                                 "inference": {**settings, "finetune": tune, "postprocess": head_step}})
    if out is not None and len(groups) > 1:
        from fewshot.evaluation.run import output_paths

        paths = output_paths(out)
        result.to_json(paths["results"])
        atomic_write_text(paths["markdown"], result.to_markdown(
            title=f"{protocol.dataset} fold {protocol.fold}, setting {protocol.setting}, {protocol.shots}-shot "
            f"({len(groups)} label groups: {'; '.join('+'.join(g) for g in groups)})"))
    return result
