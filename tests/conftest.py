"""Shared fixtures: real-data location and torch thread settings."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REAL_DATA_REASON = (
    "FEWSHOT_DATA is not set: point it at the folder holding chaos_mr_t2_ssl_alpnet_preproc/ "
    "and sabs_btcv_ct_ssl_alpnet_preproc/ to run the real-data tests (.ci/run sets it)"
)


def real_data_dir(subdir: str) -> Path:
    """``$FEWSHOT_DATA/<subdir>``, or skip the test with a clear reason."""
    root = os.environ.get("FEWSHOT_DATA")
    if not root:
        pytest.skip(REAL_DATA_REASON)
    path = Path(root) / subdir
    if not path.is_dir():
        pytest.fail(f"FEWSHOT_DATA={root} is set but {path} does not exist")
    return path


@pytest.fixture(scope="session")
def chaos_dir() -> Path:
    return real_data_dir("chaos_mr_t2_ssl_alpnet_preproc")


@pytest.fixture(scope="session")
def btcv_dir() -> Path:
    return real_data_dir("sabs_btcv_ct_ssl_alpnet_preproc")


REAL_DATA_FIXTURES = frozenset({"chaos_dir", "btcv_dir"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that uses a real-data fixture without the ``realdata`` marker: ``-m "not realdata"`` would
    still select it, and with ``$FEWSHOT_DATA`` set it would read the real scans."""
    unmarked = [
        item.nodeid
        for item in items
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("realdata") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            f"these tests use {' or '.join(sorted(REAL_DATA_FIXTURES))} but lack @pytest.mark.realdata: {unmarked}"
        )
