"""EsamBlip models: the joint base model and its promptable-segmentation and image-text-matching heads."""

from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple, logging

from .builtin import BuiltinNamesMixin
from .configuration_esam_blip import EsamBlipConfig
from .fusion import ZERO_INIT_LAYERS, build_fusion, build_itm_fusion
from .gradcam import pnp_vqa_gradcams
from .losses import itm_loss, segmentation_loss
from .model_card import EsamBlipModelCardMixin
from .modeling_blip_itm import (
    BLIP_CROSS_ATTENTION_RECORDED_OUTPUTS,
    BLIP_TEXT_RECORDED_OUTPUTS,
    BLIP_VISION_RECORDED_OUTPUTS,
    EsamBlipGradCamOutput,
    EsamBlipImageTextMatchingOutput,
    EsamBlipImageTextModule,
)
from .modeling_efficient_sam import (
    EFFICIENT_SAM_MASK_DECODER_RECORDED_OUTPUTS,
    EFFICIENT_SAM_VISION_RECORDED_OUTPUTS,
    MASK_PROMPT_ZERO_INIT,
    EfficientSamModule,
    EfficientSamPositionalEmbedding,
    EfficientSamVisionEncoder,
)
from .modeling_outputs import EsamBlipGradCamSegmentationOutput, EsamBlipModelOutput, EsamBlipSegmentationOutput
from .output_recording import record_outputs
from .prompter import EsamBlipTextPrompter
from .prompts import (
    assemble_prompts,
    check_image_tensor,
    check_tensor,
    check_threshold,
    check_token_ids,
    count_queries,
    is_tracing,
    validate_mask_prompts,
    validate_point_and_box_prompts,
)
from .text_prompt_gradcam import EsamBlipGradCamTextPrompts
from .text_prompt_learned import EsamBlipLearnedTextPrompts
from .text_prompt_strategies import (
    TEXT_PROMPT_STRATEGIES,
    EsamBlipTextPromptStrategy,
    TextPromptInputs,
    pair_with_texts,
    resolve_text_prompt_mode,
)

logger = logging.get_logger(__name__)


