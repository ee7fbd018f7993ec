"""One image encoded once for every prompt that follows: its encodings, the model bound to them, best masks."""

from typing import Any

import torch
from PIL import Image

from .best_mask import select_best_masks
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor


def encode_image(
    model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor, image: Image.Image
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """
    Encode `image` once for every prompt that follows.

    Returns:
        `(image_inputs, original_sizes)`: the keyword arguments that stand for the image in each `model(...)` call
        (`image_embeddings` from `get_image_embeddings`, or `pixel_values` for a model whose fusion sits inside the
        EfficientSAM encoder; plus `blip_image_embeds` when the model has the BLIP half, for texts and fusions) and
        the `[1, 2]` image size.
    """
    inputs = processor(images=image, return_tensors="pt")
    fusion = model.model.fusion
    if fusion is not None and fusion.location == "encoder":  # the BLIP stream enters the encoder: no reusable output
        image_inputs = {"pixel_values": inputs["pixel_values"]}
    else:
        image_inputs = {"image_embeddings": model.get_image_embeddings(inputs["pixel_values"])}
    if model.config.has_blip:
        image_inputs["blip_image_embeds"] = model.model(blip_pixel_values=inputs["blip_pixel_values"]).blip_image_embeds
    return image_inputs, inputs["original_sizes"]


def best_of_queries(
    outputs: Any, processor: EsamBlipProcessor, original_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The best candidate (highest predicted IoU) of every query of one image's outputs, queries on the batch axis
    (texts) or on the query axis (objects) alike.

    Returns:
        `(masks, scores, logits)`: `[N, H, W]` bool at the image size, `[N]` predicted IoU and `[N, m, m]` low-res
        logits, `N = B * Q`.
    """
    logits, scores = select_best_masks(outputs.pred_masks.flatten(0, 1), outputs.iou_scores.flatten(0, 1))
    masks = processor.post_process_masks([logits], original_sizes[:1])[0]
    return masks, scores, logits


class EncodedImageModel:
    """
    `model` as `EsamBlipMaskGenerator` uses it, with one image's encodings bound: `get_image_embeddings` returns the
    embeddings already computed (the generator's pixels are that same image), and every decoder call also gets the
    image's BLIP tokens, which a decoder-side fusion reads.
    """

    def __init__(self, model: EsamBlipForPromptableSegmentation, image_inputs: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.image_inputs = image_inputs
        self.device = model.device
        self.dtype = model.dtype

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_inputs["image_embeddings"]

    def __call__(self, image_embeddings: torch.Tensor, **prompts: Any) -> Any:
        return self.model(
            image_embeddings=image_embeddings, blip_image_embeds=self.image_inputs.get("blip_image_embeds"), **prompts
        )


__all__ = ["EncodedImageModel", "best_of_queries", "encode_image"]
