"""Referring-segmentation metrics: hand-made IoU cases, ITM accuracy / AUC, `evaluate.load` offline, Trainer glue."""

import itertools
import socket

import evaluate
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from transformers import EvalPrediction, Trainer, TrainingArguments

from transformers_esam_blip import EsamBlipImageProcessor, EsamBlipProcessor, EsamBlipSegmentationOutput
from transformers_esam_blip.data import EsamBlipDataCollator, synthetic_referring_dataset
from transformers_esam_blip.metrics import (
    REFERRING_METRIC_PATH,
    best_masks,
    compute_referring_metrics,
    find_segmentation_outputs,
    load_referring_metric,
    make_compute_metrics,
    preprocess_logits_for_metrics,
    roc_auc,
)
from transformers_esam_blip.processing_esam_blip import build_blip_tokenizer


def masks_from_rows(*rows: str) -> np.ndarray:
    """`"1100"`-style strings → one `(1, W)` mask per string."""
    return [np.array([[c == "1" for c in row]]) for row in rows]


# IoU 1/3 (intersection 1, union 3) and IoU 1 (2 of 2); an absent object (empty reference) predicted non-empty.
PREDICTIONS = masks_from_rows("1100", "0110", "1111")
REFERENCES = masks_from_rows("0110", "0110", "0000")


def test_iou_metrics_on_hand_made_masks():
    results = compute_referring_metrics(PREDICTIONS, REFERENCES)
    assert results["mean_iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert results["cumulative_iou"] == pytest.approx((1 + 2) / (3 + 2))
    assert results["precision@0.5"] == 0.5 and results["precision@0.7"] == 0.5 and results["precision@0.9"] == 0.5
    assert set(results) == {"mean_iou", "cumulative_iou", "precision@0.5", "precision@0.7", "precision@0.9"}


def test_match_labels_choose_the_present_objects():
    # Example 1 declared absent: only the IoU-1/3 example counts.
    results = compute_referring_metrics(PREDICTIONS, REFERENCES, match_labels=[1, 0, 0])
    assert results["mean_iou"] == pytest.approx(1 / 3) and results["cumulative_iou"] == pytest.approx(1 / 3)
    assert results["precision@0.5"] == 0.0
    # A present object with an empty reference, predicted empty, is a perfect answer.
    empty = masks_from_rows("000")
    assert compute_referring_metrics(empty, empty, match_labels=[1])["mean_iou"] == 1.0
    nothing_present = compute_referring_metrics(empty, empty)
    assert all(np.isnan(value) for value in nothing_present.values())


def test_itm_accuracy_and_auc():
    results = compute_referring_metrics(PREDICTIONS, REFERENCES, match_probs=[0.9, 0.4, 0.5])
    # Labels default to "reference non-empty": [1, 1, 0]; predictions >= 0.5: [1, 0, 1].
    assert results["itm_accuracy"] == pytest.approx(1 / 3)
    assert results["itm_roc_auc"] == pytest.approx(0.5)
    assert compute_referring_metrics(PREDICTIONS, REFERENCES, [0.9, 0.4, 0.5], threshold=0.6)[
        "itm_accuracy"
    ] == pytest.approx(2 / 3)


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=15) / 4  # many ties
        labels = rng.integers(0, 2, size=15)
        if labels.min() == labels.max():
            continue
        positives, negatives = scores[labels == 1], scores[labels == 0]
        pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)]
        assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pred_masks": PREDICTIONS[:2]}, ValueError, "Got 2 predicted masks for 3 target masks"),
        ({"target_masks": [np.zeros((1, 4)), np.zeros((2, 4)), np.zeros((1, 4))]}, ValueError, r"has shape \(1, 4\)"),
        ({"pred_masks": [np.zeros(4)] * 3}, ValueError, r"2-D \(H, W\) mask"),
        ({"match_labels": [1, 2, 0]}, ValueError, r"values in \{0, 1\}"),
        ({"match_labels": [1, 0]}, ValueError, "must hold 3 values"),
        ({"match_probs": [0.5]}, ValueError, "Got 1 `match_probs` for 3 masks"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, error, message):
    arguments = {"pred_masks": PREDICTIONS, "target_masks": REFERENCES, **kwargs}
    with pytest.raises(error, match=message):
        compute_referring_metrics(**arguments)


