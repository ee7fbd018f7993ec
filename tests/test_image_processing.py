"""EsamBlipImageProcessor: exact EfficientSAM/BLIP pixels, prompt rescaling and padding, errors, masks, AMG hooks."""

import json
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_sam_config
from torch.nn import functional as F
from transformers import AutoImageProcessor, pipeline

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.configuration_esam_blip import EsamBlipConfig
from transformers_esam_blip.image_processing_esam_blip import EsamBlipImageProcessor
from transformers_esam_blip.mask_generation_utils import (
    batched_mask_to_box,
    batched_nms,
    build_point_grid,
    compute_stability_score,
    mask_to_rle,
    nms,
    rle_to_mask,
)
from transformers_esam_blip.prompts import PADDING_COORDINATE, PromptLabel

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EFFICIENTSAM_FIXTURE = FIXTURES / "efficientsam" / "visible_vits_d1"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(height, width, channels), dtype=np.uint8)


def efficientsam_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """The original EfficientSAM `preprocess` on a `[B, 3, H, W]` float batch in [0, 1]."""
    resized = F.interpolate(image, (size, size), mode="bilinear")
    return (resized - torch.Tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.Tensor(IMAGENET_STD).view(1, 3, 1, 1)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """torchvision `ToTensor` of an HWC uint8 array: CHW float in [0, 1]."""
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


# ------------------------------------------------------------------------------------------------ pixels


def test_sam_pixels_match_efficientsam_preprocess() -> None:
    image = random_uint8(37, 53)
    processor = EsamBlipImageProcessor(sam_image_size=64)
    out = processor(image)
    expected = efficientsam_preprocess(to_tensor(image)[None], 64)
    assert out["pixel_values"].dtype == torch.float32
    assert torch.equal(out["pixel_values"], expected)
    assert out["original_sizes"].tolist() == [[37, 53]]
    assert out["reshaped_input_sizes"].tolist() == [[64, 64]]
    assert out["original_sizes"].dtype == torch.int64


def test_sam_pixels_on_fixture_image() -> None:
    image = PIL.Image.open(EFFICIENTSAM_FIXTURE / "image.png").convert("RGB")
    out = EsamBlipImageProcessor()(image)
    expected = efficientsam_preprocess(to_tensor(np.array(image))[None], 1024)
    assert out["pixel_values"].shape == (1, 3, 1024, 1024)
    assert torch.equal(out["pixel_values"], expected)


def test_batch_of_different_sizes() -> None:
    images = [random_uint8(20, 30, seed=1), random_uint8(41, 17, seed=2)]
    out = EsamBlipImageProcessor(sam_image_size=32, blip_image_size=24)(images)
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert out["blip_pixel_values"].shape == (2, 3, 24, 24)
    assert out["original_sizes"].tolist() == [[20, 30], [41, 17]]
    assert out["reshaped_input_sizes"].tolist() == [[32, 32], [32, 32]]
    for i, image in enumerate(images):
        assert torch.equal(out["pixel_values"][i], efficientsam_preprocess(to_tensor(image)[None], 32)[0])


@pytest.mark.parametrize(
    "convert",
    [
        PIL.Image.fromarray,
        lambda a: a,
        lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)),
        lambda a: torch.from_numpy(a).permute(2, 0, 1),
        lambda a: torch.from_numpy(a),
        lambda a: a.astype(np.float32) / np.float32(255),
        lambda a: to_tensor(a),
        lambda a: a.astype(np.int64),
    ],
    ids=["pil", "numpy_hwc", "numpy_chw", "torch_chw", "torch_hwc", "numpy_float", "torch_float", "numpy_int64"],
)
def test_input_forms_give_the_same_pixels(convert) -> None:
    image = random_uint8(19, 23)
    processor = EsamBlipImageProcessor(sam_image_size=16, blip_image_size=12)
    reference = processor(image)
    out = processor(convert(image))
    assert torch.equal(out["pixel_values"], reference["pixel_values"])
    assert torch.equal(out["blip_pixel_values"], reference["blip_pixel_values"])
    assert out["original_sizes"].tolist() == [[19, 23]]


def test_float64_input_is_taken_in_unit_range() -> None:
    image = random_uint8(10, 12)
    processor = EsamBlipImageProcessor(sam_image_size=8)
    out = processor(image.astype(np.float64) / 255)
    assert torch.allclose(out["pixel_values"], processor(image)["pixel_values"], atol=1e-6)


def test_gray_images_are_replicated_to_rgb() -> None:
    gray = random_uint8(15, 11, channels=1)
    rgb = np.repeat(gray, 3, axis=2)
    processor = EsamBlipImageProcessor(sam_image_size=8, blip_image_size=8)
    expected = processor(rgb)
    for gray_form in (gray, gray[..., 0], PIL.Image.fromarray(gray[..., 0], mode="L"), torch.from_numpy(gray[..., 0])):
        out = processor(gray_form)
        assert torch.equal(out["pixel_values"], expected["pixel_values"])
        assert torch.equal(out["blip_pixel_values"], expected["blip_pixel_values"])


