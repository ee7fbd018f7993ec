"""`transformers.Trainer` glue: the best mask per example from the model's eval outputs, and `compute_metrics`."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers import EvalPrediction

from ..best_mask import select_best_masks
from .referring_segmentation.referring_segmentation import compute_referring_metrics

ArrayLike = np.ndarray | torch.Tensor


def find_segmentation_outputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """
    Find `pred_masks`, `iou_scores` and `itm_probability` in what `Trainer` passes on, found by shape since Trainer
    drops the names: it gives the model's output fields as a tuple in output order, loss and `None` fields left out,
    e.g. `(iou_scores, pred_masks, image_embeddings)` for point/box prompts, and with texts
    `(iou_scores, pred_masks, image_embeddings, prompt_points, prompt_labels, heatmap, enhanced_heatmap, gradcams,
    itm_probability, is_match, blip_image_embeds)`.

    Returns:
        `(pred_masks [B, Q, M, h, w], iou_scores [B, Q, M], itm_probability [B] or None)` as CPU tensors:
        `pred_masks` is the 5-D array, `iou_scores` the first array of shape `pred_masks.shape[:3]`,
        `itm_probability` the 1-D floating-point array (`is_match` is boolean).
    """
    arrays = [torch.as_tensor(value) for value in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
    pred_masks = next((array for array in arrays if array.ndim == 5), None)
    if pred_masks is None:
        raise ValueError(
            "No `pred_masks` (a 5-D [B, Q, M, h, w] array) among the model outputs, whose shapes are "
            f"{[tuple(array.shape) for array in arrays]}."
        )
    iou_scores = next((array for array in arrays if array.shape == pred_masks.shape[:3]), None)
    if iou_scores is None:
        raise ValueError(f"No `iou_scores` of shape {tuple(pred_masks.shape[:3])} among the model outputs.")
    itm_probability = next(
        (array for array in arrays if array.ndim == 1 and array.is_floating_point() and len(array) == len(pred_masks)),
        None,
    )
    return pred_masks, iou_scores, itm_probability


def best_masks(
    pred_masks: ArrayLike, iou_scores: ArrayLike, size: Sequence[int] | None = None, mask_threshold: float = 0.0
) -> torch.Tensor:
    """
    The mask of each example's first query with the highest predicted IoU, thresholded.

    Args:
        pred_masks (`[B, Q, M, h, w]`): mask logits.
        iou_scores (`[B, Q, M]`): predicted IoUs.
        size (`(H, W)`, *optional*): resize the chosen logits to this size first (bicubic, as EfficientSAM does).
        mask_threshold (`float`, defaults to 0.0): logits above it are foreground.

    Returns:
        `torch.Tensor` `[B, H, W]` (or `[B, h, w]`), bool.
    """
    pred_masks, iou_scores = torch.as_tensor(pred_masks), torch.as_tensor(iou_scores)
    logits = select_best_masks(pred_masks[:, 0], iou_scores[:, 0])[0].float()
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[:, None], size=tuple(size), mode="bicubic", align_corners=False)[:, 0]
    return logits > mask_threshold


def _split_labels(label_ids: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`labels [B, 1, H, W]` and, when Trainer has them (`label_names=["labels", "match_labels"]`), `match_labels`."""
    if isinstance(label_ids, (tuple, list)):
        masks, match_labels = torch.as_tensor(label_ids[0]), torch.as_tensor(label_ids[1])
    else:
        masks, match_labels = torch.as_tensor(label_ids), None
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"The mask labels must be [B, 1, H, W], got shape {tuple(masks.shape)}.")
    return masks[:, 0], match_labels


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> tuple[torch.Tensor, ...]:
    """
    `Trainer(preprocess_logits_for_metrics=...)`: keep, per batch, only the best mask (uint8 `[B, H, W]` at the
    labels' size, or the logits' without labels) and the match probability `[B]` when the model gives one, instead of every candidate's logits
    and the image embeddings (about 5 MB per example at 1024²) for the whole evaluation set.
    """
    pred_masks, iou_scores, itm_probability = find_segmentation_outputs(logits)
    size = None if labels is None else _split_labels(labels)[0].shape[-2:]
    masks = best_masks(pred_masks, iou_scores, size=size).to(torch.uint8)
    return (masks,) if itm_probability is None else (masks, itm_probability)


def make_compute_metrics(
    mask_threshold: float = 0.0, match_threshold: float = 0.5
) -> Callable[[EvalPrediction], dict[str, float]]:
    """
    A `compute_metrics` for `transformers.Trainer` on referring segmentation (see [`compute_referring_metrics`]).

    `eval_pred.predictions` is either the model's raw outputs (see [`find_segmentation_outputs`]; the best candidate
    of query 0 by predicted IoU, logits resized bicubically to the labels' size and thresholded at
    `mask_threshold`) or, recommended, what [`preprocess_logits_for_metrics`] made of them. `eval_pred.label_ids`
    is `labels [N, 1, H, W]`, or `(labels, match_labels [N])` with `label_names=["labels", "match_labels"]`
    (without match labels, an empty mask means absent).

    Args:
        mask_threshold (`float`, defaults to 0.0): logit threshold of the raw-output path.
        match_threshold (`float`, defaults to 0.5): match probabilities at or above it predict a match.

    Returns:
        `compute_metrics(eval_pred) -> dict` with `mean_iou`, `cumulative_iou`, `precision@0.5/0.7/0.9` and, when the
        model gives a match probability, `itm_accuracy` and `itm_roc_auc`.
    """

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        targets, match_labels = _split_labels(eval_pred.label_ids)
        predictions = eval_pred.predictions
        predictions = predictions if isinstance(predictions, (tuple, list)) else (predictions,)
        if any(np.ndim(array) == 5 for array in predictions):
            pred_masks, iou_scores, itm_probability = find_segmentation_outputs(predictions)
            masks = best_masks(pred_masks, iou_scores, size=targets.shape[-2:], mask_threshold=mask_threshold)
        else:
            masks = torch.as_tensor(predictions[0])
            itm_probability = torch.as_tensor(predictions[1]) if len(predictions) > 1 else None
        if masks.shape != targets.shape:
            raise ValueError(
                f"The predicted masks are {tuple(masks.shape)} but the labels are {tuple(targets.shape)} (after "
                "dropping the labels' channel axis)."
            )
        return compute_referring_metrics(
            masks.numpy(),
            targets.numpy(),
            match_probs=None if itm_probability is None else itm_probability.numpy(),
            match_labels=None if match_labels is None else match_labels.numpy(),
            threshold=match_threshold,
        )

    return compute_metrics


__all__ = ["best_masks", "find_segmentation_outputs", "make_compute_metrics", "preprocess_logits_for_metrics"]
