"""Zero-shot text prompts: each text's Grad-CAM heatmap gives salient points for EfficientSAM."""

from typing import TYPE_CHECKING

from .best_mask import select_best_masks
from .modeling_outputs import EsamBlipGradCamSegmentationOutput
from .prompts import append_points, assemble_prompts, count_queries
from .text_prompt_strategies import (
    EsamBlipTextPromptStrategy,
    TextPromptInputs,
    TextPromptResult,
    pair_with_texts,
    register_text_prompt_strategy,
)
from .text_prompting import heatmap_to_prompts, mask_enhanced_heatmap

if TYPE_CHECKING:
    from .configuration_esam_blip import EsamBlipConfig


@register_text_prompt_strategy("gradcam")
class EsamBlipGradCamTextPrompts(EsamBlipTextPromptStrategy):
    """
    Grad-CAM of each text at `config.gradcam_block_num` → up to `num_points` salient cells (peaks at least
    `min_distance` cells apart, above `threshold` of the map's maximum) and `num_background_points` coldest cells →
    points at cell centres, appended to every query of that text (one query when no point/box is given) → EfficientSAM.
    The best mask of the first query then enhances the heatmap (`heatmap_mask_alpha`). Works with any checkpoint that
    has both halves; the prompts are not differentiable, so its ITM logits are not trained.
    """

    settings = {
        "num_points": "text_prompt_num_points",
        "min_distance": "text_prompt_min_distance",
        "threshold": "text_prompt_threshold",
        "num_background_points": "text_prompt_num_background_points",
        "heatmap_mask_alpha": "heatmap_mask_alpha",
    }
    output_class = EsamBlipGradCamSegmentationOutput
    auto_priority = 1.0

    @classmethod
    def auto_select(cls, config: "EsamBlipConfig") -> bool:
        return True

    def __call__(self, inputs: TextPromptInputs) -> TextPromptResult:
        blip, sam = self.model.blip, self.model.sam
        num_texts = inputs.num_texts
        gradcam, itm_logits = blip.compute_gradcam(
            inputs.input_ids, inputs.attention_mask, pair_with_texts(inputs.itm_image_embeds, num_texts, "image_embeds")
        )
        heatmap = gradcam[:, 1]
        text_points, text_labels = heatmap_to_prompts(
            heatmap,
            frame_size=self.config.sam_vision_config.image_size,
            num_points=self.num_points,
            min_distance=self.min_distance,
            threshold=self.threshold,
            num_background_points=self.num_background_points,
        )
        num_queries = count_queries(inputs.input_points, inputs.input_boxes)
        points, labels = append_points(inputs.input_points, inputs.input_labels, text_points, text_labels, num_queries)
        points, labels = assemble_prompts(
            points, labels, inputs.input_boxes, self.config.prompt_encoder_config.max_num_points
        )
        image_embeddings = pair_with_texts(inputs.image_embeddings, num_texts, "image_embeddings")
        pred_masks, iou_scores = sam.predict_masks(
            image_embeddings, points, labels, inputs.multimask_output, input_masks=inputs.input_masks
        )

        best_logits, _ = select_best_masks(pred_masks[:, 0], iou_scores[:, 0])
        enhanced = mask_enhanced_heatmap(heatmap, best_logits > 0, self.heatmap_mask_alpha)  # the sign decides
        fields = {
            "iou_scores": iou_scores,
            "pred_masks": pred_masks,
            "prompt_points": text_points,
            "prompt_labels": text_labels,
            "heatmap": heatmap,
            "enhanced_heatmap": enhanced,
            "gradcams": enhanced.flatten(1),
        }
        return TextPromptResult(fields=fields, itm_logits=itm_logits)  # detached by compute_gradcam


__all__ = ["EsamBlipGradCamTextPrompts"]
