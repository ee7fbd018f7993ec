"""`config.itm_fusion`: EfficientSAM embeddings added to BLIP's tokens for ITM, identity at init, gradients, errors."""

import pytest
import torch
import torch.nn.functional as F
from test_fusion import tiny_joint_config

from transformers_esam_blip import EsamBlipConfig, EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation
from transformers_esam_blip.training import EsamBlipItmCollator, apply_freezing, tiny_processor


def _texts(num_texts: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.cat(
            [torch.full((num_texts, 1), 1), torch.randint(5, 50, (num_texts, 4), generator=generator)], dim=1
        ),
        "attention_mask": torch.ones(num_texts, 5, dtype=torch.long),
    }


def _images(batch: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return {
        "pixel_values": torch.randn(batch, 3, 64, 64, generator=generator),
        "blip_pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
    }


def _pair(**overrides):
    """The same random weights with and without `itm_fusion` (the fused model's extra keys at their init)."""
    torch.manual_seed(0)
    plain = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="itm", **overrides)).eval()
    fused = EsamBlipForPromptableSegmentation(
        tiny_joint_config(prompter_source="itm", itm_fusion=True, **overrides)
    ).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [
        "model.itm_fusion.norm.bias",
        "model.itm_fusion.norm.weight",
        "model.itm_fusion.proj.bias",
        "model.itm_fusion.proj.weight",
    ]
    assert not unexpected
    return plain, fused


def _perturb(model: EsamBlipForPromptableSegmentation) -> None:
    with torch.no_grad():
        model.model.itm_fusion.proj.weight.normal_(std=0.5)


@pytest.mark.parametrize("mode", ["learned", "gradcam"])
def test_fresh_itm_fusion_gives_exactly_the_plain_outputs(mode):
    plain, fused = _pair()
    inputs = {**_images(), **_texts()}
    with torch.no_grad():
        expected, actual = plain(**inputs, text_prompt_mode=mode), fused(**inputs, text_prompt_mode=mode)
    for name in ("itm_probability", "pred_masks", "iou_scores"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=0, atol=0)


def test_module_pools_the_sam_grid_onto_the_blip_patches():
    _, fused = _pair()
    module = fused.model.itm_fusion
    _perturb(fused)
    blip = torch.randn(2, 5, 32)  # [CLS] + 2x2 patches
    sam = torch.randn(2, 16, 8, 8)
    out = module(blip, sam)
    pooled = sam.reshape(2, 16, 2, 4, 2, 4).mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # 4x4 blocks
    expected = blip[:, 1:] + module.proj(F.layer_norm(pooled, (16,), module.norm.weight, module.norm.bias))
    torch.testing.assert_close(out[:, 1:], expected)
    assert torch.equal(out[:, 0], blip[:, 0])
    with pytest.raises(ValueError, match="square patch grid"):
        module(torch.randn(2, 6, 32), sam)
    with pytest.raises(ValueError, match=r"batch of `blip_image_embeds` \(2\)"):
        module(blip, sam[:1])
    with pytest.raises(ValueError, match=r"must be \[batch, 16, g, g\].*got \(2, 8, 8, 8\)"):
        module(blip, sam[:, :8])


def test_matching_reads_the_sam_features_and_trains_them():
    _, fused = _pair()
    _perturb(fused)
    inputs = {**_images(), **_texts()}
    other = {**inputs, "pixel_values": inputs["pixel_values"].flip(-1)}
    with torch.no_grad():
        first = fused(**inputs, text_prompt_mode="learned").itm_probability
        second = fused(**other, text_prompt_mode="learned").itm_probability
    assert not torch.allclose(first, second)  # same BLIP input, different EfficientSAM input

    fused.train()
    loss = fused(**inputs, text_prompt_mode="learned", match_labels=torch.tensor([1, 0, 1])).loss
    loss.backward()
    assert fused.model.itm_fusion.proj.weight.grad.abs().sum() > 0
    assert fused.model.itm_fusion.norm.weight.grad.abs().sum() > 0
    sam_patch_embed = next(fused.model.sam.vision_encoder.parameters())
    assert sam_patch_embed.grad is not None and sam_patch_embed.grad.abs().sum() > 0


def test_image_text_matching_model_needs_and_uses_the_sam_input():
    _, fused = _pair()
    _perturb(fused)
    matcher = EsamBlipForImageTextMatching(fused.config).eval()
    matcher.load_state_dict(fused.state_dict())
    images, texts = _images(), _texts()
    with torch.no_grad():
        expected = fused(**images, **texts, text_prompt_mode="learned").itm_probability
        score = matcher(**texts, **images).itm_score.softmax(dim=-1)[:, 1]
        embeddings = matcher.model.get_image_embeddings(images["pixel_values"])
        cached = matcher(**texts, blip_pixel_values=images["blip_pixel_values"], image_embeddings=embeddings)
        itc = matcher(**texts, blip_pixel_values=images["blip_pixel_values"], use_itm_head=False)  # ITC: BLIP only
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(cached.itm_score, matcher(**texts, **images).itm_score)
    assert itc.itm_score.shape == (1, 3)
    gradcam = matcher.compute_gradcam(**texts, **images)
    torch.testing.assert_close(gradcam.itm_logits.softmax(dim=-1)[:, 1], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`config.itm_fusion`"):
        matcher(**texts, blip_pixel_values=images["blip_pixel_values"])
    with pytest.raises(ValueError, match="`config.itm_fusion`"):
        matcher.compute_gradcam(**texts, blip_pixel_values=images["blip_pixel_values"])


def test_freezing_presets_train_the_itm_fusion():
    _, fused = _pair()
    for preset in ("prompter_fusion", "itm", "itm_heads"):
        apply_freezing(fused, preset)
        assert all(p.requires_grad for p in fused.model.itm_fusion.parameters()), preset
    apply_freezing(fused, "itm_heads")
    assert not any(p.requires_grad for p in fused.model.blip.vision_model.parameters())
    apply_freezing(fused, "decoder")
    assert not any(p.requires_grad for p in fused.model.itm_fusion.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"itm_fusion": True, "fusion_type": "multilevel"}, ValueError, "choose one of the two"),
        ({"itm_fusion": "yes"}, TypeError, "`itm_fusion` must be a bool"),
    ],
)
def test_config_rejects_bad_itm_fusion_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        EsamBlipForPromptableSegmentation(tiny_joint_config(**kwargs))


def test_itm_fusion_needs_both_halves():
    config = tiny_joint_config()
    with pytest.raises(ValueError, match="`itm_fusion=True` joins BLIP and EfficientSAM"):
        EsamBlipConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            gradcam_block_num=1,
            itm_fusion=True,
        )


def test_itm_collator_passes_the_sam_pixels_when_asked():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    features = [{"image": image, "text": "a red circle", "match_label": 1}]
    assert "pixel_values" not in EsamBlipItmCollator(tiny_processor())(features)
    batch = EsamBlipItmCollator(tiny_processor(), sam_pixel_values=True)(features)
    assert batch["pixel_values"].shape[0] == 1
