"""fewshot.evaluation.scoring with stand-in models whose predictions are known exactly: which support chunk
segments which query slice, the threshold margin, batching, resizing, the intensity prior and every number
``evaluate`` records (docs/development.md "Mutation testing")."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from episodes.data.labels import PHANTOM
from episodes.data.volumes import Volume
from episodes.protocol import EvaluationPlan, FoldSplit, OrganPlan, Protocol, QueryPlan
from fewshot.config.model import FinetuneConfig
from fewshot.evaluation import scoring
from fewshot.evaluation.intensity import intensity_veto
from fewshot.evaluation.scoring import (
    chunk_model,
    evaluate,
    false_positive_regions,
    model_channels,
    model_finetune,
    model_intensity_prior,
    model_slice_input,
    model_threshold,
    model_tta,
    predict_query,
)


def _cfg(**kw: object) -> nn.Module:
    m = nn.Linear(1, 1)
    m.config = SimpleNamespace(**kw)  # type: ignore[assignment]
    return m


def test_model_settings_come_from_the_argument_then_the_config_then_the_default() -> None:
    bare = nn.Linear(1, 1)
    assert model_channels(bare, 5) == 5
    assert model_channels(_cfg(backbone=SimpleNamespace(in_channels=3)), None) == 3
    with pytest.raises(ValueError, match="in_channels"):
        model_channels(bare, None)
    with pytest.raises(ValueError, match="in_channels"):
        model_channels(_cfg(backbone=SimpleNamespace()), None)
    assert model_slice_input(bare) == "tile"
    assert model_slice_input(_cfg(slice_input="adjacent")) == "adjacent"
    assert model_threshold(bare, None) == 0.5
    assert model_threshold(_cfg(fg_threshold=0.25), None) == 0.25
    assert model_threshold(_cfg(fg_threshold=0.25), 0.75) == 0.75
    assert model_tta(bare, None) == "none"
    assert model_tta(_cfg(tta="flip"), None) == "flip"
    assert model_tta(_cfg(tta="flip"), "none") == "none"
    assert model_intensity_prior(bare, None) == 0.0
    assert model_intensity_prior(_cfg(intensity_prior=2.5), None) == 2.5
    assert model_intensity_prior(_cfg(intensity_prior=2.5), 0.0) == 0.0
    assert model_finetune(bare) == FinetuneConfig()
    own = _cfg(finetune=FinetuneConfig(steps=3, lr=0.5))
    assert model_finetune(own) == FinetuneConfig(steps=3, lr=0.5)
    # a mapping changes the model's
    assert model_finetune(own, {"steps": 7}) == FinetuneConfig(steps=7, lr=0.5)


def test_false_positive_regions_counts_each_region() -> None:
    labels = np.array([[[0, 0, 1, 4, 4, 4, 9, 1]]])
    pred = np.array([[[True, True, True, True, True, False, True, False]]])
    assert false_positive_regions(pred, labels, PHANTOM, 1) == {"background": 2, "spleen": 2, "label 9": 1}
    assert false_positive_regions(pred, labels, PHANTOM, 4) == {"background": 2, "liver": 1, "label 9": 1}
    assert false_positive_regions(np.zeros_like(pred), labels, PHANTOM, 1) == {}
    with pytest.raises(ValueError, match="non-negative"):
        false_positive_regions(pred, np.array([[[0, -1, 0, 0, 0, 0, 0, 0]]]), PHANTOM, 1)


def test_chunk_model_seeds_each_organ_and_chunk_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, FinetuneConfig, str]] = []

    def fake_finetune(model, s_img, s_msk, finetune, *, device, seed):  # type: ignore[no-untyped-def]
        calls.append((seed, finetune, str(device)))
        return nn.Linear(1, 1)

    monkeypatch.setattr(scoring, "finetune_on_support", fake_finetune)
    model = nn.Linear(1, 1)
    img, msk = torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert chunk_model(model, img, msk, FinetuneConfig(), "liver", 0, "cpu") is model and not calls
    tune = FinetuneConfig(steps=2, seed=11)
    cache: dict[tuple[str, int], nn.Module] = {}
    a = chunk_model(model, img, msk, tune, "liver", 2, "cpu", cache=cache)
    import zlib

    expected = int(np.random.SeedSequence([11, zlib.crc32(b"liver"), 2]).generate_state(1)[0])
    assert calls == [(expected, tune, "cpu")] and cache == {("liver", 2): a}
    assert chunk_model(model, img, msk, tune, "liver", 2, "cpu", cache=cache) is a and len(calls) == 1
    b = chunk_model(model, img, msk, tune, "liver", 1, "cpu")
    assert b is not a and calls[1][0] == int(
        np.random.SeedSequence([11, zlib.crc32(b"liver"), 1]).generate_state(1)[0]
    )
    assert calls[1][0] != expected


class _Ramp(nn.Module):
    """Foreground logit = query intensity + the support image's mean (+ ``bias``, fixed in place, so that the
    model is not mirror-symmetric), background logit 0; records batches."""

    def __init__(self, bias: float | torch.Tensor = 0.0, **config: object) -> None:
        super().__init__()
        self.bias = bias
        self.config = SimpleNamespace(**config)
        self.w = nn.Parameter(torch.zeros(()))
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.batches.append(q.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        fg = q[:, 0] + s_img.mean() + self.w + self.bias
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(fg), fg], 1))


def test_predict_query_margin_batches_and_resizing() -> None:
    q = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.5]).view(7, 1, 1, 1).expand(7, 1, 2, 3).contiguous()
    s_img, s_msk = torch.zeros(1, 1, 1, 2, 3), torch.ones(1, 1, 2, 3)
    model = _Ramp()
    pred = predict_query(model, s_img, s_msk, q, batch_size=3)
    assert model.batches == [3, 3, 1] and model.grad_enabled == [False] * 3  # inference mode
    assert pred.dtype == torch.bool and pred.shape == (7, 2, 3)
    assert pred[:, 0, 0].tolist() == [False] * 3 + [True] * 4  # fg - bg > 0 (a tie is bg)
    # threshold t: fg - bg > log(t / (1 - t)); t = 0.9 -> 2.197
    assert (
        predict_query(_Ramp(), s_img, s_msk, q, threshold=0.9)[:, 0, 0].tolist() == [False] * 5 + [True] * 2
    )
    assert predict_query(_Ramp(), s_img, s_msk, q, threshold=0.2)[:, 0, 0].tolist() == [False] + [True] * 6
    # out_size: bilinear upsampling of the logits before the margin
    ramp = torch.linspace(-1.0, 1.0, 3).view(1, 1, 1, 3).expand(1, 1, 2, 3).contiguous()
    big = predict_query(_Ramp(), s_img, s_msk, ramp, out_size=(4, 6))
    up = F.interpolate(ramp, size=(4, 6), mode="bilinear", align_corners=False)[:, 0]
    assert big.shape == (1, 4, 6) and big.equal(up > 0) and 0 < int(big.sum()) < 24
    assert predict_query(_Ramp(), s_img, s_msk, ramp, out_size=(2, 3)).equal(ramp[:, 0] > 0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_query(_Ramp(), s_img, s_msk, q, batch_size=0)
    empty = predict_query(_Ramp(), s_img, s_msk, q[:0])
    assert empty.shape == (0, 2, 3) and empty.dtype == torch.bool
    assert predict_query(_Ramp(), s_img, s_msk, q[:0], out_size=(5, 4)).shape == (0, 5, 4)


def test_predict_query_flip_and_the_intensity_prior_by_hand() -> None:
    s_img = torch.zeros(1, 2, 3, 4, 4)  # K = 2 shots, 3 channels: the middle one is the intensity
    s_img[0, :, 1, :2] = 1.0  # support organ bright (1), background dark (0)
    s_msk = torch.zeros(1, 2, 4, 4)
    s_msk[0, :, :2] = 1.0
    q = torch.zeros(2, 3, 4, 4)
    q[:, 1, :, :2] = 1.0  # organ-like intensity on the left half
    q[:, 1, :, 2:] = torch.tensor([0.0, 0.5])  # background-like and in between
    q[:, 0] = 5.0  # channel 0 drives _Ramp's logit: all foreground without the prior
    model = _Ramp()
    assert predict_query(model, s_img, s_msk, q).all()
    for weight in (0.5, 3.0):
        veto = intensity_veto(s_img[0, :, 1], s_msk[0], q[:, 1])
        margin = q[:, 0] + s_img.mean() + weight * veto  # fg - bg with the prior
        pred = predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=weight)
        assert pred.equal(margin > 0)
        up = predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=weight, out_size=(8, 8))
        ref = F.interpolate(margin[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0] > 0
        assert up.equal(ref)
    assert not predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=3.0).all()  # the prior bites at 3
    assert predict_query(_Ramp(intensity_prior=3.0), s_img, s_msk, q).equal(
        predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=3.0)
    )
    with pytest.raises(ValueError, match="support batch 1"):
        predict_query(
            _Ramp(), s_img.expand(2, -1, -1, -1, -1), s_msk.expand(2, -1, -1, -1), q, intensity_prior=1.0
        )
    # flip: the mean of the logits and the mirrored episode's logits mirrored back
    bias = torch.tensor([3.0, 0.0, 0.0, -1.0])  # mirrored back: [-1, 0, 0, 3] -> mean [1, 0, 0, 1]
    args = (torch.zeros(1, 1, 1, 1, 4), torch.ones(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    assert predict_query(_Ramp(bias), *args)[0, 0].tolist() == [True, False, False, False]
    assert predict_query(_Ramp(bias), *args, tta="flip")[0, 0].tolist() == [True, False, False, True]
    assert predict_query(_Ramp(bias, tta="flip"), *args)[0, 0].tolist() == [True, False, False, True]


class _ChunkSeer(nn.Module):
    """Predicts foreground where the query equals the support image's value: chunk c's support slices hold the
    value c + 1 (see _volumes), so each query slice is foreground only where it was segmented with its chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1))
        self.w = nn.Parameter(torch.zeros(()))
        self.supports: list[float] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        value = float(s_img.max())
        self.supports.append(value)
        fg = ((q[:, 0] - value).abs() < 0.25).float() * 4.0 - 2.0 + self.w
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(fg), fg], 1))


