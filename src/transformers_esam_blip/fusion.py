"""
Fusion of BLIP ViT features into EfficientSAM: a registry of fusion classes keyed by `config.fusion_type`.

Every fusion has one interface, `fusion(sam_features, blip_image_embeds) -> sam_features`, and declares where it acts
(`location`):
- `"decoder"`: on the EfficientSAM image embeddings `[B, C, g, g]` on their way to the mask decoder, so cached
  `image_embeddings` stay valid (`concat`, `cross_attention`, `adapter`);
- `"encoder"`: on the EfficientSAM ViT hidden states `[B, g*g, W]` after block `config.fusion_layer` (`multilevel`),
  which needs `pixel_values`.

A new fusion is one class here (or in the user's own file) decorated with `@register_fusion("name")`; the modeling
code reads only `location` and calls the module.
"""

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

if TYPE_CHECKING:
    from .configuration_esam_blip import EsamBlipConfig

FUSION_LOCATIONS = ("encoder", "decoder")
FUSIONS: dict[str, type["EsamBlipFusion"]] = {}
NO_FUSION = "none"


def _blip_grid_side(blip_tokens: Tensor) -> int:
    """The side `g` of the patch grid of BLIP tokens `[B, 1 + g*g, D]`; a `ValueError` for any other shape."""
    num_patches = blip_tokens.shape[1] - 1 if blip_tokens.ndim == 3 else 0
    side = math.isqrt(max(num_patches, 0))
    if num_patches < 1 or side * side != num_patches:
        raise ValueError(
            "`blip_image_embeds` must have shape [batch, 1 + g*g, width] ([CLS] then a square patch grid), got "
            f"{tuple(blip_tokens.shape)}."
        )
    return side


def blip_tokens_to_grid(blip_tokens: Tensor, grid_size: int) -> Tensor:
    """
    Align BLIP patch tokens with the EfficientSAM grid. Both encoders see the whole image resized to a square (aspect
    ratio not kept), so the BLIP `g_b x g_b` patch grid is resized bilinearly (`align_corners=False`) to
    `grid_size x grid_size`; the BLIP [CLS] token is dropped.

    Args:
        blip_tokens: `[B, 1 + g_b * g_b, D]` (BLIP ViT output, or a per-token projection of it).
        grid_size: side `g_s` of the EfficientSAM grid.

    Returns:
        `[B, D, g_s, g_s]`.
    """
    side = _blip_grid_side(blip_tokens)
    grid = blip_tokens[:, 1:].transpose(1, 2).reshape(blip_tokens.shape[0], -1, side, side)
    if side == grid_size:
        return grid
    return F.interpolate(grid, size=(grid_size, grid_size), mode="bilinear", align_corners=False)


class EsamBlipZeroInitLinear(nn.Linear):
    """The last layer of a residual branch: `EsamBlipPreTrainedModel._init_weights` sets it to zero."""


class EsamBlipZeroInitConv2d(nn.Conv2d):
    """The last convolution of a residual branch: `EsamBlipPreTrainedModel._init_weights` sets it to zero."""


ZERO_INIT_LAYERS = (EsamBlipZeroInitLinear, EsamBlipZeroInitConv2d)


def register_fusion(name: str):
    """Class decorator: make a [`EsamBlipFusion`] subclass available as `config.fusion_type=name`."""

    def register(cls: type["EsamBlipFusion"]) -> type["EsamBlipFusion"]:
        if name == NO_FUSION or name in FUSIONS:
            raise ValueError(f"A fusion named {name!r} is already registered.")
        if cls.location not in FUSION_LOCATIONS:
            raise ValueError(f"`{cls.__name__}.location` must be one of {FUSION_LOCATIONS}, got {cls.location!r}.")
        FUSIONS[name] = cls
        return cls

    return register


def fusion_type_choices() -> tuple[str, ...]:
    """The values `config.fusion_type` accepts: `"none"` and every registered fusion."""
    return (NO_FUSION, *FUSIONS)


