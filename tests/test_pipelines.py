"""`pipeline("mask-generation")` runs unchanged on EsamBlip models and returns masks at the original size."""

import numpy as np
import pytest
import torch
from conftest import tiny_sam_config
from PIL import Image
from transformers import pipeline

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipImageProcessor


@pytest.fixture
def generator():
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    return pipeline(
        "mask-generation", model=model, image_processor=EsamBlipImageProcessor(sam_image_size=64), device="cpu"
    )


@pytest.mark.parametrize("crops_n_layers", [0, 1])
def test_mask_generation_returns_masks_at_original_size(generator, crops_n_layers):
    image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    out = generator(
        image,
        points_per_batch=7,
        points_per_crop=4,
        crops_n_layers=crops_n_layers,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_bboxes_mask=True,
    )
    assert len(out["masks"]) >= 1
    assert len(out["masks"]) == len(out["scores"]) == len(out["bounding_boxes"])
    for mask in out["masks"]:
        assert tuple(mask.shape) == (40, 56)
    assert torch.as_tensor(out["scores"]).ndim == 1


def test_points_per_batch_does_not_change_the_result(generator):
    image = Image.fromarray((np.random.default_rng(1).random((30, 30, 3)) * 255).astype(np.uint8))
    kwargs = {"points_per_crop": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    whole = generator(image, points_per_batch=16, **kwargs)
    split = generator(image, points_per_batch=3, **kwargs)
    torch.testing.assert_close(torch.as_tensor(whole["scores"]), torch.as_tensor(split["scores"]), atol=1e-5, rtol=0)
    for a, b in zip(whole["masks"], split["masks"]):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
