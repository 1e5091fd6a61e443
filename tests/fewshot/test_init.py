"""Initialisation schemes: seeded random draws, ImageNet files offline, Mean-Var, transfusion."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import pytest
import torch

from fewshot.backbones import create_backbone, get_backbone_spec, parse_init
from fewshot.backbones.init import GENESIS_FORMAT, adapt_stem_weight, apply_init

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(name: str, **kw: object) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in create_backbone(name, **kw).state_dict().items()}  # type: ignore[arg-type]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- random


def test_random_is_deterministic_per_seed() -> None:
    a, b, c = _state("cbr-tiny", seed=3), _state("cbr-tiny", seed=3), _state("cbr-tiny", seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["block2.0.weight"], c["block2.0.weight"])
    assert _state("cbr-tiny", init="random:kaiming", seed=3).keys() == a.keys()
    assert torch.equal(
        _state("cbr-tiny", init="random:kaiming", seed=3)["block4.0.weight"], a["block4.0.weight"]
    )


@pytest.mark.parametrize("scheme", ["kaiming", "xavier", "uniform"])
def test_random_scheme_statistics(scheme: str) -> None:
    bb = create_backbone("cbr-small", init=f"random:{scheme}", seed=0)
    w = bb.state_dict()["block4.0.weight"]  # (256, 128, 7, 7)
    fan_in, fan_out = 128 * 49, 256 * 49
    expected_std = {
        "kaiming": math.sqrt(2.0 / fan_out),
        "xavier": math.sqrt(2.0 / (fan_in + fan_out)),
        "uniform": (1.0 / math.sqrt(fan_in)) / math.sqrt(3.0),
    }[scheme]
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(w.mean().item()) < 0.02 * expected_std * 10
    if scheme == "uniform":
        assert w.abs().max().item() <= 1.0 / math.sqrt(fan_in) + 1e-7
    sd = bb.state_dict()
    assert torch.equal(sd["block4.1.weight"], torch.ones(256))
    assert torch.equal(sd["block4.1.bias"], torch.zeros(256))
    assert bb.init_report is not None
    assert set(bb.init_report.randomized) == {n for n, _ in bb.named_parameters()}


def test_parse_init_rejects_unknown() -> None:
    assert parse_init("transfuse:3").k == 3
    assert parse_init("random").scheme == "kaiming"
    for bad in ("imagenet21k", "random:orthogonal", "transfuse", "transfuse:-1", "meanvar:2"):
        with pytest.raises(ValueError, match="choices"):
            parse_init(bad)
    with pytest.raises(ValueError, match="weights="):
        create_backbone("unet", init="random", weights="x.pt")


# --------------------------------------------------------------------------- imagenet


def _resnet_source(tmp_path: Path, name: str = "my_resnet.pth") -> tuple[Path, dict[str, torch.Tensor]]:
    """A (truncated) ResNet-50 state dict with a fake classifier head, as a torchvision file would have."""
    src = _state("resnet50", truncate="layer1", seed=11)
    src["fc.weight"], src["fc.bias"] = torch.randn(10, 2048), torch.randn(10)
    path = tmp_path / name
    torch.save(src, path)
    return path, src


def test_imagenet_explicit_path_loads_and_records_checksum(tmp_path: Path) -> None:
    path, src = _resnet_source(tmp_path)
    bb = create_backbone("resnet50", init="imagenet", weights=path, truncate="layer1")
    sd = bb.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in sd)
    rep = bb.init_report
    assert rep is not None and rep.sha256 == _file_sha(path) and rep.source == str(path)
    assert "conv1.weight" in rep.loaded and rep.randomized == []
    # gray stem: RGB kernels summed
    gray = create_backbone("resnet50", init="imagenet", weights=path, truncate="layer1", in_channels=1)
    assert torch.allclose(gray.state_dict()["conv1.weight"], src["conv1.weight"].sum(1, keepdim=True))
    with pytest.raises(ValueError, match="checksum mismatch"):
        create_backbone("resnet50", init="imagenet", weights=path, truncate="layer1", weights_sha256="00ff")


def test_imagenet_hub_file_with_matching_official_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, src = _resnet_source(tmp_path)
    official = f"resnet50-{_file_sha(path)[:8]}.pth"
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    path.rename(ckpt / official)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    bb = get_backbone_spec("resnet50").builder(in_channels=3, truncate="layer1")
    rep = apply_init(bb, init="imagenet", imagenet_file=official)
    assert rep.source == str(ckpt / official)
    assert torch.equal(bb.state_dict()["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


def test_imagenet_official_name_with_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(_state("resnet50", truncate="layer1"), ckpt / "resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=r"checksum mismatch.*0676ba61"):
        create_backbone("resnet50", init="imagenet", truncate="layer1")


def test_imagenet_missing_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_backbone("resnet101", init="imagenet", truncate="stem")
    assert "resnet101-63fe2227.pth" in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(
        err.value
    )
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth"):
        create_backbone("vgg16", init="imagenet", truncate="block1")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_backbone("cbr-tiny", init="imagenet")


def test_imagenet_key_mismatch_is_reported(tmp_path: Path) -> None:
    src = _state("unet")
    src["block9.weight"] = src.pop("block2.1.weight")
    path = tmp_path / "bad.pt"
    torch.save(src, path)
    with pytest.raises(ValueError, match=r"missing keys.*block2\.1\.weight.*unexpected keys.*block9\.weight"):
        create_backbone("unet", init="imagenet", weights=path)
    with pytest.raises(ValueError, match="shape mismatch"):
        torch.save(_state("cbr-small"), path)
        create_backbone("cbr-tiny", init="imagenet", weights=path)


def test_adapt_stem_weight_keeps_gray_response() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 1, 8, 8)
    ref = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w)
    for c in (1, 6):
        out = torch.nn.functional.conv2d(x.repeat(1, c, 1, 1), adapt_stem_weight(w, c))
        assert torch.allclose(out, ref, atol=1e-4)
    w1 = w[:, :1]
    ref1 = torch.nn.functional.conv2d(x, w1)
    for c in (2, 5):
        out = torch.nn.functional.conv2d(x.repeat(1, c, 1, 1), adapt_stem_weight(w1, c))
        assert torch.allclose(out, ref1, atol=1e-4)
    assert adapt_stem_weight(w, 2).shape == (4, 2, 3, 3)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        adapt_stem_weight(torch.zeros(4, 2, 3, 3), 1)


# --------------------------------------------------------------------------- meanvar / transfuse / genesis


def test_meanvar_matches_source_statistics(tmp_path: Path) -> None:
    src = _state("unet", seed=5)
    conv_keys = [k for k, v in src.items() if v.dim() == 4]
    for i, k in enumerate(conv_keys):
        src[k] = src[k] * (0.5 + 0.25 * i) + (0.1 * i - 0.3)
    path = tmp_path / "src.pt"
    torch.save(src, path)
    bb = create_backbone("unet", init="meanvar", weights=path, seed=1)
    sd = bb.state_dict()
    for k in conv_keys:
        mu, sd_src = src[k].mean().item(), src[k].std().item()
        assert sd[k].mean().item() == pytest.approx(mu, abs=0.1 * sd_src)
        assert sd[k].std().item() == pytest.approx(sd_src, rel=0.08)
        assert not torch.allclose(sd[k], src[k])
    assert torch.equal(sd["block1.1.weight"], torch.ones(32))  # BN reset, not copied
    rep = bb.init_report
    assert rep is not None and rep.loaded == [] and rep.sha256 == _file_sha(path)


def test_transfuse_copies_exactly_first_k_stages(tmp_path: Path) -> None:
    src = _state("unet", seed=7)
    src = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in src.items()}
    path = tmp_path / "src.pt"
    torch.save(src, path)
    rnd = _state("unet", init="random", seed=0)
    bb = create_backbone("unet", init="transfuse:2", weights=path, seed=0)
    sd = bb.state_dict()
    for k, v in sd.items():
        stage = bb.stage_of_key(k)
        if stage in ("block1", "block2"):
            assert torch.equal(v, src[k]), k
        else:
            assert torch.equal(v, rnd[k]), k
    rep = bb.init_report
    assert rep is not None
    assert {bb.stage_of_key(k) for k in rep.loaded} == {"block1", "block2"}
    assert {bb.stage_of_key(k) for k in rep.randomized} == {"block3", "block4"}
    with pytest.raises(ValueError, match=r"0\.\.4"):
        create_backbone("unet", init="transfuse:5", weights=path)


def test_genesis_requires_our_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretrain-genesis"):
        create_backbone("unet", init="genesis")
    plain = tmp_path / "plain.pt"
    torch.save(_state("unet"), plain)
    with pytest.raises(ValueError, match="not a fewshot Models Genesis"):
        create_backbone("unet", init="genesis", weights=plain)
    other = tmp_path / "other.pt"
    torch.save(
        {"state_dict": _state("cbr-tiny"), "meta": {"format": GENESIS_FORMAT, "backbone": "cbr-tiny"}}, other
    )
    with pytest.raises(ValueError, match="'cbr-tiny', not 'unet'"):
        create_backbone("unet", init="genesis", weights=other)


def test_init_report_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fewshot"):
        create_backbone("cbr-tiny", init="random:xavier", seed=9)
    assert any("cbr-tiny" in r.getMessage() and "random:xavier" in r.getMessage() for r in caplog.records)