def _volumes() -> dict[str, Volume]:
    """Support "s": liver (1) on slices 1..6, image value 1, 2, 3 on the chunk slices (1/6, 1/2, 5/6 of 6 slices:
    index 1 -> z 2, 3 -> z 4, 5 -> z 6). Query "q": liver on slices 2..7 (6 slices, chunks 0,0,1,1,2,2 by
    part = floor((z - 2) / (5 / 3))), a 2x2 square; its image holds the value of the slice's right chunk on the
    square's first row and the value of the wrong chunk on its second row and on a 1-voxel background spot."""
    label = np.zeros((9, 4, 4), dtype=np.int16)
    label[1:7, 1:3, 1:3] = 1
    image = np.zeros((9, 4, 4), dtype=np.float32)
    for z, v in ((2, 1.0), (4, 2.0), (6, 3.0)):
        image[z][label[z] == 1] = v
    sup = Volume(image, label, (1.0, 1.0, 1.0), "s", "MR", PHANTOM, normalized=True)
    qlabel = np.zeros((9, 4, 4), dtype=np.int16)
    qlabel[2:8, 1:3, 1:3] = 1
    qlabel[2:8, 3, 3] = 4  # spleen voxel, where the wrong chunk's value sits
    qimage = np.zeros((9, 4, 4), dtype=np.float32)
    for z, c in zip(range(2, 8), (0, 0, 1, 1, 2, 2)):
        qimage[z, 1, 1:3] = c + 1  # right chunk: 2 TP per slice
        qimage[z, 2, 1:3] = (c + 1) % 3 + 1  # wrong chunk: 2 FN per slice
        qimage[z, 3, 3] = c + 1  # a false positive in the spleen
        qimage[z, 0, 0] = c + 1  # and one in the background
    q = Volume(qimage, qlabel, (1.0, 1.0, 1.0), "q", "MR", PHANTOM, normalized=True)
    return {"s": sup, "q": q}


