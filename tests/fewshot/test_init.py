"""Initialisation schemes: seeded random draws, ImageNet files offline, Mean-Var, transfusion."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path

import pytest
import torch

from fewshot.backbones import WeightsRecord, create_backbone, get_backbone_spec, parse_init
from fewshot.backbones.inits import (
    GENESIS_FORMAT,
    adapt_stem_weight,
    apply_init,
    get_init,
    init_choices,
    list_inits,
    register_init,
)

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
    record = WeightsRecord("imagenet", source="test", file=official, sha256=_file_sha(ckpt / official)[:8])
    rep = apply_init(bb, init="imagenet", records={"imagenet": record})
    assert rep.source == str(ckpt / official) and rep.record == record
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
    with pytest.raises(ValueError, match="fewshot pretrain --objective genesis"):
        create_backbone("unet", init="genesis")
    plain = tmp_path / "plain.pt"
    torch.save(_state("unet"), plain)
    with pytest.raises(ValueError, match="not a fewshot pretrained encoder file"):
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


# --------------------------------------------------------------------------- declared weights records


def test_backbones_declare_their_torchvision_records() -> None:
    expected = {
        "resnet50": ("resnet50-0676ba61.pth", "0676ba61"),
        "resnet101": ("resnet101-63fe2227.pth", "63fe2227"),
        "vgg16": ("vgg16-397923af.pth", "397923af"),
    }
    for name, (file, sha) in expected.items():
        rec = get_backbone_spec(name).weights["imagenet"]
        assert (rec.init, rec.file, rec.sha256) == ("imagenet", file, sha)
        assert rec.source == f"https://download.pytorch.org/models/{file}"
        assert rec.mean == (0.485, 0.456, 0.406) and rec.std == (0.229, 0.224, 0.225)
        assert WeightsRecord.from_dict(rec.to_dict()) == rec
    assert dict(get_backbone_spec("unet").weights) == {}
    with pytest.raises(ValueError, match="sha256"):
        WeightsRecord("imagenet", sha256="not-hex")
    with pytest.raises(ValueError, match="unknown WeightsRecord key"):
        WeightsRecord.from_dict({"init": "imagenet", "url": "x"})


def test_verification_uses_the_record_sha256_not_the_file_name(tmp_path: Path) -> None:
    path, _ = _resnet_source(tmp_path, "plain-name.pth")  # no hash in the name
    bb = get_backbone_spec("resnet50").builder(in_channels=3, truncate="layer1")
    good = WeightsRecord("imagenet", file=path.name, sha256=_file_sha(path)[:12])
    rep = apply_init(bb, init="imagenet", weights=path, records={"imagenet": good})
    assert rep.record == good and rep.to_dict()["record"]["sha256"] == good.sha256
    bad = WeightsRecord("imagenet", file=path.name, sha256="deadbeef", source="https://example.org/w.pth")
    with pytest.raises(
        ValueError, match=r"checksum mismatch.*'deadbeef'.*re-download https://example.org/w.pth"
    ):
        apply_init(bb, init="imagenet", weights=path, records={"imagenet": bad})


# --------------------------------------------------------------------------- registry


def test_init_registry_names_policies_and_strictness() -> None:
    assert list_inits() == ["genesis", "imagenet", "meanvar", "mim", "random", "transfuse"]
    assert [n for n in list_inits() if get_init(n).needs_weights] == ["genesis", "mim"]
    assert [n for n in list_inits() if not get_init(n).accepts_weights] == ["random"]
    assert get_init("transfuse:3").name == "transfuse"
    assert init_choices() == (
        "genesis, imagenet, meanvar, mim, random, random:kaiming, random:xavier, random:uniform, transfuse:<k>"
    )
    with pytest.raises(ValueError, match=r"unknown init 'orthogonal'; choices: genesis, imagenet"):
        get_init("orthogonal")
    with pytest.raises(ValueError, match="already registered"):
        register_init("random", weights="none")(get_init("random").apply)
    with pytest.raises(ValueError, match="without ':'"):
        register_init("a:b", weights="none")
    with pytest.raises(ValueError, match="'none', 'optional' or 'required'"):
        register_init("new-scheme", weights="maybe")  # type: ignore[arg-type]
    assert "new-scheme" not in list_inits()


def _unet_genesis_file(tmp_path: Path) -> Path:
    path = tmp_path / "genesis_unet.pt"
    record = WeightsRecord("genesis", source="test", file=path.name, mean=(0.0,) * 3, std=(1.0,) * 3)
    meta = {"format": GENESIS_FORMAT, "backbone": "unet", "record": record.to_dict()}
    torch.save({"state_dict": _state("unet", seed=2), "meta": meta}, path)
    return path


@pytest.mark.parametrize("init", ["random", "random:xavier", "imagenet", "genesis", "meanvar", "transfuse:2"])
def test_every_registered_init_builds(init: str, tmp_path: Path) -> None:
    assert get_init(init).name in list_inits()
    weights = _unet_genesis_file(tmp_path) if get_init(init).accepts_weights else None
    bb = create_backbone("unet", init=init, weights=weights, seed=1)
    rep = bb.init_report
    assert rep is not None and rep.init == init
    if weights is not None:
        assert rep.source == str(weights) and rep.sha256 == _file_sha(weights)
        assert rep.record is not None and rep.record.init == "genesis"  # the file's own record
    bb(torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist())
    )
    good = _unet_genesis_file(tmp_path)
    data = good.read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(data[: len(data) // 2])
    legacy = tmp_path / "legacy.pt"  # old pickle format (not a zip), truncated
    torch.save(_state("unet"), legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:5000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    return {"random": rnd, "truncated": trunc, "legacy-truncated": legacy, "empty": empty}


@pytest.mark.parametrize("init", ["genesis", "imagenet", "meanvar", "transfuse:1"])
def test_unreadable_weights_file_gives_one_clear_error(init: str, tmp_path: Path) -> None:
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            create_backbone("unet", init=init, weights=path)
        msg = str(err.value)
        assert str(path) in msg and "corrupt, truncated or not a PyTorch state dict" in msg, (kind, msg)
        assert "weights_only" not in msg, (kind, msg)
        if init == "genesis":
            assert f"re-run `fewshot pretrain --objective genesis --backbone unet --out {path}`" in msg
        else:
            assert "re-download" in msg and "fewshot pretrain --objective genesis" in msg
        chained = err.value.__cause__
        while chained is not None:  # nothing in the chain may suggest weights_only=False either
            assert "weights_only" not in str(chained), (kind, str(chained))
            chained = chained.__cause__


def test_unreadable_official_file_says_where_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    official = ckpt / "resnet50-0676ba61.pth"
    official.write_bytes(b"\x00" * 100)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = get_backbone_spec("resnet50").weights["imagenet"]
    bb = get_backbone_spec("resnet50").builder(in_channels=3, truncate="stem")
    unverified = WeightsRecord(
        "imagenet", source=record.source, file=record.file
    )  # no sha256: reach torch.load
    with pytest.raises(ValueError, match=r"cannot be read.*re-download https://download.pytorch.org/models/"):
        apply_init(bb, init="imagenet", records={"imagenet": unverified})
    with pytest.raises(
        ValueError, match=r"checksum mismatch.*re-download https://download.pytorch.org/models/"
    ):
        create_backbone("resnet50", init="imagenet", truncate="stem")


def test_genesis_without_file_fails_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewshot.backbones import registry

    def no_build(**kw: object) -> None:
        raise AssertionError("the backbone must not be built")

    spec = dataclasses.replace(get_backbone_spec("resnet50"), builder=no_build)
    monkeypatch.setitem(registry._REGISTRY, "resnet50", spec)
    with pytest.raises(
        ValueError,
        match=r"init='genesis' needs a weights file: set weights=FILE.*pretrain --objective genesis --backbone resnet50",
    ):
        create_backbone("resnet50", init="genesis")
