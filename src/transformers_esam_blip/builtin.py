"""Models and architectures shipped inside the package, by name: one registry of presets and their weights.

    from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
    model = EsamBlipForPromptableSegmentation.from_pretrained("esam-blip-shapes")
    processor = EsamBlipProcessor.from_pretrained("esam-blip-shapes")

`BUILTIN_PRESETS` maps an architecture name (`tiny`, `shapes`) to its config and processor sizes and, when the package
ships weights trained from it, the name of those weights (`esam-blip-shapes`); `builtin_presets` builds a preset with
random weights (what `python -m transformers_esam_blip.training --config NAME` trains).

This module imports nothing of the package: the model files import it, and `save_pretrained` copies it (flat, as
`transformers` remote code wants) next to them.

The package's own classes (config, models, image processor, processor) and every command's `--model` resolve a
built-in model's name to its folder before anything else; a local folder of the same name takes precedence. The `Auto*`
classes of `transformers` do not know the names: give them the folder,
`AutoModel.from_pretrained(builtin_model_path("esam-blip-shapes"))`.
"""

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "assets" / "models"


@dataclass(frozen=True)
class BuiltinPreset:
    """
    One built-in architecture, and the packaged weights trained from it if any.

    Attributes:
        description: one line for listings and `--help`.
        sam_image_size, blip_image_size: input sides of the preset's processor.
        config: `EsamBlipConfig` fields; the tokenizer's fields (vocabulary size, special token ids) are added when the
            config is built (`builtin_presets.build_preset_config`).
        model_name: the name of the shipped weights (`assets/models/<model_name>`), `None` when none ship.
        model_description: what the shipped model does, for its listing.
    """

    description: str
    sam_image_size: int
    blip_image_size: int
    config: dict[str, Any] = field(repr=False)
    model_name: str | None = None
    model_description: str | None = None


BUILTIN_PRESETS: dict[str, BuiltinPreset] = {
    "tiny": BuiltinPreset(
        description="random-weight smoke-test model: 64² EfficientSAM input (2-block ViT), 32² BLIP input",
        sam_image_size=64,
        blip_image_size=32,
        config={
            "sam_vision_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 64,
                "patch_size": 8,
                "pretrain_image_size": 32,
                "neck_hidden_sizes": [16, 16],
            },
            "prompt_encoder_config": {
                "hidden_size": 16,
                "image_size": 64,
                "image_embedding_size": 8,
            },
            "mask_decoder_config": {
                "hidden_size": 16,
                "num_attention_heads": 2,
                "mlp_dim": 32,
                "iou_head_hidden_dim": 16,
                "upscaling_hidden_sizes": [8, 4],
            },
            "vision_config": {
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
                "intermediate_size": 64,
                "initializer_range": 0.02,
            },
            "text_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
            "gradcam_block_num": 1,
        },
    ),
    "shapes": BuiltinPreset(
        description="the architecture of esam-blip-shapes: 128² inputs, 1.3M parameters, a learned text prompter",
        sam_image_size=128,
        blip_image_size=128,
        config={
            "sam_vision_config": {
                "hidden_size": 96,
                "num_hidden_layers": 4,
                "num_attention_heads": 3,
                "mlp_ratio": 2.0,
                "image_size": 128,
                "patch_size": 8,
                "pretrain_image_size": 128,
                "neck_hidden_sizes": [64, 64],
            },
            "prompt_encoder_config": {
                "hidden_size": 64,
                "image_size": 128,
                "image_embedding_size": 16,
            },
            "mask_decoder_config": {
                "hidden_size": 64,
                "num_attention_heads": 2,
                "mlp_dim": 128,
                "iou_head_hidden_dim": 64,
                "upscaling_hidden_sizes": [32, 16],
            },
            "vision_config": {
                "hidden_size": 96,
                "num_hidden_layers": 3,
                "num_attention_heads": 3,
                "image_size": 128,
                "patch_size": 16,
                "intermediate_size": 192,
                # BlipVisionConfig's default (1e-10) suits only weights loaded over it: a near-zero ViT trains badly.
                "initializer_range": 0.02,
            },
            "text_config": {
                "hidden_size": 96,
                "num_hidden_layers": 3,
                "num_attention_heads": 3,
                "intermediate_size": 192,
            },
            "image_text_hidden_size": 64,
            "gradcam_block_num": 1,
            "fusion_hidden_size": 64,
            "fusion_num_attention_heads": 4,
            "prompter_source": "text",
        },
        model_name="esam-blip-shapes",
        model_description=(
            "EsamBlip trained here on the synthetic referring-segmentation task (coloured circles, squares and "
            "triangles on noisy gray; 'the red circle' -> its mask and a match probability); 128² input, 1.3M "
            "parameters"
        ),
    ),
}
# Shipped weights by name: what `from_pretrained` and every command's `--model` accept besides folders and Hub ids.
BUILTIN_MODELS: dict[str, str] = {
    preset.model_name: preset.model_description for preset in BUILTIN_PRESETS.values() if preset.model_name
}
DEFAULT_BUILTIN_MODEL = "esam-blip-shapes"


