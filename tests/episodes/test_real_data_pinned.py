"""The SSL-ALPNet-preprocessed sets reach the model bit for bit as before canonical orientation existed.

Issue 40 brought scans to one orientation (and optionally one in-plane spacing) when read. The
library's target orientation is the one these sets are already in, so their arrays must not move:
the digests below were computed on the code before that change (commit 13dccd6).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from episodes.data.loaders import load_btcv_png_folder, load_ssl_alpnet_folder
from episodes.data.preprocess import fit_ct_stats, preprocess, resize_volume

pytestmark = pytest.mark.realdata


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# subject: (raw image, raw label, model image at 128 px, model label at 128 px, raw image resized to 128 px)
CHAOS_PINNED = {
    "1": ("d9052d8f48cfd2c5", "bf31c9d7e5f2478f", "7428cc7c73950e19", "a02ec0d798228169", "1322c35cd022eddd"),
    "19": ("40c3c691536aa493", "43483a91ffe32096", "d60809306b491262", "4df5572058b492a6", "cbd4c75b23c10665"),
}
# subject: (raw image, raw label, model image at 256 px, model label at 256 px); CT statistics of these two
BTCV_PINNED = {
    "0": ("928a0f775bbd0a8a", "8dd253a28792e189", "f05267b7d5b0df75", "1dde3581d6da3c31"),
    "13": ("779bb5be3829beeb", "3fd6f664ec046d1d", "c18d7d5db963175d", "5b37d6b7e9ab9583"),
}


def test_chaos_mr_arrays_unchanged(chaos_dir) -> None:  # type: ignore[no-untyped-def]
    for v in load_ssl_alpnet_folder(chaos_dir, subjects=list(CHAOS_PINNED)):
        p = preprocess(v, size=128)
        got = (_digest(v.image), _digest(v.label), _digest(p.image), _digest(p.label), _digest(resize_volume(v, 128).image))
        assert got == CHAOS_PINNED[v.subject], v.subject
        assert v.spacing == (7.699999809265137, 1.25, 1.25)


def test_btcv_ct_arrays_unchanged(btcv_dir) -> None:  # type: ignore[no-untyped-def]
    volumes = load_btcv_png_folder(btcv_dir, subjects=list(BTCV_PINNED))
    stats = fit_ct_stats(volumes)
    for v in volumes:
        p = preprocess(v, size=256, ct_stats=stats)
        got = (_digest(v.image), _digest(v.label), _digest(p.image), _digest(p.label))
        assert got == BTCV_PINNED[v.subject], v.subject


def test_restored_chaos_scan_reaches_the_model_as_stored(chaos_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real scan re-stored as a user's file might be (bench_orientation.py's copies) reads back to what the
    model sees of the original: exactly when re-oriented, closely when resampled to 0.8 mm and padded to 512²."""
    import sys
    from pathlib import Path

    import nibabel as nib

    from episodes.data.labels import CHAOS_MR
    from episodes.data.volumes import load_nifti_pair
    from fewshot.segment import _fov_window, _on_grid, model_grids

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_orientation import reoriented, resampled

    src = nib.load(str(chaos_dir / "image_1.nii.gz"))
    x, aff = np.asarray(src.dataobj), src.affine
    kw = {"subject": "1", "modality": "MR", "label_map": CHAOS_MR}
    original = load_nifti_pair(chaos_dir / "image_1.nii.gz", None, **kw)  # type: ignore[arg-type]
    xo, ao = reoriented(x, aff)
    nib.save(nib.Nifti1Image(xo.astype(np.float32), ao), str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(load_nifti_pair(tmp_path / "a.nii.gz", None, **kw).image, original.image)  # type: ignore[arg-type]
    xr, ar = resampled(x, aff, 0.8, 512, label=False)
    nib.save(nib.Nifti1Image(xr, ar), str(tmp_path / "b.nii.gz"))
    padded = load_nifti_pair(tmp_path / "b.nii.gz", None, **kw)  # type: ignore[arg-type]
    g_sup, g_qry = model_grids(original, padded, 128, None)
    a = _on_grid(preprocess(original, size=None, stats_window=_fov_window(g_sup, 128)), g_sup).image
    b = _on_grid(preprocess(padded, size=None, stats_window=_fov_window(g_qry, 128)), g_qry).image
    assert g_sup.size == g_qry.size == 176 and g_qry.scaled == (164, 164)
    inner = (slice(None), slice(26, 150), slice(26, 150))  # the original's 320 mm field of view on the grid
    assert np.corrcoef(a[inner].ravel(), b[inner].ravel())[0, 1] > 0.97
    assert abs(float(a[inner].mean() - b[inner].mean())) < 0.05
