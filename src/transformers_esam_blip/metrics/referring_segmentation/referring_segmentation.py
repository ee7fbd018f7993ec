"""`evaluate` metric for referring segmentation: mIoU, cumulative IoU, precision@0.5/0.7/0.9, ITM accuracy and AUC."""

# Self-contained (numpy, datasets, evaluate only) so that `evaluate.load(<this folder>)` works from a copy of it too.

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

PRECISION_THRESHOLDS = (0.5, 0.7, 0.9)

_DESCRIPTION = """
Referring segmentation: one predicted binary mask per (image, expression) pair against the reference mask of the
object the expression describes, and optionally the image-text match score against whether the object is present.
IoU metrics are over the present objects only (match label 1 when match labels are given, else a non-empty reference
mask): `mean_iou` averages the per-object IoU, `cumulative_iou` is the sum of intersections over the sum of unions
(large objects weigh more), `precision@t` is the fraction of present objects with IoU >= t. With match scores,
`itm_accuracy` compares `score >= threshold` with the match labels and `itm_roc_auc` is the rank-based area under the
ROC curve (NaN when only one class is present). A present object whose reference and prediction are both empty has IoU
1. Metrics without any present object are NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `(H, W)` arrays): predicted binary masks (bool or 0/1; non-zero is foreground).
    references (`list` of `(H, W)` arrays): reference masks, each the size of its prediction; empty for an absent
        object.
    match_scores (`list[float]`, *optional*): predicted match probabilities (e.g. BLIP ITM `softmax[:, 1]`).
    match_labels (`list[int]`, *optional*): 1 if the expression's object is in the image, 0 if not; defaults to
        whether the reference mask is non-empty.
    threshold (`float`, defaults to 0.5): a match score at or above it predicts a match.

    With `evaluate.load(path)`, pass `match_scores` / `match_labels` to `compute`; with `evaluate.load(path, "itm")`
    they are inputs like `predictions` (so `add_batch` takes them too).

Returns:
    `mean_iou`, `cumulative_iou`, `precision@0.5`, `precision@0.7`, `precision@0.9` and, with match scores,
    `itm_accuracy` and `itm_roc_auc` (floats).

Examples:
    >>> metric = evaluate.load("path/to/referring_segmentation")
    >>> metric.compute(predictions=[np.eye(2, dtype=bool)], references=[np.ones((2, 2), dtype=bool)])["mean_iou"]
    0.5
"""


def _binary_masks(masks: Sequence[Any], name: str) -> list[np.ndarray]:
    arrays = []
    for i, mask in enumerate(masks):
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"`{name}[{i}]` must be a 2-D (H, W) mask, got shape {array.shape}.")
        arrays.append(array != 0)
    return arrays