def test_rgba_alpha_is_dropped() -> None:
    rgba = random_uint8(14, 9, channels=4)
    processor = EsamBlipImageProcessor(sam_image_size=8, blip_image_size=8)
    expected = processor(rgba[..., :3])
    for rgba_form in (rgba, PIL.Image.fromarray(rgba, mode="RGBA"), torch.from_numpy(rgba).permute(2, 0, 1)):
        out = processor(rgba_form)
        assert torch.equal(out["pixel_values"], expected["pixel_values"])
        assert torch.equal(out["blip_pixel_values"], expected["blip_pixel_values"])


def test_four_dimensional_batch() -> None:
    batch = np.stack([random_uint8(9, 10, seed=s) for s in range(3)])
    processor = EsamBlipImageProcessor(sam_image_size=8)
    out = processor(batch)
    assert out["pixel_values"].shape == (3, 3, 8, 8)
    assert torch.equal(out["pixel_values"][1], processor(batch[1])["pixel_values"][0])
    assert torch.equal(processor(torch.from_numpy(batch).permute(0, 3, 1, 2))["pixel_values"], out["pixel_values"])


def test_input_data_format_overrides_the_guess() -> None:
    image = random_uint8(3, 5, channels=3)
    processor = EsamBlipImageProcessor(sam_image_size=4)
    assert processor(image)["original_sizes"].tolist() == [[3, 5]]
    assert processor(image, input_data_format="channels_first")["original_sizes"].tolist() == [[5, 3]]
    with pytest.raises(ValueError, match="`input_data_format` must be"):
        processor(image, input_data_format="none")


def test_blip_pixels_match_lavis_eval_processor() -> None:
    image = random_uint8(45, 61)
    out = EsamBlipImageProcessor(sam_image_size=None, blip_image_size=32)(PIL.Image.fromarray(image))
    # LAVIS BlipImageEvalProcessor: Resize((s, s), BICUBIC) of the PIL image, ToTensor, Normalize(mean, std).
    resized = np.array(PIL.Image.fromarray(image).resize((32, 32), PIL.Image.BICUBIC))
    expected = (to_tensor(resized) - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert set(out) == {"blip_pixel_values", "original_sizes"}
    assert torch.equal(out["blip_pixel_values"][0], expected)


def test_processor_without_blip_or_sam_outputs() -> None:
    image = random_uint8(6, 7)
    assert "blip_pixel_values" not in EsamBlipImageProcessor(sam_image_size=8)(image)
    blip_only = EsamBlipImageProcessor(sam_image_size=None, blip_image_size=8)
    assert blip_only.size == {}
    with pytest.raises(ValueError, match="sam_image_size=None"):
        blip_only(image, input_points=[[[[1, 1]]]])
    with pytest.raises(ValueError, match="At least one"):
        EsamBlipImageProcessor(sam_image_size=None)


def test_return_tensors_numpy() -> None:
    out = EsamBlipImageProcessor(sam_image_size=8)(random_uint8(5, 5), input_points=[[[[1, 2]]]], return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and isinstance(out["input_points"], np.ndarray)
    with pytest.raises(ValueError, match="return_tensors"):
        EsamBlipImageProcessor(sam_image_size=8)(random_uint8(5, 5), return_tensors="tf")


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros(5, dtype=np.uint8), ValueError, "must have 2 .* or 3"),
        (np.zeros((1, 2, 3, 4, 3), dtype=np.uint8), ValueError, "must have 2 .* or 3"),
        (np.zeros((0, 4, 3), dtype=np.uint8), ValueError, "is empty"),
        (np.zeros((4, 4, 2), dtype=np.uint8), ValueError, "2 channels"),
        (np.zeros((6, 6, 5), dtype=np.uint8), ValueError, "5 channels"),
        (np.full((4, 4, 3), 1.5, dtype=np.float32), ValueError, r"must lie in \[0, 1\]"),
        (np.full((4, 4, 3), -0.1, dtype=np.float32), ValueError, r"must lie in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), ValueError, r"must lie in \[0, 1\]"),
        (np.full((4, 4, 3), 300, dtype=np.int64), ValueError, r"\[0, 255\]"),
        (np.zeros((4, 4, 3), dtype=bool), TypeError, "dtype"),
        (torch.zeros(3, 4, 4, dtype=torch.bool), TypeError, "dtype"),
        ("image.png", TypeError, "`images` must be a PIL.Image.Image"),
        (["image.png"], TypeError, "`images` must be a PIL.Image.Image"),
        ([np.zeros((4, 4, 3), np.uint8), 3], TypeError, r"`images\[1\]` must be"),
        ([], ValueError, "empty list"),
        (PIL.Image.new("F", (4, 4)), ValueError, "mode 'F'"),
        (PIL.Image.new("I;16", (4, 4)), ValueError, "mode 'I;16'"),
    ],
)
def test_image_errors(images, error, match) -> None:
    with pytest.raises(error, match=match):
        EsamBlipImageProcessor(sam_image_size=8)(images)


def test_pixel_limit() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=8, max_image_pixels=100)
    processor(random_uint8(10, 10))
    with pytest.raises(ValueError, match="max_image_pixels`=100"):
        processor(random_uint8(10, 11))
    with pytest.raises(ValueError, match="max_image_pixels`=100"):
        processor(PIL.Image.new("RGB", (11, 10)))
    EsamBlipImageProcessor(sam_image_size=8, max_image_pixels=None)(random_uint8(10, 11))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sam_image_size": 0}, "sam_image_size"),
        ({"blip_image_size": 1.5}, "blip_image_size"),
        ({"max_num_points": 0}, "max_num_points"),
        ({"max_image_pixels": -1}, "max_image_pixels"),
        ({"image_std": (0.2, 0.0, 0.2)}, "image_std"),
        ({"blip_image_mean": (0.5, 0.5)}, "blip_image_mean"),
        ({"size": {"height": 512, "width": 512}}, "sam_image_size"),
    ],
)
def test_init_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        EsamBlipImageProcessor(**kwargs)


