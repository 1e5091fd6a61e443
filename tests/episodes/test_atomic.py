"""Atomic writes: the old file survives a failing write and no temporary file is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from episodes.atomic import atomic_write_bytes, atomic_write_text, atomic_writer
from episodes.data.volumes import save_nifti
from episodes.protocol import EvaluationPlan, FoldSplit, Protocol


def _leftovers(folder):  # type: ignore[no-untyped-def]
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_text_and_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert path == tmp_path / "sub" / "a.txt" and path.read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(path, b"\x00\x01").read_bytes() == b"\x00\x01"  # replaces
    assert _leftovers(path.parent) == []


def test_permissions_like_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    modes = [stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("atomic", "plain")]
    assert modes[0] == modes[1]


def test_failing_write_keeps_old_file_and_removes_temp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = atomic_write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_writer(path, "w") as fh:
        fh.write("partial new content")
        assert _leftovers(tmp_path) != []  # the temporary file exists while writing
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []
    # a new file that fails is never created
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "new.bin") as fh:
        fh.write(b"x")
        raise RuntimeError("boom")
    assert not (tmp_path / "new.bin").exists() and _leftovers(tmp_path) == []


def test_failing_replace_removes_temp(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = atomic_write_bytes(tmp_path / "a.bin", b"old")

    def no_replace(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("read-only")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="read-only"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"), atomic_writer("x", "a"):
        pass


def test_plan_to_json_is_atomic(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plan = EvaluationPlan(Protocol("chaos-mr"), FoldSplit(("1",), "2", ("3",)), ())
    path = plan.to_json(tmp_path / "plan.json")
    assert EvaluationPlan.from_json(path) == plan
    before = path.read_text()
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        EvaluationPlan(Protocol("btcv-ct"), FoldSplit(("1",), "2", ("3",)), ()).to_json(path)
    assert path.read_text() == before and _leftovers(tmp_path) == []


def test_save_nifti_failure_leaves_nothing(tmp_path, raw_mr, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import nibabel as nib

    def boom(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_stream", boom)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(np.zeros(raw_mr.shape, np.uint8), raw_mr, tmp_path / "pred.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_json_helpers_round_trip_and_name_what_was_unreadable(tmp_path: Path) -> None:
    from episodes.atomic import atomic_write_json, read_json

    path = atomic_write_json(tmp_path / "r.json", {"a": [1, 2], "b": None})
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": null\n}\n'
    assert read_json(path, "result") == {"a": [1, 2], "b": None}
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"r\.json: cannot read evaluation plan"):
        read_json(path, "evaluation plan")
