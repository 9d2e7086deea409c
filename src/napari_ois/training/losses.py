"""Losses of the OIS training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_focal_loss(logits, target, valid, alpha: float = 0.5, gamma: float = 2.0,
                          eps: float = 1e-8) -> torch.Tensor:
    """Normalized focal loss (RITM's NFL) per mask: ``(..., H, W)`` -> ``(...)``.

    The focal weights ``(1 - p_t) ** gamma`` are renormalised to sum to the number of valid
    pixels (the normaliser is not differentiated), so that the loss keeps its scale as the
    prediction improves. ``alpha`` weighs positives, ``1 - alpha`` negatives.
    """
    target = target.to(logits.dtype)
    valid = valid.to(logits.dtype)
    p = torch.sigmoid(logits)
    pt = torch.where(target > 0.5, p, 1 - p)
    alpha_t = torch.where(target > 0.5, alpha, 1 - alpha) * 2  # alpha = 0.5 -> weight 1
    beta = (1 - pt) ** gamma * valid
    with torch.no_grad():
        n_valid = valid.sum((-2, -1), keepdim=True).clamp(min=1)
        norm = n_valid / beta.sum((-2, -1), keepdim=True).clamp(min=eps)
    log_pt = F.logsigmoid(torch.where(target > 0.5, logits, -logits))
    loss = -alpha_t * beta * norm * log_pt
    return loss.sum((-2, -1)) / n_valid.squeeze(-1).squeeze(-1)


def soft_iou(logits, target, valid) -> torch.Tensor:
    """IoU of ``logits > 0`` against ``target`` on ``valid`` pixels: ``(..., H, W)`` -> ``(...)``."""
    pred = (logits > 0) & valid
    tgt = target.bool() & valid
    inter = (pred & tgt).sum((-2, -1)).float()
    union = (pred | tgt).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def proposal_loss(logits, proposals, valid, distinct, *, quality_target: str,
                  relax: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-over-proposals (multiple-choice) loss of the K first-click masks.

    Args:
        logits: (B, K, H, W) proposal logits.
        proposals: (B, G, H, W) ground-truth set (object, merged with neighbours, group).
        valid: (B, H, W).
        distinct: (B, G) bool, which ground-truth masks are distinct (repeats are skipped).
        quality_target: the quality head's target per proposal: "reading", its IoU with its
            best-matching ground truth; "object", its IoU with the first (the clicked object).
            No default: the callers pass ``TrainConfig.quality_target``.
    Returns:
        the loss (scalar) and, per proposal, the quality head's target IoU (B, K).
    """
    b, k = logits.shape[:2]
    g = proposals.shape[1]
    pair = normalized_focal_loss(
        logits[:, :, None].expand(b, k, g, *logits.shape[-2:]),
        proposals[:, None].expand(b, k, g, *proposals.shape[-2:]),
        valid[:, None, None],
    )  # (B, K, G)
    best = pair.min(1).values  # each ground truth takes its best proposal
    loss = (best * distinct).sum() / distinct.sum().clamp(min=1)
    # Relaxed multiple choice: each proposal is also pulled (weakly) towards its nearest
    # ground truth, so that no proposal stops learning (plain min-over-proposals lets one
    # token win everything and the others collapse to empty masks; measured here).
    nearest = pair.masked_fill(~distinct[:, None], float("inf")).min(2).values  # (B, K)
    loss = loss + relax * nearest.mean()
    with torch.no_grad():
        ious = torch.stack(
            [soft_iou(logits[:, i, None], proposals, valid[:, None]) for i in range(k)], 1
        )  # (B, K, G)
        if quality_target == "object":
            return loss, ious[:, :, 0]
        ious = ious.masked_fill(~distinct[:, None], -1).max(-1).values
    return loss, ious