def _mask_pairs(pred_masks: Sequence[Any], target_masks: Sequence[Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boolean predicted and reference masks, checked to pair up one to one with equal shapes."""
    predictions = _binary_masks(pred_masks, "pred_masks")
    targets = _binary_masks(target_masks, "target_masks")
    if len(predictions) != len(targets):
        raise ValueError(f"Got {len(predictions)} predicted masks for {len(targets)} target masks.")
    for i, (prediction, target) in enumerate(zip(predictions, targets)):
        if prediction.shape != target.shape:
            raise ValueError(
                f"`pred_masks[{i}]` has shape {prediction.shape} but `target_masks[{i}]` has {target.shape}."
            )
    return predictions, targets


def _overlaps(predictions: list[np.ndarray], targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    intersections = np.array([(p & t).sum() for p, t in zip(predictions, targets)], dtype=np.float64)
    unions = np.array([(p | t).sum() for p, t in zip(predictions, targets)], dtype=np.float64)
    return intersections, unions


def _ious(intersections: np.ndarray, unions: np.ndarray) -> np.ndarray:
    # Both masks empty: nothing to find and nothing found, a perfect answer.
    return np.divide(intersections, unions, out=np.ones_like(unions), where=unions > 0)


def mask_ious(pred_masks: Sequence[Any], target_masks: Sequence[Any]) -> np.ndarray:
    """The IoU of each predicted mask with its reference (1.0 when both are empty), as `mean_iou` averages them."""
    return _ious(*_overlaps(*_mask_pairs(pred_masks, target_masks)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U; ties get their average rank). NaN with one class only."""
    num_positive = int(labels.sum())
    num_negative = len(labels) - num_positive
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_ranks = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = average_ranks[inverse][labels == 1].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def compute_referring_metrics(
    pred_masks: Sequence[Any],
    target_masks: Sequence[Any],
    match_probs: Sequence[float] | np.ndarray | None = None,
    match_labels: Sequence[int] | np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """
    Referring-segmentation metrics of `N` examples (see the module description for the definitions).

    Args:
        pred_masks: `N` predicted `(H_i, W_i)` masks (non-zero = foreground), or an array `[N, H, W]`.
        target_masks: `N` reference masks, each the size of its prediction.
        match_probs: `N` match probabilities; gives `itm_accuracy` and `itm_roc_auc`.
        match_labels: `N` 0/1 presence labels; defaults to `target non-empty`.
        threshold (`float`, defaults to 0.5): match probabilities at or above it predict a match.

    Returns:
        `dict[str, float]` with `mean_iou`, `cumulative_iou`, `precision@0.5`, `precision@0.7`, `precision@0.9`, and
        `itm_accuracy`, `itm_roc_auc` when `match_probs` is given.
    """
    predictions, targets = _mask_pairs(pred_masks, target_masks)
    if match_labels is None:
        labels = np.array([target.any() for target in targets], dtype=np.int64)
    else:
        labels = np.asarray(match_labels).astype(np.int64).reshape(-1)
        if len(labels) != len(targets) or not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"`match_labels` must hold {len(targets)} values in {{0, 1}}, got {len(labels)} with values "
                f"{sorted(set(labels.tolist()))}."
            )
    present = np.flatnonzero(labels == 1)
    intersections, unions = _overlaps([predictions[i] for i in present], [targets[i] for i in present])
    ious = _ious(intersections, unions)
    nan = float("nan")
    results = {
        "mean_iou": float(ious.mean()) if len(ious) else nan,
        "cumulative_iou": (float(intersections.sum() / unions.sum()) if unions.sum() else 1.0) if len(ious) else nan,
    }
    for t in PRECISION_THRESHOLDS:
        results[f"precision@{t}"] = float((ious >= t).mean()) if len(ious) else nan
    if match_probs is not None:
        scores = np.asarray(match_probs, dtype=np.float64).reshape(-1)
        if len(scores) != len(targets):
            raise ValueError(f"Got {len(scores)} `match_probs` for {len(targets)} masks.")
        results["itm_accuracy"] = float(((scores >= threshold).astype(np.int64) == labels).mean())
        results["itm_roc_auc"] = roc_auc(scores, labels)
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReferringSegmentation(evaluate.Metric):
    """Referring-segmentation metric; configurations `"default"` and `"itm"` (match scores and labels as inputs)."""

    def _info(self) -> evaluate.MetricInfo:
        mask = datasets.Sequence(datasets.Sequence(datasets.Value("uint8")))
        features = {"predictions": mask, "references": mask}
        if self.config_name == "itm":
            features.update(match_scores=datasets.Value("float64"), match_labels=datasets.Value("int64"))
        elif self.config_name != "default":
            raise ValueError(f"Configuration must be 'default' or 'itm', got {self.config_name!r}.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        match_scores: list[float] | None = None,
        match_labels: list[int] | None = None,
        threshold: float = 0.5,
    ) -> dict[str, float]:
        return compute_referring_metrics(predictions, references, match_scores, match_labels, threshold)


__all__ = ["PRECISION_THRESHOLDS", "ReferringSegmentation", "compute_referring_metrics", "mask_ious", "roc_auc"]
