"""Build a built-in preset's processor and config (random weights), e.g. to train it from scratch."""

import copy
import tempfile
from pathlib import Path
from typing import Any

from .builtin import BUILTIN_PRESETS, BuiltinPreset
from .configuration_esam_blip import EfficientSamPromptEncoderConfig, EsamBlipConfig
from .data import COLOURS, EXPRESSION_TEMPLATES, SHAPES
from .image_processing_esam_blip import EsamBlipImageProcessor
from .processing_esam_blip import ENC_TOKEN, EsamBlipProcessor, build_blip_tokenizer

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SAM_SUB_CONFIGS = ("sam_vision_config", "prompt_encoder_config", "mask_decoder_config")


def synthetic_processor(sam_image_size: int, blip_image_size: int, mask_input_size: int = 256) -> EsamBlipProcessor:
    """
    A processor for the synthetic task: the given input sides (and mask-prompt side) and a BLIP tokenizer over the
    task's vocabulary.
    """
    words = {word for template in EXPRESSION_TEMPLATES for word in template.split() if not word.startswith("{")}
    vocabulary = [*_SPECIAL_TOKENS, *sorted(words), *COLOURS, *SHAPES]
    with tempfile.TemporaryDirectory() as folder:  # the BLIP tokenizer builder reads a vocab.txt file
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        tokenizer = build_blip_tokenizer(vocab_file)
    image_processor = EsamBlipImageProcessor(
        sam_image_size=sam_image_size, blip_image_size=blip_image_size, mask_input_size=mask_input_size
    )
    return EsamBlipProcessor(image_processor, tokenizer=tokenizer)


def _preset(name: str) -> BuiltinPreset:
    if name not in BUILTIN_PRESETS:
        raise ValueError(f"Unknown built-in preset {name!r}; the presets are {sorted(BUILTIN_PRESETS)}.")
    return BUILTIN_PRESETS[name]


def build_preset_processor(name: str) -> EsamBlipProcessor:
    """
    The processor of preset `name`: its input sides, the mask-prompt side of its prompt encoder, and the synthetic
    task's vocabulary.
    """
    preset = _preset(name)
    prompt_encoder = EfficientSamPromptEncoderConfig(**preset.config["prompt_encoder_config"])
    return synthetic_processor(preset.sam_image_size, preset.blip_image_size, prompt_encoder.mask_input_size)


def build_preset_config(name: str, processor: EsamBlipProcessor, **overrides: Any) -> EsamBlipConfig:
    """Preset `name`'s config, its text encoder sized to `processor`'s tokenizer; `overrides` replace fields."""
    config = copy.deepcopy(_preset(name).config)
    tokenizer = processor.tokenizer
    config["text_config"].update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    config.update(
        enc_token_id=tokenizer.convert_tokens_to_ids(ENC_TOKEN),
        unk_token_id=tokenizer.unk_token_id,
        max_txt_len=processor.max_txt_len,
    )
    return EsamBlipConfig(**{**config, **overrides})


def tiny_sam_config_kwargs() -> dict[str, Any]:
    """EfficientSAM sub-configs of the `tiny` preset: 64x64 input, 8x8 embedding grid, 32x32 masks."""
    config = BUILTIN_PRESETS["tiny"].config
    return copy.deepcopy({name: config[name] for name in _SAM_SUB_CONFIGS})


def tiny_processor() -> EsamBlipProcessor:
    """
    The processor of the `tiny` preset: 64² EfficientSAM input, 32² BLIP input, 32² mask prompts, the synthetic
    vocabulary.
    """
    return build_preset_processor("tiny")


def tiny_config(processor: EsamBlipProcessor, **overrides: Any) -> EsamBlipConfig:
    """
    The `tiny` preset (for tests and smoke runs, random weights): EfficientSAM with a 2-block, width-32 ViT on 64²
    images (8x8 embedding grid, 32x32 masks) and a BLIP half with a 1-block ViT on 32² images and a 2-layer text
    encoder sized to `processor`'s tokenizer.
    """
    return build_preset_config("tiny", processor, **overrides)


def shapes_processor() -> EsamBlipProcessor:
    """
    The processor of the `shapes` preset: 128² EfficientSAM and BLIP inputs, 64² mask prompts, the synthetic
    vocabulary.
    """
    return build_preset_processor("shapes")


def shapes_config(processor: EsamBlipProcessor, **overrides: Any) -> EsamBlipConfig:
    """
    The `shapes` preset, the architecture of the packaged `esam-blip-shapes` model (1.3M parameters): EfficientSAM
    with a 4-block, width-96 ViT on 128² images (patch 8: 16x16 embedding grid of 64 channels, 64x64 masks) and a
    width-64 mask decoder; BLIP with a 3-block, width-96 ViT on 128² images (patch 16: 8x8 grid) and a 3-layer
    width-96 text encoder with cross-attention, whose [CLS] drives a learned text prompter.
    """
    return build_preset_config("shapes", processor, **overrides)


__all__ = [
    "build_preset_config",
    "build_preset_processor",
    "shapes_config",
    "shapes_processor",
    "synthetic_processor",
    "tiny_config",
    "tiny_processor",
    "tiny_sam_config_kwargs",
]
