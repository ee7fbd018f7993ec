"""Learned text prompts: prompter tokens, ITM outputs, loss through forward, a short training run, save/load."""

import pytest
import torch
from test_fusion import tiny_joint_config
from transformers import AutoModel

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipModel
from transformers_esam_blip.losses import itm_loss, segmentation_loss
from transformers_esam_blip.prompts import assemble_prompts


def _batch(num_images: int = 2) -> dict[str, torch.Tensor]:
    """Two texts ([CLS]=1 ... [SEP]=3, right padding), their images, and target masks at the 32x32 mask size."""
    input_ids = torch.tensor([[1, 5, 6, 7, 3], [1, 8, 9, 3, 0]])
    labels = torch.zeros(2, 32, 32)
    labels[0, 4:16, 4:20] = 1
    labels[1, 18:30, 10:28] = 1
    return {
        "pixel_values": torch.randn(num_images, 3, 64, 64),
        "blip_pixel_values": torch.randn(num_images, 3, 32, 32),
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "text_prompt_mode": "learned",
        "labels": labels,
        "match_labels": torch.tensor([1, 0]),
    }


def _without_targets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key not in ("labels", "match_labels")}


@pytest.fixture
def model() -> EsamBlipForPromptableSegmentation:
    return EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="text", num_prompt_tokens=3)).eval()


def test_learned_mode_outputs_masks_and_itm_match(model):
    batch = _without_targets(_batch())
    with torch.no_grad():
        out = model(**batch)
        blip = model.model.blip
        itm_logits = blip.itm_logits(batch["input_ids"], batch["attention_mask"], out.blip_image_embeds)
    assert out.loss is None
    assert out.pred_masks.shape == (2, 1, 3, 32, 32) and out.iou_scores.shape == (2, 1, 3)
    torch.testing.assert_close(out.itm_probability, itm_logits.softmax(-1)[:, 1])
    torch.testing.assert_close(out.is_match, out.itm_probability >= model.config.match_threshold)
    assert type(out).__name__ == "EsamBlipSegmentationOutput" and "heatmap" not in out  # no Grad-CAM fields


def test_prompter_tokens_are_appended_after_the_point_embeddings(model):
    batch = _without_targets(_batch())
    points = torch.rand(2, 2, 1, 2) * 64
    sam, blip = model.model.sam, model.model.blip
    with torch.no_grad():
        alone = model(**batch)
        with_points = model(**batch, input_points=points)
        tokens = model.model.prompter(blip.get_text_features(batch["input_ids"], batch["attention_mask"])[:, 0])
        embeddings = alone.image_embeddings
        expected_alone = sam.decode(embeddings, tokens[:, None])
        prompts = assemble_prompts(points, torch.ones(2, 2, 1), None, model.config.prompt_encoder_config.max_num_points)
        sparse = torch.cat([sam.embed_prompts(*prompts), tokens[:, None].expand(-1, 2, -1, -1)], dim=2)
        expected_points = sam.decode(embeddings, sparse)
    assert tokens.shape == (2, 3, 16)  # num_prompt_tokens x the decoder width
    torch.testing.assert_close(alone.pred_masks, expected_alone[0], rtol=0, atol=0)
    assert with_points.pred_masks.shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(with_points.pred_masks, expected_points[0], rtol=0, atol=0)
    torch.testing.assert_close(with_points.iou_scores, expected_points[1], rtol=0, atol=0)


@pytest.mark.parametrize("source", ["text", "itm"])
def test_prompter_reads_the_configured_text_features(source):
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source=source)).eval()
    batch = _without_targets(_batch())
    seen = []
    model.model.prompter.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    blip = model.model.blip
    with torch.no_grad():
        out = model(**batch)
        if source == "itm":
            multimodal = blip.get_multimodal_features(
                batch["input_ids"], batch["attention_mask"], out.blip_image_embeds
            )
            expected = multimodal[:, 0]
        else:
            expected = blip.get_text_features(batch["input_ids"], batch["attention_mask"])[:, 0]
    torch.testing.assert_close(seen[0], expected)


def test_one_image_serves_every_text(model):
    batch = _without_targets(_batch(num_images=1))
    with torch.no_grad():
        shared = model(**batch)
        repeated = model(
            **{
                **batch,
                "pixel_values": batch["pixel_values"].expand(2, -1, -1, -1),
                "blip_pixel_values": batch["blip_pixel_values"].expand(2, -1, -1, -1),
            }
        )
    assert shared.image_embeddings.shape[0] == 1
    torch.testing.assert_close(shared.pred_masks, repeated.pred_masks, rtol=0, atol=1e-5)


def test_learned_mode_is_differentiable_end_to_end():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="itm", fusion_type="adapter")).train()
    model(**_batch()).loss.backward()
    parts = {
        "prompter": model.model.prompter.fc1.weight,
        "BLIP ViT": model.model.blip.vision_model.embeddings.patch_embedding.weight,
        "BLIP text encoder": model.model.blip.text_encoder.embeddings.word_embeddings.weight,
        "ITM head": model.model.blip.itm_head.weight,
        "fusion": model.model.fusion.blip_adapter.up.weight,
        "EfficientSAM ViT": model.model.sam.vision_encoder.patch_embed.weight,
        "mask decoder": model.model.sam.mask_decoder.iou_token.weight,
    }
    assert [name for name, param in parts.items() if param.grad is None or param.grad.abs().sum() == 0] == []