# ----------------------------------------------------------------------------------------------- prompts


def test_points_and_boxes_are_rescaled_per_axis() -> None:
    images = [random_uint8(50, 200, seed=1), random_uint8(300, 40, seed=2)]
    out = EsamBlipImageProcessor(sam_image_size=64)(
        images,
        input_points=[[[[100, 25]]], [[[10, 150]]]],
        input_boxes=[[[20, 5, 180, 45]], [[0, 30, 40, 300]]],
    )
    assert out["input_points"].dtype == torch.float32 and out["input_boxes"].dtype == torch.float32
    assert out["input_labels"].dtype == torch.int64
    assert out["input_points"].tolist() == [[[[100 * 64 / 200, 25 * 64 / 50]]], [[[10 * 64 / 40, 150 * 64 / 300]]]]
    expected_boxes = [[[20 * 64 / 200, 5 * 64 / 50, 180 * 64 / 200, 45 * 64 / 50]], [[0, 30 * 64 / 300, 64, 64]]]
    assert torch.allclose(out["input_boxes"], torch.tensor(expected_boxes))
    assert out["input_labels"].tolist() == [[[1]], [[1]]]


def test_prompts_match_efficientsam_rescaling() -> None:
    from safetensors.torch import load_file

    meta = json.loads((EFFICIENTSAM_FIXTURE / "meta.json").read_text())
    reference = load_file(EFFICIENTSAM_FIXTURE / "reference_outputs.safetensors")
    height, width = meta["image_hw"]
    processor = EsamBlipImageProcessor()
    prompts = processor.preprocess_prompts(
        [(height, width)],
        input_points=[[query["points"] for query in meta["queries"]]],
        input_labels=[[query["labels"] for query in meta["queries"]]],
    )
    # EfficientSAM's get_rescaled_pts applied to the prompts the original model received.
    points = reference["input_points"]
    expected = torch.stack(
        [
            torch.where(points[..., 0] >= 0, points[..., 0] * 1024 / width, -1.0),
            torch.where(points[..., 1] >= 0, points[..., 1] * 1024 / height, -1.0),
        ],
        dim=-1,
    )
    assert torch.equal(prompts["input_points"], expected)
    assert torch.equal(prompts["input_labels"], reference["input_labels"].long())


def test_ragged_prompts_are_padded() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=100)
    out = processor.preprocess_prompts(
        [(100, 100), (50, 100)],
        input_points=[[[[10, 10]], [[20, 20], [30, 30], [40, 40]]], [[[50, 25], [60, 25]]]],
        input_labels=[[[1], [1, 0, 1]], [[0, 1]]],
    )
    assert out["input_points"].shape == (2, 2, 3, 2)
    assert out["input_points"][0, 0].tolist() == [[10, 10], [-1, -1], [-1, -1]]
    assert out["input_points"][0, 1].tolist() == [[20, 20], [30, 30], [40, 40]]
    assert out["input_points"][1, 0].tolist() == [[50, 50], [60, 50], [-1, -1]]
    assert out["input_points"][1, 1].tolist() == [[-1, -1]] * 3
    assert out["input_labels"].tolist() == [[[1, -1, -1], [1, 0, 1]], [[0, 1, -1], [-1, -1, -1]]]


def test_ragged_boxes_are_padded_and_paired_with_points() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=10)
    out = processor.preprocess_prompts(
        [(10, 10), (10, 10)],
        input_points=[[[[1, 1]], [[2, 2]]], [[[3, 3]]]],
        input_boxes=[[[0, 0, 5, 5], [1, 1, 6, 6]], [[2, 2, 7, 7]]],
    )
    assert out["input_boxes"].tolist() == [[[0, 0, 5, 5], [1, 1, 6, 6]], [[2, 2, 7, 7], [-1, -1, -1, -1]]]
    assert out["input_labels"].tolist() == [[[1], [1]], [[1], [-1]]]
    boxes_only = processor.preprocess_prompts([(10, 10), (10, 10)], input_boxes=[[], [[2, 2, 7, 7]]])
    assert set(boxes_only) == {"input_boxes"}
    assert boxes_only["input_boxes"].tolist() == [[[-1, -1, -1, -1]], [[2, 2, 7, 7]]]


def test_array_prompts_equal_nested_lists() -> None:
    points = [[[[5.0, 6.0], [7.0, 8.0]]], [[[1.0, 2.0], [0.0, 0.0]]]]
    labels = [[[1, 0]], [[1, -1]]]
    boxes = [[[1.0, 1.0, 9.0, 9.0]], [[0.0, 0.0, 3.0, 4.0]]]
    processor = EsamBlipImageProcessor(sam_image_size=32)
    sizes = [(10, 20), (10, 10)]
    expected = processor.preprocess_prompts(sizes, points, labels, boxes)
    for convert in (np.array, torch.tensor):
        out = processor.preprocess_prompts(torch.tensor(sizes), convert(points), convert(labels), convert(boxes))
        for key in expected:
            assert torch.equal(out[key], expected[key])


