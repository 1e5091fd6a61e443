"""`fewshot segment` on scans stored in other orientations, spacings and formats, and its bad-input lines.

A tiny phantom model is trained once (2 steps); what matters here is geometry, not accuracy: a query or
support stored with permuted/flipped (and rotated) axes must give exactly the prediction of the scan stored
canonically, mapped back to the file's own layout.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from episodes.data.phantom import make_phantom
from fewshot.cli import main
from tests.fewshot.phantom_args import TINY

#: LAS (the library's canonical orientation), 4.7 mm pixels, 6 mm slices
BASE = np.array([[-4.7, 0, 0, 100.0], [0, 4.7, 0, -50.0], [0, 0, 6.0, 20.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("model") / "run"
    args = ["train", "--config", "demo_phantom", "--dataset", "phantom-ct", "--steps", "2", "--out", str(run)]
    assert main([*args, *TINY]) == 0
    return run / "checkpoints" / "last.ckpt"


def _stored(array_xyz: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...],
            rotate_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``array_xyz`` stored with its axes permuted (``perm``) and flipped, the affine keeping every voxel's
    world position; ``rotate_deg`` turns the world about the z axis (an oblique scan)."""
    out = np.transpose(array_xyz, perm)
    index = np.eye(4)[:, [*perm, 3]]  # new index -> old index, permutation
    for axis in flips:
        out = np.flip(out, axis)
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1.0, out.shape[axis] - 1
        index = index @ flip
    new = affine @ index
    if rotate_deg:
        t = np.deg2rad(rotate_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        new = rot @ new
    return np.ascontiguousarray(out), new


def _undo(array: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]) -> np.ndarray:
    for axis in reversed(flips):
        array = np.flip(array, axis)
    return np.transpose(array, np.argsort(perm))


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _segment(ckpt: Path, sup: Path, mask: Path, qry: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    args = ["segment", "--checkpoint", str(ckpt), "--support", str(sup), "--support-mask", str(mask)]
    assert main([*args, "--organ", "liver", "--query", str(qry), "--out", str(out)]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    sup, qry = make_phantom(101, shape=(12, 64, 64)), make_phantom(102, shape=(12, 64, 64))
    assert sup.label is not None
    return {
        "sup": np.transpose(sup.image, (1, 2, 0)),
        "mask": np.transpose((sup.label == 1).astype(np.uint8), (1, 2, 0)),
        "qry": np.transpose(qry.image, (1, 2, 0)),
    }


LAYOUTS = [  # (permutation, flips, rotation in degrees)
    ((1, 0, 2), (0,), 0.0),  # in-plane axes swapped and one flipped: RAS-like "PLS"
    ((0, 1, 2), (0, 1), 0.0),  # both in-plane axes flipped: RPS
    ((2, 0, 1), (1,), 0.0),  # slices first, as a sagittal-order file would store them
    ((1, 0, 2), (1,), 12.0),  # permuted, flipped and oblique (12 degrees about z)
]


def test_query_and_support_in_other_orientations_give_the_same_prediction(
    tmp_path: Path, ckpt: Path, scans: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {k: _save(tmp_path / f"{k}.nii.gz", v, BASE) for k, v in scans.items()}
    ref = _segment(ckpt, paths["sup"], paths["mask"], paths["qry"], tmp_path / "ref.nii.gz", capsys)
    ref_pred = np.asarray(nib.load(str(tmp_path / "ref.nii.gz")).dataobj)
    assert ref["query_orientation"] == "LAS" and ref_pred.any()
    for i, (perm, flips, deg) in enumerate(LAYOUTS):
        # the query stored another way: the written prediction is in the query file's own layout and affine
        q, q_aff = _stored(scans["qry"], BASE, perm, flips, deg)
        qpath = _save(tmp_path / f"q{i}.nii.gz", q, q_aff)
        _segment(ckpt, paths["sup"], paths["mask"], qpath, tmp_path / f"pq{i}.nii.gz", capsys)
        written = nib.load(str(tmp_path / f"pq{i}.nii.gz"))
        np.testing.assert_allclose(written.affine, q_aff, atol=1e-5)
        assert written.shape == q.shape
        np.testing.assert_array_equal(_undo(np.asarray(written.dataobj), perm, flips), ref_pred)
        # the support (and its mask) stored another way, the query as stored
        s, s_aff = _stored(scans["sup"], BASE, perm, flips, deg)
        m, _ = _stored(scans["mask"], BASE, perm, flips, deg)
        spath, mpath = _save(tmp_path / f"s{i}.nii.gz", s, s_aff), _save(tmp_path / f"m{i}.nii.gz", m, s_aff)
        _segment(ckpt, spath, mpath, paths["qry"], tmp_path / f"ps{i}.nii.gz", capsys)
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / f"ps{i}.nii.gz")).dataobj), ref_pred)
    # a mask stored in another axis order than its image, on the same voxels, is accepted
    m, m_aff = _stored(scans["mask"], BASE, (1, 0, 2), (0,))
    mpath = _save(tmp_path / "m_other.nii.gz", m, m_aff)
    _segment(ckpt, paths["sup"], mpath, paths["qry"], tmp_path / "pm.nii.gz", capsys)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "pm.nii.gz")).dataobj), ref_pred)


