"""Automatic mask generation helpers in plain torch: crop boxes, point grids, mask filtering, RLE and box NMS."""

import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import torch
from torch.nn import functional as F

from .prompts import check_finite, check_threshold

RLE = dict[str, Any]

# Largest prompt grid (points per crop times crops) accepted: a 1024x1024 grid. The grid tensors alone grow as its
# square (`points_per_crop=100000` would need 80 GB), and decoding a million points already takes hours on a CPU.
MAX_GRID_POINTS = 1024 * 1024
# How far below `stability_score_thresh` a mask's low-resolution stability score may lie and the mask still be
# upsampled for the exact full-resolution check. The gap between the two scores stays under 0.04 for 256x256 logits
# upsampled to 1024x1024 (up to 0.09 for 64x64 logits on 200x300 crops), so the margin keeps the kept set identical.
STABILITY_PREFILTER_MARGIN = 0.1
# Masks upsampled at once: 16 float32 masks of 1024x1024 are 64 MB.
_UPSAMPLE_CHUNK = 16


def no_mask_hint(
    pred_iou_thresh: float | None = None, stability_score_thresh: float | None = None, best_iou: float | None = None
) -> str:
    """The warning for a mask generation that kept no mask: which thresholds to lower (with their values if known)."""

    def setting(name: str, value: float | None, default: float) -> str:
        return f"`{name}` ({value:g})" if value is not None else f"`{name}` (default {default:g})"

    best = f" The best predicted IoU was {best_iou:.3g}." if best_iou is not None else ""
    return (
        f"No mask passed the filters.{best} Lower {setting('pred_iou_thresh', pred_iou_thresh, 0.88)} and/or "
        f"{setting('stability_score_thresh', stability_score_thresh, 0.95)}; 0 turns a filter off."
    )