def test_padding_points_in_input_are_dropped() -> None:
    out = EsamBlipImageProcessor(sam_image_size=10).preprocess_prompts(
        [(10, 10)], input_points=[[[[5, 5], [500, -3]], [[-1, -1]]]], input_labels=[[[1, -1], [-1]]]
    )
    assert out["input_points"].tolist() == [[[[5, 5]], [[-1, -1]]]]
    assert out["input_labels"].tolist() == [[[1], [-1]]]


def test_long_queries_are_truncated_with_a_warning() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=10, max_num_points=3)
    points = [[[[i, i] for i in range(5)], [[1, 1]]]]
    with pytest.warns(UserWarning, match=r"\[0\]\[0\] \(5 points\).*max_num_points=3"):
        out = processor.preprocess_prompts([(10, 10)], input_points=points)
    assert out["input_points"].shape == (1, 2, 3, 2)
    assert out["input_points"][0, 0].tolist() == [[0, 0], [1, 1], [2, 2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = processor.preprocess_prompts(
            [(10, 10)], input_points=[[[[1, 1], [9, 9], [2, 2], [3, 3], [4, 4]]]], input_labels=[[[1, -1, 1, -1, 0]]]
        )
    assert out["input_points"].tolist() == [[[[1, 1], [2, 2], [4, 4]]]]
    assert out["input_labels"].tolist() == [[[1, 1, 0]]]


def test_box_corners_count_towards_max_num_points() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=10, max_num_points=4)
    with pytest.warns(UserWarning, match=r"more than 2 points \(max_num_points=4 minus 2 for the box corners\)"):
        out = processor.preprocess_prompts(
            [(10, 10)], input_points=[[[[1, 1], [2, 2], [3, 3]]]], input_boxes=[[[0, 0, 5, 5]]]
        )
    assert out["input_points"].tolist() == [[[[1, 1], [2, 2]]]]
    with pytest.raises(ValueError, match="no room for points"):
        EsamBlipImageProcessor(sam_image_size=10, max_num_points=2).preprocess_prompts(
            [(10, 10)], input_points=[[[[1, 1]]]], input_boxes=[[[0, 0, 5, 5]]]
        )


@pytest.mark.parametrize(
    ("prompts", "error", "match"),
    [
        ({"input_points": [[[1, 1]]]}, TypeError, r"`input_points\[0\]\[0\]\[0\]` must be a list of coordinates"),
        ({"input_points": [[[[1, 1, 1]]]]}, ValueError, r"must hold 2 coordinates"),
        ({"input_points": [[[["a", 1]]]]}, TypeError, r"must hold numbers, got str"),
        ({"input_points": torch.zeros(1, 1, 2)}, ValueError, r"`input_points` must be 4-dimensional"),
        ({"input_points": "points"}, TypeError, r"`input_points` must be a nested list"),
        ({"input_points": [[[[1, 1]]], [[[1, 1]]]]}, ValueError, r"prompts for 2 images but 1 images"),
        ({"input_points": [[[]]]}, ValueError, r"empty query"),
        ({"input_points": [[]]}, ValueError, r"no query"),
        ({"input_points": [[[[21, 1]]]]}, ValueError, r"outside image 0 .*0 <= x <= 20"),
        ({"input_points": [[[[1, -0.5]]]]}, ValueError, r"outside image 0 .*0 <= y <= 10"),
        ({"input_points": [[[[1, float("nan")]]]]}, ValueError, r"outside image 0"),
        ({"input_points": [[[[1, 1]]]], "input_labels": [[[4]]]}, ValueError, r"`input_labels\[0\]\[0\]\[0\]` is 4"),
        ({"input_points": [[[[1, 1]]]], "input_labels": [[[0.5]]]}, ValueError, r"is 0.5; labels must be one of"),
        ({"input_points": [[[[1, 1]]]], "input_labels": [[[1, 1]]]}, ValueError, r"has 2 labels but .* has 1 points"),
        ({"input_points": [[[[1, 1]]]], "input_labels": [[[1], [1]]]}, ValueError, r"has 2 queries but .* has 1"),
        ({"input_points": [[[[1, 1]]]], "input_labels": torch.ones(1, 1)}, ValueError, r"must be 3-dimensional"),
        ({"input_labels": [[[1]]]}, ValueError, r"without `input_points`"),
        ({"input_boxes": [[[5, 1, 4, 2]]]}, ValueError, r"x1 <= x2 and y1 <= y2"),
        ({"input_boxes": [[[1, 5, 4, 2]]]}, ValueError, r"x1 <= x2 and y1 <= y2"),
        ({"input_boxes": [[[1, 1, 21, 2]]]}, ValueError, r"outside image 0 .*\[0, 20\] x \[0, 10\]"),
        ({"input_boxes": [[[1, 1, 2]]]}, ValueError, r"must hold 4 coordinates"),
        ({"input_boxes": [[1, 1, 2, 2]]}, TypeError, r"`input_boxes\[0\]\[0\]` must be a list of coordinates"),
        ({"input_boxes": [[[1, 1, 2, 2]], [[1, 1, 2, 2]]]}, ValueError, r"prompts for 2 images but 1 images"),
        (
            {"input_points": [[[[1, 1]], [[2, 2]]]], "input_boxes": [[[1, 1, 2, 2]]]},
            ValueError,
            r"`input_boxes` has \[1\] queries per image but `input_points` has \[2\]",
        ),
    ],
)
def test_prompt_errors(prompts, error, match) -> None:
    processor = EsamBlipImageProcessor(sam_image_size=16)
    with pytest.raises(error, match=match):
        processor(random_uint8(10, 20), **prompts)


# ------------------------------------------------------------------------------------------------- masks


def test_post_process_masks_is_one_bicubic_resize_then_threshold() -> None:
    logits = torch.randn(2, 3, 3, 16, 16)
    sizes = [(20, 30), (7, 5)]
    processor = EsamBlipImageProcessor(sam_image_size=64)
    masks = processor.post_process_masks(logits, torch.tensor(sizes), torch.tensor([[64, 64]] * 2))
    raw = processor.post_process_masks(logits, sizes, mask_threshold=0.3, binarize=False)
    shifted = processor.post_process_masks(list(logits.numpy()), sizes, mask_threshold=0.3)
    for i, size in enumerate(sizes):
        expected = F.interpolate(logits[i], size, mode="bicubic", align_corners=False)
        assert masks[i].dtype == torch.bool and masks[i].shape == (3, 3, *size)
        assert torch.equal(masks[i], expected > 0)
        assert raw[i].dtype == torch.float32 and torch.equal(raw[i], expected)
        assert torch.equal(shifted[i], expected > 0.3)


def test_post_process_masks_reproduces_the_original_full_resolution_masks() -> None:
    from safetensors.torch import load_file

    reference = load_file(EFFICIENTSAM_FIXTURE / "reference_outputs.safetensors")
    height, width = json.loads((EFFICIENTSAM_FIXTURE / "meta.json").read_text())["image_hw"]
    masks = EsamBlipImageProcessor().post_process_masks(reference["low_res_logits"], [(height, width)])[0]
    best = reference["iou_predictions"][0].argmax(-1)
    chosen = masks[torch.arange(len(best)), best]
    assert torch.equal(chosen.to(torch.uint8), reference["best_mask_full_res"][0])


def test_post_process_masks_errors() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=64)
    with pytest.raises(ValueError, match="max_hole_area"):
        processor.post_process_masks(torch.zeros(1, 1, 1, 4, 4), [(8, 8)], max_hole_area=10)
    with pytest.raises(ValueError, match=r"masks for 3 images \(or texts\) but 2 `original_sizes`"):
        processor.post_process_masks(torch.zeros(3, 1, 1, 4, 4), [(8, 8), (9, 9)])
    with pytest.raises(ValueError, match=r"`original_sizes` must hold \(height, width\) pairs, got \[\[8, 8, 3\]\]"):
        processor.post_process_masks(torch.zeros(1, 1, 1, 4, 4), [[8, 8, 3]])


