"""`evaluate_referring_segmentation`: one encoding per image, full-resolution scoring, the package metric."""

import datasets
import numpy as np
import pytest
import torch

from transformers_esam_blip.data import mask_to_bool, synthetic_referring_dataset
from transformers_esam_blip.evaluation import evaluate_referring_segmentation, predict_referring, synthetic_breakdown
from transformers_esam_blip.metrics import compute_referring_metrics
from transformers_esam_blip.modeling_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.training import tiny_config, tiny_processor


@pytest.fixture(scope="module")
def tiny():
    processor = tiny_processor()
    torch.manual_seed(0)
    model = EsamBlipForPromptableSegmentation(tiny_config(processor, prompter_source="text")).eval()
    return model, processor


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return synthetic_referring_dataset(3, seed=3, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_matches_per_row_scoring(tiny, scenes):
    model, processor = tiny
    scores = evaluate_referring_segmentation(model, processor, scenes, max_texts_per_call=2, progress=False)
    predictions, targets, probabilities = [], [], []
    for row in scenes:
        masks, probs = predict_referring(model, processor, row["image"], [row["text"]])
        predictions.append(masks[0].numpy())
        targets.append(mask_to_bool(row["mask"]))
        probabilities.append(float(probs[0]))
        assert masks.shape[-2:] == targets[-1].shape  # the image's own size
    expected = compute_referring_metrics(predictions, targets, np.array(probabilities), scenes["match_label"])
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name
    assert scores["num_present"] + scores["num_absent"] == len(scenes)
    assert scores["num_present"] == sum(scenes["match_label"])


def test_errors(tiny, scenes):
    model, processor = tiny
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['mask'\]"):
        evaluate_referring_segmentation(model, processor, scenes.remove_columns("mask"))
    with pytest.raises(ValueError, match="text_prompt_mode"):
        evaluate_referring_segmentation(model, processor, scenes, text_prompt_mode="oracle")
    with pytest.raises(ValueError, match="max_texts_per_call"):
        evaluate_referring_segmentation(model, processor, scenes, max_texts_per_call=0)


def test_synthetic_breakdown_groups():
    rows = [  # scene 0: red circle, red square, blue circle; scene 1: a yellow triangle alone
        (0, "red", "circle", 1, 0.2, 0.9),
        (0, "red", "square", 1, 0.4, 0.8),
        (0, "blue", "circle", 1, 0.6, 0.7),
        (0, "green", "triangle", 0, 0.0, 0.1),  # its colour is in no object
        (0, "red", "triangle", 0, 0.0, 0.75),  # red is there, no triangle
        (0, "blue", "square", 0, 0.0, 0.95),  # blue and a square are there, on different objects
        (1, "yellow", "triangle", 1, 0.9, 0.6),
        (1, "green", "circle", 0, 0.0, 0.2),
    ]
    dataset = datasets.Dataset.from_dict(
        {name: [row[i] for row in rows] for i, name in enumerate(("scene_id", "colour", "shape", "match_label"))}
    )
    scores = synthetic_breakdown(dataset, [row[4] for row in rows], [row[5] for row in rows])
    assert scores["mean_iou_distinct"] == pytest.approx(0.9) and scores["num_distinct"] == 1
    assert scores["mean_iou_same_colour"] == pytest.approx(0.3) and scores["num_same_colour"] == 2
    assert scores["mean_iou_same_shape"] == pytest.approx(0.4) and scores["num_same_shape"] == 2
    assert scores["itm_roc_auc_colour_absent"] == 1.0 and scores["num_colour_absent"] == 2
    assert scores["itm_roc_auc_shape_absent"] == 0.5 and scores["num_shape_absent"] == 1
    assert scores["itm_roc_auc_both_present"] == 0.0 and scores["num_both_present"] == 1
    with pytest.raises(ValueError, match=r"one value per row of the dataset \(8\)"):
        synthetic_breakdown(dataset, [0.5] * 7, [0.5] * 8)
    with pytest.raises(ValueError, match=r"lacks \['colour'\]"):
        synthetic_breakdown(dataset.remove_columns("colour"), [0.5] * 8, [0.5] * 8)


def test_breakdown_in_evaluation(tiny, scenes):
    model, processor = tiny
    scores = evaluate_referring_segmentation(model, processor, scenes, progress=False, breakdown=True)
    plain = evaluate_referring_segmentation(model, processor, scenes, progress=False)
    assert {key: scores[key] for key in plain} == plain
    negatives = scores["num_colour_absent"] + scores["num_shape_absent"] + scores["num_both_present"]
    assert negatives == scores["num_absent"]
    assert scores["num_distinct"] <= scores["num_present"]
    with pytest.raises(ValueError, match="breakdown needs the columns"):
        evaluate_referring_segmentation(model, processor, scenes.remove_columns("shape"), breakdown=True)
