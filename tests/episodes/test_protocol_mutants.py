"""The protocol's rules at their edges (folds, explicit subjects, setting 2, plan JSON and tensors), written
against the mutants of episodes/protocol that main's tests left alive (docs/mutation-survivors.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes.data.labels import CHAOS_MR
from episodes.data.volumes import Volume
from episodes.protocol import (
    PLAN_SCHEMA_VERSION,
    EvaluationPlan,
    Protocol,
    TooFewSupportSlices,
    fold_boundaries,
    query_chunk,
    query_tensors,
    support_episode_tensors,
    support_slice_indices,
    tile_slices,
)


def test_fold_boundaries_for_other_fold_counts() -> None:
    assert fold_boundaries(7, 3) == (0, 2, 4, 7)  # (f * 7) // 3
    assert fold_boundaries(2, 1) == (0, 2)
    assert fold_boundaries(6) == (0, 1, 2, 3, 4, 6)  # the fewest subjects for 5 folds: 6
    with pytest.raises(ValueError, match="need at least 6"):
        fold_boundaries(5)
    with pytest.raises(ValueError, match="n_folds must be >= 1, got 0"):
        fold_boundaries(10, 0)


def test_too_few_support_slices_reason_and_at() -> None:
    err = TooFewSupportSlices(2, 3, 5, shared=False)
    assert err.reason == (
        "2-shot with 3 chunks needs 6 distinct support slices, but the organ covers only 5 slice(s) (1 per chunk)"
    )
    assert err.shareable  # 2 <= 5
    assert not TooFewSupportSlices(2, 3, 5, shared=True).shareable
    assert not TooFewSupportSlices(6, 3, 5, shared=False).shareable
    assert TooFewSupportSlices(5, 3, 5, shared=False).shareable  # shots == slices: sharing works
    moved = err.at("subject 7")
    assert str(moved).startswith("subject 7: 2-shot") and moved.where == "subject 7: "
    assert (moved.shots, moved.chunks, moved.n_slices, moved.shared) == (2, 3, 5, False)


def test_support_slices_edges() -> None:
    # exactly shots * chunks slices: every slice once, in order
    assert support_slice_indices([3, 5, 8, 9, 12, 20], 3, 2) == ((3, 5), (8, 9), (12, 20))
    assert support_slice_indices([3, 5, 8], 1, 1) == ((5,),)  # p = 1/2 -> index 1
    assert support_slice_indices([3, 5, 8, 13], 1, 1) == ((8,),)  # index floor(2.0) = 2
    # shared windows clamp at both ends: 4 slices, 3 chunks of 3: starts floor(p*4 - 1) = 0, 1, 2
    assert support_slice_indices([1, 2, 3, 4], 3, 3, share=True) == ((1, 2, 3), (2, 3, 4), (2, 3, 4))
    assert support_slice_indices([1, 2, 3], 2, 3, share=True) == ((1, 2, 3), (1, 2, 3))  # shots == slices
    for chunks, shots in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match=f"chunks={chunks}, shots={shots}"):
            support_slice_indices([1, 2, 3], chunks, shots)
    picks = support_slice_indices(np.arange(6), 3, 1)  # type: ignore[arg-type]
    assert all(type(z) is int for c in picks for z in c)


def test_query_chunk_edges() -> None:
    assert [query_chunk(z, 0, 5, 2) for z in range(6)] == [0, 0, 0, 1, 1, 1]  # width 2.5
    assert [query_chunk(z, 3, 4, 3) for z in (3, 4)] == [0, 2]  # width 1/3: slice 4 is chunk 3 -> clamped
    assert query_chunk(2, 3, 9, 3) == 0 and query_chunk(12, 3, 9, 3) == 2  # outside: clamped
    assert query_chunk(5, 5, 5, 1) == 0


def test_protocol_validation() -> None:
    for fold in (0, 4, None):
        assert Protocol(fold=fold).fold == fold
    for bad in (-1, 5, 1.0, "1"):
        with pytest.raises(ValueError, match=r"fold must be in 0\.\.4"):
            Protocol(fold=bad)  # type: ignore[arg-type]
    for setting in (0, 3):
        with pytest.raises(ValueError, match="setting must be 1 or 2"):
            Protocol(setting=setting)
    for shots, chunks in ((0, 3), (1, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            Protocol(shots=shots, chunks=chunks)
    assert Protocol(organs=("LIVER", "rk")).organs == ("liver", "right_kidney")
    for organs in ((), ("liver", "LIVER")):
        with pytest.raises(ValueError, match="non-empty and unique"):
            Protocol(organs=organs)
    p = Protocol(query_subjects=[1, 2])  # type: ignore[arg-type]
    assert p.query_subjects == ("1", "2")
    with pytest.raises(ValueError, match="also a query subject"):
        Protocol(support_subject="2", query_subjects=("1", "2"))


def test_split_with_explicit_subjects_and_all() -> None:
    ids = ["a", "b", "c", "d"]
    assert Protocol(support_subject="b").split(ids) == Protocol(support_subject="b").split(tuple(ids))
    s = Protocol(support_subject="b").split(ids)
    assert (s.train, s.support, s.queries) == ((), "b", ("a", "c", "d"))
    s = Protocol(support_subject="c", query_subjects=("d", "a")).split(ids)
    assert (s.train, s.support, s.queries) == (("b",), "c", ("d", "a"))
    s = Protocol(fold=None).split(ids)
    assert (s.train, s.support, s.queries) == (("a", "b", "c", "d"), None, ())
    s = Protocol(fold=None, support_subject="a").split(ids)  # an explicit support wins over fold=None
    assert s.support == "a" and s.queries == ("b", "c", "d")
    s = Protocol(fold=2).split([str(i) for i in range(11)])  # sep = 0, 2, 4, 6, 8, 11
    assert (s.queries, s.support) == (("4", "5"), "6") and s.train == (
        "0",
        "1",
        "2",
        "3",
        "7",
        "8",
        "9",
        "10",
    )
    assert Protocol(fold=0).split([1, 2, 3, 4, 5, 6]).queries == ("1",)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="duplicate subject ids"):
        Protocol().split(["a", "a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="support subject 'z' not among"):
        Protocol(support_subject="z").split(ids)
    with pytest.raises(ValueError, match=r"query subjects \['z'\] not among"):
        Protocol(support_subject="a", query_subjects=("b", "z")).split(ids)
    with pytest.raises(ValueError, match="needs an explicit support_subject"):
        Protocol(query_subjects=("a",)).split(ids)


def test_setting2_runs_and_exclusions() -> None:
    one = Protocol(setting=1, organs=("liver", "left_kidney"))
    assert one.training_runs() == ((("liver", "left_kidney"), ()),)
    assert one.excluded_organs("liver") == () and one.training_exclusions() == ()
    two = Protocol(setting=2, organs=("spleen", "left_kidney", "liver"))
    assert two.excluded_organs("lk") == ("right_kidney", "left_kidney")
    assert two.excluded_organs("spleen") == ("liver", "spleen")
    assert two.training_runs() == (
        (("left_kidney",), ("right_kidney", "left_kidney")),
        (("spleen", "liver"), ("liver", "spleen")),
    )
    assert two.training_exclusions() == ("liver", "spleen", "right_kidney", "left_kidney")
    groups = (("liver",), ("spleen", "left_kidney"))
    assert two.training_runs(groups) == ((("liver",), ("liver",)), (("spleen", "left_kidney"), groups[1]))
    with pytest.raises(ValueError, match=r"organs \['left_kidney'\] are in no setting-2 group"):
        two.training_runs((("liver", "spleen"),))
    with pytest.raises(ValueError, match="'aorta' is in no setting-2 group"):
        Protocol(setting=2, organs=("liver", "aorta")).excluded_organs("aorta")


def test_protocol_dict_round_trip() -> None:
    p = Protocol(
        "chaos-mr", fold=3, setting=2, organs=("spleen",), shots=2, chunks=4, share_support_slices=True
    )
    d = p.to_dict()
    assert d == {
        "dataset": "chaos-mr",
        "fold": 3,
        "setting": 2,
        "organs": ["spleen"],
        "shots": 2,
        "chunks": 4,
        "support_subject": None,
        "query_subjects": None,
        "share_support_slices": True,
        "exclude_mode": "any",
    }
    assert Protocol.from_dict(d) == p
    q = Protocol(support_subject="s", query_subjects=("a", "b"))
    assert q.to_dict()["query_subjects"] == ["a", "b"] and Protocol.from_dict(q.to_dict()) == q
    assert Protocol.from_dict({"dataset": "x", "unknown": 1}) == Protocol("x")  # unknown keys dropped
    assert Protocol.from_dict({"organs": ["liver"]}).organs == ("liver",)


def _vol(subject: str, liver: range, z: int = 8) -> Volume:
    label = np.zeros((z, 3, 4), np.int16)
    for k in liver:
        label[k, 1, 1:3] = 1
    image = np.arange(z * 12, dtype=np.float32).reshape(z, 3, 4)
    return Volume(image, label, (2.0, 1.0, 1.0), subject, "MR", CHAOS_MR, normalized=True)


def test_plan_dict_json_and_version(tmp_path: Path) -> None:
    vols = [_vol("s", range(1, 7)), _vol("q", range(2, 5))]
    plan = Protocol("chaos-mr", organs=("liver",), support_subject="s", shots=2, chunks=2).build_plan(vols)
    d = plan.to_dict()
    assert d["schema_version"] == PLAN_SCHEMA_VERSION == 1
    assert d["split"] == {"train": [], "support": "s", "queries": ["q"]}
    assert d["organs"] == [
        {
            "organ": "liver",
            "label_value": 1,
            "support_subject": "s",
            # L = 6, p = (i + (2j + 1) / 4) / 2: 1/8, 3/8 | 5/8, 7/8 -> indices 0, 2 | 3, 5
            "support_slices": [[1, 3], [4, 6]],
            "queries": [{"subject": "q", "slices": [2, 3, 4], "chunks": [0, 1, 1]}],
        }
    ]
    path = plan.to_json(tmp_path / "plan.json")
    assert json.loads(path.read_text()) == d
    back = EvaluationPlan.from_json(path)
    assert back == plan and back.organs[0].support_slices == ((1, 3), (4, 6))
    for version in (None, 2):
        with pytest.raises(ValueError, match=f"unsupported plan schema_version {version!r}"):
            EvaluationPlan.from_dict({**d, "schema_version": version})
    assert plan.organ("LIVER") is plan.organs[0]
    with pytest.raises(KeyError, match=r"choices: \['liver'\]"):
        plan.organ("spleen")


def test_plan_tensors_values() -> None:
    vols = {v.subject: v for v in (_vol("s", range(1, 7)), _vol("q", range(2, 5)))}
    plan = Protocol("chaos-mr", organs=("liver",), support_subject="s", chunks=2).build_plan(
        list(vols.values())
    )
    organ = plan.organs[0]  # support slices (2,), (5,)
    img, msk = support_episode_tensors(organ, vols, 1, channels=2)
    assert img.shape == (1, 1, 2, 3, 4) and img.dtype == torch.float32
    assert img[0, 0, 1].equal(torch.from_numpy(vols["s"].image[5])) and img[0, 0, 0].equal(img[0, 0, 1])
    assert msk.shape == (1, 1, 3, 4) and msk.dtype == torch.float32
    assert msk[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    for chunk in (-1, 2):
        with pytest.raises(IndexError, match=f"chunk {chunk} out of range"):
            support_episode_tensors(organ, vols, chunk)
    images, masks, chunks = query_tensors(organ.queries[0], vols, 1, channels=1)
    assert images.shape == (3, 1, 3, 4) and images[2, 0].equal(torch.from_numpy(vols["q"].image[4]))
    assert masks.dtype == torch.float32 and masks.sum().item() == 6.0
    assert chunks.dtype == torch.int64 and chunks.tolist() == [0, 1, 1]  # (z - 2) // 1.0 = 0, 1, 2 -> clamped
    assert query_tensors(organ.queries[0], vols, 2)[1].sum().item() == 0.0  # another label value: no mask
    t = tile_slices(np.arange(6, dtype=np.float64).reshape(1, 2, 3), 3)
    assert t.dtype == torch.float32 and t.shape == (1, 3, 2, 3) and t.is_contiguous()
    assert t[0, 2].tolist() == [[0, 1, 2], [3, 4, 5]]
    raw = {"s": Volume(vols["s"].image, vols["s"].label, (1, 1, 1), "s", "MR", CHAOS_MR)}
    with pytest.raises(ValueError, match="must be normalised"):
        support_episode_tensors(organ, raw, 0)
    with pytest.raises(ValueError, match="needs labels"):
        support_episode_tensors(organ, {"s": vols["s"].with_arrays(vols["s"].image, None)}, 0)
    with pytest.raises(KeyError, match=r"available: \['q'\]"):
        support_episode_tensors(organ, {"q": vols["q"]}, 0)


def test_survivors_of_the_full_run() -> None:
    """Survivors of the 2026-12-06 full run: a JSON round trip of explicit query subjects (a list left a list, so
    the protocol neither equals itself nor hashes), ``tile_slices`` on several slices (``expand(+1, ...)`` only
    works for one), and a corrupt plan file's error naming what it held."""
    p = Protocol(support_subject="a", query_subjects=("b", "c"), fold=None)
    back = Protocol.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and isinstance(back.query_subjects, tuple) and hash(back) == hash(p)
    slices = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    tiled = tile_slices(slices, 3)
    assert tiled.shape == (2, 3, 2, 3) and torch.equal(tiled[1, 2], torch.from_numpy(slices[1]))
    assert tiled.is_contiguous()


