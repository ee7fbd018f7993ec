"""Dense mask prompts: SAM's mask encoder, its no-op start, per-query decoding, refinement, errors, the training mix."""

import numpy as np
import pytest
import torch
from test_fusion import tiny_joint_config

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.modeling_efficient_sam import EfficientSamMaskEmbedding
from transformers_esam_blip.prompts import MASK_PROMPT_LOGIT, PromptLabel
from transformers_esam_blip.training import build_trainer, main, tiny_processor
from transformers_esam_blip.training.prompt_mix import (
    EsamBlipPromptMixCollator,
    EsamBlipRefinementTrainer,
    PromptMix,
    corrective_points,
    jittered_box,
    sample_points,
)

MASK_SIDE = 32  # the tiny preset: 8x8 embedding grid, masks 4x that


def _config(mask_prompts: bool = True, **overrides):
    config = tiny_joint_config(prompter_source="text", **overrides)
    config.prompt_encoder_config.mask_prompts = mask_prompts
    return config


def _randomise_mask_encoder(model: EsamBlipForPromptableSegmentation) -> None:
    encoder = model.model.sam.prompt_encoder
    with torch.no_grad():
        for parameter in [*encoder.mask_embed.parameters(), encoder.no_mask_embed.weight]:
            parameter.normal_(std=0.5)


def _points(batch: int = 2, queries: int = 3) -> torch.Tensor:
    return torch.rand(batch, queries, 1, 2) * 60


def test_config_and_architecture():
    config = _config()
    assert config.prompt_encoder_config.mask_input_size == MASK_SIDE
    assert _config(mask_prompts=False).prompt_encoder_config.mask_prompts is False
    encoder = EsamBlipForPromptableSegmentation(config).model.sam.prompt_encoder
    assert isinstance(encoder.mask_embed, EfficientSamMaskEmbedding)
    convs = [encoder.mask_embed.conv1, encoder.mask_embed.conv2, encoder.mask_embed.conv3]
    assert [(conv.out_channels, conv.kernel_size, conv.stride) for conv in convs] == [
        (4, (2, 2), (2, 2)),
        (16, (2, 2), (2, 2)),
        (config.prompt_encoder_config.hidden_size, (1, 1), (1, 1)),
    ]
    dense = encoder.mask_embed(torch.randn(5, 1, MASK_SIDE, MASK_SIDE))
    assert dense.shape == (5, config.prompt_encoder_config.hidden_size, 8, 8)
    with pytest.raises(ValueError, match="mask_input_channels"):
        type(config.prompt_encoder_config)(mask_input_channels=6)


def test_a_new_mask_encoder_changes_nothing():
    """Zero-initialised output conv and "no mask" embedding: the model predicts as it did without a mask encoder."""
    plain = EsamBlipForPromptableSegmentation(_config(mask_prompts=False)).eval()
    with_masks = EsamBlipForPromptableSegmentation(_config()).eval()
    missing = with_masks.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("mask_embed" in key for key in missing)
    pixels, points = torch.randn(2, 3, 64, 64), _points()
    with torch.no_grad():
        expected = plain(pixel_values=pixels, input_points=points)
        for masks in (None, torch.randn(2, 3, MASK_SIDE, MASK_SIDE)):
            got = with_masks(pixel_values=pixels, input_points=points, input_masks=masks)
            scale = expected.pred_masks.abs().max()  # random tiny decoders give small logits
            torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=1e-5 * scale)
            torch.testing.assert_close(got.iou_scores, expected.iou_scores, rtol=1e-5, atol=1e-7)


def test_per_query_masks_are_decoded_as_single_queries():
    model = EsamBlipForPromptableSegmentation(_config()).eval()
    _randomise_mask_encoder(model)
    pixels, points, masks = torch.randn(2, 3, 64, 64), _points(), torch.randn(2, 3, MASK_SIDE, MASK_SIDE)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
        together = model(image_embeddings=embeddings, input_points=points, input_masks=masks)
        scale = together.pred_masks.abs().max()  # random tiny decoders give small logits
        for b in range(2):
            for q in range(3):
                alone = model(
                    image_embeddings=embeddings[b : b + 1],
                    input_points=points[b : b + 1, q : q + 1],
                    input_masks=masks[b : b + 1, q : q + 1],
                )
                torch.testing.assert_close(alone.pred_masks[0, 0], together.pred_masks[b, q], rtol=0, atol=1e-5 * scale)
        # The mask prompt matters, and so does the "no mask" embedding.
        no_mask = model(image_embeddings=embeddings, input_points=points)
        other = model(image_embeddings=embeddings, input_points=points, input_masks=-masks)
    assert (together.pred_masks - other.pred_masks).abs().max() > 0.05 * scale
    assert (together.pred_masks - no_mask.pred_masks).abs().max() > 0.05 * scale


