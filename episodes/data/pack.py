"""A data set in one compact file (or a few): the volumes of :func:`~episodes.data.datasets.load_dataset`, as loaded.

A pack is an LZMA-compressed ``.npz`` of every volume's image and label with a JSON record of the rest (subject,
modality, label map, intensity convention, spacing, affine, the stored geometry, where each scan was read from).
Images whose values are all integers are stored in the smallest integer type that holds them (the 8-bit BTCV CT
slices as ``uint8``), others as ``float32``, so a pack reads back the same arrays, bit for bit.
``load_dataset(name, "x.npz")`` reads it in place of the folder and refuses a pack of another data set.

It is made to carry a data set where a folder is awkward: a remote GPU machine with a limit on what one call
carries, a job array's scratch disk. For such limits a pack can be written in parts (``x.1-of-2.npz``,
``x.2-of-2.npz``, each with some of the scans); ``x.npz`` then names the whole set, and reading it needs every
part: a missing part is an error, never a smaller data set (the folds are drawn from the list of subjects, so a
missing scan would silently move them).
"""

from __future__ import annotations

import json
import lzma
import re
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from episodes.atomic import atomic_writer
from episodes.data.geometry import SourceGeometry
from episodes.data.labels import LabelMap
from episodes.data.volumes import Volume, VolumeError

__all__ = ["PACK_FORMAT", "is_pack", "pack_files", "pack_loader_args", "pack_parts", "read_pack", "write_pack"]

#: ``meta["format"]`` of the packs this version writes and reads.
PACK_FORMAT = "fewshot-data-pack/1"

_INTEGER_TYPES = (np.uint8, np.int16, np.int32)
_READ_ERRORS = (zipfile.BadZipFile, lzma.LZMAError, zlib.error, EOFError, KeyError, ValueError, OSError)


def is_pack(path: str | Path | None) -> bool:
    """Whether ``path`` names a pack (a ``.npz`` file, or a set of parts) rather than a data folder."""
    return path is not None and Path(path).suffix == ".npz" and not Path(path).is_dir()


def _compact(image: np.ndarray) -> np.ndarray:
    """``image`` in the smallest of uint8/int16/int32 that holds it exactly, else float32."""
    if np.all(np.isfinite(image)) and np.array_equal(image, np.round(image)):
        for dtype in _INTEGER_TYPES:
            info = np.iinfo(dtype)
            if image.size == 0 or (image.min() >= info.min and image.max() <= info.max):
                return image.astype(dtype)
    return image.astype(np.float32)


def _geometry(g: SourceGeometry | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"affine": g.affine.tolist(), "shape": list(g.shape), "zooms": list(g.zooms), "transform": g.transform.tolist()}


def _part_path(path: Path, index: int, parts: int) -> Path:
    return path.with_name(f"{path.stem}.{index}-of-{parts}.npz")


