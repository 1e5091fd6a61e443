"""Feature contract of every registered backbone, registry strictness, truncation, stems."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.backbones import (
    Backbone,
    FeatureInfo,
    WeightsRecord,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# dilated bottleneck ResNets (output stride 8): one table for resnet50, resnet50-msra and resnet101
RESNET_BOTTLENECK = [
    ("stem", 64, 2),
    ("layer1", 256, 4),
    ("layer2", 512, 8),
    ("layer3", 1024, 8),
    ("layer4", 2048, 8),
]
EXPECTED = {
    "resnet50": RESNET_BOTTLENECK,
    "resnet50-msra": RESNET_BOTTLENECK,
    "resnet101": RESNET_BOTTLENECK,
    "vgg16": [
        ("block1", 64, 1),
        ("block2", 128, 2),
        ("block3", 256, 4),
        ("block4", 512, 8),
        ("block5", 512, 8),
    ],
    "cbr-tiny": [("block1", 32, 2), ("block2", 64, 4), ("block3", 128, 8), ("block4", 256, 16)],
    "cbr-small": [("block1", 32, 2), ("block2", 64, 4), ("block3", 128, 8), ("block4", 256, 16)],
    "cbr-large-t": [
        ("block1", 32, 2),
        ("block2", 64, 4),
        ("block3", 128, 8),
        ("block4", 256, 16),
        ("block5", 512, 16),
    ],
    "cbr-large-w": [("block1", 64, 2), ("block2", 128, 4), ("block3", 256, 8), ("block4", 512, 16)],
    "unet": [("block1", 32, 1), ("block2", 64, 2), ("block3", 128, 4), ("block4", 256, 8)],
}


def _check_contract(bb: Backbone, in_channels: int, size: int = 32) -> None:
    x = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    feats = bb(x)
    assert isinstance(feats, list) and len(feats) == len(bb.feature_info)
    strides = [f.stride for f in bb.feature_info]
    assert strides == sorted(strides)
    for f, info in zip(feats, bb.feature_info):
        assert isinstance(info, FeatureInfo)
        side = math.ceil(size / info.stride)
        assert tuple(f.shape) == (2, info.channels, side, side), (info, f.shape)
    sum(f.mean() for f in feats).backward()
    no_grad = [n for n, p in bb.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad[:5]


def test_registry_lists_all_builtins() -> None:
    assert list_backbones() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_contract_random_init(name: str) -> None:
    bb = create_backbone(name, init="random", seed=0)
    assert [(f.name, f.channels, f.stride) for f in bb.feature_info] == EXPECTED[name]
    assert bb.init_report is not None and bb.init_report.init == "random" and bb.init_report.seed == 0
    _check_contract(bb, 3)


@pytest.mark.parametrize(
    ("name", "truncate", "n_stages"),
    [("unet", "block3", 3), ("cbr-small", "block2", 2), ("vgg16", "block3", 3), ("resnet50", "layer2", 3)],
)
def test_gray_input_and_truncation(name: str, truncate: str, n_stages: int) -> None:
    bb = create_backbone(name, in_channels=1, truncate=truncate)
    assert [f.name for f in bb.feature_info] == [s for s, _, _ in EXPECTED[name][:n_stages]]
    assert bb.feature_info[-1].name == truncate
    # the truncated stages are really gone (no parameters of later stages)
    dropped = {s for s, _, _ in EXPECTED[name][n_stages:]}
    assert not [k for k in bb.state_dict() if bb.stage_of_key(k) in dropped]
    _check_contract(bb, 1)


def test_odd_input_size_rounds_up() -> None:
    bb = create_backbone("unet")
    feats = bb(torch.zeros(1, 3, 33, 35))
    assert [tuple(f.shape[-2:]) for f in feats] == [(33, 35), (17, 18), (9, 9), (5, 5)]


def test_vgg_key_layout_matches_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = create_backbone("vgg16").state_dict()
    tv_features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # = vgg16().features
    ref = {k: v.shape for k, v in tv_features.state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == {f"features.{k}": s for k, s in ref.items()}


def test_resnet_key_layout_matches_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = {k: v.shape for k, v in create_backbone("resnet50").state_dict().items()}
    ref = torchvision.models.resnet50(weights=None).state_dict()
    assert ours == {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}


def test_unknown_names_and_duplicates() -> None:
    with pytest.raises(KeyError, match="resnet50"):
        create_backbone("resnet-50")
    with pytest.raises(ValueError, match=r"block1.*block4"):
        create_backbone("unet", truncate="layer3")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("unet")(get_backbone_spec("unet").builder)
    with pytest.raises(ValueError, match="in_channels"):
        create_backbone("unet", in_channels=0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_stages_match_the_network(name: str) -> None:
    spec = get_backbone_spec(name)
    assert spec.stages == tuple(s for s, _, _ in EXPECTED[name])
    assert spec.builder(in_channels=3, truncate=None).all_stages == spec.stages


def test_weights_records_must_match_their_key() -> None:
    with pytest.raises(ValueError, match="declare another init"):
        register_backbone("bad-net", weights={"imagenet": WeightsRecord("genesis")})
    assert "bad-net" not in list_backbones()


def test_cbr_output_stride_drops_pools_and_keeps_weights() -> None:
    """``output_stride=4`` on cbr-small/block3: the last feature is 2x finer, the state-dict keys and shapes
    are those of the stride-8 network (its weights load unchanged), and the last block's convs are the same
    (block3 only loses its pool, so its pre-pool output is the stride-4 feature)."""
    native = create_backbone("cbr-small", truncate="block3", seed=0)
    fine = create_backbone("cbr-small", truncate="block3", seed=0, output_stride=4)
    assert [f.stride for f in native.feature_info] == [2, 4, 8]
    assert [f.stride for f in fine.feature_info] == [2, 4, 4]
    sd_native, sd_fine = native.state_dict(), fine.state_dict()
    assert {k: v.shape for k, v in sd_native.items()} == {k: v.shape for k, v in sd_fine.items()}
    fine.load_state_dict(sd_native)
    native.eval()
    fine.eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        a, b = native(x), fine(x)
        assert b[-1].shape == (2, 128, 16, 12) and a[-1].shape == (2, 128, 8, 6)
        torch.testing.assert_close(b[1], a[1])
        pooled = torch.nn.functional.max_pool2d(b[-1], 3, stride=2, padding=1)
        torch.testing.assert_close(pooled, a[-1])


def test_cbr_output_stride_dilates_later_blocks() -> None:
    """Blocks after a dropped pool are dilated by the factor it would have applied."""
    bb = create_backbone("cbr-small", output_stride=4)
    convs = [getattr(bb, f"block{i}")[0] for i in range(1, 5)]
    assert [c.dilation for c in convs] == [(1, 1), (1, 1), (1, 1), (2, 2)]
    assert [c.padding for c in convs] == [(3, 3), (3, 3), (3, 3), (6, 6)]
    out = bb(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in out] == [32, 16, 16, 16]
    assert [f.stride for f in bb.feature_info] == [2, 4, 4, 4]


def test_output_stride_is_checked_against_the_registry() -> None:
    with pytest.raises(ValueError, match=r"'resnet50' cannot be built with output_stride=4"):
        create_backbone("resnet50", output_stride=4)
    with pytest.raises(ValueError, match=r"output_stride=3"):
        create_backbone("cbr-small", output_stride=3)


def test_output_stride_in_model_config_and_skeleton() -> None:
    from fewshot.config import ModelConfig
    from fewshot.models import create_model, create_model_skeleton

    cfg = ModelConfig(backbone={"name": "cbr-tiny", "truncate": "block3", "output_stride": 4}, head="alpnet")
    model = create_model(cfg, seed=0)
    skeleton = create_model_skeleton(cfg)
    assert model.backbone.feature_info[-1].stride == skeleton.backbone.feature_info[-1].stride == 4
    skeleton.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="output_stride"):
        ModelConfig(backbone={"name": "vgg16", "output_stride": 4})
