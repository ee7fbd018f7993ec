"""Training losses, SAM recipe: focal + dice on the best candidate mask, IoU-head MSE, and the ITM cross-entropy."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SizesLike = Tensor | Sequence[Sequence[int]]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    r"""
    Sigmoid focal loss (Lin et al., as SAM and `torchvision.ops.sigmoid_focal_loss`), averaged over the pixels of
    each mask: `mean(alpha_t * (1 - p_t) ** gamma * BCE(logits, targets))` with `p = sigmoid(logits)`,
    `p_t = p * t + (1 - p) * (1 - t)` and `alpha_t = alpha * t + (1 - alpha) * (1 - t)`.

    Args:
        logits: `[..., h, w]` mask logits.
        targets: binary targets broadcastable to `logits`.
        alpha: weight of the positive pixels, in [0, 1] (a negative value disables the weighting).
        gamma: focusing exponent.

    Returns:
        `[...]`: one loss per mask.
    """
    targets = targets.to(logits.dtype)
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    r"""
    Soft dice loss per mask, as SAM/DETR: `1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)` with
    `p = sigmoid(logits)`, sums over the pixels.

    Args:
        logits: `[..., h, w]` mask logits.
        targets: binary targets broadcastable to `logits`.
        smooth: added to numerator and denominator (an empty prediction of an empty target scores 0).

    Returns:
        `[...]`: one loss per mask.
    """
    probabilities = logits.sigmoid().flatten(-2)
    targets = targets.to(logits.dtype).expand_as(logits).flatten(-2)
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return 1 - (numerator + smooth) / (denominator + smooth)


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """
    IoU of the binarised masks (`logits > 0`) with binary targets, per mask; two empty masks have IoU 1.

    Args:
        logits: `[..., h, w]`.
        targets: binary, broadcastable to `logits`.

    Returns:
        `[...]` float in [0, 1], no gradient.
    """
    predicted = (logits.detach() > 0).flatten(-2)
    targets = (targets > 0).expand_as(logits).flatten(-2)
    intersection = (predicted & targets).sum(-1).float()
    union = (predicted | targets).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def _sizes_list(original_sizes: SizesLike, batch_size: int) -> list[tuple[int, int]]:
    sizes = original_sizes.tolist() if isinstance(original_sizes, Tensor) else list(original_sizes)
    if len(sizes) not in (1, batch_size) or any(len(size) != 2 for size in sizes):
        raise ValueError(
            f"`original_sizes` must hold one (height, width) per image ({batch_size}) or one for all, got {sizes}."
        )
    return [(int(height), int(width)) for height, width in sizes]


def prepare_mask_labels(
    labels: Tensor,
    batch_size: int,
    num_queries: int,
    low_res_size: tuple[int, int],
    original_sizes: SizesLike | None = None,
) -> Tensor:
    """
    Validate mask labels and bring them to the low-resolution frame of the predicted masks.

    The low-resolution masks cover the image resized to the square encoder frame without keeping the aspect ratio,
    so a full-resolution label is resized per axis straight to `low_res_size`: area average (adaptive average
    pooling, i.e. the fraction of each low-resolution cell the mask covers), then `>= 0.5`, as `EsamBlipDataCollator`
    resizes masks.

    Args:
        labels: binary masks (bool, or 0/1 numbers) of shape `[B, Q, h, w]` (one per query), `[B, h, w]` (one per
            image or text, shared by all its queries), or the same with the original image size `(H, W)` instead of
            `(h, w)`.
        batch_size: `B` of the predictions (images, or texts with text prompts).
        num_queries: `Q` of the predictions.
        low_res_size: `(h, w)` of the predicted masks (256x256 for EfficientSAM).
        original_sizes: `[B, 2]` or `[1, 2]` `(H, W)` of the images, as the image processor returns them; needed for
            full-resolution labels (every image of the batch must then have the labels' size).

    Returns:
        `[B, Q, h, w]` float 0/1 targets.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor of binary masks, got {type(labels).__name__}.")
    if labels.ndim not in (3, 4):
        raise ValueError(
            f"`labels` must have shape [batch, queries, height, width] or [batch, height, width], got "
            f"{tuple(labels.shape)}."
        )
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"`labels` must hold one entry per predicted image (or text): batch {batch_size}, got shape "
            f"{tuple(labels.shape)}."
        )
    if labels.ndim == 4 and labels.shape[1] != num_queries:
        raise ValueError(
            f"`labels` has {labels.shape[1]} masks per image but the prompts make {num_queries} queries; pass one "
            "mask per query, or [batch, height, width] for one mask shared by every query."
        )
    if labels.dtype != torch.bool and ((labels != 0) & (labels != 1)).any():
        raise ValueError(f"`labels` must be binary masks (0/1 or bool), got values {labels.unique()[:8].tolist()}.")
    size = tuple(labels.shape[-2:])
    if size != tuple(low_res_size):
        sizes = None if original_sizes is None else _sizes_list(original_sizes, batch_size)
        if sizes is None or any(original != size for original in sizes):
            where = (
                "pass `original_sizes` for full-resolution labels"
                if sizes is None
                else f"the original image sizes {sorted(set(sizes))} (`original_sizes`)"
            )
            raise ValueError(
                f"`labels` have spatial size {size}, which matches neither the low-resolution masks "
                f"{tuple(low_res_size)} nor {where}."
            )
        coverage = F.adaptive_avg_pool2d(labels.flatten(0, -3)[:, None].float(), tuple(low_res_size))
        labels = (coverage >= 0.5).reshape(*labels.shape[:-2], *low_res_size)
    labels = labels.float()
    return labels if labels.ndim == 4 else labels[:, None].expand(-1, num_queries, -1, -1)


