"""``fewshot study``: does the initialisation matter for few-shot medical segmentation?

Trains and evaluates every (backbone, init, head) combination for several seeds and folds
under one base config, then reports mean ± std of the 3D Dice over seeds × folds (per organ,
and the mean of folds 1-4 beside it) as a Markdown table, a JSON file and a plot, with each init's
gain over the first, run for run (same fold and seed, with a sign test). ``genesis``
and ``mim`` without a weights file first pretrain the encoder on the fold's training slices
(no labels), so the comparison needs nothing but the data. With ``eval_every`` each run is also
scored at its kept checkpoints, which gives learning curves and the steps each init needs to
reach a Dice (``reach``). Runs are resumable: an interrupted study continues from the finished
runs' checkpoints and reuses every evaluation of an unchanged checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_json, atomic_write_text, atomic_writer, read_json
from episodes.data.preprocess import unit_slices
from episodes.data.volumes import Volume
from fewshot.backbones.inits import get_init, parse_init
from fewshot.backbones.inits.files import sha256_file
from fewshot.checkpoint import snapshot_path
from fewshot.config import ExperimentConfig, load_config
from fewshot.device import default_device
from fewshot.evaluation import EvaluationResult, run_evaluation
from fewshot.genesis import GenesisResult
from fewshot.pipeline import load_volumes, split_volumes
from fewshot.training import train

__all__ = [
    "PRETRAINERS", "StudySpec", "fold_genesis_weights", "paired_gains", "run_study", "sign_test", "steps_to_reach",
    "summarize",
]

logger = logging.getLogger("fewshot")


@dataclass(frozen=True)
class StudySpec:
    """The grid: every backbone × init × head, each for every seed and fold.

    ``steps``: training steps per run (default: the config's). ``genesis_steps``: pretraining steps of the
    ``genesis``/``mim`` files the study makes (``pretrain_bf16``: under bfloat16 autocast). ``eval_every``: keep a
    checkpoint every that many steps and score each (learning curves). ``reach``: mean-Dice levels (0-1) whose
    steps-to-reach are reported (needs ``eval_every``). ``weights``: per init scheme, a weights file, or the name
    of a pretrainer (``genesis``, ``mim``) for that fold's pretrained file (``meanvar=mim``: Transfusion's
    mean/var of the MIM weights).
    """

    backbones: tuple[str, ...]
    inits: tuple[str, ...]
    heads: tuple[str, ...] = ("alpnet",)
    seeds: tuple[int, ...] = (0, 1)
    folds: tuple[int, ...] = (0,)
    steps: int | None = None
    genesis_steps: int = 200
    pretrain_bf16: bool = False
    eval_every: int | None = None
    reach: tuple[float, ...] = ()
    weights: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("backbones", "inits", "heads", "seeds", "folds"):
            if not getattr(self, name):
                raise ValueError(f"study needs at least one of {name}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.reach and self.eval_every is None:
            raise ValueError("steps-to-reach (reach) needs kept checkpoints to score: set eval_every")
        bad = [x for x in self.reach if not 0.0 < x <= 1.0]
        if bad:
            raise ValueError(f"reach levels are mean Dice in (0, 1], got {bad}")
        unknown = set(self.weights) - {i.split(":")[0] for i in self.inits}
        if unknown:
            raise ValueError(
                f"weights given for inits {sorted(unknown)} that are not in the study {self.inits}"
            )
        for kind, source in self.weights.items():  # a missing file fails now, not after the runs before it
            if source not in PRETRAINERS and not Path(source).is_file():
                raise ValueError(f"weights file for {kind} not found: {source} (--weights {kind}=FILE)")
        for init in self.inits:  # validate every init before anything is trained
            scheme = get_init(init)
            parse_init(init)
            if scheme.needs_weights and scheme.name not in self.weights and scheme.name not in PRETRAINERS:
                raise ValueError(
                    f"init {init!r} needs a weights file and the study cannot make one; pass --weights {scheme.name}=FILE"
                )


def fold_genesis_weights(
    cfg: ExperimentConfig, volumes: list[Volume], steps: int, out: Path, *, bf16: bool = False,
    objective: str = "genesis",
) -> tuple[str, GenesisResult | None]:
    """Models Genesis weights pretrained on the fold's training slices (no labels), written to ``out``.

    The slices are those the episodes train on: in setting 2 (``cfg.data.train_exclusions()``) every slice
    holding a held-out organ is left out.

    The encoder is pretrained as ``cfg`` builds it (its ``truncate`` and ``output_stride``); ``bf16``: under
    bfloat16 autocast; ``objective``: ``"genesis"`` or ``"mim"`` (:func:`fewshot.genesis.pretrain_genesis`). An
    interrupted pretraining resumes from ``<out>.partial``.

    An existing ``out`` is reused (the result is then ``None``), so interrupted studies resume, but only when its
    metadata show these settings and these training slices; a file pretrained otherwise (other steps, seed,
    ``bf16``, backbone, or other scans) raises a ``ValueError`` naming what differs, instead of being reused.
    """
    from fewshot.genesis import run_pretrain_genesis, slices_sha256

    _, train_raw, _ = split_volumes(cfg.data.protocol, volumes)
    # setting 2: the slices the episodes drop are dropped here too, so no held-out organ is pretrained on
    excluded = cfg.data.train_exclusions()
    images = unit_slices(train_raw, cfg.data.size, exclude_organs=excluded)
    logger.info(
        "%s pretraining data: %d slices of %d training scans%s", objective, len(images), len(train_raw),
        f" (without every slice holding {', '.join(excluded)})" if excluded else "",
    )
    if out.is_file():
        backbone = cfg.model.backbone
        wanted = {"backbone": backbone.name, "in_channels": backbone.in_channels, "truncate": backbone.truncate,
                  "steps": steps, "seed": cfg.train_seed, "bf16": bf16, "objective": objective,
                  "data_sha256": slices_sha256(images)}
        _check_pretrained(out, wanted)
        return str(out), None
    result = run_pretrain_genesis(
        images,
        backbone=cfg.model.backbone.name,
        steps=steps,
        out=out,
        seed=cfg.train_seed,
        in_channels=cfg.model.backbone.in_channels,
        device=str(default_device()),
        truncate=cfg.model.backbone.truncate,
        output_stride=cfg.model.backbone.output_stride,
        bf16=bf16,
        objective=objective,
    )
    return str(out), result


def _check_pretrained(path: Path, wanted: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` when the weights file at ``path`` was not pretrained with ``wanted`` (its metadata)."""
    from fewshot.backbones.inits.files import load_weights_file

    _, meta = load_weights_file(path, advice="delete it to pretrain again")
    meta = meta or {}
    got = {**meta, "bf16": bool(meta.get("bf16", False)), "objective": meta.get("objective", "genesis")}
    differ = [
        f"{k} {got.get(k)!r} (this run: {v!r})" if k != "data_sha256" else "other training slices"
        for k, v in wanted.items()
        if got.get(k) != v
    ]
    if differ:
        raise ValueError(
            f"{path}: these pretrained weights were made with {', '.join(differ)}; they are not reused. "
            "Delete the file to pretrain again with this run's settings, or write the run to another folder"
        )


