"""LAVIS BLIP ITM and `transformers` BlipForImageTextRetrieval checkpoints → the `blip` half of EsamBlip: keys and config."""

import math
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import BlipTextConfig

from ..configuration_esam_blip import EsamBlipConfig
from ..modeling_blip_itm import EsamBlipImageTextModule
from .files import check_state_dict, load_safetensors_file, load_torch_file, read_json_file, shard_path

BlipSourceKind = Literal["lavis", "transformers"]
_KINDS: tuple[str, ...] = ("lavis", "transformers")

# Keys a real BLIP checkpoint carries that image-text matching does not use. They are returned to the caller by
# `split_ignored_blip_keys`, never dropped silently.
_IGNORED_KEY_PATTERNS: tuple[str, ...] = (
    r"^\w+_m\.",  # momentum copies of the encoders and projections (ITC distillation during training)
    r"^(image_queue|text_queue|idx_queue|ptr_queue)$",  # ITC negative queues
    r"^temp$",  # ITC temperature (the similarity is reported without it, as LAVIS's ITC head)
    r"^text_encoder\.embeddings\.position_ids$",  # constant buffer, rebuilt from the config
    r"^text_decoder\.",  # captioning decoder of pre-training checkpoints; LAVIS's BlipITM drops it too
)

# LAVIS name → our name (those of transformers' BlipForImageTextRetrieval); every LAVIS key must match one rule.
_LAVIS_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.(weight|bias)$", r"vision_model.embeddings.patch_embedding.\1"),
    (r"^visual_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)$", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (
        r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$",
        r"vision_model.encoder.layers.\1.self_attn.projection.\2",
    ),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"^visual_encoder\.norm\.(weight|bias)$", r"vision_model.post_layernorm.\1"),
    (r"^(text_encoder\..+)$", r"\1"),
    (r"^(vision_proj|text_proj|itm_head)\.(weight|bias)$", r"\1.\2"),
)
_TRANSFORMERS_KEY_PATTERN = r"^(vision_model|text_encoder|vision_proj|text_proj|itm_head)\."

# Fields copied from a transformers config.json: semantics the shapes cannot tell. The shape fields are checked.
_VISION_SEMANTIC_FIELDS = (
    "num_attention_heads",
    "layer_norm_eps",
    "hidden_act",
    "attention_dropout",
    "initializer_range",
)
_TEXT_SEMANTIC_FIELDS = (
    "num_attention_heads",
    "layer_norm_eps",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
)
_DEFAULT_HEAD_DIM = 64