def test_evaluate_uses_each_slices_chunk_and_records_every_number() -> None:
    vols = _volumes()
    protocol = Protocol("phantom", organs=("liver",), support_subject="s", chunks=3)
    plan = protocol.build_plan(list(vols.values()))
    assert plan.organs[0].support_slices == ((2,), (4,), (6,))
    assert plan.organs[0].queries[0].chunks == (0, 0, 1, 1, 2, 2)
    model = _ChunkSeer().train()
    r = evaluate(model, plan, vols, batch_size=1, postprocess=["none", "lcc"], config={"k": 1})
    assert model.training  # restored
    # per query slice (6): TP 2, FN 2, FP 2 (spleen + background) -> 12, 12, 12
    assert r.extras["counts"] == {"tp": 12, "fp": 12, "fn": 12}
    assert r.dice == {"liver": 0.5, "mean": 0.5}  # 24 / 48
    assert r.precision == {"liver": 0.5, "mean": 0.5} and r.recall == {"liver": 0.5, "mean": 0.5}
    assert r.per_scan == ({"subject": "q", "organ": "liver", "dice": 0.5, "precision": 0.5, "recall": 0.5},)
    assert sorted(model.supports) == [1.0] * 2 + [2.0] * 2 + [3.0] * 2  # batch 1: one call per query slice
    assert r.extras["false_positives"] == {"liver": {"spleen": 6, "background": 6}}
    # the largest component: the TP rows and the spleen voxels (26-connected)
    lcc = r.extras["postprocess"]["lcc"]
    assert lcc["precision"]["liver"] == 12 / 18 and lcc["recall"]["liver"] == 0.5
    assert r.extras["postprocess"]["none"]["dice"] == {"liver": 0.5, "mean": 0.5}
    assert r.extras["resolution"] == "model input" and r.extras["threshold"] == 0.5
    assert r.extras["tta"] == "none" and r.extras["intensity_prior"] == 0.0
    assert r.extras["finetune"] == FinetuneConfig().to_dict()
    assert r.extras["protocol"] == protocol.to_dict()
    assert r.extras["split"] == {"train": [], "support": "s", "queries": ["q"]}
    assert r.config == {"k": 1}
    t = r.extras["timing"]
    assert (t["scans"], t["slices"], t["batch_size"], t["amp"], t["device"]) == (1, 6, 1, False, "cpu")
    assert t["seconds"] > 0 and t["scans_per_s"] == pytest.approx(1 / t["seconds"])
    assert t["slices_per_s"] == pytest.approx(6 / t["seconds"])
    # batched: the same numbers, one call per chunk
    model = _ChunkSeer().eval()
    again = evaluate(model, plan, vols)
    assert again.dice == r.dice and sorted(model.supports) == [1.0, 2.0, 3.0] and not model.training


