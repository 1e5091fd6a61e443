"""Test-time fine-tuning on the support set (fewshot/evaluation/finetune.py, ModelConfig.finetune)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from episodes.data.labels import PHANTOM
from episodes.data.volumes import Volume
from episodes.protocol import Protocol
from episodes.sampling.augment import Augmenter
from fewshot.config.model import FinetuneConfig, ModelConfig
from fewshot.evaluation import evaluate, predict_query, save_overlays, scoring
from fewshot.evaluation.finetune import finetune_on_support, support_episodes
from fewshot.models import EnsembleSegmenter, FewShotSegmenter, create_model
from fewshot.segment import segment_volume


def _model(seed: int = 0) -> FewShotSegmenter:
    cfg = ModelConfig(
        backbone={"name": "cbr-small", "in_channels": 1, "truncate": "block2"},
        head={"name": "alpnet", "feature_dim": 16, "window_train": 1, "window_test": 1},
    )
    return create_model(cfg, seed=seed)


def _support(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square (the organ) and a dimmer bar (a distractor) on noise: ``(1, 1, 1, H, W)`` / ``(1, 1, H, W)``."""
    rng = np.random.default_rng(0)
    img = rng.normal(0, 0.3, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[8:20, 10:22] = 1
    img[mask > 0] += 2.0
    img[24:28, 2:30] += 1.0
    return torch.from_numpy(img)[None, None, None], torch.from_numpy(mask)[None, None]


def _dice(pred: torch.Tensor, mask: torch.Tensor) -> float:
    tp = (pred & (mask > 0)).sum().item()
    return 2 * tp / max(pred.sum().item() + (mask > 0).sum().item(), 1)


def test_support_episodes_are_augmented_copies_of_the_support() -> None:
    s_img, s_msk = _support()
    aug = Augmenter("alpnet")
    a = support_episodes(s_img, s_msk, aug, 3, np.random.default_rng(1))
    b = support_episodes(s_img, s_msk, aug, 3, np.random.default_rng(1))
    shapes = [tuple(t.shape) for t in a]
    assert shapes == [(3, 1, 1, 32, 32), (3, 1, 32, 32), (3, 1, 32, 32), (3, 32, 32)]
    assert all(x.equal(y) for x, y in zip(a, b))  # one seed, one batch
    area = s_msk.sum().item()
    for masks in (a[1][:, 0], a[3]):
        sums = masks.flatten(1).sum(1)
        assert (sums > 0.5 * area).all() and (sums < 2 * area).all()  # the organ, moved, not another region
    assert not a[2][0].equal(a[0][0, 0])  # support and query are different augmentations
    with pytest.raises(ValueError, match="foreground pixel"):
        support_episodes(s_img, torch.zeros_like(s_msk), aug, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(1, K, C, H, W\)"):
        support_episodes(s_img[0], s_msk, aug, 1, np.random.default_rng(0))


def test_finetune_improves_the_support_and_leaves_the_model_alone(one_thread: None) -> None:
    torch.manual_seed(0)
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s_img, s_msk = _support()
    query = s_img[0]  # the support slice itself as the query
    cfg = FinetuneConfig(steps=30, lr=0.01, batch_size=2)
    tuned = finetune_on_support(model, s_img, s_msk, cfg, seed=0)
    assert tuned is not model and not tuned.training
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # the original is untouched
    after = tuned.state_dict()
    bn_stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert bn_stats and all(after[k].equal(before[k]) for k in bn_stats)  # batch-norm statistics as trained
    assert any(not after[k].equal(before[k]) for k in after if k not in bn_stats)
    d0 = _dice(predict_query(model, s_img, s_msk, query)[0], s_msk[0, 0])
    d1 = _dice(predict_query(tuned, s_img, s_msk, query)[0], s_msk[0, 0])
    assert d1 > d0
    held_out = support_episodes(s_img, s_msk, Augmenter("alpnet"), 8, np.random.default_rng(99))  # unseen draws

    def loss(m: torch.nn.Module) -> float:
        with torch.no_grad():
            logits = m(*held_out[:3]).logits
        return float(torch.nn.functional.cross_entropy(logits, held_out[3], weight=torch.tensor([0.05, 1.0])))

    assert loss(tuned) < 0.7 * loss(model)
    again = finetune_on_support(model, s_img, s_msk, cfg, seed=0).state_dict()
    assert all(after[k].equal(again[k]) for k in after)  # deterministic for a seed
    assert finetune_on_support(model, s_img, s_msk, FinetuneConfig(steps=0)) is model


def test_finetune_tunes_each_ensemble_member(one_thread: None) -> None:
    members = [_model(0).eval(), _model(1).eval()]
    ensemble = EnsembleSegmenter(members)
    s_img, s_msk = _support()
    tuned = finetune_on_support(ensemble, s_img, s_msk, FinetuneConfig(steps=2, lr=0.01, batch_size=1), seed=5)
    assert isinstance(tuned, EnsembleSegmenter) and len(tuned.members) == 2
    alone = finetune_on_support(members[1], s_img, s_msk, FinetuneConfig(steps=2, lr=0.01, batch_size=1), seed=6)
    assert all(v.equal(alone.state_dict()[k]) for k, v in tuned.members[1].state_dict().items())  # member i: seed + i


def _scans(seed: int) -> dict[str, Volume]:
    """A support scan and a query scan (6 slices of 32 px): the organ (label 1) bright on noise in slices 1-4."""
    rng = np.random.default_rng(seed)
    vols = {}
    for s in ("sup", "q1"):
        label = np.zeros((6, 32, 32), np.int16)
        label[1:5, 8:20, 10:22] = 1
        image = rng.normal(0, 0.3, label.shape).astype(np.float32) + 2.0 * (label == 1)
        vols[s] = Volume(image, label, (1.0, 1.0, 1.0), s, "MR", PHANTOM, normalized=True)
    return vols


def test_evaluate_with_finetune(one_thread: None) -> None:
    vols = _scans(0)
    plan = Protocol("phantom", organs=("liver",), support_subject="sup", chunks=1).build_plan(list(vols.values()))
    model = _model()
    plain = evaluate(model, plan, vols)
    tuned = evaluate(model, plan, vols, finetune={"steps": 20, "lr": 0.01, "batch_size": 2})
    assert plain.extras["finetune"]["steps"] == 0 and tuned.extras["finetune"]["steps"] == 20
    assert tuned.dice != plain.dice  # the chunk was segmented by the tuned copy
    again = evaluate(model, plan, vols, finetune={"steps": 20, "lr": 0.01, "batch_size": 2})
    assert again.dice == tuned.dice  # reproducible from the seed
    with pytest.raises(ValueError, match=r"finetune\.steps"):
        evaluate(model, plan, vols, finetune={"steps": -1})
    # `fewshot segment` on the same scans tunes the same copy, so it predicts what the evaluation scored
    truth = vols["q1"].label[1:5] == 1
    for result, tune in ((plain, None), (tuned, {"steps": 20, "lr": 0.01, "batch_size": 2})):
        pred = segment_volume(model, vols["sup"], vols["sup"].label == 1, vols["q1"], chunks=1, query_range=(1, 4),
                              channels=1, finetune=tune, organ="liver")[1:5]
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert dice == pytest.approx(result.dice["liver"], abs=1e-6)
    with pytest.raises(ValueError, match="organ"):
        segment_volume(model, vols["sup"], vols["sup"].label == 1, vols["q1"], channels=1, finetune={"steps": 1})


def test_overlays_reuse_the_scored_copies(one_thread: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vols = _scans(1)
    plan = Protocol("phantom", organs=("liver",), support_subject="sup", chunks=2).build_plan(list(vols.values()))
    model, tune = _model(), {"steps": 3, "lr": 0.01, "batch_size": 1}
    tuned: dict[tuple[str, int], torch.nn.Module] = {}
    evaluate(model, plan, vols, finetune=tune, tuned=tuned)
    assert sorted(tuned) == [("liver", 0), ("liver", 1)] and all(m is not model for m in tuned.values())
    fresh = save_overlays(model, plan, vols, tmp_path / "fresh", n=3, finetune=tune)  # tunes its own copies

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("tuned a copy again")

    monkeypatch.setattr(scoring, "finetune_on_support", refuse)
    kept = save_overlays(model, plan, vols, tmp_path / "kept", n=3, finetune=tune, tuned=tuned)
    assert [p.name for p in kept] == [p.name for p in fresh]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(kept, fresh))  # the same copies as a fresh tuning


def test_finetune_config() -> None:
    assert ModelConfig().finetune == FinetuneConfig() and FinetuneConfig().steps == 0
    cfg = ModelConfig(finetune={"steps": 5, "bg_weight": 0.1})
    assert cfg.finetune.steps == 5 and cfg.finetune.bg_weight == 0.1
    assert ModelConfig(**cfg.to_dict()) == cfg
    for bad, match in (
        ({"steps": 1.5}, r"finetune\.steps"), ({"lr": 0}, r"finetune\.lr"), ({"augment": "x"}, r"finetune\.augment"),
        ({"batch_size": 0}, r"finetune\.batch_size"), ({"bg_weight": -1}, r"finetune\.bg_weight"),
        ({"bf16": "yes"}, r"finetune\.bf16"), ({"stepz": 1}, "stepz"),
    ):
        with pytest.raises(ValueError, match=match):
            ModelConfig(finetune=bad)
