"""Freezing presets: which parameters train, by name."""

from collections.abc import Callable

import torch
from transformers import PreTrainedModel


def _decoder(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [model.base_model.require_segmentation().mask_decoder]


def _prompt_decoder(model: PreTrainedModel) -> list[torch.nn.Module]:
    sam = model.base_model.require_segmentation()
    return [sam.prompt_encoder, sam.mask_decoder]


def _prompter_fusion(model: PreTrainedModel) -> list[torch.nn.Module]:
    base = model.base_model
    trained = [module for module in (base.prompter, base.fusion, base.itm_fusion) if module is not None]
    if not trained:
        raise ValueError(
            "`preset='prompter_fusion'` trains the learned text prompter and the encoder fusion, but the model has "
            "neither: build it with `prompter_source` ('text' or 'itm') and/or a `fusion_type` other than 'none'."
        )
    return trained


def _itm_heads(model: PreTrainedModel) -> list[torch.nn.Module]:
    base = model.base_model
    blip = base.require_blip()
    trained = [layer.crossattention for layer in blip.text_encoder.encoder.layer]
    return [*trained, blip.itm_head] + ([base.itm_fusion] if base.itm_fusion is not None else [])


def _itm(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [*_itm_heads(model), model.base_model.require_blip().vision_model]


def _all(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [model]


# Preset name → the modules it trains, given the model (`EsamBlipModel` or a head model on it).
FREEZING_PRESETS: dict[str, Callable[[PreTrainedModel], list[torch.nn.Module]]] = {
    "decoder": _decoder,
    "prompt_decoder": _prompt_decoder,
    "prompter_fusion": _prompter_fusion,
    "itm": _itm,
    "itm_heads": _itm_heads,
    "all": _all,
}
FREEZE_PRESETS = tuple(FREEZING_PRESETS)


def apply_freezing(model: PreTrainedModel, preset: str) -> int:
    """
    Choose which parameters train; every other one gets `requires_grad=False`.

    Presets:
    - `"decoder"`: the EfficientSAM mask decoder only (`model.sam.mask_decoder`), SAM's fine-tuning recipe for point
      and box prompts. The prompter, if any, stays as it is (train it first, or use `"all"`).
    - `"prompt_decoder"`: the prompt encoder (point, box and label embeddings, the mask encoder if any) and the mask
      decoder: everything after the encoders, so image embeddings can be cached
      ([`cache_image_embeddings`]). The learned text prompter, the fusion and BLIP stay as they are.
    - `"prompter_fusion"`: the learned text prompter and the encoder fusions (`model.prompter`, `model.fusion`,
      `model.itm_fusion`, whichever the config builds), nothing else: both encoders, the prompt encoder, the mask
      decoder and the ITM/ITC heads of a converted checkpoint stay exactly as converted, and the new joins learn to
      drive them.
    - `"itm"`: what image-text matching uses and the text-only features do not: the BLIP image encoder, the
      cross-attention blocks of the text encoder, the ITM head and the `itm_fusion` module if any. Text-only features
      (the ITC text side and a `prompter_source="text"` prompter's input) stay exactly as they are, so ITM training
      leaves learned text prompts (and their masks) unchanged, except through a `fusion_type` that feeds BLIP's ViT to
      the mask decoder: then use `"itm_heads"`.
    - `"itm_heads"`: `"itm"` without the BLIP image encoder: the text encoder's cross-attention blocks, the ITM head
      and the `itm_fusion` module. Every mask-path input stays exactly as it is (also with a fusion), so the masks
      do not change; with `itm_fusion` the matching still learns from EfficientSAM's (frozen) view of the image.
    - `"all"`: every parameter.

    Args:
        model ([`EsamBlipForPromptableSegmentation`] or [`EsamBlipModel`]): the model, changed in place.
        preset (`str`): one of `FREEZE_PRESETS`.

    Returns:
        `int`: the number of trainable parameters (elements).
    """
    if preset not in FREEZING_PRESETS:
        raise ValueError(f"`preset` must be one of {FREEZE_PRESETS}, got {preset!r}.")
    trained = FREEZING_PRESETS[preset](model)
    model.requires_grad_(False)
    for module in trained:
        module.requires_grad_(True)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


__all__ = ["FREEZE_PRESETS", "FREEZING_PRESETS", "apply_freezing"]