def test_post_process_masks_broadcasts_one_size_to_every_text() -> None:
    # Several texts prompting one image put the texts on the batch axis: one original size serves them all.
    logits = torch.randn(3, 1, 3, 16, 16)
    processor = EsamBlipImageProcessor(sam_image_size=64)
    masks = processor.post_process_masks(logits, torch.tensor([[20, 30]]))
    assert len(masks) == 3
    for text_logits, text_masks in zip(logits, masks):
        assert torch.equal(text_masks, F.interpolate(text_logits, (20, 30), mode="bicubic", align_corners=False) > 0)


# ------------------------------------------------------------------------------------ saving and loading


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    processor = EsamBlipImageProcessor(
        sam_image_size=512, blip_image_size=None, max_num_points=4, max_image_pixels=None, image_mean=(0.1, 0.2, 0.3)
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["blip_image_size"] is None and saved["max_image_pixels"] is None
    reloaded = EsamBlipImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.size == {"height": 512, "width": 512}
    assert reloaded.image_mean == (0.1, 0.2, 0.3)
    assert EsamBlipImageProcessor.from_dict(processor.to_dict()).to_dict() == processor.to_dict()
    overridden = EsamBlipImageProcessor.from_pretrained(tmp_path, blip_image_size=384)
    assert overridden.blip_image_size == 384 and overridden.max_num_points == 4


def test_auto_image_processor_registration(tmp_path: Path) -> None:
    AutoImageProcessor.register(EsamBlipConfig, EsamBlipImageProcessor, exist_ok=True)
    EsamBlipImageProcessor(blip_image_size=384).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, EsamBlipImageProcessor)
    assert loaded.blip_image_size == 384
    assert loaded.model_input_names == EsamBlipImageProcessor.model_input_names


