"""EfficientSAM building blocks: plain-ViT image encoder with conv neck, point/box prompt encoder, mask decoder."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

from .configuration_esam_blip import (
    EfficientSamMaskDecoderConfig,
    EfficientSamPromptEncoderConfig,
    EfficientSamVisionConfig,
    EsamBlipConfig,
)
from .output_recording import OutputRecorder, recording_attentions
from .prompts import PromptLabel

logger = logging.get_logger(__name__)


def eager_attention_forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention over `[B, heads, N, d]` tensors: `(output [B, heads, N, d], probs [B, heads, N, M])`."""
    scores = (query @ key.transpose(-2, -1)) * (query.shape[-1] ** -0.5)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    return probs @ value, probs


def sdpa_attention_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, None]:
    """`F.scaled_dot_product_attention`, which does not expose the probabilities: `(output, None)`."""
    return F.scaled_dot_product_attention(query, key, value), None


EFFICIENT_SAM_ATTENTION_FUNCTIONS = {"eager": eager_attention_forward, "sdpa": sdpa_attention_forward}


def _attention_function(config: PreTrainedConfig, output_attentions: bool) -> Callable:
    # Recording needs the probabilities, so it takes the eager path whatever the config says, as transformers' SDPA
    # classes used to fall back to eager for `output_attentions=True`.
    if output_attentions:
        return eager_attention_forward
    return EFFICIENT_SAM_ATTENTION_FUNCTIONS.get(config._attn_implementation, sdpa_attention_forward)


class EfficientSamLayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a `[B, C, H, W]` map (the neck's norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normalized = F.layer_norm(hidden_states.permute(0, 2, 3, 1), (hidden_states.shape[1],), eps=self.eps)
        normalized = normalized.permute(0, 3, 1, 2)
        return self.weight[:, None, None] * normalized + self.bias[:, None, None]


class EfficientSamVisionAttention(nn.Module):
    """Global multi-head self-attention with a fused qkv projection."""

    def __init__(self, config: EfficientSamVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, N, C]` → `([B, N, C], probs [B, heads, N, N] or None)`; the probabilities with `output_attentions`."""
        batch_size, seq_len, width = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended, probs = _attention_function(self.config, output_attentions)(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch_size, seq_len, width)), probs


class EfficientSamVisionMlp(nn.Module):
    def __init__(self, config: EfficientSamVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, int(config.hidden_size * config.mlp_ratio))
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(int(config.hidden_size * config.mlp_ratio), config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class EfficientSamVisionLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block; checkpointed when the model's gradient checkpointing is on."""

    def __init__(self, config: EfficientSamVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = EfficientSamVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = EfficientSamVisionMlp(config)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        attended, _ = self.attn(self.layer_norm1(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class EfficientSamVisionNeck(nn.Module):
    """1x1 conv → channel LN → 3x3 conv → channel LN, no biases on the convs."""

    def __init__(self, config: EfficientSamVisionConfig) -> None:
        super().__init__()
        first, second = config.neck_hidden_sizes
        self.conv1 = nn.Conv2d(config.hidden_size, first, kernel_size=1, bias=False)
        self.layer_norm1 = EfficientSamLayerNorm2d(first, eps=config.layer_norm_eps)
        self.conv2 = nn.Conv2d(first, second, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = EfficientSamLayerNorm2d(second, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm1(self.conv1(hidden_states))
        return self.layer_norm2(self.conv2(hidden_states))


class EfficientSamVisionEncoder(nn.Module):
    """ViT encoder: `pixel_values [B, 3, S, S]` → `image_embeddings [B, C_neck, S/p, S/p]`."""

    def __init__(self, config: EfficientSamVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        pretrain_grid = config.pretrain_image_size // config.patch_size
        # Stored at the pre-training grid with a class-token slot the encoder never uses, as the original does.
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, config.hidden_size))
        self.layers = nn.ModuleList([EfficientSamVisionLayer(config) for _ in range(config.num_hidden_layers)])
        self.neck = EfficientSamVisionNeck(config)

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding, the encoder's input layer (what `SamVisionEncoder.get_input_embeddings` returns)."""
        return self.patch_embed

    def resized_position_embeddings(self, grid: int) -> torch.Tensor:
        """Position embedding resized bicubically to `grid x grid`, as `[1, grid, grid, hidden_size]`."""
        stored = self.pos_embed[:, 1:]
        size = math.isqrt(stored.shape[1])
        table = stored.reshape(1, size, size, -1)
        if size == grid:
            return table
        table = F.interpolate(table.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        fusion: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fusion_layer: int = 0,
    ) -> torch.Tensor:
        """
        Args:
            pixel_values: `[B, 3, S, S]` normalised images.
            fusion: optional map of the hidden states `[B, g*g, hidden_size]` after block `fusion_layer` (an encoder
                fusion of EsamBlip, bound to its BLIP features); `None` runs the plain EfficientSAM encoder.
            fusion_layer: block index in `[0, num_hidden_layers - 1]`.

        Returns:
            `image_embeddings [B, C_neck, g, g]`.

        Under a recording forward (`output_recording.record_outputs`) hooks collect the input and the output of
        every block, `[B, g*g, hidden_size]` (the output of block `fusion_layer` before the fusion), and with
        attentions each block's probabilities `[B, heads, g*g, g*g]`.
        """
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.config.num_channels, size, size):
            raise ValueError(
                f"`pixel_values` must have shape [batch, {self.config.num_channels}, {size}, {size}] "
                f"(use EsamBlipImageProcessor), got {tuple(pixel_values.shape)}."
            )
        hidden_states = self.patch_embed(pixel_values).permute(0, 2, 3, 1)
        grid = hidden_states.shape[1]
        hidden_states = hidden_states + self.resized_position_embeddings(grid)
        hidden_states = hidden_states.reshape(hidden_states.shape[0], grid * grid, -1)
        # Decided once out here so that a checkpointed block recomputes with the same attention path.
        output_attentions = recording_attentions()
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, output_attentions=output_attentions)
            if fusion is not None and index == fusion_layer:
                hidden_states = fusion(hidden_states)
        hidden_states = hidden_states.reshape(hidden_states.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
        return self.neck(hidden_states)


class EfficientSamPositionalEmbedding(nn.Module):
    """Random-Fourier positional encoding of coordinates normalised to [0, 1]."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_embedding", torch.randn(2, num_pos_feats))

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        """`coordinates [..., 2]` (x, y) in [0, 1] → `[..., 2 * num_pos_feats]`."""
        projected = (2 * coordinates - 1).to(self.positional_embedding.dtype) @ self.positional_embedding
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def dense(self, grid: int) -> torch.Tensor:
        """Encoding of every cell centre of a `grid x grid` map, as `[1, C, grid, grid]`."""
        centres = (torch.arange(grid, device=self.positional_embedding.device, dtype=torch.float32) + 0.5) / grid
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)


class EfficientSamPromptEncoder(nn.Module):
    """Embeds points and box corners: Fourier features of the position plus a learned embedding per label."""

    def __init__(self, config: EfficientSamPromptEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.shared_embedding = EfficientSamPositionalEmbedding(config.hidden_size // 2)
        self.invalid_point_embed = nn.Embedding(1, config.hidden_size)
        self.point_embed = nn.Embedding(1, config.hidden_size)
        self.box_top_left_embed = nn.Embedding(1, config.hidden_size)
        self.box_bottom_right_embed = nn.Embedding(1, config.hidden_size)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, `[1, C, g, g]`."""
        return self.shared_embedding.dense(self.config.image_embedding_size)

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            points: `[N, P, 2]` (x, y) in the encoder frame (`image_size` square), padding at (-1, -1).
            labels: `[N, P]` in {-1, 0, 1, 2, 3}.

        Returns:
            `[N, P, hidden_size]` sparse prompt embeddings.
        """
        # +0.5 moves to the pixel centre; padded (-1, -1) points are encoded too, as the original does.
        embeddings = self.shared_embedding((points + 0.5) / self.config.image_size)
        labels = labels[..., None]
        embeddings = embeddings + self.invalid_point_embed.weight * (labels == PromptLabel.PADDING)
        embeddings = embeddings + self.point_embed.weight * (labels == PromptLabel.FOREGROUND)
        embeddings = embeddings + self.box_top_left_embed.weight * (labels == PromptLabel.BOX_TOP_LEFT)
        return embeddings + self.box_bottom_right_embed.weight * (labels == PromptLabel.BOX_BOTTOM_RIGHT)


class EfficientSamFeedForward(nn.Module):
    """`num_layers` x (Linear → act) at `hidden_dim`, then a Linear to `output_dim` (the original's MLPBlock)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, hidden_act: str) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(num_layers))
        self.act = ACT2FN[hidden_act]
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = self.act(layer(hidden_states))
        return self.proj_out(hidden_states)


class EfficientSamTwoWayAttention(nn.Module):
    """Attention whose q/k/v are projected to `hidden_size // downsample_rate` before splitting into heads."""

    def __init__(self, config: EfficientSamMaskDecoderConfig, downsample_rate: int = 1) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        internal_dim = config.hidden_size // downsample_rate
        self.q_proj = nn.Linear(config.hidden_size, internal_dim)
        self.k_proj = nn.Linear(config.hidden_size, internal_dim)
        self.v_proj = nn.Linear(config.hidden_size, internal_dim)
        self.out_proj = nn.Linear(internal_dim, config.hidden_size)

    def _split_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, width = hidden_states.shape
        return hidden_states.reshape(batch_size, seq_len, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        `query [N, Tq, C]`, `key`/`value [N, Tk, C]` → `([N, Tq, C], probs [N, heads, Tq, Tk] or None)`; the
        probabilities with `output_attentions`.
        """
        query = self._split_heads(self.q_proj(query))
        key = self._split_heads(self.k_proj(key))
        value = self._split_heads(self.v_proj(value))
        attended, probs = _attention_function(self.config, output_attentions)(query, key, value)
        batch_size, _, seq_len, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch_size, seq_len, -1)), probs


class EfficientSamTwoWayAttentionBlock(GradientCheckpointingLayer):
    """
    Token self-attention, token→image cross-attention, token MLP, image→token cross-attention; checkpointed when the
    model's gradient checkpointing is on.

    Differs from `transformers`' SAM in the self-attention step: the first block keeps its residual, and later
    blocks add the query positional encoding to the queries themselves (so it stays in the residual stream).
    """

    def __init__(self, config: EfficientSamMaskDecoderConfig, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = EfficientSamTwoWayAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn_token_to_image = EfficientSamTwoWayAttention(config, config.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = EfficientSamFeedForward(
            config.hidden_size, config.mlp_dim, config.hidden_size, num_layers=1, hidden_act=config.hidden_act
        )
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm4 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn_image_to_token = EfficientSamTwoWayAttention(config, config.attention_downsample_rate)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        attn_out, _ = self.self_attn(queries, queries, queries, output_attentions=output_attentions)
        queries = self.layer_norm1(queries + attn_out)

        keys_with_pe = keys + key_pe
        attn_out, _ = self.cross_attn_token_to_image(
            queries + query_pe, keys_with_pe, keys, output_attentions=output_attentions
        )
        queries = self.layer_norm2(queries + attn_out)
        queries = self.layer_norm3(queries + self.mlp(queries))

        attn_out, _ = self.cross_attn_image_to_token(
            keys_with_pe, queries + query_pe, queries, output_attentions=output_attentions
        )
        keys = self.layer_norm4(keys + attn_out)
        return queries, keys


class EfficientSamTwoWayTransformer(nn.Module):
    def __init__(self, config: EfficientSamMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EfficientSamTwoWayAttentionBlock(config, skip_first_layer_pe=i == 0) for i in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = EfficientSamTwoWayAttention(config, config.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, point_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `image_embeddings [N, C, h, w]`, `image_pe [1, C, h, w]`, `point_embeddings [N, T, C]` → (tokens, image).

        Under a recording forward with attentions, hooks collect the probabilities in call order: per block the
        token self-attention `[N, heads, T, T]`, token→image `[N, heads, T, h*w]` and image→token
        `[N, heads, h*w, T]`, then the final token→image attention.
        """
        keys = image_embeddings.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embeddings
        # Decided once out here so that a checkpointed block recomputes with the same attention path; the tensors
        # are positional so that reentrant checkpointing propagates their gradients.
        output_attentions = recording_attentions()
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embeddings, key_pe, output_attentions=output_attentions)
        attn_out, _ = self.final_attn_token_to_image(
            queries + point_embeddings, keys + key_pe, keys, output_attentions=output_attentions
        )
        return self.layer_norm_final_attn(queries + attn_out), keys


class EfficientSamUpscalingLayer(nn.Module):
    """Transposed conv x2, then GroupNorm(1, C) except on the last layer, then the activation."""

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool, hidden_act: str) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = nn.GroupNorm(1, out_channels) if use_norm else nn.Identity()
        self.act = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(hidden_states)))


