"""Evaluation cost (issue 42): scans/s of ``fewshot evaluate`` and ``fewshot segment``, with the model's support
fine-tuning and without it (``--finetune-steps 0``), and where the time goes.

Every command runs in this process (``fewshot.cli.main``) under ``cProfile``; its wall time is split into reading and
preparing the scans, loading the model, support fine-tuning, the forward passes (``predict_query``) and the rest
(scoring, post-processing, writing), from the cumulative time of the library functions in :data:`PHASES`::

    python benchmarks/bench_eval_cost.py --model MODEL --out OUT                      # evaluate on the model's fold
    python benchmarks/bench_eval_cost.py --model MODEL --out OUT --support S.nii.gz --support-mask M.nii.gz \\
        --query Q.nii.gz --organ liver --label-map chaos-mr                            # and segment one scan

``MODEL`` is a ``fewshot fit`` folder (its inference settings, fine-tuning included, apply). Writes
``eval_cost.md`` and ``eval_cost.json`` in ``OUT``; the load average is recorded with every timing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: phase -> (source file suffix, function) whose cumulative time is the phase's (none nested in another)
PHASES: dict[str, tuple[tuple[str, str], ...]] = {
    "scans": (("fewshot/pipeline.py", "prepare_fold"), ("fewshot/segment.py", "load_scan")),
    "model": (("fewshot/checkpoint.py", "load_model_from_checkpoints"),),
    "finetune": (("fewshot/evaluation/finetune.py", "finetune_on_support"),),
    "forward": (("fewshot/evaluation/scoring.py", "predict_query"),),
}


def profiled(argv: list[str]) -> dict[str, Any]:
    """Run ``fewshot ARGV`` under cProfile: wall seconds, seconds per phase, load average before and after."""
    from fewshot.cli import main

    load = os.getloadavg()
    profile = cProfile.Profile()
    t = time.perf_counter()
    code = profile.runcall(main, argv)
    wall = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"fewshot {' '.join(argv)} exited with {code}")
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    phases = {name: 0.0 for name in PHASES}
    for (path, _, func), (_, _, _, cumulative, _) in stats.items():
        for name, wanted in PHASES.items():
            if any(path.endswith(suffix) and func == fn for suffix, fn in wanted):
                phases[name] += cumulative
    phases["other"] = wall - sum(phases.values())
    return {"argv": argv, "wall_s": wall, "phases_s": phases, "load": [load, os.getloadavg()]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a `fewshot fit` folder")
    p.add_argument("--out", required=True)
    p.add_argument("--support")
    p.add_argument("--support-mask")
    p.add_argument("--query")
    p.add_argument("--organ", default="liver")
    p.add_argument("--label-map")
    p.add_argument("--evaluate-args", default="", help="more `fewshot evaluate` options, space-separated")
    args = p.parse_args(argv)
    out = Path(args.out)
    work = out / "runs"
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for tuned in (True, False):
        extra = [] if tuned else ["--finetune-steps", "0"]
        run = work / f"evaluate-{'ft' if tuned else 'noft'}"
        row = profiled(
            ["evaluate", "--model", args.model, *args.evaluate_args.split(), *extra, "--out", str(run)]
        )
        per_scan = json.loads((run / "results.json").read_text())["per_scan"]
        row.update(
            command="evaluate",
            finetune=tuned,
            scans=len({r["subject"] for r in per_scan}),
            pairs=len(per_scan),
        )
        rows.append(row)
        if args.query:
            pred = work / f"segment-{'ft' if tuned else 'noft'}.nii.gz"
            cmd = [
                "segment",
                "--model",
                args.model,
                "--support",
                args.support,
                "--support-mask",
                args.support_mask,
            ]
            cmd += ["--query", args.query, "--organ", args.organ, *extra, "--out", str(pred)]
            cmd += ["--label-map", args.label_map] if args.label_map else []
            rows.append({**profiled(cmd), "command": "segment", "finetune": tuned, "scans": 1, "pairs": 1})
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model, "rows": rows}
    (out / "eval_cost.json").write_text(json.dumps(report, indent=1))
    (out / "eval_cost.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(report: dict[str, Any]) -> str:
    names = [*PHASES, "other"]
    lines = [
        f"Evaluation cost, {report['date']}, model {report['model']}; seconds (cProfile cumulative per phase)",
        "",
        "| command | fine-tuning | query scans | organ x scan | wall s | scans/s | "
        + " | ".join(names)
        + " | load |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(names) + "---|",
    ]
    for r in report["rows"]:
        phases = " | ".join(f"{r['phases_s'][n]:.1f}" for n in names)
        lines.append(
            f"| {r['command']} | {'yes' if r['finetune'] else 'no'} | {r['scans']} | {r['pairs']} | {r['wall_s']:.1f} | "
            f"{r['scans'] / r['wall_s']:.3f} | {phases} | {r['load'][0][0]:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