def test_finer_query_is_resampled_to_the_support_pixel_size(
    tmp_path: Path, ckpt: Path, scans: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {k: _save(tmp_path / f"{k}.nii.gz", v, BASE) for k, v in scans.items()}
    _segment(ckpt, paths["sup"], paths["mask"], paths["qry"], tmp_path / "ref.nii.gz", capsys)
    ref_pred = np.asarray(nib.load(str(tmp_path / "ref.nii.gz")).dataobj)
    # 2x finer pixels (each voxel repeated): averaging pairs back is exact, so the prediction is the reference's
    fine = np.repeat(np.repeat(scans["qry"], 2, axis=0), 2, axis=1)
    half = np.diag([0.5, 0.5, 1.0, 1.0])
    half[:2, 3] = -0.25  # fine voxel 2i is centred a quarter of a coarse voxel before coarse voxel i
    fine_aff = BASE @ half
    report = _segment(ckpt, paths["sup"], paths["mask"], _save(tmp_path / "fine.nii.gz", fine, fine_aff),
                      tmp_path / "pf.nii.gz", capsys)
    assert report["model_grid"]["query_resampled_to"] == [64, 64]
    pred = np.asarray(nib.load(str(tmp_path / "pf.nii.gz")).dataobj)
    np.testing.assert_array_equal(pred, np.repeat(np.repeat(ref_pred, 2, axis=0), 2, axis=1))
    # the same, padded with air to a 1.5x larger field of view (160 px): the prediction stays on the organ
    padded = np.pad(fine, ((16, 16), (16, 16), (0, 0)), constant_values=float(fine.min()))
    pad_aff = fine_aff.copy()
    pad_aff[:3, 3] = (fine_aff @ [-16, -16, 0, 1])[:3]
    _segment(ckpt, paths["sup"], paths["mask"], _save(tmp_path / "pad.nii.gz", padded, pad_aff),
             tmp_path / "pp.nii.gz", capsys)
    pp = np.asarray(nib.load(str(tmp_path / "pp.nii.gz")).dataobj)[16:-16, 16:-16]
    want = np.repeat(np.repeat(ref_pred, 2, axis=0), 2, axis=1)
    assert 2 * (pp & want).sum() / (pp.sum() + want.sum()) > 0.8


def _dicom_slice(path: Path, pixels: np.ndarray, z: float, series: str, modality: str = "CT") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = modality, series, "axial", 3
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelSpacing, ds.SliceThickness = [4.7, 4.7], 6.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -(-50.0 + 4.7 * (pixels.shape[0] - 1)), 20.0 + z]  # BASE's voxel (0, 63, k), LPS
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _dicom_series(folder: Path, volume_xyz: np.ndarray, series: str, start: int = 0) -> None:
    """An LAS array written as DICOM: pixel rows run posterior (DICOM +y), columns to the left (DICOM +x)."""
    folder.mkdir(exist_ok=True)
    for k in range(volume_xyz.shape[2]):
        pixels = volume_xyz[:, ::-1, k].T + 1024  # rows: j reversed (A -> P); columns: i (R -> L)
        _dicom_slice(folder / f"{start + k:03d}.dcm", np.clip(pixels, 0, 4000), z=6.0 * k, series=series)


