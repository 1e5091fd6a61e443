"""Models Genesis pretraining cost (issue 42): seconds per step in float32 (the recipes') and with the opt-in bf16
autocast, side by side, and the restoration loss each reaches, for every recipe member with ``genesis_steps``.

The slices are the fold's training slices as ``fewshot fit`` pretrains on them (:func:`episodes.data.preprocess.unit_slices`);
the runs alternate (fp32, bf16, fp32, bf16...) since the machine is shared, and the load average is recorded. The
pair generation (``genesis_pair``, in the training process) is timed apart::

    python benchmarks/bench_genesis_cost.py --recipes ct-cpu --steps 100 --out genesis-cost   # FEWSHOT_DATA set
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch


def main(argv: Sequence[str] | None = None) -> int:
    from episodes.data.preprocess import unit_slices
    from fewshot.genesis import genesis_pair, run_pretrain_genesis
    from fewshot.pipeline import load_volumes, split_volumes
    from fewshot.recipes.spec import load_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="ct-cpu")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.recipes.split(","):
        recipe = load_recipe(name)
        torch.set_num_threads(recipe.threads_per_member or 1)
        for i, member in enumerate(recipe.members):
            if not member.genesis_steps:
                continue
            cfg = recipe.member_config(i)
            _, train_raw, _ = split_volumes(cfg.data.protocol, load_volumes(cfg.data))
            images = unit_slices(train_raw, cfg.data.size)
            rng = np.random.default_rng(0)
            t = time.process_time()
            for _ in range(32):
                genesis_pair(images[int(rng.integers(len(images)))], rng)
            pair_ms = (time.process_time() - t) / 32 * 1000
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.rounds):
                for bf16 in (False, True):
                    load = os.getloadavg()[0]
                    t, cpu = time.perf_counter(), time.process_time()
                    with tempfile.TemporaryDirectory() as tmp:
                        result = run_pretrain_genesis(
                            images, backbone=cfg.model.backbone.name, steps=args.steps, out=Path(tmp) / "g.pt",
                            seed=cfg.train_seed, in_channels=cfg.model.backbone.in_channels,
                            truncate=cfg.model.backbone.truncate, output_stride=cfg.model.backbone.output_stride,
                            bf16=bf16,
                        )  # fmt: skip
                    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                    mse = float(np.mean(result.losses[-10:]))
                    runs[bf16].append({"s_per_step": wall / args.steps, "cpu_s_per_step": cpu / args.steps,
                                       "last10_mse": mse, "load": load})  # fmt: skip
            row = {"recipe": name, "member": member.name, "backbone": cfg.model.backbone.name,
                   "truncate": cfg.model.backbone.truncate, "size": cfg.data.size, "pair_ms": pair_ms,
                   "steps": args.steps, "runs": {"fp32": runs[False], "bf16": runs[True]}}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "genesis_cost.json").write_text(json.dumps(rows, indent=1))
    (out / "genesis_cost.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    return 0


def to_markdown(rows: list[dict]) -> str:  # type: ignore[type-arg]
    lines = [
        f"Models Genesis cost, {time.strftime('%Y-%m-%d %H:%M')}; mean over rounds; batch 8; 1 torch thread",
        "",
        "| recipe | member | pairs, CPU ms/image | fp32 s/step | bf16 s/step | bf16 speedup (wall) | (CPU) "
        "| fp32 MSE, last 10 | bf16 MSE, last 10 | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        f32, b16 = r["runs"]["fp32"], r["runs"]["bf16"]

        def mean(runs: list[dict], key: str) -> float:  # type: ignore[type-arg]
            return statistics.fmean(x[key] for x in runs)

        load = ", ".join(f"{x['load']:.1f}" for x in f32 + b16)
        lines.append(
            f"| {r['recipe']} | {r['member']} | {r['pair_ms']:.1f} | {mean(f32, 's_per_step'):.3f} | "
            f"{mean(b16, 's_per_step'):.3f} | {mean(f32, 's_per_step') / mean(b16, 's_per_step'):.2f} | "
            f"{mean(f32, 'cpu_s_per_step') / mean(b16, 'cpu_s_per_step'):.2f} | {mean(f32, 'last10_mse'):.4f} | "
            f"{mean(b16, 'last10_mse'):.4f} | {load} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
