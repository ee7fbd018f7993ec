"""Zero-shot text prompts: peak picking, mask-enhanced heatmaps, patch sampling, and text mode == point mode."""

import pytest
import torch
from PIL import Image

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.text_prompting import (
    cells_to_points,
    heatmap_to_prompts,
    mask_enhanced_heatmap,
    sample_patch_indices,
    select_background_cells,
    select_salient_cells,
)


def test_salient_cells_are_spaced_peaks_above_threshold():
    heatmap = torch.zeros(1, 6, 6)
    heatmap[0, 1, 1] = 1.0
    heatmap[0, 1, 2] = 0.9  # next to the top peak: not a local maximum
    heatmap[0, 4, 4] = 0.8
    heatmap[0, 4, 0] = 0.3  # a peak under the 0.5 relative threshold
    cells, valid = select_salient_cells(heatmap, num_points=3, min_distance=2, threshold=0.5)
    assert cells[0, :2].tolist() == [[1, 1], [4, 4]]
    assert valid.tolist() == [[True, True, False]]
    cells, valid = select_salient_cells(heatmap, num_points=3, min_distance=2, threshold=0.2)
    assert cells[0].tolist() == [[1, 1], [4, 4], [4, 0]] and valid.all()
    cells, valid = select_salient_cells(heatmap, num_points=3, min_distance=4, threshold=0.2)
    assert cells[0, 0].tolist() == [1, 1]  # both other peaks are 3 cells away: too close
    assert valid.tolist() == [[True, False, False]]


def test_flat_heatmap_still_gives_one_point():
    cells, valid = select_salient_cells(torch.zeros(2, 4, 4), num_points=2, min_distance=2, threshold=0.5)
    assert valid[:, 0].all()


def test_background_cells_are_the_coldest():
    heatmap = torch.ones(1, 5, 5)
    heatmap[0, 0, 4] = -1.0
    heatmap[0, 4, 0] = -0.5
    cells, valid = select_background_cells(heatmap, num_points=2, min_distance=2)
    assert cells[0].tolist() == [[0, 4], [4, 0]] and valid.all()


def test_cells_map_to_cell_centres():
    points = cells_to_points(torch.tensor([[0, 0], [2, 3]]), grid_size=4, frame_size=1024)
    assert points.tolist() == [[128.0, 128.0], [896.0, 640.0]]
    points = cells_to_points(torch.tensor([[1, 0]]), grid_size=2, frame_size=(100, 60))
    assert points.tolist() == [[15.0, 75.0]]


def test_heatmap_to_prompts_pads_and_labels():
    heatmap = torch.zeros(1, 4, 4)
    heatmap[0, 0, 0] = 1.0
    points, labels = heatmap_to_prompts(
        heatmap, 64, num_points=2, min_distance=1, threshold=0.5, num_background_points=1
    )
    assert labels.tolist() == [[1, -1, 0]]
    assert points[0, 0].tolist() == [8.0, 8.0] and points[0, 1].tolist() == [-1.0, -1.0]


def test_mask_enhanced_heatmap_formula():
    heatmap = torch.tensor([[[0.0, 2.0], [4.0, 4.0]]])  # normalised: [[0, .5], [1, 1]]
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # covers the top-left cell fully
    mask[0, 2:, 2:3] = 1.0  # covers half of the bottom-right cell
    alpha = 0.25
    coverage = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    combined = alpha * torch.tensor([[[0.0, 0.5], [1.0, 1.0]]]) + (1 - alpha) * coverage
    expected = (combined - combined.min()) / (combined.max() - combined.min())
    result = mask_enhanced_heatmap(heatmap, mask, alpha)
    torch.testing.assert_close(result, expected)
    assert result.min() == 0 and result.max() == 1
    torch.testing.assert_close(mask_enhanced_heatmap(heatmap, mask, 1.0), torch.tensor([[[0.0, 0.5], [1.0, 1.0]]]))
    assert mask_enhanced_heatmap(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4), 0.5).abs().sum() == 0


