"""Referring-segmentation metrics: the `evaluate` module shipped with the package and the `Trainer` glue."""

from pathlib import Path
from typing import Any

import evaluate

from .referring_segmentation.referring_segmentation import (
    PRECISION_THRESHOLDS,
    compute_referring_metrics,
    mask_ious,
    roc_auc,
)
from .trainer_metrics import best_masks, find_segmentation_outputs, make_compute_metrics, preprocess_logits_for_metrics

# `evaluate.load` takes a folder holding `<folder name>.py`; it copies the script into its module cache and never
# goes to the network for a local path.
REFERRING_METRIC_PATH = Path(__file__).resolve().parent / "referring_segmentation"


def load_referring_metric(itm: bool = False, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """
    `evaluate.load` the referring-segmentation metric shipped in this package (offline).

    Args:
        itm (`bool`, defaults to `False`): load the `"itm"` configuration, whose inputs include `match_scores` and
            `match_labels` (so `add_batch` takes them); otherwise pass them to `compute`.
        load_kwargs: passed to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`).
    """
    return evaluate.load(str(REFERRING_METRIC_PATH), "itm" if itm else None, **load_kwargs)


__all__ = [
    "PRECISION_THRESHOLDS",
    "REFERRING_METRIC_PATH",
    "best_masks",
    "compute_referring_metrics",
    "find_segmentation_outputs",
    "load_referring_metric",
    "make_compute_metrics",
    "mask_ious",
    "preprocess_logits_for_metrics",
    "roc_auc",
]
