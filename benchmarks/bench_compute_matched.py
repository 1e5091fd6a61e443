"""Pretraining against training longer, at about the same compute: two `fewshot study` results side by side.

An initialisation study (``--study``: pretrained inits and ``random``, each trained N steps) and a longer arm of
the same grid (``--arm``: ``random`` only, trained M > N steps, about N steps plus a pretraining's time) are read
from their ``study.json`` files. The arm's runs are relabelled ``--label`` and every run of the study is compared,
run for run (same backbone, head, fold and seed), with the arm's run: mean Dice ± std, the folds-1-4 mean, the mean
per fold, the gain over the arm with its sign test (:func:`fewshot.study.paired_gains`), and the minutes a run
took. With the same seed and a step learning-rate schedule, the arm's first N steps are the study's ``random`` runs;
the check ``same start`` prints the largest difference in mean Dice between the two at the steps both scored (0 when
the arm continues exactly those runs). It only reads results; nothing is trained.

Example::

    PYTHONPATH=. python benchmarks/bench_compute_matched.py \\
        --study benchmarks/results/init-study_chaos-mr_s1/study.json \\
        --arm benchmarks/results/init-study_chaos-mr_s1_random-4500/study.json --label "random, 4,500 steps"
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewshot.study import paired_gains, summarize

__all__ = ["compare", "main"]


def _read_runs(path: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"]
    if not runs:
        raise SystemExit(f"{path}: no runs")
    return runs


def compare(study: list[dict[str, Any]], arm: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The study's runs against the arm's (relabelled ``label``): summary, gains over the arm, and the start check.

    Returns ``{"summary", "gains", "same_start"}``; ``same_start`` is ``{"pairs", "steps", "max_abs_diff"}``: how
    the arm's curve differs from the study's ``random`` run of the same fold and seed at the steps both scored.
    """
    if {r["init"] for r in arm} != {"random"}:
        raise SystemExit(f"the arm must hold only random runs, got inits {sorted({r['init'] for r in arm})}")
    relabelled = [{**r, "init": label} for r in arm]
    rows = study + relabelled
    keys = {(r["backbone"], r["head"], r["fold"], r["seed"]) for r in relabelled}
    rows = [r for r in rows if (r["backbone"], r["head"], r["fold"], r["seed"]) in keys]  # only paired cells
    random = {(r["backbone"], r["head"], r["fold"], r["seed"]): r for r in study if r["init"] == "random"}
    diffs, steps = [], set()
    for r in relabelled:
        twin = random.get((r["backbone"], r["head"], r["fold"], r["seed"]))
        if twin is None:
            continue
        at_arm = {c["step"]: c["dice"]["mean"] for c in r.get("curve") or []}
        at_twin = {c["step"]: c["dice"]["mean"] for c in twin.get("curve") or []}
        for s in sorted(set(at_arm) & set(at_twin)):
            diffs.append(abs(at_arm[s] - at_twin[s]))
            steps.add(s)
    return {
        "summary": summarize(rows),
        "gains": paired_gains(rows, label),
        "same_start": {"pairs": len(diffs), "steps": sorted(steps), "max_abs_diff": max(diffs) if diffs else None},
    }


def _markdown(result: dict[str, Any], label: str) -> str:
    folds = sorted({f for s in result["summary"] for f in s["folds"]})
    gains = {g["init"]: g for g in result["gains"]}
    lines = [
        "| init | runs | mean ± std | folds 1-4 | " + " / ".join(f"fold {f}" for f in folds)
        + f" | gain over {label}, run for run (pairs above; sign test p) | gain, folds 1-4 | minutes a run: "
        "pretraining + training |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for s in result["summary"]:
        g = gains.get(s["init"])
        gain = "" if g is None else (
            f"{100 * g['gain'][0]:+.1f} ± {100 * g['gain'][1]:.1f} ({g['above']} of {len(g['pairs'])}; "
            f"{g['sign_p']:.2g})"
        )  # fmt: skip
        f14 = "" if g is None or g["folds_1_4"] is None else f"{100 * g['folds_1_4'][0]:+.1f}"
        later = "" if s["folds_1_4"] is None else f"{100 * s['folds_1_4'][0]:.1f}"
        m = s.get("minutes") or {}
        minutes = " + ".join("?" if m.get(k) is None else f"{m[k]:.1f}" for k in ("pretrain", "train"))
        lines.append(
            f"| {s['init']} | {s['runs']} | {100 * s['mean'][0]:.1f} ± {100 * s['mean'][1]:.1f} | {later} | "
            + " / ".join(f"{100 * s['folds'][f]:.1f}" if f in s["folds"] else "-" for f in folds)
            + f" | {gain} | {f14} | {minutes} |"
        )
    start = result["same_start"]
    if start["pairs"]:
        lines += ["", f"Same start: at steps {', '.join(map(str, start['steps']))} the arm's mean Dice differs from "
                  f"the study's random run of the same fold and seed by at most {100 * start['max_abs_diff']:.2f} "
                  f"points ({start['pairs']} comparisons)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="study.json of the initialisation study")
    parser.add_argument("--arm", type=Path, required=True, help="study.json of the longer random arm")
    parser.add_argument("--label", default="random, longer", help="the arm's name in the table")
    parser.add_argument("--out", type=Path, help="also write the table (.md) and the numbers (.json) here")
    args = parser.parse_args(argv)
    result = compare(_read_runs(args.study), _read_runs(args.arm), args.label)
    table = _markdown(result, args.label)
    print(table, end="")
    if args.out is not None:
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"label": args.label, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
