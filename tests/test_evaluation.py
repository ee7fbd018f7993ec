"""`evaluate_referring_segmentation`: one encoding per image, full-resolution scoring, the package metric."""

import numpy as np
import pytest
import torch

from transformers_esam_blip.data import mask_to_bool, synthetic_referring_dataset
from transformers_esam_blip.evaluation import evaluate_referring_segmentation, predict_referring
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
