"""Evaluation-only settings of one trained checkpoint: 1/3/5 support slices per chunk, two ways to fuse
them, the foreground probability threshold and ALPNet's test-time window and cell threshold.

For each ``k`` in ``--shots``, each fusion in ``--fusions`` (``prototypes``: the shots'
prototypes pooled into one set, as SSL-ALPNet; ``scores``: the query scored against each shot
alone and the score maps averaged) and each threshold in ``--thresholds`` (a pixel is foreground
where its probability exceeds it; 0.5 = argmax), each ALP pooling window in ``--windows`` and each
ALP cell threshold in ``--alp-thresholds`` (ALPNet heads; default: the trained head's), the
checkpoint's own fold and setting are evaluated
at the native label resolution, with and without 3D largest-connected-component post-processing, side
by side in one run. No training happens here, so the rows differ only in the evaluation. Choose a
threshold on fold 0 only and put it in the recipe (``model.fg_threshold``, ``model.head.window_test``,
``model.head.threshold``).

Example::

    FEWSHOT_DATA=/work/shared/data python benchmarks/bench_shots.py \\
        --checkpoint runs/bench_acc/chaos-mr_setting1_fold0/train/checkpoints/last.ckpt --out runs/shots
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["main", "shot_table"]


def shot_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per (k, fusion, post-processing): Dice per organ, mean, precision, recall (%)."""
    organs = [o for o in rows[0]["none"]["dice"] if o != "mean"]
    alp = any("window" in r for r in rows)
    lines = [
        "| shots | fusion | threshold | "
        + ("ALP window | ALP cell threshold | " if alp else "")
        + "post-processing | " + " | ".join(organs) + " | mean | precision | recall |",
        "|---:|---|---:|" + ("---:|---:|" if alp else "") + "---|" + "---:|" * (len(organs) + 3),
    ]
    for r in rows:
        for step in ("none", "lcc"):
            sc = r[step]
            cells = [100 * sc["dice"][o] for o in (*organs, "mean")]
            cells += [100 * sc["precision"]["mean"], 100 * sc["recall"]["mean"]]
            head = f"{r.get('window', '-')} | {r.get('alp_threshold', '-')} | " if alp else ""
            lines.append(
                f"| {r['shots']} | {r['fusion']} | {r['threshold']:g} | {head}{step} | "
                + " | ".join(f"{v:.2f}" for v in cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="last.ckpt of a training run")
    p.add_argument("--shots", default="1,3,5", help="comma list of support slices per chunk")
    p.add_argument("--fusions", default="prototypes,scores", help="comma list of shot fusions")
    p.add_argument(
        "--thresholds", default=None,
        help="comma list of foreground probability thresholds (default: the checkpoint's model.fg_threshold)",
    )
    p.add_argument("--windows", default=None, help="comma list of ALP test windows (default: the trained head's)")
    p.add_argument(
        "--alp-thresholds", default=None,
        help="comma list of ALP cell thresholds (default: the trained head's)",
    )
    p.add_argument("--out", default="runs/bench_shots", help="output folder")
    args = p.parse_args(argv)
    from fewshot.cli import comma_list, quiet_logs

    quiet_logs()
    # every list is checked before the checkpoint and the scans load
    shots = comma_list(args.shots, int, option="--shots", minimum=1)
    fusions = comma_list(args.fusions, str, option="--fusions")
    given_thresholds = comma_list(args.thresholds, float, option="--thresholds") if args.thresholds else None
    windows: list[int | None] = [*comma_list(args.windows, int, option="--windows")] if args.windows else [None]
    cells: list[float | None] = (
        [*comma_list(args.alp_thresholds, float, option="--alp-thresholds")] if args.alp_thresholds else [None]
    )

    from episodes.atomic import atomic_write_json
    from fewshot.checkpoint import load_model_from_checkpoint
    from fewshot.evaluation import run_evaluation
    from fewshot.evaluation.run import inference_config
    from fewshot.pipeline import load_volumes
    from fewshot.provenance import git_commit

    loaded = load_model_from_checkpoint(args.checkpoint)
    volumes = load_volumes(loaded.config.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = given_thresholds or [loaded.config.model.fg_threshold]
    heads = [(w, c) for w in windows for c in cells]
    for (w, c), t in ((h, t) for h in heads for t in thresholds):
        # a setting the head lacks or a config rejects fails here, not as "k not possible" below
        inference_config(loaded, alp_window=w, alp_threshold=c, threshold=t)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for k in shots:
        for fusion in fusions:
            if k == 1 and any(r["shots"] == 1 for r in rows):
                continue  # with one shot both fusions are the same computation
            protocol = replace(loaded.config.data.protocol, shots=k)
            for threshold, (window, cell) in ((t, h) for t in thresholds for h in heads):
                name = (
                    f"k{k}_{fusion}"
                    + (f"_t{threshold:g}" if len(thresholds) > 1 else "")
                    + (f"_w{window}" if window is not None and len(windows) > 1 else "")
                    + (f"_c{cell:g}" if cell is not None and len(cells) > 1 else "")
                )
                try:
                    ev = run_evaluation(
                        loaded,
                        protocol=protocol,
                        volumes=volumes,
                        out=out / name,
                        progress=True,
                        postprocess=("none", "lcc"),
                        shot_fusion=fusion,
                        threshold=threshold,
                        alp_window=window,
                        alp_threshold=cell,
                    )
                except ValueError as e:  # e.g. an organ with fewer slices than k x chunks in the support scan
                    skipped.append(f"{k}-shot ({fusion}): {e}")
                    print(f"k={k} {fusion}: not possible: {e}", flush=True)
                    break
                variants = ev.extras["postprocess"]
                alp = (
                    {"window": ev.extras["alp_window_test"], "alp_threshold": ev.extras["alp_threshold"]}
                    if args.windows or args.alp_thresholds
                    else {}
                )
                rows.append(
                    {"shots": k, "fusion": fusion if k > 1 else "-", "threshold": threshold, **alp, **variants}
                )
                print(
                    f"k={k} {fusion} threshold {threshold:g}"
                    + (f" ALP window {alp['window']} cell threshold {alp['alp_threshold']:g}" if alp else "")
                    + f": mean Dice {100 * ev.dice['mean']:.2f} (LCC {100 * variants['lcc']['dice']['mean']:.2f})",
                    flush=True,
                )
    if not rows:
        raise SystemExit("no k could be evaluated: " + "; ".join(skipped))
    table = shot_table(rows)
    footer = "".join(f"\nNot evaluated: {s}" for s in dict.fromkeys(skipped)) + (
        f"\nCheckpoint {args.checkpoint} (fold {loaded.config.data.protocol.fold}, setting "
        f"{loaded.config.data.protocol.setting}, {loaded.global_step} steps, trained at commit "
        f"{loaded.payload.get('commit')}); evaluated at commit {git_commit()}; "
        f"{ev.extras.get('resolution')}.\n"
    )
    print(table + footer)
    (out / "shots.md").write_text(table + footer)
    atomic_write_json(out / "shots.json", {"checkpoint": args.checkpoint, "rows": rows})
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` for the command line: a user error (missing or corrupt checkpoint) prints one line, exit 2."""
    from fewshot.cli import run_reporting_user_errors

    return run_reporting_user_errors("bench_shots.py", lambda: main(argv))


if __name__ == "__main__":
    raise SystemExit(cli())