def _upsampled(vols: dict[str, Volume], rows: int, cols: int) -> dict[str, Volume]:
    """Reference volumes: every voxel repeated ``rows`` x ``cols`` times in-plane (nearest-upsampled labels)."""
    return {
        s: v.with_arrays(v.image.repeat(rows, 1).repeat(cols, 2), v.label.repeat(rows, 1).repeat(cols, 2))  # type: ignore[union-attr]
        for s, v in vols.items()
    }


def test_evaluate_against_reference_labels_and_errors() -> None:
    vols = _volumes()
    plan = Protocol("phantom", organs=("liver",), support_subject="s", chunks=3).build_plan(
        list(vols.values())
    )
    # reference at twice the resolution: nearest-upsampled labels; the logits are upsampled bilinearly
    ref = _upsampled(vols, 2, 2)
    r = evaluate(_ChunkSeer(), plan, vols, reference=ref)
    assert r.extras["resolution"] == "reference labels"
    c = r.extras["counts"]
    assert c["tp"] + c["fn"] == 4 * 24  # every reference voxel of the organ is scored once
    with pytest.raises(ValueError, match="no labels"):
        evaluate(
            _ChunkSeer(), plan, vols, reference={s: v.with_arrays(v.image, None) for s, v in ref.items()}
        )
    with pytest.raises(ValueError, match="at least one step"):
        evaluate(_ChunkSeer(), plan, vols, postprocess=[])
    with pytest.raises(ValueError, match="postprocess"):
        evaluate(_ChunkSeer(), plan, vols, postprocess=["none", "bogus"])
    organ = plan.organs[0]
    no_query = EvaluationPlan(
        plan.protocol, plan.split, (OrganPlan(organ.organ, 1, "s", organ.support_slices, ()),)
    )
    with pytest.raises(ValueError, match="no query scan"):
        evaluate(_ChunkSeer(), no_query, vols)
    bad_chunk = OrganPlan(organ.organ, 1, "s", organ.support_slices, (QueryPlan("q", (2, 3), (0, 3)),))
    with pytest.raises(ValueError, match=r"chunks \[3\] have no support \(plan has 3\)"):
        evaluate(_ChunkSeer(), EvaluationPlan(plan.protocol, FoldSplit((), "s", ("q",)), (bad_chunk,)), vols)