def segmentation_loss(
    pred_masks: Tensor,
    iou_scores: Tensor,
    labels: Tensor,
    original_sizes: SizesLike | None = None,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    valid: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""
    SAM's mask loss. Every candidate mask gets `focal_weight * focal + dice_weight * dice`; per query only the
    candidate with the lowest such loss (chosen on detached values) is trained, so the gradient flows through that
    candidate alone. The IoU head is trained with the MSE between that candidate's predicted IoU and the actual IoU
    of its binarised mask (`logits > 0`) with the target (a detached target). Losses are averaged over the queries.

    Args:
        pred_masks: `[B, Q, M, h, w]` low-resolution mask logits (`M` candidates).
        iou_scores: `[B, Q, M]` predicted IoUs.
        labels: targets, see [`prepare_mask_labels`]: `[B, Q, h, w]`, `[B, h, w]`, or the same at the original
            image size `(H, W)` (then `original_sizes` is needed).
        original_sizes: `[B, 2]` `(H, W)` of the images.
        focal_weight, dice_weight, iou_weight: loss weights (SAM: 20, 1, 1).
        focal_alpha, focal_gamma: focal-loss parameters (SAM: 0.25, 2).
        valid: `[B]` bool, *optional*: the entries (images, or texts) whose masks are trained; the losses are
            averaged over their queries only. With none valid the loss is a zero that keeps the graph (so a batch of
            absent expressions still back-propagates its other losses).

    Returns:
        `(loss, parts)`: the weighted scalar loss, and the detached unweighted `focal_loss`, `dice_loss`, `iou_loss`
        plus `chosen_candidate [B, Q]` for logging.
    """
    if not isinstance(pred_masks, Tensor) or pred_masks.ndim != 5:
        raise ValueError(
            f"`pred_masks` must have shape [batch, queries, candidates, h, w], got "
            f"{getattr(pred_masks, 'shape', type(pred_masks))}."
        )
    if not isinstance(iou_scores, Tensor) or tuple(iou_scores.shape) != tuple(pred_masks.shape[:3]):
        raise ValueError(
            f"`iou_scores` must have shape {tuple(pred_masks.shape[:3])} to match `pred_masks`, got "
            f"{getattr(iou_scores, 'shape', type(iou_scores))}."
        )
    batch_size, num_queries = pred_masks.shape[:2]
    targets = prepare_mask_labels(labels, batch_size, num_queries, tuple(pred_masks.shape[-2:]), original_sizes)
    targets = targets.to(pred_masks.device)[:, :, None]
    if valid is not None:
        if not isinstance(valid, Tensor) or tuple(valid.shape) != (batch_size,):
            raise ValueError(
                f"`valid` must be a bool tensor of shape ({batch_size},), one flag per entry of `pred_masks`, got "
                f"{tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__}."
            )
        valid = valid.to(pred_masks.device).bool()
        if not valid.any():
            zero = pred_masks.sum() * 0.0 + iou_scores.sum() * 0.0
            nothing = torch.zeros((), device=pred_masks.device)
            chosen = torch.zeros(0, num_queries, dtype=torch.long, device=pred_masks.device)
            return zero, {"focal_loss": nothing, "dice_loss": nothing, "iou_loss": nothing, "chosen_candidate": chosen}
        pred_masks, iou_scores, targets = pred_masks[valid], iou_scores[valid], targets[valid]
    logits = pred_masks.float()
    focal = sigmoid_focal_loss(logits, targets, focal_alpha, focal_gamma)
    dice = dice_loss(logits, targets)
    per_candidate = focal_weight * focal + dice_weight * dice
    chosen = per_candidate.detach().argmin(dim=-1, keepdim=True)
    mask_loss = per_candidate.gather(-1, chosen).mean()
    chosen_logits = logits.gather(2, chosen[..., None, None].expand(-1, -1, -1, *logits.shape[-2:]))
    actual_iou = mask_iou(chosen_logits, targets)
    iou_loss = F.mse_loss(iou_scores.float().gather(-1, chosen), actual_iou)
    parts = {
        "focal_loss": focal.gather(-1, chosen).mean().detach(),
        "dice_loss": dice.gather(-1, chosen).mean().detach(),
        "iou_loss": iou_loss.detach(),
        "chosen_candidate": chosen[..., 0],
    }
    return mask_loss + iou_weight * iou_loss, parts


def itm_loss(itm_logits: Tensor, match_labels: Tensor, name: str = "match_labels") -> Tensor:
    """
    Cross-entropy of the ITM logits against 0/1 match targets.

    Args:
        itm_logits: `[T, 2]` (index 1 = match).
        match_labels: `[T]`, 1 where the text describes the image, 0 otherwise.
        name: the argument name the caller exposes, for the error message.

    Returns:
        scalar loss.
    """
    expected = (itm_logits.shape[0],)
    if not isinstance(match_labels, Tensor) or tuple(match_labels.shape) != expected:
        raise ValueError(
            f"`{name}` must be 0/1 match targets of shape {expected}, got "
            f"{tuple(match_labels.shape) if isinstance(match_labels, Tensor) else type(match_labels).__name__}."
        )
    if ((match_labels != 0) & (match_labels != 1)).any():
        raise ValueError(f"`{name}` must be 0/1 match targets, got values {match_labels.unique().tolist()}.")
    return F.cross_entropy(itm_logits.float(), match_labels.to(itm_logits.device).long())


__all__ = [
    "dice_loss",
    "itm_loss",
    "mask_iou",
    "prepare_mask_labels",
    "segmentation_loss",
    "sigmoid_focal_loss",
]