class EsamBlipPreTrainedModel(EsamBlipModelCardMixin, BuiltinNamesMixin, PreTrainedModel):
    config: EsamBlipConfig
    config_class = EsamBlipConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["EfficientSamVisionLayer", "EfficientSamTwoWayAttentionBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ZERO_INIT_LAYERS):
            # Ends of the fusion's residual branches: zero makes a new fusion exactly the identity. Loaded weights are
            # flagged as initialised, so `init.zeros_` leaves trained ones alone.
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, EfficientSamVisionEncoder):
            init.trunc_normal_(module.pos_embed, std=self.config.initializer_range)
        elif isinstance(module, EfficientSamPositionalEmbedding):
            init.normal_(module.positional_embedding, std=1.0)
        if getattr(module, MASK_PROMPT_ZERO_INIT, False):
            # A new mask encoder starts as a no-op (its output conv at zero) and so does the "no mask" embedding: a
            # trained model given a mask encoder to fine-tune predicts exactly as before until these learn.
            init.zeros_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        """
        The BLIP text encoder's word embeddings; for a checkpoint without the BLIP half, the EfficientSAM patch
        embedding, as transformers' vision models (`SamModel`) return theirs.
        """
        model = self.base_model
        if model.blip is not None:
            return model.blip.get_input_embeddings()
        return model.require_segmentation().vision_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.require_blip().set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the BLIP text vocabulary (e.g. after adding [DEC]/[ENC]); a `ValueError` without the BLIP half."""
        self.base_model.require_blip()
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)


class EsamBlipModel(EsamBlipPreTrainedModel):
    """
    The joint model: the EfficientSAM half (`self.sam`, points/boxes → masks) and the BLIP half (`self.blip`, ITM,
    ITC, Grad-CAM). Either may be `None` when the checkpoint holds only the other one. The trainable joins exist only
    when configured, so converted checkpoints keep their exact key list: `self.fusion` (`config.fusion_type`) and
    `self.prompter` (learned text prompts, `config.prompter_source`).
    """

    _can_record_outputs = {**EFFICIENT_SAM_VISION_RECORDED_OUTPUTS, **BLIP_VISION_RECORDED_OUTPUTS}

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__(config)
        config.check_training_settings()
        self.sam = EfficientSamModule(config) if config.has_segmentation else None
        self.blip = EsamBlipImageTextModule(config) if config.has_blip else None
        self.fusion = build_fusion(config)
        self.itm_fusion = build_itm_fusion(config)
        self.prompter = EsamBlipTextPrompter.from_config(config) if config.prompter_source is not None else None
        self.post_init()

    def require_segmentation(self) -> EfficientSamModule:
        if self.sam is None:
            raise ValueError(
                "This checkpoint has no EfficientSAM half (config.sam_vision_config is None): it cannot segment. "
                "Convert it with `--efficientsam` to add one."
            )
        return self.sam

    def require_blip(self) -> EsamBlipImageTextModule:
        if self.blip is None:
            raise ValueError(
                "This checkpoint has no BLIP half (config.vision_config/text_config are None): it cannot match "
                "images and texts. Convert it with `--blip` to add one."
            )
        return self.blip

    def require_prompter(self) -> EsamBlipTextPrompter:
        if self.prompter is None:
            raise ValueError(
                "`text_prompt_mode='learned'` needs a learned text prompter, but config.prompter_source is None. "
                "Build the model with `prompter_source='text'` or `'itm'` and train it, or use "
                "`text_prompt_mode='gradcam'`."
            )
        return self.prompter

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        `pixel_values [B, 3, S, S]` (from `EsamBlipImageProcessor`) → EfficientSAM `image_embeddings [B, C, g, g]`.
        Floating-point pixels of another precision are cast to the model's dtype.
        """
        sam = self.require_segmentation()
        if not is_tracing():
            vision = self.config.sam_vision_config
            shape = (vision.num_channels, vision.image_size, vision.image_size)
            check_image_tensor("pixel_values", pixel_values, shape, "use EsamBlipImageProcessor")
        return sam.get_image_embeddings(pixel_values.to(self.dtype))

    def itm_image_embeds(
        self,
        blip_image_embeds: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The image tokens the ITM cross-attention reads: `blip_image_embeds` itself, or with `config.itm_fusion` the
        EfficientSAM embeddings (`image_embeddings`, or computed from `pixel_values`) added to them.
        """
        if self.itm_fusion is None:
            return blip_image_embeds
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError(
                "This checkpoint's image-text matching also reads EfficientSAM features (`config.itm_fusion`): pass "
                "exactly one of `pixel_values` (the processor's EfficientSAM input) and `image_embeddings`."
            )
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        return self.itm_fusion(blip_image_embeds, image_embeddings)

    @can_return_tuple
    @record_outputs
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> EsamBlipModelOutput | tuple:
        """
        Encode images with whichever halves the checkpoint has.

        Args:
            pixel_values (`[B, 3, S, S]`, *optional*): EfficientSAM input.
            blip_pixel_values (`[B, 3, s, s]`, *optional*): BLIP input.
            output_attentions, output_hidden_states (`bool`, *optional*): also return the attention probabilities
                and hidden states of the ViTs that ran (recorded by hooks); default to the config's.
            return_dict (`bool`, *optional*): a tuple (`to_tuple()` order) if False.

        Returns:
            [`EsamBlipModelOutput`] with `image_embeddings [B, C, g, g]` (EfficientSAM) and/or `blip_image_embeds
            [B, 1+N, D]` (BLIP ViT).
        """
        if pixel_values is None and blip_pixel_values is None:
            raise ValueError("Pass `pixel_values` (EfficientSAM) and/or `blip_pixel_values` (BLIP).")
        image_embeddings = blip_image_embeds = None
        if pixel_values is not None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        if blip_pixel_values is not None:
            blip_image_embeds = self.require_blip().get_image_features(blip_pixel_values)
        return EsamBlipModelOutput(image_embeddings=image_embeddings, blip_image_embeds=blip_image_embeds)


class EsamBlipForPromptableSegmentation(EsamBlipPreTrainedModel):
    """
    EfficientSAM masks from points, boxes and texts, SAM-compatible: `get_image_embeddings` once, then
    `forward(image_embeddings=..., input_points=..., input_labels=...)` for as many prompts as needed, so
    `pipeline("mask-generation")` works unchanged (with no fusion or a decoder-side fusion).

    `forward` reads as encode → prompts → decode → loss. Texts become prompts through a text-prompt strategy
    (`text_prompt_strategies`, chosen by `text_prompt_mode`); `labels`/`match_labels` give the training loss.
    """

    _can_record_outputs = {
        **EFFICIENT_SAM_VISION_RECORDED_OUTPUTS,
        **EFFICIENT_SAM_MASK_DECODER_RECORDED_OUTPUTS,
        **BLIP_VISION_RECORDED_OUTPUTS,
        **BLIP_CROSS_ATTENTION_RECORDED_OUTPUTS,
    }

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__(config)
        self.model = EsamBlipModel(config)
        self.post_init()

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        `pixel_values [B, 3, S, S]` → `image_embeddings [B, C, g, g]`; encode once, prompt many times. Always the plain
        EfficientSAM embeddings: `forward` applies a decoder-side fusion to them.
        """
        return self.model.get_image_embeddings(pixel_values)

    @can_return_tuple
    @record_outputs
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        multimask_output: bool = True,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        blip_image_embeds: torch.Tensor | None = None,
        text_prompt_mode: str | None = None,
        text_prompt_kwargs: dict[str, Any] | None = None,
        match_threshold: float | None = None,
        labels: torch.Tensor | None = None,
        match_labels: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        reshaped_input_sizes: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> EsamBlipSegmentationOutput | tuple:
        r"""
        Args:
            pixel_values (`[B, 3, S, S]`): normalised images from `EsamBlipImageProcessor` (XOR `image_embeddings`).
            image_embeddings (`[B, C, g, g]`): output of `get_image_embeddings`, to prompt an encoded image again.
                These are the plain EfficientSAM embeddings: a decoder-side fusion is applied here, on the way to the
                decoder, so cached embeddings stay valid (an encoder-side fusion needs `pixel_values`).
            input_points (`[B, Q, P, 2]`): (x, y) in the S x S encoder frame (the processor rescales image pixels);
                padding `(-1, -1)`. With texts, the batch axis is the text axis `T`.
            input_labels (`[B, Q, P]`): `prompts.PromptLabel` values; all foreground if omitted.
            input_boxes (`[B, Q, 4]`): (x1, y1, x2, y2) in the encoder frame; added as two corner points after the
                query's points.
            input_masks (`[B, Q, m, m]`, *optional*): dense mask prompts, SAM's mask input: low-resolution mask
                logits, one per query (`m = prompt_encoder_config.mask_input_size`, 4x the embedding grid), e.g. a
                previous call's `pred_masks[:, :, k]` for iterative refinement; a binary mask goes through the image
                processor. Needs a model with a mask encoder (`prompt_encoder_config.mask_prompts`). With texts the
                batch axis is the text axis `T`, and `Q` is 1 for a text alone.
            multimask_output (`bool`): three candidate masks per query if True, one otherwise.
            input_ids (`[T, L]`, *optional*): texts describing what to segment ([CLS]-first ids from
                `EsamBlipProcessor`). Text `t` goes with image `t`, or every text with the single image (`B == 1`;
                the image is encoded once). Needs the BLIP half and `blip_pixel_values` or `blip_image_embeds`.
            attention_mask (`[T, L]`, *optional*): 1 for real tokens.
            blip_pixel_values (`[B, 3, s, s]`): BLIP input; unused without texts and without fusion (so the
                processor's full output can be passed).
            blip_image_embeds (`[B, 1 + N, D]`): BLIP ViT output, instead of `blip_pixel_values`.
            text_prompt_mode (`str`, *optional*): the text-prompt strategy (`text_prompt_strategies.
                text_prompt_mode_choices()`: `"gradcam"` zero-shot Grad-CAM points, `"learned"` a trained prompter,
                or `"auto"`); defaults to `config.text_prompt_mode`.
            text_prompt_kwargs (`dict`, *optional*): per-call settings of the strategy (e.g. `{"num_points": 5}` for
                `"gradcam"`), overriding their config defaults.
            match_threshold (`float`, *optional*): ITM probability under which a text is reported absent; defaults
                to `config.match_threshold`.
            labels (`[B or T, Q, h, w]` or `[B or T, h, w]`, *optional*): binary target masks at the low resolution
                of `pred_masks` (256x256) or at the original image size (then pass `original_sizes`); a 3-D label is
                shared by every query. Gives the SAM loss (`losses.segmentation_loss`, weights from the config).
            match_labels (`[T]`, *optional*): 1 where the text describes its image, 0 where not: the ITM
                cross-entropy (`config.itm_loss_weight`) of strategies whose ITM logits train (`"learned"`); ignored
                with a warning otherwise. With `labels`, a text whose match label is 0 trains no mask unless
                `config.absent_mask_loss`.
            original_sizes (`[B, 2]`, *optional*): `(H, W)` of each image; only read to resize full-resolution
                `labels`.
            reshaped_input_sizes (`[B, 2]`, *optional*): accepted so that `model(**processor(...))` works; not read
                (every image is resized to the square encoder frame).
            output_attentions (`bool`, *optional*): also return the attention probabilities of every attention that
                ran (`vision_attentions`, `mask_decoder_attentions`, `blip_vision_attentions`,
                `blip_cross_attentions`), recorded by hooks with the explicit (eager) attention; defaults to
                `config.output_attentions`. The masks do not change.
            output_hidden_states (`bool`, *optional*): also return the ViTs' hidden states (`vision_hidden_states`,
                `blip_vision_hidden_states`); defaults to `config.output_hidden_states`.
            return_dict (`bool`, *optional*): a tuple (`to_tuple()` order) if False; defaults to
                `config.return_dict`.

        With `transformers.Trainer`, set `label_names=["labels", "match_labels"]`: Trainer otherwise takes every
        argument whose name contains "label", `input_labels` included, for a label.

        Returns:
            [`EsamBlipSegmentationOutput`] (or the strategy's subclass) with `loss` first, `iou_scores [B or T, Q, M]`,
            `pred_masks [B or T, Q, M, 4g, 4g]` and, with texts, the match probabilities and the strategy's fields.
        """
        strategy = None
        if input_ids is not None:
            strategy_class = TEXT_PROMPT_STRATEGIES[resolve_text_prompt_mode(self.config, text_prompt_mode)]
            strategy = strategy_class(self.model, **(text_prompt_kwargs or {}))
        elif text_prompt_kwargs:
            raise ValueError("`text_prompt_kwargs` configure text prompts: pass them with `input_ids`.")
        match_threshold = self.config.match_threshold if match_threshold is None else match_threshold
        if not is_tracing():
            self._check_inputs(
                pixel_values, image_embeddings, input_points, input_labels, input_boxes, input_masks,
                multimask_output, input_ids, blip_pixel_values, blip_image_embeds, match_threshold,
            )  # fmt: skip

        # Encode.
        blip_image_embeds = self._encode_blip(blip_pixel_values, blip_image_embeds, needed=input_ids is not None)
        image_embeddings = self._encode_image(pixel_values, image_embeddings, blip_image_embeds)
        decoder_embeddings = image_embeddings
        if self.model.fusion is not None and self.model.fusion.location == "decoder":
            decoder_embeddings = self.model.fusion(image_embeddings, blip_image_embeds)

        # Prompts and decode.
        itm_logits = None
        output_class = EsamBlipSegmentationOutput
        if strategy is None:
            points, point_labels = assemble_prompts(
                input_points, input_labels, input_boxes, self.config.prompt_encoder_config.max_num_points
            )
            pred_masks, iou_scores = self.model.sam.predict_masks(
                decoder_embeddings, points, point_labels, multimask_output, input_masks=input_masks
            )
            fields = {"iou_scores": iou_scores, "pred_masks": pred_masks}
        else:
            itm_image_embeds = self.model.itm_image_embeds(blip_image_embeds, image_embeddings=image_embeddings)
            result = strategy(
                TextPromptInputs(
                    image_embeddings=decoder_embeddings,
                    itm_image_embeds=itm_image_embeds,
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    input_points=input_points,
                    input_labels=input_labels,
                    input_boxes=input_boxes,
                    multimask_output=multimask_output,
                    input_masks=input_masks,
                )
            )
            output_class = strategy.output_class
            itm_probability = result.itm_logits.softmax(dim=-1)[:, 1]
            unknown = self._unknown_tokens(input_ids)
            fields = {
                **result.fields,
                "itm_probability": itm_probability,
                "is_match": (itm_probability >= match_threshold) & ~unknown,
                "has_unknown_tokens": unknown,
            }
            if strategy.trains_itm:
                itm_logits = result.itm_logits

        # Loss.
        loss = self._loss(fields, labels, itm_logits, match_labels, original_sizes, strategy)
        return output_class(loss=loss, image_embeddings=image_embeddings, blip_image_embeds=blip_image_embeds, **fields)

    def _unknown_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[T]` bool: which texts hold the tokenizer's `[UNK]` (all False when the config names no `unk_token_id`)."""
        if self.config.unk_token_id is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids == self.config.unk_token_id).any(dim=-1)

    def _check_inputs(
        self,
        pixel_values: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        input_masks: torch.Tensor | None,
        multimask_output: bool,
        input_ids: torch.Tensor | None,
        blip_pixel_values: torch.Tensor | None,
        blip_image_embeds: torch.Tensor | None,
        match_threshold: float,
    ) -> None:
        """Every argument check of `forward`, once, before any compute (skipped while tracing or exporting)."""
        config = self.config
        self.model.require_segmentation()
        if not isinstance(multimask_output, bool):
            raise TypeError(f"`multimask_output` must be a bool, got {type(multimask_output).__name__}.")
        check_threshold("match_threshold", match_threshold)
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeddings`.")
        encoder_fusion = self.model.fusion is not None and self.model.fusion.location == "encoder"
        vision = config.sam_vision_config
        if pixel_values is not None:
            shape = (vision.num_channels, vision.image_size, vision.image_size)
            check_image_tensor("pixel_values", pixel_values, shape, "use EsamBlipImageProcessor")
        if image_embeddings is not None:
            if encoder_fusion:
                raise ValueError(
                    f"`fusion_type={config.fusion_type!r}` adds the BLIP features inside the EfficientSAM encoder: "
                    "pass `pixel_values`, not `image_embeddings`."
                )
            grid = vision.image_embedding_size
            check_image_tensor(
                "image_embeddings",
                image_embeddings,
                (vision.output_channels, grid, grid),
                "from `get_image_embeddings`",
            )
        num_images = (pixel_values if image_embeddings is None else image_embeddings).shape[0]
        needs_blip = input_ids is not None or self.model.fusion is not None
        if needs_blip:
            reason = "Text prompts" if input_ids is not None else f"`fusion_type={config.fusion_type!r}`"
            self.model.require_blip()
            if (blip_pixel_values is None) == (blip_image_embeds is None):
                raise ValueError(f"{reason} need exactly one of `blip_pixel_values` and `blip_image_embeds`.")
            if blip_image_embeds is not None:
                self.model.blip._check_image_embeds(blip_image_embeds)
            blip_images = (blip_pixel_values if blip_image_embeds is None else blip_image_embeds).shape[0]
            if blip_images != num_images:
                raise ValueError(
                    f"The BLIP images ({blip_images}) and the EfficientSAM images ({num_images}) must be the same batch."
                )
        frame = config.sam_vision_config.image_size
        if input_masks is not None and not config.prompt_encoder_config.mask_prompts:
            raise ValueError(
                "`input_masks` needs a model with a mask encoder (`prompt_encoder_config.mask_prompts=True`); this "
                "checkpoint has none (the original EfficientSAM checkpoints have none). Prompt with points, boxes or "
                "texts."
            )
        if input_ids is None:
            validate_point_and_box_prompts(num_images, frame, input_points, input_labels, input_boxes)
            if input_masks is not None:
                queries = count_queries(input_points, input_boxes)
                validate_mask_prompts(input_masks, num_images, queries, config.prompt_encoder_config.mask_input_size)
            return
        check_tensor("input_ids", input_ids, 2, None, "[texts, length]")
        num_texts = input_ids.shape[0]
        if num_texts == 0:
            raise ValueError("`input_ids` must hold at least one text, got 0 rows.")
        check_token_ids(input_ids, config.text_config.vocab_size)
        if num_images not in (1, num_texts):
            raise ValueError(
                f"`{'pixel_values' if image_embeddings is None else 'image_embeddings'}`: got {num_images} images for "
                f"{num_texts} texts. Pass one image per text, or a single image for every text."
            )
        validate_point_and_box_prompts(num_texts, frame, input_points, input_labels, input_boxes, required=False)
        if input_masks is not None:
            queries = count_queries(input_points, input_boxes)
            validate_mask_prompts(input_masks, num_texts, queries, config.prompt_encoder_config.mask_input_size)

    def _encode_blip(
        self, blip_pixel_values: torch.Tensor | None, blip_image_embeds: torch.Tensor | None, needed: bool
    ) -> torch.Tensor | None:
        """The BLIP ViT tokens when texts or a fusion read them, else `None`."""
        if not needed and self.model.fusion is None:
            return None
        if blip_image_embeds is None:
            return self.model.blip.get_image_features(blip_pixel_values)
        return blip_image_embeds

    def _encode_image(
        self,
        pixel_values: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        blip_image_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """Plain EfficientSAM embeddings, or with an encoder-side fusion those of the encoder fed the BLIP stream."""
        if image_embeddings is not None:
            return image_embeddings.to(self.dtype)
        fusion = self.model.fusion
        pixel_values = pixel_values.to(self.dtype)
        if fusion is not None and fusion.location == "encoder":
            return self.model.sam.vision_encoder(
                pixel_values,
                fusion=partial(fusion, blip_image_embeds=blip_image_embeds),
                fusion_layer=self.config.fusion_layer,
            )
        return self.model.sam.get_image_embeddings(pixel_values)

    def _loss(
        self,
        fields: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        itm_logits: torch.Tensor | None,
        match_labels: torch.Tensor | None,
        original_sizes: torch.Tensor | None,
        strategy: EsamBlipTextPromptStrategy | None,
    ) -> torch.Tensor | None:
        """
        Weighted SAM loss on `labels` plus the ITM cross-entropy on `match_labels` (strategies whose ITM trains).
        With both, absent expressions (match label 0) train only the ITM head unless `config.absent_mask_loss`.
        """
        config = self.config
        matching = None
        if match_labels is not None:
            if itm_logits is None:
                mode = "no texts" if strategy is None else f"text_prompt_mode={strategy.name!r}"
                logger.warning_once(
                    f"`match_labels` train the ITM head of a text-prompt strategy with trainable ITM (`learned`); with "
                    f"{mode} they are ignored."
                )
            else:
                matching = config.itm_loss_weight * itm_loss(itm_logits, match_labels)
        if labels is None:
            return matching
        valid = None
        if matching is not None and not config.absent_mask_loss:
            valid = match_labels.bool()
        loss, _ = segmentation_loss(
            fields["pred_masks"],
            fields["iou_scores"],
            labels,
            original_sizes,
            focal_weight=config.focal_loss_weight,
            dice_weight=config.dice_loss_weight,
            iou_weight=config.iou_loss_weight,
            valid=valid,
        )
        return loss if matching is None else loss + matching


def _pair_images(image_embeds: torch.Tensor, num_texts: int) -> torch.Tensor:
    """One BLIP image per text for ITM; a single image is broadcast to every text."""
    if image_embeds.ndim != 3:
        raise ValueError(
            f"`image_embeds` must have shape [num_images, 1 + num_patches, width], got {tuple(image_embeds.shape)}."
        )
    return pair_with_texts(image_embeds, num_texts, "image_embeds")


class EsamBlipForImageTextMatching(EsamBlipPreTrainedModel):
    """
    BLIP image-text matching (ITM logits), ITC similarity and Grad-CAM, with LAVIS's semantics. Needs a checkpoint
    with the BLIP half (`config.has_blip`).

    Texts come from the tokenizer with [CLS] first and right padding (`EsamBlipProcessor`); for ITM the first token is
    replaced by `config.enc_token_id` inside, as LAVIS does.
    """

    main_input_name = "input_ids"
    _can_record_outputs = {
        **EFFICIENT_SAM_VISION_RECORDED_OUTPUTS,
        **BLIP_VISION_RECORDED_OUTPUTS,
        **BLIP_TEXT_RECORDED_OUTPUTS,
        **BLIP_CROSS_ATTENTION_RECORDED_OUTPUTS,
    }

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__(config)
        self.model = EsamBlipModel(config)
        self.post_init()

    def _images(self, blip_pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        if (blip_pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of `blip_pixel_values` and `image_embeds`.")
        blip = self.model.require_blip()
        if image_embeds is None:
            return blip.get_image_features(blip_pixel_values)
        if not is_tracing():
            blip._check_image_embeds(image_embeds)
        return image_embeds.to(self.dtype)

    @can_return_tuple
    def get_image_features(
        self,
        blip_pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        BLIP image features, as transformers 5's `BlipModel.get_image_features`: `last_hidden_state [B, 1 + N, D]`
        (the ViT output after its final norm, the `image_embeds` that `forward` reuses) and `pooler_output
        [B, image_text_hidden_size]`, the ITC projection of its [CLS] row (not normalised). See
        `EsamBlipImageTextModule.encode_image`.
        """
        return self.model.require_blip().encode_image(blip_pixel_values, output_attentions, output_hidden_states)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        BLIP text features, as transformers 5's `BlipModel.get_text_features`: `last_hidden_state [B, L, D_text]` of
        the text-only pass (LAVIS's `mode="text"`, [CLS] first) and `pooler_output [B, image_text_hidden_size]`, the
        ITC projection of its [CLS] row (not normalised). See `EsamBlipImageTextModule.encode_text`.
        """
        return self.model.require_blip().encode_text(input_ids, attention_mask, output_attentions, output_hidden_states)

    @can_return_tuple
    @record_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        use_itm_head: bool = True,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> EsamBlipImageTextMatchingOutput | tuple:
        r"""
        Args:
            input_ids (`[B_texts, L]`): token ids with [CLS] first, right-padded.
            attention_mask (`[B_texts, L]`, *optional*): 1 for real tokens; all ones if omitted.
            blip_pixel_values (`[B_images, 3, S, S]`): BLIP-normalised images (XOR `image_embeds`).
            image_embeds (`[B_images, 1 + N, D]`): output of `get_image_features`, to reuse an encoded image.
            use_itm_head (`bool`): ITM logits of pairs if True (`B_images == B_texts`, or a single image broadcast to
                every text); ITC similarity of every image with every text otherwise.
            labels (`[B_texts]`, *optional*): 1 match / 0 no match; gives the ITM cross-entropy `loss`.
            pixel_values (`[B_images, 3, S', S']`, *optional*): EfficientSAM input of the same images (XOR
                `image_embeddings`); read only by checkpoints with `config.itm_fusion`, whose ITM needs one of them.
            image_embeddings (`[B_images, C, g, g]`, *optional*): EfficientSAM image embeddings of the same images.
            output_attentions (`bool`, *optional*): also return the attention probabilities of the encoders that ran
                (`blip_vision_attentions`, `blip_text_attentions`, `blip_cross_attentions`, `vision_attentions`),
                recorded by hooks; defaults to `config.output_attentions`.
            output_hidden_states (`bool`, *optional*): also return their hidden states; defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*): a tuple (`to_tuple()` order) if False; defaults to
                `config.return_dict`.

        Returns:
            [`EsamBlipImageTextMatchingOutput`]: `itm_score` is `[B_texts, 2]` ITM logits (match probability
            `softmax(-1)[:, 1]`) or `[B_images, B_texts]` ITC cosine similarity (no temperature).
        """
        blip = self.model.require_blip()
        if input_ids is None or input_ids.numel() == 0:
            raise ValueError(
                "`input_ids` must hold at least one tokenized text, got "
                f"{None if input_ids is None else tuple(input_ids.shape)}."
            )
        image_embeds = self._images(blip_pixel_values, image_embeds)
        loss = image_feat = text_feat = None
        if use_itm_head:
            itm_image_embeds = self.model.itm_image_embeds(image_embeds, pixel_values, image_embeddings)
            text_embeds = blip.get_multimodal_features(
                input_ids, attention_mask, _pair_images(itm_image_embeds, input_ids.shape[0])
            )
            itm_score = blip.itm_head(text_embeds[:, 0])
            if labels is not None:
                loss = itm_loss(itm_score, labels, name="labels")
        else:
            if labels is not None:
                raise ValueError("`labels` are ITM match targets: pass them with `use_itm_head=True`.")
            text_embeds = blip.get_text_features(input_ids, attention_mask)
            image_feat = blip.get_image_projections(image_embeds)
            text_feat = nn.functional.normalize(blip.text_proj(text_embeds[:, 0]), dim=-1)
            itm_score = image_feat @ text_feat.t()
        return EsamBlipImageTextMatchingOutput(
            loss=loss,
            itm_score=itm_score,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_feat=image_feat,
            text_feat=text_feat,
        )

    def compute_gradcam(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        blip_pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        block_num: int | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> EsamBlipGradCamOutput:
        r"""
        Grad-CAM of each text over its image at the cross-attention of text layer `block_num` (default
        `config.gradcam_block_num`), LAVIS's arithmetic and rows. Only the attention gradient of that layer is
        computed (no backward through the ViT, no parameter `.grad`); works under `torch.no_grad()`. Call it in eval
        mode.

        Args:
            input_ids (`[B, L]`): token ids with [CLS] first, right-padded.
            attention_mask (`[B, L]` or `None`): 1 for real tokens.
            blip_pixel_values (`[B or 1, 3, S, S]`): images (XOR `image_embeds`); a single image serves every text.
            image_embeds (`[B or 1, 1 + g*g, D]`): output of `get_image_features`.
            block_num (`int`, *optional*): text layer in `[0, num_hidden_layers - 1]`.
            pixel_values, image_embeddings (*optional*): the EfficientSAM input or embeddings of the same images,
                for checkpoints with `config.itm_fusion` (see `forward`).

        Returns:
            [`EsamBlipGradCamOutput`] with `gradcam [B, L + 1, g, g]`, `gradcams [B, g*g]` (PnP-VQA's heatmap: the
            caption-mean row) and `itm_logits [B, 2]`.
        """
        blip = self.model.require_blip()
        with torch.no_grad():  # Grad-CAM never differentiates through the ViTs.
            image_embeds = self._images(blip_pixel_values, image_embeds)
            image_embeds = self.model.itm_image_embeds(image_embeds, pixel_values, image_embeddings)
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError(
                f"`input_ids` must be a tensor of shape [B, L], got {getattr(input_ids, 'shape', type(input_ids))}."
            )
        gradcam, itm_logits = blip.compute_gradcam(
            input_ids, attention_mask, _pair_images(image_embeds, input_ids.shape[0]), block_num=block_num
        )
        return EsamBlipGradCamOutput(gradcam=gradcam, gradcams=pnp_vqa_gradcams(gradcam), itm_logits=itm_logits)


__all__ = [
    "EsamBlipForImageTextMatching",
    "EsamBlipForPromptableSegmentation",
    "EsamBlipGradCamOutput",
    "EsamBlipGradCamSegmentationOutput",
    "EsamBlipGradCamTextPrompts",
    "EsamBlipLearnedTextPrompts",
    "EsamBlipImageTextMatchingOutput",
    "EsamBlipModel",
    "EsamBlipModelOutput",
    "EsamBlipPreTrainedModel",
    "EsamBlipSegmentationOutput",
]
