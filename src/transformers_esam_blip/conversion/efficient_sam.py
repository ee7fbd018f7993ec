"""Original EfficientSAM checkpoints (yformer/EfficientSAM) → the `sam` half of EsamBlip: key map and config."""

import re
from pathlib import Path

import torch

from ..configuration_esam_blip import (
    EfficientSamMaskDecoderConfig,
    EfficientSamPromptEncoderConfig,
    EfficientSamVisionConfig,
)
from .files import check_state_dict, load_torch_file

# (original pattern, our replacement); every original key must match exactly one rule.
_KEY_RULES: list[tuple[str, str]] = [
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.patch_embed\.proj\.(weight|bias)$", r"vision_encoder.patch_embed.\1"),
    (r"^image_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)$", r"vision_encoder.layers.\1.layer_norm\2.\3"),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", r"vision_encoder.layers.\1.attn.\2.\3"),
    (r"^image_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"vision_encoder.layers.\1.mlp.\2.\3"),
    (r"^image_encoder\.neck\.0\.weight$", "vision_encoder.neck.conv1.weight"),
    (r"^image_encoder\.neck\.1\.(weight|bias)$", r"vision_encoder.neck.layer_norm1.\1"),
    (r"^image_encoder\.neck\.2\.weight$", "vision_encoder.neck.conv2.weight"),
    (r"^image_encoder\.neck\.3\.(weight|bias)$", r"vision_encoder.neck.layer_norm2.\1"),
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (r"^prompt_encoder\.invalid_points\.weight$", "prompt_encoder.invalid_point_embed.weight"),
    (r"^prompt_encoder\.point_embeddings\.weight$", "prompt_encoder.point_embed.weight"),
    (r"^prompt_encoder\.bbox_top_left_embeddings\.weight$", "prompt_encoder.box_top_left_embed.weight"),
    (r"^prompt_encoder\.bbox_bottom_right_embeddings\.weight$", "prompt_encoder.box_bottom_right_embed.weight"),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        r"\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$",
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.(weight|bias)$",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.(\d+)\.0\.(weight|bias)$",
        r"mask_decoder.transformer.layers.\1.mlp.layers.\2.\3",
    ),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.fc\.(weight|bias)$",
        r"mask_decoder.transformer.layers.\1.mlp.proj_out.\2",
    ),
    (
        r"^mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$",
        r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
    ),
    (
        r"^mask_decoder\.transformer\.norm_final_attn\.(weight|bias)$",
        r"mask_decoder.transformer.layer_norm_final_attn.\1",
    ),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.weight$", r"mask_decoder.\1.weight"),
    (
        r"^mask_decoder\.final_output_upscaling_layers\.(\d+)\.0\.(weight|bias)$",
        r"mask_decoder.upscaling_layers.\1.conv.\2",
    ),
    (
        r"^mask_decoder\.final_output_upscaling_layers\.(\d+)\.1\.(weight|bias)$",
        r"mask_decoder.upscaling_layers.\1.norm.\2",
    ),
    (
        r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.0\.(weight|bias)$",
        r"mask_decoder.\1.layers.\2.\3",
    ),
    (
        r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.fc\.(weight|bias)$",
        r"mask_decoder.\1.proj_out.\2",
    ),
]
_COMPILED_RULES = [(re.compile(pattern), replacement) for pattern, replacement in _KEY_RULES]


