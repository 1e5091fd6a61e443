"""Tests of fewshot.models: FewShotSegmenter / create_model with every head on a tiny backbone."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones.base import Backbone
from fewshot.config.model import BackboneConfig, InitConfig
from fewshot.heads import ALPNetConfig, DPCNConfig, PANetConfig, SGOneConfig, head_config_class
from fewshot.models import (
    EmptySupportError,
    FewShotSegmenter,
    ModelConfig,
    SegmentationOutput,
    create_model,
    create_model_skeleton,
    list_heads,
)

HEADS = ["sgone", "panet", "alpnet", "adnet", "dpcn"]


MakeModel = Callable[..., FewShotSegmenter]


def _config(head: str, allow_empty_support: bool = False, **head_kw: Any) -> ModelConfig:
    return ModelConfig(
        head=head_config_class(head)(**{"feature_dim": 8, **head_kw}), allow_empty_support=allow_empty_support
    )


@pytest.fixture
def make_model(tiny_backbone_cls: type[Backbone]) -> MakeModel:
    def make(head: str, seed: int = 0, **kw: Any) -> FewShotSegmenter:
        return create_model(_config(head, **kw), backbone=tiny_backbone_cls(), seed=seed)

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
    assert (out.align_loss is not None) == (head in ("panet", "alpnet", "adnet"))
    if out.align_loss is not None:
        assert out.align_loss.ndim == 0 and torch.isfinite(out.align_loss)
    assert (out.aux_loss is not None) == (head == "adnet")  # ADNet's threshold loss
    model.eval()
    ev = model(si, sm, q)
    assert ev.align_loss is None and ev.aux_loss is None


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
    cfg = ModelConfig(head=DPCNConfig(feature_dim=4))
    a = create_model(cfg, backbone=backbone, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = create_model(cfg, backbone=tiny_backbone_cls(), seed=3)
    c = create_model(cfg, backbone=tiny_backbone_cls(), seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.head.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def _leaves(d: dict[str, Any]) -> list[Any]:
    return [x for v in d.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


def test_config_defaults_are_the_former_flat_defaults() -> None:
    cfg = ModelConfig()
    assert cfg.backbone == BackboneConfig("resnet50", truncate=None, in_channels=3)
    assert cfg.init == InitConfig("random", weights=None, sha256=None)
    assert cfg.head == ALPNetConfig(
        feature_dim=256, scale=20.0, align=True, window_train=4, window_test=2, threshold=0.95
    )
    assert not cfg.allow_empty_support
    assert (SGOneConfig().feature_dim, SGOneConfig().scale) == (256, 20.0)
    assert (PANetConfig().feature_dim, PANetConfig().scale, PANetConfig().align) == (256, 20.0, True)
    assert DPCNConfig().feature_dim == 256
    assert all(v is None or isinstance(v, str | int | float | bool) for v in _leaves(cfg.to_dict()))
    assert ModelConfig(**cfg.to_dict()) == cfg  # nested dicts are coerced back


def test_config_coerces_strings_and_mappings() -> None:
    cfg = ModelConfig(backbone="cbr-small", init="random:xavier", head="panet")
    assert cfg.backbone == BackboneConfig("cbr-small")
    assert cfg.init == InitConfig("random:xavier")
    assert cfg.head == PANetConfig()
    cfg = ModelConfig(
        backbone={"name": "unet", "truncate": "block3", "in_channels": 1},
        init={"scheme": "transfuse:2", "weights": "w.pt", "sha256": "ABCDEF0123"},
        head={"name": "alpnet", "window_test": 3},
    )
    assert cfg.backbone.truncate == "block3" and cfg.init.sha256 == "abcdef0123"
    assert cfg.head == ALPNetConfig(window_test=3)
    with pytest.raises(ValueError, match="unknown BackboneConfig key"):
        ModelConfig(backbone={"name": "unet", "depth": 3})
    with pytest.raises(ValueError, match=r"valid keys: .*window_train"):
        ModelConfig(head={"name": "alpnet", "alp_window_train": 3})
    with pytest.raises(ValueError, match="needs a 'name'"):
        ModelConfig(head={"feature_dim": 3})


def test_config_is_validated_early(tiny_backbone_cls: type[Backbone]) -> None:
    with pytest.raises(ValueError, match="unknown head 'unet'; choices: adnet, alpnet, dpcn, panet, sgone"):
        ModelConfig(head="unet")
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet-50'; choices: cbr-large-t, .*vgg16"):
        ModelConfig(backbone="resnet-50")
    with pytest.raises(
        ValueError, match=r"unknown init 'imagenet21k'; choices: genesis, imagenet, .*transfuse:<k>"
    ):
        ModelConfig(init="imagenet21k")
    with pytest.raises(ValueError, match="unknown random scheme"):
        InitConfig("random:orthogonal")
    with pytest.raises(ValueError, match=r"valid stage names: \['block1'"):
        BackboneConfig("unet", truncate="layer3")
    with pytest.raises(ValueError, match="in_channels"):
        BackboneConfig("unet", in_channels=0)
    with pytest.raises(ValueError, match=r"0\.\.2"):  # transfuse depth checked against the kept stages
        ModelConfig(
            backbone=BackboneConfig("unet", truncate="block2"), init=InitConfig("transfuse:3", "w.pt")
        )
    with pytest.raises(ValueError, match="feature_dim"):
        DPCNConfig(feature_dim=0)
    with pytest.raises(ValueError, match="feature_dim"):
        PANetConfig(feature_dim=-1)
    with pytest.raises(ValueError, match="threshold"):
        ALPNetConfig(threshold=1.5)
    with pytest.raises(ValueError, match="windows"):
        ALPNetConfig(window_train=0)
    with pytest.raises(ValueError, match="scale"):
        SGOneConfig(scale=0.0)
    with pytest.raises(ValueError, match="configured by PANetConfig"):
        ALPNetConfig(name="panet")
    with pytest.raises(ValueError, match="sha256"):
        InitConfig("imagenet", sha256="xyz")
    with pytest.raises(TypeError, match="ModelConfig"):
        create_model({"head": "panet"}, backbone=tiny_backbone_cls())  # type: ignore[arg-type]
    model = create_model(
        ModelConfig(head=SGOneConfig(feature_dim=0, scale=10.0)), backbone=tiny_backbone_cls()
    )
    assert model.config.head == SGOneConfig(feature_dim=0, scale=10.0)
    assert not model.head.does_alignment
    assert dataclasses.is_dataclass(model.config)


def test_genesis_without_weights_fails_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"init='genesis' needs a weights file: set InitConfig.weights.*pretrain --objective genesis"
    ):
        ModelConfig(backbone="cbr-small", init="genesis", head="alpnet")
    with pytest.raises(ValueError, match="not used by init='random'"):
        InitConfig("random", weights="w.pt")
    assert InitConfig("genesis", weights="w.pt").needs_weights


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
    config = ModelConfig(backbone="cbr-tiny", head=PANetConfig(feature_dim=8))
    model = create_model(config)
    assert model.config is config and model.backbone.feature_info
    model.eval()
    si, sm, q = _episode(n=1, size=32)
    assert model(si, sm, q).logits.shape == (1, 2, 32, 32)


# Sums of all parameters (float64) of models built by the code before the registry refactor
# (``ModelConfig(backbone=..., head=..., seed=0)`` of the flat config), recorded once.
_BASELINE = {
    ("cbr-small", "alpnet"): (443.81290229741205, 26564.465075525266),
    ("resnet50", "panet"): (26516.031362664286, 747508.688735101),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("backbone", "head"), sorted(_BASELINE))
def test_seed_zero_reproduces_the_parameters_before_the_refactor(backbone: str, head: str) -> None:
    model = create_model(ModelConfig(backbone=backbone, init="random", head=head), seed=0)
    zero = torch.zeros((), dtype=torch.float64)
    total = sum((p.double().sum() for p in model.parameters()), zero).item()
    absolute = sum((p.double().abs().sum() for p in model.parameters()), zero).item()
    assert (total, absolute) == pytest.approx(_BASELINE[(backbone, head)], rel=1e-12, abs=1e-9)


def test_readme_one_liner() -> None:
    model = create_model(ModelConfig(backbone="resnet50", init="random", head="alpnet"))
    assert model.backbone.name == "resnet50" and model.config.head == ALPNetConfig()


@pytest.mark.usefixtures("one_thread")
def test_skeleton_has_the_same_architecture_and_logs_no_init(caplog: pytest.LogCaptureFixture) -> None:
    config = ModelConfig(
        backbone=BackboneConfig("cbr-tiny", truncate="block2"), head=DPCNConfig(feature_dim=4)
    )
    with caplog.at_level(logging.INFO, logger="fewshot"):
        trained = create_model(config, seed=5)
        assert sum("backbone cbr-tiny" in r.getMessage() for r in caplog.records) == 1  # once per build
        caplog.clear()
        skeleton = create_model_skeleton(config)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert skeleton.backbone.init_report is None and skeleton.config is config
    skeleton.load_state_dict(trained.state_dict(), strict=True)
    assert all(
        torch.equal(a, b) for a, b in zip(skeleton.state_dict().values(), trained.state_dict().values())
    )


def test_ensemble_averages_the_members_foreground_probabilities(tiny_backbone_cls: Any) -> None:
    from fewshot.models import EnsembleSegmenter, model_heads

    members = [FewShotSegmenter(ModelConfig(head="panet"), tiny_backbone_cls(seed=s), seed=s).eval() for s in (0, 1)]
    ens = EnsembleSegmenter(members).eval()
    g = torch.Generator().manual_seed(0)
    s_img, q_img = torch.rand(1, 1, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    s_msk = torch.zeros(1, 1, 32, 32)
    s_msk[..., 8:20, 8:20] = 1
    with torch.no_grad():
        out = ens(s_img, s_msk, q_img)
        probs = [m(s_img, s_msk, q_img).logits.softmax(1)[:, 1] for m in members]
    assert out.align_loss is None and out.logits.shape == (2, 2, 32, 32)
    assert not torch.allclose(probs[0], probs[1])
    torch.testing.assert_close(out.logits.softmax(1)[:, 1], (probs[0] + probs[1]) / 2, atol=1e-5, rtol=0)
    assert model_heads(ens) == [m.head for m in members] and model_heads(members[0]) == [members[0].head]
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleSegmenter(members[:1])
    other = FewShotSegmenter(ModelConfig(head="panet", fg_threshold=0.7), tiny_backbone_cls(), seed=2)
    with pytest.raises(ValueError, match=r"member 1 has model.fg_threshold=0.7, member 0 0.5"):
        EnsembleSegmenter([members[0], other])
    other = FewShotSegmenter(ModelConfig(head="panet", intensity_prior=0.5), tiny_backbone_cls(), seed=2)
    with pytest.raises(ValueError, match=r"member 1 has model.intensity_prior=0.5, member 0 0.0"):
        EnsembleSegmenter([members[0], other])
