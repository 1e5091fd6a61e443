"""Tests of the nn.Module heads (PANet/SG-One, ALPNet, ADNet, DPCN) on tiny feature lists."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fewshot.backbones.base import FeatureInfo
from fewshot.heads import (
    ADNetConfig,
    ADNetHead,
    ALPNetConfig,
    ALPNetHead,
    DPCNHead,
    FewShotHead,
    HeadConfig,
    PANetHead,
    create_head,
    default_dpcn_levels,
    head_config_class,
    list_heads,
    register_head,
)
from fewshot.heads import functional as HF

INFO = (FeatureInfo("a", 4, 2), FeatureInfo("b", 6, 4), FeatureInfo("c", 8, 8))


def _episode(n: int = 2, k: int = 1, b: int | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    b = n if b is None else b
    sizes = [(16, 16), (8, 8), (4, 4)]
    s_feats = [torch.randn(b, k, f.channels, *hw, generator=g) for f, hw in zip(INFO, sizes, strict=True)]
    q_feats = [torch.randn(n, f.channels, *hw, generator=g) for f, hw in zip(INFO, sizes, strict=True)]
    masks = torch.zeros(b, k, 32, 32)
    masks[..., 4:28, 6:26] = 1.0
    return s_feats, masks, q_feats


@pytest.mark.parametrize("head_cls", [PANetHead, ALPNetHead])
def test_prototype_heads_logits_and_alignment(head_cls: type) -> None:
    head = head_cls(INFO, feature_dim=5)
    s, m, q = _episode()
    out = head(s, m, q)
    assert out.logits.shape == (2, 2, 4, 4)  # resolution of the last feature map
    assert out.align_loss is not None and out.align_loss.ndim == 0
    head.eval()
    assert head(s, m, q).align_loss is None
    no_align = head_cls(INFO, feature_dim=5, align=False)
    assert no_align(s, m, q).align_loss is None and not no_align.does_alignment


def test_panet_head_matches_functional_without_reduction() -> None:
    head = PANetHead(INFO, feature_dim=0, align=False, scale=7.0)
    s, m, q = _episode(k=2)
    expected = HF.panet_segment(q[-1], s[-1], m, scale=7.0)
    torch.testing.assert_close(head(s, m, q).logits, expected)


def test_panet_head_feature_index() -> None:
    head = PANetHead(INFO, feature_dim=3, feature_index=1)
    s, m, q = _episode()
    assert head(s, m, q).logits.shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="out of range"):
        PANetHead(INFO, feature_index=3)


def test_alpnet_window_switches_with_mode() -> None:
    head = ALPNetHead(INFO, feature_dim=0, window_train=4, window_test=2, align=False)
    assert head.window == 4
    head.eval()
    assert head.window == 2
    s, m, q = _episode()
    expected = HF.alp_segment(q[-1], s[-1], m, window=2, threshold=0.95)
    torch.testing.assert_close(head(s, m, q).logits, expected)
    head.train()
    expected = HF.alp_segment(q[-1], s[-1], m, window=4, threshold=0.95)
    torch.testing.assert_close(head(s, m, q).logits, expected)


@pytest.mark.parametrize("head_cls", [PANetHead, ALPNetHead, DPCNHead])
def test_support_broadcast_equals_repetition(head_cls: type) -> None:
    torch.manual_seed(0)
    head = head_cls(INFO, feature_dim=4).eval()
    s, m, q = _episode(n=3, k=2, b=1)
    s_rep = [f.expand(3, *f.shape[1:]).clone() for f in s]
    m_rep = m.expand(3, *m.shape[1:]).clone()
    with torch.no_grad():
        torch.testing.assert_close(head(s, m, q).logits, head(s_rep, m_rep, q).logits)


@pytest.mark.parametrize("head_cls", [PANetHead, ALPNetHead])
def test_empty_support_gives_zero_foreground_logit(head_cls: type) -> None:
    head = head_cls(INFO, feature_dim=0).eval()
    s, m, q = _episode()
    logits = head(s, torch.zeros_like(m), q).logits
    assert torch.equal(logits[:, 1], torch.zeros_like(logits[:, 1]))


def test_dpcn_shapes_and_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    head = DPCNHead(INFO, feature_dim=6)
    assert head.mid_indices == (0, 1) and head.high_index == 2
    s, m, q = _episode(k=2)
    for f in s + q:
        f.requires_grad_(True)
    out = head(s, m, q)
    assert out.logits.shape == (2, 2, 16, 16)  # resolution of the first mid-level map
    assert out.align_loss is None
    out.logits.square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    for f in s + q:  # the backbone would be trained through every used map
        assert f.grad is not None and float(f.grad.abs().sum()) > 0


def test_dpcn_levels_and_validation() -> None:
    assert default_dpcn_levels(5) == ((2, 3), 4)
    assert default_dpcn_levels(2) == ((0,), 1)
    assert default_dpcn_levels(1) == ((0,), 0)
    with pytest.raises(ValueError, match="feature_dim > 0"):
        DPCNHead(INFO, feature_dim=0)
    with pytest.raises(ValueError, match="odd"):
        DPCNHead(INFO, kernel_sizes=((2, 2),))
    one = DPCNHead(INFO[-1:], feature_dim=3)
    s, m, q = _episode()
    assert one(s[-1:], m, q[-1:]).logits.shape == (2, 2, 4, 4)


def test_head_rejects_wrong_number_of_feature_maps() -> None:
    head = PANetHead(INFO, feature_dim=2)
    s, m, q = _episode()
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        head(s[:2], m, q[:2])
    with pytest.raises(ValueError, match="support batch"):
        head(s, m, [torch.cat([f, f[:1]]) for f in q])  # support batch 2, query batch 3


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["adnet", "alpnet", "dpcn", "panet", "sgone"])
def test_every_registered_head_builds_from_its_config(name: str) -> None:
    assert name in list_heads()
    cls = head_config_class(name)
    assert HeadConfig.config_for(name) is cls and cls().name == name
    torch.manual_seed(0)
    head = create_head(cls(feature_dim=4), INFO)
    assert isinstance(head, FewShotHead)
    s, m, q = _episode()
    assert head(s, m, q).logits.shape[:2] == (2, 2)
    assert head.does_alignment == (name in ("adnet", "panet", "alpnet"))


def test_head_registry_is_strict() -> None:
    assert list_heads() == ["adnet", "alpnet", "dpcn", "panet", "sgone"]
    with pytest.raises(ValueError, match="unknown head 'unet'; choices: adnet, alpnet, dpcn, panet, sgone"):
        head_config_class("unet")
    with pytest.raises(ValueError, match="already registered"):
        register_head("alpnet", config=ALPNetConfig)(lambda c, i: PANetHead(i))

    @dataclasses.dataclass(frozen=True)
    class OtherConfig(HeadConfig):
        name: str = "other"

    with pytest.raises(ValueError, match="must default to 'mine'"):
        register_head("mine", config=OtherConfig)
    with pytest.raises(ValueError, match="HeadConfig dataclass subclass"):
        register_head("mine", config=dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown head 'other'"):
        OtherConfig()  # not registered
    assert "mine" not in list_heads()


# --------------------------------------------------------------------------- ADNet


def test_anomaly_segment_is_adnets_thresholded_sigmoid() -> None:
    s, m, q = _episode(n=2, k=1)
    qf, sf = q[-1], s[-1]
    t = torch.tensor([-10.0, -4.0])
    logits = HF.anomaly_segment(qf, sf, m, t, scale=20.0)
    assert logits.shape == (2, 2, 4, 4) and torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))
    # by hand: MAP prototype (mask resized to 4x4 covers the whole map except the border) + ADNet's formula
    fg = HF.masked_average_pooling(sf[:, 0], m[:, 0])
    anomaly = -20.0 * torch.nn.functional.cosine_similarity(qf, fg[..., None, None], dim=1)
    expected = 1.0 - torch.sigmoid(0.5 * (anomaly - t[:, None, None]))
    torch.testing.assert_close(logits.softmax(1)[:, 1], expected, atol=1e-5, rtol=1e-5)
    # a higher threshold t marks more pixels foreground; a scalar t is broadcast
    assert (HF.anomaly_segment(qf, sf, m, 0.0).softmax(1)[:, 1] > logits.softmax(1)[:, 1]).all()
    torch.testing.assert_close(HF.anomaly_segment(qf, sf, m, -4.0)[1], logits[1])
    with pytest.raises(ValueError, match=r"scalar or \(N,\)"):
        HF.anomaly_segment(qf, sf, m, torch.zeros(3))


def test_anomaly_segment_shot_fusion() -> None:
    s, m, q = _episode(n=2, k=3)
    m[:, 1, :, :16] = 0.0  # shots differ
    fused = HF.anomaly_segment(q[-1], s[-1], m, -5.0, fusion="scores")
    per_shot = [HF.anomaly_segment(q[-1], s[-1][:, [i]], m[:, [i]], -5.0) for i in range(3)]
    torch.testing.assert_close(fused, torch.stack(per_shot).mean(0))
    pooled = HF.anomaly_segment(q[-1], s[-1], m, -5.0)
    assert not torch.allclose(pooled, fused)


def test_adnet_head_losses_and_learned_threshold() -> None:
    torch.manual_seed(0)
    head = ADNetHead(INFO, feature_dim=5, init_threshold=-6.0, threshold_loss_weight=2.0)
    s, m, q = _episode()
    out = head(s, m, q)
    assert out.logits.shape == (2, 2, 4, 4)
    assert out.align_loss is not None and out.align_loss.ndim == 0
    assert out.aux_loss is not None and out.aux_loss.item() == pytest.approx(2.0 * -6.0 / 20.0)
    # the threshold is trained by the cross-entropy and by its own loss
    target = torch.ones(2, 4, 4, dtype=torch.long)
    (torch.nn.functional.cross_entropy(out.logits, target) + out.aux_loss).backward()
    assert head.t.grad is not None and head.t.grad.item() != pytest.approx(2.0 / 20.0)
    head.eval()
    ev = head(s, m, q)
    assert ev.align_loss is None and ev.aux_loss is None
    silent = ADNetHead(INFO, feature_dim=5, align=False, threshold_loss_weight=0.0)
    out2 = silent(s, m, q)
    assert out2.align_loss is None and out2.aux_loss is None
    empty = head(s, torch.zeros_like(m), q).logits  # zero prototype: cos 0, foreground logit t / 2
    torch.testing.assert_close(empty[:, 1], torch.full_like(empty[:, 1], -3.0))
    with pytest.raises(ValueError, match="threshold_loss_weight"):
        ADNetConfig(threshold_loss_weight=-1.0)
    with pytest.raises(ValueError, match="init_threshold must be finite"):
        ADNetConfig(init_threshold=float("nan"))


def test_adnet_query_threshold_starts_as_adnet_and_adapts_per_query() -> None:
    torch.manual_seed(0)
    plain = ADNetHead(INFO, feature_dim=0, align=False).eval()
    informed = ADNetHead(INFO, feature_dim=0, align=False, query_threshold=True).eval()
    s, m, q = _episode()
    torch.testing.assert_close(informed(s, m, q).logits, plain(s, m, q).logits)  # w = 0 at the start
    assert informed.query_threshold is not None
    with torch.no_grad():
        informed.query_threshold.weight.fill_(1.0)
    t = informed.threshold(q[-1])
    torch.testing.assert_close(t, -10.0 + q[-1].mean(dim=(-2, -1)).sum(1))
    assert t[0] != t[1]
    informed.train()
    out = informed(s, m, q)
    (out.logits[:, 1].sum() + out.aux_loss).backward()  # type: ignore[operator]
    assert float(informed.query_threshold.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_alpnet_decision_window_config_and_head() -> None:
    """``decision_window`` (SSL-ALPNet's 4x4 local-vs-global check): None by default (today's head), validated,
    carried from the config to the head, applied in both modes with the mode's pooling window."""
    assert ALPNetConfig().decision_window is None
    assert ALPNetHead(INFO).decision_window is None and "decision_window" not in ALPNetHead(INFO).extra_repr()
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="decision_window must be an integer >= 1 or null"):
            ALPNetConfig(decision_window=bad)  # type: ignore[arg-type]
    head = create_head(ALPNetConfig(feature_dim=0, align=False, decision_window=4), INFO)
    assert isinstance(head, ALPNetHead) and head.decision_window == 4 and "decision_window=4" in head.extra_repr()
    s, m, q = _episode()
    m = torch.zeros_like(m)
    m[..., :16, :16] = 1.0  # feature pixel (0, 0) of the 4x4 map is all fg: a window-1 cell passes, no 4x4 one
    for training, window in ((True, 4), (False, 2)):
        head.train(training)
        expected = HF.alp_segment(q[-1], s[-1], m, window=window, threshold=0.95, decision_window=4)
        torch.testing.assert_close(head(s, m, q).logits, expected)
    head.window_test = 1
    head.eval()
    out = head(s, m, q).logits
    today = HF.alp_segment(q[-1], s[-1], m, window=1, threshold=0.95)
    assert not torch.allclose(out, today)
    torch.testing.assert_close(out, HF.alp_segment(q[-1], s[-1], m, window=1, threshold=0.95, decision_window=4))
