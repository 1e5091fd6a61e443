"""Tests of fewshot.models: FewShotSegmenter / create_model with every head on a tiny backbone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones.base import Backbone
from fewshot.models import (
    EmptySupportError,
    FewShotSegmenter,
    ModelConfig,
    SegmentationOutput,
    create_model,
    list_heads,
)

HEADS = ["sgone", "panet", "alpnet", "dpcn"]


MakeModel = Callable[..., FewShotSegmenter]


@pytest.fixture
def make_model(tiny_backbone_cls: type[Backbone]) -> MakeModel:
    def make(head: str, **kw: Any) -> FewShotSegmenter:
        return create_model(backbone=tiny_backbone_cls(), head=head, feature_dim=8, **kw)

    return make


def _episode(n: int = 2, k: int = 1, b: int | None = None, size: int = 32, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    b = n if b is None else b
    si = torch.randn(b, k, 3, size, size, generator=g)
    sm = torch.zeros(b, k, size, size)
    sm[..., size // 4 : 3 * size // 4, size // 8 : size // 2] = 1.0
    q = torch.randn(n, 3, size, size, generator=g)
    return si, sm, q


def test_list_heads() -> None:
    assert sorted(list_heads()) == sorted(HEADS)


@pytest.mark.parametrize("head", HEADS)
def test_output_shape_and_alignment(head: str, make_model: MakeModel) -> None:
    model = make_model(head)
    si, sm, q = _episode(k=2)
    out = model(si, sm, q)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, 2, 32, 32)
    assert (out.align_loss is not None) == (head in ("panet", "alpnet"))
    if out.align_loss is not None:
        assert out.align_loss.ndim == 0 and torch.isfinite(out.align_loss)
    model.eval()
    assert model(si, sm, q).align_loss is None


@pytest.mark.parametrize("head", HEADS)
def test_support_broadcast_equals_repetition_and_eval_is_deterministic(
    head: str, make_model: MakeModel
) -> None:
    model = make_model(head).eval()
    si, sm, q = _episode(n=3, k=2, b=1)
    with torch.no_grad():
        a = model(si, sm, q).logits
        b = model(si.expand(3, -1, -1, -1, -1), sm.expand(3, -1, -1, -1), q).logits
        c = model(si, sm, q).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(a, c)


def test_different_support_and_query_sizes_use_two_passes(make_model: MakeModel) -> None:
    model = make_model("panet").eval()
    si, sm, _ = _episode(size=32)
    q = torch.randn(2, 3, 24, 24)
    assert model(si, sm, q).logits.shape == (2, 2, 24, 24)


@pytest.mark.parametrize("head", HEADS)
def test_optimisation_reduces_loss_on_separable_episode(head: str, make_model: MakeModel) -> None:
    torch.manual_seed(0)
    model = make_model(head)
    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(1, 32, 32)
    mask[0, 8:24, 4:20] = 1.0
    qmask = torch.zeros(1, 32, 32)
    qmask[0, 6:22, 10:26] = 1.0

    def image(m: torch.Tensor) -> torch.Tensor:  # bright foreground, dark background, a little noise
        return (m[:, None] * 2.0 - 1.0).expand(-1, 3, -1, -1) + 0.1 * torch.randn(1, 3, 32, 32, generator=g)

    si, q = image(mask)[:, None], image(qmask)
    sm = mask[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    weights = torch.tensor([0.5, 1.0])
    losses = []
    for _ in range(8):
        out = model(si, sm, q)
        loss = F.cross_entropy(out.logits, qmask.long(), weight=weights)
        if out.align_loss is not None:
            loss = loss + out.align_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_seed_makes_heads_reproducible_without_touching_global_rng(tiny_backbone_cls: type[Backbone]) -> None:
    backbone = tiny_backbone_cls()  # built first: nn.Conv2d's default init draws from the global RNG
    state = torch.random.get_rng_state()
    a = create_model(backbone=backbone, head="dpcn", feature_dim=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = create_model(backbone=tiny_backbone_cls(), head="dpcn", feature_dim=4, seed=3)
    c = create_model(backbone=tiny_backbone_cls(), head="dpcn", feature_dim=4, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.head.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_config_is_yaml_friendly_and_validated(tiny_backbone_cls: type[Backbone]) -> None:
    cfg = ModelConfig()
    assert all(v is None or isinstance(v, str | int | float | bool | tuple) for v in cfg.to_dict().values())
    with pytest.raises(ValueError, match="choices: alpnet, dpcn, panet, sgone"):
        ModelConfig(head="unet")
    with pytest.raises(ValueError, match="feature_dim"):
        ModelConfig(head="dpcn", feature_dim=0)
    with pytest.raises(ValueError, match="alp_threshold"):
        ModelConfig(alp_threshold=1.5)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        create_model(backbone=tiny_backbone_cls(), heads="panet")
    model = create_model(ModelConfig(head="sgone", feature_dim=0), backbone=tiny_backbone_cls(), scale=10.0)
    assert model.config.scale == 10.0 and model.config.head == "sgone" and not model.head.does_alignment
    assert dataclasses.is_dataclass(model.config)


def test_bad_inputs_raise_clear_errors(make_model: MakeModel) -> None:
    model = make_model("alpnet")
    si, sm, q = _episode(k=2)
    with pytest.raises(ValueError, match=r"expected 3 channels .* got 1"):
        model(si, sm, q[:, :1])
    with pytest.raises(ValueError, match="support_images: expected 3 channels"):
        model(si[:, :, :2], sm, q)
    with pytest.raises(ValueError, match="support_masks size"):
        model(si, sm[..., :16, :16], q)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        model(si, sm[:, :1], q)  # K mismatch between images and masks
    with pytest.raises(ValueError, match="support batch must be 1 or the query batch 2"):
        model(torch.cat([si, si[:1]]), torch.cat([sm, sm[:1]]), q)
    with pytest.raises(ValueError, match="binary"):
        model(si, sm * 0.5, q)
    with pytest.raises(ValueError, match=r"\(B, K, C, H, W\)"):
        model(si[:, 0], sm, q)


@pytest.mark.parametrize("head", HEADS)
def test_empty_support_mask(head: str, make_model: MakeModel) -> None:
    si, sm, q = _episode(k=2)
    sm[1, 0] = 0.0
    with pytest.raises(EmptySupportError, match=r"\(1, 0\)"):
        make_model(head)(si, sm, q)
    out = make_model(head, allow_empty_support=True)(si, sm, q)
    assert torch.isfinite(out.logits).all()


def test_bool_masks_are_accepted(make_model: MakeModel) -> None:
    model = make_model("panet").eval()
    si, sm, q = _episode()
    torch.testing.assert_close(model(si, sm.bool(), q).logits, model(si, sm, q).logits)


def test_create_model_with_registered_backbone() -> None:
    backbones = pytest.importorskip("fewshot.backbones")
    if "cbr-tiny" not in backbones.list_backbones():
        pytest.skip("cbr-tiny backbone not registered")
    config = ModelConfig(backbone="cbr-tiny", head="panet", feature_dim=8)
    model = create_model(config)
    assert model.config is config and model.backbone.feature_info
    model.eval()
    si, sm, q = _episode(n=1, size=32)
    assert model(si, sm, q).logits.shape == (1, 2, 32, 32)