def grid_points_per_layer(
    points_per_side: int, crop_n_layers: int = 0, crop_n_points_downscale_factor: int = 1, name: str = "points_per_crop"
) -> list[int]:
    """
    Points per side of the prompt grid of each crop layer (`points_per_side // factor**layer`), checked before anything
    is allocated: every layer needs at least one point, and the padded grid (the most points per crop times the
    number of crops) may hold at most [`MAX_GRID_POINTS`].

    Args:
        name (`str`): how the caller calls `points_per_side`, for the error messages.

    Returns:
        `list[int]`: points per side for layers `0..crop_n_layers`.
    """
    for what, value in ((name, points_per_side), ("crop_n_points_downscale_factor", crop_n_points_downscale_factor)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{what}` must be an int >= 1, got {value!r}.")
    if not isinstance(crop_n_layers, int) or isinstance(crop_n_layers, bool) or crop_n_layers < 0:
        raise ValueError(f"`crop_n_layers` must be an int >= 0, got {crop_n_layers!r}.")
    per_layer = [int(points_per_side / crop_n_points_downscale_factor**layer) for layer in range(crop_n_layers + 1)]
    if per_layer[-1] < 1:
        raise ValueError(
            f"`{name}={points_per_side}` with `crop_n_points_downscale_factor={crop_n_points_downscale_factor}` leaves "
            f"crop layer {per_layer.index(0)} a grid of 0 points; raise `{name}` or lower `crop_n_layers` or the factor."
        )
    num_crops = sum(4**layer for layer in range(crop_n_layers + 1))
    total = points_per_side**2 * num_crops
    if total > MAX_GRID_POINTS:
        raise ValueError(
            f"`{name}={points_per_side}` with `crop_n_layers={crop_n_layers}` asks for {total:,} grid points "
            f"({points_per_side}² per crop, {num_crops} crops), over the limit of {MAX_GRID_POINTS:,} "
            f"(`mask_generation_utils.MAX_GRID_POINTS`); the defaults are 32 points per side and no crop layers."
        )
    return per_layer


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


def mask_to_rle(masks: torch.Tensor, tensor_counts: bool = False) -> list[RLE]:
    """
    Uncompressed run-length encoding as pycocotools expects it: column-major order, counts alternate between runs of
    0 and runs of 1, starting with 0 (a leading count of 0 when the first pixel is set).

    Args:
        masks (`torch.Tensor` of shape `(num_masks, height, width)`): boolean masks.
        tensor_counts (`bool`, defaults to `False`): give the counts as int64 tensors rather than lists of ints. Inside
            the mask-generation pipeline they must be tensors: it walks every Python object of every step's output.

    Returns:
        `list[dict]`: one `{"size": [height, width], "counts": ...}` per mask.
    """
    num_masks, height, width = masks.shape
    if num_masks == 0:
        return []
    flat = masks.bool().transpose(1, 2).reshape(num_masks, height * width)
    mask_index, position = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=True)
    changes_per_mask = torch.bincount(mask_index, minlength=num_masks).tolist()
    start, end = position.new_zeros(1), position.new_full((1,), height * width)
    rles = []
    for changes, first_set in zip(torch.split(position + 1, changes_per_mask), flat[:, 0].tolist(), strict=True):
        counts = torch.diff(torch.cat([start, changes, end]))
        if first_set:
            counts = torch.cat([start, counts])
        rles.append({"size": [height, width], "counts": counts if tensor_counts else counts.tolist()})
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


def upsample_mask_logits(mask_logits: torch.Tensor, size: Any) -> torch.Tensor:
    """
    EfficientSAM's upsampling: low-resolution logits `(..., h, w)` resized straight to `size = (height, width)` with one
    bicubic interpolation (`align_corners=False`), in float32 (bicubic has no half-precision CPU kernel). Each mask is
    interpolated on its own, so upsampling a subset gives the same values as upsampling all.

    Returns:
        `torch.Tensor` of shape `(..., height, width)`, float32.
    """
    height, width = (int(v) for v in size)
    leading, low_res = mask_logits.shape[:-2], mask_logits.shape[-2:]
    upsampled = F.interpolate(
        mask_logits.float().reshape(1, -1, *low_res), size=(height, width), mode="bicubic", align_corners=False
    )
    return upsampled.reshape(*leading, height, width)


@dataclass
class DeferredMaskLogits:
    """
    Mask logits of one image or crop kept at low resolution until filtering has decided which to upsample: what the
    image processor's `post_process_masks` hands to `filter_masks` inside `pipeline("mask-generation")`.

    Args:
        logits (`torch.Tensor` of shape `(num_queries, num_masks, h, w)`): low-resolution logits.
        size (`tuple[int, int]`): `(height, width)` they upsample to.
    """

    logits: torch.Tensor
    size: tuple[int, int]

    def upsample(self, indices: torch.Tensor) -> torch.Tensor:
        """Upsample the masks at `indices` of the flattened `(num_queries * num_masks)` axis: `(K, height, width)`."""
        return upsample_mask_logits(self.logits.flatten(0, 1)[indices], self.size)


def _image_size(original_size: Any) -> tuple[int, int]:
    if isinstance(original_size, torch.Tensor):
        original_size = original_size.tolist()
    if len(original_size) != 2 or not all(isinstance(v, (int, float)) for v in original_size):
        raise ValueError(
            f"`original_size` must be one (height, width) pair, got {original_size!r}. pipeline('mask-generation') "
            "passes one pair per batch entry when called with batch_size > 1, and it then filters only the first "
            "entry's masks: call it with batch_size=1 and batch the prompts with `points_per_batch` instead."
        )
    return int(original_size[0]), int(original_size[1])


def check_filter_thresholds(
    pred_iou_thresh: float, stability_score_thresh: float, mask_threshold: float, stability_score_offset: float
) -> None:
    """The checks of [`filter_crop_masks`]' thresholds, for callers that want them before any compute."""
    check_threshold("pred_iou_thresh", pred_iou_thresh)
    check_threshold("stability_score_thresh", stability_score_thresh)
    check_finite("mask_threshold", mask_threshold)
    check_finite("stability_score_offset", stability_score_offset, minimum=0.0)


def filter_crop_masks(
    mask_logits: torch.Tensor | DeferredMaskLogits,
    iou_scores: torch.Tensor,
    original_size: Any,
    crop_box: Any,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    mask_threshold: float = 0.0,
    stability_score_offset: float = 1.0,
) -> tuple[list[RLE], torch.Tensor, torch.Tensor]:
    """
    Keep the masks of one crop whose predicted IoU and stability pass their thresholds (each test off at 0) and that
    are not cut by the crop's edge; return them placed in the whole image, run-length encoded.

    Given [`DeferredMaskLogits`], the predicted IoU and a low-resolution stability score (with
    [`STABILITY_PREFILTER_MARGIN`]) reject masks before upsampling; only the survivors are upsampled, and their
    stability is then checked at full resolution, so the kept masks are those of full-resolution logits.

    Args:
        mask_logits (`torch.Tensor` of shape `(num_queries, num_masks, crop_height, crop_width)`, or
            [`DeferredMaskLogits`]): logits at the crop's resolution, or low-resolution ones to upsample to it.
        iou_scores (`torch.Tensor` of shape `(num_queries, num_masks)`).
        original_size: `(height, width)` of the whole image.
        crop_box: `[x0, y0, x1, y1]` of the crop in the whole image.

    Returns:
        `(rles, scores, boxes)`: the kept masks as RLEs of the whole image (int64 tensor counts), their scores `(K,)`
        and their boxes `(K, 4)` int64 in whole-image pixels (inclusive, see [`batched_mask_to_box`]).
    """
    check_filter_thresholds(pred_iou_thresh, stability_score_thresh, mask_threshold, stability_score_offset)
    orig_height, orig_width = _image_size(original_size)
    deferred = isinstance(mask_logits, DeferredMaskLogits)
    logits = (mask_logits.logits if deferred else mask_logits).flatten(0, 1)
    iou_scores = iou_scores.flatten(0, 1).to(logits.device)
    if logits.shape[0] != iou_scores.shape[0]:
        raise ValueError(
            f"`masks` hold {logits.shape[0]} masks but `iou_scores` {iou_scores.shape[0]} scores; they must match."
        )
    candidates = torch.arange(len(iou_scores), device=logits.device)
    if pred_iou_thresh > 0.0:
        candidates = candidates[iou_scores > pred_iou_thresh]
    if deferred and stability_score_thresh > 0.0:
        low_res_stability = compute_stability_score(logits[candidates], mask_threshold, stability_score_offset)
        candidates = candidates[low_res_stability > stability_score_thresh - STABILITY_PREFILTER_MARGIN]

    kept_masks, kept_indices = [], []
    for chunk in candidates.split(_UPSAMPLE_CHUNK) if len(candidates) else ():
        chunk_logits = mask_logits.upsample(chunk) if deferred else logits[chunk]
        if stability_score_thresh > 0.0:
            stable = compute_stability_score(chunk_logits, mask_threshold, stability_score_offset)
            stable = stable > stability_score_thresh
            chunk, chunk_logits = chunk[stable], chunk_logits[stable]
        kept_masks.append(chunk_logits > mask_threshold)
        kept_indices.append(chunk)
    if not kept_masks:
        return [], iou_scores[:0], torch.zeros(0, 4, dtype=torch.int64, device=logits.device)
    masks = torch.cat(kept_masks)
    scores = iou_scores[torch.cat(kept_indices)]

    boxes = batched_mask_to_box(masks)
    keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_width, orig_height])
    scores, masks, boxes = scores[keep], masks[keep], boxes[keep]

    left, top = int(crop_box[0]), int(crop_box[1])
    boxes = boxes + torch.tensor([left, top, left, top], device=boxes.device)
    masks = uncrop_masks(masks, crop_box, orig_height, orig_width)
    return mask_to_rle(masks, tensor_counts=True), scores, boxes


def deduplicate_masks(
    rles: list[RLE], scores: torch.Tensor, boxes: torch.Tensor, crops_nms_thresh: float = 0.7
) -> tuple[list[torch.Tensor], torch.Tensor, list[RLE], torch.Tensor]:
    """
    Remove duplicate masks (from overlapping crops and neighbouring grid points) by box NMS.

    Args:
        rles (`list[dict]`): masks as RLEs, one per box (counts as lists or tensors).
        scores (`torch.Tensor` of shape `(N,)`): predicted IoU of each mask.
        boxes (`torch.Tensor` of shape `(N, 4)`): `[x0, y0, x1, y1]` of each mask.
        crops_nms_thresh (`float`, defaults to 0.7): box IoU above which the lower-scored mask is dropped.

    Returns:
        `(masks, scores, rles, boxes)` of the kept masks by decreasing score: masks as bool tensors `(height, width)`,
        scores `(K,)`, RLEs (counts as lists of ints, as pycocotools reads them) and boxes `(K, 4)`.
    """
    check_threshold("crops_nms_thresh", crops_nms_thresh)
    if len(rles) != len(scores) or len(scores) != len(boxes):
        raise ValueError(
            f"`all_masks` ({len(rles)}), `all_scores` ({len(scores)}) and `all_boxes` ({len(boxes)}) must have the "
            "same length."
        )
    keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), crops_nms_thresh)
    kept_rles = [rles[i] for i in keep.tolist()]
    masks = [rle_to_mask(rle) for rle in kept_rles]
    kept_rles = [
        {**rle, "counts": rle["counts"].tolist()} if isinstance(rle["counts"], torch.Tensor) else rle
        for rle in kept_rles
    ]
    return masks, scores[keep], kept_rles, boxes[keep]


__all__ = [
    "MAX_GRID_POINTS",
    "STABILITY_PREFILTER_MARGIN",
    "DeferredMaskLogits",
    "batched_mask_to_box",
    "batched_nms",
    "box_iou",
    "build_point_grid",
    "check_filter_thresholds",
    "compute_crop_boxes",
    "compute_stability_score",
    "deduplicate_masks",
    "filter_crop_masks",
    "grid_points_per_layer",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "nms",
    "no_mask_hint",
    "rle_to_mask",
    "uncrop_masks",
    "upsample_mask_logits",
]
