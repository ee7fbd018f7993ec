"""Training collators: referring-segmentation batches with labels at the model's mask size, and ITM batches."""

from collections.abc import Mapping, Sequence
from typing import Any

from ..configuration_esam_blip import EsamBlipConfig
from ..data import EsamBlipDataCollator, mask_to_bool
from ..processing_esam_blip import EsamBlipProcessor


def low_res_mask_size(config: EsamBlipConfig) -> int:
    """Side of the model's `pred_masks` (each transposed convolution of the decoder doubles the embedding grid)."""
    upscaling = 2 ** len(config.mask_decoder_config.upscaling_hidden_sizes)
    return config.sam_vision_config.image_embedding_size * upscaling


class EsamBlipTrainingCollator(EsamBlipDataCollator):
    r"""
    [`EsamBlipDataCollator`] whose `labels` have the side of the model's `pred_masks` ([`low_res_mask_size`]), which
    the loss compares them with. How texts become prompts is the model's `config.text_prompt_mode`, not the batch's.

    Args:
        processor ([`EsamBlipProcessor`]): images, prompts and texts.
        config ([`EsamBlipConfig`]): the config of the model being trained.
    """

    def __init__(self, processor: EsamBlipProcessor, config: EsamBlipConfig) -> None:
        super().__init__(processor, mask_size=low_res_mask_size(config))


class EsamBlipItmCollator(EsamBlipDataCollator):
    r"""
    Image-text matching batches for [`EsamBlipForImageTextMatching`]: `blip_pixel_values`, `input_ids`,
    `attention_mask` and `labels` (1 match, 0 no match: the `match_label` column, or else whether `mask` is non-empty).
    Masks and point/box prompts are ignored.

    Args:
        processor ([`EsamBlipProcessor`]): with a tokenizer and a BLIP image size.
        sam_pixel_values (`bool`, defaults to `False`): also pass the EfficientSAM `pixel_values`, which the ITM of
            a model with `config.itm_fusion` reads.
    """

    def __init__(self, processor: EsamBlipProcessor, sam_pixel_values: bool = False) -> None:
        super().__init__(processor, mask_size="original")
        if processor.tokenizer is None or processor.image_processor.blip_image_size is None:
            raise ValueError("ITM training needs a processor with a tokenizer and `blip_image_size` set.")
        self.sam_pixel_values = sam_pixel_values

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        kept = []
        for i, feature in enumerate(features):
            if not isinstance(feature, Mapping):
                raise TypeError(f"`features[{i}]` must be a dict, got {type(feature).__name__}.")
            label = feature.get("match_label")
            if label is None:
                if feature.get("mask") is None:
                    raise ValueError(f"`features[{i}]` has neither `match_label` nor `mask`; ITM needs a target.")
                label = int(mask_to_bool(feature["mask"]).any())
            kept.append(
                {
                    "image": feature.get("image"),
                    "text": feature.get("text"),
                    "match_label": label,
                }
            )
        batch = super().__call__(kept)
        if "input_ids" not in batch:
            raise ValueError("ITM training needs a `text` in every example.")
        keys = ("blip_pixel_values", "input_ids", "attention_mask") + (
            ("pixel_values",) if self.sam_pixel_values else ()
        )
        return {**{key: batch[key] for key in keys}, "labels": batch["match_labels"]}


__all__ = ["EsamBlipItmCollator", "EsamBlipTrainingCollator", "low_res_mask_size"]