def test_evaluate_passes_threshold_and_prior_through() -> None:
    vols = _volumes()
    plan = Protocol("phantom", organs=("liver",), support_subject="s", chunks=3).build_plan(
        list(vols.values())
    )
    # _ChunkSeer's foreground logit is +2 (probability 0.88) or -2: above 0.9 nothing is foreground
    strict = evaluate(_ChunkSeer(), plan, vols, threshold=0.9)
    assert strict.extras["counts"] == {"tp": 0, "fp": 0, "fn": 24} and strict.extras["threshold"] == 0.9
    loose = evaluate(_ChunkSeer(), plan, vols, threshold=0.1)  # logit -2 is probability 0.12 > 0.1: all fg
    assert loose.extras["counts"] == {"tp": 24, "fp": 6 * 12, "fn": 0}  # 16 - 4 voxels per slice
    assert math.isclose(loose.dice["liver"], 48 / (48 + 72))
    prior = evaluate(_ChunkSeer(), plan, vols, intensity_prior=1.0)
    assert prior.extras["intensity_prior"] == 1.0


def test_evaluate_against_non_square_reference_labels() -> None:
    """Reference labels 2x the rows and 3x the columns of the model input: the logits are resized to (rows, cols),
    not to (cols, cols) (a survivor of the 2026-12-06 full run read the size as ``shape[2], shape[2]``)."""
    vols = _volumes()
    plan = Protocol("phantom", organs=("liver",), support_subject="s", chunks=3).build_plan(
        list(vols.values())
    )
    ref = _upsampled(vols, 2, 3)
    r = evaluate(_ChunkSeer(), plan, vols, reference=ref)
    c = r.extras["counts"]
    # 6 query slices, 4 organ voxels each, 2 x 3 reference voxels per voxel
    assert c["tp"] + c["fn"] == 6 * 4 * 6
    square = evaluate(_ChunkSeer(), plan, vols)
    assert r.dice["liver"] == pytest.approx(square.dice["liver"], abs=0.15)  # the same prediction, finer grid


def test_an_intensity_prior_of_weight_one_half_changes_the_prediction() -> None:
    """ct-cpu scores with an intensity prior of weight 0.5: with a margin small enough for it to bite, the prediction
    is the thresholded margin plus half the veto (a survivor of the 2026-12-06 run applied the prior only above
    weight 1, and the test above left the prediction all foreground at 0.5)."""
    s_img = torch.zeros(1, 2, 3, 4, 4)
    s_img[0, :, 1, :2] = 1.0
    s_msk = torch.zeros(1, 2, 4, 4)
    s_msk[0, :, :2] = 1.0
    q = torch.zeros(2, 3, 4, 4)
    q[:, 1, :, :2] = 1.0
    q[:, 1, :, 2:] = torch.tensor([0.0, 0.5])
    q[:, 0] = 0.1 - s_img.mean()  # _Ramp's margin is 0.1 everywhere before the prior
    margin = q[:, 0] + s_img.mean() + 0.5 * intensity_veto(s_img[0, :, 1], s_msk[0], q[:, 1])
    assert (margin > 0).any() and not (margin > 0).all()  # the prior decides some voxels
    assert predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=0.5).equal(margin > 0)


# ---------------------------------------------------------------------------------------------------------------
# Written from the survivors judged "test to add" in docs/mutation-survivors.md (second pass). Each docstring names
# the mutants it kills; each kill was confirmed by rerunning those mutants (python tools/mutation.py NAME...).


def _plan_and_volumes() -> tuple[EvaluationPlan, dict[str, Volume]]:
    vols = _volumes()
    return Protocol("phantom", organs=("liver",), support_subject="s", chunks=3).build_plan(
        list(vols.values())
    ), vols


class _Skewed(_ChunkSeer):
    """_ChunkSeer (4-pixel-wide slices) plus a column bias (0, 2.5, 0, 5): not mirror-symmetric, so flip TTA changes
    the prediction, and margins of 0.5 that a weak prior vetoes beside margins of 3 that it does not. Also a
    background logit ``bg`` (added to both logits) and the outputs fine-tuning reads; records each query's channels."""

    def __init__(self, bg: float = 0.0, **config: object) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1), **config)
        self.bg = bg
        self.channels: list[int] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.channels.append(q.shape[1])
        fg = super().forward(s_img, s_msk, q).logits[:, 1]
        fg = fg + torch.tensor([0.0, 2.5, 0.0, 5.0]) + self.bg
        return SimpleNamespace(
            logits=torch.stack([torch.full_like(fg, self.bg), fg], 1), align_loss=None, aux_loss=None
        )


