"""Automatic mask generation helpers in plain torch: crop boxes, point grids, mask filtering, RLE and box NMS."""

import math
from itertools import product
from typing import Any

import torch
from torch.nn import functional as F

RLE = dict[str, list[int]]


def build_point_grid(n_per_side: int) -> torch.Tensor:
    """
    Centres of an `n_per_side x n_per_side` grid of cells covering the unit square.

    Returns:
        `torch.Tensor` of shape `(n_per_side**2, 2)`, float32: `(x, y)` in `[0, 1]`, x varying fastest.
    """
    if n_per_side < 1:
        raise ValueError(f"A point grid needs at least one point per side, got {n_per_side}.")
    offset = 1 / (2 * n_per_side)
    side = torch.linspace(offset, 1 - offset, n_per_side)
    y, x = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(-1, 2)


def compute_crop_boxes(
    height: int, width: int, crop_n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """
    Crop boxes of the automatic mask generator: the whole image, then `(2**(i+1))**2` overlapping crops for layer
    `i + 1`, as in segment-anything's AMG.

    Returns:
        `(boxes, layer_indices)`: boxes as `[x0, y0, x1, y1]` integer pixels of the image (x1, y1 exclusive), and the
        layer each box belongs to (0 for the whole image).
    """
    boxes, layer_indices = [[0, 0, width, height]], [0]
    short_side = min(height, width)
    for layer in range(1, crop_n_layers + 1):
        n_crops_per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_width = math.ceil((overlap * (n_crops_per_side - 1) + width) / n_crops_per_side)
        crop_height = math.ceil((overlap * (n_crops_per_side - 1) + height) / n_crops_per_side)
        lefts = [int((crop_width - overlap) * i) for i in range(n_crops_per_side)]
        tops = [int((crop_height - overlap) * i) for i in range(n_crops_per_side)]
        for left, top in product(lefts, tops):
            boxes.append([left, top, min(left + crop_width, width), min(top + crop_height, height)])
            layer_indices.append(layer)
    return boxes, layer_indices


def compute_stability_score(mask_logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """
    IoU between the masks binarised at `mask_threshold + offset` and at `mask_threshold - offset`.

    Args:
        mask_logits (`torch.Tensor` of shape `(..., height, width)`): mask logits.

    Returns:
        `torch.Tensor` of shape `(...)`, float32. NaN for a mask empty at both thresholds.
    """
    # The high-threshold mask lies inside the low-threshold one, so their pixel counts are intersection and union.
    intersections = (mask_logits > mask_threshold + offset).flatten(-2).sum(-1)
    unions = (mask_logits > mask_threshold - offset).flatten(-2).sum(-1)
    return intersections.float() / unions.float()


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """
    Tight boxes around binary masks.

    Args:
        masks (`torch.Tensor` of shape `(..., height, width)`): boolean masks.

    Returns:
        `torch.Tensor` of shape `(..., 4)`, int64: `[x0, y0, x1, y1]` with inclusive pixel indices (x1, y1 are the last
        covered column and row); `[0, 0, 0, 0]` for an empty mask.
    """
    height, width = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1).to(torch.uint8)
    cols = masks.any(dim=-2).to(torch.uint8)
    # argmax returns the first maximal index, so it finds the first covered row/column from either end.
    top = rows.argmax(dim=-1)
    bottom = height - 1 - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = width - 1 - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    non_empty = rows.any(dim=-1, keepdim=True)
    return boxes * non_empty


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: Any, orig_box: Any, atol: float = 20.0) -> torch.Tensor:
    """
    Whether boxes touch an edge of their crop that is not also an edge of the whole image (such masks are likely cut
    by the crop).

    Args:
        boxes (`torch.Tensor` of shape `(num_boxes, 4)`): `[x0, y0, x1, y1]` in the crop's pixels.
        crop_box: `[x0, y0, x1, y1]` of the crop in the image.
        orig_box: `[x0, y0, x1, y1]` of the whole image.

    Returns:
        `torch.Tensor` of shape `(num_boxes,)`, bool.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    offset = torch.stack([crop[0], crop[1], crop[0], crop[1]])
    image_boxes = boxes.float() + offset
    near_crop_edge = torch.isclose(image_boxes, crop[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(image_boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


def uncrop_masks(masks: torch.Tensor, crop_box: Any, orig_height: int, orig_width: int) -> torch.Tensor:
    """
    Place crop masks `(num_masks, crop_height, crop_width)` into the whole image, zero elsewhere.

    Returns:
        `torch.Tensor` of shape `(num_masks, orig_height, orig_width)`, same dtype as `masks`.
    """
    left, top, right, bottom = (int(v) for v in crop_box)
    orig_height, orig_width = int(orig_height), int(orig_width)
    if (left, top, right, bottom) == (0, 0, orig_width, orig_height):
        return masks
    pad = (left, orig_width - right, top, orig_height - bottom)
    return F.pad(masks, pad, value=0)


def mask_to_rle(masks: torch.Tensor) -> list[RLE]:
    """
    Uncompressed run-length encoding as pycocotools expects it: column-major order, counts alternate between runs of
    0 and runs of 1, starting with 0 (a leading count of 0 when the first pixel is set).

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`): boolean masks.

    Returns:
        `list[dict]`: one `{"size": [height, width], "counts": [...]}` per mask.
    """
    num_masks, height, width = masks.shape
    flat = masks.bool().transpose(1, 2).reshape(num_masks, height * width)
    rles = []
    for mask in flat:
        changes = torch.nonzero(mask[1:] != mask[:-1]).flatten() + 1
        bounds = torch.cat([changes.new_zeros(1), changes, changes.new_full((1,), height * width)])
        counts = torch.diff(bounds).tolist()
        if bool(mask[0]):
            counts = [0, *counts]
        rles.append({"size": [height, width], "counts": counts})
    return rles


def rle_to_mask(rle: RLE) -> torch.Tensor:
    """
    Decode one uncompressed RLE (see [`mask_to_rle`]).

    Returns:
        `torch.Tensor` of shape `(height, width)`, bool.
    """
    height, width = rle["size"]
    counts = torch.as_tensor(rle["counts"], dtype=torch.int64)
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected height * width = {height * width}.")
    values = torch.arange(len(counts)) % 2 == 1
    return torch.repeat_interleave(values, counts).reshape(width, height).transpose(0, 1)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """
    Pairwise IoU of `[x0, y0, x1, y1]` boxes `(N, 4)` and `(M, 4)`.

    Returns:
        `torch.Tensor` of shape `(N, M)`, float32; NaN where both boxes have zero area.
    """
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """
    Greedy non-maximum suppression, with torchvision's semantics: boxes are visited by decreasing score (ties keep
    input order) and a box is dropped when its IoU with a kept box is strictly above `iou_threshold`.

    Args:
        boxes (`torch.Tensor` of shape `(N, 4)`): `[x0, y0, x1, y1]`.
        scores (`torch.Tensor` of shape `(N,)`).

    Returns:
        `torch.Tensor` of shape `(K,)`, int64: indices of the kept boxes by decreasing score.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    ious = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= ious[i] > iou_threshold
    return order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """
    [`nms`] applied independently per category `idxs` (boxes of different categories never suppress each other).

    Returns:
        `torch.Tensor` of shape `(K,)`, int64: indices of the kept boxes by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    # Shifting each category by more than the coordinate span keeps categories from overlapping.
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def filter_crop_masks(
    mask_logits: torch.Tensor,
    iou_scores: torch.Tensor,
    original_size: Any,
    crop_box: Any,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    mask_threshold: float = 0.0,
    stability_score_offset: float = 1.0,
) -> tuple[list[RLE], torch.Tensor, torch.Tensor]:
    """
    Keep the masks of one crop whose predicted IoU and stability pass their thresholds and that are not cut by the
    crop's edge; return them placed in the whole image, run-length encoded.

    Args:
        mask_logits (`torch.Tensor` of shape `(num_queries, num_masks, crop_height, crop_width)`): logits at the crop's
            resolution.
        iou_scores (`torch.Tensor` of shape `(num_queries, num_masks)`).
        original_size: `(height, width)` of the whole image.
        crop_box: `[x0, y0, x1, y1]` of the crop in the whole image.

    Returns:
        `(rles, scores, boxes)`: the kept masks as RLEs of the whole image, their scores `(K,)` and their boxes
        `(K, 4)` int64 in whole-image pixels (inclusive, see [`batched_mask_to_box`]).
    """
    orig_height, orig_width = (int(v) for v in original_size)
    mask_logits = mask_logits.flatten(0, 1)
    iou_scores = iou_scores.flatten(0, 1).to(mask_logits.device)
    if mask_logits.shape[0] != iou_scores.shape[0]:
        raise ValueError(
            f"`masks` hold {mask_logits.shape[0]} masks but `iou_scores` {iou_scores.shape[0]} scores; they must "
            "match."
        )
    keep = torch.ones(len(iou_scores), dtype=torch.bool, device=mask_logits.device)
    if pred_iou_thresh > 0.0:
        keep &= iou_scores > pred_iou_thresh
    if stability_score_thresh > 0.0:
        keep &= compute_stability_score(mask_logits, mask_threshold, stability_score_offset) > stability_score_thresh
    scores = iou_scores[keep]
    masks = mask_logits[keep] > mask_threshold

    boxes = batched_mask_to_box(masks)
    keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_width, orig_height])
    scores, masks, boxes = scores[keep], masks[keep], boxes[keep]

    left, top = int(crop_box[0]), int(crop_box[1])
    boxes = boxes + torch.tensor([left, top, left, top], device=boxes.device)
    masks = uncrop_masks(masks, crop_box, orig_height, orig_width)
    return mask_to_rle(masks), scores, boxes


def deduplicate_masks(
    rles: list[RLE], scores: torch.Tensor, boxes: torch.Tensor, crops_nms_thresh: float = 0.7
) -> tuple[list[torch.Tensor], torch.Tensor, list[RLE], torch.Tensor]:
    """
    Remove duplicate masks (from overlapping crops and neighbouring grid points) by box NMS.

    Args:
        rles (`list[dict]`): masks as RLEs, one per box.
        scores (`torch.Tensor` of shape `(N,)`): predicted IoU of each mask.
        boxes (`torch.Tensor` of shape `(N, 4)`): `[x0, y0, x1, y1]` of each mask.

    Returns:
        `(masks, scores, rles, boxes)` of the kept masks by decreasing score: masks as bool tensors `(height, width)`,
        scores `(K,)`, RLEs and boxes `(K, 4)`.
    """
    if len(rles) != len(scores) or len(scores) != len(boxes):
        raise ValueError(
            f"`all_masks` ({len(rles)}), `all_scores` ({len(scores)}) and `all_boxes` ({len(boxes)}) must have the "
            "same length."
        )
    keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), crops_nms_thresh)
    kept_rles = [rles[i] for i in keep.tolist()]
    return [rle_to_mask(rle) for rle in kept_rles], scores[keep], kept_rles, boxes[keep]


__all__ = [
    "batched_mask_to_box",
    "batched_nms",
    "box_iou",
    "build_point_grid",
    "compute_crop_boxes",
    "compute_stability_score",
    "deduplicate_masks",
    "filter_crop_masks",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "nms",
    "rle_to_mask",
    "uncrop_masks",
]
