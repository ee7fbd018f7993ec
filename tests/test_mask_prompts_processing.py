"""Mask prompts in the processors (`input_masks`): binary masks and logits, resizing, nesting, errors, the model."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.nn import functional as F

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.best_mask import select_best_masks
from transformers_esam_blip.builtin import builtin_model_path
from transformers_esam_blip.builtin_presets import shapes_processor, tiny_processor, tiny_sam_config_kwargs
from transformers_esam_blip.image_processing_esam_blip import EsamBlipImageProcessor
from transformers_esam_blip.prompts import MASK_PROMPT_LOGIT

HEIGHT, WIDTH, M = 40, 56, 32


@pytest.fixture
def processor() -> EsamBlipImageProcessor:
    return EsamBlipImageProcessor(sam_image_size=64, mask_input_size=M)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def square(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : height // 2, width // 5 : 3 * width // 5] = True
    return mask


def expected_binary(mask: np.ndarray) -> torch.Tensor:
    """Area resize to M x M, majority, then +/- the prompt logit."""
    area = F.interpolate(torch.from_numpy(mask).float()[None, None], (M, M), mode="area")[0, 0]
    return torch.where(area >= 0.5, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)


# ------------------------------------------------------------------------------------ conversion and resizing


@pytest.mark.parametrize(
    "form",
    ["bool", "uint8-255", "int64-01", "float-01", "pil-L", "pil-1", "tensor-bool", "tensor-uint8-255"],
)
def test_binary_masks_become_plus_minus_logits_resized_by_area(processor, image, form) -> None:
    mask = square()
    given = {
        "bool": mask,
        "uint8-255": mask.astype(np.uint8) * 255,
        "int64-01": mask.astype(np.int64),
        "float-01": mask.astype(np.float32),
        "pil-L": PIL.Image.fromarray(mask.astype(np.uint8) * 255),
        "pil-1": PIL.Image.fromarray(mask),
        "tensor-bool": torch.from_numpy(mask),
        "tensor-uint8-255": torch.from_numpy(mask.astype(np.uint8) * 255),
    }[form]
    out = processor(image, input_points=[[[[10, 12]]]], input_masks=[[given]])
    assert out["input_masks"].dtype == torch.float32 and tuple(out["input_masks"].shape) == (1, 1, M, M)
    assert torch.equal(out["input_masks"][0, 0], expected_binary(mask))
    assert set(out["input_masks"].unique().tolist()) == {-MASK_PROMPT_LOGIT, MASK_PROMPT_LOGIT}


def test_binary_mask_at_the_mask_input_size_is_kept(processor, image) -> None:
    mask = square(M, M)
    out = processor(image, input_boxes=[[[0, 0, 20, 20]]], input_masks=[[mask.astype(np.uint8) * 255]])
    expected = torch.where(torch.from_numpy(mask), MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)
    assert torch.equal(out["input_masks"][0, 0], expected)


def test_logits_are_kept_or_resized_bilinearly(processor, image) -> None:
    low_res = torch.randn(M, M, dtype=torch.float64) * 5
    full = torch.randn(HEIGHT, WIDTH) * 5
    out = processor(image, input_points=[[[[1, 2]], [[3, 4]]]], input_masks=[[low_res, full.numpy()]])
    assert torch.equal(out["input_masks"][0, 0], low_res.float())
    resized = F.interpolate(full[None, None], (M, M), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(out["input_masks"][0, 1], resized)


def test_an_image_of_the_mask_input_size_keeps_its_masks(image) -> None:
    processor = EsamBlipImageProcessor(sam_image_size=64, mask_input_size=HEIGHT)
    square_image = image[:, :HEIGHT]
    logits = torch.randn(HEIGHT, HEIGHT)
    out = processor(square_image, input_points=[[[[1, 2]]]], input_masks=[[logits]])
    assert torch.equal(out["input_masks"][0, 0], logits)


def test_nesting_forms_agree(processor, image) -> None:
    masks = np.stack([square(), ~square()])
    points = [[[[10, 12]], [[30, 30]]]]
    nested = processor(image, input_points=points, input_masks=[[masks[0], masks[1]]])["input_masks"]
    per_image_array = processor(image, input_points=points, input_masks=[masks])["input_masks"]
    batch_tensor = processor(image, input_points=points, input_masks=torch.from_numpy(masks)[None])["input_masks"]
    batch_array = processor(image, input_points=points, input_masks=masks[None].astype(np.uint8))["input_masks"]
    for other in (per_image_array, batch_tensor, batch_array):
        assert torch.equal(nested, other)
    assert torch.equal(nested[0, 1], -nested[0, 0])


def test_images_with_fewer_queries_get_empty_padding_masks(processor, image) -> None:
    small = image[:20, :30]
    out = processor(
        [image, small],
        input_points=[[[[1, 1]], [[2, 2]]], [[[3, 3]]]],
        input_masks=[[square(), square()], [square(20, 30)]],
    )
    assert tuple(out["input_masks"].shape) == (2, 2, M, M)
    assert torch.equal(out["input_masks"][1, 0], expected_binary(square(20, 30)))
    assert (out["input_masks"][1, 1] == -MASK_PROMPT_LOGIT).all()


def test_masks_alone_make_one_query_each(processor, image) -> None:
    out = processor(image, input_masks=[[square()]])
    assert set(out) == {"pixel_values", "original_sizes", "reshaped_input_sizes", "input_masks"}
    assert tuple(out["input_masks"].shape) == (1, 1, M, M)


def test_numpy_output(processor, image) -> None:
    out = processor(image, input_points=[[[[1, 1]]]], input_masks=[[square()]], return_tensors="np")
    assert isinstance(out["input_masks"], np.ndarray) and out["input_masks"].dtype == np.float32


def test_preprocess_prompts_without_images(processor) -> None:
    out = processor.preprocess_prompts([(HEIGHT, WIDTH)], input_boxes=[[[1, 1, 9, 9]]], input_masks=[[square()]])
    assert torch.equal(out["input_masks"][0, 0], expected_binary(square()))


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("masks", "error", "match"),
    [
        ([["mask.png"]], TypeError, r"`input_masks\[0\]\[0\]` must be a 2-D numpy array, torch tensor or PIL image"),
        (square(), ValueError, r"`input_masks` must be 4-dimensional .*got shape \(40, 56\)"),
        ("masks", TypeError, "`input_masks` must be a nested list"),
        ([square()], ValueError, r"`input_masks\[0\]` must be a list of 2-D masks or a \[Q, H, W\] array"),
        ([PIL.Image.fromarray(square())], TypeError, r"`input_masks\[0\]` must be a list of masks"),
        ([[square()[None]]], ValueError, r"`input_masks\[0\]\[0\]` must be 2-D \(H, W\), got shape \(1, 40, 56\)"),
        ([[np.zeros((HEIGHT, WIDTH, 3), np.uint8)]], ValueError, r"`input_masks\[0\]\[0\]` .*multi-channel"),
        ([np.zeros((HEIGHT, WIDTH, 3), np.uint8)], ValueError, r"`input_masks\[0\]` .*multi-channel"),
        ([[PIL.Image.new("RGB", (WIDTH, HEIGHT))]], ValueError, r"mode 'RGB'; a mask must be single-channel"),
        ([[PIL.Image.new("P", (WIDTH, HEIGHT))]], ValueError, r"mode 'P'; a mask must be single-channel"),
        ([[PIL.Image.new("LA", (WIDTH, HEIGHT))]], ValueError, r"mode 'LA'; a mask must be single-channel"),
        ([[np.full((HEIGHT, WIDTH), np.nan)]], ValueError, r"`input_masks\[0\]\[0\]` holds NaN or infinite"),
        ([[torch.full((M, M), float("inf"))]], ValueError, r"`input_masks\[0\]\[0\]` holds NaN or infinite"),
        ([[np.full((HEIGHT, WIDTH), 7, np.uint8)]], ValueError, r"integer mask with values \{7\}; .*must be binary"),
        ([[np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH)]], ValueError, r"values \{0, 1, 2, 3, 4, 5, \.\.\.\}"),
        ([[np.array([["a"] * WIDTH] * HEIGHT)]], TypeError, r"has dtype <U1; a mask holds booleans"),
        ([[torch.zeros(M, M, dtype=torch.complex64)]], TypeError, "complex64; a mask holds booleans"),
        ([[np.zeros((HEIGHT, WIDTH + 1), bool)]], ValueError, r"has size \(40, 57\); .*\(32, 32\) .*\(40, 56\)"),
        ([[square(), square()]], ValueError, r"`input_masks\[0\]` holds 2 masks but image 0 has 1 point/box queries"),
        ([[]], ValueError, r"`input_masks\[0\]` holds no mask"),
        ([[square()], [square()]], ValueError, r"prompts for 2 images but 1 images were given"),
        (torch.zeros(2, 1, M, M), ValueError, r"prompts for 2 images but 1 images were given"),
    ],
)
def test_bad_masks_raise_errors_naming_input_masks(processor, image, masks, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(image, input_points=[[[[10, 12]]]], input_masks=masks)


def test_mask_count_must_match_the_box_queries(processor, image) -> None:
    with pytest.raises(ValueError, match=r"holds 1 masks but image 0 has 2 point/box queries"):
        processor(image, input_boxes=[[[0, 0, 5, 5], [1, 1, 9, 9]]], input_masks=[[square()]])


def test_mask_prompts_need_the_sam_frame(image) -> None:
    with pytest.raises(ValueError, match="Point, box and mask prompts need the EfficientSAM frame"):
        EsamBlipImageProcessor(sam_image_size=None, blip_image_size=16)(image, input_masks=[[square()]])


@pytest.mark.parametrize("value", [0, -4, 2.5, True, "64", None])
def test_mask_input_size_must_be_a_positive_int(value) -> None:
    with pytest.raises(ValueError, match="`mask_input_size` must be a positive int"):
        EsamBlipImageProcessor(mask_input_size=value)


# ------------------------------------------------------------------------------------ saving, presets, built-in


def test_mask_input_size_is_saved_and_overridable(tmp_path: Path) -> None:
    assert EsamBlipImageProcessor().mask_input_size == 256
    EsamBlipImageProcessor(sam_image_size=64, mask_input_size=M).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["mask_input_size"] == M
    assert EsamBlipImageProcessor.from_pretrained(tmp_path).mask_input_size == M
    assert EsamBlipImageProcessor.from_pretrained(tmp_path, mask_input_size=16).mask_input_size == 16


def test_presets_and_the_built_in_processor_match_their_models() -> None:
    tiny = EsamBlipConfig(**tiny_sam_config_kwargs())
    assert tiny_processor().image_processor.mask_input_size == tiny.prompt_encoder_config.mask_input_size == 32
    assert shapes_processor().image_processor.mask_input_size == 64
    folder = builtin_model_path("esam-blip-shapes")
    built_in = EsamBlipProcessor.from_pretrained(folder).image_processor
    config = EsamBlipConfig.from_pretrained(folder)
    assert built_in.mask_input_size == config.prompt_encoder_config.mask_input_size == 64


# --------------------------------------------------------------------------------------------- joint processor


def test_joint_processor_passes_masks_with_text(image) -> None:
    processor = tiny_processor()
    out = processor(images=image, text=["the red circle"], input_masks=[[square()]])
    assert {"input_ids", "blip_pixel_values", "input_masks"} <= set(out)
    assert torch.equal(out["input_masks"][0, 0], expected_binary_at(square(), 32))
    with pytest.raises(ValueError, match="Point, box and mask prompts need `images`"):
        processor(text="the red circle", input_masks=[[square()]])


def expected_binary_at(mask: np.ndarray, size: int) -> torch.Tensor:
    area = F.interpolate(torch.from_numpy(mask).float()[None, None], (size, size), mode="area")[0, 0]
    return torch.where(area >= 0.5, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)


# ---------------------------------------------------------------------------------------------------- model


def mask_prompt_sam_config(**overrides) -> EsamBlipConfig:
    """The tiny random EfficientSAM with a mask encoder (32x32 mask prompts)."""
    kwargs = tiny_sam_config_kwargs()
    kwargs["prompt_encoder_config"]["mask_prompts"] = True
    return EsamBlipConfig(**kwargs, **overrides)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """
    Random weights everywhere: a new mask encoder's last layer starts at zero (a mask changes nothing until trained),
    and a tiny model's masks are then too small to tell prompts apart.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def mask_model() -> EsamBlipForPromptableSegmentation:
    return randomize(EsamBlipForPromptableSegmentation(mask_prompt_sam_config()))


