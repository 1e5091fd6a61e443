from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fewshot.evaluation.intensity import INTENSITY_CLIP, intensity_log_ratio, intensity_of, intensity_veto


def _support() -> tuple[torch.Tensor, torch.Tensor]:
    """One 8x8 support slice: the organ (left half) at intensity 1, the background at 0 and 2."""
    image = torch.zeros(1, 8, 8)
    image[:, :, 6:] = 2.0
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1
    image[mask > 0] = 1.0
    return image, mask


def test_intensity_log_ratio_favours_the_organs_grey_values() -> None:
    image, mask = _support()
    query = torch.tensor([[[1.0, 0.0, 2.0, 1.5]]])  # organ value, two background values, between
    ratio = intensity_log_ratio(image, mask, query)
    assert ratio.shape == (1, 1, 4) and ratio.dtype == torch.float32
    organ, dark, bright, between = ratio[0, 0].tolist()
    assert organ > 2.0 and dark < -2.0 and bright < -2.0  # 32 organ pixels in one bin, the background's elsewhere
    assert dark < between < organ
    assert abs(organ) <= INTENSITY_CLIP and abs(dark) <= INTENSITY_CLIP
    assert intensity_log_ratio(image, mask, query, clip=1.0).abs().max().item() == pytest.approx(1.0)
    # values outside the support's range fall in the edge bins
    outside = intensity_log_ratio(image, mask, torch.tensor([[[-5.0, 9.0]]]))
    assert outside[0, 0].tolist() == [dark, bright]


def test_intensity_log_ratio_is_symmetric_in_swapping_organ_and_background() -> None:
    image, mask = _support()
    query = torch.linspace(0, 2, 9).reshape(1, 1, 9)
    assert torch.allclose(intensity_log_ratio(image, mask, query), -intensity_log_ratio(image, 1 - mask, query))


def test_intensity_log_ratio_refuses_what_it_cannot_use() -> None:
    image, mask = _support()
    query = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="both organ and background pixels"):
        intensity_log_ratio(image, torch.zeros_like(mask), query)
    with pytest.raises(ValueError, match="both organ and background pixels"):
        intensity_log_ratio(image, torch.ones_like(mask), query)
    with pytest.raises(ValueError, match="one intensity only"):
        intensity_log_ratio(torch.ones_like(image), mask, query)
    with pytest.raises(ValueError, match=r"support_intensity \(K, H, W\)"):
        intensity_log_ratio(image[0], mask[0], query)
    with pytest.raises(ValueError, match=r"query_intensity must be \(N, H, W\)"):
        intensity_log_ratio(image, mask, query[0])
    with pytest.raises(ValueError, match="bins must be >= 2"):
        intensity_log_ratio(image, mask, query, bins=1)


def test_intensity_of_takes_the_middle_channel() -> None:
    images = torch.arange(3.0).reshape(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert intensity_of(images).shape == (2, 4, 4) and bool((intensity_of(images) == 1.0).all())
    with pytest.raises(ValueError, match=r"\(\.\.\., C, H, W\)"):
        intensity_of(torch.zeros(4, 4))


class _Eager(nn.Module):
    """Foreground logit margin +1 everywhere (p = 0.73): every pixel is foreground until the veto removes it."""

    def __init__(self, prior: float | None = None) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1), intensity_prior=prior)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        d = torch.ones(q.shape[0], *q.shape[2:])
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(d), d], 1) + self.dummy, align_loss=None)


def test_intensity_veto_is_the_negative_part_of_the_ratio() -> None:
    image, mask = _support()
    query = torch.linspace(-1, 3, 17).reshape(1, 1, 17)
    ratio = intensity_log_ratio(image, mask, query)
    veto = intensity_veto(image, mask, query)
    assert bool((veto <= 0).all()) and veto.equal(ratio.clamp(max=0)) and bool((ratio > 0).any())


