"""Deterministic synthetic abdominal phantoms (CT-like and MR-like) with labelled organs.

The phantom is the embedded default for ``fewshot demo`` and for fast tests. Each
subject is drawn from ``numpy.random.default_rng(seed)`` and differs in body size,
organ positions, sizes, shapes (ellipsoids warped by smooth random fields),
intensities, texture and noise. Organs (label values as CHAOS): 1 liver (patient right
= image left, large, upper slices), 2 right kidney, 3 left kidney (posterior, lower
slices), 4 spleen (patient left, posterior, upper slices). Distractors with organ-like
intensities (bowel loops, stomach, vessels, spine, muscle) make the task non-trivial:
an untrained prototype network does badly on it.

Intensities: CT phantoms are in HU (``intensity="hu"``), MR phantoms in arbitrary
scanner units (``intensity="raw"``), so they go through the same preprocessing as real
scans.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .labels import PHANTOM
from .volumes import Modality, Volume

__all__ = ["make_phantom", "make_phantom_dataset"]

# Mean intensity (CT HU, MR units) per tissue; per-subject jitter is added.
_TISSUE = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 420.0),
    "muscle": (45.0, 180.0),
    "body": (30.0, 260.0),
    "liver": (95.0, 240.0),
    "spleen": (105.0, 330.0),
    "kidney": (150.0, 470.0),
    "bowel": (70.0, 380.0),
    "stomach": (20.0, 520.0),
    "vessel": (170.0, 120.0),
    "bone": (500.0, 90.0),
}


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (f / (f.std() + 1e-8)).astype(np.float32)


def _ellipsoid(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    warp: np.ndarray,
    warp_strength: float,
) -> np.ndarray:
    z, y, x = grid
    d = (
        ((z - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((x - centre[2]) / radii[2]) ** 2
    )
    return (d + warp_strength * warp) < 1.0


def make_phantom(
    seed: int,
    *,
    modality: Modality = "CT",
    shape: tuple[int, int, int] = (32, 128, 128),
    subject: str | None = None,
) -> Volume:
    """One synthetic abdominal scan, reproducible from ``seed``.

    Args:
        seed: subject seed; the same seed always gives the same volume.
        modality: ``"CT"`` (HU) or ``"MR"`` (T2-like contrast: fluid-rich kidneys/spleen bright).
        shape: ``(Z, H, W)``; ``H`` and ``W`` at least 48, ``Z`` at least 12.
    """
    nz, ny, nx = shape
    if nz < 12 or ny < 48 or nx < 48:
        raise ValueError(f"phantom shape {shape} too small: need Z >= 12 and H, W >= 48")
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    rng = np.random.default_rng(seed)
    col = 0 if modality == "CT" else 1
    grid = np.meshgrid(
        np.linspace(0, 1, nz, dtype=np.float32),
        np.linspace(-1, 1, ny, dtype=np.float32),
        np.linspace(-1, 1, nx, dtype=np.float32),
        indexing="ij",
    )
    zz, yy, xx = grid
    warp = _smooth_field(rng, shape, sigma=(2, ny / 12, nx / 12))
    u = rng.uniform

    # Body: an ellipse whose size varies slowly along z; anterior (top, y<0) to posterior.
    bw = u(0.78, 0.92) * (1 + 0.05 * np.sin(np.pi * zz + u(0, 3)))
    bh = u(0.58, 0.72) * (1 + 0.04 * np.cos(np.pi * zz))
    body_d = (xx / bw) ** 2 + ((yy - u(-0.05, 0.05)) / bh) ** 2 + 0.04 * warp
    body = body_d < 1.0
    inner = body_d < u(0.72, 0.82)  # inside the subcutaneous fat ring

    t = {k: v[col] for k, v in _TISSUE.items()}
    jitter = 0.08 if modality == "CT" else 0.12
    for k in t:
        if k != "air":
            t[k] = t[k] * (1 + u(-jitter, jitter)) + (u(-10, 10) if modality == "CT" else 0)

    image = np.full(shape, t["air"], dtype=np.float32)
    label = np.zeros(shape, dtype=np.int16)
    image[body] = t["fat"]
    image[inner] = t["body"]

    # Posterior structures: spine (bone), paraspinal muscles, aorta.
    sy = bh.mean() * u(0.55, 0.7)
    spine = ((xx / 0.11) ** 2 + ((yy - sy) / 0.11) ** 2) < 1
    muscle = (((np.abs(xx) - 0.22) / 0.14) ** 2 + ((yy - sy) / 0.13) ** 2 < 1) & inner
    aorta = ((xx + 0.03) / 0.05) ** 2 + ((yy - sy + 0.17) / 0.05) ** 2 < 1
    image[muscle] = t["muscle"]
    image[spine & body] = t["bone"]
    image[aorta & inner] = t["vessel"]

    # Distractors: bowel loops and stomach with organ-like intensities.
    for _ in range(int(rng.integers(5, 9))):
        c = (u(0.2, 1.0), u(-0.45, 0.2), u(-0.5, 0.5))
        r = (u(0.12, 0.3), u(0.07, 0.14), u(0.07, 0.14))
        blob = _ellipsoid(grid, c, r, warp, 0.3) & inner
        # bowel content ranges from fluid to contrast-enhanced wall: overlaps every organ
        image[blob] = t["bowel"] * u(0.6, 2.2)
    stomach = _ellipsoid(
        grid, (u(0.05, 0.3), u(-0.35, -0.15), u(0.2, 0.45)), (u(0.2, 0.35), 0.16, 0.18), warp, 0.4
    )
    image[stomach & inner] = t["stomach"]

    organs = {
        # name: (label, centre (z, y, x), radii (z, y, x), tissue)
        "liver": (
            1,
            (u(0.15, 0.35), u(-0.2, 0.0), u(-0.5, -0.35)),
            (u(0.35, 0.5), u(0.35, 0.45), u(0.28, 0.38)),
            "liver",
        ),
        "spleen": (
            4,
            (u(0.15, 0.35), u(0.1, 0.25), u(0.5, 0.62)),
            (u(0.2, 0.3), u(0.15, 0.22), u(0.1, 0.15)),
            "spleen",
        ),
        "right_kidney": (
            2,
            (u(0.5, 0.7), u(0.22, 0.32), u(-0.42, -0.32)),
            (u(0.15, 0.22), u(0.11, 0.15), u(0.08, 0.11)),
            "kidney",
        ),
        "left_kidney": (
            3,
            (u(0.45, 0.65), u(0.22, 0.32), u(0.32, 0.42)),
            (u(0.15, 0.22), u(0.11, 0.15), u(0.08, 0.11)),
            "kidney",
        ),
    }
    texture = _smooth_field(rng, shape, sigma=(1, 1.5, 1.5))
    for name, (value, centre, radii, tissue) in organs.items():
        mask = _ellipsoid(grid, centre, radii, warp, u(0.25, 0.45)) & inner
        mean = t[tissue] * u(0.93, 1.07)
        tex = (6.0 if modality == "CT" else 18.0) * texture
        image[mask] = mean + tex[mask]
        label[mask] = value
        if name.endswith("kidney"):  # renal pelvis: darker core, still labelled kidney
            core_radii = (radii[0] * 0.45, radii[1] * 0.45, radii[2] * 0.45)
            core = _ellipsoid(grid, centre, core_radii, warp, 0.2) & mask
            image[core] = t["fat"] * 0.5 + mean * 0.5
        if name == "liver":  # vessels inside the liver (bright in CT, dark in T2)
            ves = (np.abs(_smooth_field(rng, shape, sigma=(1, 3, 3))) < 0.06) & mask
            image[ves] = t["vessel"]

    # Smooth bias field (MR) and noise.
    if modality == "MR":
        bias = 1 + 0.15 * _smooth_field(rng, shape, sigma=(4, ny / 4, nx / 4))
        image = np.where(body, image * bias, image)
        image += rng.normal(0, 25.0, shape).astype(np.float32)
        image = np.clip(image, 0, None)
    else:
        image += rng.normal(0, 18.0, shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, sigma=(0, 0.6, 0.6))

    spacing = (float(u(5.0, 8.0)), 300.0 / ny, 300.0 / nx)
    # the library's canonical orientation (LAS, episodes.data.geometry): written out and read back, it is unchanged
    affine = np.diag([-spacing[1], spacing[2], spacing[0], 1.0])
    return Volume(
        image=image.astype(np.float32),
        label=label,
        spacing=spacing,
        subject=subject if subject is not None else f"phantom{seed:03d}",
        modality=modality,
        label_map=PHANTOM,
        intensity="hu" if modality == "CT" else "raw",
        affine=affine,
        source=f"phantom(seed={seed}, modality={modality}, shape={shape})",
    )


def make_phantom_dataset(
    n_subjects: int = 8,
    *,
    modality: Modality = "CT",
    shape: tuple[int, int, int] = (32, 128, 128),
    seed: int = 0,
) -> list[Volume]:
    """``n_subjects`` phantoms with seeds ``seed * 1000 + i``; subject ids ``"0".."n-1"``."""
    if n_subjects < 1:
        raise ValueError("n_subjects must be >= 1")
    return [
        make_phantom(seed * 1000 + i, modality=modality, shape=shape, subject=str(i))
        for i in range(n_subjects)
    ]
