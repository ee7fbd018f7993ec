"""
Image embeddings computed once for a whole dataset, for training only what comes after the encoders (the prompt
encoder and mask decoder, SAM's decoder fine-tuning recipe): each step then costs a decoder pass instead of two ViTs.
"""

import hashlib
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

# The columns added by `cache_image_embeddings`, which `EsamBlipDataCollator` passes to the model instead of pixels.
from ..data.collator import CACHED_EMBEDDING_COLUMNS
from ..modeling_esam_blip import EsamBlipForPromptableSegmentation
from ..processing_esam_blip import EsamBlipProcessor


def _frozen_encoders(model: EsamBlipForPromptableSegmentation) -> list[torch.nn.Module]:
    """The modules whose outputs are cached; they must not train while the cache is used."""
    base = model.base_model
    modules = [base.require_segmentation().vision_encoder]
    if base.blip is not None:
        modules.append(base.blip.vision_model)
    return modules


def check_cacheable(model: EsamBlipForPromptableSegmentation) -> None:
    """A clear error when cached embeddings would not be what the model computes from the pixels at every step."""
    fusion = model.base_model.fusion
    if fusion is not None and fusion.location == "encoder":
        raise ValueError(
            f"`fusion_type={model.config.fusion_type!r}` feeds BLIP into the EfficientSAM encoder, so its image "
            "embeddings depend on trained fusion weights and cannot be cached; cache only with a decoder-side fusion "
            "or none."
        )
    training = [
        name
        for module in _frozen_encoders(model)
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    ]
    if training:
        raise ValueError(
            "Cached image embeddings need frozen image encoders, but these parameters train: "
            f"{training[:3]}{' ...' if len(training) > 3 else ''}; freeze them first (e.g. "
            "`apply_freezing(model, 'prompt_decoder')`)."
        )


def _weights_digest(model: EsamBlipForPromptableSegmentation) -> str:
    """A digest of the cached encoders' weights: the cache's fingerprint changes with them."""
    digest = hashlib.sha256()
    for module in _frozen_encoders(model):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _image_key(image: Any) -> bytes:
    """Identity of an image's content: its size, mode and pixel bytes."""
    if isinstance(image, PIL.Image.Image):
        return f"{image.mode}{image.size}".encode() + image.tobytes()
    array = np.asarray(image)
    return f"{array.dtype}{array.shape}".encode() + array.tobytes()


def cache_image_embeddings(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    dataset: datasets.Dataset,
    batch_size: int = 32,
    progress: bool = True,
) -> datasets.Dataset:
    """
    Add each row's `image_embeddings [C, g, g]` (plain EfficientSAM embeddings) and, for a model with the BLIP half,
    `blip_image_embeds [1 + N, D]` as float32 columns, computed once with the model's frozen encoders. The
    [`EsamBlipDataCollator`] then passes them to the model instead of `pixel_values` / `blip_pixel_values`, and a
    training step gives the same loss and gradients as from the pixels (a decoder-side fusion is still applied in
    `forward`).

    The result is a `datasets` cache file keyed on the dataset's fingerprint and a digest of the encoders' weights,
    so a second run with the same data and model reads it back. Rows holding the same image (several expressions of
    one scene) are encoded once per batch of rows.

    Args:
        model ([`EsamBlipForPromptableSegmentation`]): with its image encoders frozen (see [`check_cacheable`]).
        processor ([`EsamBlipProcessor`]): turns the `image` column into the model's inputs.
        dataset (`datasets.Dataset`): rows with an `image` column.
        batch_size (`int`): images encoded per forward pass.
        progress (`bool`): a progress bar over the rows (`datasets`' own, which its switches also silence).

    Returns:
        `datasets.Dataset`: `dataset` with the two columns added.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}.")
    if "image" not in dataset.column_names:
        raise ValueError(f"`dataset` needs an `image` column to encode, got columns {dataset.column_names}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    check_cacheable(model)
    base = model.base_model
    with_blip = base.blip is not None
    was_training = model.training
    model.eval()

    @torch.inference_mode()
    def encode(batch: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        # Rows sharing an image (the expressions of one scene) are encoded once.
        unique: dict[bytes, int] = {}
        index = [unique.setdefault(_image_key(image), len(unique)) for image in batch["image"]]
        first = {position: row for row, position in reversed(list(enumerate(index)))}
        images = [batch["image"][first[position]] for position in range(len(unique))]
        inputs = processor(images=images, return_tensors="pt").to(model.device)
        rows = torch.tensor(index)
        embeddings = base.get_image_embeddings(inputs["pixel_values"]).float().cpu()[rows]
        columns = {"image_embeddings": embeddings.numpy()}
        if with_blip:
            blip_embeds = base.blip.get_image_features(inputs["blip_pixel_values"]).float().cpu()[rows]
            columns["blip_image_embeds"] = blip_embeds.numpy()
        return columns

    # Fixed-shape array features: reading a row back is a reshape, not a walk over nested lists.
    config = model.config
    grid = config.sam_vision_config.image_embedding_size
    features = dataset.features.copy()
    features["image_embeddings"] = datasets.Array3D((config.prompt_encoder_config.hidden_size, grid, grid), "float32")
    if with_blip:
        vision = config.vision_config
        num_tokens = 1 + (vision.image_size // vision.patch_size) ** 2
        features["blip_image_embeds"] = datasets.Array2D((num_tokens, vision.hidden_size), "float32")
    key = f"{dataset._fingerprint}-{_weights_digest(model)}-{features}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        cached = dataset.map(
            encode,
            batched=True,
            batch_size=batch_size,
            features=features,
            new_fingerprint=fingerprint,
            desc="Caching image embeddings",
        )
    finally:
        if silence:
            enable_progress_bars()
        model.train(was_training)
    return cached.with_format("numpy", columns=list(CACHED_EMBEDDING_COLUMNS[: 1 + with_blip]), output_all_columns=True)


__all__ = ["CACHED_EMBEDDING_COLUMNS", "cache_image_embeddings", "check_cacheable"]
