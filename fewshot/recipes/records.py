"""Typed cross-validation records (:class:`FoldRecord`) and their Markdown report.

A fold record holds one fold's scores of a trained model (Dice, precision and recall per organ, without and with
LCC post-processing), its k-shot scores, its members and their training time, and where it ran. The report
(:func:`markdown_report`) gives every fold, the mean ± std over the folds, the mean over folds 1-4 (fold 0
chose the packaged recipes' settings; folds 1-4 chose nothing), the LCC rows, a k-shot table, the published
SSL-ALPNet and GMRD rows, and the recipe, commit, hardware and time per fold beside the numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PUBLISHED", "FoldRecord", "KShot", "Scores", "markdown_report"]

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")

#: Published 1-way 1-shot Dice (%), 5-fold means: liver, right kidney, left kidney, spleen, mean
#: (SSL-ALPNet, Ouyang et al. ECCV 2020, Table 1; GMRD, TMI 2024, its best model without SAM).
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


@dataclass(frozen=True)
class Scores:
    """``{organ: score, "mean": ...}`` in [0, 1] for Dice, precision and recall."""

    dice: dict[str, float]
    precision: dict[str, float]
    recall: dict[str, float]

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Scores:
        return cls(**{k: {o: float(v) for o, v in data[k].items()} for k in ("dice", "precision", "recall")})


@dataclass(frozen=True)
class KShot:
    """One k of a fold: the scores by post-processing step, or why k was not possible; ``shared`` names the organs
    whose neighbouring chunks shared support slices."""

    scores: dict[str, Scores] = field(default_factory=dict)
    shared: str = ""
    error: str = ""


@dataclass(frozen=True)
class FoldRecord:
    """One fold of a cross-validation (see the module docstring); scores in [0, 1], times in seconds."""

    dataset: str
    setting: int
    fold: int
    recipe: str
    scores: dict[str, Scores]
    headline: str = "none"
    kshot: dict[int, KShot] = field(default_factory=dict)
    members: tuple[dict[str, Any], ...] = ()
    train_seconds: float = 0.0
    lane_seconds: float = 0.0
    eval_seconds: float = 0.0
    model: str = ""
    commit: str | None = None
    host: dict[str, Any] = field(default_factory=dict)

    @property
    def dice(self) -> dict[str, float]:
        return self.scores[self.headline].dice

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kshot"] = {str(k): v for k, v in d["kshot"].items()}
        d["members"] = list(d["members"])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoldRecord:
        return cls(
            **{k: v for k, v in data.items() if k not in ("scores", "kshot", "members")},
            scores={k: Scores.of(v) for k, v in data["scores"].items()},
            kshot={int(k): KShot(scores={s: Scores.of(v) for s, v in ks["scores"].items()}, shared=ks.get("shared", ""),
                                 error=ks.get("error", "")) for k, ks in data.get("kshot", {}).items()},
            members=tuple(data.get("members", ())),
        )


def _mean_std(values: Sequence[float]) -> str:
    m = statistics.fmean(values)
    return f"{m:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def _row(label: str, cells: Sequence[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _organs(records: Sequence[FoldRecord]) -> list[str]:
    tested = [o for o in records[0].dice if o != "mean"]
    return [o for o in ORGANS if o in tested] + [o for o in tested if o not in ORGANS]


def _host_line(h: Mapping[str, Any]) -> str:
    bf16 = "hardware bf16" if h.get("cpu_bf16") == "native" else "no hardware bf16"
    gpu = f", GPU {h['gpu']}" if h.get("gpu") else ""
    return f"{h.get('node')}, {h.get('cpus')} CPUs ({h.get('cpu') or 'unknown CPU'}, {h.get('cpu_capability')}, {bf16}){gpu}"


def markdown_report(records: Sequence[FoldRecord], *, recipe_line: str = "") -> str:
    """The report of one dataset/setting's fold records (see the module docstring)."""
    from fewshot.genesis import OBJECTIVE_NAMES

    if not records:
        return "No fold finished yet.\n"
    recs = sorted(records, key=lambda r: r.fold)
    first = recs[0]
    organs = _organs(recs)
    cols = (*organs, "mean")
    lines = [f"### {first.dataset}, setting {first.setting}, recipe {first.recipe}: 1-shot 3D Dice (%)", ""]
    if recipe_line:
        lines += [recipe_line, ""]
    lines.append("| | " + " | ".join(o.replace("_", " ") for o in organs) + " | mean | precision | recall |")
    lines.append("|---|" + "---:|" * (len(organs) + 3))
    steps = [first.headline, *(s for s in ("none", "lcc") if s != first.headline and s in first.scores)]
    for step in steps:
        suffix = "" if step == "none" else f" + {step.upper()}"
        for r in recs:
            sc = r.scores[step]
            lines.append(_row(f"fold {r.fold}{suffix}", [f"{100 * sc.dice[o]:.2f}" for o in cols]
                              + [f"{100 * sc.precision['mean']:.2f}", f"{100 * sc.recall['mean']:.2f}"]))

        def block(rs: Sequence[FoldRecord], label: str, step: str = step, suffix: str = suffix) -> None:
            cells = [_mean_std([100 * r.scores[step].dice[o] for r in rs]) for o in cols]
            cells += [_mean_std([100 * getattr(r.scores[step], k)["mean"] for r in rs]) for k in ("precision", "recall")]
            lines.append(_row(f"**{label}{suffix}**", cells))

        if len(recs) > 1:
            block(recs, f"folds {','.join(str(r.fold) for r in recs)}: mean ± std")
        later = [r for r in recs if r.fold != 0]
        # fold 0 is here and chose: the others are the number no choice saw (one other fold: its own row is)
        if len(later) > 1 and len(later) < len(recs):
            names = "1-4" if len(recs) == 5 else ",".join(str(r.fold) for r in later)
            block(later, f"folds {names} (chose nothing): mean ± std")
    if tuple(organs) == ORGANS:
        for label, pub in PUBLISHED.get((first.dataset, first.setting), []):
            lines.append(_row(f"{label}, published 5-fold", [f"{v:.2f}" for v in pub] + ["", ""]))
    lines += _kshot_table(recs, organs)
    lines += ["", "| fold | members | train min (all members) | longest member min | eval s | commit |",
              "|---:|---|---:|---:|---:|---|"]
    for r in recs:
        members = ", ".join(f"{m['name']} {m['steps']} steps" + (
            f" after {m['genesis_steps']} {OBJECTIVE_NAMES[m.get('pretrain_objective', 'genesis')].short}"
            if m.get("genesis_steps") else "") for m in r.members)
        lines.append(f"| {r.fold} | {members} | {r.train_seconds / 60:.1f} | {r.lane_seconds / 60:.1f} | "
                     f"{r.eval_seconds:.0f} | {r.commit} |")
    hosts = list(dict.fromkeys(_host_line(r.host) for r in recs if r.host))
    if hosts:
        lines += ["", f"Host: {'; '.join(hosts)}."]
    return "\n".join(lines) + "\n"


