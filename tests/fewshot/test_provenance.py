from __future__ import annotations

from pathlib import Path

import pytest

from fewshot import provenance


def test_own_commit_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The package's commit is the one its process started with: a checkout that moves on during a long run
    (CT fold 0 of 2026-12-06 was recorded under a merge made while it trained) must not change it. Fails if
    ``git_commit()`` reads git again on each call. A given ``path`` is read each time."""
    answers = iter(["aaaa", "bbbb", "cccc", "dddd"])
    calls: list[object] = []

    def read(path: object) -> str:
        calls.append(path)
        return next(answers)

    monkeypatch.setattr(provenance, "_OWN_COMMIT", [])
    monkeypatch.setattr(provenance, "_read_commit", read)
    assert provenance.git_commit() == "aaaa"
    assert provenance.git_commit() == "aaaa"
    assert provenance.git_commit(tmp_path) == "bbbb"
    assert provenance.git_commit(tmp_path) == "cccc"
    assert calls == [None, tmp_path, tmp_path]


def test_git_commit_of_this_checkout_looks_like_a_commit() -> None:
    commit = provenance.git_commit()
    if commit is None:
        pytest.skip("not run from a git checkout")
    assert len(commit.removesuffix("+dirty")) == 12 and int(commit.removesuffix("+dirty"), 16) >= 0
