"""Few-shot medical image segmentation: backbones, prototype heads, training, evaluation, CLI."""

from __future__ import annotations

from episodes import __version__

__all__ = ["__version__"]
