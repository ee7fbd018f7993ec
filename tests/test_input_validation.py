"""Bad tensors at the models' boundary: a clear error naming the argument, or a safe cast, never a deep torch error."""

import pytest
import torch
from test_fusion import tiny_joint_config

from transformers_esam_blip import EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation


@pytest.fixture(scope="module")
def segmenter():
    return EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()


@pytest.fixture(scope="module")
def matcher():
    return EsamBlipForImageTextMatching(tiny_joint_config()).eval()


POINTS = torch.full((1, 1, 1, 2), 20.0)
IDS = torch.tensor([[1, 5, 6, 3]])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pixel_values": torch.full((1, 3, 64, 64), float("nan"))}, ValueError, "`pixel_values` must be finite"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, TypeError, "`pixel_values` must be a floating-point tensor"),
        ({"pixel_values": torch.zeros(0, 3, 64, 64)}, ValueError, "`pixel_values` holds no image"),
        ({"pixel_values": torch.zeros(1, 3, 32, 32)}, ValueError, r"`pixel_values` must have shape \[batch, 3, 64, 64\]"),
        ({"image_embeddings": torch.full((1, 16, 8, 8), float("inf"))}, ValueError, "`image_embeddings` must be finite"),
        ({"image_embeddings": torch.zeros(1, 16, 4, 4)}, ValueError, r"`image_embeddings` must have shape \[batch, 16, 8, 8\]"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64), "multimask_output": torch.tensor([True, False])}, TypeError, "`multimask_output` must be a bool"),
    ],
)  # fmt: skip
def test_image_inputs(segmenter, kwargs, error, message):
    with pytest.raises(error, match=message):
        segmenter(**{"input_points": POINTS, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_ids": torch.tensor([[1, 10**6, 3]])}, ValueError, r"`input_ids` must hold token ids in \[0, 49\]"),
        ({"input_ids": torch.tensor([[1, -3, 3]])}, ValueError, r"`input_ids` must hold token ids in \[0, 49\]"),
        ({"input_ids": IDS.float()}, TypeError, "`input_ids` must hold integer token ids"),
        ({"blip_pixel_values": torch.zeros(1, 3, 16, 16)}, ValueError, r"`blip_pixel_values` must have shape \[batch, 3, 32, 32\]"),
        ({"blip_pixel_values": torch.zeros(1, 3, 48, 48)}, ValueError, r"`blip_pixel_values` must have shape \[batch, 3, 32, 32\]"),
        ({"blip_pixel_values": torch.full((1, 3, 32, 32), float("nan"))}, ValueError, "`blip_pixel_values` must be finite"),
    ],
)  # fmt: skip
def test_text_inputs(segmenter, kwargs, error, message):
    inputs = {
        "pixel_values": torch.zeros(1, 3, 64, 64),
        "blip_pixel_values": torch.zeros(1, 3, 32, 32),
        "input_ids": IDS,
    }
    with pytest.raises(error, match=message):
        segmenter(**{**inputs, **kwargs})


def test_other_float_precisions_are_cast_to_the_model_dtype(segmenter):
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = segmenter(pixel_values=pixel_values, input_points=POINTS).pred_masks
        for dtype in (torch.float16, torch.float64):
            got = segmenter(pixel_values=pixel_values.to(dtype), input_points=POINTS).pred_masks
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0.05, atol=1e-3)
        embeddings = segmenter.get_image_embeddings(pixel_values)
        half = segmenter(image_embeddings=embeddings.half(), input_points=POINTS).pred_masks
        assert half.dtype == torch.float32


def test_matching_model_checks_before_any_fusion(matcher):
    with pytest.raises(ValueError, match=r"`image_embeds` must have shape \[batch, 5, 32\]"):
        matcher.compute_gradcam(IDS, None, image_embeds=torch.zeros(1, 5, 31))
    with pytest.raises(ValueError, match=r"`input_ids` must hold token ids"):
        matcher(input_ids=torch.tensor([[1, 999, 3]]), blip_pixel_values=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"`blip_pixel_values` must have shape"):
        matcher.get_image_features(torch.zeros(1, 3, 31, 31))