def test_evaluate_module_matches_the_function():
    expected = compute_referring_metrics(PREDICTIONS, REFERENCES, match_probs=[0.9, 0.4, 0.5])
    metric = load_referring_metric()
    assert metric.compute(predictions=PREDICTIONS, references=REFERENCES, match_scores=[0.9, 0.4, 0.5]) == expected
    itm = load_referring_metric(itm=True)
    for i in range(3):
        itm.add_batch(
            predictions=PREDICTIONS[i : i + 1],
            references=REFERENCES[i : i + 1],
            match_scores=[[0.9, 0.4, 0.5][i]],
            match_labels=[[1, 1, 0][i]],
        )
    assert itm.compute() == expected


def test_evaluate_loads_the_script_by_path_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for path in (REFERRING_METRIC_PATH, REFERRING_METRIC_PATH / "referring_segmentation.py"):
        metric = evaluate.load(str(path), experiment_id=f"offline-{path.suffix or 'folder'}")
        result = metric.compute(predictions=[np.eye(3)], references=[np.ones((3, 3))])
        assert result["mean_iou"] == pytest.approx(1 / 3)


def model_outputs(with_text: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """What Trainer passes on (output order, no loss) for 2 examples, with candidate 2 of example 0 the best."""
    torch.manual_seed(0)
    pred_masks = -torch.ones(2, 1, 3, 8, 8)
    pred_masks[0, 0, 2, :4] = 5.0  # best of example 0: top half
    pred_masks[1, 0, 0, :, :2] = 5.0  # best of example 1: left quarter
    iou_scores = torch.tensor([[[0.1, 0.2, 0.9]], [[0.8, 0.1, 0.3]]])
    outputs = (iou_scores, pred_masks, torch.randn(2, 4, 2, 2))
    if with_text:
        outputs += (
            torch.rand(2, 3, 2),  # prompt_points
            torch.ones(2, 3, dtype=torch.long),  # prompt_labels
            torch.rand(2, 3, 3),  # heatmap: same shape as nothing above
            torch.rand(2, 3, 3),  # enhanced_heatmap
            torch.rand(2, 9),  # gradcams
            torch.tensor([0.8, 0.3]),  # itm_probability
            torch.tensor([True, False]),  # is_match
            torch.rand(2, 10, 4),  # blip_image_embeds
        )
    labels = torch.zeros(2, 1, 8, 8)
    labels[0, 0, :4] = 1  # IoU 1
    labels[1, 0, :, :4] = 1  # IoU 1/2
    return outputs, labels


@pytest.mark.parametrize("with_text", [False, True])
def test_find_outputs_and_best_masks(with_text):
    outputs, _ = model_outputs(with_text)
    pred_masks, iou_scores, itm_probability = find_segmentation_outputs(outputs)
    assert pred_masks is outputs[1] and iou_scores is outputs[0]
    assert (itm_probability is None) != with_text
    best = best_masks(pred_masks, iou_scores)
    assert best.dtype == torch.bool and best[0, :4].all() and not best[0, 4:].any() and best[1].sum() == 16
    assert best_masks(pred_masks, iou_scores, size=(16, 16)).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="No `pred_masks`"):
        find_segmentation_outputs(outputs[:1])