def _by_hand(
    model: nn.Module, plan: EvaluationPlan, vols: dict[str, Volume], **settings: object
) -> dict[str, int]:
    """TP/FP/FN of ``plan``'s one organ, segmented slice by slice with ``predict_query`` and the chunk's model
    from ``chunk_model`` (the public pieces ``evaluate`` is made of), at the model's input size."""
    from episodes.protocol import query_tensors, support_episode_tensors

    finetune = settings.pop("finetune", FinetuneConfig())
    organ = plan.organs[0]
    tp = fp = fn = 0
    for query in organ.queries:
        images, _, chunks = query_tensors(query, vols, organ.label_value, channels=1, slice_input="tile")
        truth = torch.from_numpy(vols[query.subject].label[list(query.slices)] == organ.label_value)  # type: ignore[index]
        for i, c in enumerate(chunks.tolist()):
            s_img, s_msk = support_episode_tensors(organ, vols, c, channels=1, slice_input="tile")
            chunk = chunk_model(model, s_img, s_msk, finetune, organ.organ, c, "cpu")  # type: ignore[arg-type]
            pred = predict_query(chunk, s_img, s_msk, images[i : i + 1], **settings)[0]  # type: ignore[arg-type]
            tp += int((pred & truth[i]).sum())
            fp += int((pred & ~truth[i]).sum())
            fn += int((~pred & truth[i]).sum())
    return {"tp": tp, "fp": fp, "fn": fn}


def test_evaluate_passes_flip_tta_and_the_prior_to_every_prediction() -> None:
    """``evaluate`` with ``tta='flip'``, an intensity prior, both, and a background logit that is not 0: the counts
    are those of ``predict_query`` called by hand with the same settings, and the four settings give four different
    counts (so dropping one shows). Kills ``_evaluate_organ__mutmut_82/83/93/94`` and ``evaluate__mutmut_84/87``
    (a setting not passed on to ``predict_query``)."""
    plan, vols = _plan_and_volumes()
    seen = []
    for settings in ({}, {"tta": "flip"}, {"intensity_prior": 1.0}, {"tta": "flip", "intensity_prior": 1.0}):
        r = evaluate(_Skewed(bg=-1.0), plan, vols, **settings)  # type: ignore[arg-type]
        assert r.extras["counts"] == _by_hand(_Skewed(bg=-1.0), plan, vols, **settings), settings
        seen.append(tuple(r.extras["counts"].values()))
    assert len(set(seen)) == 4, seen


def test_evaluate_takes_every_inference_setting_from_the_model_config() -> None:
    """A model whose config stores the threshold, flip TTA, the prior and fine-tuning is scored by ``evaluate``
    without arguments exactly as the same settings passed explicitly, and the result records them; arguments
    override the config (``channels`` too). Kills ``evaluate__mutmut_19/23/28/29/33/34/35/36/38``."""
    plan, vols = _plan_and_volumes()
    tune = FinetuneConfig(steps=1, lr=0.5, batch_size=2, seed=3)
    stored: dict[str, Any] = {"fg_threshold": 0.6, "tta": "flip", "intensity_prior": 2.0, "finetune": tune}
    explicit = evaluate(_Skewed(), plan, vols, threshold=0.6, tta="flip", intensity_prior=2.0, finetune=tune)
    own = evaluate(_Skewed(**stored), plan, vols)
    assert own.extras["counts"] == explicit.extras["counts"]
    for key, value in (
        ("threshold", 0.6),
        ("tta", "flip"),
        ("intensity_prior", 2.0),
        ("finetune", tune.to_dict()),
    ):
        assert own.extras[key] == explicit.extras[key] == value, key
    # arguments override the stored settings
    plain = evaluate(_Skewed(), plan, vols)
    over = evaluate(
        _Skewed(**stored), plan, vols, threshold=0.5, tta="none", intensity_prior=0.0, finetune={"steps": 0}
    )
    assert over.extras["counts"] == plain.extras["counts"] != own.extras["counts"]
    assert (over.extras["tta"], over.extras["finetune"]["steps"]) == ("none", 0)
    # channels: the argument, else the config's backbone.in_channels
    model = _Skewed()
    model.config.backbone.in_channels = 3
    evaluate(model, plan, vols, channels=1)
    assert set(model.channels) == {1}
    evaluate(model, plan, vols)
    assert set(model.channels) == {1, 3}