class EfficientSamMaskDecoder(nn.Module):
    """Tokens `[IoU, mask_0..mask_M, prompts]` → two-way transformer → upscaled masks and IoU predictions."""

    def __init__(self, config: EfficientSamMaskDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.num_mask_tokens = config.num_multimask_outputs + 1 if config.num_multimask_outputs > 1 else 1
        self.transformer = EfficientSamTwoWayTransformer(config)
        self.iou_token = nn.Embedding(1, config.hidden_size)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, config.hidden_size)
        dims = [config.hidden_size] + list(config.upscaling_hidden_sizes)
        self.upscaling_layers = nn.ModuleList(
            EfficientSamUpscalingLayer(dims[i], dims[i + 1], use_norm=i < len(dims) - 2, hidden_act=config.hidden_act)
            for i in range(len(dims) - 1)
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            EfficientSamFeedForward(config.hidden_size, config.hidden_size, dims[-1], 2, config.hidden_act)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = EfficientSamFeedForward(
            config.hidden_size,
            config.iou_head_hidden_dim,
            self.num_mask_tokens,
            config.iou_head_depth - 1,
            config.hidden_act,
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: `[B, C, h, w]`, shared by every query of an image.
            image_pe: `[1, C, h, w]` dense positional encoding.
            sparse_prompt_embeddings: `[B, Q, P, C]`.
            multimask_output: mask tokens 1..M if True, token 0 otherwise.

        Returns:
            `masks [B, Q, M, 4h, 4w]` logits (M = 3 or 1) and `iou_pred [B, Q, M]` (not sorted, no sigmoid).
        """
        batch_size, num_queries, num_points, width = sparse_prompt_embeddings.shape
        _, channels, height, grid_width = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [
                output_tokens.expand(batch_size * num_queries, -1, -1),
                sparse_prompt_embeddings.reshape(batch_size * num_queries, num_points, width),
            ],
            dim=1,
        )
        tiled = image_embeddings.repeat_interleave(num_queries, dim=0)
        hidden_tokens, image_tokens = self.transformer(tiled, image_pe, tokens)
        iou_token_out = hidden_tokens[:, 0]
        mask_tokens_out = hidden_tokens[:, 1 : 1 + self.num_mask_tokens]

        upscaled = image_tokens.transpose(1, 2).reshape(-1, channels, height, grid_width)
        for layer in self.upscaling_layers:
            upscaled = layer(upscaled)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        n, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(n, c, h * w)).reshape(n, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)

        selected = slice(1, None) if multimask_output and self.num_mask_tokens > 1 else slice(0, 1)
        masks, iou_pred = masks[:, selected], iou_pred[:, selected]
        return (
            masks.reshape(batch_size, num_queries, -1, h, w),
            iou_pred.reshape(batch_size, num_queries, -1),
        )


class EfficientSamModule(nn.Module):
    """The EfficientSAM half of [`EsamBlipModel`]: image encoder, prompt encoder and mask decoder."""

    def __init__(self, config: EsamBlipConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = EfficientSamVisionEncoder(config.sam_vision_config)
        self.prompt_encoder = EfficientSamPromptEncoder(config.prompt_encoder_config)
        self.mask_decoder = EfficientSamMaskDecoder(config.mask_decoder_config)

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values [B, 3, S, S]` (normalised) → `image_embeddings [B, C, S/p, S/p]`."""
        return self.vision_encoder(pixel_values)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: `[B, C, g, g]`.
            points: `[B, Q, P, 2]` in the encoder frame, already merged/padded by `assemble_prompts`.
            labels: `[B, Q, P]`.

        Returns:
            `pred_masks [B, Q, M, 4g, 4g]` logits and `iou_scores [B, Q, M]`.
        """
        sparse = self.embed_prompts(points, labels).to(image_embeddings.dtype)
        return self.decode(image_embeddings, sparse, multimask_output)

    def embed_prompts(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`points [B, Q, P, 2]` and `labels [B, Q, P]` (from `assemble_prompts`) → sparse embeddings `[B, Q, P, C]`."""
        batch_size, num_queries, num_points, _ = points.shape
        sparse = self.prompt_encoder(
            points.reshape(batch_size * num_queries, num_points, 2), labels.reshape(batch_size * num_queries, -1)
        )
        return sparse.reshape(batch_size, num_queries, num_points, -1)

    def decode(
        self, image_embeddings: torch.Tensor, sparse_prompt_embeddings: torch.Tensor, multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Mask decoder on any sparse prompt embeddings (points, learned text tokens, or both).

        Args:
            image_embeddings: `[B, C, g, g]`.
            sparse_prompt_embeddings: `[B, Q, P, C]` in the dtype of `image_embeddings`.

        Returns:
            `pred_masks [B, Q, M, 4g, 4g]` logits and `iou_scores [B, Q, M]`.
        """
        image_pe = self.prompt_encoder.get_dense_pe().to(image_embeddings.dtype)
        return self.mask_decoder(
            image_embeddings, image_pe, sparse_prompt_embeddings, multimask_output=multimask_output
        )


# Entries of `_can_record_outputs` (output field → recorded module) for the models holding an `EfficientSamModule`.
EFFICIENT_SAM_VISION_RECORDED_OUTPUTS = {
    "vision_hidden_states": OutputRecorder(EfficientSamVisionLayer, index=0),
    "vision_attentions": OutputRecorder(EfficientSamVisionAttention, index=1),
}
EFFICIENT_SAM_MASK_DECODER_RECORDED_OUTPUTS = {
    "mask_decoder_attentions": OutputRecorder(EfficientSamTwoWayAttention, index=1),
}


__all__ = [
    "EFFICIENT_SAM_MASK_DECODER_RECORDED_OUTPUTS",
    "EFFICIENT_SAM_VISION_RECORDED_OUTPUTS",
    "EfficientSamMaskDecoder",
    "EfficientSamModule",
    "EfficientSamPromptEncoder",
    "EfficientSamVisionEncoder",
]