def test_dicom_query_reads_like_its_nifti(
    tmp_path: Path, ckpt: Path, scans: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    qry = np.clip(np.rint(scans["qry"]), -1024, 2976).astype(np.float32)
    paths = {k: _save(tmp_path / f"{k}.nii.gz", v, BASE) for k, v in {**scans, "qry": qry}.items()}
    _segment(ckpt, paths["sup"], paths["mask"], paths["qry"], tmp_path / "ref.nii.gz", capsys)
    _dicom_series(tmp_path / "dcm", qry, "1.2.3.4")
    report = _segment(ckpt, paths["sup"], paths["mask"], tmp_path / "dcm", tmp_path / "pd.nii.gz", capsys)
    assert report["query_orientation"] == "PLS"  # (row, column, slice) order, RAS+ affine
    written = nib.load(str(tmp_path / "pd.nii.gz"))
    ref = nib.load(str(tmp_path / "ref.nii.gz"))
    # the same voxels in the world, stored in the DICOM's order
    np.testing.assert_array_equal(np.transpose(np.asarray(written.dataobj), (1, 0, 2))[:, ::-1], np.asarray(ref.dataobj))
    row_col_slice = np.array([[0, 1, 0, 0], [-1, 0, 0, 63], [0, 0, 1, 0], [0, 0, 0, 1]])  # -> (i, j, k) of BASE
    np.testing.assert_allclose(written.affine, ref.affine @ row_col_slice, atol=1e-3)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_bad_scans_get_one_line_naming_the_scan(
    tmp_path: Path, ckpt: Path, scans: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {k: _save(tmp_path / f"{k}.nii.gz", v, BASE) for k, v in scans.items()}
    no_affine = nib.Nifti1Image(scans["qry"], None)
    assert int(no_affine.header["qform_code"]) == 0 and int(no_affine.header["sform_code"]) == 0
    nib.save(no_affine, str(tmp_path / "no_affine.nii.gz"))
    sheared = BASE.copy()
    sheared[0, 1] = 2.0
    zeros = nib.Nifti1Image(scans["qry"], None)
    zeros.set_sform(np.zeros((4, 4)), code=1)  # an sform of zeros, marked as valid
    nib.save(zeros, str(tmp_path / "zeros.nii.gz"))
    mr = np.clip(scans["qry"] + 1024, 0, None)  # MR-like: no air at -1000
    _dicom_series(tmp_path / "two", scans["qry"][..., :4], "1.2.3.4")
    _dicom_series(tmp_path / "two", scans["qry"][..., 4:8], "1.2.3.5", start=4)
    cases = {
        "no_affine.nii.gz": ("query", tmp_path / "no_affine.nii.gz", "no usable affine (qform_code and sform_code"),
        "4d.nii.gz": ("query", _save(tmp_path / "4d.nii.gz", np.stack([scans["qry"]] * 2, -1), BASE), "a 4D scan"),
        "sheared.nii.gz": ("query", _save(tmp_path / "sheared.nii.gz", scans["qry"], sheared), "sheared"),
        "zeros.nii.gz": ("query", tmp_path / "zeros.nii.gz", "zero-length axis"),
        "two": ("query", tmp_path / "two", "holds 2 DICOM series; give a folder with one series: 1.2.3.4 (#3 axial, CT, 4"),
        "mr.nii.gz": ("query", _save(tmp_path / "mr.nii.gz", mr, BASE), "must be scans of the same modality"),
        "mask_shape.nii.gz": ("mask", _save(tmp_path / "mask_shape.nii.gz", scans["mask"][:-1], BASE),
                              "label/mask grid differs from its image"),
        "mask_affine.nii.gz": ("mask", _save(tmp_path / "mask_affine.nii.gz", scans["mask"], BASE @ np.diag([1, 1, 2, 1])),
                               "label/mask grid differs from its image"),
    }  # fmt: skip
    for name, (role, path, expected) in cases.items():
        qry = path if role == "query" else paths["qry"]
        mask = path if role == "mask" else paths["mask"]
        args = ["segment", "--checkpoint", str(ckpt), "--support", str(paths["sup"]), "--support-mask", str(mask)]
        code, err = _run([*args, "--organ", "liver", "--query", str(qry), "--out", str(tmp_path / "p.nii.gz")], capsys)
        assert code == 2, (name, err)
        assert expected in err and name in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_data_spacing_trains_evaluates_and_segments(
    tmp_path: Path, scans: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["train", "--config", "demo_phantom", "--dataset", "phantom-ct", "--steps", "2", "--out", str(run)]
    assert main([*args, *TINY, "--set", "data.spacing=5.0"]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    res = tmp_path / "results.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(res), "--overlays", "0"]) == 0
    data = json.loads(res.read_text())
    assert "5.0 mm pixels" in data["resolution"] and data["config"]["data"]["spacing"] == 5.0
    capsys.readouterr()
    paths = {k: _save(tmp_path / f"{k}.nii.gz", v, BASE) for k, v in scans.items()}
    report = _segment(ckpt, paths["sup"], paths["mask"], paths["qry"], tmp_path / "p.nii.gz", capsys)
    assert report["model_grid"]["pixel_mm"] == pytest.approx([5.0, 5.0], abs=0.02) and report["model_grid"]["query_resampled_to"] == [60, 60]
    assert nib.load(str(tmp_path / "p.nii.gz")).shape == scans["qry"].shape


class _BrightOracle(torch.nn.Module):
    """Foreground where the query is brighter than halfway between the support's organ (its mean) and the rest
    of the support (its median): segments a bright organ wherever it is, whatever the checkpoint learnt."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        image, mask = s_img[:, :, 0], s_msk > 0.5
        level = (image[mask].mean() + image[~mask].median()) / 2
        fg = (q[:, 0] > level).float()
        return SimpleNamespace(logits=torch.stack([1 - fg, fg], 1) + self.dummy, align_loss=None)


def _block_scan(
    shape: tuple[int, int, int], organ: tuple[slice, slice, slice]
) -> tuple[np.ndarray, np.ndarray]:
    """CT in HU, nibabel order: air, a body of 30 HU 4 px inside the edges, a 150-HU organ at ``organ``;
    ``(scan, organ mask)``."""
    scan = np.full(shape, -1000.0, np.float32)
    scan[4:-4, 4:-4] = 30.0
    mask = np.zeros(shape, np.uint8)
    mask[organ] = 1
    scan[mask == 1] = 150.0
    return scan, mask


def _overlap(pred: np.ndarray, mask: np.ndarray) -> float:
    return 2 * float((pred & mask).sum()) / (pred.sum() + mask.sum())


def test_segment_writes_the_prediction_on_the_querys_organ_not_on_its_mirror(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fewshot segment`` with an oracle model (a bright organ off the diagonal, the support's organ elsewhere):
    the written prediction covers the query's organ (Dice > 0.9) and not its H/W-swapped mirror, for a square
    query stored LAS, the same query stored permuted and flipped, and a non-square query.

    Fails if H and W are swapped on the way out (``np.transpose`` of the (H, W) axes in ``save_nifti``'s
    LAS branch, or of ``pred`` after ``qry_grid.invert`` in ``segment_files``: the square queries' predictions land
    on the mirror, the non-square one gets the wrong shape or raises)."""
    import fewshot.checkpoint

    load = fewshot.checkpoint.load_model_from_checkpoints

    def with_oracle(
        *args: Any, **kwargs: Any
    ) -> Any:  # the checkpoint's config and statistics, the oracle's masks
        loaded = load(*args, **kwargs)
        return dataclasses.replace(loaded, model=_BrightOracle(loaded.model.config))

    monkeypatch.setattr(fewshot.checkpoint, "load_model_from_checkpoints", with_oracle)
    sup, sup_mask = _block_scan((64, 64, 12), np.s_[12:26, 30:50, 3:9])
    paths = {
        "sup": _save(tmp_path / "sup.nii.gz", sup, BASE),
        "mask": _save(tmp_path / "mask.nii.gz", sup_mask, BASE),
    }
    square, square_organ = _block_scan((64, 64, 12), np.s_[6:18, 36:58, 2:10])
    square_mirror = np.transpose(square_organ, (1, 0, 2))  # the organ's H/W swap: [36:58, 6:18]
    stored, stored_affine = _stored(square, BASE, (1, 0, 2), (0,))
    stored_organ, stored_mirror = (
        _stored(m, BASE, (1, 0, 2), (0,))[0] for m in (square_organ, square_mirror)
    )
    wide, wide_organ = _block_scan((40, 64, 12), np.s_[6:18, 36:58, 2:10])
    for name, scan, organ, mirror, affine in (
        ("las", square, square_organ, square_mirror, BASE),
        ("stored", stored, stored_organ, stored_mirror, stored_affine),  # both as the file stores the scan
        ("wide", wide, wide_organ, None, BASE),
    ):
        query = _save(tmp_path / f"{name}.nii.gz", scan, affine)
        report = _segment(ckpt, paths["sup"], paths["mask"], query, tmp_path / f"pred_{name}.nii.gz", capsys)
        written = nib.load(str(tmp_path / f"pred_{name}.nii.gz"))
        pred = np.asarray(written.dataobj) > 0
        assert pred.shape == scan.shape and report["voxels"] == int(pred.sum()), name
        np.testing.assert_allclose(written.affine, affine, atol=1e-5)
        assert _overlap(pred, organ == 1) > 0.9, (name, _overlap(pred, organ == 1))
        if mirror is not None:
            assert _overlap(pred, mirror == 1) < 0.1, (name, _overlap(pred, mirror == 1))