def test_evaluate_fine_tunes_each_chunks_copy_on_its_support_and_fills_the_cache() -> None:
    """Support fine-tuning through ``evaluate``: each chunk is segmented by a copy tuned on that chunk's support,
    seeded by the organ and the chunk (the counts equal ``chunk_model`` + ``predict_query`` by hand), the copies
    land in ``tuned`` by ``(organ, chunk)``, and copies found there are used as they are. Kills
    ``_evaluate_organ__mutmut_16/17/19/26``, ``evaluate__mutmut_86`` and ``chunk_model__mutmut_14/15/16``."""
    plan, vols = _plan_and_volumes()
    tune = FinetuneConfig(steps=2, lr=2.0, batch_size=2, seed=5)
    model = _Skewed()
    tuned: dict[tuple[str, int], nn.Module] = {}
    r = evaluate(model, plan, vols, finetune=tune, tuned=tuned)
    assert r.extras["counts"] == _by_hand(_Skewed(), plan, vols, finetune=tune)
    assert sorted(tuned) == [("liver", 0), ("liver", 1), ("liver", 2)]
    weights = [float(m.get_parameter("w").item()) for m in tuned.values()]
    assert model.w.item() == 0.0 and all(w != 0.0 for w in weights)  # the copies moved, the model did not
    assert len(set(weights)) == 3  # each chunk's support tuned its own copy
    # a cache that already holds the copies: they are used, nothing is tuned again
    frozen: dict[tuple[str, int], nn.Module] = {key: _Skewed() for key in tuned}
    for m in frozen.values():
        m.get_parameter("w").data.fill_(-10.0)  # predicts nothing
    again = evaluate(model, plan, vols, finetune=tune, tuned=frozen)
    assert again.extras["counts"]["tp"] == 0 and all(
        m.get_parameter("w").item() == -10.0 for m in frozen.values()
    )


