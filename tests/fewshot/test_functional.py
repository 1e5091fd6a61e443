"""Hand-computed tests of fewshot.heads.functional."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.heads import functional as HF


def _feat_1x2x2x2() -> torch.Tensor:
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])


# ------------------------------------------------------------------------------------ MAP


def test_map_hand_computed() -> None:
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    proto = HF.masked_average_pooling(_feat_1x2x2x2(), mask)
    # channel 0: (1 + 3) / 2, channel 1: (5 + 7) / 2 (up to eps in the denominator)
    torch.testing.assert_close(proto, torch.tensor([[2.0, 6.0]]), rtol=1e-4, atol=0)
    weighted = HF.masked_average_pooling(_feat_1x2x2x2(), torch.tensor([[[0.5, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(
        weighted, torch.tensor([[(0.5 + 4) / 1.5, (2.5 + 8) / 1.5]]), rtol=1e-4, atol=0
    )


def test_map_empty_mask_is_zero_vector() -> None:
    proto = HF.masked_average_pooling(_feat_1x2x2x2(), torch.zeros(1, 2, 2))
    assert torch.equal(proto, torch.zeros(1, 2))


def test_map_resizes_mask_and_keeps_tiny_structures() -> None:
    feats = torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 32, 32)
    mask[0, 17, 5] = 1.0  # a single pixel: plain bilinear downsampling by 8 would drop it
    small = HF.resize_masks(mask, (4, 4))
    assert small.shape == (1, 4, 4) and float(small.sum()) > 0
    torch.testing.assert_close(HF.masked_average_pooling(feats, mask), torch.ones(1, 3), rtol=1e-3, atol=0)
    assert HF.resize_masks(mask, (32, 32)) is mask


def test_map_bad_input() -> None:
    with pytest.raises(ValueError, match="4-D"):
        HF.masked_average_pooling(torch.zeros(2, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="leading"):
        HF.masked_average_pooling(torch.zeros(2, 3, 2, 2), torch.zeros(1, 2, 2))


# ------------------------------------------------------------------------------- cosine


def test_cosine_similarity_map_with_scale() -> None:
    feats = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # pixel a = (1, 0), pixel b = (1, 1)
    protos = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    sim = HF.cosine_similarity_map(feats, protos, scale=10.0)
    r = 10.0 / math.sqrt(2.0)
    expected = torch.tensor([[[[10.0, r]], [[0.0, r]], [[0.0, 0.0]]]])  # zero prototype -> 0
    torch.testing.assert_close(sim, expected)
    with pytest.raises(ValueError, match="channel mismatch"):
        HF.cosine_similarity_map(feats, torch.zeros(1, 1, 3))


def test_prototype_segmentation_channel_order() -> None:
    feats = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    logits = HF.prototype_segmentation(
        feats, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), scale=20.0
    )
    torch.testing.assert_close(logits, torch.tensor([[[[20.0, 0.0]], [[0.0, 20.0]]]]))


def test_panet_segment_averages_prototypes_over_shots() -> None:
    g = torch.Generator().manual_seed(0)
    sf = torch.randn(1, 2, 3, 4, 4, generator=g)
    sm = torch.zeros(1, 2, 4, 4)
    sm[0, 0, :2] = 1.0
    sm[0, 1, :, :1] = 1.0
    q = torch.randn(1, 3, 4, 4, generator=g)
    fg = (HF.masked_average_pooling(sf[:, 0], sm[:, 0]) + HF.masked_average_pooling(sf[:, 1], sm[:, 1])) / 2
    bg = (
        HF.masked_average_pooling(sf[:, 0], 1 - sm[:, 0]) + HF.masked_average_pooling(sf[:, 1], 1 - sm[:, 1])
    ) / 2
    expected = HF.prototype_segmentation(q, fg, bg, scale=20.0)
    torch.testing.assert_close(HF.panet_segment(q, sf, sm, scale=20.0), expected)


# -------------------------------------------------------------------------- alignment


def _reference_alignment(q, q_logits, sf, sm, scale, weights):  # type: ignore[no-untyped-def]
    """Loop implementation: masks already at feature resolution."""
    losses, ws = [], []
    n, k = sm.shape[:2]
    for i in range(n):
        pred = (q_logits[i].argmax(0) == 1).float()
        fg = (q[i] * pred).sum((1, 2)) / (pred.sum() + 1e-5)
        bg = (q[i] * (1 - pred)).sum((1, 2)) / ((1 - pred).sum() + 1e-5)
        for j in range(k):
            f = sf[i, j]
            cos = [
                (f * p[:, None, None]).sum(0) / (f.norm(dim=0).clamp_min(1e-4) * p.norm().clamp_min(1e-4))
                for p in (bg, fg)
            ]
            logits = scale * torch.stack(cos)  # (2, h, w)
            target = sm[i, j].long()
            logp = logits.log_softmax(0)
            nll = -logp.gather(0, target[None])[0]
            w = weights[target]
            losses.append((w * nll).sum())
            ws.append(w.sum())
    return torch.stack(losses).sum() / torch.stack(ws).sum()


@pytest.mark.parametrize("weights", [None, (0.05, 1.0)])
def test_alignment_loss_matches_reference(weights: tuple[float, float] | None) -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
    q_logits = torch.randn(2, 2, 5, 5, generator=g, requires_grad=True)
    sf = torch.randn(2, 3, 4, 5, 5, generator=g)
    sm = (torch.rand(2, 3, 5, 5, generator=g) > 0.5).float()
    loss = HF.alignment_loss(q, q_logits, sf, sm, scale=20.0, class_weights=weights)
    w = torch.tensor(weights) if weights is not None else torch.ones(2)
    expected = _reference_alignment(q, q_logits, sf, sm, 20.0, w)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert q.grad is not None and float(q.grad.abs().sum()) > 0  # features keep their gradient
    assert q_logits.grad is None  # the predicted mask is detached


def test_alignment_loss_bad_input() -> None:
    with pytest.raises(ValueError, match="2 channels"):
        HF.alignment_loss(
            torch.zeros(1, 2, 3, 3),
            torch.zeros(1, 3, 3, 3),
            torch.zeros(1, 1, 2, 3, 3),
            torch.zeros(1, 1, 3, 3),
        )
    with pytest.raises(ValueError, match="2 entries"):
        HF.alignment_loss(
            torch.zeros(1, 2, 3, 3),
            torch.zeros(1, 2, 3, 3),
            torch.zeros(1, 1, 2, 3, 3),
            torch.zeros(1, 1, 3, 3),
            class_weights=(1.0, 2.0, 3.0),
        )


# ---------------------------------------------------------------------------------- ALP


def _alp_features() -> torch.Tensor:
    """(1, 2, 4, 4): channel 0 = 1 everywhere, channel 1 = cell index (0..3 for the 2x2 cells)."""
    f = torch.ones(1, 2, 4, 4)
    f[0, 1] = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    return f


def test_alp_foreground_local_plus_global() -> None:
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # cell 0 fully covered
    mask[0, :2, 2] = 1.0
    mask[0, 0, 3] = 1.0  # cell 1 covered 3/4: below the threshold
    protos, valid = HF.adaptive_local_prototypes(_alp_features(), mask, window=2, threshold=0.95)
    assert protos.shape == (1, 5, 2) and valid.tolist() == [[True, False, False, False, True]]
    torch.testing.assert_close(protos[0, :4], torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]))
    # global MAP prototype: 7 pixels, channel 1 sums to 4 * 0 + 3 * 1
    torch.testing.assert_close(protos[0, 4], torch.tensor([1.0, 3.0 / 7.0]), rtol=1e-4, atol=0)


def test_alp_global_fg_kept_when_no_cell_passes() -> None:
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 1] = 1.0
    protos, valid = HF.adaptive_local_prototypes(_alp_features(), mask, window=2)
    assert valid.tolist() == [[False, False, False, False, True]]
    torch.testing.assert_close(protos[0, 4], torch.tensor([1.0, 0.0]), rtol=1e-4, atol=0)


def test_alp_background_local_only_with_fallback() -> None:
    fg = torch.zeros(1, 4, 4)
    fg[0, :2, :2] = 1.0
    _, valid = HF.adaptive_local_prototypes(_alp_features(), 1 - fg, window=2, add_global=False)
    assert valid.tolist() == [[False, True, True, True, False]]  # global bg not used
    fg_all_cells = torch.zeros(1, 4, 4)
    fg_all_cells[0, ::2, ::2] = 1.0  # one fg pixel per cell: every bg cell is 3/4 < 0.95
    protos, valid = HF.adaptive_local_prototypes(
        _alp_features(), 1 - fg_all_cells, window=2, add_global=False
    )
    assert valid.tolist() == [[False, False, False, False, True]]  # fallback to the global bg prototype
    torch.testing.assert_close(protos[0, 4], torch.tensor([1.0, 1.5]), rtol=1e-4, atol=0)


def test_alp_window_larger_than_map_gives_global_only() -> None:
    protos, valid = HF.adaptive_local_prototypes(_alp_features(), torch.ones(1, 4, 4), window=8)
    assert protos.shape == (1, 1, 2) and valid.tolist() == [[True]]


def test_alp_scores_hand_computed() -> None:
    q = torch.tensor([[[[1.0]], [[0.0]]]])  # one pixel (1, 0)
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # sims 1 and 0 at scale 1
    e = math.e
    torch.testing.assert_close(HF.alp_scores(q, protos, scale=1.0), torch.tensor([[[e / (e + 1)]]]))
    only_second = torch.tensor([[False, True]])
    torch.testing.assert_close(HF.alp_scores(q, protos, only_second, scale=1.0), torch.tensor([[[0.0]]]))
    only_first = torch.tensor([[True, False]])
    torch.testing.assert_close(HF.alp_scores(q, protos, only_first, scale=1.0), torch.tensor([[[1.0]]]))
    with pytest.raises(ValueError, match="at least one valid"):
        HF.alp_scores(q, protos, torch.tensor([[False, False]]))


def test_alp_segment_pools_shots() -> None:
    g = torch.Generator().manual_seed(2)
    sf = torch.randn(1, 2, 3, 4, 4, generator=g)
    sm = torch.zeros(1, 2, 4, 4)
    sm[0, 0, :2, :2] = 1.0
    sm[0, 1, 2:, 2:] = 1.0
    q = torch.randn(1, 3, 4, 4, generator=g)
    logits = HF.alp_segment(q, sf, sm, window=2)
    protos, valid = [], []
    for k in range(2):
        p, v = HF.adaptive_local_prototypes(sf[:, k], sm[:, k], 2)
        protos.append(p)
        valid.append(v)
    fg = HF.alp_scores(q, torch.cat(protos, 1), torch.cat(valid, 1))
    torch.testing.assert_close(logits[:, 1], fg)
    assert logits.shape == (1, 2, 4, 4)


# --------------------------------------------------------------------------------- DPCN


def test_dynamic_depthwise_conv_matches_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, generator=g)
    for kh, kw in ((3, 3), (1, 5), (5, 1)):
        ker = torch.randn(2, 3, kh, kw, generator=g)
        out = HF.dynamic_depthwise_conv(x, ker)
        ref = torch.cat(
            [
                F.conv2d(x[i : i + 1], ker[i][:, None] / (kh * kw), padding=(kh // 2, kw // 2), groups=3)
                for i in range(2)
            ]
        )
        torch.testing.assert_close(out, ref)
    ident = torch.zeros(1, 1, 3, 3)
    ident[0, 0, 1, 1] = 9.0
    torch.testing.assert_close(HF.dynamic_depthwise_conv(x[:1, :1], ident), x[:1, :1])
    with pytest.raises(ValueError, match="odd"):
        HF.dynamic_depthwise_conv(x, torch.zeros(2, 3, 2, 2))


def test_dynamic_kernels_masked_mean_over_box_and_shots() -> None:
    feats = torch.zeros(1, 2, 1, 6, 6)
    feats[0, 0, 0] = 2.0
    feats[0, 1, 0] = 4.0
    feats[0, 0, 0, 0, 0] = 100.0  # outside the mask: must not leak into the kernel
    masks = torch.zeros(1, 2, 6, 6)
    masks[0, 0, 2:5, 1:4] = 1.0
    masks[0, 1] = 1.0
    kernels = HF.dynamic_kernels(feats, masks, sizes=((3, 3), (1, 5)))
    assert [tuple(k.shape) for k in kernels] == [(1, 1, 3, 3), (1, 1, 1, 5)]
    for k in kernels:  # mean over shots of the constant masked values 2 and 4
        torch.testing.assert_close(k, torch.full_like(k, 3.0))
    empty = HF.dynamic_kernels(feats[:, :1], torch.zeros(1, 1, 6, 6))
    assert all(float(k.abs().sum()) == 0.0 for k in empty)


def test_support_activation_peaks_on_matching_region() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.rand(1, 1, 4, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 1:8, 1:8] = 1.0  # every window centred at (4, 4) lies inside the mask
    act = HF.support_activation(s[:, 0], s, mask)
    assert act.shape == (1, 3, 8, 8)
    assert float(act.min()) >= 0.0 and float(act.max()) <= 1.0 + 1e-6
    # a query identical to the support matches its own fg region exactly (cosine 1 = the max)
    torch.testing.assert_close(act[0, :, 4, 4], torch.ones(3), atol=1e-3, rtol=0)
    empty = HF.support_activation(s[:, 0], s, torch.zeros(1, 1, 8, 8))
    assert float(empty.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="odd"):
        HF.support_activation(s[:, 0], s, mask, windows=((2, 2),))


@pytest.mark.parametrize("segment", ["alp", "panet"])
def test_score_fusion_averages_per_shot_results(segment: str) -> None:
    from fewshot.heads.functional import alp_segment, panet_segment

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 6, 6, generator=g)
    s = torch.randn(2, 3, 8, 6, 6, generator=g)
    m = (torch.rand(2, 3, 12, 12, generator=g) > 0.5).float()

    def run(s_: torch.Tensor, m_: torch.Tensor, fusion: str) -> torch.Tensor:
        if segment == "alp":
            return alp_segment(q, s_, m_, window=2, threshold=0.5, fusion=fusion)
        return panet_segment(q, s_, m_, fusion=fusion)

    singles = torch.stack([run(s[:, i : i + 1], m[:, i : i + 1], "prototypes") for i in range(3)])
    torch.testing.assert_close(run(s, m, "scores"), singles.mean(0))
    torch.testing.assert_close(run(s[:, :1], m[:, :1], "scores"), singles[0])  # K = 1: the fusions agree
    assert not torch.allclose(run(s, m, "prototypes"), singles.mean(0))
    with pytest.raises(ValueError, match="unknown shot fusion"):
        run(s, m, "vote")


# ------------------------------------------------------------- ALP local-vs-global decision (SSL-ALPNet)


def _decision_features() -> torch.Tensor:
    """(1, 2, 8, 8): channel 0 = 1 everywhere, channel 1 = column index / 8."""
    f = torch.ones(1, 2, 8, 8)
    f[0, 1] = torch.arange(8.0)[None, :].expand(8, 8) / 8.0
    return f


def _small_fg() -> torch.Tensor:
    """(1, 8, 8): rows 0-1, cols 0-2. The 2x2 cell (0, 0) is covered fully; no 4x4 cell reaches 0.95
    (the best, the top-left one, is 6/16)."""
    m = torch.zeros(1, 8, 8)
    m[0, :2, :3] = 1.0
    return m


def test_local_prototype_decision_hand_computed() -> None:
    small = _small_fg()
    assert HF.local_prototype_decision(small, 2).tolist() == [True]
    assert HF.local_prototype_decision(small, 4).tolist() == [False]
    full = torch.zeros(1, 8, 8)
    full[0, 4:, :4] = 1.0  # the bottom-left 4x4 cell
    assert HF.local_prototype_decision(torch.cat([small, full]), 4).tolist() == [False, True]
    half = torch.full((1, 8, 8), 0.5)
    # SSL-ALPNet's test is ``>=`` (the cells' is ``>``): a cell exactly at the threshold decides for local
    assert HF.local_prototype_decision(half, 4, threshold=0.5).tolist() == [True]
    assert HF.local_prototype_decision(torch.ones(1, 3, 3), 4).tolist() == [False]  # no 4x4 cell at all
    with pytest.raises(ValueError, match="window must be >= 1"):
        HF.local_prototype_decision(half, 0)


def test_alp_decision_window_falls_back_to_the_global_prototype() -> None:
    """2x2 cells pass but no 4x4 cell does: with ``decision_window=4`` only the global prototype scores
    the foreground, ``20 * cos(q, global)``; without it, the passing cell and the global prototype."""
    feats, fg = _decision_features(), _small_fg()
    q = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    s, m = feats[:, None], fg[:, None]
    glob = torch.tensor([1.0, 1.0 / 8.0])  # mean of columns 0, 1, 2 (/ 8) over the 6 mask pixels
    local = torch.tensor([1.0, 0.5 / 8.0])  # cell (0, 0): columns 0, 1
    fg_global = HF.cosine_similarity_map(q, glob[None, None], 20.0)[:, 0]
    fg_both = HF.alp_scores(q, torch.stack([local, glob])[None])
    out = HF.alp_segment(q, s, m, window=2, decision_window=4)
    torch.testing.assert_close(out[:, 1], fg_global, rtol=1e-4, atol=1e-4)
    today = HF.alp_segment(q, s, m, window=2)
    torch.testing.assert_close(today[:, 1], fg_both, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(today[:, 1], fg_global, atol=1e-2)
    torch.testing.assert_close(out[:, 0], today[:, 0])  # the background is not affected
    # a window at which the cell passes decides for local + global, as today
    torch.testing.assert_close(HF.alp_segment(q, s, m, window=2, decision_window=2), today)
    with pytest.raises(ValueError, match="decision_window must be >= 1"):
        HF.alp_segment(q, s, m, window=2, decision_window=0)


def test_alp_decision_window_keeps_local_when_a_4x4_cell_passes() -> None:
    feats = _decision_features()
    fg = torch.zeros(1, 8, 8)
    fg[0, :4, :5] = 1.0
    q = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    today = HF.alp_segment(q, feats[:, None], fg[:, None], window=2)
    torch.testing.assert_close(HF.alp_segment(q, feats[:, None], fg[:, None], window=2, decision_window=4), today)


def test_alp_decision_window_k_shot_mean_global_and_any_shot() -> None:
    """K shots: SSL-ALPNet decides on the max over all shots; global-only means one prototype, the mean of
    the shots' global prototypes. With ``fusion="scores"`` each shot decides alone."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 2, 4, 8, 8, generator=g)
    q = torch.randn(1, 4, 8, 8, generator=g)
    small = _small_fg()
    shifted = torch.zeros(1, 8, 8)
    shifted[0, 5:7, 4:7] = 1.0  # 2x2 cells pass, no 4x4 cell
    masks = torch.stack([small, shifted], dim=1)  # (1, 2, 8, 8)
    out = HF.alp_segment(q, feats, masks, window=2, decision_window=4)
    globs = torch.stack([HF.masked_average_pooling(feats[:, k], masks[:, k]) for k in range(2)], 1)  # (1, 2, C)
    expected = HF.cosine_similarity_map(q, globs.mean(1, keepdim=True), 20.0)[:, 0]
    torch.testing.assert_close(out[:, 1], expected, rtol=1e-4, atol=1e-4)
    big = torch.zeros(1, 8, 8)
    big[0, 4:, 4:] = 1.0
    mixed = torch.stack([small, big], dim=1)  # shot 1 has a passing 4x4 cell: the episode uses local + global
    torch.testing.assert_close(
        HF.alp_segment(q, feats, mixed, window=2, decision_window=4), HF.alp_segment(q, feats, mixed, window=2)
    )
    per_shot = HF.alp_segment(q, feats, mixed, window=2, decision_window=4, fusion="scores")
    singles = [HF.alp_segment(q, feats[:, k : k + 1], mixed[:, k : k + 1], window=2, decision_window=4) for k in range(2)]
    torch.testing.assert_close(per_shot, (singles[0] + singles[1]) / 2)
    glob0 = HF.cosine_similarity_map(q, HF.masked_average_pooling(feats[:, 0], small)[:, None], 20.0)[:, 0]
    torch.testing.assert_close(singles[0][:, 1], glob0, rtol=1e-4, atol=1e-4)


def test_alp_decision_window_per_sample_in_a_batch_and_gradients() -> None:
    feats = _decision_features().expand(2, -1, -1, -1).clone().requires_grad_(True)
    fg = torch.zeros(2, 8, 8)
    fg[0] = _small_fg()[0]
    fg[1, :4, :4] = 1.0
    q = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    out = HF.alp_segment(q, feats[:, None], fg[:, None], window=2, decision_window=4)
    for i in range(2):
        alone = HF.alp_segment(q[i : i + 1], feats[i : i + 1, None], fg[i : i + 1, None], window=2, decision_window=4)
        torch.testing.assert_close(out[i : i + 1], alone)
    out[:, 1].sum().backward()
    assert feats.grad is not None and bool(torch.isfinite(feats.grad).all()) and float(feats.grad.abs().sum()) > 0
