"""The packaged configs' comments were rewritten (issue 41); their keys and values must not move.

``data/configs_716a216.json`` holds every packaged config as main had it at 716a216, before the rewrite: the
YAML as written (``raw``) and as :func:`load_config` resolves it (``resolved``). A change to a packaged config's
keys or values must update that snapshot on purpose, with the results it invalidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fewshot.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "fewshot" / "configs"
SNAPSHOT = json.loads((Path(__file__).parent / "data" / "configs_716a216.json").read_text())["configs"]


def _json(value: object) -> object:
    return json.loads(json.dumps(value))  # tuples -> lists, as in the snapshot


def test_the_snapshot_covers_every_packaged_config() -> None:
    assert sorted(SNAPSHOT) == sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_packaged_config_keys_and_values_are_unchanged(name: str) -> None:
    path = CONFIG_DIR / name
    assert _json(yaml.safe_load(path.read_text())) == SNAPSHOT[name]["raw"]
    assert _json(load_config(path).to_dict()) == SNAPSHOT[name]["resolved"]