def test_a_corrupt_plan_file_names_what_it_held(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"plan\.json: cannot read evaluation plan \("):
        EvaluationPlan.from_json(bad)


def test_one_chunk_and_the_absent_organ_hint() -> None:
    """Survivors of the 2026-12-06 full run: ``chunks=1`` (one support slice for the whole organ) refused by
    ``chunks <= 1``, and the hint naming the support's labels when the organ is absent (dropped, always shown,
    or computed from label 0)."""
    one = Protocol(organs=("liver",), support_subject="s", query_subjects=("q",), fold=None, chunks=1)
    plan = one.build_plan([_vol("s", range(2, 6)), _vol("q", range(1, 7))])
    assert len(plan.organs[0].support_slices) == 1 and set(plan.organs[0].queries[0].chunks) == {0}
    spleen_only = _vol("s", range(0))
    assert spleen_only.label is not None
    spleen_only.label[3, 0, 0] = 4  # the spleen (label 4), no liver
    with pytest.raises(ValueError, match=r"absent from support subject 's' \(its labels are \[4\], read with the "
                       r"chaos-mr label map: if the folder uses other numbers, pass --label-map, e\.g\. chaos-mr\); "):
        Protocol(organs=("liver",), support_subject="s", query_subjects=("q",), fold=None).build_plan(
            [spleen_only, _vol("q", range(1, 7))]
        )
    with pytest.raises(ValueError, match=r"absent from support subject 's'; choose another support_subject"):
        Protocol(organs=("liver",), support_subject="s", query_subjects=("q",), fold=None).build_plan(
            [_vol("s", range(0)), _vol("q", range(1, 7))]
        )