def write_pack(
    volumes: Sequence[Volume],
    path: str | Path,
    *,
    dataset: str,
    loader_args: dict[str, Any] | None = None,
    parts: int = 1,
) -> list[Path]:
    """Write ``volumes`` (of data set ``dataset``, loaded with ``loader_args``) to the pack ``path``, each file
    atomically; returns the files written.

    ``parts > 1`` writes ``<stem>.<i>-of-<parts>.npz`` instead, consecutive scans in each (as even in count as
    they divide); :func:`read_pack` of ``path`` then reads them all.

    Raises:
        ValueError: no volumes, a path not ending in ``.npz``, ``parts`` outside 1..len(volumes), a normalised
            volume (packs hold scans as loaded), or two volumes with one subject id.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: a pack's name ends in .npz")
    if not volumes:
        raise ValueError("no volumes to pack")
    if not 1 <= parts <= len(volumes):
        raise ValueError(f"parts must be 1..{len(volumes)} (one scan at least in each), got {parts}")
    subjects = [v.subject for v in volumes]
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"subject ids repeat: {sorted(s for s in set(subjects) if subjects.count(s) > 1)}")
    for v in volumes:
        if v.normalized:
            raise ValueError(f"subject {v.subject}: normalised volumes are not packed; pack the scans as loaded")
    meta: dict[str, Any] = {"format": PACK_FORMAT, "dataset": dataset, "loader_args": dict(loader_args or {})}
    if parts == 1:
        return [_write_one(volumes, path, meta)]
    whole = {"id": uuid.uuid4().hex, "of": parts, "subjects": subjects}
    bounds = [len(volumes) * i // parts for i in range(parts + 1)]
    return [
        _write_one(volumes[bounds[i] : bounds[i + 1]], _part_path(path, i + 1, parts),
                   {**meta, "part": {**whole, "index": i + 1}})
        for i in range(parts)
    ]  # fmt: skip


def _write_one(volumes: Sequence[Volume], path: Path, meta: dict[str, Any]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    records = []
    for i, v in enumerate(volumes):
        arrays[f"image_{i}"] = _compact(v.image)
        if v.label is not None:
            arrays[f"label_{i}"] = v.label
        records.append({
            "subject": v.subject,
            "modality": v.modality,
            "label_map": {"name": v.label_map.name, "organs": dict(v.label_map.organs)},
            "intensity": v.intensity,
            "spacing": list(v.spacing),
            "affine": v.affine.tolist(),
            "source": v.source,
            "source_geometry": _geometry(v.source_geometry),
            "labelled": v.label is not None,
        })  # fmt: skip
    arrays["meta"] = np.array(json.dumps({**meta, "volumes": records}))
    with atomic_writer(path) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, array in arrays.items():  # an .npz as np.savez writes it, LZMA- instead of deflate-compressed
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
    return path


def _parts_beside(path: Path) -> dict[tuple[int, int], Path]:
    """``{(i, n): file}`` of the files named as parts of ``path`` (``<stem>.<i>-of-<n>.npz``) beside it."""
    pattern = re.compile(rf"{re.escape(path.stem)}\.(\d+)-of-(\d+)\.npz")
    found = {}
    for p in path.parent.glob(f"{path.stem}.*-of-*.npz") if path.parent.is_dir() else ():
        if m := pattern.fullmatch(p.name):  # not another pack's parts, e.g. <stem>.old.1-of-2.npz
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def pack_files(path: str | Path) -> list[Path]:
    """Every file there is of the pack ``path``: the file itself and any parts named after it (complete or not),
    so a new pack written as ``path`` can replace all of them and nothing else."""
    path = Path(path)
    return [*([path] if path.is_file() else []), *sorted(_parts_beside(path).values())]


def pack_parts(path: str | Path) -> list[Path]:
    """The files of the pack ``path``: ``[path]`` when it is a file, else its parts beside it
    (``<stem>.<i>-of-<n>.npz``, in order), all ``n`` of them.

    Raises:
        VolumeError: neither the file nor any part exists, parts of two different counts lie there, or a part
            is missing (named).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    found = _parts_beside(path)
    if not found:
        raise VolumeError(f"{path}: data pack not found (nor its parts {path.stem}.<i>-of-<n>.npz)")
    counts = {n for _, n in found}
    if len(counts) > 1:
        raise VolumeError(f"{path}: parts of {sorted(counts)} different counts lie beside it: {sorted(found.values())}")
    (n,) = counts
    missing = [_part_path(path, i, n).name for i in range(1, n + 1) if (i, n) not in found]
    if missing:
        raise VolumeError(f"{path}: part(s) {missing} missing; the pack needs all {n}")
    return [found[(i, n)] for i in range(1, n + 1)]


def _meta(data: Any, path: Path) -> dict[str, Any]:
    if "meta" not in data.files:
        raise VolumeError(f"{path}: not a data pack (no 'meta' record); make one with `fewshot pack`")
    meta: dict[str, Any] = json.loads(data["meta"].item())
    if meta.get("format") != PACK_FORMAT:
        raise VolumeError(f"{path}: pack format {meta.get('format')!r}, this version reads {PACK_FORMAT!r}")
    return meta


