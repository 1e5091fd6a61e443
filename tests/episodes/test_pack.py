"""``episodes.data.pack``: a data set in one file reads back the volumes as loaded, bit for bit, and bad packs are
refused naming the file."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest

from episodes.data.datasets import load_dataset
from episodes.data.pack import is_pack, pack_loader_args, pack_parts, read_pack, write_pack
from episodes.data.volumes import Volume, VolumeError, load_nifti_pair

PHANTOM = {"n_subjects": 6, "shape": [12, 48, 48]}


def assert_same_volumes(got: list[Volume], want: list[Volume], pack: Path) -> None:
    assert [v.subject for v in got] == [v.subject for v in want]
    for g, w in zip(got, want, strict=True):
        assert g.image.dtype == np.float32 and np.array_equal(g.image, w.image)
        assert (g.label is None) == (w.label is None)
        if w.label is not None:
            assert g.label is not None and g.label.dtype == w.label.dtype and np.array_equal(g.label, w.label)
        assert g.spacing == w.spacing and np.array_equal(g.affine, w.affine)
        assert (g.modality, g.label_map, g.intensity, g.normalized) == (w.modality, w.label_map, w.intensity, False)
        assert g.source == f"{pack}::{w.source}"
        if w.source_geometry is None:
            assert g.source_geometry is None
        else:
            assert g.source_geometry is not None
            for f in dataclasses.fields(w.source_geometry):
                assert np.array_equal(getattr(g.source_geometry, f.name), getattr(w.source_geometry, f.name)), f.name


@pytest.mark.parametrize("name", ["phantom-ct", "phantom-mr"])
def test_a_pack_reads_back_every_field_and_load_dataset_takes_it(tmp_path: Path, name: str) -> None:
    volumes = load_dataset(name, None, **PHANTOM)
    (pack,) = write_pack(volumes, tmp_path / "p.npz", dataset=name, loader_args=PHANTOM)
    assert is_pack(pack) and not is_pack(tmp_path) and not is_pack(None)
    assert_same_volumes(read_pack(pack), volumes, pack)
    assert_same_volumes(load_dataset(name, pack, **PHANTOM), volumes, pack)
    assert pack_loader_args(pack) == PHANTOM
    assert [v.subject for v in load_dataset(name, pack, subjects=["3", "1"], **PHANTOM)] == ["1", "3"]


def test_nifti_scans_keep_their_stored_geometry_and_unlabelled_scans_stay_unlabelled(tmp_path: Path) -> None:
    (phantom,) = load_dataset("phantom-ct", None, n_subjects=1, shape=[12, 48, 56])
    stored = np.flip(phantom.image, axis=2).transpose(2, 1, 0)  # another axis order and a flip, as a converter might
    img = tmp_path / "a.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(stored, np.diag([1.5, 2.0, 3.0, 1.0])), str(img))
    scan = load_nifti_pair(img, None, subject="a", modality="CT", label_map=phantom.label_map)
    assert scan.source_geometry is not None and not scan.source_geometry.is_identity
    (pack,) = write_pack([scan], tmp_path / "n.npz", dataset="nifti")
    assert_same_volumes(read_pack(pack), [scan], pack)


def test_images_are_stored_in_the_smallest_exact_type(tmp_path: Path) -> None:
    def vol(subject: str, image: np.ndarray) -> Volume:
        (v,) = load_dataset("phantom-ct", None, n_subjects=1, shape=[12, 48, 48])
        return dataclasses.replace(v, image=image.astype(np.float32), label=None, subject=subject)

    ramp = (np.arange(12 * 48 * 48, dtype=np.float32) % 128).reshape(12, 48, 48)
    volumes = [vol("u8", ramp * 2), vol("i16", ramp - 1000), vol("i32", ramp * 1000), vol("f", ramp + 0.5)]
    (pack,) = write_pack(volumes, tmp_path / "t.npz", dataset="phantom-ct")
    with np.load(pack) as data:
        assert [data[f"image_{i}"].dtype for i in range(4)] == [np.uint8, np.int16, np.int32, np.float32]
        assert "label_0" not in data.files
    with zipfile.ZipFile(pack) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
    assert_same_volumes(read_pack(pack), volumes, pack)


def test_bad_packs_and_bad_requests_are_refused_naming_the_file(tmp_path: Path) -> None:
    volumes = load_dataset("phantom-ct", None, **PHANTOM)
    (pack,) = write_pack(volumes, tmp_path / "p.npz", dataset="phantom-ct", loader_args=PHANTOM)
    with pytest.raises(VolumeError, match=r"p\.npz: a pack of data set 'phantom-ct', not 'btcv-ct'"):
        load_dataset("btcv-ct", pack)
    with pytest.raises(VolumeError, match=r"subjects \['9'\] not in the pack"):
        read_pack(pack, subjects=["9"])
    with pytest.raises(VolumeError, match=r"\{'n_subjects': 4\} cannot be applied to a pack"):
        load_dataset("phantom-ct", pack, n_subjects=4, shape=[12, 48, 48])
    with pytest.raises(VolumeError, match="data pack not found"):
        read_pack(tmp_path / "missing.npz")
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    with pytest.raises(VolumeError, match=r"cut\.npz: .*corrupt"):
        read_pack(truncated)
    flipped = bytearray(pack.read_bytes())
    flipped[len(flipped) // 3] ^= 0xFF  # inside an image: zip's CRC or LZMA's check catches it
    (tmp_path / "bit.npz").write_bytes(bytes(flipped))
    with pytest.raises(VolumeError, match=r"bit\.npz: .*corrupt"):
        read_pack(tmp_path / "bit.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(VolumeError, match=r"other\.npz: not a data pack"):
        read_pack(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"ends in \.npz"):
        write_pack(volumes, tmp_path / "p.zip", dataset="phantom-ct")
    with pytest.raises(ValueError, match="normalised volumes are not packed"):
        write_pack([dataclasses.replace(volumes[0], normalized=True)], tmp_path / "q.npz", dataset="phantom-ct")
    with pytest.raises(ValueError, match=r"subject ids repeat: \['0'\]"):
        write_pack([volumes[0], volumes[0]], tmp_path / "q.npz", dataset="phantom-ct")
    assert not (tmp_path / "q.npz").exists()


@pytest.mark.realdata
def test_real_chaos_scans_pack_bit_for_bit_and_smaller(chaos_dir: Path, tmp_path: Path) -> None:
    """Two CHAOS scans as loaded from the SSL-ALPNet folder come back from a pack array for array, in fewer bytes
    than their NIfTI files."""
    volumes = load_dataset("chaos-mr", chaos_dir, subjects=["1", "2"])
    (pack,) = write_pack(volumes, tmp_path / "chaos.npz", dataset="chaos-mr", loader_args={"subjects": ["1", "2"]})
    packed = read_pack(pack, dataset="chaos-mr")
    assert_same_volumes(packed, volumes, pack)
    from fewshot.recipes.bundle import data_fingerprint  # a model fitted from the pack names the same data

    assert data_fingerprint(packed) == data_fingerprint(volumes)
    files = [chaos_dir / f"{kind}_{s}.nii.gz" for kind in ("image", "label") for s in ("1", "2")]
    assert pack.stat().st_size < sum(f.stat().st_size for f in files)


def test_a_pack_in_parts_reads_back_whole_and_never_in_part(tmp_path: Path) -> None:
    volumes = load_dataset("phantom-ct", None, **PHANTOM)
    files = write_pack(volumes, tmp_path / "p.npz", dataset="phantom-ct", loader_args=PHANTOM, parts=4)
    assert [f.name for f in files] == [f"p.{i}-of-4.npz" for i in range(1, 5)]
    assert not (tmp_path / "p.npz").exists()
    # 6 scans in 4 parts: 1, 2, 1, 2 (consecutive, as even as they divide)
    assert [read_pack_part(f) for f in files] == [["0"], ["1", "2"], ["3"], ["4", "5"]]
    assert_same_volumes_in_parts(read_pack(tmp_path / "p.npz"), volumes, files)
    assert_same_volumes_in_parts(load_dataset("phantom-ct", tmp_path / "p.npz", **PHANTOM), volumes, files)
    assert pack_parts(tmp_path / "p.npz") == files and pack_loader_args(tmp_path / "p.npz") == PHANTOM
    assert [v.subject for v in read_pack(tmp_path / "p.npz", subjects=["4", "0"])] == ["0", "4"]

    with pytest.raises(VolumeError, match=r"p\.2-of-4\.npz: part 2 of 4 of a pack, not a data set on its own"):
        read_pack(files[1])
    with pytest.raises(VolumeError, match=r"read all its parts as .*/p\.npz"):
        load_dataset("phantom-ct", files[1], **PHANTOM)
    files[2].rename(tmp_path / "aside.npz")
    with pytest.raises(VolumeError, match=r"part\(s\) \['p\.3-of-4\.npz'\] missing; the pack needs all 4"):
        read_pack(tmp_path / "p.npz")
    other = write_pack(volumes[:2], tmp_path / "o.npz", dataset="phantom-ct", parts=2)
    other[0].rename(files[2])  # a part of another pack in the gap
    with pytest.raises(VolumeError, match="were not written as one pack"):
        read_pack(tmp_path / "p.npz")
    write_pack(volumes, tmp_path / "p.npz", dataset="phantom-ct", parts=2)
    with pytest.raises(VolumeError, match=r"parts of \[2, 4\] different counts"):
        read_pack(tmp_path / "p.npz")
    with pytest.raises(VolumeError, match=r"q\.npz: data pack not found \(nor its parts"):
        read_pack(tmp_path / "q.npz")
    with pytest.raises(ValueError, match=r"parts must be 1\.\.6"):
        write_pack(volumes, tmp_path / "r.npz", dataset="phantom-ct", parts=7)


def read_pack_part(path: Path) -> list[str]:
    """The subjects one part holds (read as a plain .npz: read_pack refuses a part alone)."""
    import json

    with np.load(path) as data:
        return [r["subject"] for r in json.loads(data["meta"].item())["volumes"]]


def assert_same_volumes_in_parts(got: list[Volume], want: list[Volume], files: list[Path]) -> None:
    where = {s: f for f in files for s in read_pack_part(f)}
    for g, w in zip(got, want, strict=True):
        assert g.source == f"{where[w.subject]}::{w.source}"
        assert np.array_equal(g.image, w.image) and np.array_equal(g.label, w.label)
    assert [v.subject for v in got] == [v.subject for v in want]