def test_patch_sampling_follows_pnp_vqa():
    gradcams = torch.zeros(2, 9)
    gradcams[:, [1, 4, 7]] = 1.0
    generator = torch.Generator().manual_seed(0)
    indices = sample_patch_indices(gradcams, 3, generator=generator)
    assert indices.tolist() == [[2, 5, 8], [2, 5, 8]]  # the three non-zero cells, sorted, +1 for [CLS]
    uniform = sample_patch_indices(torch.zeros(1, 9), 9)
    assert uniform.tolist() == [list(range(1, 10))]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: select_salient_cells(torch.zeros(1, 3, 3), num_points=0), r"k\) must be >= 1"),
        (lambda: select_salient_cells(torch.zeros(1, 3, 3), 1, threshold=2.0), r"threshold.*\[0, 1\]"),
        (lambda: select_salient_cells(torch.zeros(3, 3), 1), r"heatmap.*\[batch, g, g\]"),
        (lambda: mask_enhanced_heatmap(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4), 1.5), r"alpha.*\[0, 1\].*1.5"),
        (lambda: mask_enhanced_heatmap(torch.zeros(1, 2, 2), torch.zeros(2, 4, 4), 0.5), r"mask.*\[1, H, W\]"),
        (lambda: sample_patch_indices(torch.ones(1, 4), 5), r"num_patches.*\[1, 4\]"),
    ],
)
def test_helpers_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture(scope="module")
def joint(joint_checkpoint):
    model = EsamBlipForPromptableSegmentation.from_pretrained(joint_checkpoint).eval()
    processor = EsamBlipProcessor.from_pretrained(joint_checkpoint)
    return model, processor


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(3)
    return [Image.fromarray((torch.rand(48, 64, 3, generator=generator) * 255).byte().numpy()) for _ in range(2)]


def test_joint_checkpoint_picks_a_caption_sensitive_layer(joint):
    model, _ = joint
    # 3 text layers: the last layer's caption rows cannot reach the ITM logit, so layer 1 is chosen.
    assert model.config.gradcam_block_num == 1
    assert model.config.sam_vision_config.image_size == 1024 and model.config.vision_config.image_size == 112


