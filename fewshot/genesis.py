"""Models Genesis self-supervised pretraining, ported to 2D slices.

Zhou et al. (MICCAI'19 / MedIA'21); reference: ``MrGiovanni/ModelsGenesis`` ``pytorch/utils.py``
and ``pytorch/config.py`` (3D only; there is no official 2D code). The model restores the
original image from a corrupted one (MSE loss). Transforms, applied in the official order by
:func:`genesis_pair` with the official probabilities (:class:`GenesisConfig`):

1. flip (input and target): up to 3 flips of a random axis while ``rand < 0.4``; in 2D the axis
   is H or W (the 3D code picks among the channel, H and W axes, never depth).
2. :func:`local_pixel_shuffle` (p 0.5): blocks of side ``[1, dim//10]`` per axis, pixels permuted
   inside each block. The official code draws 10,000 blocks on a 64x64x32 cube (mean block
   3.5x3.5x2 voxels, i.e. each voxel visited ~1.87 times); in 2D we draw
   ``round(1.87 * H * W / mean_block_area)`` blocks (~625 for 64x64, ~725 for 256x256) to keep
   that coverage. Deviation: blocks are permuted *in place* (the official code reads every block
   from the original image, so overlapping blocks can duplicate pixels); ours is an exact
   permutation of the image's pixels.
3. :func:`nonlinear_transform` (p 0.9): cubic Bezier through ``[0,0], P1, P2, [1,1]`` with
   ``P1, P2 ~ U([0,1]^2)`` (the official code draws both coordinates independently), sampled at
   100,000 points; half of the time the map is decreasing (intensity inversion).
4. painting (p 0.9): :func:`inner_cutout` (in-painting) with p 0.2, else :func:`outer_cutout`
   (out-painting).

Optimiser: Adam (default lr 1e-3), which converges within tens of steps on CPU; the official
recipe is SGD lr 1, momentum 0.9, which needs long schedules. The saved file holds ONLY the
encoder state dict (keys of ``create_backbone(name).state_dict()``) plus metadata and loads with
``torch.load(..., weights_only=True)``; use it with ``create_backbone(name, init="genesis", weights=FILE)``.
The metadata carry ``format``, ``backbone``, the training settings, the library ``version``,
``data_sha256`` and ``num_slices`` (sha256 and number of the training slices, when given as
arrays) and the file's
:class:`~fewshot.backbones.weights.WeightsRecord` (``record``: inputs in [0, 1], i.e. mean 0 / std 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from episodes.atomic import atomic_writer
from fewshot import __version__
from fewshot.backbones import create_backbone
from fewshot.backbones.base import FeatureInfo
from fewshot.backbones.inits import GENESIS_FORMAT, random_init_
from fewshot.backbones.staged import StagedBackbone
from fewshot.backbones.weights import WeightsRecord

__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "GenesisConfig",
    "GenesisDecoder",
    "GenesisModel",
    "GenesisResult",
    "ImageSource",
    "ObjectiveNames",
    "bezier_curve",
    "flip_pair",
    "genesis_pair",
    "inner_cutout",
    "local_pixel_shuffle",
    "masked_pair",
    "nonlinear_transform",
    "outer_cutout",
    "partial_path",
    "pretrain_genesis",
    "run_pretrain_genesis",
    "slices_sha256",
    "sorted_samples",
]

logger = logging.getLogger("fewshot")

#: Mean visits per voxel of the official 3D shuffling: 10,000 blocks x 3.5*3.5*2 / (64*64*32).
_OFFICIAL_SHUFFLE_COVERAGE = 10_000 * 3.5 * 3.5 * 2.0 / (64 * 64 * 32)

ImageSource = np.ndarray | Iterable[np.ndarray] | Callable[[np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class GenesisConfig:
    """Transform probabilities of the official ``config.py``."""

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2  # in-painting with this probability, else out-painting (0.8)


# --------------------------------------------------------------------------- transforms


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image (H, W), got shape {image.shape}")
    return image.astype(np.float32, copy=True)


def bezier_curve(points: np.ndarray, n_times: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Bezier curve through control ``points`` ``(P, 2)``; returns ``(xvals, yvals)`` of length ``n_times``.

    As the official code, samples run from the LAST control point to the first.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, n_times)
    basis = np.stack([math.comb(n, i) * t ** (n - i) * (1 - t) ** i for i in range(n + 1)])
    return points[:, 0] @ basis, points[:, 1] @ basis


def nonlinear_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Monotonic Bezier intensity map of an ``(H, W)`` image in [0, 1] (decreasing half of the time).

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    image = _check_image(image)
    p1, p2 = rng.random(2), rng.random(2)
    xvals, yvals = bezier_curve(np.array([[0.0, 0.0], p1, p2, [1.0, 1.0]]))
    if rng.random() < 0.5:  # only x sorted: y stays reversed -> decreasing map (inversion)
        xvals = sorted_samples(xvals)
    else:
        xvals, yvals = sorted_samples(xvals), sorted_samples(yvals)
    return np.interp(image, xvals, yvals).astype(np.float32)


def sorted_samples(values: np.ndarray) -> np.ndarray:
    """``np.sort(values)``, without sorting when ``values`` already runs one way.

    A coordinate of a cubic Bezier curve whose control values lie in [0, 1] and start at 0 and end at 1 (or the
    reverse) is monotonic, so its samples are sorted already or in reverse (from the last control point, as the
    official code samples them); reversing gives the same array as sorting, about 20x faster for 100,000 samples.
    Any other input (rounding can break monotonicity where the curve is flat) is sorted.
    """
    steps = np.diff(values)
    if (steps <= 0).all():
        return np.ascontiguousarray(values[::-1])
    if (steps >= 0).all():
        return values.copy()
    return np.sort(values)


def _n_shuffle_blocks(h: int, w: int) -> int:
    mh, mw = max(1, h // 10), max(1, w // 10)
    mean_area = (1 + mh) / 2 * (1 + mw) / 2
    return max(1, round(_OFFICIAL_SHUFFLE_COVERAGE * h * w / mean_area))


def local_pixel_shuffle(
    image: np.ndarray, rng: np.random.Generator, n_blocks: int | None = None
) -> np.ndarray:
    """Permute pixels inside random small blocks of an ``(H, W)`` image.

    Block sides are uniform in ``[1, max(1, dim // 10)]`` per axis; ``n_blocks`` defaults to the
    coverage-matched count (module docs). Blocks are shuffled in place, so the output is a
    permutation of the input pixels.

    Returns:
        ``(H, W)`` float32.
    """
    out = _check_image(image)
    h, w = out.shape
    n = _n_shuffle_blocks(h, w) if n_blocks is None else n_blocks
    bh = rng.integers(1, max(1, h // 10), size=n, endpoint=True)
    bw = rng.integers(1, max(1, w // 10), size=n, endpoint=True)
    y0 = rng.integers(0, h - bh, endpoint=True)
    x0 = rng.integers(0, w - bw, endpoint=True)
    for y, x, sh, sw in zip(y0, x0, bh, bw):
        block = out[y : y + sh, x : x + sw]
        out[y : y + sh, x : x + sw] = rng.permutation(block.ravel()).reshape(block.shape)
    return out


def _box(rng: np.random.Generator, dim: int, lo: int, hi: int) -> tuple[int, int]:
    """Side in ``[lo, hi]`` and start in ``[3, dim - side - 3]`` (official bounds, inclusive)."""
    side = int(rng.integers(lo, hi, endpoint=True))
    if dim - side - 3 < 3:
        raise ValueError(f"image side {dim} too small for Genesis painting (box side {side} + 3 px margins)")
    return side, int(rng.integers(3, dim - side - 3, endpoint=True))


def inner_cutout(image: np.ndarray, rng: np.random.Generator, max_boxes: int = 5) -> np.ndarray:
    """In-painting corruption: up to ``max_boxes`` boxes (each kept while ``rand < 0.95``) filled with U(0,1).

    Box sides in ``[dim//6, dim//3]``, at least 3 px from the border.

    Returns:
        ``(H, W)`` float32.
    """
    out = _check_image(image)
    h, w = out.shape
    cnt = max_boxes
    while cnt > 0 and rng.random() < 0.95:
        sh, y = _box(rng, h, h // 6, h // 3)
        sw, x = _box(rng, w, w // 6, w // 3)
        out[y : y + sh, x : x + sw] = rng.random((sh, sw), dtype=np.float32)
        cnt -= 1
    return out


def outer_cutout(image: np.ndarray, rng: np.random.Generator, max_extra_boxes: int = 4) -> np.ndarray:
    """Out-painting corruption: U(0,1) noise everywhere except 1 + up to ``max_extra_boxes`` kept boxes.

    Box sides ``dim - U[3*dim//7, 4*dim//7]``, at least 3 px from the border.

    Returns:
        ``(H, W)`` float32.
    """
    src = _check_image(image)
    h, w = src.shape
    out = rng.random((h, w), dtype=np.float32)
    cnt = max_extra_boxes + 1
    first = True
    while cnt > 0 and (first or rng.random() < 0.95):
        first = False
        sh, y = _box(rng, h, h - 4 * h // 7, h - 3 * h // 7)
        sw, x = _box(rng, w, w - 4 * w // 7, w - 3 * w // 7)
        out[y : y + sh, x : x + sw] = src[y : y + sh, x : x + sw]
        cnt -= 1
    return out


def flip_pair(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prob: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Flip input and target together: up to 3 flips of a random axis while ``rand < prob``."""
    cnt = 3
    while cnt > 0 and rng.random() < prob:
        axis = int(rng.integers(0, 2))
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        cnt -= 1
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def genesis_pair(
    image01: np.ndarray, rng: np.random.Generator, config: GenesisConfig = GenesisConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One Models Genesis training pair from an ``(H, W)`` image in [0, 1].

    Returns:
        ``(corrupted, target)``, both ``(H, W)`` float32; ``target`` is the (possibly flipped) image.
    """
    y = _check_image(image01)
    x, y = flip_pair(y.copy(), y, rng, config.flip_rate)
    if rng.random() < config.local_rate:
        x = local_pixel_shuffle(x, rng)
    if rng.random() < config.nonlinear_rate:
        x = nonlinear_transform(x, rng)
    if rng.random() < config.paint_rate:
        x = inner_cutout(x, rng) if rng.random() < config.inpaint_rate else outer_cutout(x, rng)
    return x.astype(np.float32), y.astype(np.float32)


def masked_pair(
    image01: np.ndarray, rng: np.random.Generator, patch: int = 16, ratio: float = 0.6, flip_rate: float = 0.4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One masked-image-modelling pair (SimMIM, Xie et al., CVPR 2022) from an ``(H, W)`` image in [0, 1].

    The image is flipped as :func:`flip_pair` does, cut into ``patch x patch`` squares (the last row/column may be
    smaller), and ``round(ratio * n_patches)`` of them (at least one) are replaced by the image's mean. Returns
    ``(masked, target, weight)``, all ``(H, W)`` float32; ``weight`` is 1 on the masked pixels, where SimMIM's L1 loss
    is taken. SimMIM swaps masked patch embeddings for a learned token; a CNN sees pixels, so the patches get a
    constant instead: the mean, not 0, which in MR is the background.
    """
    y = _check_image(image01)
    if patch < 1 or not 0.0 < ratio < 1.0:
        raise ValueError(f"patch must be >= 1 and ratio in (0, 1), got patch={patch}, ratio={ratio}")
    _, y = flip_pair(y.copy(), y, rng, flip_rate)
    h, w = y.shape
    gh, gw = -(-h // patch), -(-w // patch)
    n = max(1, round(ratio * gh * gw))
    cells = np.zeros(gh * gw, dtype=bool)
    cells[rng.choice(gh * gw, size=n, replace=False)] = True
    weight = np.repeat(np.repeat(cells.reshape(gh, gw), patch, 0), patch, 1)[:h, :w].astype(np.float32)
    x = np.where(weight > 0, np.float32(y.mean()), y).astype(np.float32)
    return x, y, weight


@dataclass(frozen=True)
class ObjectiveNames:
    """How messages and tables name a pretraining objective: ``title`` in sentences, ``short`` in tables and
    listings, ``loss`` the loss it reports."""

    title: str
    short: str
    loss: str


#: The pretraining objectives of :func:`pretrain_genesis` and their names: Models Genesis restoration, or masked
#: image modelling.
OBJECTIVE_NAMES = {
    "genesis": ObjectiveNames("Models Genesis", "Genesis", "restoration MSE"),
    "mim": ObjectiveNames("masked image modelling", "MIM", "masked-patch L1"),
}
OBJECTIVES = tuple(OBJECTIVE_NAMES)


# --------------------------------------------------------------------------- model


def _cbr(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class GenesisDecoder(nn.Module):
    """Light U-Net-style decoder over any backbone's feature list.

    Deepest feature -> 1x1 CBR to ``min(C, max_width)``; then for each shallower feature:
    bilinear upsample to its size, concat, 3x3 CBR to ``min(C_i, max_width)``; finally upsample
    to the input size, 3x3 CBR (16) and 1x1 conv to ``out_channels`` (logits).
    """

    def __init__(
        self, feature_info: tuple[FeatureInfo, ...], out_channels: int, max_width: int = 128
    ) -> None:
        super().__init__()
        if not feature_info:
            raise ValueError("feature_info is empty")
        widths = [min(f.channels, max_width) for f in feature_info]
        self.bottom = _cbr(feature_info[-1].channels, widths[-1], k=1)
        self.ups = nn.ModuleList(
            _cbr(widths[i + 1] + feature_info[i].channels, widths[i]) for i in range(len(feature_info) - 1)
        )
        self.head = nn.Sequential(_cbr(widths[0], 16), nn.Conv2d(16, out_channels, 1))

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """``feats`` (increasing stride) -> logits ``(N, out_channels, *size)``."""
        x = self.bottom(feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            f = feats[i]
            x = F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
            x = self.ups[i](torch.cat([x, f], dim=1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)


class GenesisModel(nn.Module):
    """Encoder (a registered backbone) + :class:`GenesisDecoder`; outputs the restored image in [0, 1]."""

    def __init__(self, encoder: StagedBackbone, max_width: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = GenesisDecoder(encoder.feature_info, encoder.in_channels, max_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` corrupted -> ``(N, C, H, W)`` restored (sigmoid)."""
        return torch.sigmoid(self.decoder(self.encoder(x), (x.shape[-2], x.shape[-1])))


@dataclass(frozen=True)
class GenesisResult:
    """Loss per step (from step 1, also those run before a resume) and the encoder file.

    ``finished``: False when a time limit stopped the run first; its state is then in ``partial`` (``out`` is
    not written yet) and the same call resumes it. ``resumed_from``: the step a resumed run started at (0: none).
    """

    losses: list[float] = field(default_factory=list)
    out: Path = Path()
    finished: bool = True
    resumed_from: int = 0
    partial: Path | None = None

    def loss_drop(self) -> tuple[float, float]:
        """Mean restoration loss over the first and the last ``k = clip(n // 5, 1, 10)`` steps."""
        if not self.losses:
            raise ValueError("no losses recorded")
        k = max(1, min(10, len(self.losses) // 5))
        return float(np.mean(self.losses[:k])), float(np.mean(self.losses[-k:]))


# --------------------------------------------------------------------------- training


def _check_range(arr: np.ndarray) -> None:
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"images must be scaled to [0, 1], got range [{lo}, {hi}]")


def _sampler(source: ImageSource) -> tuple[Callable[[np.random.Generator], np.ndarray], str | None, int | None]:
    """``(draw, data_sha256, num_slices)``: the image sampler, the sha256 of the float32 slices and their number
    (both ``None`` for a callable)."""
    if callable(source):
        fn = source

        def draw(rng: np.random.Generator) -> np.ndarray:
            img = _check_image(fn(rng))
            _check_range(img)
            return img

        return draw, None, None
    arr = source if isinstance(source, np.ndarray) else None
    if arr is None:
        items = [np.asarray(s) for s in source]
        if not items:
            raise ValueError("no images given")
        shapes = {i.shape for i in items}
        if len(shapes) != 1:
            raise ValueError(f"all slices must share one shape, got {sorted(shapes)[:5]}")
        arr = np.stack(items)
    if arr.ndim != 3 or len(arr) == 0:
        raise ValueError(f"expected images of shape (N, H, W) with N >= 1, got {arr.shape}")
    _check_range(arr)
    data = np.ascontiguousarray(arr, dtype=np.float32)
    digest = slices_sha256(data)
    return (lambda rng: data[int(rng.integers(len(data)))]), digest, len(data)


def slices_sha256(images: np.ndarray) -> str:
    """The ``data_sha256`` a weights file records: SHA-256 of the slices as C-ordered float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def partial_path(out: str | Path) -> Path:
    """Where :func:`pretrain_genesis` keeps an unfinished run of ``out`` (``<out>.partial``)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _batch(
    draw: Callable[[np.random.Generator], np.ndarray], rng: np.random.Generator, batch_size: int, objective: str,
    config: GenesisConfig, mask_patch: int, mask_ratio: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(inputs, targets, weights)`` ``(B, H, W)`` of one step; ``weights`` only for ``mim``."""
    if objective == "genesis":
        pairs = [genesis_pair(draw(rng), rng, config) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), None
    triples = [masked_pair(draw(rng), rng, mask_patch, mask_ratio, config.flip_rate) for _ in range(batch_size)]
    return tuple(np.stack([t[i] for t in triples]) for i in range(3))  # type: ignore[return-value]


def pretrain_genesis(
    slices: ImageSource,
    backbone: str,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: str | Path,
    in_channels: int = 3,
    device: str = "cpu",
    config: GenesisConfig = GenesisConfig(),
    truncate: str | None = None,
    output_stride: int | None = None,
    bf16: bool = False,
    objective: str = "genesis",
    mask_patch: int = 16,
    mask_ratio: float = 0.6,
    checkpoint_every: int = 200,
    time_limit_s: float | None = None,
) -> GenesisResult:
    """Pretrain ``backbone`` by Models Genesis restoration (or masked image modelling) and save its encoder weights.

    Args:
        slices: ``(N, H, W)`` array or iterable of same-shape ``(H, W)`` arrays in [0, 1], or a
            callable ``rng -> (H, W) array`` drawing one image.
        backbone: registered backbone name (e.g. ``unet``, ``cbr-small``, ``resnet50``).
        steps: optimisation steps (Adam).
        batch_size: pairs per step.
        lr: Adam learning rate.
        seed: seeds the encoder/decoder init (torch generators) and the pair sampling (numpy).
        out: output file (written atomically: temp file + rename).
        in_channels: model input channels; gray images are tiled.
        device: torch device.
        config: transform probabilities.
        truncate, output_stride: pretrain the encoder as the few-shot model will use it (e.g.
            ``cbr-small`` cut at ``block3`` with stride 4): no compute is spent on stages it drops,
            and the file then loads only into a backbone built with the same two arguments.
        bf16: run the model under bfloat16 autocast (the loss in float32), as ``train.precision: bf16-mixed``
            trains; about 2x faster on a CPU with AVX512-BF16 or AMX (docs/performance.md), other digits than the
            default float32.
        objective: ``"genesis"`` (restore the Genesis-corrupted image, MSE over every pixel) or ``"mim"`` (restore
            masked patches, :func:`masked_pair`; L1 over the masked pixels, as SimMIM).
        mask_patch, mask_ratio: ``mim`` only: patch side in pixels and the fraction of patches masked.
        checkpoint_every: every this many steps the whole state (weights, optimiser, sampler, losses) is written to
            :func:`partial_path` (atomically), and once more when ``time_limit_s`` stops the run. A run called
            again with the same arguments and slices resumes from it and ends with the same weights as one
            uninterrupted run; a partial file of other settings raises ``ValueError``. Removed once ``out`` is written.
        time_limit_s: stop after the first step that ends past this many seconds of this call, keep the partial file
            and return ``finished=False`` (for runs longer than a session).

    Returns:
        :class:`GenesisResult` with the per-step losses and ``out``.
    """
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(
            f"steps, batch_size and checkpoint_every must be >= 1, got {steps}, {batch_size}, {checkpoint_every}"
        )
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    t_start = time.perf_counter()
    out = Path(out)
    partial = partial_path(out)
    draw, data_sha256, num_slices = _sampler(slices)
    settings = {
        "backbone": backbone, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "in_channels": in_channels, "truncate": truncate, "output_stride": output_stride, "bf16": bf16,
        "objective": objective, "config": dataclasses.asdict(config), "data_sha256": data_sha256,
        **({"mask_patch": mask_patch, "mask_ratio": mask_ratio} if objective == "mim" else {}),
    }
    rng = np.random.default_rng(seed)
    encoder = create_backbone(
        backbone, init="random", in_channels=in_channels, seed=seed, truncate=truncate, output_stride=output_stride
    )
    model = GenesisModel(encoder)
    random_init_(model.decoder, "kaiming", torch.Generator().manual_seed(seed + 1))
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    seconds_before = 0.0  # wall time of the calls a resumed run continues
    if partial.is_file():
        state = torch.load(partial, map_location=device, weights_only=True)
        if state.get("settings") != settings:
            theirs = state.get("settings") or {}
            differ = sorted(k for k in set(settings) | set(theirs) if settings.get(k) != theirs.get(k))
            raise ValueError(
                f"{partial}: an unfinished pretraining with other settings ({', '.join(differ)}); delete it to start "
                "this one, or write this one to another file"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        losses = [float(v) for v in state["losses"]]
        seconds_before = float(state.get("seconds", 0.0))
        logger.info("%s %s: resuming %s at step %d/%d", objective, backbone, partial, len(losses), steps)
    resumed_from = len(losses)

    def seconds() -> float:
        """Wall time of the pretraining so far, over every call that worked on it."""
        return seconds_before + time.perf_counter() - t_start

    def save_partial() -> None:
        blob = {"settings": settings, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": rng.bit_generator.state, "losses": losses,
                "seconds": seconds()}
        with atomic_writer(partial, "wb") as fh:
            torch.save(blob, fh)

    for step in range(resumed_from, steps):
        x_np, y_np, w_np = _batch(draw, rng, batch_size, objective, config, mask_patch, mask_ratio)
        x = torch.from_numpy(x_np)[:, None].repeat(1, in_channels, 1, 1).to(device)
        y = torch.from_numpy(y_np)[:, None].repeat(1, in_channels, 1, 1).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            restored = model(x)
        if w_np is None:
            loss = F.mse_loss(restored.float(), y)
        else:  # L1 over the masked pixels (every channel)
            w = torch.from_numpy(w_np)[:, None].to(device)
            loss = ((restored.float() - y).abs() * w).sum() / (w.sum() * in_channels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            logger.info("%s %s step %d/%d loss %.5f", objective, backbone, step + 1, steps, losses[-1])
        done = step + 1
        if done < steps and time_limit_s is not None and time.perf_counter() - t_start >= time_limit_s:
            save_partial()
            logger.info("%s %s: time limit reached at step %d/%d; state kept in %s", objective, backbone, done,
                        steps, partial)
            return GenesisResult(losses=losses, out=out, finished=False, resumed_from=resumed_from, partial=partial)
        if done < steps and done % checkpoint_every == 0:
            save_partial()
    state_dict = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    what = (
        "Models Genesis restoration" if objective == "genesis"
        else f"masked image modelling (SimMIM-style: {mask_ratio:g} of {mask_patch}-px patches, L1)"
    )
    meta = {
        "format": GENESIS_FORMAT,
        "objective": objective,
        "backbone": backbone,
        "in_channels": in_channels,
        "truncate": truncate,
        "output_stride": encoder.feature_info[-1].stride,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        **({"bf16": True} if bf16 else {}),
        **({"mask_patch": mask_patch, "mask_ratio": mask_ratio} if objective == "mim" else {}),
        "final_loss": losses[-1],
        "seconds": seconds(),
        "version": __version__,
        "data_sha256": data_sha256,
        "num_slices": num_slices,
        "record": WeightsRecord(
            init=objective,
            source=(
                f"fewshot pretrain --objective {objective} (steps={steps}, batch_size={batch_size}, lr={lr}, "
                f"seed={seed})"
            ),
            file=out.name,
            mean=(0.0,) * in_channels,
            std=(1.0,) * in_channels,
            notes=f"{what} on 2D slices scaled to [0, 1] (gray tiled to in_channels)",
        ).to_dict(),
    }
    with atomic_writer(out, "wb") as fh:
        torch.save({"state_dict": state_dict, "meta": meta}, fh)
    partial.unlink(missing_ok=True)
    logger.info("%s %s: wrote encoder weights to %s (final loss %.5f)", objective, backbone, out, losses[-1])
    return GenesisResult(losses=losses, out=out, resumed_from=resumed_from)


def run_pretrain_genesis(
    images: np.ndarray,
    *,
    backbone: str,
    steps: int,
    out: str | Path,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    in_channels: int = 3,
    device: str = "cpu",
    truncate: str | None = None,
    output_stride: int | None = None,
    bf16: bool = False,
    objective: str = "genesis",
    checkpoint_every: int = 200,
    time_limit_s: float | None = None,
) -> GenesisResult:
    """CLI entry point: ``images`` ``(N, H, W)`` float in [0, 1] -> :func:`pretrain_genesis`."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    return pretrain_genesis(
        images,
        backbone=backbone,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        out=out,
        in_channels=in_channels,
        device=device,
        truncate=truncate,
        output_stride=output_stride,
        bf16=bf16,
        objective=objective,
        checkpoint_every=checkpoint_every,
        time_limit_s=time_limit_s,
    )