def _corrupt(path: Path, e: BaseException) -> VolumeError:
    return VolumeError(
        f"{path}: data pack cannot be read ({type(e).__name__}: {e}); it is corrupt or truncated: copy or make it again"
    )


def pack_loader_args(path: str | Path) -> dict[str, Any]:
    """The loader arguments the pack at ``path`` was made with."""
    first = pack_parts(path)[0]
    try:
        with np.load(first, allow_pickle=False) as data:
            return dict(_meta(data, first)["loader_args"])
    except VolumeError:
        raise
    except _READ_ERRORS as e:
        raise _corrupt(first, e) from e


def _read_one(path: Path, subjects: Sequence[str] | None) -> tuple[dict[str, Any], list[Volume]]:
    """The meta record and the volumes (those of ``subjects``, or all) of one pack file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = _meta(data, path)
            volumes = []
            for i, r in enumerate(meta["volumes"]):
                if subjects is not None and r["subject"] not in subjects:
                    continue
                g = r["source_geometry"]
                geometry = None if g is None else SourceGeometry(
                    affine=np.asarray(g["affine"], dtype=np.float64),
                    shape=(int(g["shape"][0]), int(g["shape"][1]), int(g["shape"][2])),
                    zooms=(float(g["zooms"][0]), float(g["zooms"][1]), float(g["zooms"][2])),
                    transform=np.asarray(g["transform"], dtype=float),
                )  # fmt: skip
                volumes.append(Volume(
                    image=data[f"image_{i}"].astype(np.float32),
                    label=data[f"label_{i}"] if r["labelled"] else None,
                    spacing=tuple(r["spacing"]),
                    subject=r["subject"],
                    modality=r["modality"],
                    label_map=LabelMap(r["label_map"]["name"], r["label_map"]["organs"]),
                    intensity=r["intensity"],
                    affine=np.asarray(r["affine"], dtype=np.float64),
                    source=f"{path}::{r['source']}",
                    source_geometry=geometry,
                ))  # fmt: skip
    except VolumeError:
        raise
    except _READ_ERRORS as e:
        raise _corrupt(path, e) from e
    return meta, volumes


def read_pack(path: str | Path, *, dataset: str | None = None, subjects: Sequence[str] | None = None) -> list[Volume]:
    """The volumes of the pack ``path`` (a file, or the parts beside it), as :func:`write_pack` got them.

    Args:
        dataset: refuse a pack of another data set.
        subjects: only these subject ids (each must be in the pack).

    Raises:
        VolumeError: the file is missing, not a pack, corrupt or truncated, of another data set or format, one
            part of a pack read alone, parts that are not of one pack, or a subject asked for is not there; the
            message names the file.
    """
    files = pack_parts(path)
    metas, volumes = [], []
    for f in files:
        meta, vols = _read_one(f, subjects)
        if dataset is not None and meta["dataset"] != dataset:
            raise VolumeError(f"{f}: a pack of data set {meta['dataset']!r}, not {dataset!r}")
        metas.append(meta)
        volumes += vols
    parts = [m.get("part") for m in metas]
    if len(files) == 1 and parts[0] is not None:
        whole = files[0].with_name(re.sub(r"\.\d+-of-\d+\.npz$", ".npz", files[0].name))
        raise VolumeError(
            f"{files[0]}: part {parts[0]['index']} of {parts[0]['of']} of a pack, not a data set on its own (the "
            f"folds would move); read all its parts as {whole}"
        )
    have = [s for m in metas for s in (r["subject"] for r in m["volumes"])]
    if len(files) > 1:
        ids = {None if p is None else p["id"] for p in parts}
        first = parts[0]
        if len(ids) != 1 or first is None:
            raise VolumeError(f"{path}: its parts {[f.name for f in files]} were not written as one pack")
        if have != first["subjects"]:
            raise VolumeError(f"{path}: its parts hold subjects {have}, the pack was written with {first['subjects']}")
    if subjects is not None:
        missing = [s for s in subjects if s not in have]
        if missing:
            raise VolumeError(f"{path}: subjects {missing} not in the pack; it holds {have}")
    return volumes
