"""Output classes of the base model and the promptable-segmentation head (shared with its text-prompt strategies)."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class EsamBlipSegmentationOutput(ModelOutput):
    r"""
    Output of [`EsamBlipForPromptableSegmentation`]. Text-prompt strategies extend it with their own fields (e.g.
    [`EsamBlipGradCamSegmentationOutput`]).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`, the SAM loss (focal + dice on the
            lowest-loss candidate, IoU MSE), plus with `match_labels` the ITM cross-entropy, weighted by the config.
        iou_scores (`torch.FloatTensor` of shape `[B, Q, M]`): predicted IoU of every candidate mask (not sorted,
            no sigmoid; the best mask of a query is its arg-max, `best_mask.select_best_masks`).
        pred_masks (`torch.FloatTensor` of shape `[B, Q, M, 256, 256]`): low-resolution mask logits; resize them
            with `EsamBlipImageProcessor.post_process_masks` and threshold at 0.
        itm_probability (`torch.FloatTensor` of shape `[T]`, texts only): BLIP ITM match probability.
        is_match (`torch.BoolTensor` of shape `[T]`, texts only): `itm_probability >= match_threshold` and no unknown
            token; False means the described object is probably absent (or the text is out of the model's
            vocabulary) and the mask should not be trusted.
        has_unknown_tokens (`torch.BoolTensor` of shape `[T]`, texts only): the text holds `[UNK]`
            (`config.unk_token_id`): words the tokenizer does not know (`EsamBlipProcessor.unknown_words` names
            them). Such a text is never a match.
        image_embeddings (`torch.FloatTensor` of shape `[B, C, 64, 64]`): EfficientSAM image embeddings before any
            decoder-side fusion, to reuse for further prompts (with an encoder fusion: the fused encoder's output).
        blip_image_embeds (`torch.FloatTensor` of shape `[B, 1 + g*g, D]`, texts or fusion only): BLIP ViT output.
        vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states` and
            `pixel_values`): EfficientSAM ViT embeddings and the output of each block (before an encoder fusion),
            `num_hidden_layers + 1` tensors of shape `[B, g*g, hidden_size]`.
        vision_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions` and `pixel_values`): one
            `[B, heads, g*g, g*g]` per EfficientSAM ViT block.
        mask_decoder_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions`): the two-way
            transformer's probabilities in call order, `3 * num_hidden_layers + 1` tensors: per block the token
            self-attention `[N, heads, T, T]`, token→image `[N, heads, T, g*g]` and image→token `[N, heads, g*g, T]`,
            then the final token→image `[N, heads, T, g*g]` (`N = B * Q` decoded queries, `T` = 1 IoU + mask tokens +
            prompt tokens).
        blip_vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states` when the BLIP
            ViT runs): its embeddings and the output of each layer, `[B, 1 + g*g, D]` each.
        blip_vision_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions` when the BLIP ViT
            runs): one `[B, heads, 1 + g*g, 1 + g*g]` per layer.
        blip_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions` and texts): the
            text encoder's cross-attention to the image, one `[T, heads, L, 1 + g*g]` per text layer.
    """

    loss: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    itm_probability: torch.FloatTensor | None = None
    is_match: torch.BoolTensor | None = None
    has_unknown_tokens: torch.BoolTensor | None = None
    image_embeddings: torch.FloatTensor | None = None
    blip_image_embeds: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    mask_decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EsamBlipGradCamSegmentationOutput(EsamBlipSegmentationOutput):
    r"""
    Output of [`EsamBlipForPromptableSegmentation`] with zero-shot Grad-CAM text prompts: the fields of
    [`EsamBlipSegmentationOutput`], then

    Args:
        prompt_points (`torch.FloatTensor` of shape `[T, K, 2]`): the points chosen from each text's heatmap, (x, y)
            cell centres in the encoder frame; unused slots are (-1, -1).
            `processor.post_process_points(prompt_points, original_sizes)` maps them to image pixels.
        prompt_labels (`torch.LongTensor` of shape `[T, K]`): `PromptLabel`: 1 salient, 0 background, -1 unused.
        heatmap (`torch.FloatTensor` of shape `[T, g, g]`): Grad-CAM of each text (caption mean).
        enhanced_heatmap (`torch.FloatTensor` of shape `[T, g, g]`): mask-enhanced heatmap in [0, 1],
            `alpha * heatmap + (1 - alpha) * mask` with the best mask of the first query.
        gradcams (`torch.FloatTensor` of shape `[T, g*g]`): `enhanced_heatmap` flattened, the input PnP-VQA samples
            image patches from.
    """

    prompt_points: torch.FloatTensor | None = None
    prompt_labels: torch.LongTensor | None = None
    heatmap: torch.FloatTensor | None = None
    enhanced_heatmap: torch.FloatTensor | None = None
    gradcams: torch.FloatTensor | None = None


@dataclass
class EsamBlipModelOutput(ModelOutput):
    r"""
    Output of [`EsamBlipModel`]: the image encodings of whichever halves ran.

    Args:
        image_embeddings (`torch.FloatTensor` of shape `[B, C, g, g]`, with `pixel_values`): EfficientSAM image
            embeddings.
        blip_image_embeds (`torch.FloatTensor` of shape `[B, 1 + g'*g', D]`, with `blip_pixel_values`): BLIP ViT
            output after its final norm.
        vision_hidden_states, vision_attentions (*optional*): as in [`EsamBlipSegmentationOutput`].
        blip_vision_hidden_states, blip_vision_attentions (*optional*): as in [`EsamBlipSegmentationOutput`].
    """

    image_embeddings: torch.FloatTensor | None = None
    blip_image_embeds: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_attentions: tuple[torch.FloatTensor, ...] | None = None


__all__ = ["EsamBlipGradCamSegmentationOutput", "EsamBlipModelOutput", "EsamBlipSegmentationOutput"]
