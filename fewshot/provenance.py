"""Where a number came from: library versions and the source commit, saved beside results.

Exact Dice values depend on the versions of the numeric libraries (scikit-image's superpixels,
OpenCV's warps, torch's kernels), so every checkpoint and result records them.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from fewshot.device import cpu_bf16_native, cpu_name

__all__ = ["environment", "git_commit"]

_PACKAGES = (
    "fewshot-medseg",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-image",
    "opencv-python-headless",
    "albumentations",
    "pytorch-lightning",
    "fast-slic",
)


def environment() -> dict[str, str | None]:
    """``{"python": ..., "<package>": version or None, "cpu": ..., ...}``: what decides the numbers.

    Besides the package versions: the CPU's model name, torch's CPU kernel level
    (``cpu_capability``, e.g. ``AVX2``, ``AVX512``), whether it has hardware bfloat16
    (``cpu_bf16``: ``native`` or ``emulated``), torch's thread count and the first visible CUDA GPU
    (``gpu``: its name, ``None`` without one), since the same code and seed give Dice a few tenths to
    points apart across CPUs, GPUs and thread counts (floating-point order).
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["cpu"] = cpu_name()
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["cpu_bf16"] = "native" if cpu_bf16_native() else "emulated"
    out["torch_threads"] = str(torch.get_num_threads())
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


_OWN_COMMIT: list[str | None] = []  # this process's first answer for the package's own checkout


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the source checkout holding this package (``+dirty`` with uncommitted changes), or
    ``None`` outside a git checkout.

    Without ``path`` the first answer is kept for the life of the process: the code a process runs is what it
    imported when it started, so a checkout that moves on during a long run (a merge, a commit) must not be
    recorded as the code that trained or scored (the CLI asks once at start)."""
    if path is None:
        if not _OWN_COMMIT:
            _OWN_COMMIT.append(_read_commit(None))
        return _OWN_COMMIT[0]
    return _read_commit(path)


def _read_commit(path: str | Path | None) -> str | None:
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    if path is None and not (root / "pyproject.toml").is_file():
        return None  # an installed copy, not a source checkout: a git repo above it would be another project
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