def test_processor_masks_prompt_the_model(mask_model, processor, image) -> None:
    """A full-size mask and its processed low-resolution logits give the same masks; the mask changes them."""
    points = [[[[10, 12]]]]
    with_mask = processor(image, input_points=points, input_masks=[[square()]])
    without = processor(image, input_points=points)
    low_res = processor(image, input_points=points, input_masks=with_mask["input_masks"])
    assert torch.equal(low_res["input_masks"], with_mask["input_masks"])
    with torch.no_grad():
        masked = mask_model(**with_mask)
        plain = mask_model(**without)
        again = mask_model(**low_res)
    assert torch.equal(masked.pred_masks, again.pred_masks)
    assert not torch.allclose(masked.pred_masks, plain.pred_masks)
    # Iterative refinement: the previous call's best low-resolution logits go back in as the query's mask.
    previous, _ = select_best_masks(plain.pred_masks, plain.iou_scores)
    refined = processor(image, input_points=points, input_masks=previous)
    assert torch.equal(refined["input_masks"], previous)
    with torch.no_grad():
        assert mask_model(**refined).pred_masks.shape == plain.pred_masks.shape


def test_a_model_without_mask_encoder_names_input_masks(processor, image) -> None:
    model = EsamBlipForPromptableSegmentation(EsamBlipConfig(**tiny_sam_config_kwargs())).eval()
    with pytest.raises(ValueError, match="`input_masks` needs a model with a mask encoder"):
        model(**processor(image, input_points=[[[[10, 12]]]], input_masks=[[square()]]))


