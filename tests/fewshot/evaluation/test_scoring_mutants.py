"""fewshot.evaluation.scoring with stand-in models whose predictions are known exactly: which support chunk
segments which query slice, the threshold margin, batching, resizing, the intensity prior and every number
``evaluate`` records (docs/development.md "Mutation testing")."""

from __future__ import annotations

import math
from types import SimpleNamespace

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
