"""Start the prompt encoder and mask decoder again from a fresh initialisation, keeping everything else."""

import torch
from torch import nn
from transformers import PreTrainedModel

from ..modeling_efficient_sam import MASK_PROMPT_ZERO_INIT, EfficientSamLayerNorm2d


@torch.no_grad()
def reinitialize_prompt_decoder(model: PreTrainedModel, seed: int | None = None) -> int:
    """
    Re-initialise the mask decoder and the prompt encoder's learned embeddings (point, box-corner, padding and, when
    present, the mask encoder and "no mask" embedding) with PyTorch's default initialisation of each layer; the
    prompt encoder's random-Fourier positional buffer is kept, since the image side of the decoder's positional
    encoding is the same buffer. A new mask encoder starts as a no-op, as in a fresh model.

    Why: a decoder trained long on learned text prompts alone learns to ignore where its sparse tokens point (on the
    packaged model, moving a point changed the logits by under 0.07), and continuing to train it on points does not
    undo that; a fresh decoder on the same frozen embeddings learns points and boxes within a few thousand steps.

    Args:
        model ([`EsamBlipForPromptableSegmentation`] or [`EsamBlipModel`]): changed in place.
        seed (`int`, *optional*): seeds the new weights (default: the global torch generator as it is).

    Returns:
        `int`: the number of parameter elements re-initialised.
    """
    sam = model.base_model.require_segmentation()
    if seed is not None:
        torch.manual_seed(seed)
    modules = [*sam.mask_decoder.modules(), *sam.prompt_encoder.modules()]
    count = 0
    for module in modules:
        if isinstance(module, EfficientSamLayerNorm2d):  # a plain module: the default init of a layer norm
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            continue
        if getattr(module, MASK_PROMPT_ZERO_INIT, False):
            nn.init.zeros_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        count += sum(parameter.numel() for parameter in module.parameters(recurse=False))
    return count


__all__ = ["reinitialize_prompt_decoder"]
