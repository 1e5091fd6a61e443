"""Which device to run on: the one rule every command uses."""

from __future__ import annotations

import torch

__all__ = ["cuda_requested", "default_device"]


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU.

    Raises:
        ValueError: an unknown device string, or CUDA asked for on a machine without it.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def cuda_requested(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting will run on CUDA here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
