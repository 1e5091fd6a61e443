"""Packaged experiment configs (YAML): the SSL-ALPNet settings, CPU budgets and the demo.

``config_path("ssl_alpnet_chaos_mr_setting1")`` returns the packaged file; a path to an
existing YAML file is returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "RENAMED", "config_path", "list_configs"]

CONFIG_DIR = Path(__file__).resolve().parent


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


#: Packaged configs that were removed, and what replaces them.
REMOVED = {
    "ssl_alpnet_chaos_mr_setting2": "`fewshot fit --recipe ssl-alpnet-mri --setting 2` (one model per label group)",
    "ssl_alpnet_btcv_ct_setting2": "`fewshot fit --recipe ssl-alpnet-ct --setting 2` (one model per label group)",
}


#: Packaged configs that were renamed (the old names still load): their names said "30 minutes", and a fold of
#: the recipes built on them takes 36 (MRI) to 58 (CT) minutes on 2 cores.
RENAMED = {
    "cpu_chaos_30min": "mri_cbr_small",
    "cpu_btcv_30min": "ct_cbr_small",
    "cpu_btcv_r50": "ct_resnet50",
    "gpu_chaos_r50_256": "mri_resnet50_256",
}


def config_path(name: str) -> Path:
    """A packaged config by name (with or without ``.yaml``) or an existing YAML path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else name
    packaged = CONFIG_DIR / f"{RENAMED.get(stem, stem)}.yaml"
    if packaged.is_file():
        return packaged
    if packaged.stem in REMOVED:
        raise FileNotFoundError(f"config {name!r} was removed (one config cannot hold setting 2's two models); use "
                                f"{REMOVED[packaged.stem]}")
    raise FileNotFoundError(
        f"config {name!r} is neither a YAML file nor a packaged config; packaged: {list_configs()}"
    )