def test_pixel_settings_are_saved_and_overridden_by_from_pretrained(tmp_path: Path) -> None:
    processor = EsamBlipImageProcessor(sam_image_size=16, blip_image_size=8)
    assert (processor.do_resize, processor.do_rescale, processor.do_normalize) == (True, True, True)
    assert processor.rescale_factor == 1 / 255
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert {key: saved[key] for key in ("do_resize", "do_rescale", "rescale_factor", "do_normalize")} == {
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
    }
    assert EsamBlipImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    image = random_uint8(13, 17)
    raw = EsamBlipImageProcessor.from_pretrained(tmp_path, do_normalize=False)
    assert raw.do_normalize is False and raw.to_json_string() != processor.to_json_string()
    expected = F.interpolate(to_tensor(image)[None], (16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(raw(image)["pixel_values"], expected)
    raw.save_pretrained(tmp_path / "raw")
    assert EsamBlipImageProcessor.from_pretrained(tmp_path / "raw").do_normalize is False
    # Configs saved before the flags existed load with the defaults, which reproduce the originals.
    for key in ("do_resize", "do_rescale", "rescale_factor", "do_normalize"):
        del saved[key]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    assert EsamBlipImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def test_per_call_overrides_leave_the_stored_settings_alone() -> None:
    image = random_uint8(13, 17)
    processor = EsamBlipImageProcessor(sam_image_size=16, blip_image_size=8)
    reference = processor(image)
    resized = F.interpolate(to_tensor(image)[None], (16, 16), mode="bilinear", align_corners=False)
    unnormalized = processor(image, do_normalize=False)
    assert torch.equal(unnormalized["pixel_values"], resized)
    blip_resized = to_tensor(np.array(PIL.Image.fromarray(image).resize((8, 8), PIL.Image.BICUBIC)))
    assert torch.equal(unnormalized["blip_pixel_values"][0], blip_resized)
    unrescaled = processor(image, do_rescale=False, do_normalize=False)
    torch.testing.assert_close(unrescaled["pixel_values"], resized * 255, rtol=1e-5, atol=1e-4)
    halved = processor(image, rescale_factor=0.5 / 255, do_normalize=False)["pixel_values"]
    torch.testing.assert_close(halved, resized / 2)
    shifted = processor(image, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), blip_image_std=[2, 2, 2])
    assert torch.equal(shifted["pixel_values"], resized)
    assert torch.equal(processor(image, do_resize=None, image_mean=None)["pixel_values"], reference["pixel_values"])
    # Floats are taken as already rescaled, whatever `do_rescale` says.
    floats = to_tensor(image)
    assert torch.equal(processor(floats, do_rescale=False)["pixel_values"], reference["pixel_values"])
    assert processor.to_dict() == EsamBlipImageProcessor(sam_image_size=16, blip_image_size=8).to_dict()
    assert torch.equal(processor(image)["pixel_values"], reference["pixel_values"])


def test_do_resize_false_takes_images_at_the_input_size() -> None:
    square = random_uint8(16, 16)
    sam_only = EsamBlipImageProcessor(sam_image_size=16)
    # A same-size bilinear resize is the identity, so both paths agree on a 16 x 16 image.
    assert torch.equal(sam_only(square, do_resize=False)["pixel_values"], sam_only(square)["pixel_values"])
    blip_only = EsamBlipImageProcessor(sam_image_size=None, blip_image_size=16)
    assert torch.equal(blip_only(square, do_resize=False)["blip_pixel_values"], blip_only(square)["blip_pixel_values"])
    with pytest.raises(ValueError, match=r"`images\[1\]` is 16x15, but with `do_resize=False` .* 16x16"):
        sam_only([square, random_uint8(16, 15)], do_resize=False)
    with pytest.raises(ValueError, match="blip_image_size"):
        EsamBlipImageProcessor(sam_image_size=16, blip_image_size=8, do_resize=False)(square)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"do_resize": 1}, TypeError, "`do_resize` must be a bool, got int"),
        ({"do_rescale": "no"}, TypeError, "`do_rescale` must be a bool, got str"),
        ({"do_normalize": 0.0}, TypeError, "`do_normalize` must be a bool"),
        ({"rescale_factor": "1/255"}, TypeError, "`rescale_factor` must be a number"),
        ({"rescale_factor": True}, TypeError, "`rescale_factor` must be a number"),
        ({"rescale_factor": 0}, ValueError, "`rescale_factor` must be a positive"),
        ({"rescale_factor": float("nan")}, ValueError, "`rescale_factor` must be a positive"),
        ({"image_mean": 0.5}, TypeError, "`image_mean` must be a sequence of 3 numbers"),
        ({"blip_image_std": (1.0, 0.0, 1.0)}, ValueError, "`blip_image_std` must hold 3 positive values"),
        ({"image_std": ["a", "b", "c"]}, TypeError, "`image_std` must be a sequence of 3 numbers"),
        ({"image_mean": [0.5, float("nan"), 0.5]}, ValueError, "`image_mean` must hold 3 values .*all finite"),
        ({"image_std": [1.0, float("inf"), 1.0]}, ValueError, "`image_std` must hold 3 positive values .*all finite"),
    ],
)
def test_bad_pixel_settings(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        EsamBlipImageProcessor(sam_image_size=8, blip_image_size=8)(random_uint8(5, 5), **kwargs)
    with pytest.raises(error, match=match):
        EsamBlipImageProcessor(sam_image_size=8, blip_image_size=8, **kwargs)


def test_unknown_keyword_arguments_raise_type_errors() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=8)
    for call in (processor, processor.preprocess):
        with pytest.raises(TypeError, match=r"unexpected keyword arguments \['do_center_crop', 'sizes'\]"):
            call(random_uint8(5, 5), sizes=8, do_center_crop=True)
        with pytest.raises(TypeError, match="'max_num_points'"):
            call(random_uint8(5, 5), max_num_points=2)


