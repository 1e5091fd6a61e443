"""fewshot.backbones.pooling.MaxPool2d gives nn.MaxPool2d's values, indices and gradients bit for bit."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from fewshot.backbones import create_backbone
from fewshot.backbones.pooling import MaxPool2d, aten_max_pool, max_pool2d_with_indices

CASES = [  # shape, kernel, stride, padding
    ((2, 4, 32, 32), 3, 2, 1),  # the CBR / ResNet pool
    ((2, 3, 17, 13), 3, 2, 1),  # odd sizes: the last window is cut by the border
    ((1, 2, 16, 16), 2, 2, 0),
    ((1, 2, 15, 15), 3, 1, 1),  # VGG's block5 pool: overlapping windows at stride 1
    ((1, 2, 9, 11), (3, 2), (2, 1), (1, 0)),
]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), CASES)
def test_values_indices_and_gradients_equal_nn_max_pool(
    shape: tuple[int, ...], kernel: int, stride: int, padding: int, ties: bool, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(0)
    # ties: few distinct values, so most windows hold their maximum twice or more (ATen keeps the first)
    x = (
        torch.randint(0, 3, shape, generator=gen).float()
        if ties
        else torch.randn(shape, generator=gen).relu()
    )
    x = x.to(dtype)
    ref, new = nn.MaxPool2d(kernel, stride, padding), MaxPool2d(kernel, stride, padding)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(a), new(b)
    grad = torch.randn(ya.shape, generator=gen).to(dtype)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)  # type: ignore[arg-type]
    k, s, p = _pair(kernel), _pair(stride), _pair(padding)
    values, indices = torch.ops.aten.max_pool2d_with_indices(x, list(k), list(s), list(p), [1, 1], False)
    found = max_pool2d_with_indices(x, k, s, p)
    assert found is not None and torch.equal(found[0], values) and torch.equal(found[1], indices)
    with torch.no_grad():  # evaluation: no autograd node, same values
        assert torch.equal(new(x), values)


def test_windows_without_a_finite_maximum_and_other_layouts_go_to_aten() -> None:
    x = torch.randn(2, 3, 8, 8)
    x[0, 0, 2, 2] = float("nan")
    x[1, 1] = float("-inf")  # a whole channel of -inf: ATen's index choice there is not reproduced
    assert max_pool2d_with_indices(x, (3, 3), (2, 2), (1, 1)) is None
    pool = MaxPool2d(3, 2, 1)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        a, b = inp.clone().requires_grad_(), inp.clone().requires_grad_()
        ya, yb = nn.MaxPool2d(3, 2, 1)(a), pool(b)
        ya.sum().backward()
        yb.sum().backward()
        assert torch.equal(ya.nan_to_num(), yb.nan_to_num()) and torch.equal(a.grad, b.grad)  # type: ignore[arg-type]
    assert repr(pool) == repr(nn.MaxPool2d(3, 2, 1)) and pool.state_dict() == {}
    with_indices = MaxPool2d(3, 2, 1, return_indices=True)(x)
    assert isinstance(with_indices, tuple) and len(with_indices) == 2


@pytest.mark.parametrize(("name", "truncate"), [("cbr-small", "block3"), ("resnet50", "layer1")])
def test_backbones_use_it_and_train_as_with_aten(name: str, truncate: str) -> None:
    """Two SGD steps of a backbone under bf16 autocast: the same weights with the fast pool and with ATen's."""
    torch.manual_seed(0)
    net = create_backbone(name, truncate=truncate)
    assert any(type(m) is MaxPool2d for m in net.modules())
    nets = [net, copy.deepcopy(net)]
    x = torch.randn(2, 3, 64, 64)
    for i, model in enumerate(nets):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            with aten_max_pool() if i else nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x)[-1].float().square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    a, b = (m.state_dict() for m in nets)
    assert all(torch.equal(a[k], b[k]) for k in a)
