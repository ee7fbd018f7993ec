"""EsamBlip models: the joint base model and its promptable-segmentation and image-text-matching heads."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .builtin import BuiltinNamesMixin
from .configuration_esam_blip import EsamBlipConfig
from .fusion import ZERO_INIT_LAYERS, build_fusion, build_itm_fusion
from .gradcam import pnp_vqa_gradcams
from .losses import itm_loss, segmentation_loss
from .modeling_blip_itm import (
    EsamBlipGradCamOutput,
    EsamBlipImageTextMatchingOutput,
    EsamBlipImageTextModule,
)
from .modeling_efficient_sam import (
    EfficientSamModule,
    EfficientSamPositionalEmbedding,
    EfficientSamVisionEncoder,
)
from .prompts import VALID_LABELS, assemble_prompts
from .prompter import EsamBlipTextPrompter
from .text_prompting import heatmap_to_prompts, mask_enhanced_heatmap

logger = logging.get_logger(__name__)

TEXT_PROMPT_MODES = ("gradcam", "learned")


@dataclass
class EsamBlipSegmentationOutput(ModelOutput):
    r"""
    Output of [`EsamBlipForPromptableSegmentation`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`, the SAM loss (focal + dice on the
            lowest-loss candidate, IoU MSE), plus with `match_labels` the ITM cross-entropy, weighted by the config.
        iou_scores (`torch.FloatTensor` of shape `[B, Q, M]`): predicted IoU of every candidate mask (not sorted,
            no sigmoid; the best mask of a query is its arg-max).
        pred_masks (`torch.FloatTensor` of shape `[B, Q, M, 256, 256]`): low-resolution mask logits; resize them
            with `EsamBlipImageProcessor.post_process_masks` and threshold at 0.
        image_embeddings (`torch.FloatTensor` of shape `[B, C, 64, 64]`): EfficientSAM image embeddings before any
            fusion (fusion happens on the way to the decoder), to reuse for further prompts; with
            `fusion_type="multilevel"` the encoder's output with the BLIP stream added inside it.
        prompt_points (`torch.FloatTensor` of shape `[T, K, 2]`, text prompts only): the points chosen from each
            text's heatmap, (x, y) cell centres in the encoder frame; unused slots are (-1, -1).
            `processor.post_process_points(prompt_points, original_sizes)` maps them to image pixels.
        prompt_labels (`torch.LongTensor` of shape `[T, K]`, text prompts only): 1 salient, 0 background, -1 unused.
        heatmap (`torch.FloatTensor` of shape `[T, g, g]`, text prompts only): Grad-CAM of each text (caption mean).
        enhanced_heatmap (`torch.FloatTensor` of shape `[T, g, g]`, text prompts only): mask-enhanced heatmap in
            [0, 1], `alpha * heatmap + (1 - alpha) * mask` with the best mask of the first query.
        gradcams (`torch.FloatTensor` of shape `[T, g*g]`, text prompts only): `enhanced_heatmap` flattened, the
            input PnP-VQA samples image patches from.
        itm_probability (`torch.FloatTensor` of shape `[T]`, text prompts only): BLIP ITM match probability.
        is_match (`torch.BoolTensor` of shape `[T]`, text prompts only): `itm_probability >= config.match_threshold`;
            False means the described object is probably absent and the mask should not be trusted.
        blip_image_embeds (`torch.FloatTensor` of shape `[B, 1 + g*g, D]`, text prompts or fusion only): BLIP ViT
            output.
    """

    loss: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    image_embeddings: torch.FloatTensor | None = None
    prompt_points: torch.FloatTensor | None = None
    prompt_labels: torch.LongTensor | None = None
    heatmap: torch.FloatTensor | None = None
    enhanced_heatmap: torch.FloatTensor | None = None
    gradcams: torch.FloatTensor | None = None
    itm_probability: torch.FloatTensor | None = None
    is_match: torch.BoolTensor | None = None
    blip_image_embeds: torch.FloatTensor | None = None


class EsamBlipPreTrainedModel(BuiltinNamesMixin, PreTrainedModel):
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


class EsamBlipModel(EsamBlipPreTrainedModel):
    """
    The joint model: the EfficientSAM half (`self.sam`, points/boxes → masks) and the BLIP half (`self.blip`, ITM,
    ITC, Grad-CAM). Either may be `None` when the checkpoint holds only the other one. The trainable joins exist only
    when configured, so converted checkpoints keep their exact key list: `self.fusion` (`config.fusion_type`) and
    `self.prompter` (learned text prompts, `config.prompter_source`).
    """

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
        """`pixel_values [B, 3, S, S]` (from `EsamBlipImageProcessor`) → EfficientSAM `image_embeddings [B, C, g, g]`."""
        return self.require_segmentation().get_image_embeddings(pixel_values)

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

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> ModelOutput:
        """
        Encode images with whichever halves the checkpoint has.

        Returns:
            `ModelOutput` with `image_embeddings [B, C, g, g]` (EfficientSAM) and/or `blip_image_embeds
            [B, 1+N, D]` (BLIP ViT).
        """
        if pixel_values is None and blip_pixel_values is None:
            raise ValueError("Pass `pixel_values` (EfficientSAM) and/or `blip_pixel_values` (BLIP).")
        output = ModelOutput()
        if pixel_values is not None:
            output["image_embeddings"] = self.get_image_embeddings(pixel_values)
        if blip_pixel_values is not None:
            output["blip_image_embeds"] = self.require_blip().get_image_features(blip_pixel_values)
        return output


def _check_tensor(name: str, value: torch.Tensor, ndim: int, last: int | None, expected: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(value).__name__}.")
    if value.ndim != ndim or (last is not None and value.shape[-1] != last):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(value.shape)}.")


class EsamBlipForPromptableSegmentation(EsamBlipPreTrainedModel):
    """
    EfficientSAM masks from points, boxes and texts, SAM-compatible: `get_image_embeddings` once, then
    `forward(image_embeddings=..., input_points=..., input_labels=...)` for as many prompts as needed, so
    `pipeline("mask-generation")` works unchanged (with `fusion_type="none"` or a fusion that runs on cached
    embeddings).

    Texts become prompts zero-shot (Grad-CAM peaks as points) or through a trained prompter; `labels`/`match_labels`
    give the training loss (see `forward`).
    """

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__(config)
        self.model = EsamBlipModel(config)
        self.post_init()

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        `pixel_values [B, 3, S, S]` → `image_embeddings [B, C, g, g]`; encode once, prompt many times. Always the plain
        EfficientSAM embeddings: `forward` applies the configured fusion to them.
        """
        return self.model.get_image_embeddings(pixel_values)

    def _validate_prompts(
        self,
        batch_size: int,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        required: bool = True,
    ) -> torch.Tensor | None:
        size = self.config.sam_vision_config.image_size
        if input_points is None and input_labels is not None:
            raise ValueError("`input_labels` was given without `input_points`.")
        if input_points is None and input_boxes is None and required:
            raise ValueError(
                "Pass `input_points` and/or `input_boxes` (or a text with `input_ids`): EfficientSAM needs a prompt."
            )
        num_queries = []
        if input_points is not None:
            _check_tensor("input_points", input_points, 4, 2, "[batch, queries, points, 2]")
            if input_labels is None:
                input_labels = torch.ones(input_points.shape[:3], dtype=torch.long, device=input_points.device)
            _check_tensor("input_labels", input_labels, 3, None, "[batch, queries, points]")
            if input_labels.shape != input_points.shape[:3]:
                raise ValueError(
                    f"`input_labels` must have shape {tuple(input_points.shape[:3])} to match `input_points` "
                    f"{tuple(input_points.shape)}, got {tuple(input_labels.shape)}."
                )
            bad = ~torch.isin(input_labels.long(), torch.tensor(VALID_LABELS, device=input_labels.device))
            if bad.any():
                raise ValueError(
                    f"`input_labels` must be in {list(VALID_LABELS)} (-1 padding, 0 background, 1 foreground, "
                    f"2/3 box corners), got {sorted(set(input_labels[bad].tolist()))}."
                )
            real = input_labels != VALID_LABELS[0]
            coords = input_points[real]
            if coords.numel() and (coords.min() < 0 or coords.max() > size or not torch.isfinite(coords).all()):
                raise ValueError(
                    f"`input_points` must lie in the {size}x{size} encoder frame ([0, {size}] per axis); got values in "
                    f"[{coords.min().item():.1f}, {coords.max().item():.1f}]. Pass image-pixel coordinates through "
                    "EsamBlipImageProcessor/EsamBlipProcessor, which rescales them."
                )
            num_queries.append(("input_points", input_points.shape[0], input_points.shape[1]))
        if input_boxes is not None:
            _check_tensor("input_boxes", input_boxes, 3, 4, "[batch, queries, 4] as (x1, y1, x2, y2)")
            if (input_boxes[..., 2] < input_boxes[..., 0]).any() or (input_boxes[..., 3] < input_boxes[..., 1]).any():
                raise ValueError("`input_boxes` must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1.")
            num_queries.append(("input_boxes", input_boxes.shape[0], input_boxes.shape[1]))
        for name, batch, _ in num_queries:
            if batch != batch_size:
                raise ValueError(f"`{name}` has batch size {batch} but the images have {batch_size}.")
        if len(num_queries) == 2 and num_queries[0][2] != num_queries[1][2]:
            raise ValueError(
                f"`input_points` ({num_queries[0][2]} queries) and `input_boxes` ({num_queries[1][2]} queries) must "
                "hold the same number of queries per image."
            )
        return input_labels

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        multimask_output: bool = True,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        blip_image_embeds: torch.Tensor | None = None,
        text_prompt_mode: str = "gradcam",
        labels: torch.Tensor | None = None,
        match_labels: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EsamBlipSegmentationOutput | tuple:
        r"""
        Args:
            pixel_values (`[B, 3, S, S]`): normalised images from `EsamBlipImageProcessor` (XOR `image_embeddings`).
            image_embeddings (`[B, C, g, g]`): output of `get_image_embeddings`, to prompt an encoded image again.
                These are the plain EfficientSAM embeddings: the fusion of `config.fusion_type` is applied here, on
                the way to the decoder, so cached embeddings stay valid (except `"multilevel"`, which fuses inside
                the encoder and needs `pixel_values`).
            input_points (`[B, Q, P, 2]`): (x, y) in the S x S encoder frame (the processor rescales image pixels);
                padding `(-1, -1)`. With texts, the batch axis is the text axis `T`.
            input_labels (`[B, Q, P]`): 1 foreground, 0 background, 2/3 box corners, -1 padding; all 1 if omitted.
            input_boxes (`[B, Q, 4]`): (x1, y1, x2, y2) in the encoder frame; added as two corner points after the
                query's points.
            multimask_output (`bool`): three candidate masks per query if True, one otherwise.
            input_ids (`[T, L]`, *optional*): texts describing what to segment ([CLS]-first ids from
                `EsamBlipProcessor`). Text `t` goes with image `t`, or every text with the single image (`B == 1`;
                the image is encoded once). Needs the BLIP half and `blip_pixel_values` or `blip_image_embeds`.
            attention_mask (`[T, L]`, *optional*): 1 for real tokens.
            blip_pixel_values (`[B, 3, s, s]`): BLIP input; unused without texts and without fusion (so the
                processor's full output can be passed).
            blip_image_embeds (`[B, 1 + N, D]`): BLIP ViT output, instead of `blip_pixel_values`.
            text_prompt_mode (`str`): how texts become prompts.
                - `"gradcam"` (zero-shot): each text's Grad-CAM heatmap gives up to `config.text_prompt_num_points`
                  salient points (cell centres), appended to every query of that text (one query when no point/box
                  is given). Not differentiable through the prompts.
                - `"learned"`: the trained prompter (`config.prompter_source`) turns each text's features into
                  `config.num_prompt_tokens` sparse embeddings, appended after the embeddings of the query's points
                  and boxes (the only prompt when none is given, one query). Differentiable end to end; the ITM head
                  gives `itm_probability`/`is_match`.
            labels (`[B or T, Q, h, w]` or `[B or T, h, w]`, *optional*): binary target masks at the low resolution
                of `pred_masks` (256x256) or at the original image size (then pass `original_sizes`); a 3-D label is
                shared by every query. Gives the SAM loss (`losses.segmentation_loss`, weights from the config).
            match_labels (`[T]`, *optional*): 1 where the text describes its image, 0 where not: the ITM
                cross-entropy (`config.itm_loss_weight`) of learned text prompts. Ignored, with a warning, in the
                other modes, whose ITM logits are not trained. With `labels`, a text whose match label is 0 trains no
                mask (its object does not exist) unless `config.absent_mask_loss`.
            original_sizes (`[B, 2]`, *optional*): `(H, W)` of each image, as the image processor returns them;
                only read to resize full-resolution `labels`.

        With `transformers.Trainer`, set `label_names=["labels", "match_labels"]`: Trainer otherwise takes every
        argument whose name contains "label", `input_labels` included, for a label.

        Returns:
            [`EsamBlipSegmentationOutput`] with `loss` (with `labels` and/or `match_labels`; first, so `Trainer`
            finds it), `pred_masks [B or T, Q, M, 4g, 4g]`, `iou_scores [B or T, Q, M]` and, with texts, the match
            probabilities and (Grad-CAM mode) the chosen points and heatmaps.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        sam = self.model.require_segmentation()
        if input_ids is not None and text_prompt_mode not in TEXT_PROMPT_MODES:
            raise ValueError(f"`text_prompt_mode` must be one of {TEXT_PROMPT_MODES}, got {text_prompt_mode!r}.")
        fusion_type = self.config.fusion_type
        if input_ids is not None or fusion_type != "none":
            reason = "Text prompts" if input_ids is not None else f"`fusion_type={fusion_type!r}`"
            blip_image_embeds = self._blip_image_embeds(blip_pixel_values, blip_image_embeds, reason)
        else:
            blip_image_embeds = None
        image_embeddings = self._image_embeddings(sam, pixel_values, image_embeddings, blip_image_embeds)
        decoder_embeddings = self._fused_embeddings(image_embeddings, blip_image_embeds)
        if blip_image_embeds is not None and input_ids is not None:
            itm_image_embeds = self.model.itm_image_embeds(blip_image_embeds, image_embeddings=image_embeddings)

        itm_logits = None
        if input_ids is None:
            input_labels = self._validate_prompts(image_embeddings.shape[0], input_points, input_labels, input_boxes)
            points, point_labels = assemble_prompts(
                input_points, input_labels, input_boxes, self.config.prompt_encoder_config.max_num_points
            )
            pred_masks, iou_scores = sam.predict_masks(decoder_embeddings, points, point_labels, multimask_output)
            fields = {"iou_scores": iou_scores, "pred_masks": pred_masks}
        else:
            _check_tensor("input_ids", input_ids, 2, None, "[texts, length]")
            input_labels = self._validate_prompts(
                input_ids.shape[0], input_points, input_labels, input_boxes, required=False
            )
            if text_prompt_mode == "gradcam":
                fields = self._segment_with_gradcam(
                    sam,
                    decoder_embeddings,
                    itm_image_embeds,
                    input_ids,
                    attention_mask,
                    input_points,
                    input_labels,
                    input_boxes,
                    multimask_output,
                )
            else:
                fields, itm_logits = self._segment_with_learned_prompts(
                    sam,
                    decoder_embeddings,
                    itm_image_embeds,
                    input_ids,
                    attention_mask,
                    input_points,
                    input_labels,
                    input_boxes,
                    multimask_output,
                )
        loss = self._loss(fields, labels, itm_logits, match_labels, original_sizes)
        output = EsamBlipSegmentationOutput(
            loss=loss, image_embeddings=image_embeddings, blip_image_embeds=blip_image_embeds, **fields
        )
        return output if return_dict else output.to_tuple()

    def _segment_with_gradcam(
        self,
        sam: EfficientSamModule,
        image_embeddings: torch.Tensor,
        itm_image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        multimask_output: bool,
    ) -> dict[str, torch.Tensor]:
        """Zero-shot text prompts: Grad-CAM peaks become points appended to each query (output fields as a dict)."""
        num_texts = input_ids.shape[0]
        gradcam, itm_logits = self.model.blip.compute_gradcam(
            input_ids, attention_mask, _pair_images(itm_image_embeds, num_texts)
        )
        heatmap = gradcam[:, 1]
        text_points, text_labels = heatmap_to_prompts(
            heatmap,
            frame_size=self.config.sam_vision_config.image_size,
            num_points=self.config.text_prompt_num_points,
            min_distance=self.config.text_prompt_min_distance,
            threshold=self.config.text_prompt_threshold,
            num_background_points=self.config.text_prompt_num_background_points,
        )
        num_queries = next((t.shape[1] for t in (input_points, input_boxes) if t is not None), 1)
        query_points = text_points[:, None].expand(-1, num_queries, -1, -1)
        query_labels = text_labels[:, None].expand(-1, num_queries, -1)
        if input_points is not None:
            query_points = torch.cat([input_points.to(query_points.dtype), query_points], dim=2)
            query_labels = torch.cat([input_labels.long(), query_labels], dim=2)
        points, point_labels = assemble_prompts(
            query_points, query_labels, input_boxes, self.config.prompt_encoder_config.max_num_points
        )
        sam_embeddings = _pair_with_texts(image_embeddings, num_texts, "image_embeddings")
        pred_masks, iou_scores = sam.predict_masks(sam_embeddings, points, point_labels, multimask_output)

        best = iou_scores[:, 0].argmax(dim=-1)
        best_mask = pred_masks[torch.arange(num_texts), 0, best] > 0  # logits: the sign decides the mask
        enhanced = mask_enhanced_heatmap(heatmap, best_mask, self.config.heatmap_mask_alpha)
        return {
            "iou_scores": iou_scores,
            "pred_masks": pred_masks,
            "prompt_points": text_points,
            "prompt_labels": text_labels,
            "heatmap": heatmap,
            "enhanced_heatmap": enhanced,
            "gradcams": enhanced.flatten(1),
            **self._match_fields(itm_logits),
        }

    def _segment_with_learned_prompts(
        self,
        sam: EfficientSamModule,
        image_embeddings: torch.Tensor,
        itm_image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Learned text prompts: prompter tokens after each query's point/box embeddings; returns fields and ITM logits."""
        prompter = self.model.require_prompter()
        blip = self.model.blip
        num_texts = input_ids.shape[0]
        multimodal = blip.get_multimodal_features(input_ids, attention_mask, _pair_images(itm_image_embeds, num_texts))
        itm_logits = blip.itm_head(multimodal[:, 0])
        if self.config.prompter_source == "itm":
            text_features = multimodal[:, 0]
        else:
            text_features = blip.get_text_features(input_ids, attention_mask)[:, 0]
        text_tokens = prompter(text_features).to(image_embeddings.dtype)

        if input_points is None and input_boxes is None:
            sparse = text_tokens[:, None]
        else:
            points, point_labels = assemble_prompts(
                input_points, input_labels, input_boxes, self.config.prompt_encoder_config.max_num_points
            )
            point_embeddings = sam.embed_prompts(points, point_labels).to(image_embeddings.dtype)
            text_tokens = text_tokens[:, None].expand(-1, point_embeddings.shape[1], -1, -1)
            sparse = torch.cat([point_embeddings, text_tokens], dim=2)
        sam_embeddings = _pair_with_texts(image_embeddings, num_texts, "image_embeddings")
        pred_masks, iou_scores = sam.decode(sam_embeddings, sparse, multimask_output)
        return {"iou_scores": iou_scores, "pred_masks": pred_masks, **self._match_fields(itm_logits)}, itm_logits

    def _match_fields(self, itm_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        itm_probability = itm_logits.softmax(dim=-1)[:, 1]
        return {"itm_probability": itm_probability, "is_match": itm_probability >= self.config.match_threshold}

    def _loss(
        self,
        fields: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        itm_logits: torch.Tensor | None,
        match_labels: torch.Tensor | None,
        original_sizes: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """
        Weighted SAM loss on `labels` plus the ITM cross-entropy on `match_labels` (learned prompts only). With both,
        absent expressions (match label 0) train only the ITM head unless `config.absent_mask_loss`.
        """
        config = self.config
        matching = None
        if match_labels is not None:
            if itm_logits is None:
                logger.warning_once(
                    "`match_labels` train the ITM head of learned text prompts (`input_ids` with "
                    "`text_prompt_mode='learned'`); they are ignored here."
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

    def _blip_image_embeds(
        self, blip_pixel_values: torch.Tensor | None, blip_image_embeds: torch.Tensor | None, reason: str
    ) -> torch.Tensor:
        blip = self.model.require_blip()
        if (blip_pixel_values is None) == (blip_image_embeds is None):
            raise ValueError(f"{reason} need exactly one of `blip_pixel_values` and `blip_image_embeds`.")
        if blip_image_embeds is None:
            return blip.get_image_features(blip_pixel_values)
        blip._check_image_embeds(blip_image_embeds)
        return blip_image_embeds

    def _image_embeddings(
        self,
        sam: EfficientSamModule,
        pixel_values: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        blip_image_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """Plain EfficientSAM embeddings, or with `"multilevel"` fusion those of the encoder fed the BLIP stream."""
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeddings`.")
        multilevel = self.config.fusion_type == "multilevel"
        if image_embeddings is not None:
            if multilevel:
                raise ValueError(
                    "`fusion_type='multilevel'` adds the BLIP features inside the EfficientSAM encoder: pass "
                    "`pixel_values`, not `image_embeddings`."
                )
            vision = self.config.sam_vision_config
            grid = vision.image_embedding_size
            expected = f"[batch, {vision.output_channels}, {grid}, {grid}]"
            _check_tensor("image_embeddings", image_embeddings, 4, None, expected)
            if image_embeddings.shape[1:] != (vision.output_channels, grid, grid):
                raise ValueError(f"`image_embeddings` must have shape {expected}, got {tuple(image_embeddings.shape)}.")
        num_images = (pixel_values if image_embeddings is None else image_embeddings).shape[0]
        if blip_image_embeds is not None and blip_image_embeds.shape[0] != num_images:
            raise ValueError(
                f"The BLIP images ({blip_image_embeds.shape[0]}) and the EfficientSAM images ({num_images}) must be "
                "the same batch."
            )
        if image_embeddings is not None:
            return image_embeddings
        if multilevel:
            fused = self.model.fusion(blip_image_embeds, self.config.sam_vision_config.image_embedding_size)
            return sam.vision_encoder(pixel_values, fused_features=fused, fusion_layer=self.config.fusion_layer)
        return sam.get_image_embeddings(pixel_values)

    def _fused_embeddings(self, image_embeddings: torch.Tensor, blip_image_embeds: torch.Tensor | None) -> torch.Tensor:
        """The decoder's image embeddings: fused with the BLIP features (`concat`, `cross_attention`, `adapter`)."""
        if self.config.fusion_type in ("none", "multilevel"):
            return image_embeddings
        return self.model.fusion(image_embeddings, blip_image_embeds)


def _pair_with_texts(images: torch.Tensor, num_texts: int, name: str) -> torch.Tensor:
    """One image per text; a single image is broadcast (a view, not a copy) to every text."""
    if images.shape[0] == num_texts:
        return images
    if images.shape[0] == 1:
        return images.expand(num_texts, *images.shape[1:])
    raise ValueError(
        f"`{name}`: got {images.shape[0]} images for {num_texts} texts. Pass one image per text, or a single image "
        "for every text."
    )


def _pair_images(image_embeds: torch.Tensor, num_texts: int) -> torch.Tensor:
    """One BLIP image per text for ITM; a single image is broadcast to every text."""
    if image_embeds.ndim != 3:
        raise ValueError(
            f"`image_embeds` must have shape [num_images, 1 + num_patches, width], got {tuple(image_embeds.shape)}."
        )
    return _pair_with_texts(image_embeds, num_texts, "image_embeds")


class EsamBlipForImageTextMatching(EsamBlipPreTrainedModel):
    """
    BLIP image-text matching (ITM logits), ITC similarity and Grad-CAM, with LAVIS's semantics. Needs a checkpoint
    with the BLIP half (`config.has_blip`).

    Texts come from the tokenizer with [CLS] first and right padding (`EsamBlipProcessor`); for ITM the first token is
    replaced by `config.enc_token_id` inside, as LAVIS does.
    """

    main_input_name = "input_ids"

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__(config)
        self.model = EsamBlipModel(config)
        self.post_init()

    def _images(self, blip_pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        if (blip_pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of `blip_pixel_values` and `image_embeds`.")
        if image_embeds is None:
            image_embeds = self.model.require_blip().get_image_features(blip_pixel_values)
        return image_embeds

    def get_image_features(self, blip_pixel_values: torch.Tensor) -> torch.Tensor:
        """`blip_pixel_values [B, 3, S, S]` → BLIP ViT output `image_embeds [B, 1 + N, D]` (after the final norm)."""
        return self.model.require_blip().get_image_features(blip_pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        `input_ids [B, L]` ([CLS] first) → text-only last hidden state `[B, L, D_text]` (LAVIS's `mode="text"`; its
        [CLS] row, projected by `text_proj`, is the ITC text feature).
        """
        return self.model.require_blip().get_text_features(input_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        blip_pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        use_itm_head: bool = True,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
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

        Returns:
            [`EsamBlipImageTextMatchingOutput`]: `itm_score` is `[B_texts, 2]` ITM logits (match probability
            `softmax(-1)[:, 1]`) or `[B_images, B_texts]` ITC cosine similarity (no temperature).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
        output = EsamBlipImageTextMatchingOutput(
            loss=loss,
            itm_score=itm_score,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_feat=image_feat,
            text_feat=text_feat,
        )
        return output if return_dict else output.to_tuple()

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
    "EsamBlipImageTextMatchingOutput",
    "EsamBlipModel",
    "EsamBlipPreTrainedModel",
    "EsamBlipSegmentationOutput",
]
