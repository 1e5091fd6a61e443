"""``fewshot study``: does the initialisation matter for few-shot medical segmentation?

Trains and evaluates every (backbone, init, head) combination for several seeds and folds
under one base config, then reports mean ± std of the 3D Dice over seeds × folds as a
Markdown table, a JSON file and a bar plot. ``genesis`` without a weights file first runs
the built-in Models Genesis pretraining on the fold's training slices (no labels), so the
comparison needs nothing but the data. Runs are resumable: an interrupted study continues
from the finished runs' checkpoints.
"""

from __future__ import annotations

import functools
import itertools
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_json, atomic_write_text, atomic_writer
from episodes.data.preprocess import unit_slices
from episodes.data.volumes import Volume
from fewshot.backbones.inits import get_init, parse_init
from fewshot.config import ExperimentConfig, load_config
from fewshot.device import default_device
from fewshot.evaluation import EvaluationResult, run_evaluation
from fewshot.genesis import GenesisResult
from fewshot.pipeline import load_volumes, split_volumes
from fewshot.training import train

__all__ = ["PRETRAINERS", "StudySpec", "fold_genesis_weights", "run_study", "summarize"]


@dataclass(frozen=True)
class StudySpec:
    """The grid: every backbone × init × head, each for every seed and fold."""

    backbones: tuple[str, ...]
    inits: tuple[str, ...]
    heads: tuple[str, ...] = ("alpnet",)
    seeds: tuple[int, ...] = (0, 1)
    folds: tuple[int, ...] = (0,)
    steps: int | None = None
    genesis_steps: int = 200
    weights: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("backbones", "inits", "heads", "seeds", "folds"):
            if not getattr(self, name):
                raise ValueError(f"study needs at least one of {name}")
        unknown = set(self.weights) - {i.split(":")[0] for i in self.inits}
        if unknown:
            raise ValueError(
                f"weights given for inits {sorted(unknown)} that are not in the study {self.inits}"
            )
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

    The encoder is pretrained as ``cfg`` builds it (its ``truncate`` and ``output_stride``); ``bf16``: under
    bfloat16 autocast; ``objective``: ``"genesis"`` or ``"mim"`` (:func:`fewshot.genesis.pretrain_genesis`). An
    interrupted pretraining resumes from ``<out>.partial``.

    An existing ``out`` is reused (the result is then ``None``), so interrupted studies resume, but only when its
    metadata show these settings and these training slices; a file pretrained otherwise (other steps, seed,
    ``bf16``, backbone, or other scans) raises a ``ValueError`` naming what differs, instead of being reused.
    """
    from fewshot.genesis import run_pretrain_genesis, slices_sha256

    _, train_raw, _ = split_volumes(cfg.data.protocol, volumes)
    images = unit_slices(train_raw, cfg.data.size)
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


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by (backbone, init, head): mean ± std (over seeds × folds) per organ and overall."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["init"], r["head"]), []).append(r)
    out = []
    for (backbone, init, head), runs in groups.items():
        organs = list(runs[0]["dice"])
        entry: dict[str, Any] = {"backbone": backbone, "init": init, "head": head, "runs": len(runs)}
        for organ in organs:
            vals = [r["dice"][organ] for r in runs]
            entry[organ] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        out.append(entry)
    return out


def _markdown(summary: list[dict[str, Any]]) -> str:
    organs = [k for k in summary[0] if k not in ("backbone", "init", "head", "runs")]
    lines = [
        "| backbone | init | head | runs | " + " | ".join(organs) + " |",
        "|---|---|---|---:|" + "---:|" * len(organs),
    ]
    for s in summary:
        cells = [f"{100 * s[o][0]:.1f} ± {100 * s[o][1]:.1f}" for o in organs]
        lines.append(
            f"| {s['backbone']} | {s['init']} | {s['head']} | {s['runs']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


#: Printed when the optional plotting dependency is missing (``fewshot study`` still writes its table).
NO_MATPLOTLIB = "study.png not written: matplotlib is not installed (pip install 'fewshot-medseg[plots]')"


def _plot(summary: list[dict[str, Any]], path: Path) -> bool:
    """Write the bar chart; ``False`` (and nothing written) when matplotlib, an optional extra, is missing."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s['backbone']}\n{s['init']}\n{s['head']}" for s in summary]
    means = [100 * s["mean"][0] for s in summary]
    stds = [100 * s["mean"][1] for s in summary]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(summary)), 3.5))
    ax.bar(range(len(summary)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("mean 3D Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title("1-shot Dice by initialisation (mean ± std over seeds × folds)")
    fig.tight_layout()
    with atomic_writer(path) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return True


def run_study(
    spec: StudySpec,
    *,
    base_config: Any = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path = "fewshot-study",
) -> str:
    """Run the grid; writes ``study.json``, ``study.md``, ``study.png`` in ``out_dir``; returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(base_config, dict(overrides or {}))
    volumes = load_volumes(base.data)
    rows: list[dict[str, Any]] = []
    for backbone, init, head, seed, fold in itertools.product(
        spec.backbones, spec.inits, spec.heads, spec.seeds, spec.folds
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
        kind = get_init(init).name
        run_over["model.init.weights"] = spec.weights.get(kind)
        if run_over["model.init.weights"] is None and get_init(init).needs_weights:
            fold_cfg = load_config(base_config, {k: v for k, v in run_over.items() if not k.startswith("model.init")})
            run_over["model.init.weights"], _ = PRETRAINERS[kind](
                fold_cfg, volumes, spec.genesis_steps, out / kind / f"{backbone}_fold{fold}_seed{seed}.pt"
            )
        cfg = load_config(base_config, run_over)
        result = train(cfg, volumes=volumes, resume=True)
        assert result.checkpoint is not None
        ev: EvaluationResult = run_evaluation(
            result.checkpoint, volumes=volumes, out=Path(cfg.out_dir) / "eval"
        )
        rows.append(
            {
                "backbone": backbone,
                "init": init,
                "head": head,
                "seed": seed,
                "fold": fold,
                "dice": dict(ev.dice),
                "steps": result.steps,
                "steps_per_s": result.steps_per_s,
                "run_dir": cfg.out_dir,
            }
        )
    summary = summarize(rows)
    table = _markdown(summary)
    payload = {"spec": {**asdict(spec), "weights": dict(spec.weights)}, "runs": rows, "summary": summary}
    atomic_write_json(out / "study.json", payload)
    atomic_write_text(out / "study.md", table)
    if not _plot(summary, out / "study.png"):
        print(NO_MATPLOTLIB)
    return table