def test_model_input_names_cover_every_output() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=16, blip_image_size=8)
    out = processor(
        random_uint8(10, 20),
        input_points=[[[[1, 2]]]],
        input_boxes=[[[1, 1, 5, 5]]],
        input_masks=[[np.zeros((10, 20), dtype=bool)]],
    )
    assert set(out) == set(processor.model_input_names)
    assert processor.model_input_names[:2] == ["pixel_values", "blip_pixel_values"]


def test_prompt_padding_and_grid_labels_use_the_prompt_vocabulary() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=16)
    out = processor(random_uint8(10, 20), input_points=[[[[1, 2], [3, 4]], [[5, 6]]]], input_labels=[[[1, 0], [1]]])
    assert out["input_labels"][0, 1, 1] == PromptLabel.PADDING
    assert out["input_points"][0, 1, 1].tolist() == [PADDING_COORDINATE] * 2
    *_, grid_labels = processor.generate_crop_boxes(random_uint8(10, 20), target_size=16, points_per_crop=2)
    assert (grid_labels == PromptLabel.FOREGROUND).all()
    frame_points = torch.tensor([[[8.0, 8.0], [PADDING_COORDINATE, PADDING_COORDINATE]]])
    back = processor.post_process_points(frame_points, [(10, 20)])[0]
    assert back.tolist() == [[10.0, 5.0], [PADDING_COORDINATE, PADDING_COORDINATE]]


@pytest.mark.parametrize("masks", ["logits", None, [[[0.0, 1.0], [1.0, 0.0]]], [torch.zeros(1, 1, 4, 4), "x"]])
def test_post_process_masks_rejects_non_arrays_with_a_type_error(masks) -> None:
    with pytest.raises(TypeError, match=r"`masks(\[\d\])?` must be a torch tensor"):
        EsamBlipImageProcessor(sam_image_size=8).post_process_masks(masks, [(8, 8)])


# -------------------------------------------------------------------------------- mask-generation hooks


def reference_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """Brute-force greedy NMS over Python floats."""

    def iou(a, b):
        inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = inter_w * inter_h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_matches_brute_force(threshold: float) -> None:
    generator = torch.Generator().manual_seed(int(threshold * 10))
    corners = torch.rand(60, 2, generator=generator) * 50
    sizes = torch.rand(60, 2, generator=generator) * 30 + 1
    boxes = torch.cat([corners, corners + sizes], dim=1).double()
    scores = torch.rand(60, generator=generator).double()
    kept = nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == reference_nms(boxes.tolist(), scores.tolist(), threshold)


def test_batched_nms_keeps_categories_apart() -> None:
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand(40, 2, generator=generator) * 20
    boxes = torch.cat([corners, corners + 10], dim=1).double()
    scores = torch.rand(40, generator=generator).double()
    categories = torch.randint(0, 3, (40,), generator=generator)
    kept = set(batched_nms(boxes, scores, categories, 0.5).tolist())
    expected = set()
    for category in range(3):
        members = torch.nonzero(categories == category).flatten().tolist()
        chosen = reference_nms([boxes[i].tolist() for i in members], [scores[i].item() for i in members], 0.5)
        expected |= {members[i] for i in chosen}
    assert kept == expected
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).tolist() == []


def test_rle_round_trip_and_format() -> None:
    masks = torch.rand(5, 6, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    masks[3] = False
    masks[4] = True
    rles = mask_to_rle(masks)
    for mask, rle in zip(masks, rles, strict=True):
        assert rle["size"] == [6, 7] and sum(rle["counts"]) == 42
        assert torch.equal(rle_to_mask(rle), mask)
    assert rles[3]["counts"] == [42] and rles[4]["counts"] == [0, 42]
    # Column-major order, first run counts zeros: a mask whose only pixel is (row 1, col 0) is [1, 1, 40].
    single = torch.zeros(1, 6, 7, dtype=torch.bool)
    single[0, 1, 0] = True
    assert mask_to_rle(single)[0]["counts"] == [1, 1, 40]
    with pytest.raises(ValueError, match="sum to"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def test_mask_to_box_and_stability_score() -> None:
    masks = torch.zeros(3, 8, 9, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 7, 0] = True
    boxes = batched_mask_to_box(masks)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[3, 2, 6, 4], [0, 7, 0, 7], [0, 0, 0, 0]]
    assert batched_mask_to_box(masks.view(1, 3, 8, 9)).shape == (1, 3, 4)
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :2, :2] = 5.0
    logits[0, 2, :] = 0.5
    # > 1 keeps the 4 strong pixels, > -1 also keeps the 4 weak ones.
    assert compute_stability_score(logits, 0.0, 1.0).tolist() == [0.5]


def test_point_grid() -> None:
    grid = build_point_grid(2)
    assert grid.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    with pytest.raises(ValueError, match="at least one point"):
        build_point_grid(0)


