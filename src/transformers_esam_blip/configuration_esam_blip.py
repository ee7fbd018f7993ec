"""EsamBlip model configuration: EfficientSAM (vision encoder, prompt encoder, mask decoder) plus BLIP ITM."""

from typing import Any

from transformers import BlipTextConfig, BlipVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .builtin import BuiltinNamesMixin
from .fusion import fusion_class


class EfficientSamVisionConfig(PreTrainedConfig):
    r"""
    Configuration of the EfficientSAM image encoder: a plain ViT with an absolute position embedding stored at the
    pre-training grid (`pretrain_image_size // patch_size`, plus one class-token slot) and resized bicubically to
    the input grid, followed by a convolutional neck.

    Args:
        hidden_size (`int`, defaults to 384): width of the ViT (192 for EfficientSAM-Ti, 384 for -S).
        num_hidden_layers (`int`, defaults to 12): number of ViT blocks.
        num_attention_heads (`int`, defaults to 6): heads per block.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden size over `hidden_size`.
        num_channels (`int`, defaults to 3): input channels.
        image_size (`int`, defaults to 1024): square input side the encoder expects.
        patch_size (`int`, defaults to 16): patch side; the output grid is `image_size // patch_size`.
        pretrain_image_size (`int`, defaults to 224): image side the position embedding was stored for.
        neck_hidden_sizes (`list[int]`, defaults to `[256, 256]`): channels of the two neck convolutions; the last
            one is the channel count of the image embeddings.
        qkv_bias (`bool`, defaults to `True`): bias on the fused qkv projection.
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLPs.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the block and neck layer norms.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal weight init.
    """

    model_type = "efficient_sam_vision_model"
    base_config_key = "sam_vision_config"

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: float = 4.0
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    pretrain_image_size: int = 224
    neck_hidden_sizes: list[int] | tuple[int, ...] = (256, 256)
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.neck_hidden_sizes = list(self.neck_hidden_sizes)
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must divide `hidden_size` ({self.hidden_size})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"`patch_size` ({self.patch_size}) must divide `image_size` ({self.image_size}).")
        if len(self.neck_hidden_sizes) != 2:
            raise ValueError(f"`neck_hidden_sizes` must hold 2 values, got {self.neck_hidden_sizes}.")

    @property
    def output_channels(self) -> int:
        return self.neck_hidden_sizes[-1]

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size


class EfficientSamPromptEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of the EfficientSAM prompt encoder: points and box corners, and optionally dense mask prompts.

    Args:
        hidden_size (`int`, defaults to 256): embedding width, equal to the image embedding channels.
        image_size (`int`, defaults to 1024): side of the frame the point coordinates live in.
        image_embedding_size (`int`, defaults to 64): side of the image embedding grid.
        max_num_points (`int`, defaults to 6): points per query the decoder sees; more are truncated (with a
            warning in the processor), fewer are padded with `(-1, -1)` and label `-1`.
        mask_prompts (`bool`, defaults to `False`): build SAM's mask encoder, so that `input_masks` (low-resolution
            mask logits, one per query) can prompt the decoder. The original EfficientSAM checkpoints have none.
        mask_input_channels (`int`, defaults to 16): channels of the mask encoder's second convolution (the first
            has a quarter of them), as in SAM.
    """

    model_type = "efficient_sam_prompt_encoder"
    base_config_key = "prompt_encoder_config"

    hidden_size: int = 256
    image_size: int = 1024
    image_embedding_size: int = 64
    max_num_points: int = 6
    mask_prompts: bool = False
    mask_input_channels: int = 16

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not isinstance(self.mask_prompts, bool):
            raise TypeError(f"`mask_prompts` must be a bool, got {type(self.mask_prompts).__name__}.")
        if self.mask_input_channels < 4 or self.mask_input_channels % 4 != 0:
            raise ValueError(f"`mask_input_channels` must be a positive multiple of 4, got {self.mask_input_channels}.")
        if self.hidden_size % 2 != 0:
            raise ValueError(f"`hidden_size` of the prompt encoder must be even, got {self.hidden_size}.")
        if self.max_num_points < 1:
            raise ValueError(f"`max_num_points` must be >= 1, got {self.max_num_points}.")

    @property
    def mask_input_size(self) -> int:
        """Side of the `input_masks` the mask encoder reads: four times the embedding grid (256 for a 64x64 grid)."""
        return 4 * self.image_embedding_size


class EfficientSamMaskDecoderConfig(PreTrainedConfig):
    r"""
    Configuration of the EfficientSAM mask decoder (two-way transformer, hypernetwork MLPs, IoU head).

    Args:
        hidden_size (`int`, defaults to 256): token width.
        num_hidden_layers (`int`, defaults to 2): two-way attention blocks.
        num_attention_heads (`int`, defaults to 8): heads in every attention.
        mlp_dim (`int`, defaults to 2048): hidden size of the token MLP.
        attention_downsample_rate (`int`, defaults to 2): internal width divisor of the cross-attentions.
        num_multimask_outputs (`int`, defaults to 3): candidate masks per query (one more token predicts the
            single-mask output).
        iou_head_depth (`int`, defaults to 3): layers of the IoU head, counted as the original does (its MLP
            holds `iou_head_depth - 1` hidden layers plus the output layer).
        iou_head_hidden_dim (`int`, defaults to 256): hidden width of the IoU head.
        upscaling_hidden_sizes (`list[int]`, defaults to `[64, 32]`): channels of the transposed convolutions.
        hidden_act (`str`, defaults to `"gelu"`): activation everywhere in the decoder.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the decoder layer norms.
    """

    model_type = "efficient_sam_mask_decoder"
    base_config_key = "mask_decoder_config"

    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    upscaling_hidden_sizes: list[int] | tuple[int, ...] = (64, 32)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        self.upscaling_hidden_sizes = list(self.upscaling_hidden_sizes)
        super().__post_init__(**kwargs)
        internal = self.hidden_size // self.attention_downsample_rate
        if self.hidden_size % self.num_attention_heads or internal % self.num_attention_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must divide `hidden_size` ({self.hidden_size}) "
                f"and `hidden_size // attention_downsample_rate` ({internal})."
            )
        if self.iou_head_depth < 2:
            raise ValueError(f"`iou_head_depth` must be >= 2, got {self.iou_head_depth}.")
        if not self.upscaling_hidden_sizes:
            raise ValueError("`upscaling_hidden_sizes` must hold at least one value.")


PROMPTER_SOURCES = ("text", "itm")

_SUB_CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {
    "sam_vision_config": EfficientSamVisionConfig,
    "prompt_encoder_config": EfficientSamPromptEncoderConfig,
    "mask_decoder_config": EfficientSamMaskDecoderConfig,
    "vision_config": BlipVisionConfig,
    "text_config": BlipTextConfig,
}


REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_esam_blip.EsamBlipConfig",
    "AutoModel": "modeling_esam_blip.EsamBlipModel",
    "AutoModelForMaskGeneration": "modeling_esam_blip.EsamBlipForPromptableSegmentation",
}


class EsamBlipConfig(BuiltinNamesMixin, PreTrainedConfig):
    r"""
    Composite configuration of [`EsamBlipModel`]. Either half may be absent: a segmentation-only checkpoint has no
    `vision_config`/`text_config`, a matching-only checkpoint has no `sam_vision_config`/`prompt_encoder_config`/
    `mask_decoder_config`. Using a missing half raises a `ValueError`.

    Args:
        sam_vision_config (`dict` or [`EfficientSamVisionConfig`], *optional*): EfficientSAM image encoder.
        prompt_encoder_config (`dict` or [`EfficientSamPromptEncoderConfig`], *optional*): prompt encoder.
        mask_decoder_config (`dict` or [`EfficientSamMaskDecoderConfig`], *optional*): mask decoder.
        vision_config (`dict` or [`BlipVisionConfig`], *optional*): BLIP ViT.
        text_config (`dict` or [`BlipTextConfig`], *optional*): BLIP BERT text encoder with cross-attention.
        image_text_hidden_size (`int`, defaults to 256): width of the ITC projections (`vision_proj`,
            `text_proj`).
        enc_token_id (`int`, *optional*): id of the `[ENC]` token that replaces the first token for ITM.
        unk_token_id (`int`, *optional*): id of the tokenizer's `[UNK]` token. A text holding it has words the model
            cannot read: it is never reported as a match (`is_match=False`, `has_unknown_tokens=True`).
        max_txt_len (`int`, defaults to 35): truncation length of the tokenizer, as LAVIS.
        gradcam_block_num (`int`, defaults to 7): text layer whose cross-attention Grad-CAM reads (PnP-VQA's
            choice; LAVIS's `compute_gradcam` defaults to 6).
        text_prompt_num_points (`int`, defaults to 3): zero-shot text prompts: at most `k` salient Grad-CAM peaks
            become foreground points.
        text_prompt_min_distance (`int`, defaults to 2): minimum spacing of two peaks, in Grad-CAM cells.
        text_prompt_threshold (`float`, defaults to 0.5): peaks below this fraction of the map's maximum are dropped.
        text_prompt_num_background_points (`int`, defaults to 0): background points taken from the coldest cells.
        match_threshold (`float`, defaults to 0.5): ITM match probability under which a text is reported absent
            (`is_match=False`).
        heatmap_mask_alpha (`float`, defaults to 0.5): weight of the heatmap in the mask-enhanced heatmap.
        segmentation (`bool`, *optional*): set `False` to build a matching-only config without the EfficientSAM
            defaults. By default the EfficientSAM half is built whenever none of its sub-configs is given and no
            BLIP sub-config is given either (the plain `EsamBlipConfig()` is a full EfficientSAM-S model).
        fusion_type (`str`, defaults to `"none"`): the registered fusion (`fusion.FUSIONS`) by which BLIP ViT
            features enter EfficientSAM (see `fusion.py`). `"none"` builds nothing, so converted checkpoints reproduce
            the originals; `"concat"` (BLIP grid resized to the SAM grid, channels concatenated, conv projection),
            `"cross_attention"` (SAM tokens attend to BLIP tokens), `"adapter"` (light adapters on both, summed) and
            `"multilevel"` (projected BLIP features added inside the EfficientSAM ViT after block `fusion_layer`)
            need both halves. Every fusion starts as the identity on the SAM embeddings.
        fusion_layer (`int`, *optional*): `"multilevel"` only: the EfficientSAM ViT block after which the BLIP
            features are added, in `[0, sam_vision_config.num_hidden_layers - 1]`; defaults to the middle block
            (`num_hidden_layers // 2`).
        fusion_hidden_size (`int`, *optional*): inner width of the `"concat"` projection, the `"cross_attention"`
            attention and the `"adapter"` bottlenecks; defaults to the image-embedding channels.
        fusion_num_attention_heads (`int`, defaults to 8): heads of the `"cross_attention"` fusion; must divide
            `fusion_hidden_size`.
        itm_fusion (`bool`, defaults to `False`): also give image-text matching EfficientSAM's view of the image:
            the EfficientSAM image embeddings, average-pooled to the BLIP patch grid, pass a LayerNorm and a
            zero-initialised projection and are added to BLIP's patch tokens before the ITM cross-attention ([CLS]
            untouched; see `fusion.EsamBlipItmFusion`). ITM, Grad-CAM and learned prompts from `"itm"` then read the
            sum, and the ITM needs the EfficientSAM input too (`pixel_values` or `image_embeddings`). Needs both
            halves; not with `fusion_type="multilevel"`. `False` builds nothing (converted checkpoints stay exact).
        prompter_source (`str`, *optional*): builds the learned text prompter (`text_prompt_mode="learned"`) from
            `"text"` (the text-only [CLS] hidden state) or `"itm"` (the [ENC] hidden state of the ITM pass, which
            cross-attends to the image). `None` (the default) builds no prompter, as for converted checkpoints.
        num_prompt_tokens (`int`, defaults to 4): sparse prompt embeddings the prompter makes per text.
        text_prompt_mode (`str`, defaults to `"auto"`): the default text-prompt strategy (a key of
            `text_prompt_strategies.TEXT_PROMPT_STRATEGIES`, or `"auto"`: `"learned"` when the checkpoint has a
            prompter, else `"gradcam"`); `forward(text_prompt_mode=...)` overrides it per call.
        focal_loss_weight (`float`, defaults to 20.0): weight of the sigmoid focal loss on the masks (SAM's 20:1).
        dice_loss_weight (`float`, defaults to 1.0): weight of the dice loss on the masks.
        iou_loss_weight (`float`, defaults to 1.0): weight of the MSE between the predicted and the actual IoU.
        itm_loss_weight (`float`, defaults to 1.0): weight of the ITM cross-entropy (learned text prompts with
            `match_labels`).
        absent_mask_loss (`bool`, defaults to `False`): also train the masks of absent expressions (`match_labels`
            0) towards an empty mask. Off by default, as in SAM's recipe, which trains masks only for objects that
            exist: presence is the ITM head's job.
        initializer_range (`float`, defaults to 0.02): std of weight init for new layers.
    """

    model_type = "esam_blip"
    # Every half is optional; declaring them lets `attn_implementation` and `dtype` reach the sub-configs.
    sub_configs_defaults = {key: SubConfigSpec(cls, optional=True) for key, cls in _SUB_CONFIG_CLASSES.items()}

    sam_vision_config: dict | PreTrainedConfig | None = None
    prompt_encoder_config: dict | PreTrainedConfig | None = None
    mask_decoder_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_text_hidden_size: int = 256
    enc_token_id: int | None = None
    unk_token_id: int | None = None
    max_txt_len: int = 35
    gradcam_block_num: int = 7
    text_prompt_num_points: int = 3
    text_prompt_min_distance: int = 2
    text_prompt_threshold: float = 0.5
    text_prompt_num_background_points: int = 0
    match_threshold: float = 0.5
    heatmap_mask_alpha: float = 0.5
    segmentation: bool | None = None
    fusion_type: str = "none"
    fusion_layer: int | None = None
    fusion_hidden_size: int | None = None
    fusion_num_attention_heads: int = 8
    itm_fusion: bool = False
    prompter_source: str | None = None
    num_prompt_tokens: int = 4
    text_prompt_mode: str = "auto"
    focal_loss_weight: float = 20.0
    dice_loss_weight: float = 1.0
    iou_loss_weight: float = 1.0
    itm_loss_weight: float = 1.0
    absent_mask_loss: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for key, config_class in _SUB_CONFIG_CLASSES.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "model_type"}
                setattr(self, key, config_class(**value))
            elif value is not None and not isinstance(value, PreTrainedConfig):
                raise TypeError(f"`{key}` must be a dict, a {config_class.__name__} or None, got {type(value)}.")

        sam_keys = ("sam_vision_config", "prompt_encoder_config", "mask_decoder_config")
        has_any_sam = any(getattr(self, k) is not None for k in sam_keys)
        has_blip = self.vision_config is not None or self.text_config is not None
        if self.segmentation is None:
            self.segmentation = has_any_sam or not has_blip
        if self.segmentation:
            if self.sam_vision_config is None:
                self.sam_vision_config = EfficientSamVisionConfig()
            vision = self.sam_vision_config
            if self.prompt_encoder_config is None:
                self.prompt_encoder_config = EfficientSamPromptEncoderConfig(
                    hidden_size=vision.output_channels,
                    image_size=vision.image_size,
                    image_embedding_size=vision.image_embedding_size,
                )
            if self.mask_decoder_config is None:
                self.mask_decoder_config = EfficientSamMaskDecoderConfig(hidden_size=vision.output_channels)
        elif has_any_sam:
            raise ValueError("`segmentation=False` but EfficientSAM sub-configs were given.")

        if (self.vision_config is None) != (self.text_config is None):
            raise ValueError("`vision_config` and `text_config` (the BLIP half) must be given together or not at all.")
        if self.text_config is not None:
            self.text_config.encoder_hidden_size = self.vision_config.hidden_size
        super().__post_init__(**kwargs)
        # A model's `save_pretrained` adds only its own class to `auto_map`; carrying every entry lets any saved
        # checkpoint load through each Auto class with `trust_remote_code=True`.
        self.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self._check_consistency()
        self.check_training_settings()

    def _check_consistency(self) -> None:
        if self.text_prompt_num_points < 1:
            raise ValueError(f"`text_prompt_num_points` (k) must be >= 1, got {self.text_prompt_num_points}.")
        if self.text_prompt_min_distance < 1:
            raise ValueError(f"`text_prompt_min_distance` must be >= 1 cell, got {self.text_prompt_min_distance}.")
        if self.text_prompt_num_background_points < 0:
            raise ValueError(
                f"`text_prompt_num_background_points` must be >= 0, got {self.text_prompt_num_background_points}."
            )
        for name in ("text_prompt_threshold", "match_threshold", "heatmap_mask_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.has_segmentation:
            vision, prompt, decoder = self.sam_vision_config, self.prompt_encoder_config, self.mask_decoder_config
            widths = {
                "sam_vision_config.neck_hidden_sizes[-1]": vision.output_channels,
                "prompt_encoder_config.hidden_size": prompt.hidden_size,
                "mask_decoder_config.hidden_size": decoder.hidden_size,
            }
            if len(set(widths.values())) != 1:
                raise ValueError(f"The EfficientSAM widths must agree, got {widths}.")
            if prompt.image_embedding_size != vision.image_embedding_size or prompt.image_size != vision.image_size:
                raise ValueError(
                    "prompt_encoder_config (image_size, image_embedding_size) = "
                    f"({prompt.image_size}, {prompt.image_embedding_size}) must match the vision encoder's "
                    f"({vision.image_size}, {vision.image_embedding_size})."
                )
        if self.has_blip:
            num_layers = self.text_config.num_hidden_layers
            if not 0 <= self.gradcam_block_num < num_layers:
                raise ValueError(
                    f"`gradcam_block_num` must index a text layer in [0, {num_layers - 1}], got {self.gradcam_block_num}."
                )

    def check_training_settings(self) -> None:
        """
        Fill the defaults of `fusion_layer` and `fusion_hidden_size` and validate the fusion, prompter and loss
        settings. [`EsamBlipModel`] calls it again before building its modules, since `from_pretrained(path,
        fusion_type=...)` sets attributes after `__post_init__`.
        """
        fusion = fusion_class(self.fusion_type)
        if self.prompter_source is not None and self.prompter_source not in PROMPTER_SOURCES:
            raise ValueError(
                f"`prompter_source` must be None (no learned prompter) or one of {PROMPTER_SOURCES}, got "
                f"{self.prompter_source!r}."
            )
        if not isinstance(self.itm_fusion, bool):
            raise TypeError(f"`itm_fusion` must be a bool, got {type(self.itm_fusion).__name__}.")
        if self.itm_fusion and fusion is not None and fusion.location == "encoder":
            raise ValueError(
                "`itm_fusion=True` adds the plain EfficientSAM embeddings to BLIP's tokens, but `fusion_type="
                f"{self.fusion_type!r}` fuses inside the EfficientSAM encoder, which then depends on BLIP: choose one of the two."
            )
        joins = (
            ("fusion_type", fusion is not None),
            ("prompter_source", self.prompter_source),
            ("itm_fusion", self.itm_fusion),
        )
        for name, active in joins:
            if active and not (self.has_segmentation and self.has_blip):
                raise ValueError(
                    f"`{name}={getattr(self, name)!r}` joins BLIP and EfficientSAM: the config needs both halves, got "
                    f"has_segmentation={self.has_segmentation}, has_blip={self.has_blip}."
                )
        if fusion is not None and fusion.location == "encoder" and self.fusion_layer is None:
            self.fusion_layer = self.sam_vision_config.num_hidden_layers // 2
        if fusion is not None and fusion.location == "decoder" and self.fusion_hidden_size is None:
            self.fusion_hidden_size = self.sam_vision_config.output_channels
        if self.num_prompt_tokens < 1:
            raise ValueError(f"`num_prompt_tokens` must be >= 1, got {self.num_prompt_tokens}.")
        for name in ("focal_loss_weight", "dice_loss_weight", "iou_loss_weight", "itm_loss_weight"):
            if not 0.0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {getattr(self, name)}.")
        if fusion is not None and fusion.location == "encoder":
            num_layers = self.sam_vision_config.num_hidden_layers
            if not 0 <= self.fusion_layer < num_layers:
                raise ValueError(
                    f"`fusion_layer` must index an EfficientSAM ViT block in [0, {num_layers - 1}], got "
                    f"{self.fusion_layer}."
                )
        if self.fusion_hidden_size is not None and self.fusion_hidden_size < 1:
            raise ValueError(f"`fusion_hidden_size` must be >= 1, got {self.fusion_hidden_size}.")
        if fusion is not None:
            fusion.check_config(self)

    @property
    def has_segmentation(self) -> bool:
        """Whether the EfficientSAM half (points/boxes → masks) is configured."""
        return self.sam_vision_config is not None

    @property
    def has_blip(self) -> bool:
        """Whether the BLIP half (image-text matching, Grad-CAM) is configured."""
        return self.vision_config is not None

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in _SUB_CONFIG_CLASSES:
            value = getattr(self, key)
            output[key] = value.to_dict() if value is not None else None
        return output


__all__ = [
    "PROMPTER_SOURCES",
    "EfficientSamMaskDecoderConfig",
    "EfficientSamPromptEncoderConfig",
    "EfficientSamVisionConfig",
    "EsamBlipConfig",
]