def test_loss_comes_first_and_sums_the_weighted_parts():
    config = tiny_joint_config(prompter_source="text", focal_loss_weight=10.0, iou_loss_weight=2.0, itm_loss_weight=0.5)
    model = EsamBlipForPromptableSegmentation(config).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        blip = model.model.blip
        itm_logits = blip.itm_logits(batch["input_ids"], batch["attention_mask"], out.blip_image_embeds)
    present = batch["match_labels"].bool()  # the absent text (match label 0) trains no mask
    mask_loss, _ = segmentation_loss(
        out.pred_masks, out.iou_scores, batch["labels"], focal_weight=10.0, iou_weight=2.0, valid=present
    )
    torch.testing.assert_close(out.loss, mask_loss + 0.5 * itm_loss(itm_logits, batch["match_labels"]))
    torch.testing.assert_close(as_tuple[0], out.loss)


def test_absent_expressions_train_only_the_itm_head_unless_configured():
    torch.manual_seed(0)
    batch = _batch()
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="text")).eval()
    with torch.no_grad():
        out = model(**batch)
        other_absent_mask = model(**{**batch, "labels": torch.stack([batch["labels"][0], 1 - batch["labels"][1]])})
        itm_logits = model.model.blip.itm_logits(batch["input_ids"], batch["attention_mask"], out.blip_image_embeds)
    torch.testing.assert_close(other_absent_mask.loss, out.loss, rtol=0, atol=0)

    model.config.absent_mask_loss = True
    with torch.no_grad():
        with_absent = model(**batch)
    every_mask, _ = segmentation_loss(with_absent.pred_masks, with_absent.iou_scores, batch["labels"])
    torch.testing.assert_close(with_absent.loss, every_mask + itm_loss(itm_logits, batch["match_labels"]))

    model.config.absent_mask_loss = False
    model.train()
    all_absent = model(**{**batch, "match_labels": torch.tensor([0, 0])})
    torch.testing.assert_close(all_absent.loss, itm_loss(itm_logits, torch.tensor([0, 0])))
    all_absent.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_full_resolution_labels_need_original_sizes(model):
    batch = _batch()
    full = batch["labels"].repeat_interleave(3, dim=-2).repeat_interleave(2, dim=-1)  # images of 96x64 (H x W)
    with torch.no_grad():
        expected = model(**batch).loss
        loss = model(**{**batch, "labels": full, "original_sizes": torch.tensor([[96, 64], [96, 64]])}).loss
        with pytest.raises(ValueError, match=r"size \(96, 64\).*neither.*\(32, 32\).*pass `original_sizes`"):
            model(**{**batch, "labels": full})
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_labels_train_point_prompts_and_match_labels_need_learned_texts(model):
    batch = _batch()
    points = torch.rand(2, 1, 1, 2) * 64
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], input_points=points, labels=batch["labels"])
        expected, _ = segmentation_loss(out.pred_masks, out.iou_scores, batch["labels"])
        ignored = model(
            pixel_values=batch["pixel_values"],
            input_points=points,
            labels=batch["labels"],
            match_labels=batch["match_labels"],
        )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(ignored.loss, expected)  # no ITM logits to train without learned text prompts


def test_learned_mode_errors():
    no_prompter = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    with pytest.raises(ValueError, match=r"needs a learned text prompter, but config.prompter_source is None"):
        no_prompter(**_batch())
    with pytest.raises(
        ValueError, match=r"`text_prompt_mode` must be one of \('auto', 'gradcam', 'learned'\), got 'magic'"
    ):
        no_prompter(**{**_batch(), "text_prompt_mode": "magic"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompter_source": "vision"}, r"`prompter_source` must be None .* \('text', 'itm'\), got 'vision'"),
        ({"prompter_source": "text", "num_prompt_tokens": 0}, r"`num_prompt_tokens` must be >= 1, got 0"),
        ({"dice_loss_weight": -1.0}, r"`dice_loss_weight` must be a finite number >= 0, got -1.0"),
    ],
)
def test_config_rejects_bad_prompter_and_loss_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_joint_config(**kwargs)


def test_prompter_needs_the_blip_half():
    from conftest import tiny_sam_config_kwargs

    with pytest.raises(ValueError, match=r"`prompter_source='itm'` joins BLIP and EfficientSAM"):
        EsamBlipConfig(**tiny_sam_config_kwargs(), prompter_source="itm")


def test_short_training_run_lowers_the_loss_and_the_checkpoint_reloads(tmp_path):
    config = tiny_joint_config(prompter_source="itm", fusion_type="adapter")
    model = EsamBlipForPromptableSegmentation(config).train()
    batch = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses

    model.eval().save_pretrained(tmp_path)
    base, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(base, EsamBlipModel)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    trained = model.model.state_dict()
    reloaded = base.state_dict()
    assert trained.keys() == reloaded.keys()
    assert all(torch.equal(trained[key], reloaded[key]) for key in trained)
    assert base.fusion.blip_adapter.up.weight.abs().sum() > 0  # trained, not re-zeroed by `_init_weights`

    again = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected, out = model(**batch), again(**batch)
    torch.testing.assert_close(out.pred_masks, expected.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=0)
