"""Packaged experiment configs (YAML): the SSL-ALPNet settings, CPU budgets and the demo.

``config_path("ssl_alpnet_chaos_mr_setting1")`` returns the packaged file; a path to an
existing YAML file is returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "config_path", "list_configs"]

CONFIG_DIR = Path(__file__).resolve().parent


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


#: Packaged configs that were removed, and what replaces them.
REMOVED = {
    "ssl_alpnet_chaos_mr_setting2": "`fewshot fit --recipe ssl-alpnet-mri --setting 2` (one model per label group)",
    "ssl_alpnet_btcv_ct_setting2": "`fewshot fit --recipe ssl-alpnet-ct --setting 2` (one model per label group)",
}


def config_path(name: str) -> Path:
    """A packaged config by name (with or without ``.yaml``) or an existing YAML path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else name}.yaml"
    if packaged.is_file():
        return packaged
    if packaged.stem in REMOVED:
        raise FileNotFoundError(f"config {name!r} was removed (one config cannot hold setting 2's two models); use "
                                f"{REMOVED[packaged.stem]}")
    raise FileNotFoundError(
        f"config {name!r} is neither a YAML file nor a packaged config; packaged: {list_configs()}"
    )
