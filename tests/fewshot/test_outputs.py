"""Output paths: checked before any work; ``--overwrite`` deletes only folders the library marked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fewshot.outputs import (
    MARKER,
    OutputError,
    check_output_dir,
    check_output_file,
    mark_output_dir,
    remove_output_dir,
)


def test_output_file_checks(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a folder; give a file path"):
        check_output_file(tmp_path / "dir", overwrite=True)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_output_file(tmp_path / "file", overwrite=False)
    with pytest.raises(OutputError, match=r"file .* is a file, not a folder"):
        check_output_file(tmp_path / "file" / "sub" / "w.pt", overwrite=False)
    assert check_output_file(tmp_path / "new" / "w.pt", overwrite=False) == tmp_path / "new" / "w.pt"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so the permission answer is simulated
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    for check in (lambda: check_output_file(tmp_path / "ro" / "pred.nii.gz", overwrite=False),
                  lambda: check_output_dir(tmp_path / "ro" / "results", overwrite=False)):
        with pytest.raises(OutputError, match=rf"cannot write in {tmp_path / 'ro'}.*permission denied"):
            check()


def test_overwrite_deletes_only_marked_folders(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="exists and is not empty"):
        check_output_dir(mine, overwrite=False)
    check_output_dir(mine, overwrite=True)  # files are replaced one by one, nothing deleted: accepted
    with pytest.raises(OutputError, match="was not created by fewshot"):
        check_output_dir(mine, overwrite=True, replace=True)
    with pytest.raises(OutputError, match="not deleting it"):
        remove_output_dir(mine)
    mark_output_dir(mine, "demo")  # not empty: not marked
    assert not (mine / MARKER).exists() and (mine / "notes.txt").read_text() == "keep"
    ours = mark_output_dir(tmp_path / "ours", "demo")
    (ours / "results.json").write_text("{}")
    check_output_dir(ours, overwrite=True, replace=True)
    remove_output_dir(ours)
    assert not ours.exists()
