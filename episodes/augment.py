"""Episode augmentation (albumentations), deterministic given a seed.

Presets:

* ``"alpnet"`` (default): SSL-ALPNet ``sabs_aug`` magnitudes: affine rotate ±5°, shift ±5 px,
  shear ±5°, scale (0.9, 1.2); elastic α=10, σ=5; gamma (0.5, 1.5); plus mild brightness/contrast
  (±0.1), Gaussian noise (std ≤ 0.02) and Gaussian blur, each with probability 0.25.
* ``"strong"``: SSL-ALPNet ``aug_v3`` magnitudes: rotate ±30°, shift ±30 px, shear ±30°, scale
  (0.8, 1.3); elastic α=20, σ=5; gamma (0.2, 1.8); brightness/contrast ±0.2, noise ≤ 0.04, blur.
* ``"none"``: identity.

Shifts are in pixels, as in SSL-ALPNet at 256×256 (they are not rescaled for other sizes).

Intensities: inputs are z-scored slices (any range). Each slice is min-max scaled to [0, 1] first,
the pipeline runs there (so gamma, which needs non-negative values, and the constant border fill = the
slice minimum are well defined), the result is clipped to [0, 1] and mapped back to the original
``[min, max]`` range. Masks are warped with the same geometry using nearest-neighbour interpolation.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PRESETS", "AugmentationConfig", "Augmenter", "build_augmenter"]

#: Preset names accepted by :func:`build_augmenter`.
PRESETS: tuple[str, ...] = ("alpnet", "strong", "none")


@dataclass(frozen=True)
class AugmentationConfig:
    """Magnitudes of one preset (see module docs)."""

    rotate: float
    shift_px: int
    shear: float
    scale: tuple[float, float]
    elastic_alpha: float
    elastic_sigma: float
    gamma: tuple[float, float]
    brightness_contrast: float
    noise_std: float
    blur_sigma: tuple[float, float]
    p_affine: float = 1.0
    p_elastic: float = 1.0
    p_gamma: float = 1.0
    p_extra: float = 0.25


_CONFIGS: dict[str, AugmentationConfig] = {
    "alpnet": AugmentationConfig(
        rotate=5.0,
        shift_px=5,
        shear=5.0,
        scale=(0.9, 1.2),
        elastic_alpha=10.0,
        elastic_sigma=5.0,
        gamma=(0.5, 1.5),
        brightness_contrast=0.1,
        noise_std=0.02,
        blur_sigma=(0.1, 0.8),
    ),
    "strong": AugmentationConfig(
        rotate=30.0,
        shift_px=30,
        shear=30.0,
        scale=(0.8, 1.3),
        elastic_alpha=20.0,
        elastic_sigma=5.0,
        gamma=(0.2, 1.8),
        brightness_contrast=0.2,
        noise_std=0.04,
        blur_sigma=(0.1, 1.2),
    ),
}


class Augmenter:
    """Apply one preset to a ``(H, W)`` image and mask pair.

    Example:
        >>> aug = build_augmenter("alpnet")
        >>> image2, mask2 = aug(image, mask, seed=123)   # same seed -> same output
    """

    def __init__(self, preset: str = "alpnet") -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; choices: {list(PRESETS)}")
        self.preset = preset
        self._pipeline: Any = None
        if preset != "none":
            self._pipeline = _build_pipeline(_CONFIGS[preset])

    def __repr__(self) -> str:
        return f"Augmenter(preset={self.preset!r})"

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image`` and ``mask`` with randomness fully determined by ``seed``.

        Args:
            image: ``(H, W)`` float image (z-scored or any range).
            mask: ``(H, W)`` binary mask.
            seed: non-negative integer seed.

        Returns:
            ``(image (H, W) float32 in the input's [min, max], mask (H, W) uint8 in {0, 1})``.
        """
        img = np.asarray(image, dtype=np.float32)
        msk = np.asarray(mask)
        if img.ndim != 2 or msk.shape != img.shape:
            raise ValueError(
                f"expected (H, W) image and mask of the same shape, got {img.shape} and {msk.shape}"
            )
        msk = (msk > 0).astype(np.uint8)
        if self._pipeline is None:
            return img.copy(), msk.copy()
        lo, hi = float(img.min()), float(img.max())
        span = hi - lo
        unit = (img - lo) / span if span > 1e-8 else np.zeros_like(img)
        self._pipeline.set_random_seed(int(seed) % (2**32))
        out = self._pipeline(image=np.ascontiguousarray(unit, dtype=np.float32), mask=msk)
        aug = np.clip(np.asarray(out["image"], dtype=np.float32), 0.0, 1.0)
        if aug.ndim == 3:
            aug = aug[..., 0]
        restored = (aug * span + lo).astype(np.float32) if span > 1e-8 else np.full_like(img, lo)
        return restored, (np.asarray(out["mask"]) > 0).astype(np.uint8)


def _build_pipeline(cfg: AugmentationConfig) -> Any:
    import albumentations as A
    import cv2

    border = cv2.BORDER_CONSTANT
    return A.Compose(
        [
            A.Affine(
                rotate=(-cfg.rotate, cfg.rotate),
                translate_px=(-cfg.shift_px, cfg.shift_px),
                shear=(-cfg.shear, cfg.shear),
                scale=cfg.scale,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=border,
                fill=0.0,
                fill_mask=0,
                p=cfg.p_affine,
            ),
            A.ElasticTransform(
                alpha=cfg.elastic_alpha,
                sigma=cfg.elastic_sigma,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=border,
                fill=0.0,
                fill_mask=0,
                p=cfg.p_elastic,
            ),
            A.RandomGamma(gamma_limit=(cfg.gamma[0] * 100.0, cfg.gamma[1] * 100.0), p=cfg.p_gamma),
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness_contrast,
                contrast_limit=cfg.brightness_contrast,
                p=cfg.p_extra,
            ),
            A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.p_extra),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=cfg.blur_sigma, p=cfg.p_extra),
        ],
        seed=0,
    )


def build_augmenter(preset: str = "alpnet") -> Augmenter:
    """An :class:`Augmenter` for ``preset`` (one of :data:`PRESETS`)."""
    return Augmenter(preset)
