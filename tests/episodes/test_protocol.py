"""Evaluation protocol: folds, setting-2 groups, chunk protocol on hand-made volumes, plan JSON."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from episodes.data.labels import BTCV_CT, CHAOS_MR
from episodes.data.volumes import Volume
from episodes.protocol import (
    EvaluationPlan,
    Protocol,
    TooFewSupportSlices,
    fold_boundaries,
    query_chunk,
    query_tensors,
    support_episode_tensors,
    support_slice_indices,
)
from episodes.protocol.folds import SHARE_HINT


def _vol(subject: str, organ_slices: dict[int, range], z: int = 12, label_map=CHAOS_MR) -> Volume:  # type: ignore[no-untyped-def]
    label = np.zeros((z, 8, 8), np.int16)
    for value, zs in organ_slices.items():
        for k in zs:
            r = (value % 2) * 4  # odd labels at rows/cols 4..6, even at 0..2: no overlap
            label[k, r : r + 3, r : r + 3] = value
    image = np.arange(z * 64, dtype=np.float32).reshape(z, 8, 8) / 100.0
    return Volume(image, label, (5.0, 1.0, 1.0), subject, "MR", label_map, normalized=True)


def test_fold_boundaries() -> None:
    assert fold_boundaries(20) == (0, 4, 8, 12, 16, 20)  # SSL-ALPNet MRI _SEP
    assert fold_boundaries(30) == (0, 6, 12, 18, 24, 30)  # SSL-ALPNet CT _SEP
    assert fold_boundaries(16) == (0, 3, 6, 9, 12, 16)
    assert fold_boundaries(23) == (0, 4, 9, 13, 18, 23)
    with pytest.raises(ValueError, match="too few"):
        fold_boundaries(5)


def test_fold_splits_match_ssl_alpnet() -> None:
    ids = [str(i) for i in range(20)]
    s0 = Protocol("chaos-mr", fold=0).split(ids)
    assert s0.queries == ("0", "1", "2", "3") and s0.support == "4"
    assert s0.train == tuple(str(i) for i in range(5, 20)) and len(s0.train) == 15
    s4 = Protocol("chaos-mr", fold=4).split(ids)
    assert s4.queries == ("16", "17", "18", "19") and s4.support == "0"  # circular
    assert s4.train == tuple(str(i) for i in range(1, 16))
    ct = Protocol("btcv-ct", fold=1).split([str(i) for i in range(30)])
    assert ct.queries == tuple(str(i) for i in range(6, 12)) and ct.support == "12" and len(ct.train) == 23
    # every subject is a query exactly once over the 5 folds (16 subjects, our CHAOS copy)
    ids16 = [str(i) for i in range(16)]
    all_q = [q for f in range(5) for q in Protocol("chaos-mr", fold=f).split(ids16).queries]
    assert sorted(all_q, key=int) == ids16


def test_explicit_subjects() -> None:
    p = Protocol("x", support_subject="b", query_subjects=("c",))
    s = p.split(["a", "b", "c", "d"])
    assert (s.support, s.queries, s.train) == ("b", ("c",), ("a", "d"))
    assert Protocol("x", support_subject="b").split(["a", "b", "c"]).queries == ("a", "c")
    with pytest.raises(ValueError, match="not among"):
        Protocol("x", support_subject="z").split(["a", "b"])
    with pytest.raises(ValueError, match="also a query"):
        Protocol("x", support_subject="a", query_subjects=("a",))
    with pytest.raises(ValueError, match="fold"):
        Protocol("x", fold=5)
    with pytest.raises(ValueError, match="setting"):
        Protocol("x", setting=3)


def test_setting2_groups() -> None:
    p1, p2 = Protocol("chaos-mr", setting=1), Protocol("chaos-mr", setting=2)
    assert p1.excluded_organs("liver") == ()
    assert p2.excluded_organs("rk") == ("right_kidney", "left_kidney")
    assert p2.excluded_organs("spleen") == ("liver", "spleen")
    assert p1.training_runs() == ((("liver", "right_kidney", "left_kidney", "spleen"), ()),)
    assert p2.training_runs() == (
        (("right_kidney", "left_kidney"), ("right_kidney", "left_kidney")),
        (("liver", "spleen"), ("liver", "spleen")),
    )
    assert Protocol("btcv-ct", setting=2, organs=("spleen",)).training_runs() == (
        (("spleen",), ("liver", "spleen")),
    )


def test_support_slice_rule_hand_computed() -> None:
    zs = list(range(10, 24))  # L = 14
    # SSL-ALPNet: zs[int(pct * 14)] with pct 1/6, 1/2, 5/6 -> indices 2, 7, 11
    assert support_slice_indices(zs, 3, 1) == ((12,), (17,), (21,))
    # 2-shot: pct (i + 1/4)/3, (i + 3/4)/3 -> indices 1,3 | 5,8 | 10,12
    assert support_slice_indices(zs, 3, 2) == ((11, 13), (15, 18), (20, 22))
    assert support_slice_indices([4, 5, 6], 3, 1) == ((4,), (5,), (6,))
    with pytest.raises(
        TooFewSupportSlices, match=r"needs 15 distinct support slices.*share_support_slices"
    ) as info:
        support_slice_indices(zs, 3, 5)
    assert info.value.shareable and (info.value.shots, info.value.chunks, info.value.n_slices) == (5, 3, 14)
    assert str(info.value) == info.value.reason + SHARE_HINT


def test_shared_support_slices_hand_computed() -> None:
    zs = list(range(10, 24))  # L = 14 < 5 x 3: windows of 5 around p * L = 2.33, 7, 11.67 -> starts 0, 5, 9
    assert support_slice_indices(zs, 3, 5, share=True) == (
        (10, 11, 12, 13, 14),
        (15, 16, 17, 18, 19),
        (19, 20, 21, 22, 23),
    )
    # starts floor(0.83 - 0.5), floor(2.5 - 0.5), floor(4.17 - 0.5) = 0, 2, 3: chunks 2 and 3 share slice 3
    assert support_slice_indices([0, 1, 2, 3, 4], 3, 2, share=True) == ((0, 1), (2, 3), (3, 4))
    for k in (1, 2, 4):  # enough slices: the same picks as without sharing
        assert support_slice_indices(zs, 3, k, share=True) == support_slice_indices(zs, 3, k)
    with pytest.raises(TooFewSupportSlices, match="needs 15 distinct support slices") as info:
        support_slice_indices([1, 2, 3, 4], 3, 5, share=True)  # fewer slices than shots
    assert "share_support_slices" not in str(info.value) and not info.value.shareable
    with pytest.raises(TooFewSupportSlices) as info:  # sharing would not help either: no hint
        support_slice_indices([1, 2, 3, 4], 3, 5)
    assert not info.value.shareable and str(info.value) == info.value.reason


def test_query_chunk_hand_computed() -> None:
    assert [query_chunk(z, 10, 19, 3) for z in range(10, 20)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert [query_chunk(z, 0, 4, 3) for z in range(5)] == [0, 0, 1, 2, 2]
    assert query_chunk(7, 7, 7, 3) == 0


def _volumes() -> list[Volume]:
    return [
        _vol("s", {1: range(2, 8), 2: range(5, 8)}),  # support: liver 2..7 (L=6), RK 5..7
        _vol("q1", {1: range(1, 8), 2: range(3, 5)}),  # liver 1..7
        _vol("q2", {1: [4, 6], 2: [9]}),  # liver 4, 6 (slice 5 in range but without liver)
    ]


def test_build_plan_hand_computed() -> None:
    p = Protocol("chaos-mr", organs=("liver", "right_kidney"), support_subject="s")
    plan = p.build_plan(_volumes())
    liver = plan.organ("liver")
    assert liver.label_value == 1 and liver.support_subject == "s"
    assert liver.support_slices == ((3,), (5,), (7,))  # zs[int(6/6)], zs[int(3)], zs[int(5)]
    q1, q2 = liver.queries
    assert q1.subject == "q1" and q1.slices == (1, 2, 3, 4, 5, 6, 7)
    assert q1.chunks == (0, 0, 1, 1, 2, 2, 2)  # (z-1) // 2.0, clamped
    assert q2.slices == (4, 5, 6) and q2.chunks == (0, 1, 2)  # (z-4) // (2/3)
    rk = plan.organ("rk")
    assert rk.support_slices == ((5,), (6,), (7,))
    assert rk.queries[1].slices == (9,) and rk.queries[1].chunks == (0,)
    assert plan.split.support == "s" and plan.split.queries == ("q1", "q2")


def test_build_plan_fold_and_ct_labels() -> None:
    vols = [_vol(str(i), {6: range(1, 10)}, label_map=BTCV_CT) for i in range(6)]
    plan = Protocol("btcv-ct", fold=0, organs=("liver",)).build_plan(vols)
    assert plan.split.queries == ("0",) and plan.split.support == "1"
    assert plan.organs[0].label_value == 6


def test_build_plan_errors() -> None:
    vols = _volumes()
    with pytest.raises(ValueError, match="absent from support subject 's'"):
        Protocol("chaos-mr", organs=("spleen",), support_subject="s").build_plan(vols)
    with pytest.raises(
        TooFewSupportSlices, match=r"^support subject 's', organ 'liver': 3-shot .* 9 distinct"
    ) as info:
        Protocol("chaos-mr", organs=("liver",), shots=3, support_subject="s").build_plan(vols)
    assert info.value.shareable and info.value.reason.startswith("support subject 's', organ 'liver': ")
    shared = Protocol("chaos-mr", organs=("liver",), shots=3, support_subject="s", share_support_slices=True)
    assert shared.build_plan(vols).organ("liver").support_slices == ((2, 3, 4), (4, 5, 6), (5, 6, 7))
    assert Protocol.from_dict(shared.to_dict()) == shared
    with pytest.raises(ValueError, match="absent from query subject 'q2'"):
        Protocol("chaos-mr", organs=("left_kidney",), support_subject="s").build_plan(
            [_vol("s", {3: range(3)}), _vol("q2", {1: [1]})]
        )
    with pytest.raises(KeyError, match="choices"):
        Protocol("chaos-mr", organs=("pancreas",), support_subject="s").build_plan(vols)


def test_plan_json_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = Protocol("chaos-mr", setting=2, organs=("liver", "right_kidney"), support_subject="s", shots=1)
    plan = p.build_plan(_volumes())
    path = plan.to_json(tmp_path / "plan.json")
    again = EvaluationPlan.from_json(path)
    assert again == plan
    data = plan.to_dict()
    assert data["schema_version"] == 1 and data["protocol"]["exclude_mode"] == "any"
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version"):
        EvaluationPlan.from_dict(data)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        EvaluationPlan.from_json(tmp_path / "bad.json")


def test_plan_tensors() -> None:
    vols = _volumes()
    by_id = {v.subject: v for v in vols}
    plan = Protocol("chaos-mr", organs=("liver",), support_subject="s").build_plan(vols).organ("liver")
    images, masks = support_episode_tensors(plan, by_id, 1, channels=3)
    assert images.shape == (1, 1, 3, 8, 8) and masks.shape == (1, 1, 8, 8)
    assert torch.equal(images[0, 0, 2], torch.from_numpy(by_id["s"].image[5]))
    assert masks.sum() == 9
    q_img, q_msk, chunks = query_tensors(plan.queries[1], by_id, plan.label_value, channels=1)
    assert q_img.shape == (3, 1, 8, 8) and q_msk.shape == (3, 8, 8)
    assert q_msk.sum(dim=(1, 2)).tolist() == [9.0, 0.0, 9.0] and chunks.tolist() == [0, 1, 2]
    with pytest.raises(IndexError):
        support_episode_tensors(plan, by_id, 3)
    with pytest.raises(KeyError, match="available"):
        query_tensors(plan.queries[0], {}, 1)


def test_protocol_dataset_default_and_training_exclusions() -> None:
    p = Protocol()
    assert p.dataset == "" and p.training_exclusions() == ()
    assert Protocol.from_dict({"fold": 2}) == Protocol(fold=2)
    assert Protocol(setting=2).training_exclusions() == ("liver", "spleen", "right_kidney", "left_kidney")
    p2 = Protocol("chaos-mr", setting=2, organs=("left_kidney", "liver", "right_kidney"))
    assert p2.training_exclusions() == ("right_kidney", "left_kidney", "liver", "spleen")
    assert Protocol(setting=2, organs=("spleen",)).training_exclusions() == ("liver", "spleen")
    # the same organs the per-group training runs exclude, in one run
    assert set(p2.training_exclusions()) == {o for _, excl in p2.training_runs() for o in excl}
    with pytest.raises(ValueError, match="no setting-2 group"):
        Protocol(setting=2, organs=("gallbladder",)).training_exclusions()


def test_plan_tensors_with_adjacent_slices() -> None:
    vols = _volumes()
    by_id = {v.subject: v for v in vols}
    plan = Protocol("chaos-mr", organs=("liver",), support_subject="s").build_plan(vols).organ("liver")
    images, _ = support_episode_tensors(plan, by_id, 1, channels=3, slice_input="adjacent")
    image = by_id["s"].image
    assert torch.equal(images[0, 0], torch.from_numpy(np.stack([image[4], image[5], image[6]])))
    query = plan.queries[1]
    q_img, _, _ = query_tensors(query, by_id, plan.label_value, channels=3, slice_input="adjacent")
    q = by_id[query.subject].image
    for i, z in enumerate(query.slices):
        expected = np.stack([q[max(z - 1, 0)], q[z], q[min(z + 1, q.shape[0] - 1)]])
        assert torch.equal(q_img[i], torch.from_numpy(expected))
