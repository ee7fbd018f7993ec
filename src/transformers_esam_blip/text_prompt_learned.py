"""Learned text prompts: a trained prompter turns BLIP text features into sparse prompt embeddings."""

from typing import TYPE_CHECKING

from .prompts import append_prompt_tokens, assemble_prompts
from .text_prompt_strategies import (
    EsamBlipTextPromptStrategy,
    TextPromptInputs,
    TextPromptResult,
    pair_with_texts,
    register_text_prompt_strategy,
)

if TYPE_CHECKING:
    from .configuration_esam_blip import EsamBlipConfig
    from .modeling_esam_blip import EsamBlipModel


@register_text_prompt_strategy("learned")
class EsamBlipLearnedTextPrompts(EsamBlipTextPromptStrategy):
    """
    The prompter (`config.prompter_source`) turns each text's features, the text-only [CLS] state (`"text"`) or the
    ITM pass's [ENC] state (`"itm"`), into `config.num_prompt_tokens` sparse embeddings, appended after the embeddings
    of the query's points and boxes (the only prompt, one query, when none is given). Differentiable end to end; the
    ITM head gives the match probability and is trained by `match_labels`.
    """

    trains_itm = True
    auto_priority = 0.0

    @classmethod
    def auto_select(cls, config: "EsamBlipConfig") -> bool:
        return config.prompter_source is not None

    @classmethod
    def check_model(cls, model: "EsamBlipModel") -> None:
        model.require_prompter()

    def __call__(self, inputs: TextPromptInputs) -> TextPromptResult:
        blip, sam = self.model.blip, self.model.sam
        num_texts = inputs.num_texts
        itm_image_embeds = pair_with_texts(inputs.itm_image_embeds, num_texts, "image_embeds")
        multimodal = blip.get_multimodal_features(inputs.input_ids, inputs.attention_mask, itm_image_embeds)
        itm_logits = blip.itm_head(multimodal[:, 0])
        if self.config.prompter_source == "itm":
            text_features = multimodal[:, 0]
        else:
            text_features = blip.get_text_features(inputs.input_ids, inputs.attention_mask)[:, 0]
        image_embeddings = inputs.image_embeddings
        text_tokens = self.model.prompter(text_features).to(image_embeddings.dtype)

        point_embeddings = None
        if inputs.input_points is not None or inputs.input_boxes is not None:
            points, labels = assemble_prompts(
                inputs.input_points,
                inputs.input_labels,
                inputs.input_boxes,
                self.config.prompt_encoder_config.max_num_points,
            )
            point_embeddings = sam.embed_prompts(points, labels).to(image_embeddings.dtype)
        sparse = append_prompt_tokens(point_embeddings, text_tokens)
        image_embeddings = pair_with_texts(image_embeddings, num_texts, "image_embeddings")
        pred_masks, iou_scores = sam.decode(
            image_embeddings, sparse, inputs.multimask_output, input_masks=inputs.input_masks
        )
        return TextPromptResult(fields={"iou_scores": iou_scores, "pred_masks": pred_masks}, itm_logits=itm_logits)


__all__ = ["EsamBlipLearnedTextPrompts"]
