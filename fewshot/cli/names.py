"""The registered names the ``fewshot`` parser lists, as plain data (no torch import).

``fewshot --help`` must not import torch (seconds), so the parser reads the choices from here
instead of from the registries. ``tests/fewshot/test_cli_names.py`` checks that every list equals
its registry, so a new backbone, head, init, dataset or superpixel method fails the tests until it
is added here.
"""

from __future__ import annotations

__all__ = ["BACKBONES", "DATASETS", "HEADS", "INITS", "SUPERPIXEL_METHODS", "TTA_CHOICES", "WEIGHT_IMPORTS",
           "registry_names"]

#: ``episodes.data.datasets.list_datasets()``
DATASETS = ("btcv-ct", "chaos-dicom", "chaos-mr", "nifti", "phantom-ct", "phantom-mr")
#: ``fewshot.backbones.list_backbones()``
BACKBONES = (
    "cbr-large-t", "cbr-large-w", "cbr-small", "cbr-tiny", "resnet101", "resnet50", "resnet50-msra", "unet", "vgg16"
)
#: the backbones ``fewshot import-weights`` converts files for (``fewshot.backbones.keras_resnet.BACKBONE``)
WEIGHT_IMPORTS = ("resnet50-msra",)
#: ``fewshot.heads.list_heads()``
HEADS = ("adnet", "alpnet", "dpcn", "panet", "sgone")
#: ``fewshot.backbones.inits.list_inits()``
INITS = ("genesis", "imagenet", "meanvar", "mim", "random", "transfuse")
#: ``episodes.pseudolabels.METHODS``
SUPERPIXEL_METHODS = ("felzenszwalb", "slic", "fast-slic", "slic3d")
#: ``fewshot.config.model.TTA_CHOICES``
TTA_CHOICES = ("none", "flip")


def registry_names() -> dict[str, list[str]]:
    """The names of every registry the CLI exposes, keyed as in ``--help`` (``"dataset"``, ``"backbone"``...)."""
    return {
        "dataset": list(DATASETS),
        "backbone": list(BACKBONES),
        "head": list(HEADS),
        "init": list(INITS),
        "superpixel method": list(SUPERPIXEL_METHODS),
    }