def test_iterative_refinement_with_texts_and_gradients():
    processor = tiny_processor()
    model = EsamBlipForPromptableSegmentation(_config())
    _randomise_mask_encoder(model)
    image = np.full((48, 40, 3), 120, dtype=np.uint8)
    inputs = processor(images=image, text=["the red circle", "the blue square"], return_tensors="pt")
    first = model(**inputs)
    assert first.pred_masks.shape[:2] == (2, 1)
    previous = first.pred_masks[:, :, 0].detach()  # one low-res mask per text query, fed back
    second = model(**inputs, input_masks=previous, labels=torch.ones(2, 1, MASK_SIDE, MASK_SIDE))
    assert second.pred_masks.shape == first.pred_masks.shape
    assert (second.pred_masks - first.pred_masks).abs().max() > 0.05 * first.pred_masks.abs().max()
    second.loss.backward()
    assert model.model.sam.prompt_encoder.mask_embed.conv1.weight.grad.abs().sum() > 0


def test_save_and_reload_keep_the_mask_encoder(tmp_path):
    model = EsamBlipForPromptableSegmentation(_config()).eval()
    _randomise_mask_encoder(model)
    model.save_pretrained(tmp_path)
    loaded = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.prompt_encoder_config.mask_prompts is True
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64), "input_points": _points(1, 2)}
    masks = torch.randn(1, 2, MASK_SIDE, MASK_SIDE)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs, input_masks=masks).pred_masks, model(**inputs, input_masks=masks).pred_masks
        )


@pytest.mark.parametrize(
    ("masks", "error", "message"),
    [
        (torch.randn(2, 3, 16, 16), ValueError, r"must have shape \[batch, queries, 32, 32\].*got \(2, 3, 16, 16\)"),
        (torch.zeros(2, 3, MASK_SIDE, MASK_SIDE, dtype=torch.long), TypeError, "floating-point mask logits"),
        (torch.full((2, 3, MASK_SIDE, MASK_SIDE), float("nan")), ValueError, "must be finite"),
        (torch.randn(2, 2, MASK_SIDE, MASK_SIDE), ValueError, "holds 2 masks per image but .* hold 3 queries"),
        (torch.randn(1, 3, MASK_SIDE, MASK_SIDE), ValueError, "batch size 1 but the prompts have 2"),
        (torch.randn(2, 3, MASK_SIDE), ValueError, r"must have shape \[batch, queries, 32, 32\]"),
        (np.zeros((2, 3, MASK_SIDE, MASK_SIDE), dtype=np.float32), TypeError, "must be a torch.Tensor"),
    ],
)
def test_mask_prompt_errors(masks, error, message):
    model = EsamBlipForPromptableSegmentation(_config())
    with pytest.raises(error, match=message):
        model(pixel_values=torch.randn(2, 3, 64, 64), input_points=_points(), input_masks=masks)


def test_a_model_without_mask_encoder_refuses_masks():
    model = EsamBlipForPromptableSegmentation(_config(mask_prompts=False))
    with pytest.raises(ValueError, match="`input_masks` needs a model with a mask encoder"):
        model(pixel_values=torch.randn(1, 3, 64, 64), input_points=_points(1, 1), input_masks=torch.randn(1, 1, 32, 32))


# The training mix.


def test_sampled_points_and_boxes():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:30] = True
    points, labels = sample_points(rng, mask, 5, single=False)
    assert labels[0] == PromptLabel.FOREGROUND and len(points) == len(labels) == 5
    for (x, y), label in zip(points, labels):
        assert mask[int(y), int(x)] == (label == PromptLabel.FOREGROUND)
    assert sample_points(rng, mask, 5, single=True)[1] == [int(PromptLabel.FOREGROUND)]
    for _ in range(20):
        x1, y1, x2, y2 = jittered_box(rng, mask, 0.1, 0.1)
        assert 0 <= x1 <= x2 <= 49 and 0 <= y1 <= y2 <= 39
        assert abs(x1 - 5) <= 5 and abs(y2 - 19) <= 5


