"""The Lightning module: one self-supervised episode batch per step.

Loss (SSL-ALPNet): class-weighted cross-entropy of the query prediction against the
superpixel pseudo-label (weights ``(bg, fg) = (0.05, 1.0)``) plus ``align_weight`` times
the head's prototype alignment loss (PANet/ALPNet "PAR"), when the head returns one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from episodes.sampling import EpisodeBatch
from fewshot.checkpoint import CHECKPOINT_KEY, build_payload
from fewshot.config import OptimConfig
from fewshot.heads.functional import IGNORE_INDEX, weighted_ce

__all__ = ["FewShotModule", "flatten_episode_batch", "foreground_dice", "weighted_ce"]



def flatten_episode_batch(
    support_images: Tensor, support_masks: Tensor, query_images: Tensor, query_masks: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fold the ``Q`` queries of each episode into the batch, repeating its support.

    Args:
        support_images: ``(B, K, C, H, W)``; support_masks: ``(B, K, H, W)``;
        query_images: ``(B, Q, C, H, W)``; query_masks: ``(B, Q, H, W)``.

    Returns:
        ``(B*Q, K, C, H, W)``, ``(B*Q, K, H, W)``, ``(B*Q, C, H, W)``, ``(B*Q, H, W)``.
    """
    if support_images.ndim != 5 or query_images.ndim != 5:
        raise ValueError(
            f"expected support (B, K, C, H, W) and query (B, Q, C, H, W) images, got "
            f"{tuple(support_images.shape)} and {tuple(query_images.shape)}"
        )
    b, q = query_images.shape[:2]
    if support_images.shape[0] != b or support_masks.shape[:2] != support_images.shape[:2]:
        raise ValueError(
            f"support images {tuple(support_images.shape)} / masks {tuple(support_masks.shape)} do not "
            f"match query batch {b}"
        )
    if query_masks.shape[:2] != (b, q):
        raise ValueError(f"query masks {tuple(query_masks.shape)} do not match query images (B={b}, Q={q})")
    s_img = support_images.repeat_interleave(q, dim=0)
    s_msk = support_masks.repeat_interleave(q, dim=0)
    return s_img, s_msk, query_images.flatten(0, 1), query_masks.flatten(0, 1)


@torch.no_grad()
def foreground_dice(logits: Tensor, target: Tensor) -> Tensor:
    """Foreground Dice of ``argmax(logits)`` vs ``target`` over the whole batch (1 if both empty)."""
    valid = target != IGNORE_INDEX
    pred = (logits.argmax(1) == 1) & valid
    gt = (target == 1) & valid
    tp = (pred & gt).sum()
    den = pred.sum() + gt.sum()
    return torch.where(den > 0, 2.0 * tp / den.clamp(min=1), torch.ones((), device=logits.device))


class FewShotModule(pl.LightningModule):
    """Trains an injected few-shot segmenter on episode batches.

    Args:
        model: a ``fewshot.models.FewShotSegmenter`` (``forward(support_images, support_masks,
            query_images) -> SegmentationOutput(logits, align_loss)``).
        optim: optimiser/loss settings.
        config_dict: the resolved experiment config (plain dict), stored in checkpoints.
        extras: more plain data for checkpoints (CT ``norm_stats``, superpixel stats...).
        channels_last: convert model and inputs to ``torch.channels_last``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        config_dict: dict[str, Any],
        *,
        extras: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.config_dict = dict(config_dict)
        self.extras = dict(extras or {})
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor) -> Any:
        return self.model(support_images, support_masks, query_images)

    def _to_memory_format(self, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def losses(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one episode batch and what :meth:`training_step` logs beside it.

        Returns:
            ``(loss, parts)``: ``loss`` = ``ce + align_weight * align (+ aux)``; ``parts`` holds ``ce``, ``align``,
            ``fg_dice`` (no gradient) and, for a head with its own loss, ``aux``. A plain PyTorch loop (no trainer)
            optimises the same ``loss``.
        """
        s_img, s_msk, q_img, q_msk = flatten_episode_batch(
            batch.support_images, batch.support_masks, batch.query_images, batch.query_masks
        )
        out = self.model(s_img, s_msk.float(), self._to_memory_format(q_img))
        ce = weighted_ce(out.logits, q_msk, self.optim.ce_weights)
        align = out.align_loss if out.align_loss is not None else torch.zeros((), device=ce.device)
        loss = ce + self.optim.align_weight * align.float()
        parts = {"ce": ce, "align": align}
        if out.aux_loss is not None:  # the head's own weighted loss (ADNet's threshold loss)
            loss = loss + out.aux_loss.float()
            parts["aux"] = out.aux_loss
        parts["fg_dice"] = foreground_dice(out.logits.detach(), q_msk)
        return loss, parts

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, parts = self.losses(batch)
        n = batch.query_images.shape[0] * batch.query_images.shape[1]  # episodes x queries
        if "aux" in parts:
            self.log("aux", parts["aux"], batch_size=n)
        self.log("loss", loss, prog_bar=True, batch_size=n)
        self.log("ce", parts["ce"], batch_size=n)
        self.log("align", parts["align"], batch_size=n)
        self.log("fg_dice", parts["fg_dice"], prog_bar=True, batch_size=n)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=n)  # type: ignore[union-attr]
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, EpisodeBatch):
            move = {
                name: getattr(batch, name).to(device, non_blocking=True)
                for name in ("support_images", "support_masks", "query_images", "query_masks")
            }
            return dataclasses.replace(batch, **move)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self) -> Any:
        o = self.optim
        opt = torch.optim.SGD(
            self.model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
        # SSL-ALPNet's MultiStepLR with milestones every ``lr_step`` steps is exactly StepLR; StepLR
        # has no schedule horizon in its state, so resuming with a larger ``max_steps`` keeps decaying.
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.lr_step, gamma=o.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = build_payload(self.model, self.config_dict, self.extras)