def load_efficient_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original checkpoint (`{"model": state_dict}` or a bare state dict) without unpickling objects."""
    path = Path(path)
    return check_state_dict(load_torch_file(path, "--efficientsam"), path, "--efficientsam")


def rename_efficient_sam_key(key: str) -> str | None:
    """Our name (relative to `EfficientSamModule`) for an original key, or None when no rule knows it."""
    for pattern, replacement in _COMPILED_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def efficient_sam_configs_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    num_heads: int | None = None,
    image_size: int = 1024,
    decoder_num_heads: int = 8,
) -> dict[str, object]:
    """
    Infer the three EfficientSAM sub-configs from the shapes of an original state dict.

    Args:
        state_dict: original keys (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`).
        num_heads: ViT heads; defaults to width / 64 (EfficientSAM-Ti: 3, -S: 6). Not stored in the checkpoint.
        image_size: encoder input side (1024 for every released EfficientSAM).
        decoder_num_heads: decoder heads (8 in every released EfficientSAM; not recoverable from shapes).

    Returns:
        `{"sam_vision_config": ..., "prompt_encoder_config": ..., "mask_decoder_config": ...}` config objects.
    """
    required = [
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.pos_embed",
        "image_encoder.blocks.0.mlp.fc1.weight",
        "image_encoder.neck.0.weight",
        "image_encoder.neck.2.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "mask_decoder.iou_token.weight",
        "mask_decoder.mask_tokens.weight",
        "mask_decoder.transformer.layers.0.mlp.layers.0.0.weight",
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
        "mask_decoder.iou_prediction_head.layers.0.0.weight",
    ]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"--efficientsam: not an EfficientSAM checkpoint, missing keys: {missing}")
    patch_weight = state_dict["image_encoder.patch_embed.proj.weight"]
    width, patch_size = patch_weight.shape[0], patch_weight.shape[-1]
    num_heads = num_heads if num_heads is not None else max(width // 64, 1)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"--sam_num_heads must be a positive int, got {num_heads!r}.")
    if width % num_heads:
        raise ValueError(f"--sam_num_heads: {num_heads} heads do not divide the encoder width {width}.")
    num_positions = state_dict["image_encoder.pos_embed"].shape[1] - 1
    pretrain_grid = int(round(num_positions**0.5))
    if pretrain_grid * pretrain_grid != num_positions:
        raise ValueError(f"--efficientsam: pos_embed holds {num_positions} + 1 positions, not a square grid + cls.")
    vision = EfficientSamVisionConfig(
        hidden_size=width,
        num_hidden_layers=_count(state_dict, r"^image_encoder\.blocks\.(\d+)\."),
        num_attention_heads=num_heads,
        mlp_ratio=state_dict["image_encoder.blocks.0.mlp.fc1.weight"].shape[0] / width,
        num_channels=patch_weight.shape[1],
        image_size=image_size,
        patch_size=patch_size,
        pretrain_image_size=pretrain_grid * patch_size,
        neck_hidden_sizes=[
            state_dict["image_encoder.neck.0.weight"].shape[0],
            state_dict["image_encoder.neck.2.weight"].shape[0],
        ],
    )
    hidden = state_dict["mask_decoder.iou_token.weight"].shape[1]
    prompt = EfficientSamPromptEncoderConfig(
        hidden_size=2 * state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1],
        image_size=image_size,
        image_embedding_size=image_size // patch_size,
    )
    upscaling = []
    while f"mask_decoder.final_output_upscaling_layers.{len(upscaling)}.0.weight" in state_dict:
        upscaling.append(state_dict[f"mask_decoder.final_output_upscaling_layers.{len(upscaling)}.0.weight"].shape[1])
    decoder = EfficientSamMaskDecoderConfig(
        hidden_size=hidden,
        num_hidden_layers=_count(state_dict, r"^mask_decoder\.transformer\.layers\.(\d+)\."),
        num_attention_heads=decoder_num_heads,
        mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.layers.0.0.weight"].shape[0],
        attention_downsample_rate=hidden
        // state_dict["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0],
        num_multimask_outputs=state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(state_dict, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.") + 1,
        iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.0.weight"].shape[0],
        upscaling_hidden_sizes=upscaling,
    )
    return {"sam_vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}


def convert_efficient_sam_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every original key to `EfficientSamModule`'s names; unknown keys raise a ValueError listing them."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = rename_efficient_sam_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(
            f"--efficientsam: {len(unknown)} unknown keys (not an original EfficientSAM layout): {unknown}"
        )
    return converted


__all__ = [
    "convert_efficient_sam_state_dict",
    "efficient_sam_configs_from_state_dict",
    "load_efficient_sam_state_dict",
    "rename_efficient_sam_key",
]
