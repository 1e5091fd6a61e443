"""``fewshot --help`` imports no torch: the parser's static name lists equal the registries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from episodes.data.datasets import list_datasets
from episodes.pseudolabels import METHODS
from fewshot.backbones import keras_resnet, list_backbones
from fewshot.backbones.inits import list_inits
from fewshot.cli import names
from fewshot.config.model import TTA_CHOICES
from fewshot.heads import list_heads

REPO = Path(__file__).resolve().parents[2]


def test_static_names_equal_the_registries() -> None:
    assert list(names.DATASETS) == list_datasets()
    assert list(names.BACKBONES) == list_backbones()
    assert list(names.HEADS) == list_heads()
    assert list(names.INITS) == list_inits()
    assert list(names.SUPERPIXEL_METHODS) == list(METHODS)
    assert tuple(names.TTA_CHOICES) == tuple(TTA_CHOICES)
    assert names.WEIGHT_IMPORTS == (keras_resnet.BACKBONE,)  # the importers `fewshot import-weights` runs


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from fewshot.cli import build_parser\n"
        "p = build_parser()\n"
        "for argv in (['--help'], ['train', '--help'], ['evaluate', '--help'], ['segment', '--help'], ['import-weights', '--help']):\n"
        "    try:\n"
        "        p.parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'pytorch_lightning', 'scipy', 'skimage') if m in sys.modules)\n"
        "print(','.join(heavy), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stderr.strip().splitlines()[-1:] in ([], [""]), done.stderr[-2000:]
