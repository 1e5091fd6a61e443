"""A max-pool with the same numbers as ``nn.MaxPool2d`` and a faster CPU path for NCHW tensors.

PyTorch's CPU max-pool kernel for contiguous (NCHW) tensors compares one element at a time with a data-dependent
branch; for a ``3 x 3 / 2`` pool of an ``8 x 32 x 128 x 128`` bfloat16 map it takes about 38 ms on one thread, ten
times its channels-last kernel (``benchmarks/bench_training_cost.py``, docs/performance.md). It was the largest cost
after the convolutions in the CPU recipes' training step. Converting to channels-last and back costs as much as it
saves, and channels-last convolutions change the digits.

:class:`MaxPool2d` computes the window maxima **and the same argmax** separably with vectorised elementwise ops:
the first maximum along each window row (strictly greater wins, as in ATen's scan), then the first row holding the
window maximum, which is ATen's row-major first occurrence. The backward is ATen's own
``max_pool2d_with_indices_backward`` with those indices, so outputs, indices and gradients equal ``nn.MaxPool2d``'s
bit for bit. Anything else (CUDA, channels-last input, dilation, ``ceil_mode``, ``return_indices``, a window whose
maximum is NaN or ``-inf``) goes to ATen unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MaxPool2d", "aten_max_pool", "max_pool2d_with_indices"]

_FAST = [True]


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@contextmanager
def aten_max_pool() -> Iterator[None]:
    """Within the block, :class:`MaxPool2d` runs ATen's kernel (to compare speed; the numbers are the same)."""
    _FAST.append(False)
    try:
        yield
    finally:
        _FAST.pop()


def _fast_path(x: Tensor, pool: nn.MaxPool2d) -> bool:
    return (
        _FAST[-1]
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_floating_point()
        and x.is_contiguous()
        and _pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
        and not pool.return_indices
    )


def max_pool2d_with_indices(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[Tensor, Tensor] | None:
    """``(values, indices)`` as ``torch.ops.aten.max_pool2d_with_indices`` gives them for an NCHW ``x`` (no dilation,
    floor mode), or ``None`` where a window's maximum is not finite (ATen's index there is not reproduced).

    Only ``maximum``, ``!=``, ``&`` and uint8 arithmetic on strided views (no ``where``, no ``masked_fill``, which are
    several times slower on the CPU): the first element equal to the maximum is the first the strict ``>`` scan keeps.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    xp = x
    if ph or pw:  # -inf never wins a comparison; a window of -inf only is handed to ATen below
        xp = x.new_full((n, c, h + 2 * ph, w + 2 * pw), float("-inf"))
        xp[..., ph : ph + h, pw : pw + w] = x
    cols = [xp[..., j : j + sw * (wo - 1) + 1 : sw] for j in range(kw)]
    best = cols[0]
    for cand in cols[1:]:
        best = torch.maximum(best, cand)
    col = _first_hit(cols, best)  # (N, C, Hp, Wo) uint8: the first column of each row window holding its max
    rows = [best[..., i : i + sh * (ho - 1) + 1 : sh, :] for i in range(kh)]
    values = rows[0]
    for cand in rows[1:]:
        values = torch.maximum(values, cand)
    if not bool(torch.isfinite(values).all()):
        return None
    row = torch.zeros(values.shape, dtype=torch.uint8)
    col_at = col[..., 0 : sh * (ho - 1) + 1 : sh, :].clone()
    missed = rows[0] != values
    for i in range(1, kh):  # past every missing row: the answer is in row i or later
        if i > 1:
            missed &= rows[i - 1] != values
        step = missed.view(torch.uint8)
        row += step
        col_i = col[..., i : i + sh * (ho - 1) + 1 : sh, :]
        col_at += (col_i - col_at) * step  # uint8 wraps, and wraps back: col_at = col_i where step
    origin = (torch.arange(ho) * sh - ph)[:, None] * w + (torch.arange(wo) * sw - pw)[None, :]
    indices = row.to(torch.int64).mul_(w).add_(col_at).add_(origin)
    return values.contiguous(), indices


def _first_hit(cands: list[Tensor], best: Tensor) -> Tensor:
    """uint8 index of the first of ``cands`` equal to ``best`` (one of them is)."""
    missed = cands[0] != best
    index = missed.view(torch.uint8).clone()
    for cand in cands[1:-1]:
        missed &= cand != best
        index += missed.view(torch.uint8)
    return index


def _aten(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    out = torch.ops.aten.max_pool2d_with_indices(x, list(kernel), list(stride), list(padding), [1, 1], False)
    return out[0], out[1]


class _FastMaxPool(torch.autograd.Function):
    """Forward: the separable values and indices; backward: ATen's, with those indices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Any, stride: Any, padding: Any) -> Tensor:
        values, indices = max_pool2d_with_indices(x, kernel, stride, padding) or _aten(
            x, kernel, stride, padding
        )
        ctx.save_for_backward(x, indices)
        ctx.args = (kernel, stride, padding)
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, indices = ctx.saved_tensors
        kernel, stride, padding = ctx.args
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, list(kernel), list(stride), list(padding), [1, 1], False, indices
        )
        return grad_x, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, repr and state dict) with the faster NCHW CPU path of the module docs."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not _fast_path(x, self):
            return super().forward(x)
        kernel, stride = (
            _pair(self.kernel_size),
            _pair(self.stride if self.stride is not None else self.kernel_size),
        )
        padding = _pair(self.padding)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FastMaxPool.apply(x, kernel, stride, padding)  # type: ignore[no-any-return]
        found = max_pool2d_with_indices(x, kernel, stride, padding)
        return found[0] if found is not None else super().forward(x)
