"""Test-time fine-tuning on a support set: :func:`finetune_on_support`.

Before a support set segments its queries, a copy of the model is trained for a few steps on episodes made
from that support set alone, as training makes them from a superpixel: each episode's support and query are
two independent augmentations (:mod:`episodes.sampling.augment`, the training preset) of the labelled support
slice(s), and the target is the support's own organ mask. The loss is the training loss (class-weighted
cross-entropy of the query prediction plus the head's alignment loss). Only the support's labels are used,
and each chunk's support tunes its own copy, so a query slice's prediction still depends on nothing but the
model and its chunk's support. Batch-norm statistics stay as trained (a few augmented copies of one slice
are no estimate of them).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from episodes.sampling.augment import Augmenter
from fewshot.heads.functional import weighted_ce

if TYPE_CHECKING:
    from fewshot.config.model import FinetuneConfig

__all__ = ["finetune_on_support", "support_episodes"]

_MAX_TRIES = 10


def support_episodes(
    support_images: Tensor, support_masks: Tensor, augmenter: Augmenter, batch_size: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A batch of episodes made from one support set by augmentation.

    Args:
        support_images: ``(1, K, C, H, W)``; support_masks: ``(1, K, H, W)`` in ``{0, 1}``.
        augmenter: applied to each slice (all ``C`` channels get the same geometry and intensity change).
        batch_size: episodes ``B``.
        rng: draws the augmentation seeds and, for ``K > 1``, which shot each query copies.

    Returns:
        ``(B, K, C, H, W)`` support images, ``(B, K, H, W)`` support masks, ``(B, C, H, W)`` query images and
        ``(B, H, W)`` query masks (int64). An augmentation that empties a mask is redrawn (up to 10 times, then
        the slice is used as it is).
    """
    if support_images.ndim != 5 or support_images.shape[0] != 1:
        raise ValueError(f"support_images must be (1, K, C, H, W), got {tuple(support_images.shape)}")
    if support_masks.shape != (1, *support_images.shape[1:2], *support_images.shape[3:]):
        raise ValueError(
            f"support_masks {tuple(support_masks.shape)} do not match support_images {tuple(support_images.shape)}"
        )
    images = support_images[0].float().cpu().numpy().transpose(0, 2, 3, 1)  # (K, H, W, C)
    masks = (support_masks[0].cpu().numpy() > 0).astype(np.uint8)
    if not masks.reshape(masks.shape[0], -1).any(axis=1).all():
        raise ValueError("every support mask needs a foreground pixel to fine-tune on")
    k, h, w, c = images.shape

    def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
        source = images[i, ..., 0] if c == 1 else images[i]  # the augmenter takes (H, W) or (H, W, C <= 4)
        for _ in range(_MAX_TRIES):
            img, msk = augmenter(source, masks[i], seed=int(rng.integers(2**31 - 1)))
            if msk.any():
                return img.reshape(h, w, c), msk
        return images[i], masks[i]

    s_img, s_msk, q_img, q_msk = [], [], [], []
    for _ in range(batch_size):
        shots = [draw(i) for i in range(k)]
        s_img.append(np.stack([img for img, _ in shots]))
        s_msk.append(np.stack([msk for _, msk in shots]))
        img, msk = draw(int(rng.integers(k)))
        q_img.append(img)
        q_msk.append(msk)
    return (
        torch.from_numpy(np.stack(s_img).transpose(0, 1, 4, 2, 3).copy()),
        torch.from_numpy(np.stack(s_msk)).float(),
        torch.from_numpy(np.stack(q_img).transpose(0, 3, 1, 2).copy()),
        torch.from_numpy(np.stack(q_msk)).long(),
    )


_M = TypeVar("_M", bound=nn.Module)


def _tune_one(
    model: _M, support_images: Tensor, support_masks: Tensor, config: FinetuneConfig, device: torch.device,
    seed: int,
) -> _M:
    tuned = copy.deepcopy(model).to(device)
    tuned.train()
    for m in tuned.modules():  # batch-norm statistics stay as trained
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    rng = np.random.default_rng(seed)
    augmenter = Augmenter(config.augment)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.steps):
            s_img, s_msk, q_img, q_msk = (
                t.to(device) for t in support_episodes(support_images, support_masks, augmenter, config.batch_size, rng)
            )
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = tuned(s_img, s_msk, q_img)
            loss = weighted_ce(out.logits, q_msk, (config.bg_weight, 1.0))
            if out.align_loss is not None:
                loss = loss + config.align_weight * out.align_loss.float()
            if out.aux_loss is not None:
                loss = loss + out.aux_loss.float()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"support fine-tuning diverged (loss {loss.item()}); lower finetune.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return tuned.eval()


def finetune_on_support(
    model: nn.Module,
    support_images: Tensor,
    support_masks: Tensor,
    config: FinetuneConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` fine-tuned for ``config.steps`` steps on episodes of one support set.

    ``support_images (1, K, C, H, W)`` / ``support_masks (1, K, H, W)`` as :func:`~fewshot.evaluation.predict_query`
    takes them. An :class:`~fewshot.models.EnsembleSegmenter` has each member tuned on its own (member ``i``
    with seed ``seed + i``) and is returned as a new ensemble. ``config.steps == 0`` returns ``model`` itself.
    The copy is in eval mode; ``model`` is not changed. Deterministic for a given seed on one machine.
    """
    from fewshot.models import EnsembleSegmenter, FewShotSegmenter

    if config.steps == 0:
        return model
    device = torch.device(device)
    if isinstance(model, EnsembleSegmenter):
        members = [cast(FewShotSegmenter, m) for m in model.members]
        return EnsembleSegmenter(
            [_tune_one(m, support_images, support_masks, config, device, seed + i) for i, m in enumerate(members)]
        )
    return _tune_one(model, support_images, support_masks, config, device, seed)