# --------------------------------------------------------------------------------- best mask in post-processing


def test_post_process_masks_can_keep_each_querys_best_candidate() -> None:
    processor = EsamBlipImageProcessor(sam_image_size=64)
    logits = torch.randn(2, 3, 3, 16, 16)
    scores = torch.rand(2, 3, 3)
    best = processor.post_process_masks(logits, [(20, 30), (10, 12)], iou_scores=scores, best=True)
    every = processor.post_process_masks(logits, [(20, 30), (10, 12)])
    for b in range(2):
        index = scores[b].argmax(-1)
        assert tuple(best[b].shape) == (3,) + tuple(every[b].shape[-2:])
        assert torch.equal(best[b], every[b][torch.arange(3), index])
    as_logits = processor.post_process_masks(
        list(logits), [(20, 30)], binarize=False, iou_scores=list(scores), best=True
    )
    assert as_logits[0].dtype == torch.float32 and tuple(as_logits[0].shape) == (3, 20, 30)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"best": True}, ValueError, "pass the model's `iou_scores`"),
        ({"iou_scores": torch.rand(1, 2, 3)}, ValueError, "`iou_scores` is read only with `best=True`"),
        ({"best": 1, "iou_scores": torch.rand(1, 2, 3)}, TypeError, "`best` must be a bool"),
        ({"best": True, "iou_scores": "scores"}, TypeError, "`iou_scores` must be a torch tensor"),
        ({"best": True, "iou_scores": torch.rand(2, 2, 3)}, ValueError, "scores for 2 images but `masks` for 1"),
        ({"best": True, "iou_scores": torch.rand(1, 2, 4)}, ValueError, r"`iou_scores\[0\]` must have shape \(2, 3\)"),
    ],
)
def test_post_process_masks_best_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        EsamBlipImageProcessor(sam_image_size=64).post_process_masks(torch.randn(1, 2, 3, 8, 8), [(8, 8)], **kwargs)