@pytest.mark.slow
def test_text_mode_equals_point_mode_for_several_texts_on_one_image(joint, images):
    model, processor = joint
    texts = ["two dogs on the grass", "a red bus", "the river"]
    inputs = processor(images=images[0], text=texts, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        embeddings = out.image_embeddings.expand(len(texts), -1, -1, -1)
        points = model(
            image_embeddings=embeddings,
            input_points=out.prompt_points[:, None],
            input_labels=out.prompt_labels[:, None],
        )
    assert out.image_embeddings.shape[0] == 1  # encoded once for the three texts
    assert out.pred_masks.shape == (3, 1, 3, 256, 256)
    torch.testing.assert_close(out.pred_masks, points.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(out.iou_scores, points.iou_scores, rtol=0, atol=0)

    config = model.config
    cells, valid = select_salient_cells(
        out.heatmap, config.text_prompt_num_points, config.text_prompt_min_distance, config.text_prompt_threshold
    )
    expected = cells_to_points(cells, 7, 1024).masked_fill(~valid[..., None], -1.0)
    torch.testing.assert_close(out.prompt_points, expected)
    assert (out.heatmap.amax(dim=(1, 2)) > 0).all()
    gradcam = model.model.blip.compute_gradcam(
        inputs["input_ids"], inputs["attention_mask"], out.blip_image_embeds.expand(3, -1, -1)
    )[0]
    torch.testing.assert_close(out.heatmap, gradcam[:, 1])

    assert out.enhanced_heatmap.shape == (3, 7, 7) and out.gradcams.shape == (3, 49)
    assert out.enhanced_heatmap.min() >= 0 and out.enhanced_heatmap.max() <= 1
    torch.testing.assert_close(out.gradcams, out.enhanced_heatmap.flatten(1))
    assert out.itm_probability.shape == (3,) and out.is_match.dtype == torch.bool
    torch.testing.assert_close(out.is_match, out.itm_probability >= config.match_threshold)


@pytest.mark.slow
def test_text_mode_batch_of_images_equals_one_by_one(joint, images):
    model, processor = joint
    texts = ["two dogs on the grass", "a red bus"]
    with torch.no_grad():
        batched = model(**processor(images=images, text=texts, return_tensors="pt"))
        single = [
            model(**processor(images=image, text=[text], return_tensors="pt")) for image, text in zip(images, texts)
        ]
    for index, out in enumerate(single):
        torch.testing.assert_close(batched.pred_masks[index], out.pred_masks[0], rtol=0, atol=1e-4)
        torch.testing.assert_close(batched.prompt_points[index], out.prompt_points[0])
        torch.testing.assert_close(batched.itm_probability[index], out.itm_probability[0], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_text_mixed_with_user_points_and_absent_objects(joint, images):
    model, processor = joint
    inputs = processor(images=images[0], text=["a red bus"], input_points=[[[[10, 20]]]], return_tensors="pt")
    with torch.no_grad():
        mixed = model(**inputs)
        points = torch.cat([inputs["input_points"], mixed.prompt_points[:, None]], dim=2)
        labels = torch.cat([inputs["input_labels"], mixed.prompt_labels[:, None]], dim=2)
        reference = model(image_embeddings=mixed.image_embeddings, input_points=points, input_labels=labels)
        torch.testing.assert_close(mixed.pred_masks, reference.pred_masks, rtol=0, atol=0)
        model.config.match_threshold = 1.0  # nothing is certain enough: every text is reported absent
        try:
            absent = model(
                image_embeddings=mixed.image_embeddings,
                blip_image_embeds=mixed.blip_image_embeds,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
            )
        finally:
            model.config.match_threshold = 0.5
    assert not absent.is_match.any()


def test_text_mode_errors(joint, images):
    model, processor = joint
    inputs = processor(images=images, text=["a red bus", "a dog"], return_tensors="pt")
    embeddings = torch.zeros(2, 256, 64, 64)
    blip = torch.zeros(2, 50, 96)
    with pytest.raises(ValueError, match="got 2 images for 3 texts"):
        model(image_embeddings=embeddings, blip_image_embeds=blip, input_ids=torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of `blip_pixel_values` and `blip_image_embeds`"):
        model(image_embeddings=embeddings, input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="text_prompt_mode"):
        model(
            image_embeddings=embeddings, blip_image_embeds=blip, input_ids=inputs["input_ids"], text_prompt_mode="magic"
        )
    with pytest.raises(ValueError, match=r"BLIP images \(1\) and the EfficientSAM images \(2\)"):
        model(image_embeddings=embeddings, blip_image_embeds=blip[:1], input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"text\[0\].*is empty after caption cleaning"):
        processor(images=images[0], text=["  "])


def test_text_with_a_segmentation_only_checkpoint_is_a_clear_error():
    from conftest import tiny_sam_config_kwargs

    model = EsamBlipForPromptableSegmentation(EsamBlipConfig(**tiny_sam_config_kwargs())).eval()
    with pytest.raises(ValueError, match="no BLIP half"):
        model(
            pixel_values=torch.zeros(1, 3, 64, 64),
            input_ids=torch.ones(1, 3, dtype=torch.long),
            blip_pixel_values=torch.zeros(1, 3, 32, 32),
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_prompt_num_points": 0}, r"k\) must be >= 1"),
        ({"heatmap_mask_alpha": 1.5}, r"heatmap_mask_alpha.*\[0, 1\]"),
        ({"match_threshold": -0.1}, r"match_threshold"),
        ({"text_prompt_min_distance": 0}, "text_prompt_min_distance"),
    ],
)
def test_config_rejects_bad_text_prompt_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EsamBlipConfig(**kwargs)