def _kshot_table(recs: Sequence[FoldRecord], organs: Sequence[str]) -> list[str]:
    ks = sorted({k for r in recs for k in r.kshot})
    if not ks:
        return []
    lines = ["", "k support slices per chunk, the same models and settings:", "",
             "| shots | folds | " + " | ".join(o.replace("_", " ") for o in organs) + " | mean | mean + LCC |",
             "|---:|---|" + "---:|" * (len(organs) + 2)]
    notes = []
    for k in ks:
        ok = [(r, r.kshot[k]) for r in recs if k in r.kshot and not r.kshot[k].error]
        notes += [f"{k}-shot, fold {r.fold}: not possible: {r.kshot[k].error}" for r in recs
                  if k in r.kshot and r.kshot[k].error]
        notes += [f"{k}-shot, fold {r.fold}: {ks_.shared}; neighbouring chunks shared support slices"
                  for r, ks_ in ok if ks_.shared]
        if not ok:
            continue
        cells = [_mean_std([100 * ks_.scores["none"].dice[o] for _, ks_ in ok]) for o in (*organs, "mean")]
        cells.append(_mean_std([100 * ks_.scores["lcc"].dice["mean"] for _, ks_ in ok]) if all(
            "lcc" in ks_.scores for _, ks_ in ok) else "")
        lines.append(f"| {k} | {','.join(str(r.fold) for r, _ in ok)} | " + " | ".join(cells) + " |")
    return lines + (["", *notes] if notes else [])