class EsamBlipFusion(nn.Module):
    """
    Base of the fusion modules. Each adds residual branches to the EfficientSAM features, ended by zero-initialised
    layers (`ZERO_INIT_LAYERS`), so a freshly added fusion is exactly the identity and training starts from the
    pretrained behaviour.

    Subclasses set `location` and implement `from_config` and `forward(sam_features, blip_image_embeds)`;
    `check_config` may reject settings the fusion cannot use.
    """

    location: ClassVar[str] = "decoder"

    @classmethod
    def from_config(cls, config: "EsamBlipConfig") -> "EsamBlipFusion":
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: "EsamBlipConfig") -> None:
        """Raise a `ValueError` naming the setting when `config` cannot build this fusion."""


@register_fusion("concat")
class EsamBlipConcatFusion(EsamBlipFusion):
    """
    `out = sam + conv_out(act(norm(conv_in(concat(sam, resize(blip))))))`: BLIP patch grid resized to the SAM grid,
    channels concatenated, 1x1 conv to `hidden_size`, GroupNorm(1), activation, 3x3 conv back to `channels`.
    """

    def __init__(self, channels: int, blip_hidden_size: int, hidden_size: int, hidden_act: str = "gelu") -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels + blip_hidden_size, hidden_size, kernel_size=1)
        self.norm = nn.GroupNorm(1, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.conv_out = EsamBlipZeroInitConv2d(hidden_size, channels, kernel_size=3, padding=1)

    @classmethod
    def from_config(cls, config: "EsamBlipConfig") -> "EsamBlipConcatFusion":
        return cls(
            config.sam_vision_config.output_channels, config.vision_config.hidden_size, config.fusion_hidden_size
        )

    def forward(self, image_embeddings: Tensor, blip_image_embeds: Tensor) -> Tensor:
        """`image_embeddings [B, C, g_s, g_s]`, `blip_image_embeds [B, 1 + g_b², D]` → fused `[B, C, g_s, g_s]`."""
        blip_grid = blip_tokens_to_grid(blip_image_embeds, image_embeddings.shape[-1]).to(image_embeddings.dtype)
        hidden = self.conv_in(torch.cat([image_embeddings, blip_grid], dim=1))
        return image_embeddings + self.conv_out(self.act(self.norm(hidden)))


@register_fusion("cross_attention")
class EsamBlipCrossAttentionFusion(EsamBlipFusion):
    """
    `out = sam + out_proj(attention(q = LN(sam tokens), k = v = LN(blip tokens)))`: every SAM grid cell attends to
    all BLIP tokens ([CLS] included), pre-norm, `num_heads` heads of width `hidden_size // num_heads`.
    """

    def __init__(self, channels: int, blip_hidden_size: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide `hidden_size` ({hidden_size}).")
        self.num_heads = num_heads
        self.layer_norm = nn.LayerNorm(channels)
        self.blip_layer_norm = nn.LayerNorm(blip_hidden_size)
        self.q_proj = nn.Linear(channels, hidden_size)
        self.k_proj = nn.Linear(blip_hidden_size, hidden_size)
        self.v_proj = nn.Linear(blip_hidden_size, hidden_size)
        self.out_proj = EsamBlipZeroInitLinear(hidden_size, channels)

    @classmethod
    def from_config(cls, config: "EsamBlipConfig") -> "EsamBlipCrossAttentionFusion":
        return cls(
            config.sam_vision_config.output_channels,
            config.vision_config.hidden_size,
            config.fusion_hidden_size,
            config.fusion_num_attention_heads,
        )

    @classmethod
    def check_config(cls, config: "EsamBlipConfig") -> None:
        if config.fusion_hidden_size % config.fusion_num_attention_heads:
            raise ValueError(
                f"`fusion_num_attention_heads` ({config.fusion_num_attention_heads}) must divide `fusion_hidden_size` "
                f"({config.fusion_hidden_size})."
            )

    def _split_heads(self, hidden_states: Tensor) -> Tensor:
        batch_size, seq_len, width = hidden_states.shape
        return hidden_states.reshape(batch_size, seq_len, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, image_embeddings: Tensor, blip_image_embeds: Tensor) -> Tensor:
        """`image_embeddings [B, C, g_s, g_s]`, `blip_image_embeds [B, N, D]` → fused `[B, C, g_s, g_s]`."""
        batch_size, channels, height, width = image_embeddings.shape
        tokens = image_embeddings.flatten(2).transpose(1, 2)
        blip_tokens = self.blip_layer_norm(blip_image_embeds.to(image_embeddings.dtype))
        query = self._split_heads(self.q_proj(self.layer_norm(tokens)))
        key = self._split_heads(self.k_proj(blip_tokens))
        value = self._split_heads(self.v_proj(blip_tokens))
        attended = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)
        update = self.out_proj(attended).transpose(1, 2).reshape(batch_size, channels, height, width)
        return image_embeddings + update


class EsamBlipAdapter(nn.Module):
    """Bottleneck adapter on the last axis: `up(act(down(x)))`, `up` zero-initialised."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, hidden_act: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(input_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.up = EsamBlipZeroInitLinear(hidden_size, output_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.up(self.act(self.down(hidden_states)))


@register_fusion("adapter")
class EsamBlipAdapterFusion(EsamBlipFusion):
    """
    `out = sam + sam_adapter(sam) + resize(blip_adapter(blip patches))`: a light bottleneck adapter on each stream
    (per grid cell / per token), the BLIP one mapping to the SAM channels, summed on the SAM grid.
    """

    def __init__(self, channels: int, blip_hidden_size: int, hidden_size: int, hidden_act: str = "gelu") -> None:
        super().__init__()
        self.sam_adapter = EsamBlipAdapter(channels, hidden_size, channels, hidden_act)
        self.blip_adapter = EsamBlipAdapter(blip_hidden_size, hidden_size, channels, hidden_act)

    @classmethod
    def from_config(cls, config: "EsamBlipConfig") -> "EsamBlipAdapterFusion":
        return cls(
            config.sam_vision_config.output_channels, config.vision_config.hidden_size, config.fusion_hidden_size
        )

    def forward(self, image_embeddings: Tensor, blip_image_embeds: Tensor) -> Tensor:
        """`image_embeddings [B, C, g_s, g_s]`, `blip_image_embeds [B, 1 + g_b², D]` → fused `[B, C, g_s, g_s]`."""
        sam_update = self.sam_adapter(image_embeddings.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # Adapting the tokens before resizing keeps the interpolation at C channels instead of D.
        blip_update = blip_tokens_to_grid(
            self.blip_adapter(blip_image_embeds.to(image_embeddings.dtype)), image_embeddings.shape[-1]
        )
        return image_embeddings + sam_update + blip_update


@register_fusion("multilevel")
class EsamBlipMultilevelFusion(EsamBlipFusion):
    """
    Two streams fused by addition inside the EfficientSAM ViT (after DIFNet): the BLIP patch tokens, layer-normed and
    projected to the ViT width, resized to the ViT grid, are added to the hidden states after block `fusion_layer`.
    The blocks after it and the neck see both streams, so it needs `pixel_values`, not cached embeddings.
    """

    location = "encoder"

    def __init__(self, vit_hidden_size: int, blip_hidden_size: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(blip_hidden_size)
        self.proj = EsamBlipZeroInitLinear(blip_hidden_size, vit_hidden_size)

    @classmethod
    def from_config(cls, config: "EsamBlipConfig") -> "EsamBlipMultilevelFusion":
        return cls(config.sam_vision_config.hidden_size, config.vision_config.hidden_size)

    def forward(self, hidden_states: Tensor, blip_image_embeds: Tensor) -> Tensor:
        """ViT `hidden_states [B, g_s * g_s, W]` (row-major grid), `blip_image_embeds [B, 1 + g_b², D]` → fused."""
        projected = self.proj(self.layer_norm(blip_image_embeds))
        grid_size = math.isqrt(hidden_states.shape[1])
        return hidden_states + blip_tokens_to_grid(projected, grid_size).flatten(2).transpose(1, 2)


class EsamBlipItmFusion(nn.Module):
    """
    EfficientSAM features into image-text matching (`config.itm_fusion`): the EfficientSAM image embeddings are
    average-pooled to the BLIP patch grid, layer-normalised and projected to the BLIP width by a zero-initialised
    linear layer, then added to BLIP's patch tokens; the [CLS] token is left as it is. A fresh module is the identity,
    so ITM starts from BLIP's own tokens. EfficientSAM's ViT, trained by the masks, encodes shape well where a small
    BLIP ViT trained by ITM alone learns mostly colour (README); the sum gives the ITM cross-attention both.
    """

    def __init__(self, sam_channels: int, blip_width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(sam_channels)
        self.proj = EsamBlipZeroInitLinear(sam_channels, blip_width)

    def forward(self, blip_image_embeds: Tensor, image_embeddings: Tensor) -> Tensor:
        """
        Args:
            blip_image_embeds: `[B, 1 + g_b * g_b, D]` BLIP ViT output.
            image_embeddings: `[B, C, g_s, g_s]` EfficientSAM image embeddings of the same images.

        Returns:
            `[B, 1 + g_b * g_b, D]`, the tokens the ITM cross-attention reads.
        """
        side = _blip_grid_side(blip_image_embeds)
        channels = self.norm.normalized_shape[0]
        if (
            image_embeddings.ndim != 4
            or image_embeddings.shape[0] != blip_image_embeds.shape[0]
            or image_embeddings.shape[1] != channels
        ):
            raise ValueError(
                f"`image_embeddings` must be [batch, {channels}, g, g] with the batch of `blip_image_embeds` "
                f"({blip_image_embeds.shape[0]}), got {tuple(image_embeddings.shape)}."
            )
        pooled = F.adaptive_avg_pool2d(image_embeddings, (side, side)).flatten(2).transpose(1, 2)
        patches = blip_image_embeds[:, 1:] + self.proj(self.norm(pooled)).to(blip_image_embeds.dtype)
        return torch.cat([blip_image_embeds[:, :1], patches], dim=1)


def build_itm_fusion(config: "EsamBlipConfig") -> EsamBlipItmFusion | None:
    """The module of `config.itm_fusion`, or `None` (no parameters, no keys)."""
    if not config.itm_fusion:
        return None
    return EsamBlipItmFusion(config.sam_vision_config.output_channels, config.vision_config.hidden_size)


def fusion_class(fusion_type: str) -> type[EsamBlipFusion] | None:
    """The registered class of `fusion_type`, `None` for `"none"`; a `ValueError` listing the choices otherwise."""
    if fusion_type == NO_FUSION:
        return None
    if fusion_type not in FUSIONS:
        raise ValueError(f"`fusion_type` must be one of {fusion_type_choices()}, got {fusion_type!r}.")
    return FUSIONS[fusion_type]


def build_fusion(config: "EsamBlipConfig") -> EsamBlipFusion | None:
    """The fusion module `config.fusion_type` asks for, or `None` for `"none"` (no parameters, no keys)."""
    cls = fusion_class(config.fusion_type)
    return None if cls is None else cls.from_config(config)


__all__ = [
    "FUSIONS",
    "FUSION_LOCATIONS",
    "NO_FUSION",
    "ZERO_INIT_LAYERS",
    "EsamBlipAdapter",
    "EsamBlipAdapterFusion",
    "EsamBlipConcatFusion",
    "EsamBlipCrossAttentionFusion",
    "EsamBlipFusion",
    "EsamBlipItmFusion",
    "EsamBlipMultilevelFusion",
    "EsamBlipZeroInitConv2d",
    "EsamBlipZeroInitLinear",
    "blip_tokens_to_grid",
    "build_fusion",
    "build_itm_fusion",
    "fusion_class",
    "fusion_type_choices",
    "register_fusion",
]
