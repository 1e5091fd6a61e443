"""``fewshot demo``: the whole pipeline on the built-in phantom, untrained vs trained.

Superpixels → self-supervised training → 1-shot evaluation (fold 0, setting 1) of the same
architecture before and after training, so the table shows what self-supervision buys.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_json, atomic_write_text
from fewshot.config import load_config, save_config
from fewshot.configs import config_path
from fewshot.device import check_accelerator
from fewshot.evaluation import EvaluationResult, evaluate, run_evaluation
from fewshot.models import create_model
from fewshot.outputs import MARKER, check_output_dir, mark_output_dir, remove_output_dir
from fewshot.pipeline import load_volumes, prepare_fold
from fewshot.training import train

__all__ = ["comparison_table", "run_demo"]


def comparison_table(untrained: EvaluationResult, trained: EvaluationResult) -> str:
    """Markdown: Dice (%) per organ for the untrained and the trained model."""
    cols = [*trained.organs, "mean"]
    lines = [
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
        "| untrained (same init) | " + " | ".join(f"{100 * untrained.dice[c]:.1f}" for c in cols) + " |",
        "| self-supervised | " + " | ".join(f"{100 * trained.dice[c]:.1f}" for c in cols) + " |",
    ]
    return "\n".join(lines) + "\n"


def run_demo(
    out_dir: str | Path = "fewshot-demo",
    *,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    config: str | Path = "demo_phantom",
) -> dict[str, Any]:
    """Run the demo; returns ``{"markdown", "untrained", "trained", "train"}`` and writes ``out_dir``."""
    out = Path(out_dir)
    # Every input is checked before anything is deleted: the config and overrides, the accelerator, the
    # folder (--overwrite deletes only a folder an earlier demo made, marked with fewshot.outputs.MARKER).
    cfg = load_config(config_path(str(config)), {**(overrides or {}), "out_dir": str(out / "train")})
    check_accelerator(cfg.train.accelerator)
    check_output_dir(out, overwrite=overwrite, replace=True)
    if out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
        remove_output_dir(out)
    mark_output_dir(out, "demo")
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    volumes = load_volumes(cfg.data)

    # Untrained baseline: same architecture and init, evaluated on the same plan.
    fold = prepare_fold(cfg.data, volumes, stage="evaluate")
    fewshot_log = logging.getLogger("fewshot")
    level = fewshot_log.level
    fewshot_log.setLevel(logging.WARNING)  # training builds the same model again and logs its init once
    try:
        baseline = create_model(cfg.model, seed=cfg.seed)
    finally:
        fewshot_log.setLevel(level)
    progress = cfg.train.progress_bar
    untrained = evaluate(baseline, fold.require_plan(), fold.test, config=cfg.to_dict(), progress=progress)
    untrained.to_json(out / "untrained.json")

    result = train(cfg, volumes=volumes, resume=False)
    assert result.checkpoint is not None
    trained = run_evaluation(result.checkpoint, volumes=volumes, out=out / "eval", overlays=2, progress=progress)
    table = comparison_table(untrained, trained)
    seconds = time.perf_counter() - t0
    summary = {
        "dice_untrained": dict(untrained.dice),
        "dice_trained": dict(trained.dice),
        "train": result.to_dict(),
        "seconds": seconds,
        "config": cfg.to_dict(),
    }
    atomic_write_json(out / "demo.json", summary)
    markdown = (
        f"## fewshot demo: phantom CT, fold {cfg.data.protocol.fold}, setting {cfg.data.protocol.setting}, "
        f"{cfg.data.protocol.shots}-shot, 3D Dice (%)\n\n"
        f"{table}\n"
        f"backbone {cfg.model.backbone.name} ({cfg.model.init.scheme}), head {cfg.model.head.name}, "
        f"{result.steps} steps "
        f"({result.steps_per_s:.1f} steps/s); total {seconds:.0f} s\n"
    )
    atomic_write_text(out / "demo.md", markdown)
    return {"markdown": markdown, "untrained": untrained, "trained": trained, "train": result}
