"""`compute_metrics` of the image-text matching Trainer: accuracy and ROC-AUC of the match probability."""

import numpy as np
import torch
from transformers import EvalPrediction

from ..metrics import roc_auc


def itm_compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """ITM accuracy (match probability >= 0.5) and ROC-AUC from the `itm_score` logits."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    probabilities = torch.as_tensor(logits).float().softmax(dim=-1)[:, 1].numpy()
    labels = np.asarray(eval_pred.label_ids).reshape(-1)
    return {
        "itm_accuracy": float(((probabilities >= 0.5) == labels).mean()),
        "itm_roc_auc": roc_auc(probabilities, labels),
    }


__all__ = ["itm_compute_metrics"]
