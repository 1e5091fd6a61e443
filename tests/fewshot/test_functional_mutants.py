"""fewshot.heads.functional against loop references written from the docstrings (per pixel, per prototype,
per shot), with tight tolerances and the functions' default arguments: the mutants main's tests left alive
(docs/mutation-survivors.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.heads import functional as HF


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) with both norms clamped below at 1e-4 (the module's convention), in float64."""
    a, b = a.double(), b.double()
    return float(a @ b / (max(float(a.norm()), 1e-4) * max(float(b.norm()), 1e-4)))


def _map(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Masked average of ``f (C, h, w)`` under ``m (h, w)`` (same resolution): sum(f m) / (sum(m) + 1e-5)."""
    f, m = f.double(), m.double()
    return (f * m).sum((1, 2)) / (m.sum() + 1e-5)


def _cos_map(q: torch.Tensor, protos: list[torch.Tensor], scale: float) -> torch.Tensor:
    """``scale * cos`` of every pixel of ``q (C, h, w)`` with each prototype: ``(P, h, w)`` float64."""
    _, h, w = q.shape
    out = torch.zeros(len(protos), h, w, dtype=torch.float64)
    for p, proto in enumerate(protos):
        for y in range(h):
            for x in range(w):
                out[p, y, x] = scale * _cos(q[:, y, x], proto)
    return out


# ---------------------------------------------------------------------------------- resizing and MAP


def test_resize_masks_antialias_when_either_side_shrinks() -> None:
    m = torch.tensor([[[0.0, 0, 1, 1, 0, 0, 0, 0]] * 4])  # (1, 4, 8) -> (4, 4): only the width shrinks
    # area-weighted (triangle filter of width 2): weights 1/8, 3/8, 3/8, 1/8 around columns 2j, 2j + 1
    row = [1 / 7, 0.75, 0.125, 0.0]  # column 0: the edge, weights 3/8, 3/8, 1/8 renormalised by 7/8
    torch.testing.assert_close(HF.resize_masks(m, (4, 4)), torch.tensor([[row] * 4]), rtol=1e-6, atol=1e-7)
    tall = m.transpose(1, 2).contiguous()  # (1, 8, 4) -> (4, 4): only the height shrinks
    torch.testing.assert_close(
        HF.resize_masks(tall, torch.Size([4, 4])), torch.tensor([[row] * 4]).transpose(1, 2)
    )
    # enlarging: plain bilinear (output j samples input (j + 0.5) / 2 - 0.5), clamped to [0, 1]
    up = HF.resize_masks(torch.tensor([[[0.0, 1.0]]]), (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    assert HF.resize_masks(torch.tensor([[[0, 1]]], dtype=torch.uint8), (1, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"masks must be 3-D \(N, H, W\), got shape \(2, 2\)"):
        HF.resize_masks(torch.zeros(2, 2), (1, 1))


def test_map_divides_by_area_plus_eps() -> None:
    f = torch.full((1, 2, 2, 2), 3.0)
    m = torch.zeros(1, 2, 2)
    m[0, 0, 0] = 1.0
    torch.testing.assert_close(
        HF.masked_average_pooling(f, m), torch.full((1, 2), 3.0 / (1 + 1e-5)), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(HF.masked_average_pooling(f, m, eps=1.0), torch.full((1, 2), 1.5))
    half = HF.masked_average_pooling(f.double(), m.double())  # float64 in, float64 out
    assert half.dtype == torch.float64 and float(half[0, 0]) == 3.0 / (1 + 1e-5)
    f2 = _rand(2, 3, 4, 4)
    m2 = (_rand(2, 8, 8, seed=1) > 0).float()  # resized to 4 x 4 first
    small = HF.resize_masks(m2, (4, 4))
    ref = torch.stack([_map(f2[i], small[i]) for i in range(2)]).float()
    torch.testing.assert_close(HF.masked_average_pooling(f2, m2), ref, rtol=1e-6, atol=1e-6)


def test_cosine_maps_and_classifiers_with_default_scale() -> None:
    q, protos = _rand(2, 3, 2, 3), _rand(2, 4, 3, seed=1)
    protos[1, 2] = 0.0  # a zero prototype: similarity 0
    sim = HF.cosine_similarity_map(q, protos)
    ref = torch.stack([_cos_map(q[i], list(protos[i]), 20.0) for i in range(2)]).float()
    torch.testing.assert_close(sim, ref, rtol=1e-5, atol=1e-5)
    assert float(sim[1, 2].abs().max()) == 0.0
    fg, bg = _rand(2, 3, seed=2), _rand(2, 3, seed=3)
    logits = HF.prototype_segmentation(q, fg, bg)
    ref = torch.stack([_cos_map(q[i], [bg[i], fg[i]], 20.0) for i in range(2)]).float()
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prototypes must be 3-D"):
        HF.cosine_similarity_map(q, protos[0])
    with pytest.raises(ValueError, match="fg_prototype must be 2-D"):
        HF.prototype_segmentation(q, fg[None], bg)
    with pytest.raises(ValueError, match="bg_prototype must be 2-D"):
        HF.prototype_segmentation(q, fg, bg[None])
    with pytest.raises(ValueError, match="leading 1 dim"):
        HF.cosine_similarity_map(q, protos[:1])


# ---------------------------------------------------------------------------------- PANet, ADNet


def _episode(n: int = 2, k: int = 2, c: int = 3, h: int = 4, w: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    q = _rand(n, c, h, w, seed=seed)
    sf = _rand(n, k, c, h, w, seed=seed + 1)
    sm = (_rand(n, k, h, w, seed=seed + 2) > 0.3).float()
    sm[..., 0, 0] = 1.0  # no empty mask
    return q, sf, sm


def test_panet_segment_both_fusions_against_loops() -> None:
    q, sf, sm = _episode()
    n, k = sm.shape[:2]
    protos = []
    for i in range(n):
        fg = sum(_map(sf[i, j], sm[i, j]) for j in range(k)) / k
        bg = sum(_map(sf[i, j], 1 - sm[i, j]) for j in range(k)) / k
        protos.append(_cos_map(q[i], [bg, fg], 20.0))
    torch.testing.assert_close(HF.panet_segment(q, sf, sm), torch.stack(protos).float(), rtol=1e-5, atol=1e-5)
    per_shot = []
    for i in range(n):
        shots = [
            _cos_map(q[i], [_map(sf[i, j], 1 - sm[i, j]), _map(sf[i, j], sm[i, j])], 20.0) for j in range(k)
        ]
        per_shot.append(sum(shots) / k)
    torch.testing.assert_close(
        HF.panet_segment(q, sf, sm, fusion="scores"), torch.stack(per_shot).float(), rtol=1e-5, atol=1e-5
    )
    # one shot: both fusions are the same classifier
    torch.testing.assert_close(
        HF.panet_segment(q, sf[:, :1], sm[:, :1], fusion="scores"), HF.panet_segment(q, sf[:, :1], sm[:, :1])
    )
    with pytest.raises(ValueError, match=r"unknown shot fusion 'mean'; choices: prototypes, scores"):
        HF.panet_segment(q, sf, sm, fusion="mean")
    assert HF.SHOT_FUSIONS == ("prototypes", "scores") and HF.check_fusion("scores") == "scores"


def test_anomaly_segment_threshold_per_episode_and_fusions() -> None:
    q, sf, sm = _episode()
    n, k = sm.shape[:2]
    t = torch.tensor([-4.0, 6.0])
    expected, expected_scores = [], []
    for i in range(n):
        fg = sum(_map(sf[i, j], sm[i, j]) for j in range(k)) / k
        sim = _cos_map(q[i], [fg], 20.0)[0]
        expected.append(torch.stack([torch.zeros_like(sim), 0.5 * (sim + float(t[i]))]))
        shots = [_cos_map(q[i], [_map(sf[i, j], sm[i, j])], 20.0)[0] for j in range(k)]
        fg_logit = sum(0.5 * (s + float(t[i])) for s in shots) / k
        expected_scores.append(torch.stack([torch.zeros_like(fg_logit), fg_logit]))
    out = HF.anomaly_segment(q, sf, sm, t)
    torch.testing.assert_close(out, torch.stack(expected).float(), rtol=1e-5, atol=1e-5)
    out = HF.anomaly_segment(q, sf, sm, t, fusion="scores")
    torch.testing.assert_close(out, torch.stack(expected_scores).float(), rtol=1e-5, atol=1e-5)
    scalar = HF.anomaly_segment(q, sf, sm, 2.5, scale=10.0)
    fg0 = sum(_map(sf[0, j], sm[0, j]) for j in range(k)) / k
    ref0 = 0.5 * (_cos_map(q[0], [fg0], 10.0)[0] + 2.5)
    torch.testing.assert_close(scalar[0, 1], ref0.float(), rtol=1e-5, atol=1e-5)
    assert float(scalar[:, 0].abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"threshold must be a scalar or \(N,\) = \(2,\), got shape \(3,\)"):
        HF.anomaly_segment(q, sf, sm, torch.zeros(3))
    with pytest.raises(ValueError, match="unknown shot fusion"):
        HF.anomaly_segment(q, sf, sm, 0.0, fusion="max")


# ---------------------------------------------------------------------------------- alignment, CE


def test_alignment_loss_upsamples_support_logits_and_uses_the_default_classifier() -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 3, 3, 3, generator=g)
    q_logits = torch.randn(1, 2, 6, 6, generator=g)  # the predicted mask is resized to 3 x 3
    sf = torch.randn(1, 2, 3, 3, 3, generator=g)
    sm = (torch.rand(1, 2, 6, 6, generator=g) > 0.5).float()  # the loss is taken at 6 x 6
    pred = HF.resize_masks((q_logits.argmax(1) == 1).float(), (3, 3))
    fg, bg = _map(q[0], pred[0]), _map(q[0], 1 - pred[0])
    nll, count = 0.0, 0
    for j in range(2):
        logits = _cos_map(sf[0, j], [bg, fg], 20.0)[None]  # (1, 2, 3, 3)
        up = F.interpolate(logits, size=(6, 6), mode="bilinear", align_corners=False)[0]
        logp = up.log_softmax(0)
        target = (sm[0, j] > 0.5).long()
        nll += float(-logp.gather(0, target[None]).sum())
        count += target.numel()
    loss = HF.alignment_loss(q, q_logits, sf, sm)
    assert float(loss) == pytest.approx(nll / count, rel=1e-5)
    assert float(HF.alignment_loss(q, q_logits, sf, sm, scale=5.0)) != pytest.approx(nll / count, rel=1e-3)
    seen = []

    def segment(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(a.shape), tuple(b.shape), tuple(c.shape)))
        return HF.panet_segment(a, b, c, 20.0)

    assert float(HF.alignment_loss(q, q_logits, sf, sm, segment=segment)) == pytest.approx(float(loss))
    assert seen == [((2, 3, 3, 3), (2, 1, 3, 3, 3), (2, 1, 3, 3))]  # one row per shot, the query as support
    with pytest.raises(ValueError, match="query_logits must be 4-D"):
        HF.alignment_loss(q, q_logits[0], sf, sm)


def test_weighted_ce_ignores_255_and_weights_classes() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 3.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    w = (0.25, 2.0)
    lp = logits.double().log_softmax(1)
    nll0, nll1 = -float(lp[0, 0, 0, 0]), -float(lp[0, 1, 0, 1])
    expected = (0.25 * nll0 + 2.0 * nll1) / (0.25 + 2.0)
    assert float(HF.weighted_ce(logits, target, w)) == pytest.approx(expected, rel=1e-6)
    assert HF.IGNORE_INDEX == 255
    assert HF.weighted_ce(logits.half(), target, w).dtype == torch.float32


# ---------------------------------------------------------------------------------- ALPNet


def _alp_reference(
    q: torch.Tensor, sf: torch.Tensor, sm: torch.Tensor, window: int, threshold: float, scale: float
) -> torch.Tensor:
    """``[bg, fg]`` scores of one episode (``q (C,h,w)``, ``sf (K,C,h,w)``, ``sm (K,h,w)`` at feature size),
    shots pooled: cells of a ``window`` grid whose mask mean > threshold, plus each shot's global MAP prototype
    (always for the foreground; for the background only when none of that shot's cells pass)."""
    k, _, h, w = sf.shape
    out = []
    for cls in (0, 1):
        protos: list[torch.Tensor] = []
        for j in range(k):
            m = sm[j] if cls == 1 else 1 - sm[j]
            cells = [
                sf[j, :, y : y + window, x : x + window].double().mean((1, 2))
                for y in range(0, h - window + 1, window)
                for x in range(0, w - window + 1, window)
                if float(m[y : y + window, x : x + window].double().mean()) > threshold
            ]
            protos += cells
            if (
                cls == 1 or not cells
            ):  # background: the shot's global prototype only when none of its cells pass
                protos.append(_map(sf[j], m))
        s = _cos_map(q, protos, scale)  # (P, h, w)
        out.append((s.softmax(0) * s).sum(0))
    return torch.stack(out)


def test_alp_segment_matches_a_loop_reference() -> None:
    q, sf, sm = _episode(n=2, k=2, h=4, w=6, seed=7)
    sm[0, 0, :2, :2] = 1.0  # a passing foreground cell
    sm[1, 1] = 0.0
    sm[1, 1, 2:, 4:] = 1.0
    ref = torch.stack([_alp_reference(q[i], sf[i], sm[i], 2, 0.95, 20.0) for i in range(2)]).float()
    torch.testing.assert_close(HF.alp_segment(q, sf, sm, window=2), ref, rtol=1e-5, atol=1e-5)
    ref = torch.stack([_alp_reference(q[i], sf[i], sm[i], 2, 0.5, 7.0) for i in range(2)]).float()
    torch.testing.assert_close(
        HF.alp_segment(q, sf, sm, window=2, threshold=0.5, scale=7.0), ref, rtol=1e-5, atol=1e-5
    )
    scores = torch.stack(
        [
            torch.stack(
                [_alp_reference(q[i], sf[i, j : j + 1], sm[i, j : j + 1], 2, 0.95, 20.0) for j in range(2)]
            ).mean(0)
            for i in range(2)
        ]
    ).float()
    torch.testing.assert_close(
        HF.alp_segment(q, sf, sm, window=2, fusion="scores"), scores, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="decision_window must be >= 1 or None, got 0"):
        HF.alp_segment(q, sf, sm, window=2, decision_window=0)
    with pytest.raises(ValueError, match="unknown shot fusion"):
        HF.alp_segment(q, sf, sm, window=2, fusion="x")


def test_cells_pass_strictly_above_and_the_decision_at_or_above_the_threshold() -> None:
    f = _rand(1, 2, 4, 4)
    mask = torch.full((1, 4, 4), 0.5)
    _, valid = HF.adaptive_local_prototypes(f, mask, 2, threshold=0.5)
    assert valid.tolist() == [[False] * 4 + [True]]  # 0.5 is not > 0.5
    assert HF.local_prototype_decision(mask, 2, threshold=0.5).tolist() == [True]  # but >= 0.5
    assert HF.local_prototype_decision(mask, 2).tolist() == [False]  # default 0.95
    assert HF.local_prototype_decision(torch.full((2, 4, 4), 0.96), 4).tolist() == [True, True]
    assert HF.local_prototype_decision(torch.ones(1, 3, 5), 4).tolist() == [False]  # 3 rows < window
    assert HF.local_prototype_decision(torch.ones(1, 5, 3), 4).tolist() == [False]
    m = torch.zeros(1, 4, 5)
    m[0, :, 4] = 1.0  # only the dropped remainder column is foreground
    assert HF.local_prototype_decision(m, 2, 0.5).tolist() == [False]
    _, valid = HF.adaptive_local_prototypes(f, torch.full((1, 4, 4), 0.96), 2)
    assert valid.tolist() == [[True] * 5]
    _, valid = HF.adaptive_local_prototypes(f, torch.full((1, 4, 4), 0.96), 2, add_global=False)
    assert valid.tolist() == [[True] * 4 + [False]]
    protos, valid = HF.adaptive_local_prototypes(f, torch.ones(1, 4, 4), 5)  # window > map: the global only
    assert protos.shape == (1, 1, 2) and valid.tolist() == [[True]]
    _, valid = HF.adaptive_local_prototypes(f[:, :, :, :1], torch.ones(1, 4, 1), 2)  # w < window
    assert valid.tolist() == [[True]]
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        HF.adaptive_local_prototypes(f, mask, 0)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        HF.local_prototype_decision(mask, 0)
    with pytest.raises(ValueError, match="must be at feature resolution"):
        HF.adaptive_local_prototypes(f, torch.ones(1, 2, 2), 2)


def test_alp_scores_masks_invalid_prototypes() -> None:
    q = _rand(1, 3, 2, 2)
    protos = _rand(1, 3, 3, seed=1)
    s = _cos_map(q[0], list(protos[0]), 20.0)
    full = (s.softmax(0) * s).sum(0)
    torch.testing.assert_close(HF.alp_scores(q, protos)[0], full.float(), rtol=1e-5, atol=1e-5)
    sub = s[[0, 2]]
    part = (sub.softmax(0) * sub).sum(0)
    out = HF.alp_scores(q, protos, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(out[0], part.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"valid \(1, 2\) must have shape \(1, 3\)"):
        HF.alp_scores(q, protos, torch.tensor([[True, False]]))


def test_decision_window_global_only_episodes_use_the_mean_global_prototype() -> None:
    q, sf, sm = _episode(n=1, k=2, h=4, w=4, seed=9)
    sm[:] = 0.0
    sm[0, 0, 0, 0] = sm[0, 1, 3, 3] = 1.0  # no 4x4 (nor 2x2) cell passes: the mask mode
    fg = (_map(sf[0, 0], sm[0, 0]) + _map(sf[0, 1], sm[0, 1])) / 2
    s = _cos_map(q[0], [fg], 20.0)[0]  # one prototype: softmax weight 1
    out = HF.alp_segment(q, sf, sm, window=2, decision_window=4)
    torch.testing.assert_close(out[0, 1], s.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, 0], HF.alp_segment(q, sf, sm, window=2)[0, 0])  # background unchanged
    sm[0, 1] = 1.0  # shot 1 all foreground: the 4x4 decision passes for the episode -> local + both globals
    torch.testing.assert_close(
        HF.alp_segment(q, sf, sm, window=2, decision_window=4), HF.alp_segment(q, sf, sm, window=2)
    )
    # (N, K, P, C): global in slot 2
    protos = torch.arange(2 * 2 * 3 * 1, dtype=torch.float32).view(2, 2, 3, 1)
    valid = torch.ones(2, 2, 3, dtype=torch.bool)
    p, v = HF._global_only_where(torch.tensor([True, False]), protos, valid)
    assert p[0].equal(protos[0]) and v[0].all()
    assert p[1, 0, 2, 0] == (protos[1, 0, 2, 0] + protos[1, 1, 2, 0]) / 2 and p[1, 1].equal(protos[1, 1])
    assert v[1].tolist() == [[False, False, True], [False, False, False]]


# ---------------------------------------------------------------------------------- DPCN


def _pool(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Stride-1 ``kh x kw`` mean of ``x (C, h, w)`` over the window's in-image pixels."""
    c, h, w = x.shape
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for y in range(h):
        for xx in range(w):
            ys = range(max(0, y - kh // 2), min(h, y + kh // 2 + 1))
            xs = range(max(0, xx - kw // 2), min(w, xx + kw // 2 + 1))
            out[:, y, xx] = x[:, list(ys)][:, :, list(xs)].double().mean((1, 2))
    return out


def _sam_reference(q: torch.Tensor, sf: torch.Tensor, sm: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Support activation map ``(h, w)`` float64 of one episode (``q (C,h,w)``, ``sf (K,C,h,w)``, ``sm (K,h,w)``)
    for one ``kh x kw`` window: the best cosine (norms clamped at 1e-4) of each pooled query region with the
    pooled support regions holding foreground, min-max normalised per shot, averaged over the shots."""
    _, h, w = q.shape
    maps = []
    for j in range(sf.shape[0]):
        m = sm[j][None]
        qp, sp, mp = _pool(q, kh, kw), _pool(sf[j] * m, kh, kw), _pool(m, kh, kw)[0]
        best = torch.zeros(h, w, dtype=torch.float64)
        if (mp > 1e-6).any():  # cos of each query region with each support region holding foreground
            qv = qp.flatten(1) / qp.flatten(1).norm(dim=0).clamp_min(1e-4)
            sv = sp.flatten(1)[:, mp.flatten() > 1e-6]
            sv = sv / sv.norm(dim=0).clamp_min(1e-4)
            best = (sv.T @ qv).max(dim=0).values.view(h, w)
        maps.append((best - best.min()) / (best.max() - best.min() + 1e-7))
    return torch.stack(maps).mean(0)


def test_support_activation_against_a_loop() -> None:
    q, sf, sm = _episode(n=2, k=2, c=3, h=4, w=5, seed=11)
    sm[1, 1] = 0.0  # an empty shot: a zero map
    windows = ((3, 3), (1, 3))
    out = HF.support_activation(q, sf, sm, windows=windows)
    assert out.shape == (2, 2, 4, 5)
    for i in range(2):
        for wi, (kh, kw) in enumerate(windows):
            ref = _sam_reference(q[i], sf[i], sm[i], kh, kw).float()
            torch.testing.assert_close(out[i, wi], ref, rtol=1e-4, atol=1e-5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    default = HF.support_activation(q, sf, sm)
    assert default.shape == (2, 3, 4, 5)
    torch.testing.assert_close(default[:, 1:], HF.support_activation(q, sf, sm, windows=((1, 5), (5, 1))))
    with pytest.raises(ValueError, match=r"window sizes must be odd, got \(2, 3\)"):
        HF.support_activation(q, sf, sm, windows=((2, 3),))
    with pytest.raises(ValueError, match=r"window sizes must be odd, got \(3, 2\)"):
        HF.support_activation(q, sf, sm, windows=((3, 2),))
    with pytest.raises(ValueError, match="must share"):
        HF.support_activation(q[:, :, :3], sf, sm)


def test_mask_boxes_and_dynamic_kernels() -> None:
    m = torch.zeros(3, 4, 6)
    m[0, 1:3, 2:5] = 1.0
    m[1, 3, 0] = 0.5
    boxes = HF._mask_boxes(m)  # (x1, y1, x2, y2) pixel edges; empty: the whole map
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 3.0, 1.0, 4.0], [0.0, 0.0, 6.0, 4.0]]
    f = torch.zeros(1, 1, 1, 4, 6)
    f[0, 0, 0] = torch.arange(24.0).view(4, 6)
    sm = torch.zeros(1, 1, 4, 6)
    sm[0, 0, 1:3, 2:5] = 1.0  # box 3 wide, 2 high
    (k13,) = HF.dynamic_kernels(f, sm, sizes=((1, 3),))
    # roi_align (aligned): bin j spans x in [1.5 + j, 2.5 + j] (pixel centres), sampled at x = 1.75 + j and
    # 2.25 + j (bilinear: 1/4 and 3/4 of the neighbouring columns) and at rows 1 and 2 (mean 6 * 1.5 = 9 + x).
    # Masked mean = sum(w f m) / sum(w m): bin 0 = (3/4 f(2) + 3/4 f(2) + 1/4 f(3)) / (7/4) with f(x) = 9 + x,
    # bin 1 = 12 (all samples inside the mask), bin 2 = (1/4 f(3) + 3/4 f(4) + 3/4 f(4)) / (7/4)
    expected = torch.tensor([(1.5 * 11 + 0.25 * 12) / 1.75, 12.0, (0.25 * 12 + 1.5 * 13) / 1.75])
    torch.testing.assert_close(k13[0, 0, 0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"kernel sizes must be odd, got \(2, 3\)"):
        HF.dynamic_kernels(f, sm, sizes=((2, 3),))
    with pytest.raises(ValueError, match=r"kernel sizes must be odd, got \(3, 4\)"):
        HF.dynamic_depthwise_conv(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"disagree on \(N, C\)"):
        HF.dynamic_depthwise_conv(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 3, 3))
    assert len(HF.dynamic_kernels(f, sm)) == 3
    assert math.isclose(
        float(HF.dynamic_kernels(f, sm)[0].sum()), float(HF.dynamic_kernels(f, sm, eps=1e-6)[0].sum())
    )


# ---------------------------------------------------------------------------------- edge cases (second pass)


def test_resize_masks_antialiases_a_height_shrink_to_a_non_square_size() -> None:
    """(4, 4) -> (2, 4): only the height shrinks, and it is not larger than the target width.

    Kills `resize_masks__mutmut_15` (`masks.shape[-2] > size[1]`: no anti-aliasing, rows 0.5 and 2.5
    point-sampled to [0, 1]): checked by hand, fails on the mutant, passes on main.
    """
    m = torch.tensor([0.0, 0.0, 1.0, 1.0])[None, :, None].expand(1, 4, 4)
    # triangle filter of width 2: weights 1/8, 3/8, 3/8, 1/8 on rows -1..2 and 1..4, the row outside the image
    # dropped and the other three renormalised by 7/8
    expected = torch.tensor([1 / 7, 6 / 7])[None, :, None].expand(1, 2, 4)
    torch.testing.assert_close(HF.resize_masks(m, (2, 4)), expected)


def test_a_map_exactly_one_window_high_or_wide_has_cells() -> None:
    """A 2 x 4 (and a 4 x 2) map with ``window=2`` has two cells, not none.

    Kills `adaptive_local_prototypes__mutmut_19` (`h > window`) and `adaptive_local_prototypes__mutmut_20`
    (`w > window`): checked by hand, each fails on its mutant, passes on main.
    """
    f = _rand(1, 3, 2, 4)
    mask = torch.zeros(1, 2, 4)
    mask[0, :, :2] = 1.0  # the first cell is all foreground, the second empty
    expected = torch.stack(
        [f[0, :, :, :2].mean((1, 2)), f[0, :, :, 2:].mean((1, 2)), _map(f[0], mask[0]).float()]
    )
    for feats, m in ((f, mask), (f.transpose(2, 3), mask.transpose(1, 2))):
        protos, valid = HF.adaptive_local_prototypes(feats, m, 2)
        assert valid.tolist() == [[True, False, True]]
        torch.testing.assert_close(protos[0], expected, rtol=1e-6, atol=1e-6)


def test_a_map_smaller_than_the_window_falls_back_to_the_global_background_prototype() -> None:
    """No cell and ``add_global=False`` (ALPNet's background): the global prototype is the only, valid, one.

    Kills `adaptive_local_prototypes__mutmut_56` (`local_valid = torch.zeros(0, ...)`: `local_valid.any(dim=1)`
    raises IndexError): checked by hand, fails on the mutant, passes on main.
    """
    f = _rand(2, 3, 2, 3)
    mask = (_rand(2, 2, 3, seed=1) > 0).float()
    protos, valid = HF.adaptive_local_prototypes(f, 1.0 - mask, 4, add_global=False)
    assert valid.tolist() == [[True], [True]]
    ref = torch.stack([_map(f[i], 1.0 - mask[i]) for i in range(2)]).float()
    torch.testing.assert_close(protos[:, 0], ref, rtol=1e-6, atol=1e-6)
    q, sf, sm = _episode(n=2, k=2, h=2, w=3, seed=3)  # window 4 > map: global prototypes only
    ref = torch.stack([_alp_reference(q[i], sf[i], sm[i], 4, 0.95, 20.0) for i in range(2)]).float()
    torch.testing.assert_close(HF.alp_segment(q, sf, sm, window=4), ref, rtol=1e-5, atol=1e-5)


def test_alp_scores_refuses_a_batch_where_one_row_has_no_valid_prototype() -> None:
    """Kills `alp_scores__mutmut_19` (`valid.any(dim=None)`: only an all-invalid batch refused):
    checked by hand, fails on the mutant, passes on main."""
    q, protos = _rand(2, 3, 2, 2), _rand(2, 2, 3, seed=1)
    with pytest.raises(ValueError, match="every sample needs at least one valid prototype"):
        HF.alp_scores(q, protos, torch.tensor([[True, False], [False, False]]))


def test_decision_window_uses_the_threshold_given() -> None:
    """A 2 x 2 cell of mask mean 0.75 passes ``threshold=0.5`` (decision and cell): local cells + global.

    Kills `alp_segment__mutmut_113` (the decision at the default 0.95: global prototype only): checked by
    hand, fails on the mutant, passes on main.
    """
    q, sf, sm = _episode(n=1, k=1, h=4, w=4, seed=13)
    sm[:] = 0.0
    sm[0, 0, :2, :2] = 1.0
    sm[0, 0, 1, 1] = 0.0
    ref = _alp_reference(q[0], sf[0], sm[0], 2, 0.5, 20.0)[None].float()
    out = HF.alp_segment(q, sf, sm, window=2, threshold=0.5, decision_window=2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_decision_window_of_one_is_valid() -> None:
    """``window=1``: some pixel reaches the threshold.

    Kills `local_prototype_decision__mutmut_2` (`window <= 1`), `local_prototype_decision__mutmut_3`
    (`window < 2`), `alp_segment__mutmut_14` (`decision_window <= 1`) and `alp_segment__mutmut_15`
    (`decision_window < 2`): all refuse 1; checked by hand, each fails on its mutant, passes on main.
    """
    mask = torch.tensor([[[0.2, 0.96], [0.0, 0.5]], [[0.2, 0.9], [0.0, 0.5]]])
    assert HF.local_prototype_decision(mask, 1).tolist() == [True, False]
    assert HF.local_prototype_decision(mask, 1, threshold=0.9).tolist() == [True, True]
    q, sf, sm = _episode(n=2, k=2, h=4, w=4, seed=15)  # binary masks, none empty: the decision passes
    ref = torch.stack([_alp_reference(q[i], sf[i], sm[i], 2, 0.95, 20.0) for i in range(2)]).float()
    torch.testing.assert_close(
        HF.alp_segment(q, sf, sm, window=2, decision_window=1), ref, rtol=1e-5, atol=1e-5
    )


def test_score_fusion_passes_the_scale_to_every_shot() -> None:
    """``fusion="scores"`` with K = 2 and a scale other than 20, against per-shot loops.

    Kills `panet_segment__mutmut_33`, `anomaly_segment__mutmut_47` and `alp_segment__mutmut_56` (the
    per-shot call drops ``scale``): checked by hand, each fails on its mutant, passes on main.
    """
    q, sf, sm = _episode(seed=17)
    n, k, scale = 2, 2, 7.0
    t = torch.tensor([1.5, -3.0])
    panet, anomaly, alp = [], [], []
    for i in range(n):
        fg = [_map(sf[i, j], sm[i, j]) for j in range(k)]
        bg = [_map(sf[i, j], 1 - sm[i, j]) for j in range(k)]
        panet.append(torch.stack([_cos_map(q[i], [bg[j], fg[j]], scale) for j in range(k)]).mean(0))
        fg_logit = torch.stack(
            [0.5 * (_cos_map(q[i], [fg[j]], scale)[0] + float(t[i])) for j in range(k)]
        ).mean(0)
        anomaly.append(torch.stack([torch.zeros_like(fg_logit), fg_logit]))
        shots = [_alp_reference(q[i], sf[i, j : j + 1], sm[i, j : j + 1], 2, 0.95, scale) for j in range(k)]
        alp.append(torch.stack(shots).mean(0))
    out = HF.panet_segment(q, sf, sm, scale=scale, fusion="scores")
    torch.testing.assert_close(out, torch.stack(panet).float(), rtol=1e-5, atol=1e-5)
    out = HF.anomaly_segment(q, sf, sm, t, scale=scale, fusion="scores")
    torch.testing.assert_close(out, torch.stack(anomaly).float(), rtol=1e-5, atol=1e-5)
    out = HF.alp_segment(q, sf, sm, window=2, scale=scale, fusion="scores")
    torch.testing.assert_close(out, torch.stack(alp).float(), rtol=1e-5, atol=1e-5)


def test_even_kernel_sizes_are_refused_in_either_dimension() -> None:
    """Kills `dynamic_depthwise_conv__mutmut_9` (`kh / 2 == 0`: an even height passes the check, then fails
    in ``view`` with a RuntimeError) and `dynamic_kernels__mutmut_43` (`kw / 2 == 0`: an even width gives a
    kernel): checked by hand, each fails on its mutant, passes on main."""
    with pytest.raises(ValueError, match=r"kernel sizes must be odd, got \(4, 3\)"):
        HF.dynamic_depthwise_conv(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 3))
    with pytest.raises(ValueError, match=r"kernel sizes must be odd, got \(3, 4\)"):
        HF.dynamic_kernels(_rand(1, 1, 2, 4, 4), torch.ones(1, 1, 4, 4), sizes=((3, 4),))


def test_support_activation_averages_only_in_image_pixels() -> None:
    """Query features of size 1e-6, below the norm clamp 1e-4: there the cosine is proportional to the pooled
    norm, so counting the zero padding at the border (a per-pixel factor, which the cosine otherwise cancels)
    changes the map.

    Kills `support_activation__mutmut_48` (``count_include_pad`` dropped: default True) and
    `support_activation__mutmut_54` (``count_include_pad=True``): checked by hand, each fails on its mutant,
    passes on main.
    """
    q, sf, sm = _episode(n=1, k=2, c=3, h=4, w=5, seed=19)
    q = q * 1e-6
    out = HF.support_activation(q, sf, sm, windows=((3, 3),))
    torch.testing.assert_close(
        out[0, 0], _sam_reference(q[0], sf[0], sm[0], 3, 3).float(), rtol=1e-4, atol=1e-5
    )


def test_mask_boxes_of_a_foreground_in_the_first_row_or_column() -> None:
    """Kills `_mask_boxes__mutmut_48` (rows without foreground filled with +1.0 before the max: a foreground
    in row 0 only would end at y2 = 2): checked by hand, fails on the mutant, passes on main."""
    m = torch.zeros(2, 3, 4)
    m[0, 0, 1:3] = 1.0  # row 0 only
    m[1, :, 0] = 1.0  # column 0 only
    assert HF._mask_boxes(m).tolist() == [[1.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 3.0]]
