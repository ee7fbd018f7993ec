"""BLIP half of EsamBlip: ViT, BERT text encoder with cross-attention, ITM and ITC heads, and Grad-CAM (LAVIS semantics)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BlipTextModel, BlipVisionModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndCrossAttentions,
)
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer
from transformers.models.blip.modeling_blip_text import BlipTextLayer, BlipTextSelfAttention
from transformers.utils import ModelOutput

from .configuration_esam_blip import EsamBlipConfig
from .gradcam import gradcam_from_cross_attention
from .output_recording import OutputRecorder
from .prompts import check_image_tensor, check_token_ids, is_tracing

# Entries of `_can_record_outputs` (output field → recorded module) for the models holding an `EsamBlipImageTextModule`:
# every pass of the BLIP ViT and of the text encoder in one forward, in call order.
BLIP_VISION_RECORDED_OUTPUTS = {
    "blip_vision_hidden_states": OutputRecorder(BlipEncoderLayer, index=0),
    "blip_vision_attentions": OutputRecorder(BlipAttention, index=1),
}
BLIP_TEXT_RECORDED_OUTPUTS = {
    "blip_text_hidden_states": OutputRecorder(BlipTextLayer, index=0),
    "blip_text_attentions": OutputRecorder(BlipTextSelfAttention, index=1, layer_name="attention"),
}
BLIP_CROSS_ATTENTION_RECORDED_OUTPUTS = {
    "blip_cross_attentions": OutputRecorder(BlipTextSelfAttention, index=1, layer_name="crossattention"),
}


@dataclass
class EsamBlipImageTextMatchingOutput(ModelOutput):
    r"""
    Output of [`EsamBlipForImageTextMatching`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): ITM cross-entropy, when `labels` are given with the ITM
            head.
        itm_score (`torch.FloatTensor`): with the ITM head, logits of shape `(batch_size, 2)` (index 1 = match); without
            it, the ITC cosine similarity of shape `(num_images, num_texts)` (no temperature).
        image_embeds (`torch.FloatTensor` of shape `(num_images, 1 + num_patches, vision_hidden_size)`): BLIP ViT
            output.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`): last hidden state
            of the text encoder ([ENC]-first and cross-attending for ITM, [CLS]-first and text-only for ITC).
        image_feat (`torch.FloatTensor` of shape `(num_images, image_text_hidden_size)`, *optional*): normalised ITC
            image projection (ITC only).
        text_feat (`torch.FloatTensor` of shape `(num_texts, image_text_hidden_size)`, *optional*): normalised ITC
            text projection (ITC only).
        vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states` when the
            EfficientSAM ViT runs (`config.itm_fusion` with `pixel_values`)): its embeddings and the output of each
            block, `num_hidden_layers + 1` tensors of shape `(num_images, g*g, sam_hidden_size)`.
        vision_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions`, same condition): one
            `(num_images, num_heads, g*g, g*g)` per EfficientSAM ViT block.
        blip_vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states` and
            `blip_pixel_values`): BLIP ViT embeddings and the output of each layer, `num_hidden_layers + 1` tensors
            of shape `(num_images, 1 + num_patches, vision_hidden_size)`.
        blip_vision_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions` and
            `blip_pixel_values`): one `(num_images, num_heads, 1 + num_patches, 1 + num_patches)` per BLIP ViT layer.
        blip_text_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states`): text-encoder
            embeddings and the output of each layer, `num_hidden_layers + 1` tensors of shape
            `(batch_size, text_length, text_hidden_size)`.
        blip_text_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions`): one
            `(batch_size, num_heads, text_length, text_length)` self-attention per text layer.
        blip_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions`, ITM only): one
            `(batch_size, num_heads, text_length, 1 + num_patches)` cross-attention per text layer.
    """

    loss: torch.FloatTensor | None = None
    itm_score: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_feat: torch.FloatTensor | None = None
    text_feat: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    blip_vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    blip_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    blip_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EsamBlipGradCamOutput(ModelOutput):
    r"""
    Output of [`EsamBlipForImageTextMatching.compute_gradcam`].

    Args:
        gradcam (`torch.FloatTensor` of shape `(batch_size, text_length + 1, grid_size, grid_size)`): LAVIS's rows:
            [ENC] token, mean over the caption tokens, then tokens 1..L-1.
        gradcams (`torch.FloatTensor` of shape `(batch_size, grid_size * grid_size)`): the caption-mean row flattened,
            the heatmap PnP-VQA samples patches from.
        itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): ITM logits of the pairs (index 1 = match).
    """

    gradcam: torch.FloatTensor | None = None
    gradcams: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None


def _as_side(value: int | list[int] | tuple[int, ...], name: str) -> int:
    """BlipVisionConfig allows `(h, w)` sizes; the BLIP ViT and Grad-CAM only support square ones."""
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"`vision_config.{name}` must be square, got {value}.")


class EsamBlipImageTextModule(nn.Module):
    r"""
    BLIP image-text matching as LAVIS's `BlipITM`: `vision_model` (BLIP ViT), `text_encoder` (BERT with cross-attention
    in every layer, no token-type embeddings), `vision_proj`/`text_proj` (ITC) and `itm_head`. The parameter names are
    those of `transformers`' `BlipForImageTextRetrieval`.

    Text inputs are the tokenizer's ids with [CLS] first and padding on the right; for ITM the first token is replaced
    by `config.enc_token_id` here, as LAVIS does.

    Args:
        config ([`EsamBlipConfig`]): a config with the BLIP half (`config.has_blip`).
    """

    def __init__(self, config: EsamBlipConfig):
        super().__init__()
        if not config.has_blip:
            raise ValueError(
                "EsamBlipImageTextModule needs a config with the BLIP half (`vision_config`, `text_config`)."
            )
        if not config.text_config.is_decoder:
            raise ValueError(
                "`text_config.is_decoder` must be True: transformers' BlipTextModel only builds its cross-attention "
                "layers for decoder configs, and ITM cross-attends to the image."
            )
        self.config = config
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.vision_proj = nn.Linear(vision_width, config.image_text_hidden_size)
        self.text_proj = nn.Linear(text_width, config.image_text_hidden_size)
        self.itm_head = nn.Linear(text_width, 2)

    def get_input_embeddings(self) -> nn.Embedding:
        """The text encoder's word embeddings (what `resize_token_embeddings` resizes for [DEC]/[ENC])."""
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_encoder.set_input_embeddings(value)

    @property
    def grid_size(self) -> int:
        """Side `g` of the ViT patch grid (`image_size // patch_size`)."""
        vision = self.config.vision_config
        return _as_side(vision.image_size, "image_size") // _as_side(vision.patch_size, "patch_size")

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the text cross-attends to: one [CLS] plus `grid_size**2` patches."""
        return 1 + self.grid_size**2

    def encode_image(
        self, blip_pixel_values: Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPooling:
        r"""
        Run the BLIP ViT, with everything it can return.

        Args:
            blip_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`): normalised
                pixels.
            output_attentions (`bool`): also return the self-attention probabilities of every layer.
            output_hidden_states (`bool`): also return the embeddings and the output of every layer.

        Returns:
            [`BaseModelOutputWithPooling`]: `last_hidden_state` of shape `(batch_size, 1 + num_patches,
            vision_hidden_size)` after the final layer norm (LAVIS's `forward_features`); `pooler_output` of shape
            `(batch_size, image_text_hidden_size)`, the ITC projection `vision_proj` of its [CLS] row (not
            normalised; ITC compares the normalised ones); `hidden_states`, `num_hidden_layers + 1` tensors like
            `last_hidden_state` (before the final norm); `attentions`, one `(batch_size, num_heads, 1 + num_patches,
            1 + num_patches)` per layer.
        """
        if not is_tracing():
            vision = self.config.vision_config
            side = _as_side(vision.image_size, "image_size")
            check_image_tensor("blip_pixel_values", blip_pixel_values, (3, side, side), "use EsamBlipImageProcessor")
        outputs = self.vision_model(
            pixel_values=blip_pixel_values.to(self.vision_proj.weight.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.vision_proj(outputs.last_hidden_state[:, 0]),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        r"""
        Run the text encoder in text-only mode (no cross-attention), as LAVIS's `mode="text"`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): 1 for real tokens.
            output_attentions (`bool`): also return the self-attention probabilities of every layer.
            output_hidden_states (`bool`): also return the embeddings and the output of every layer.

        Returns:
            [`BaseModelOutputWithPooling`]: `last_hidden_state` of shape `(batch_size, text_length,
            text_hidden_size)`; `pooler_output` of shape `(batch_size, image_text_hidden_size)`, the ITC projection
            `text_proj` of the [CLS] row (not normalised); `hidden_states`, `num_hidden_layers + 1` tensors like
            `last_hidden_state`; `attentions`, one `(batch_size, num_heads, text_length, text_length)` per layer.
        """
        attention_mask = self._check_text(input_ids, attention_mask)
        outputs = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._position_ids(input_ids),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.text_proj(outputs.last_hidden_state[:, 0]),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def encode_multimodal(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        image_embeds: Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        r"""
        Text encoder with [ENC] first, cross-attending to the image (the ITM pass), with everything it can return.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids; the first
                token is replaced by `config.enc_token_id` here.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)` or `None`): 1 for real tokens.
            image_embeds (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, vision_hidden_size)`): one image
                per text.
            output_attentions (`bool`): also return the self- and cross-attention probabilities of every layer.
            output_hidden_states (`bool`): also return the embeddings and the output of every layer.

        Returns:
            [`BaseModelOutputWithPoolingAndCrossAttentions`]: `last_hidden_state` of shape `(batch_size, text_length,
            text_hidden_size)` (the ITM head reads its row 0); `pooler_output` `None`; `hidden_states`,
            `num_hidden_layers + 1` tensors like `last_hidden_state`; `attentions`, one `(batch_size, num_heads,
            text_length, text_length)` per layer; `cross_attentions`, one `(batch_size, num_heads, text_length,
            num_image_tokens)` per layer.
        """
        attention_mask = self._check_text(input_ids, attention_mask)
        self._check_pairs(input_ids, image_embeds)
        outputs = self.text_encoder(
            input_ids=self._encoder_input_ids(input_ids),
            attention_mask=attention_mask,
            position_ids=self._position_ids(input_ids),
            encoder_hidden_states=image_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

    def get_image_features(self, blip_pixel_values: Tensor) -> Tensor:
        r"""
        Run the BLIP ViT.

        Args:
            blip_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`): normalised
                pixels.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, 1 + num_patches, vision_hidden_size)`: last hidden state after
            the final layer norm (LAVIS's `forward_features`). [`encode_image`] returns more.
        """
        return self.encode_image(blip_pixel_values).last_hidden_state

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        r"""
        Run the text encoder in text-only mode (no cross-attention), as LAVIS's `mode="text"`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): 1 for real tokens.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`. [`encode_text`] returns more.
        """
        return self.encode_text(input_ids, attention_mask).last_hidden_state

    def get_text_projections(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        r"""
        Normalised ITC text features: `normalize(text_proj(text_features[:, 0]))`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): 1 for real tokens.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, image_text_hidden_size)`, unit norm.
        """
        text_embeds = self.get_text_features(input_ids, attention_mask)
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def get_image_projections(self, image_embeds: Tensor) -> Tensor:
        r"""
        Normalised ITC image features: `normalize(vision_proj(image_embeds[:, 0]))`.

        Args:
            image_embeds (`torch.FloatTensor` of shape `(num_images, 1 + num_patches, vision_hidden_size)`).

        Returns:
            `torch.FloatTensor` of shape `(num_images, image_text_hidden_size)`, unit norm.
        """
        self._check_image_embeds(image_embeds)
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def itc_similarity(self, input_ids: Tensor, attention_mask: Tensor | None, image_embeds: Tensor) -> Tensor:
        r"""
        ITC cosine similarity of every image with every text (no temperature), as LAVIS's `match_head="itc"`.

        Args:
            input_ids (`torch.LongTensor` of shape `(num_texts, text_length)`): [CLS]-first token ids.
            attention_mask (`torch.LongTensor` of shape `(num_texts, text_length)` or `None`): 1 for real tokens.
            image_embeds (`torch.FloatTensor` of shape `(num_images, 1 + num_patches, vision_hidden_size)`).

        Returns:
            `torch.FloatTensor` of shape `(num_images, num_texts)`.
        """
        return self.get_image_projections(image_embeds) @ self.get_text_projections(input_ids, attention_mask).t()

    def get_multimodal_features(self, input_ids: Tensor, attention_mask: Tensor | None, image_embeds: Tensor) -> Tensor:
        r"""
        Text encoder with [ENC] first, cross-attending to the image: the hidden states the ITM head reads.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids; the first
                token is replaced by `config.enc_token_id` here.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)` or `None`): 1 for real tokens.
            image_embeds (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, vision_hidden_size)`): one image
                per text.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`. [`encode_multimodal`] returns
            more.
        """
        return self.encode_multimodal(input_ids, attention_mask, image_embeds).last_hidden_state

    def itm_logits(self, input_ids: Tensor, attention_mask: Tensor | None, image_embeds: Tensor) -> Tensor:
        r"""
        ITM logits of image-text pairs: `itm_head(multimodal_features[:, 0])`, as LAVIS's `match_head="itm"`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)` or `None`): 1 for real tokens.
            image_embeds (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, vision_hidden_size)`): one image
                per text.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, 2)`; `softmax(...)[:, 1]` is the match probability.
        """
        return self.itm_head(self.get_multimodal_features(input_ids, attention_mask, image_embeds)[:, 0])

    def compute_gradcam(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        image_embeds: Tensor,
        block_num: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""
        Grad-CAM of each text over its image at the cross-attention of text layer `block_num`, with LAVIS's arithmetic
        and row layout (see [`gradcam_from_cross_attention`]).

        Only the gradient of the summed match logit with respect to that layer's attention probabilities is computed
        (`torch.autograd.grad`): nothing flows back into the ViT (`image_embeds` is detached) and no parameter `.grad`
        is written. Works under `torch.no_grad()`/`torch.inference_mode()`. The module's train/eval mode is kept: call
        it in eval mode, as LAVIS does, or dropout makes the maps random.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): [CLS]-first token ids, padded on the
                right; the first token is replaced by `config.enc_token_id` here.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)` or `None`): 1 for real tokens.
            image_embeds (`torch.FloatTensor` of shape `(batch_size, 1 + grid_size**2, vision_hidden_size)`): one
                image per text.
            block_num (`int`, *optional*): text layer, in `[0, num_hidden_layers - 1]`; defaults to
                `config.gradcam_block_num`.

        Returns:
            `tuple(torch.FloatTensor, torch.FloatTensor)`: the Grad-CAM of shape
            `(batch_size, text_length + 1, grid_size, grid_size)` and the ITM logits of shape `(batch_size, 2)`, both
            detached.
        """
        block_num = self._check_block_num(block_num)
        attention_mask = self._check_text(input_ids, attention_mask)
        self._check_pairs(input_ids, image_embeds)
        if image_embeds.shape[1] != self.num_image_tokens:
            raise ValueError(
                f"Grad-CAM needs {self.num_image_tokens} image tokens (1 + {self.grid_size}x{self.grid_size} patches "
                f"from the config), `image_embeds` has {image_embeds.shape[1]}."
            )
        encoder_input_ids = self._encoder_input_ids(input_ids)

        # Inference tensors cannot enter an autograd graph: leave inference mode and use ordinary copies of them.
        with torch.inference_mode(False), torch.enable_grad():
            encoder_input_ids, attention_mask, image_embeds = (
                t.clone() if t.is_inference() else t for t in (encoder_input_ids, attention_mask, image_embeds)
            )
            with torch.no_grad():
                text_embeds = self.text_encoder.embeddings(
                    input_ids=encoder_input_ids, position_ids=self._position_ids(encoder_input_ids)
                )
            # A leaf that requires grad puts the attention probabilities in the graph even when every parameter is
            # frozen; the embeddings themselves get no gradient since only the probabilities are asked for.
            text_embeds.requires_grad_(True)
            outputs = self.text_encoder(
                encoder_embeds=text_embeds,
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds.detach(),
                output_attentions=True,
            )
            attention_probs = outputs.cross_attentions[block_num]
            logits = self.itm_head(outputs.last_hidden_state[:, 0])
            (attention_grads,) = torch.autograd.grad(logits[:, 1].sum(), attention_probs)
        gradcam = gradcam_from_cross_attention(
            attention_probs.detach(), attention_grads, attention_mask, self.grid_size
        )
        return gradcam, logits.detach()

    def _check_block_num(self, block_num: int | None) -> int:
        num_layers = self.config.text_config.num_hidden_layers
        if block_num is None:
            block_num = self.config.gradcam_block_num
        if isinstance(block_num, bool) or not isinstance(block_num, int) or not 0 <= block_num < num_layers:
            raise ValueError(f"`block_num` must be an int in [0, {num_layers - 1}] (text layers), got {block_num!r}.")
        return block_num

    def _check_text(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(
                "`input_ids` must be a tensor of shape (batch_size, text_length), got "
                f"{getattr(input_ids, 'shape', type(input_ids))}."
            )
        check_token_ids(input_ids, self.config.text_config.vocab_size)
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` must hold at least one token per text, got shape {tuple(input_ids.shape)}.")
        max_length = self.config.text_config.max_position_embeddings
        if input_ids.shape[1] > max_length:
            raise ValueError(
                f"`input_ids` has {input_ids.shape[1]} tokens, more than `max_position_embeddings` ({max_length})."
            )
        if attention_mask is None:
            return torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        return attention_mask

    def _check_image_embeds(self, image_embeds: Tensor) -> None:
        shape = (self.num_image_tokens, self.config.vision_config.hidden_size)
        check_image_tensor("image_embeds", image_embeds, shape, "the BLIP ViT output, `get_image_features`")

    def _check_pairs(self, input_ids: Tensor, image_embeds: Tensor) -> None:
        self._check_image_embeds(image_embeds)
        if image_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"ITM scores image-text pairs: `image_embeds` has {image_embeds.shape[0]} images but `input_ids` has "
                f"{input_ids.shape[0]} texts."
            )

    def _encoder_input_ids(self, input_ids: Tensor) -> Tensor:
        enc_token_id = self.config.enc_token_id
        if enc_token_id is None:
            raise ValueError(
                "`config.enc_token_id` is None: ITM needs the id of the tokenizer's [ENC] token "
                "(`tokenizer.convert_tokens_to_ids('[ENC]')`)."
            )
        encoder_input_ids = input_ids.clone()
        encoder_input_ids[:, 0] = enc_token_id
        return encoder_input_ids

    @staticmethod
    def _position_ids(input_ids: Tensor) -> Tensor:
        # Explicit ids instead of the embeddings' non-persistent `position_ids` buffer, which loading can leave stale.
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)


__all__ = [
    "BLIP_CROSS_ATTENTION_RECORDED_OUTPUTS",
    "BLIP_TEXT_RECORDED_OUTPUTS",
    "BLIP_VISION_RECORDED_OUTPUTS",
    "EsamBlipGradCamOutput",
    "EsamBlipImageTextMatchingOutput",
    "EsamBlipImageTextModule",
]
