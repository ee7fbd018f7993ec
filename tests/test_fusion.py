"""Encoder fusion: shapes, identity at init (exactly the no-fusion outputs), gradients, multilevel encoder, errors."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sam_config_kwargs

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation
from transformers_esam_blip.fusion import ZERO_INIT_LAYERS, blip_tokens_to_grid, build_fusion

FUSION_TYPES = ["concat", "cross_attention", "adapter", "multilevel"]


def tiny_joint_config(**overrides) -> EsamBlipConfig:
    """Tiny EfficientSAM (64² input, 8x8 grid, width 16) plus a tiny BLIP (32² input, 2x2 grid, width 32)."""
    blip = {
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "intermediate_size": 64,
        },
        "text_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 50,
            "bos_token_id": 1,
            "sep_token_id": 3,
        },
        "gradcam_block_num": 1,
        "enc_token_id": 2,
    }
    return EsamBlipConfig(**tiny_sam_config_kwargs(), **blip, **overrides)


def _inputs(batch_size: int = 2) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.randn(batch_size, 3, 64, 64),
        "blip_pixel_values": torch.randn(batch_size, 3, 32, 32),
        "input_points": torch.rand(batch_size, 2, 2, 2) * 64,
    }


@pytest.mark.parametrize("fusion_type", ["concat", "cross_attention", "adapter"])
def test_fusion_modules_map_to_the_sam_shape_and_start_as_identity(fusion_type):
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type=fusion_type))
    image_embeddings = torch.randn(2, 16, 8, 8)
    blip_image_embeds = torch.randn(2, 5, 32)
    fused = model.model.fusion(image_embeddings, blip_image_embeds)
    assert fused.shape == (2, 16, 8, 8)
    torch.testing.assert_close(fused, image_embeddings, rtol=0, atol=0)


def test_multilevel_fusion_is_the_identity_on_vit_tokens_at_init():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="multilevel"))
    hidden_states = torch.randn(2, 64, 32)  # [B, g*g, EfficientSAM ViT width]
    assert model.model.fusion.location == "encoder"
    assert torch.equal(model.model.fusion(hidden_states, torch.randn(2, 5, 32)), hidden_states)


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_fresh_fusion_gives_exactly_the_no_fusion_outputs(fusion_type):
    fused_model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type=fusion_type)).eval()
    plain = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    result = plain.load_state_dict(fused_model.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(key.startswith("model.fusion.") for key in result.unexpected_keys)
    inputs = _inputs()
    with torch.no_grad():
        expected = plain(**inputs)
        out = fused_model(**inputs)
    torch.testing.assert_close(out.pred_masks, expected.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(out.iou_scores, expected.iou_scores, rtol=0, atol=0)
    assert out.blip_image_embeds.shape == (2, 5, 32)


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "esam-blip"
    EsamBlipForPromptableSegmentation(tiny_joint_config()).save_pretrained(path)
    return path


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_fusion_added_to_a_pretrained_checkpoint_starts_from_its_outputs(plain_checkpoint, fusion_type):
    plain = EsamBlipForPromptableSegmentation.from_pretrained(plain_checkpoint).eval()
    fused = EsamBlipForPromptableSegmentation.from_pretrained(plain_checkpoint, fusion_type=fusion_type).eval()
    assert fused.model.fusion is not None and plain.model.fusion is None
    inputs = _inputs()
    with torch.no_grad():
        expected, out = plain(**inputs), fused(**inputs)
    torch.testing.assert_close(out.pred_masks, expected.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(out.iou_scores, expected.iou_scores, rtol=0, atol=0)


def test_fusion_none_builds_no_keys():
    keys = EsamBlipForPromptableSegmentation(tiny_joint_config()).state_dict()
    assert not any(key.startswith(("model.fusion", "model.prompter")) for key in keys)
    assert build_fusion(tiny_joint_config()) is None


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_gradients_reach_the_fusion_parameters(fusion_type):
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type=fusion_type)).train()
    fusion = model.model.fusion
    labels = (torch.rand(2, 2, 32, 32) > 0.5).float()

    def fusion_grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**_inputs(), labels=labels).loss.backward()
        return {name: param.grad for name, param in fusion.named_parameters()}

    zeroed = [name for name, module in fusion.named_modules() if isinstance(module, ZERO_INIT_LAYERS)]
    grads = fusion_grads()
    for name in zeroed:  # at init only the zeroed ends of the branches can move
        assert grads[f"{name}.weight"].abs().sum() > 0, name
    with torch.no_grad():
        for name in zeroed:
            fusion.get_submodule(name).weight.normal_(std=0.1)
    grads = fusion_grads()
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads.values()), [
        name for name, grad in grads.items() if grad is None or grad.abs().sum() == 0
    ]


def test_multilevel_adds_the_features_after_the_chosen_block():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    encoder = model.model.sam.vision_encoder
    pixel_values = torch.randn(1, 3, 64, 64)
    features = torch.randn(1, 64, 32)
    handle = encoder.layers[0].register_forward_hook(lambda module, args, output: output + features)
    with torch.no_grad():
        expected = encoder(pixel_values)
        handle.remove()
        fused = encoder(pixel_values, fusion=lambda hidden_states: hidden_states + features, fusion_layer=0)
        plain = encoder(pixel_values)
    torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    assert not torch.equal(fused, plain)


def test_blip_grid_is_resized_bilinearly_to_the_sam_grid():
    tokens = torch.randn(2, 5, 3)
    grid = blip_tokens_to_grid(tokens, 4)
    expected = F.interpolate(tokens[:, 1:].transpose(1, 2).reshape(2, 3, 2, 2), size=(4, 4), mode="bilinear")
    torch.testing.assert_close(grid, expected)
    torch.testing.assert_close(blip_tokens_to_grid(tokens, 2), tokens[:, 1:].transpose(1, 2).reshape(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"square patch grid.*\(2, 6, 3\)"):
        blip_tokens_to_grid(torch.randn(2, 6, 3), 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion_type": "magic"}, r"`fusion_type` must be one of \('none', 'concat', .*\), got 'magic'"),
        ({"fusion_type": "multilevel", "fusion_layer": 2}, r"`fusion_layer`.*\[0, 1\], got 2"),
        ({"fusion_type": "cross_attention", "fusion_num_attention_heads": 3}, r"\(3\) must divide.*\(16\)"),
        ({"fusion_type": "adapter", "fusion_hidden_size": 0}, r"`fusion_hidden_size` must be >= 1, got 0"),
    ],
)
def test_config_rejects_bad_fusion_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_joint_config(**kwargs)


def test_fusion_needs_both_halves_and_blip_inputs():
    with pytest.raises(ValueError, match=r"`fusion_type='concat'` joins BLIP and EfficientSAM.*has_blip=False"):
        EsamBlipConfig(**tiny_sam_config_kwargs(), fusion_type="concat")
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="adapter")).eval()
    inputs = _inputs(1)
    with pytest.raises(ValueError, match=r"`fusion_type='adapter'` need exactly one of `blip_pixel_values`"):
        model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])
    with pytest.raises(ValueError, match=r"BLIP images \(2\) and the EfficientSAM images \(1\)"):
        model(**{**inputs, "blip_pixel_values": torch.randn(2, 3, 32, 32)})
    model.config.fusion_type = "magic"
    with pytest.raises(ValueError, match="`fusion_type` must be one of"):
        build_fusion(model.config)


def test_cached_embeddings_are_fused_in_forward_except_multilevel():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="concat")).eval()
    with torch.no_grad():
        model.model.fusion.conv_out.weight.normal_(std=0.1)  # a trained fusion: not the identity
        inputs = _inputs(1)
        direct = model(**inputs)
        cached = model(
            image_embeddings=model.get_image_embeddings(inputs["pixel_values"]),
            blip_pixel_values=inputs["blip_pixel_values"],
            input_points=inputs["input_points"],
        )
    torch.testing.assert_close(cached.pred_masks, direct.pred_masks, rtol=0, atol=0)
    multilevel = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="multilevel")).eval()
    with pytest.raises(ValueError, match="multilevel.*inside the EfficientSAM encoder: pass `pixel_values`"):
        multilevel(
            image_embeddings=direct.image_embeddings,
            blip_pixel_values=inputs["blip_pixel_values"],
            input_points=inputs["input_points"],
        )