def _two_oracles(margin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``margin (N, h, w)`` upsampled bilinearly to ``size`` with ``align_corners`` False and True, thresholded at 0."""
    return tuple(  # type: ignore[return-value]
        F.interpolate(margin[:, None], size=size, mode="bilinear", align_corners=a)[:, 0] > 0
        for a in (False, True)
    )


def test_native_resolution_logits_are_resized_with_align_corners_false() -> None:
    """A fg margin that crosses 0 at 0.3 pixel from the first column: upsampled 3 -> 6 columns, ``align_corners=False``
    samples column 1 at x = 0.25 (background) and ``True`` at x = 0.4 (foreground), so the two differ; the
    prediction is the ``False`` one, with and without the prior. Kills ``predict_query__mutmut_124`` (the prior's
    margin) and ``__mutmut_147`` (the logits)."""
    row = torch.tensor([-0.3, 0.7, 0.7])
    q = row.view(1, 1, 1, 3).expand(1, 3, 2, 3).contiguous()
    s_img, s_msk = torch.zeros(1, 1, 3, 2, 3), torch.ones(1, 1, 2, 3)
    right, wrong = _two_oracles(q[:, 0], (4, 6))
    assert not right.equal(wrong)
    assert predict_query(_Ramp(), s_img, s_msk, q, out_size=(4, 6)).equal(right)
    # with the prior: the margin plus the veto, then resized
    s_img[0, 0, 1, :, :2] = 1.0  # the support's organ: bright, on the first two columns
    s_msk = torch.zeros(1, 1, 2, 3)
    s_msk[0, 0, :, :2] = 1.0
    veto = 0.5 * intensity_veto(s_img[0, :, 1], s_msk[0], q[:, 1])
    assert (veto < 0).any()  # the prior acts (channel 1, the intensity, is the ramp itself)
    # channel 0 sets _Ramp's logit: the margin with the prior is the ramp again
    q[:, 0] = row - s_img.mean() - veto
    margin = q[:, 0] + s_img.mean() + veto
    right, wrong = _two_oracles(margin, (4, 6))
    assert not right.equal(wrong)
    assert predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=0.5, out_size=(4, 6)).equal(right)


def test_the_prior_scores_every_query_batch_with_a_nonzero_background_logit() -> None:
    """With the prior and several query batches every batch is predicted (``break`` kept the first only), and the
    margin is ``fg - bg``, checked with a background logit of -1 (``fg + bg`` differs). Kills
    ``predict_query__mutmut_128`` and ``__mutmut_90``."""
    s_img = torch.zeros(1, 1, 3, 4, 4)
    s_img[0, :, 1, :2] = 1.0
    s_msk = torch.zeros(1, 1, 4, 4)
    s_msk[0, :, :2] = 1.0
    q = torch.zeros(3, 3, 4, 4)
    q[:, 1, :, :2] = 1.0
    q[:, 1, :, 2:] = torch.tensor([0.0, 0.5])
    q[:, 0] = torch.tensor([-1.5, -0.5, 0.5]).view(3, 1, 1) - s_img.mean()

    class _Bg(_Ramp):
        def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
            fg = super().forward(s_img, s_msk, q).logits[:, 1]
            return SimpleNamespace(logits=torch.stack([torch.full_like(fg, -1.0), fg], 1))

    margin = q[:, 0] + s_img.mean() + 1.0 + 0.5 * intensity_veto(s_img[0, :, 1], s_msk[0], q[:, 1])
    assert (margin > 0).any() and not (margin > 0).all()
    pred = predict_query(_Bg(), s_img, s_msk, q, intensity_prior=0.5, batch_size=1)
    assert pred.shape == (3, 4, 4) and pred.equal(margin > 0)


def test_several_support_sets_without_a_prior_are_accepted() -> None:
    """A support batch of 2 (one support set per query) is refused only when the prior needs one support set.
    Kills ``predict_query__mutmut_36`` (``weight >= 0`` refused it without a prior)."""
    s_img, s_msk = torch.zeros(2, 1, 1, 2, 2), torch.ones(2, 1, 2, 2)
    q = torch.ones(2, 1, 2, 2)
    assert predict_query(_Ramp(), s_img, s_msk, q).all()
    with pytest.raises(ValueError, match="support batch 1"):
        predict_query(_Ramp(), s_img, s_msk, q, intensity_prior=0.5)


def test_amp_off_runs_without_autocast_and_on_with_it() -> None:
    """``amp=False`` (the default) must not autocast on the CPU (bf16 would change the digits). Kills
    ``predict_query__mutmut_56`` (``enabled`` dropped: autocast always on)."""
    seen: list[bool] = []

    class _Spy(_Ramp):
        def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(s_img, s_msk, q)

    args = (torch.zeros(1, 1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    predict_query(_Spy(), *args)
    predict_query(_Spy(), *args, amp=True)
    assert seen == [False, True]


class _SupportMap(nn.Module):
    """The foreground logit is the first support shot's image (the query only gives the batch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        fg = s_img[0, 0, 0].expand(q.shape[0], -1, -1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(fg), fg], 1))


def test_flip_tta_mirrors_the_support_along_its_width() -> None:
    """Flip TTA mirrors the support (image and mask) left-right with the query and mirrors the result back, so a
    model that outputs its first support shot gives that shot exactly. A support that is not symmetric in height,
    and a second shot unlike the first, tell it from mirroring the shots (``flip(+1)``) or the rows (``flip(-2)``).
    Kills ``predict_query__mutmut_73`` and ``__mutmut_74``."""
    s_img = torch.full((1, 2, 1, 2, 2), -1.0)
    s_img[0, 0, 0, 0, 0] = 1.0  # shot 0: [[1, -1], [-1, -1]]; shot 1: all -1
    args = (s_img, torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2))
    expected = torch.tensor([[[True, False], [False, False]]])
    assert predict_query(_SupportMap(), *args).equal(expected)
    assert predict_query(_SupportMap(), *args, tta="flip").equal(expected)


def test_flip_tta_averages_the_logits_before_a_threshold_other_than_one_half() -> None:
    """At threshold 0.5 only the sign of the averaged logits counts; at 0.9 (margin 2.197) and 0.8 (1.386) their
    size does: a constant logit 2.0 must stay background at 0.9 (doubling it passes) and 1.6 foreground at 0.8
    (dividing the sum by 3 fails). Kills ``predict_query__mutmut_84`` and ``__mutmut_86``."""
    args = (torch.zeros(1, 1, 1, 1, 4), torch.ones(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    assert not predict_query(_Ramp(2.0), *args, tta="flip", threshold=0.9).any()
    assert predict_query(_Ramp(1.6), *args, tta="flip", threshold=0.8).all()