def split_ignored_blip_keys(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """
    Set aside the keys image-text matching does not use: momentum copies (`*_m.*`), ITC queues, `temp`, the
    `position_ids` buffer and a captioning `text_decoder`.

    Returns:
        `(kept state dict, sorted ignored keys)`.
    """
    kept: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        if _is_ignorable(key):
            ignored.append(key)
        else:
            kept[key] = value
    return kept, sorted(ignored)


def load_blip_source(src: str | Path) -> tuple[dict[str, Tensor], BlipSourceKind, list[str]]:
    """
    Load a BLIP ITM checkpoint without unpickling arbitrary objects.

    Args:
        src (`str` or `Path`): a LAVIS `.pth`/`.pt` file (`{"model": state_dict}` or a bare state dict), or a folder
            holding a `transformers` `BlipForImageTextRetrieval` checkpoint (`model.safetensors`,
            `pytorch_model.bin`, or their sharded `*.index.json` form).

    Returns:
        `(state dict, kind, ignored keys)`: `kind` is `"lavis"` or `"transformers"` (told from the key names); the
        ignored keys (see [`split_ignored_blip_keys`]) are removed from the state dict and listed.
    """
    path = Path(src)
    if path.is_dir():
        state_dict = _load_transformers_folder(path)
    elif path.is_file():
        state_dict = _load_file(path)
    else:
        raise FileNotFoundError(f"--blip: no such file or folder: {path}")
    if not state_dict:
        raise ValueError(f"The checkpoint at {path} holds no tensors.")
    kind = _detect_kind(state_dict, str(path))
    kept, ignored = split_ignored_blip_keys(state_dict)
    return kept, kind, ignored


def load_blip_source_config(src: str | Path) -> dict[str, Any] | None:
    """
    The `config.json` of a `transformers` checkpoint folder, to pass as `source_config` to
    [`blip_configs_from_state_dict`]; `None` for a LAVIS file or a folder without one.
    """
    config_file = Path(src) / "config.json"
    if not config_file.is_file():
        return None
    config = read_json_file(config_file, "--blip")
    if not isinstance(config, dict):
        raise ValueError(f"--blip: {config_file} must hold a JSON object (a BlipConfig), got {type(config).__name__}")
    for part in ("vision_config", "text_config"):
        if config.get(part) is not None and not isinstance(config[part], dict):
            raise ValueError(f"--blip: {config_file} field {part!r} must be an object, got {config[part]!r:.60}")
    return config


def blip_configs_from_state_dict(
    state_dict: dict[str, Tensor],
    kind: BlipSourceKind,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    source_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Infer the BLIP part of an [`EsamBlipConfig`] from a checkpoint's tensor shapes.

    Widths, depths, MLP sizes, patch size, image size (from the position embedding), vocabulary, position table and
    projection width come from the shapes. Head counts cannot: they are `vision_heads`/`text_heads`, else the
    `num_attention_heads` of `source_config` (a transformers `config.json`, see [`load_blip_source_config`]), else
    width / 64 (BLIP's head size). A LAVIS source gets LAVIS's epsilons (1e-6 ViT, 1e-12 BERT) and dropouts (0.1 in
    the text encoder); a transformers source gets its own config values, or the transformers defaults.

    Args:
        state_dict (`dict[str, Tensor]`): LAVIS or transformers keys (ignorable keys may be present).
        kind (`"lavis"` or `"transformers"`): the key format.
        vision_heads (`int`, *optional*): heads of the ViT.
        text_heads (`int`, *optional*): heads of the text encoder (self- and cross-attention).
        source_config (`dict`, *optional*): a transformers `BlipConfig` as a dict; its shape fields must agree with
            the tensors.

    Returns:
        `dict` of [`EsamBlipConfig`] keyword arguments: `vision_config` and `text_config` (dicts),
        `image_text_hidden_size`, and `gradcam_block_num` (the config default, lowered to the second-to-last text layer
        for shallower encoders: the last layer's cross-attention of the caption tokens cannot reach the ITM logit,
        which reads only the first token, so its caption heatmap is always zero). `enc_token_id` is not in the weights: take it from the tokenizer.
    """
    renamed, _ = _rename_keys(state_dict, _check_kind(kind))
    required = (
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "text_encoder.embeddings.word_embeddings.weight",
        "text_encoder.embeddings.position_embeddings.weight",
        "text_encoder.encoder.layer.0.intermediate.dense.weight",
        "text_encoder.encoder.layer.0.crossattention.self.key.weight",
        "vision_proj.weight",
        "text_proj.weight",
    )
    absent = [key for key in required if key not in renamed]
    if absent:
        raise ValueError(f"Cannot infer the BLIP config: the {kind} state dict lacks (in our names) {absent}.")

    vision_width = renamed["vision_model.embeddings.class_embedding"].shape[-1]
    patch_weight = renamed["vision_model.embeddings.patch_embedding.weight"]
    if patch_weight.shape[1] != 3 or patch_weight.shape[2] != patch_weight.shape[3]:
        raise ValueError(
            f"The patch embedding must take 3 channels with square patches, got weight shape {tuple(patch_weight.shape)}."
        )
    patch_size = patch_weight.shape[-1]
    num_patches = renamed["vision_model.embeddings.position_embedding"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"The position embedding holds {num_patches} patch positions, not a square grid.")
    vision_config: dict[str, Any] = {
        "hidden_size": vision_width,
        "intermediate_size": renamed["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": _count_layers(renamed, r"^vision_model\.encoder\.layers\.(\d+)\."),
        "image_size": grid * patch_size,
        "patch_size": patch_size,
    }

    vocab_size, text_width = renamed["text_encoder.embeddings.word_embeddings.weight"].shape
    num_text_layers = _count_layers(renamed, r"^text_encoder\.encoder\.layer\.(\d+)\.")
    cross_width = renamed["text_encoder.encoder.layer.0.crossattention.self.key.weight"].shape[1]
    if cross_width != vision_width:
        raise ValueError(
            f"The text cross-attention takes {cross_width}-wide image tokens but the ViT is {vision_width} wide."
        )
    text_config: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": text_width,
        "intermediate_size": renamed["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "num_hidden_layers": num_text_layers,
        "max_position_embeddings": renamed["text_encoder.embeddings.position_embeddings.weight"].shape[0],
        "encoder_hidden_size": vision_width,
        "is_decoder": True,
    }
    projection_width = renamed["vision_proj.weight"].shape[0]
    if renamed["text_proj.weight"].shape[0] != projection_width:
        raise ValueError(
            f"`vision_proj` projects to {projection_width} but `text_proj` to {renamed['text_proj.weight'].shape[0]}."
        )

    if kind == "lavis":
        vision_config.update(layer_norm_eps=1e-6, hidden_act="gelu", attention_dropout=0.0, initializer_range=0.02)
        text_config.update(
            layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
        )
    if source_config is not None:
        _merge_source_config(vision_config, source_config.get("vision_config") or {}, _VISION_SEMANTIC_FIELDS, "vision")
        _merge_source_config(text_config, source_config.get("text_config") or {}, _TEXT_SEMANTIC_FIELDS, "text")
        source_projection = source_config.get("image_text_hidden_size", projection_width)
        if source_projection != projection_width:
            raise ValueError(
                f"source_config image_text_hidden_size is {source_projection} but the projections are "
                f"{projection_width} wide."
            )
    vision_from_config = vision_config.get("num_attention_heads")
    text_from_config = text_config.get("num_attention_heads")
    vision_config["num_attention_heads"] = _heads(vision_heads, vision_from_config, vision_width, "vision_heads", "ViT")
    text_config["num_attention_heads"] = _heads(text_heads, text_from_config, text_width, "text_heads", "text encoder")
    stated = {
        "vision_heads": vision_heads is not None or vision_from_config is not None,
        "text_heads": text_heads is not None or text_from_config is not None,
    }
    if stated["vision_heads"] != stated["text_heads"]:
        # One half stated and the other guessed is how a wrong model gets built silently (e.g. 1 text head for 4).
        guessed = "text_heads" if stated["vision_heads"] else "vision_heads"
        given = "vision_heads" if guessed == "text_heads" else "text_heads"
        raise ValueError(
            f"`{given}` (--blip_{given}) is given but `{guessed}` (--blip_{guessed}) is not, and the source has no "
            f"config stating it: give both (BLIP-base: 12 and 12); the default, width / {_DEFAULT_HEAD_DIM}, would "
            f"be a guess."
        )
    # Token ids the text config defaults to (BERT's) are out of range for small test vocabularies; ITM never uses them.
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id"):
        token_id = text_config.get(name, getattr(BlipTextConfig, name))
        text_config[name] = token_id if token_id is not None and 0 <= token_id < vocab_size else None

    return {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_text_hidden_size": projection_width,
        "gradcam_block_num": max(min(EsamBlipConfig.gradcam_block_num, num_text_layers - 2), 0),
    }


def convert_blip_state_dict(
    state_dict: dict[str, Tensor], kind: BlipSourceKind, config: EsamBlipConfig | None = None
) -> dict[str, Tensor]:
    """
    Rename a BLIP ITM state dict to the keys of [`EsamBlipImageTextModule`] (relative to it: prefix them with
    `model.blip.` for a full EsamBlip checkpoint).

    LAVIS → ours: `visual_encoder.cls_token`/`pos_embed`/`patch_embed.proj` → `vision_model.embeddings.class_embedding`/
    `position_embedding`/`patch_embedding`; `visual_encoder.blocks.i.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}`
    → `vision_model.encoder.layers.i.{layer_norm1,layer_norm2,self_attn.qkv,self_attn.projection,mlp.fc1,mlp.fc2}`;
    `visual_encoder.norm` → `vision_model.post_layernorm`; `text_encoder.*`, `vision_proj`, `text_proj`, `itm_head`
    unchanged. A transformers `BlipForImageTextRetrieval` already has our names.

    Args:
        state_dict (`dict[str, Tensor]`): without ignorable keys (as [`load_blip_source`] returns it, or after
            [`split_ignored_blip_keys`]).
        kind (`"lavis"` or `"transformers"`): the key format.
        config ([`EsamBlipConfig`], *optional*): the target config; by default the one inferred from the shapes.

    Returns:
        `dict[str, Tensor]` with exactly the module's keys and shapes (the tensors are not copied).

    Raises:
        `ValueError` listing the unknown keys (including ignorable ones left in), the missing keys, or the shape
        mismatches.
    """
    renamed, unknown = _rename_keys(state_dict, _check_kind(kind))
    if unknown:
        ignorable = any(_is_ignorable(key) for key in unknown)
        hint = " Ignorable keys must be set aside first (load_blip_source does it)." if ignorable else ""
        raise ValueError(f"Unknown keys in the {kind} BLIP state dict: {sorted(unknown)}.{hint}")
    if config is None:
        # Head counts do not change any key or shape, so any divisor does for this check.
        config = EsamBlipConfig(**blip_configs_from_state_dict(state_dict, kind, vision_heads=1, text_heads=1))
    with torch.device("meta"):
        expected = EsamBlipImageTextModule(config).state_dict()
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(renamed) - set(expected))
    if missing or extra:
        raise ValueError(
            f"The {kind} BLIP state dict does not fit EsamBlipImageTextModule: missing keys {missing}, "
            f"unexpected keys {extra}."
        )
    mismatched = [
        f"{key}: checkpoint {tuple(renamed[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if renamed[key].shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(f"Shape mismatches converting the {kind} BLIP state dict: {mismatched}.")
    return renamed


def _is_ignorable(key: str) -> bool:
    return any(re.search(pattern, key) for pattern in _IGNORED_KEY_PATTERNS)


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    return kind


def _rename_keys(state_dict: dict[str, Tensor], kind: str) -> tuple[dict[str, Tensor], list[str]]:
    renamed: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"State dict values must be tensors, got {type(value).__name__} for {key!r}.")
        new_key = None
        if kind == "transformers":
            new_key = key if re.search(_TRANSFORMERS_KEY_PATTERN, key) else None
        else:
            for pattern, replacement in _LAVIS_KEY_RULES:
                if re.search(pattern, key):
                    new_key = re.sub(pattern, replacement, key)
                    break
        if new_key is None or _is_ignorable(key):
            unknown.append(key)
        else:
            renamed[new_key] = value
    return renamed, unknown


def _count_layers(state_dict: dict[str, Tensor], pattern: str) -> int:
    indices = {int(match.group(1)) for key in state_dict if (match := re.search(pattern, key))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"Layer indices for {pattern!r} must be 0..n-1, got {sorted(indices)}.")
    return len(indices)


def _heads(given: int | None, from_config: int | None, width: int, name: str, part: str) -> int:
    if given is not None and from_config is not None and given != from_config:
        raise ValueError(
            f"`{name}`={given} (--blip_{name}) contradicts the source config's num_attention_heads={from_config} "
            f"for the {part}; drop the flag (the config.json of the checkpoint folder states it)."
        )
    heads = given if given is not None else from_config
    if heads is None:
        if width % _DEFAULT_HEAD_DIM:
            raise ValueError(
                f"Cannot guess the {part} heads: its width {width} is not a multiple of {_DEFAULT_HEAD_DIM} "
                f"(BLIP's head size). Pass `{name}` (--blip_{name})."
            )
        heads = width // _DEFAULT_HEAD_DIM
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise ValueError(
            f"`{name}` must be a positive int dividing the {part} width {width}, got {heads!r} (--blip_{name})."
        )
    return heads


def _merge_source_config(
    inferred: dict[str, Any], source: dict[str, Any], semantic_fields: tuple[str, ...], part: str
) -> None:
    for field, value in inferred.items():
        if field in source and field != "encoder_hidden_size" and source[field] != value:
            raise ValueError(f"source_config {part}_config.{field} is {source[field]!r} but the weights say {value!r}.")
    inferred.update({field: source[field] for field in semantic_fields if field in source})


def _detect_kind(state_dict: dict[str, Tensor], where: str) -> BlipSourceKind:
    if any(key.startswith("visual_encoder.") for key in state_dict):
        return "lavis"
    if any(key.startswith("vision_model.") for key in state_dict):
        return "transformers"
    raise ValueError(
        f"{where} is neither a LAVIS BLIP checkpoint (`visual_encoder.*` keys) nor a transformers "
        f"BlipForImageTextRetrieval one (`vision_model.*` keys); first keys: {sorted(state_dict)[:5]}."
    )


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return check_state_dict(load_safetensors_file(path, "--blip"), path, "--blip")
    return check_state_dict(load_torch_file(path, "--blip"), path, "--blip")


def _load_transformers_folder(folder: Path) -> dict[str, Tensor]:
    for weights_name, index_name in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / weights_name).is_file():
            return _load_file(folder / weights_name)
        if (folder / index_name).is_file():
            index_path = folder / index_name
            index = read_json_file(index_path, "--blip")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"--blip: {index_path} has no `weight_map` object naming the shards")
            state_dict: dict[str, Tensor] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                state_dict.update(_load_file(shard_path(folder, shard, index_path, "--blip")))
            return state_dict
    raise FileNotFoundError(
        f"--blip: no transformers weights in {folder}: looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin and pytorch_model.bin.index.json."
    )


__all__ = [
    "BlipSourceKind",
    "blip_configs_from_state_dict",
    "convert_blip_state_dict",
    "load_blip_source",
    "load_blip_source_config",
    "split_ignored_blip_keys",
]