@pytest.mark.parametrize("with_text", [False, True])
@pytest.mark.parametrize("preprocess", [False, True])
def test_compute_metrics_for_trainer(with_text, preprocess):
    outputs, labels = model_outputs(with_text)
    match_labels = torch.tensor([1, 0])
    predictions = preprocess_logits_for_metrics(outputs, (labels, match_labels)) if preprocess else outputs
    if preprocess:
        assert predictions[0].dtype == torch.uint8 and predictions[0].shape == (2, 8, 8)
    numpy = tuple(value.numpy() for value in predictions)
    results = make_compute_metrics()(
        EvalPrediction(predictions=numpy, label_ids=(labels.numpy(), match_labels.numpy()))
    )
    # Example 1 is declared absent, so only example 0 (IoU 1) counts.
    assert results["mean_iou"] == 1.0 and results["precision@0.9"] == 1.0
    if with_text:
        assert results["itm_accuracy"] == 1.0 and results["itm_roc_auc"] == 1.0
    else:
        assert "itm_accuracy" not in results
    # Without match labels, both references are non-empty: IoU 1 and 1/2.
    results = make_compute_metrics()(EvalPrediction(predictions=numpy, label_ids=labels.numpy()))
    assert results["mean_iou"] == pytest.approx(0.75) and results["cumulative_iou"] == pytest.approx(48 / 64)


def test_compute_metrics_errors():
    outputs, labels = model_outputs(False)
    compute_metrics = make_compute_metrics()
    with pytest.raises(ValueError, match=r"mask labels must be \[B, 1, H, W\]"):
        compute_metrics(EvalPrediction(predictions=tuple(o.numpy() for o in outputs), label_ids=labels[:, 0].numpy()))
    reduced = (np.zeros((2, 4, 4), dtype=np.uint8),)
    with pytest.raises(ValueError, match=r"predicted masks are \(2, 4, 4\) but the labels are \(2, 8, 8\)"):
        compute_metrics(EvalPrediction(predictions=reduced, label_ids=labels.numpy()))


class PerfectSegmenter(torch.nn.Module):
    """
    Returns the real output class with the target as the best of 3 candidates and a confident match probability, so
    that what is tested is Trainer's plumbing: the collator's batch in, `eval_pred` as Trainer builds it, the metrics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, labels, match_labels, **inputs) -> EsamBlipSegmentationOutput:
        batch = pixel_values.shape[0]
        target_logits = (labels * 2 - 1) * 10 * self.scale
        pred_masks = torch.cat([-target_logits, target_logits, -target_logits], dim=1)[:, None]
        iou_scores = torch.tensor([0.1, 0.9, 0.2]).expand(batch, 1, 3)
        itm_probability = 0.1 + 0.8 * match_labels.float()
        return EsamBlipSegmentationOutput(
            loss=pred_masks.sum() * 0,
            iou_scores=iou_scores,
            pred_masks=pred_masks,
            image_embeddings=torch.zeros(batch, 4, 2, 2),
            itm_probability=itm_probability,
            is_match=itm_probability >= 0.5,
        )


@pytest.mark.parametrize("preprocess", [False, True])
def test_trainer_evaluate_with_the_collator_and_metrics(tmp_path, preprocess):
    tokenizer = FIXTURES / "lavis_blip_itm" / "fixture_C" / "tokenizer"
    processor = EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64), tokenizer=build_blip_tokenizer(tokenizer))
    dataset = synthetic_referring_dataset(
        3,
        seed=0,
        absent_fraction=0.5,
        cache_dir=str(tmp_path / "data"),
        progress=False,
        image_size=48,
        min_side=8,
        max_side=16,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_eval_batch_size=4,
        remove_unused_columns=False,
        label_names=["labels", "match_labels"],
        report_to="none",
        use_cpu=True,
    )
    trainer = Trainer(
        model=PerfectSegmenter(),
        args=args,
        eval_dataset=dataset,
        data_collator=EsamBlipDataCollator(processor),
        compute_metrics=make_compute_metrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if preprocess else None,
    )
    metrics = trainer.evaluate()
    assert 0 < sum(dataset["match_label"]) < len(dataset)
    assert metrics["eval_mean_iou"] == 1.0 and metrics["eval_cumulative_iou"] == 1.0
    assert metrics["eval_precision@0.9"] == 1.0
    assert metrics["eval_itm_accuracy"] == 1.0 and metrics["eval_itm_roc_auc"] == 1.0
