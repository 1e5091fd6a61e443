"""DICOM series + PNG ground truth (CHAOS's original layout), written with pydicom in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from episodes.data.datasets import load_dataset
from episodes.data.dicom import load_dicom_series
from episodes.data.volumes import VolumeError


def _write_slice(path: Path, pixels: np.ndarray, z: float, modality: str, instance: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [1.5, 1.25]
    ds.SliceThickness = 6.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.InstanceNumber = instance
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _series(root: Path, n: int = 4, modality: str = "MR") -> list[np.ndarray]:
    root.mkdir(parents=True)
    slices = [np.full((6, 5), 100 * (i + 1), dtype=np.uint16) for i in range(n)]
    # file names deliberately out of anatomical order: sorting must use the position
    for i, name in enumerate(["c", "a", "d", "b"][:n]):
        _write_slice(root / f"{name}.dcm", slices[i], z=6.0 * i, modality=modality, instance=i + 1)
    return slices


def test_dicom_series_with_chaos_png_ground_truth(tmp_path: Path) -> None:
    case = tmp_path / "7" / "T2SPIR"
    slices = _series(case / "DICOM_anon")
    ground = case / "Ground"
    ground.mkdir()
    for i in range(4):
        gt = np.zeros((6, 5), dtype=np.uint8)
        gt[1:3, 1:3] = 63 if i < 2 else 252  # liver in slices 0-1, spleen in 2-3
        Image.fromarray(gt).save(ground / f"IMG-0001-{i + 1:05d}.png")
    v = load_dicom_series(case / "DICOM_anon", ground, subject="7")
    # rows run to the patient's back (P), columns to the left (L): canonical LAS puts the columns first, rows flipped
    assert v.shape == (4, 5, 6) and v.modality == "MR"
    np.testing.assert_array_equal(v.image[:, 0, 0], [s[0, 0] for s in slices])
    assert v.spacing == pytest.approx((6.0, 1.25, 1.5))
    assert v.source_geometry is not None and v.source_geometry.axcodes == ("P", "L", "S")
    assert list(v.slices_with("liver")) == [0, 1] and list(v.slices_with("spleen")) == [2, 3]
    (vol,) = load_dataset("chaos-dicom", tmp_path)
    assert vol.subject == "7" and vol.has_organ("liver")


def test_ct_rescale_to_hu(tmp_path: Path) -> None:
    _series(tmp_path / "ct", modality="CT")
    v = load_dicom_series(tmp_path / "ct")
    assert v.modality == "CT" and v.intensity == "hu"
    assert v.image[0, 0, 0] == 100 - 1024


def test_bad_dicom_input(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="empty DICOM folder"):
        (tmp_path / "empty").mkdir()
        load_dicom_series(tmp_path / "empty")
    _series(tmp_path / "s")
    (tmp_path / "s" / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(VolumeError, match=r"junk\.dcm: not a readable DICOM"):
        load_dicom_series(tmp_path / "s")
    (tmp_path / "s" / "junk.dcm").unlink()
    (tmp_path / "gt").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "gt" / f"{i}.png")
    with pytest.raises(VolumeError, match="3 ground-truth PNGs for 4 DICOM slices"):
        load_dicom_series(tmp_path / "s", tmp_path / "gt")
    Image.fromarray(np.full((6, 5), 7, np.uint8)).save(tmp_path / "gt" / "3.png")
    with pytest.raises(VolumeError, match="grey values"):
        load_dicom_series(tmp_path / "s", tmp_path / "gt")


def _set(path: Path, **tags: object) -> None:
    import pydicom

    ds = pydicom.dcmread(str(path))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(str(path))


def test_series_affine_is_ras_and_follows_the_positions(tmp_path: Path) -> None:
    slices = _series(tmp_path / "s")
    for i, name in enumerate(["c", "a", "d", "b"]):  # positions in LPS: x -10, y 20, z 6 i
        _set(tmp_path / "s" / f"{name}.dcm", ImagePositionPatient=[-10.0, 20.0, 6.0 * i])
    v = load_dicom_series(tmp_path / "s")
    assert v.source_geometry is not None
    # stored (row, column, slice): rows run +y (posterior), columns +x (left) in LPS; RAS flips x and y
    expected = np.array([[0, -1.25, 0, 10.0], [-1.5, 0, 0, -20.0], [0, 0, 6.0, 0.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(v.source_geometry.affine, expected)
    # canonical LAS: H = columns (towards the left), W = rows reversed (towards the front)
    np.testing.assert_array_equal(v.image[1], slices[1].T[:, ::-1])
    np.testing.assert_allclose(v.affine @ [0, 0, 0, 1], expected @ [5, 0, 0, 1])


def test_mixed_series_and_stacked_echoes_are_refused(tmp_path: Path) -> None:
    _series(tmp_path / "s")
    _set(tmp_path / "s" / "a.dcm", SeriesInstanceUID="1.2.3", SeriesDescription="t1 vibe", SeriesNumber=7)
    _set(tmp_path / "s" / "b.dcm", SeriesInstanceUID="1.2.3", SeriesDescription="t1 vibe", SeriesNumber=7)
    with pytest.raises(VolumeError, match=r"holds 2 DICOM series; .*1\.2\.3 \(#7 t1 vibe, MR, 2 files\)"):
        load_dicom_series(tmp_path / "s")
    _series(tmp_path / "e")
    _set(tmp_path / "e" / "a.dcm", ImagePositionPatient=[0.0, 0.0, 0.0])  # two slices at z = 0
    with pytest.raises(VolumeError, match="2 slices share a position"):
        load_dicom_series(tmp_path / "e")
    (tmp_path / "e" / "README.txt").write_text("not a DICOM file")  # skipped, not refused
    _set(tmp_path / "e" / "a.dcm", ImagePositionPatient=[0.0, 0.0, 6.0])
    assert load_dicom_series(tmp_path / "e").shape == (4, 5, 6)
