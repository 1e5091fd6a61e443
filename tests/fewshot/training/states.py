"""Exact comparisons for the resume tests: two checkpoints' training state, and a run's CSV loss history."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

#: What training continues from: weights and buffers, the optimiser (momentum buffers, learning rate), the
#: learning-rate schedule and Lightning's loop counters (global step, logged step, batch progress).
TRAINING_STATE = ("global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers", "loops")


def assert_same_training_state(
    a: dict[str, Any], b: dict[str, Any], when: str, *, ignore: tuple[str, ...] = ()
) -> None:
    """Every tensor of :data:`TRAINING_STATE` equal to the bit (``torch.equal``, same dtype), every other value
    ``==``, except the dotted paths that start with one of ``ignore`` (``"loops.fit_loop.epoch_progress"``); the
    message lists each difference and ends with ``when`` (``"after the resume"``)."""
    differences: list[str] = []
    for key in TRAINING_STATE:
        _differences(a[key], b[key], key, differences)
    differences = [d for d in differences if not d.startswith(ignore)]
    assert not differences, f"{len(differences)} differences {when}: " + "; ".join(differences[:8])


def _differences(x: Any, y: Any, path: str, found: list[str]) -> None:
    if isinstance(x, torch.Tensor):
        if not isinstance(y, torch.Tensor) or x.dtype != y.dtype or x.shape != y.shape:
            found.append(f"{path}: {y!r} is not a {x.dtype} tensor of shape {tuple(x.shape)}")
        elif not torch.equal(x, y):
            found.append(f"{path} (max |diff| {(x.double() - y.double()).abs().max().item():.3g})")
    elif isinstance(x, dict):
        if not isinstance(y, dict) or x.keys() != y.keys():
            found.append(
                f"{path}: keys {sorted(map(str, x))} -> {sorted(map(str, y)) if isinstance(y, dict) else y!r}"
            )
            return
        for key in x:
            _differences(x[key], y[key], f"{path}.{key}", found)
    elif isinstance(x, list | tuple):
        if type(y) is not type(x) or len(y) != len(x):
            found.append(f"{path}: {x!r} -> {y!r}")
            return
        for i, (u, v) in enumerate(zip(x, y)):
            _differences(u, v, f"{path}[{i}]", found)
    elif x != y:
        found.append(f"{path}: {x!r} -> {y!r}")


def logged_rows(metrics_csv: Path) -> dict[int, dict[str, str]]:
    """``{step: row}`` of one ``logs/version_<n>/metrics.csv``, values as written (``repr`` of the floats, so
    equal text is equal numbers); a last row cut short by a kill (no newline yet) is left out."""
    text = metrics_csv.read_text()
    complete = text[: text.rfind("\n") + 1]
    return {int(row["step"]): row for row in csv.DictReader(complete.splitlines())}