def test_corrective_points_come_from_the_error_region():
    logits = torch.full((1, 2, 8, 8), -5.0)
    logits[0, 0, :4, :4] = 5.0  # query 0 predicts the top-left quarter
    labels = torch.zeros(1, 2, 8, 8)
    labels[0, 0, :4, :2] = 1  # ...but the object is its left half: false positives only
    labels[0, 1, 6, 6] = 1  # query 1 misses one pixel
    points, point_labels = corrective_points(logits, labels, frame_size=64, generator=torch.Generator().manual_seed(0))
    assert points.shape == (1, 2, 1, 2) and point_labels.shape == (1, 2, 1)
    x, y = (points[0, 0, 0] / 8 - 0.5).round().long().tolist()
    assert point_labels[0, 0, 0] == PromptLabel.BACKGROUND and y < 4 and 2 <= x < 4
    assert point_labels[0, 1, 0] == PromptLabel.FOREGROUND and points[0, 1, 0].tolist() == [52.0, 52.0]
    perfect, perfect_labels = corrective_points(labels * 10 - 5, labels, 64, torch.Generator().manual_seed(0))
    assert (perfect_labels == PromptLabel.PADDING).all() and (perfect == -1).all()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    return synthetic_referring_dataset(
        6, seed=3, cache_dir=str(cache), progress=False, image_size=64, min_side=16, max_side=32, absent_fraction=0.3
    )


@pytest.mark.parametrize("kind", ["text", "text_points", "points", "box"])
def test_prompt_mix_collator_kinds(kind, dataset):
    config = _config()
    collator = EsamBlipPromptMixCollator(tiny_processor(), config, PromptMix(weights={kind: 1.0}))
    features = [dataset[i] for i in range(len(dataset))]
    batch = collator(features)
    present = sum(bool(feature["match_label"]) for feature in features)
    if kind in ("text", "text_points"):
        assert batch["input_ids"].shape[0] == len(features) and "match_labels" in batch
    else:
        assert "input_ids" not in batch and "match_labels" not in batch
        assert batch["pixel_values"].shape[0] == batch["labels"].shape[0] == present
    if kind in ("text_points", "points"):
        labels = batch["input_labels"][:, 0]
        assert ((labels == PromptLabel.FOREGROUND).sum(-1) >= 1).sum() == present
    if kind == "box":
        assert batch["input_boxes"].shape == (present, 1, 4)


def test_prompt_mix_errors():
    with pytest.raises(ValueError, match="unknown keys"):
        PromptMix(weights={"scribble": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        PromptMix(weights={"text": 0.0})
    with pytest.raises(ValueError, match="refine_probability"):
        PromptMix(refine_probability=1.5)
    with pytest.raises(ValueError, match="max_points"):
        EsamBlipPromptMixCollator(tiny_processor(), _config(), PromptMix(max_points=99))


def test_refinement_training_trains_the_mask_encoder(tmp_path, dataset):
    model = EsamBlipForPromptableSegmentation(_config())
    before = model.model.sam.prompt_encoder.mask_embed.conv3.weight.detach().clone()
    mix = PromptMix(refine_probability=1.0)
    trainer = build_trainer(
        model, tiny_processor(), dataset, output_dir=tmp_path, max_steps=4, per_device_train_batch_size=4,
        learning_rate=1e-2, disable_tqdm=True, save_strategy="no", prompt_mix=mix,
    )  # fmt: skip
    assert isinstance(trainer, EsamBlipRefinementTrainer)
    trainer.train()
    assert not torch.equal(model.model.sam.prompt_encoder.mask_embed.conv3.weight, before)
    with pytest.raises(ValueError, match="no mask encoder"):
        build_trainer(
            EsamBlipForPromptableSegmentation(_config(mask_prompts=False)), tiny_processor(), dataset,
            output_dir=tmp_path, prompt_mix=mix,
        )  # fmt: skip


def test_training_command_adds_a_mask_encoder(tmp_path):
    argv = ["--config", "tiny", "--dataset", "synthetic", "--num_scenes", "3", "--scene_size", "64"]
    argv += ["--cache_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    assert main([*argv, "--mask_prompts", "--prompt_mix", "--refine_probability", "1"]) == 0
    model = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path / "out")
    assert model.config.prompt_encoder_config.mask_prompts is True
    # A checkpoint without one gets a no-op mask encoder to fine-tune.
    argv2 = ["--model", str(tmp_path / "out"), *argv[2:6], "--cache_dir", str(tmp_path / "data")]
    assert main([*argv2, "--output_dir", str(tmp_path / "again"), "--max_steps", "1", "--prompt_mix"]) == 0


def test_binary_mask_logit_is_confident():
    assert torch.sigmoid(torch.tensor(MASK_PROMPT_LOGIT)) > 0.9999
