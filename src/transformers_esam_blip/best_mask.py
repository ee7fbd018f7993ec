"""The one rule for picking a query's mask among its candidates: the highest predicted IoU (EfficientSAM, SAM)."""

import torch


def best_mask_indices(iou_scores: torch.Tensor) -> torch.Tensor:
    """`iou_scores [..., M]` → index of the best candidate `[...]` (arg-max of the predicted IoU; first on ties)."""
    return iou_scores.argmax(dim=-1)


def select_best_masks(masks: torch.Tensor, iou_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The best candidate of every query.

    Args:
        masks: `[..., M, H, W]` logits or booleans (any resolution).
        iou_scores: `[..., M]` predicted IoU of each candidate.

    Returns:
        `masks [..., H, W]` and their scores `[...]`.
    """
    best = best_mask_indices(iou_scores)
    index = best[..., None, None, None].expand(*best.shape, 1, *masks.shape[-2:])
    return masks.gather(-3, index).squeeze(-3), iou_scores.gather(-1, best[..., None]).squeeze(-1)


__all__ = ["best_mask_indices", "select_best_masks"]