@pytest.mark.parametrize(("layers", "num_crops"), [(0, 1), (1, 5), (2, 21)])
def test_generate_crop_boxes_shapes_for_the_pipeline(layers: int, num_crops: int) -> None:
    image = PIL.Image.fromarray(random_uint8(60, 90))
    processor = EsamBlipImageProcessor(sam_image_size=64)
    boxes, points, crops, labels = processor.generate_crop_boxes(
        image, processor.size["height"], crop_n_layers=layers, points_per_crop=4
    )
    assert boxes.shape == (num_crops, 4) and boxes.dtype == torch.float32
    assert boxes[0].tolist() == [0, 0, 90, 60]
    assert points.shape == (1, 16, num_crops, 2) and points.dtype == torch.float32
    assert labels.shape == (1, 16, num_crops) and labels.dtype == torch.int64 and bool((labels == 1).all())
    assert len(crops) == num_crops
    for box, crop in zip(boxes.int().tolist(), crops, strict=True):
        assert crop.shape == (3, box[3] - box[1], box[2] - box[0])
    # Each crop's grid covers its own SAM frame, rescaled per axis.
    assert torch.allclose(points[0], (build_point_grid(4) * 64)[:, None].expand(16, num_crops, 2), atol=1e-4)
    # What the pipeline yields per batch and crop.
    assert points[:, 0:8, 1 % num_crops : 1 % num_crops + 1, :].shape == (1, 8, 1, 2)
    assert torch.equal(crops[0], torch.from_numpy(np.array(image)).permute(2, 0, 1))


def test_generate_crop_boxes_downscaled_layers_repeat_their_points() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=32)
    _, points, _, _ = processor.generate_crop_boxes(
        random_uint8(40, 40), 32, crop_n_layers=1, points_per_crop=4, crop_n_points_downscale_factor=2
    )
    assert points.shape == (1, 16, 5, 2)
    layer_one = (build_point_grid(2) * 32)[torch.arange(16) % 4]
    assert torch.allclose(points[0, :, 1], layer_one, atol=1e-4)
    with pytest.raises(ValueError, match="overlap_ratio"):
        processor.generate_crop_boxes(random_uint8(4, 4), 32, overlap_ratio=1.0)


def test_filter_masks_and_nms_over_crops() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=64)
    crop_box = [50, 50, 250, 170]
    logits = torch.full((3, 1, 120, 200), -10.0)
    logits[0, 0, 40:60, 60:120] = 10.0  # well inside the crop: kept
    logits[1, 0, 40:60, 60:120] = 0.5  # unstable: dropped by the stability score
    logits[2, 0, 10:20, 190:200] = 10.0  # touches the crop's right edge, which is not the image's: dropped
    scores = torch.tensor([[0.95], [0.99], [0.97]])
    rles, kept_scores, boxes = processor.filter_masks(logits, scores, (200, 300), crop_box)
    assert kept_scores.tolist() == pytest.approx([0.95])
    assert boxes.tolist() == [[110, 90, 169, 109]]
    mask = rle_to_mask(rles[0])
    assert mask.shape == (200, 300) and int(mask.sum()) == 1200 and bool(mask[90:110, 110:170].all())
    low_iou = processor.filter_masks(logits, torch.full((3, 1), 0.5), (200, 300), crop_box)
    assert low_iou[1].numel() == 0

    duplicate = mask_to_rle(mask[None])[0]
    masks, final_scores, final_rles, final_boxes = processor.post_process_for_mask_generation(
        [rles[0], duplicate], torch.tensor([0.9, 0.95]), torch.cat([boxes, boxes]), 0.7
    )
    assert final_scores.tolist() == pytest.approx([0.95])
    assert len(masks) == 1 and torch.equal(masks[0], mask) and final_rles == [duplicate]
    assert final_boxes.tolist() == [[110, 90, 169, 109]]


def test_mask_generation_pipeline_runs_end_to_end() -> None:
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    generator = pipeline("mask-generation", model=model, image_processor=EsamBlipImageProcessor(sam_image_size=64))
    image = PIL.Image.fromarray(random_uint8(30, 40))
    out = generator(
        image,
        points_per_batch=16,
        points_per_crop=4,
        crops_n_layers=1,
        pred_iou_thresh=0.0,  # 0 turns the filter off
        stability_score_thresh=0.0,
        output_bboxes_mask=True,
        output_rle_mask=True,
    )
    assert len(out["masks"]) == len(out["scores"]) == len(out["rle_mask"]) == len(out["bounding_boxes"]) >= 1
    assert all(mask.shape == (30, 40) and mask.dtype == torch.bool for mask in out["masks"])
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_post_process_points_inverts_the_prompt_scaling() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=64)
    image = random_uint8(40, 100)  # H=40, W=100
    pixels = [[10.0, 5.0], [99.0, 39.0]]
    framed = processor(image, input_points=[[pixels]], return_tensors="pt")["input_points"][0, 0]  # [P, 2] in 64²
    text_points = torch.cat([framed, torch.tensor([[-1.0, -1.0]])])[None]  # one text, one padding point
    back = processor.post_process_points(text_points, [(40, 100)])
    assert len(back) == 1 and back[0].dtype == torch.float32
    torch.testing.assert_close(back[0][:2], torch.tensor(pixels))
    assert back[0][2].tolist() == [-1.0, -1.0]
    # One size for several texts on one image; one size per entry otherwise.
    assert len(processor.post_process_points(torch.zeros(3, 2, 2), torch.tensor([[40, 100]]))) == 3
    with pytest.raises(ValueError, match=r"points for 2 images \(or texts\) but 3 `original_sizes`"):
        processor.post_process_points(torch.zeros(2, 1, 2), [(1, 1)] * 3)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 2\] \(x, y\), got \(1, 3\)"):
        processor.post_process_points(torch.zeros(1, 1, 3), [(1, 1)])
