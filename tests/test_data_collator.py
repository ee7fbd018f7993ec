"""EsamBlipDataCollator: batch keys, shapes and dtypes, ragged prompts, label resizing, and clear errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import FIXTURES, tiny_sam_config

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.data import EsamBlipDataCollator, synthetic_referring_dataset
from transformers_esam_blip.image_processing_esam_blip import EsamBlipImageProcessor
from transformers_esam_blip.processing_esam_blip import EsamBlipProcessor, build_blip_tokenizer

TOKENIZER = FIXTURES / "lavis_blip_itm" / "fixture_C" / "tokenizer"


@pytest.fixture
def processor() -> EsamBlipProcessor:
    image_processor = EsamBlipImageProcessor(sam_image_size=64, blip_image_size=32)
    return EsamBlipProcessor(image_processor, tokenizer=build_blip_tokenizer(TOKENIZER))


@pytest.fixture
def sam_processor() -> EsamBlipProcessor:
    """Segmentation only: no tokenizer, no BLIP pixels."""
    return EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64))


def example(height: int = 40, width: int = 60, text: str | None = "the red circle", **extra) -> dict:
    rng = np.random.default_rng(height * 1000 + width)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    feature = {
        "image": PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
        "mask": PIL.Image.fromarray(mask),
        **extra,
    }
    if text is not None:
        feature["text"] = text
    return feature


def test_batch_keys_shapes_and_dtypes(processor):
    features = [example(40, 60), example(30, 30, "a blue square", match_label=0), example(50, 20, "green triangle")]
    features[1]["mask"] = PIL.Image.new("L", (30, 30), 0)
    batch = EsamBlipDataCollator(processor)(features)
    assert set(batch) == {
        "pixel_values",
        "blip_pixel_values",
        "input_ids",
        "attention_mask",
        "labels",
        "match_labels",
    }
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["blip_pixel_values"].shape == (3, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 3
    assert batch["input_ids"].dtype == torch.int64
    assert batch["labels"].shape == (3, 1, 256, 256) and batch["labels"].dtype == torch.float32
    assert set(batch["labels"].unique().tolist()) == {0.0, 1.0}
    assert batch["labels"][1].sum() == 0
    # Given for example 1, derived from the mask (non-empty) for the others.
    assert batch["match_labels"].tolist() == [1, 0, 1] and batch["match_labels"].dtype == torch.int64


def test_labels_are_area_resized_and_thresholded(sam_processor):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    left_half = np.zeros((32, 32), dtype=bool)
    left_half[:, :16] = True
    # 2x2 blocks at 512² → one label pixel: 1 of 4 set is background, 2 of 4 is foreground.
    fine = np.zeros((512, 512), dtype=bool)
    fine[0, 0] = True
    fine[0, 2:4] = True
    features = [{"image": image, "mask": left_half}, {"image": np.zeros((512, 512, 3), np.uint8), "mask": fine}]
    labels = EsamBlipDataCollator(sam_processor)(features)["labels"]
    expected = torch.zeros(256, 256)
    expected[:, :128] = 1
    assert torch.equal(labels[0, 0], expected)
    assert labels[1, 0, 0, 0] == 0 and labels[1, 0, 0, 1] == 1 and labels[1].sum() == 1


def test_original_mask_size(sam_processor):
    features = [example(20, 24, text=None), example(20, 24, text=None)]
    batch = EsamBlipDataCollator(sam_processor, mask_size="original")(features)
    labels = batch["labels"]
    assert labels.shape == (2, 1, 20, 24) and batch["original_sizes"].tolist() == [[20, 24], [20, 24]]
    assert torch.equal(labels[0, 0].bool(), torch.from_numpy(np.asarray(features[0]["mask"]) > 0))
    with pytest.raises(ValueError, match=r"one mask size per batch, got \[\(20, 24\), \(30, 24\)\]"):
        EsamBlipDataCollator(sam_processor, mask_size="original")([example(20, 24, None), example(30, 24, None)])
    assert EsamBlipDataCollator(sam_processor, mask_size=32)(features)["labels"].shape == (2, 1, 32, 32)


def test_ragged_point_and_box_prompts(sam_processor):
    features = [
        example(40, 80, None, input_points=[[20, 10], [40, 30]], input_boxes=[0, 0, 40, 20]),
        example(32, 32, None, input_boxes=[8, 8, 16, 16]),
        example(64, 64, None, input_points=[[32, 16]], input_labels=[0], input_boxes=[0, 0, 64, 64]),
    ]
    batch = EsamBlipDataCollator(sam_processor)(features)
    assert batch["input_points"].shape == (3, 1, 2, 2)
    assert batch["input_labels"].tolist() == [[[1, 1]], [[-1, -1]], [[0, -1]]]
    # Rescaled per axis to the 64x64 SAM frame; padding stays (-1, -1).
    assert batch["input_points"][0, 0].tolist() == [[16.0, 16.0], [32.0, 48.0]]
    assert batch["input_points"][1, 0].tolist() == [[-1.0, -1.0], [-1.0, -1.0]]
    assert batch["input_points"][2, 0, 0].tolist() == [32.0, 16.0]
    assert batch["input_boxes"].tolist() == [
        [[0.0, 0.0, 32.0, 32.0]],
        [[16.0, 16.0, 32.0, 32.0]],
        [[0.0, 0.0, 64.0, 64.0]],
    ]


def test_batch_runs_through_the_model(sam_processor):
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    features = [
        example(40, 80, None, input_points=[[20, 10], [40, 30]]),
        example(32, 32, None, input_points=[[3, 3]], input_labels=[0]),
    ]
    batch = EsamBlipDataCollator(sam_processor)(features)
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "match_labels")}
    with torch.no_grad():
        out = model(**inputs)
    assert out.pred_masks.shape[:3] == (2, 1, 3) and out.iou_scores.shape == (2, 1, 3)


def test_synthetic_rows_collate(processor, tmp_path):
    dataset = synthetic_referring_dataset(
        2, seed=0, cache_dir=str(tmp_path), progress=False, image_size=48, min_side=8, max_side=16
    )
    batch = EsamBlipDataCollator(processor)([dataset[i] for i in range(len(dataset))])
    assert batch["labels"].shape == (len(dataset), 1, 256, 256)
    assert batch["match_labels"].tolist() == dataset["match_label"]
    assert [bool(label.any()) for label in batch["labels"]] == [bool(m) for m in dataset["match_label"]]


def test_counts_of_texts_and_masks_must_match(processor):
    collator = EsamBlipDataCollator(processor)
    with pytest.raises(ValueError, match=r"Got 2 `text` values for 3 examples \(missing in examples \[1\]\)"):
        collator([example(), example(text=None), example()])
    no_mask = example()
    del no_mask["mask"]
    with pytest.raises(ValueError, match=r"Got 1 `mask` values for 2 examples \(missing in examples \[0\]\)"):
        collator([no_mask, example()])
    with pytest.raises(TypeError, match=r"`features\[1\]\['text'\]` must be one string .* got list of 2 texts"):
        collator([example(), example(text=["a dog", "a cat"])])


def test_bad_examples_are_clear_errors(processor, sam_processor):
    collator = EsamBlipDataCollator(processor)
    wrong_size = example(40, 60)
    wrong_size["mask"] = PIL.Image.new("L", (40, 60))
    with pytest.raises(ValueError, match=r"`features\[0\]\['mask'\]` is 60x40 \(HxW\) but its image is 40x60"):
        collator([wrong_size])
    with pytest.raises(ValueError, match=r"`match_label` must be 0 or 1; got \(example, value\) \[\(0, 2\)\]"):
        collator([example(match_label=2)])
    unlabelled = {"image": np.zeros((8, 8, 3), np.uint8), "text": "a dog"}
    with pytest.raises(ValueError, match=r"Got 1 `match_label` values for 2 examples"):
        collator([{**unlabelled, "match_label": 1}, unlabelled])
    assert collator([{**unlabelled, "match_label": 1}])["match_labels"].tolist() == [1]
    with pytest.raises(ValueError, match=r"Got 1 `input_boxes` values for 2 examples"):
        collator([example(input_boxes=[0, 0, 5, 5]), example()])
    with pytest.raises(ValueError, match="has `input_labels` but no `input_points`"):
        collator([example(input_points=[[1, 1]]), example(input_labels=[1])])
    with pytest.raises(ValueError, match="has no `image`"):
        collator([{"text": "a dog"}])
    with pytest.raises(ValueError, match="non-empty list"):
        collator([])
    with pytest.raises(TypeError, match=r"`features\[0\]` must be a dict"):
        collator(["a dog"])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        EsamBlipDataCollator(sam_processor)([example()])
    with pytest.raises(TypeError, match="must be an EsamBlipProcessor"):
        EsamBlipDataCollator(processor.image_processor)
    with pytest.raises(ValueError, match="`mask_size` must be a positive int or 'original'"):
        EsamBlipDataCollator(processor, mask_size=0)
