"""`pipeline("text-prompted-segmentation")`: outputs against the model, call forms, one call per image, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sam_config, tiny_sam_config_kwargs
from PIL import Image
from transformers import pipeline

from transformers_esam_blip import (
    EsamBlipConfig,
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
    EsamBlipImageProcessor,
    EsamBlipProcessor,
)
from transformers_esam_blip.pipelines import TASK, TextPromptedSegmentationPipeline

HEIGHT, WIDTH = 48, 64
TEXTS = ["a dog on the beach", "a red ball"]


def save_tiny_joint_checkpoint(joint_checkpoint: Path, output: Path) -> Path:
    """
    The joint fixture's BLIP half (112 px, its tokenizer) with a tiny random EfficientSAM half (64 px frame) saved to
    `output`: a full text-prompt checkpoint whose calls take milliseconds, for tests of routing rather than numbers.
    """
    config_dict, _ = EsamBlipConfig.get_config_dict(joint_checkpoint)
    config_dict.update(tiny_sam_config_kwargs())
    torch.manual_seed(0)
    EsamBlipForPromptableSegmentation(EsamBlipConfig.from_dict(config_dict)).save_pretrained(output)
    processor = EsamBlipProcessor.from_pretrained(joint_checkpoint)
    processor.image_processor.sam_image_size = 64
    processor.save_pretrained(output)
    return output


@pytest.fixture(scope="module")
def tiny_joint(joint_checkpoint, tmp_path_factory) -> Path:
    return save_tiny_joint_checkpoint(joint_checkpoint, tmp_path_factory.mktemp("tiny") / "tiny-joint")


@pytest.fixture(scope="module")
def segmenter(tiny_joint) -> TextPromptedSegmentationPipeline:
    return pipeline(TASK, model=str(tiny_joint), device="cpu")


@pytest.fixture(scope="module")
def fixture_segmenter(joint_checkpoint) -> TextPromptedSegmentationPipeline:
    """The converted fixtures (1024 px EfficientSAM): about a second per image on CPU."""
    return pipeline(TASK, model=str(joint_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def results(fixture_segmenter, image) -> list[dict]:
    return fixture_segmenter(image, TEXTS)


@pytest.fixture
def count_calls(segmenter):
    """Number of forward calls of the pipeline's model while the test runs."""
    calls = []
    handle = segmenter.model.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def test_task_is_registered_and_loads_the_processor(fixture_segmenter):
    segmenter = fixture_segmenter
    assert isinstance(segmenter, TextPromptedSegmentationPipeline)
    assert isinstance(segmenter.model, EsamBlipForPromptableSegmentation)
    assert isinstance(segmenter.processor, EsamBlipProcessor)
    assert segmenter.tokenizer is segmenter.processor.tokenizer


def test_result_fields(results, fixture_segmenter):
    segmenter = fixture_segmenter
    assert [result["text"] for result in results] == TEXTS
    for result in results:
        assert result["mask"].dtype == torch.bool and tuple(result["mask"].shape) == (HEIGHT, WIDTH)
        assert isinstance(result["score"], float) and isinstance(result["match_probability"], float)
        assert 0.0 <= result["match_probability"] <= 1.0
        threshold = segmenter.model.config.match_threshold
        assert result["is_match"] is (result["match_probability"] >= threshold)
        grid = segmenter.model.model.blip.grid_size
        assert tuple(result["heatmap"].shape) == tuple(result["enhanced_heatmap"].shape) == (grid, grid)
        assert 0.0 <= result["enhanced_heatmap"].min() and result["enhanced_heatmap"].max() <= 1.0
        assert 1 <= len(result["points"]) == len(result["point_labels"])
        assert set(result["point_labels"]) <= {0, 1}
        for x, y in result["points"]:
            assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT


def test_results_match_the_model(results, fixture_segmenter, image):
    """Best candidate by IoU at the original size; points rescaled per axis from the SAM frame; padding dropped."""
    processor, model = fixture_segmenter.processor, fixture_segmenter.model
    inputs = processor(images=image, text=TEXTS, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    size = processor.image_processor.sam_image_size
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"].expand(len(TEXTS), -1))
    for t, result in enumerate(results):
        best = out.iou_scores[t, 0].argmax()
        assert torch.equal(result["mask"], masks[t][0, best])
        assert result["score"] == pytest.approx(out.iou_scores[t, 0, best].item())
        real = out.prompt_labels[t] != -1
        expected = out.prompt_points[t][real] * torch.tensor([WIDTH / size, HEIGHT / size])
        torch.testing.assert_close(torch.tensor(result["points"]), expected)
        assert result["point_labels"] == out.prompt_labels[t][real].tolist()
        torch.testing.assert_close(result["heatmap"], out.heatmap[t])
        torch.testing.assert_close(result["enhanced_heatmap"], out.enhanced_heatmap[t])
        assert result["match_probability"] == pytest.approx(out.itm_probability[t].item())


def test_several_texts_are_one_model_call(segmenter, image, count_calls):
    out = segmenter(image, ["a dog", "a cat", "the sky"])
    assert len(out) == 3 and len(count_calls) == 1


def test_call_forms(segmenter, image, tmp_path, count_calls):
    path = tmp_path / "image.png"
    image.save(path)
    single = segmenter(str(path), "a dog")
    assert len(single) == 1 and single[0]["text"] == "a dog"
    from_dict = segmenter({"image": image, "text": "a dog"})
    assert torch.equal(single[0]["mask"], from_dict[0]["mask"])
    assert single[0]["score"] == pytest.approx(from_dict[0]["score"])

    small = image.resize((32, 40))
    paired = segmenter([image, small], [["a dog"], ["a cat", "a ball"]])
    assert [[r["text"] for r in per_image] for per_image in paired] == [["a dog"], ["a cat", "a ball"]]
    assert tuple(paired[1][0]["mask"].shape) == (40, 32)
    shared = segmenter([image, small], ["a dog", "a cat"])
    assert [[r["text"] for r in per_image] for per_image in shared] == [["a dog", "a cat"]] * 2
    listed = segmenter([{"image": small, "text": ["a cat"]}])
    assert len(listed) == 1 and listed[0][0]["text"] == "a cat"
    assert len(count_calls) == 7  # one call per image, whatever the number of texts


def test_mask_threshold(segmenter, image):
    everything = segmenter(image, "a dog", mask_threshold=-1e9)[0]["mask"]
    nothing = segmenter(image, "a dog", mask_threshold=1e9)[0]["mask"]
    assert everything.all() and not nothing.any()
    segmenter_with_default = pipeline(
        TASK, model=segmenter.model, processor=segmenter.processor, mask_threshold=1e9, device="cpu"
    )
    assert not segmenter_with_default(image, "a dog")[0]["mask"].any()


@pytest.mark.parametrize(
    ("images", "texts", "error", "match"),
    [
        ("image", "", ValueError, r"`texts\[0\]` must be a non-empty string"),
        ("image", ["a dog", "  "], ValueError, r"`texts\[1\]` must be a non-empty string"),
        ("image", [], ValueError, "non-empty list of strings"),
        ("images", [["a dog"]], ValueError, "1 lists of texts for 2 images"),
        ("images", [["a dog"], []], ValueError, r"`texts\[1\]`"),
        ([], ["a dog"], ValueError, "empty list"),
        ({"image": None, "text": "a"}, ["a dog"], TypeError, "not both"),
        ({"image": "image", "txt": "a"}, None, ValueError, r'\{"image": \.\.\., "text": \.\.\.\}'),
        ({"image": 3, "text": "a"}, None, TypeError, "`image` must be"),
        ("image", None, ValueError, r"or pass `texts`"),
    ],
)
def test_bad_calls(segmenter, image, count_calls, images, texts, error, match):
    images = {"image": image, "images": [image, image]}.get(images, images) if isinstance(images, str) else images
    with pytest.raises(error, match=match):
        segmenter(images, texts)
    assert not count_calls


def test_batch_size_must_be_one(segmenter, image):
    with pytest.raises(ValueError, match="`batch_size` must be 1"):
        segmenter([image, image], "a dog", batch_size=2)


def test_needs_both_halves_and_a_tokenizer(tiny_joint):
    segmentation_only = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    processor = EsamBlipProcessor.from_pretrained(tiny_joint)
    with pytest.raises(ValueError, match="BLIP half"):
        pipeline(TASK, model=segmentation_only, processor=processor, device="cpu")
    matching = EsamBlipForImageTextMatching.from_pretrained(tiny_joint)
    with pytest.raises(ValueError, match="EsamBlipForPromptableSegmentation"):
        TextPromptedSegmentationPipeline(model=matching, processor=processor, device="cpu")
    model = EsamBlipForPromptableSegmentation.from_pretrained(tiny_joint)
    without_tokenizer = EsamBlipProcessor(processor.image_processor)
    with pytest.raises(ValueError, match="tokenizer"):
        TextPromptedSegmentationPipeline(model=model, processor=without_tokenizer, device="cpu")
    no_blip_pixels = EsamBlipProcessor(EsamBlipImageProcessor(), tokenizer=processor.tokenizer)
    with pytest.raises(ValueError, match="blip_image_size"):
        TextPromptedSegmentationPipeline(model=model, processor=no_blip_pixels, device="cpu")
    segmenter = pipeline(TASK, model=model, processor=processor, device="cpu")
    assert isinstance(segmenter, TextPromptedSegmentationPipeline)