@dataclass(frozen=True)
class BuiltinPnpVqaModel:
    """
    A built-in PnP-VQA model (`EsamBlipForPnpVqa.from_pretrained(name)`): a built-in matcher, and the folder
    `assets/models/<name>` with the captioner and reader (`captioner/`, `reader/`) and the settings
    (`pnp_vqa_config.json`). The matcher's weights are not copied into it.

    Attributes:
        description: one line for listings.
        matcher: the built-in model (of `BUILTIN_MODELS`) used as the matcher.
    """

    description: str
    matcher: str


# Built-in PnP-VQA models by name; `EsamBlipForPnpVqa.from_pretrained` takes them besides saved folders.
BUILTIN_PNP_VQA_MODELS: dict[str, BuiltinPnpVqaModel] = {
    "esam-blip-shapes-vqa": BuiltinPnpVqaModel(
        description=(
            "PnP-VQA on the synthetic scenes: esam-blip-shapes as the matcher, a tiny BLIP captioner and a tiny T5 "
            "reader trained here (scripts/train_builtin_vqa.py)"
        ),
        matcher="esam-blip-shapes",
    ),
}


def builtin_pnp_vqa_path(name: str) -> Path:
    """
    The folder of a built-in PnP-VQA model (`captioner/`, `reader/`, `pnp_vqa_config.json`).

    Raises:
        `ValueError`: `name` is not a built-in PnP-VQA model.
        `FileNotFoundError`: the package was installed without the model's files.
    """
    return _asset_folder(name, BUILTIN_PNP_VQA_MODELS, "built-in PnP-VQA model", "pnp_vqa_config.json")


def _asset_folder(name: str, registry: Any, kind: str, marker: str) -> Path:
    """`MODELS_DIR / name` for a name of `registry`, checked to hold its `marker` file."""
    if name not in registry:
        raise ValueError(f"Unknown {kind} {name!r}; the {kind}s are {sorted(registry)}.")
    folder = MODELS_DIR / name
    if not (folder / marker).is_file():
        raise FileNotFoundError(
            f"The {kind} {name!r} is missing from this installation (expected it in {folder}); reinstall the "
            "package (`pip install -e .` from a clone keeps the files in place)."
        )
    return folder


def builtin_model_path(name: str = DEFAULT_BUILTIN_MODEL) -> Path:
    """
    The folder of a built-in model (config, `model.safetensors`, processor files).

    Raises:
        `ValueError`: `name` is not a built-in model.
        `FileNotFoundError`: the package was installed without the model's files.
    """
    return _asset_folder(name, BUILTIN_MODELS, "built-in model", "config.json")


def close_builtin_names(name: str) -> list[str]:
    """Built-in model names that `name` is probably a typo of (best first); empty when none is close."""
    return difflib.get_close_matches(name, BUILTIN_MODELS, n=3, cutoff=0.75)


def resolve_pretrained_name(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """`name_or_path` itself, unless it is a built-in model's name and no local path of that name exists."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS and not os.path.exists(name_or_path):
        return str(builtin_model_path(name_or_path))
    return name_or_path


class BuiltinNamesMixin:
    """Lets `from_pretrained` of a config, model or processor class also take a built-in model's name."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        return super().from_pretrained(resolve_pretrained_name(pretrained_model_name_or_path), *args, **kwargs)


__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_PNP_VQA_MODELS",
    "BUILTIN_PRESETS",
    "DEFAULT_BUILTIN_MODEL",
    "MODELS_DIR",
    "BuiltinNamesMixin",
    "BuiltinPnpVqaModel",
    "BuiltinPreset",
    "builtin_model_path",
    "builtin_pnp_vqa_path",
    "close_builtin_names",
    "resolve_pretrained_name",
]