def test_predict_query_vetoes_intensities_unlike_the_support_organ() -> None:
    from fewshot.evaluation import predict_query

    image, mask = _support()
    s_img, s_msk = image.reshape(1, 1, 1, 8, 8), mask.reshape(1, 1, 8, 8)
    q = torch.zeros(2, 1, 8, 8)
    q[:, :, 2:5, 2:5] = 1.0  # an organ-bright square on a background-dark slice
    assert predict_query(_Eager(), s_img, s_msk, q).all()
    pred = predict_query(_Eager(), s_img, s_msk, q, intensity_prior=1.0)
    assert pred.equal(q[:, 0] == 1.0)  # the dark pixels' ratio is < -1: vetoed; the square's is > 0: untouched
    assert predict_query(_Eager(1.0), s_img, s_msk, q).equal(pred)  # model.config.intensity_prior
    assert predict_query(_Eager(1.0), s_img, s_msk, q, intensity_prior=0.0).all()  # explicit wins
    # the margin moves by w x ratio: a weight whose veto stays under the margin of 1 removes nothing
    ratio = intensity_log_ratio(image, mask, torch.zeros(1, 1, 1)).item()
    assert predict_query(_Eager(), s_img, s_msk, q, intensity_prior=0.99 / -ratio).all()
    assert predict_query(_Eager(), s_img, s_msk, q, intensity_prior=1.01 / -ratio).equal(pred)
    # a veto never adds foreground: a threshold above the square's p = 0.73 leaves nothing
    assert not predict_query(_Eager(), s_img, s_msk, q, intensity_prior=1.0, threshold=0.75).any()
    # upsampled to the labels' size like the logits
    big = predict_query(_Eager(), s_img, s_msk, q, intensity_prior=1.0, out_size=(16, 16))
    assert big.shape == (2, 16, 16) and big[:, 5:9, 5:9].all() and not big[:, :3].any()
    with pytest.raises(ValueError, match="weight >= 0"):
        predict_query(_Eager(), s_img, s_msk, q, intensity_prior=-1.0)
    with pytest.raises(ValueError, match="support batch 1"):
        predict_query(_Eager(), s_img.expand(2, -1, -1, -1, -1), s_msk.expand(2, -1, -1, -1), q, intensity_prior=1.0)


@pytest.mark.realdata
def test_the_veto_keeps_another_scans_organ_and_removes_most_of_its_background(btcv_dir: Path) -> None:
    """Real CT (two BTCV subjects): the support subject's mid-organ slice vetoes (r < -1) at most 10 % of the
    query subject's organ on its mid-organ slice and at least half of the unlabelled tissue around it."""
    from episodes.data.loaders import load_btcv_png_folder
    from episodes.data.preprocess import fit_ct_stats, preprocess

    vols = load_btcv_png_folder(btcv_dir, subjects=["0", "1", "2"])
    stats = fit_ct_stats(vols)
    support, query = (preprocess(v, size=128, ct_stats=stats) for v in vols[:2])
    assert support.label is not None and query.label is not None

    def middle(labels: np.ndarray, value: int) -> int:
        zs = np.flatnonzero((labels == value).any(axis=(1, 2)))
        return int(zs[len(zs) // 2])

    for organ, value in (("liver", 6), ("right_kidney", 2), ("spleen", 1)):
        zs, zq = middle(support.label, value), middle(query.label, value)
        veto = intensity_veto(
            torch.from_numpy(support.image[zs : zs + 1]),
            torch.from_numpy((support.label[zs : zs + 1] == value).astype(np.float32)),
            torch.from_numpy(query.image[zq : zq + 1]),
        )[0].numpy()
        inside = query.label[zq] == value
        tissue = (query.label[zq] == 0) & (query.image[zq] > query.image[zq].min() + 0.1)  # not the air outside
        assert (veto[inside] < -1).mean() < 0.1, organ
        assert (veto[tissue] < -1).mean() > 0.5, organ