#: Init schemes whose weights file the study can make itself from the fold's training scans (no labels).
PRETRAINERS: dict[str, Callable[..., tuple[str, GenesisResult | None]]] = {
    "genesis": fold_genesis_weights,
    "mim": functools.partial(fold_genesis_weights, objective="mim"),
}


def _mean_std(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def steps_to_reach(curve: list[dict[str, Any]], level: float) -> int | None:
    """The first step of ``curve`` (``[{"step", "dice": {"mean", ...}}]``, by step) whose mean Dice is at least
    ``level``; ``None`` when no scored step reaches it."""
    return next((c["step"] for c in sorted(curve, key=lambda c: c["step"]) if c["dice"]["mean"] >= level), None)


def _curve_means(curve: list[dict[str, Any]] | None) -> dict[int, float]:
    """A run's learning curve as ``{step: mean Dice}`` (empty for a run without one)."""
    return {c["step"]: c["dice"]["mean"] for c in curve or []}


#: Keys of a :func:`summarize` entry that are not an organ's (or the mean's) Dice.
_NOT_DICE = ("backbone", "init", "head", "runs", "folds", "folds_1_4", "reach", "curve", "minutes")


def _mean_or_none(vals: list[float | None]) -> float | None:
    return None if not vals or any(v is None for v in vals) else statistics.fmean(v for v in vals if v is not None)


def summarize(rows: list[dict[str, Any]], reach: tuple[float, ...] = ()) -> list[dict[str, Any]]:
    """Group runs by (backbone, init, head): mean ± std (over seeds × folds) per organ and overall.

    Each entry also has ``folds`` (``{fold: mean Dice over its seeds}``), ``folds_1_4`` (mean ± std of the mean
    Dice over the runs of folds other than 0, the folds that chose no setting; ``None`` when there are none) and,
    for runs with a ``curve``, ``curve`` (``[{"step", "mean", "std"}]`` over the runs) and ``reach``
    (``{level: {"median": steps or None, "reached": runs that reached it}}``; a run that never reaches a level
    counts as never, so the median is ``None`` when half or more never did). Runs with ``train_minutes`` also
    give ``minutes`` (``{"pretrain", "train"}``: mean minutes a run spent pretraining its weights, 0 without
    any, and training; ``None`` where a run's time is unknown).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["init"], r["head"]), []).append(r)
    out = []
    for (backbone, init, head), runs in groups.items():
        organs = list(runs[0]["dice"])
        entry: dict[str, Any] = {"backbone": backbone, "init": init, "head": head, "runs": len(runs)}
        for organ in organs:
            entry[organ] = _mean_std([r["dice"][organ] for r in runs])
        folds = sorted({r["fold"] for r in runs})
        entry["folds"] = {f: statistics.fmean(r["dice"]["mean"] for r in runs if r["fold"] == f) for f in folds}
        later = [r["dice"]["mean"] for r in runs if r["fold"] != 0]
        entry["folds_1_4"] = _mean_std(later) if later else None
        if any("train_minutes" in r for r in runs):
            entry["minutes"] = {k: _mean_or_none([r.get(f"{k}_minutes") for r in runs]) for k in ("pretrain", "train")}
        curves = [r["curve"] for r in runs if r.get("curve")]
        if curves and len(curves) == len(runs):
            at = [_curve_means(curve) for curve in curves]
            steps = sorted(set.intersection(*(set(a) for a in at)))
            entry["curve"] = [{"step": s, **dict(zip(("mean", "std"), _mean_std([a[s] for a in at])))} for s in steps]
            entry["reach"] = {}
            for level in reach:
                got = sorted(math.inf if (n := steps_to_reach(c, level)) is None else n for c in curves)
                median = statistics.median(got)
                entry["reach"][level] = {
                    "median": None if math.isinf(median) else median,
                    "reached": sum(not math.isinf(g) for g in got),
                }
        out.append(entry)
    return out


def sign_test(above: int, below: int) -> float:
    """Two-sided exact sign test: the probability, under a fair coin, of a split of ``above + below`` at least as
    lopsided as this one (1.0 for no pairs)."""
    n, k = above + below, min(above, below)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def paired_gains(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each other init's gain in mean Dice over the ``baseline`` init, run for run.

    A run pairs with the baseline run of the same backbone, head, fold and seed (the same training seed and
    evaluation), which removes the fold and seed spread that the summary's std mixes in.
    One entry per (backbone, init, head) with at least one pair: ``pairs`` (``[{"fold", "seed", "gain"}]`` by fold,
    then seed), ``gain`` (mean ± std over the pairs), ``above`` (pairs with a positive gain), ``sign_p`` (the
    two-sided exact sign test of the gains: how likely as lopsided a split of the nonzero gains is if the init made no
    difference) and ``folds_1_4`` (mean ± std over the pairs of folds other than 0; ``None`` when there are none).
    When every paired run has a ``curve``, ``curve`` gives the same at each step they all scored:
    ``[{"step", "gain", "above", "sign_p"}]``.
    """
    base = {(r["backbone"], r["head"], r["fold"], r["seed"]): r for r in rows if r["init"] == baseline}
    groups: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r in rows:
        partner = base.get((r["backbone"], r["head"], r["fold"], r["seed"]))
        if r["init"] != baseline and partner is not None:
            groups.setdefault((r["backbone"], r["init"], r["head"]), []).append((r, partner))
    out = []
    for (backbone, init, head), matched in groups.items():
        matched.sort(key=lambda m: (m[0]["fold"], m[0]["seed"]))
        pairs = [{"fold": r["fold"], "seed": r["seed"], "gain": r["dice"]["mean"] - b["dice"]["mean"]} for r, b in matched]
        gains = [p["gain"] for p in pairs]
        later = [p["gain"] for p in pairs if p["fold"] != 0]
        entry = {
            "backbone": backbone, "init": init, "head": head, "baseline": baseline, "pairs": pairs,
            "gain": _mean_std(gains), **_split(gains), "folds_1_4": _mean_std(later) if later else None,
        }  # fmt: skip
        curves = [(_curve_means(r.get("curve")), _curve_means(b.get("curve"))) for r, b in matched]
        if all(r_at and b_at for r_at, b_at in curves):
            steps = sorted(set.intersection(*(set(r_at) & set(b_at) for r_at, b_at in curves)))
            entry["curve"] = []
            for step in steps:
                at = [r_at[step] - b_at[step] for r_at, b_at in curves]
                entry["curve"].append({"step": step, "gain": statistics.fmean(at), **_split(at)})
        out.append(entry)
    return out


def _split(gains: list[float]) -> dict[str, Any]:
    """``above``: how many gains are positive; ``sign_p``: the sign test of positive against negative."""
    above, below = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    return {"above": above, "sign_p": sign_test(above, below)}


def _gains_markdown(gains: Sequence[dict[str, Any]]) -> list[str]:
    if not gains:
        return []
    baseline = gains[0]["baseline"]
    lines = [
        "", f"Gain in mean Dice over `{baseline}`, run for run (the same backbone, head, fold and seed):", "",
        "| backbone | init | head | pairs | gain | folds 1-4 | above | sign test p | by fold (seeds in order) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for g in gains:
        by_fold: dict[int, list[str]] = {}
        for p in g["pairs"]:
            by_fold.setdefault(p["fold"], []).append(f"{100 * p['gain']:+.1f}")
        f14 = "-" if g["folds_1_4"] is None else f"{100 * g['folds_1_4'][0]:+.1f} ± {100 * g['folds_1_4'][1]:.1f}"
        lines.append(
            f"| {g['backbone']} | {g['init']} | {g['head']} | {len(g['pairs'])} | {100 * g['gain'][0]:+.1f} ± "
            f"{100 * g['gain'][1]:.1f} | {f14} | {g['above']} of {len(g['pairs'])} | {g['sign_p']:.2f} | "
            + "; ".join(f"{f}: {' / '.join(v)}" for f, v in by_fold.items()) + " |"
        )
    curved = [g for g in gains if g.get("curve")]
    if curved:
        steps = [c["step"] for c in curved[0]["curve"]]
        lines += ["", f"The same gain over `{baseline}` after each number of training steps (pairs above; sign test p):",
                  "", "| backbone | init | head | " + " | ".join(f"step {n}" for n in steps) + " |",
                  "|---|---|---|" + "---:|" * len(steps)]  # fmt: skip
        for g in curved:
            at = {c["step"]: c for c in g["curve"]}
            cells = [f"{100 * at[n]['gain']:+.1f} ({at[n]['above']} of {len(g['pairs'])}; {at[n]['sign_p']:.2g})"
                     if n in at else "-" for n in steps]  # fmt: skip
            lines.append(f"| {g['backbone']} | {g['init']} | {g['head']} | " + " | ".join(cells) + " |")
    return lines


def _markdown(summary: list[dict[str, Any]], gains: Sequence[dict[str, Any]] = ()) -> str:
    organs = [k for k in summary[0] if k not in _NOT_DICE]
    later = any(s["folds_1_4"] is not None for s in summary)
    timed = any("minutes" in s for s in summary)
    lines = [
        "| backbone | init | head | runs | " + " | ".join(organs) + (" | folds 1-4 mean" if later else "")
        + (" | minutes a run: pretraining + training" if timed else "") + " |",
        "|---|---|---|---:|" + "---:|" * (len(organs) + later + timed),
    ]
    for s in summary:
        cells = [f"{100 * s[o][0]:.1f} ± {100 * s[o][1]:.1f}" for o in organs]
        if later:
            f14 = s["folds_1_4"]
            cells.append("-" if f14 is None else f"{100 * f14[0]:.1f} ± {100 * f14[1]:.1f}")
        if timed:
            m = s.get("minutes") or {}
            cells.append(" + ".join("?" if m.get(k) is None else f"{m[k]:.1f}" for k in ("pretrain", "train")))
        lines.append(
            f"| {s['backbone']} | {s['init']} | {s['head']} | {s['runs']} | " + " | ".join(cells) + " |"
        )
    folds = sorted({f for s in summary for f in s["folds"]})
    if len(folds) > 1:
        lines += ["", "Mean Dice per fold (mean over seeds):", ""]
        lines.append("| backbone | init | head | " + " | ".join(f"fold {f}" for f in folds) + " |")
        lines.append("|---|---|---|" + "---:|" * len(folds))
        for s in summary:
            cells = [f"{100 * s['folds'][f]:.1f}" if f in s["folds"] else "-" for f in folds]
            lines.append(f"| {s['backbone']} | {s['init']} | {s['head']} | " + " | ".join(cells) + " |")
    lines += _gains_markdown(gains)
    if any(s.get("curve") for s in summary):
        steps = [c["step"] for c in summary[0]["curve"]]
        levels = list(summary[0].get("reach") or {})
        lines += ["", "Mean Dice (± std over runs) after each number of training steps"
                  + (", and the median steps to reach a mean Dice (runs that reached it):" if levels else ":"), ""]
        head = [f"step {n}" for n in steps] + [f"to {100 * lv:g}" for lv in levels]
        lines.append("| backbone | init | head | " + " | ".join(head) + " |")
        lines.append("|---|---|---|" + "---:|" * len(head))
        for s in summary:
            at = {c["step"]: c for c in s.get("curve") or []}
            cells = [f"{100 * at[n]['mean']:.1f} ± {100 * at[n]['std']:.1f}" if n in at else "-" for n in steps]
            for lv in levels:
                r = s["reach"][lv]
                median = "never" if r["median"] is None else f"{r['median']:g}"
                cells.append(f"{median} ({r['reached']}/{s['runs']})")
            lines.append(f"| {s['backbone']} | {s['init']} | {s['head']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Printed when the optional plotting dependency is missing (``fewshot study`` still writes its table).
NO_MATPLOTLIB = "study.png not written: matplotlib is not installed (pip install 'fewshot-medseg[plots]')"


def _plot(summary: list[dict[str, Any]], path: Path) -> bool:
    """Write the chart (bars: mean Dice ± std; with learning curves, a second panel of mean Dice ± std against
    training steps); ``False`` (and nothing written) when matplotlib, an optional extra, is missing."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [s for s in summary if s.get("curve")]
    labels = [f"{s['backbone']}\n{s['init']}\n{s['head']}" for s in summary]
    means = [100 * s["mean"][0] for s in summary]
    stds = [100 * s["mean"][1] for s in summary]
    width = max(4.0, 1.2 * len(summary))
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(width + (5.0 if curves else 0.0), 3.8), squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(summary)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("mean 3D Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title("1-shot Dice by initialisation\n(mean ± std over seeds × folds)", fontsize=9)
    if curves:
        ax = axes[0][1]
        for s in curves:
            steps = [c["step"] for c in s["curve"]]
            mean = [100 * c["mean"] for c in s["curve"]]
            std = [100 * c["std"] for c in s["curve"]]
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{s['backbone']} {s['init']} {s['head']}")
            ax.fill_between(steps, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training steps")
        ax.set_ylabel("mean 3D Dice (%)")
        ax.set_title("learning curves (mean ± std over seeds × folds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_writer(path) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return True


def _scored(checkpoint: Path, volumes: list[Volume], out: Path) -> dict[str, float]:
    """Dice of :func:`run_evaluation` of ``checkpoint``, results written in ``out``; an earlier score in ``out``
    of the same checkpoint file (its sha256 in ``out/scored.json``) is reused instead of evaluating again."""
    digest = sha256_file(checkpoint)
    record = out / "scored.json"
    if record.is_file():
        prev = read_json(record, "study score")
        if prev.get("checkpoint_sha256") == digest:
            return {k: float(v) for k, v in prev["dice"].items()}
    ev: EvaluationResult = run_evaluation(checkpoint, volumes=volumes, out=out)
    atomic_write_json(record, {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "dice": dict(ev.dice)})
    return dict(ev.dice)


def _pretrain_minutes(weights: str | None) -> float | None:
    """Minutes spent pretraining ``weights``: 0 for none, the file's recorded wall time (``fewshot pretrain`` files
    record ``seconds``), ``None`` when the file does not say."""
    if weights is None:
        return 0.0
    from fewshot.backbones.inits.files import load_weights_file

    seconds = (load_weights_file(weights)[1] or {}).get("seconds")
    return None if seconds is None else float(seconds) / 60


def _init_weights(
    spec: StudySpec, init: str, base_config: Any, run_over: Mapping[str, Any], volumes: list[Volume], out: Path,
    name: str,
) -> str | None:
    """The weights file of ``init`` for one run: ``spec.weights``' file, or the fold's pretrained file (made
    first when missing) when that names a pretrainer or the init needs weights the study can make."""
    kind = get_init(init).name
    source = spec.weights.get(kind)
    if source is None and get_init(init).needs_weights:
        source = kind
    if source not in PRETRAINERS:
        return source
    fold_cfg = load_config(base_config, {k: v for k, v in run_over.items() if not k.startswith("model.init")})
    path, _ = PRETRAINERS[source](fold_cfg, volumes, spec.genesis_steps, out / source / f"{name}.pt",
                                  bf16=spec.pretrain_bf16)
    return path


def _study_cell(spec: StudySpec, base_config: Any, overrides: Mapping[str, Any], out_dir: str) -> None:
    """One (fold, seed) cell of a study with ``jobs > 1``, in a worker process: its runs, no summary."""
    run_study(spec, base_config=base_config, overrides=overrides, out_dir=out_dir, summary=False)


def run_study(
    spec: StudySpec,
    *,
    base_config: Any = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path = "fewshot-study",
    jobs: int = 1,
    threads: int | None = None,
    summary: bool = True,
) -> str:
    """Run the grid; writes ``study.json`` (spec, overrides, commit, environment, every run and the summary),
    ``study.md``, ``study.png`` and ``config.yaml`` (the resolved base config) in ``out_dir``; returns the table.

    ``jobs > 1``: the (fold, seed) cells run side by side, each in a spawned process with ``threads`` torch threads
    (default: the cores shared out) and its output in ``out_dir/logs/fold<F>_seed<S>.log``; the summary is then
    made from their runs, which are not trained or scored again. ``summary=False``: run, write and return nothing
    else (a worker's cell).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    base = load_config(base_config, dict(overrides or {}))
    for fold in spec.folds:  # a fold the protocol lacks fails here, before any folder is made
        load_config(base_config, {**dict(overrides or {}), "data.protocol.fold": fold})
    out.mkdir(parents=True, exist_ok=True)
    cells = list(itertools.product(spec.folds, spec.seeds))
    if jobs > 1 and len(cells) > 1:
        from fewshot.recipes.jobs import Job, available_cores, run_jobs

        per_job = threads or max(1, available_cores() // min(jobs, len(cells)))
        run_jobs(
            [
                Job(name=f"fold{f}_seed{s}", fn=_study_cell, log=out / "logs" / f"fold{f}_seed{s}.log",
                    args=(replace(spec, folds=(f,), seeds=(s,)), base_config, dict(overrides or {}), str(out)),
                    threads=per_job)
                for f, s in cells
            ],
            parallel=jobs,
            on_done=lambda i, _: None,
        )  # fmt: skip
    volumes = load_volumes(base.data)
    rows: list[dict[str, Any]] = []
    pretrain_minutes: dict[str | None, float | None] = {}  # by weights file: each file is read once
    for fold, seed, backbone, init, head in itertools.product(  # fold by fold: a stopped study has whole folds
        spec.folds, spec.seeds, spec.backbones, spec.inits, spec.heads
    ):
        name = f"{backbone}_{init.replace(':', '-')}_{head}_seed{seed}_fold{fold}"
        run_over: dict[str, Any] = {
            **dict(overrides or {}),
            "model.backbone.name": backbone,
            "model.init.scheme": init,
            "model.head.name": head,
            "seed": seed,
            "data.protocol.fold": fold,
            "out_dir": str(out / "runs" / name),
        }
        if backbone != base.model.backbone.name:
            run_over["model.backbone.truncate"] = None
        if spec.steps is not None:
            run_over["train.steps"] = spec.steps
        if spec.eval_every is not None:
            run_over["train.keep_every"] = spec.eval_every
        weights = run_over["model.init.weights"] = _init_weights(
            spec, init, base_config, run_over, volumes, out, f"{backbone}_fold{fold}_seed{seed}"
        )
        if weights not in pretrain_minutes:
            pretrain_minutes[weights] = _pretrain_minutes(weights)
        cfg = load_config(base_config, run_over)
        result = train(cfg, volumes=volumes, resume=True)
        assert result.checkpoint is not None
        run_dir = Path(cfg.out_dir)
        dice = _scored(Path(result.checkpoint), volumes, run_dir / "eval")
        curve = []
        if spec.eval_every is not None:
            for step in range(spec.eval_every, result.steps, spec.eval_every):
                curve.append({"step": step, "dice": _scored(snapshot_path(run_dir, step), volumes,
                                                             run_dir / f"eval-step{step}")})
            curve.append({"step": result.steps, "dice": dice})
        # the record of the call that trained (a rerun of a finished run trains nothing, at 0 steps/s)
        steps_per_s = read_json(run_dir / "train_result.json", "training record")["steps_per_s"]
        rows.append(
            {
                "backbone": backbone,
                "init": init,
                "head": head,
                "seed": seed,
                "fold": fold,
                "dice": dice,
                "curve": curve,
                "steps": result.steps,
                "steps_per_s": steps_per_s,
                "pretrain_minutes": pretrain_minutes[weights],
                "train_minutes": result.steps / steps_per_s / 60 if steps_per_s > 0 else None,
                "run_dir": cfg.out_dir,
            }
        )
    if not summary:
        return ""
    groups = summarize(rows, spec.reach)
    gains = paired_gains(rows, spec.inits[0])
    table = _markdown(groups, gains)
    from fewshot.config import save_config
    from fewshot.provenance import environment, git_commit

    payload = {
        "spec": {**asdict(spec), "weights": dict(spec.weights)},
        "base_config": None if base_config is None else str(base_config),
        "overrides": dict(overrides or {}),
        "commit": git_commit(),
        "environment": environment(),
        "runs": rows,
        "summary": groups,
        "gains": gains,
    }
    save_config(base, out / "config.yaml")  # the base config as resolved (each run's own is in its folder)
    atomic_write_json(out / "study.json", payload)
    atomic_write_text(out / "study.md", table)
    if not _plot(groups, out / "study.png"):
        print(NO_MATPLOTLIB)
    return table
