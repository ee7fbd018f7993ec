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
from .prompts import PromptLabel, is_tracing

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
        self._dense_cache: tuple[torch.Tensor, tuple, torch.Tensor] | None = None

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        """`coordinates [..., 2]` (x, y) in [0, 1] → `[..., 2 * num_pos_feats]`."""
        projected = (2 * coordinates - 1).to(self.positional_embedding.dtype) @ self.positional_embedding
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def _compute_dense(self, grid: int) -> torch.Tensor:
        centres = (torch.arange(grid, device=self.positional_embedding.device, dtype=torch.float32) + 0.5) / grid
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    def dense(self, grid: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """
        Encoding of every cell centre of a `grid x grid` map, as `[1, C, grid, grid]` (cast to `dtype` if given).

        It depends only on the random-Fourier buffer, so it is computed once and cached, keyed on the buffer object
        and its version counter (and on `grid` and `dtype`): `from_pretrained`, `load_state_dict`, in-place writes and
        `.to()` all invalidate it. Never cached while tracing or exporting (the graph computes it), nor for a buffer
        created in inference mode (it keeps no version counter). The cached tensor is an ordinary tensor even when
        made under `torch.inference_mode`, so it also serves later autograd calls (it needs no gradient).
        """
        buffer = self.positional_embedding
        if is_tracing() or buffer.is_inference():
            dense = self._compute_dense(grid)
            return dense if dtype is None else dense.to(dtype)
        key = (grid, dtype, buffer._version)  # the version is bumped by every in-place write (`load_state_dict`)
        cached = self._dense_cache
        if cached is not None and cached[0] is buffer and cached[1] == key:
            return cached[2]
        with torch.inference_mode(False), torch.no_grad():
            dense = self._compute_dense(grid)
            dense = dense if dtype is None else dense.to(dtype)
        self._dense_cache = (buffer, key, dense)
        return dense


# Attribute marking the mask-prompt layers that `EsamBlipPreTrainedModel._init_weights` initialises to zero.
MASK_PROMPT_ZERO_INIT = "_esam_blip_zero_init"


class EfficientSamMaskEmbedding(nn.Module):
    """
    SAM's mask encoder: mask logits `[N, 1, 4g, 4g]` → dense prompt embeddings `[N, C, g, g]` through two 2x2
    stride-2 convolutions (`mask_input_channels / 4`, then `mask_input_channels` channels), each followed by a channel
    layer norm and the activation, then a 1x1 convolution to the embedding width.
    """

    def __init__(self, config: EfficientSamPromptEncoderConfig) -> None:
        super().__init__()
        channels = config.mask_input_channels
        self.conv1 = nn.Conv2d(1, channels // 4, kernel_size=2, stride=2)
        self.layer_norm1 = EfficientSamLayerNorm2d(channels // 4)
        self.conv2 = nn.Conv2d(channels // 4, channels, kernel_size=2, stride=2)
        self.layer_norm2 = EfficientSamLayerNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, config.hidden_size, kernel_size=1)
        setattr(self.conv3, MASK_PROMPT_ZERO_INIT, True)
        self.act = nn.GELU()

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(self.layer_norm1(self.conv1(masks)))
        hidden_states = self.act(self.layer_norm2(self.conv2(hidden_states)))
        return self.conv3(hidden_states)


class EfficientSamPromptEncoder(nn.Module):
    """
    Embeds points and box corners (Fourier features of the position plus a learned embedding per label) and, with
    `config.mask_prompts`, dense mask prompts (SAM's mask encoder, or a learned "no mask" embedding).
    """

    def __init__(self, config: EfficientSamPromptEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.shared_embedding = EfficientSamPositionalEmbedding(config.hidden_size // 2)
        self.invalid_point_embed = nn.Embedding(1, config.hidden_size)
        self.point_embed = nn.Embedding(1, config.hidden_size)
        self.box_top_left_embed = nn.Embedding(1, config.hidden_size)
        self.box_bottom_right_embed = nn.Embedding(1, config.hidden_size)
        if config.mask_prompts:
            self.mask_embed = EfficientSamMaskEmbedding(config)
            self.no_mask_embed = nn.Embedding(1, config.hidden_size)
            setattr(self.no_mask_embed, MASK_PROMPT_ZERO_INIT, True)

    def embed_masks(self, input_masks: torch.Tensor | None) -> torch.Tensor | None:
        """
        Dense prompt embeddings, added to the image embedding in the decoder:
        - without a mask encoder (the original checkpoints): `None` (`input_masks` must be `None`);
        - no masks: the learned "no mask" embedding, `[1, C, 1, 1]`, the same for every query;
        - `input_masks [B, Q, 4g, 4g]` logits: `[B, Q, C, g, g]`, one map per query.
        """
        if not self.config.mask_prompts:
            return None
        if input_masks is None:
            return self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = self.mask_embed(input_masks.flatten(0, 1)[:, None].to(self.no_mask_embed.weight.dtype))
        return dense.unflatten(0, input_masks.shape[:2])

    def get_dense_pe(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, `[1, C, g, g]` (cast to `dtype`); cached, see `dense`."""
        return self.shared_embedding.dense(self.config.image_embedding_size, dtype)

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
    """
    Attention whose q/k/v are projected to `hidden_size // downsample_rate` before splitting into heads.

    `forward` is the plain computation (one query set per key set). The decoder's fast path uses the other methods,
    which compute the same attention with the work shared or reordered:

    - `attend_shared_keys`: tokens of all queries of an image → that image (keys and values projected once per image,
      the queries of all prompts folded into one sequence);
    - `attend_keys_per_query`: tokens → their own image tokens, with the key and value projections absorbed into the
      few token queries (`heads * T` rows) instead of projecting all `h*w` image tokens;
    - `attend_from_image`: image tokens → tokens, with the output projection absorbed into the token values, and the
      query projection either shared per image or absorbed into the token keys.
    """

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

    # Fast paths of the mask decoder -----------------------------------------------------------------------------

    def _head_weights(self, projection: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """A q/k/v projection as `(weight [heads, d, C], bias [heads, d])`."""
        return (
            projection.weight.view(self.num_heads, -1, projection.in_features),
            projection.bias.view(self.num_heads, -1),
        )

    def _scaled_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """`[..., T, C']` → `[..., T, heads, d]` times the softmax scale `d ** -0.5`."""
        head_dim = projected.shape[-1] // self.num_heads
        return projected.unflatten(-1, (self.num_heads, head_dim)) * head_dim**-0.5

    def _values_through_output(self, value: torch.Tensor) -> torch.Tensor:
        """
        Token values `[n, T, C]` → per head, the projected values already multiplied by the output projection,
        `[n, heads * T, C]` (row `h * T + t`), with the output bias on the rows of head 0: attention probabilities
        `[., heads * T]` (each head's row summing to one) times this is the attention output, bias included.
        """
        projected = self.v_proj(value)
        heads = projected.unflatten(-1, (self.num_heads, -1))  # [n, T, heads, d]
        out_weight = self.out_proj.weight.view(self.out_proj.out_features, self.num_heads, -1)  # [C, heads, d]
        through = torch.einsum("nthd,chd->nhtc", heads, out_weight)
        bias = F.pad(self.out_proj.bias[None, None], (0, 0, 0, self.num_heads - 1))  # bias on head 0 only
        return (through + bias[:, :, None]).flatten(1, 2)

    def attend_shared_keys(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """
        `query [B, Q, T, C]` (the tokens of Q prompts) against one key/value set per image `[B, N, C]` →
        `[B, Q, T, C]`. Keys and values are projected once per image and the `Q * T` token queries of an image attend
        as one sequence (rows of attention are independent), so nothing is tiled per query.
        """
        batch_size, num_queries, num_tokens, _ = query.shape
        projected = self.q_proj(query).flatten(1, 2)
        attended, _ = _attention_function(self.config, False)(
            self._split_heads(projected), self._split_heads(self.k_proj(key)), self._split_heads(self.v_proj(value))
        )
        attended = attended.transpose(1, 2).flatten(2).unflatten(1, (num_queries, num_tokens))
        return self.out_proj(attended)

    def attend_keys_per_query(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """
        `query [n, T, C]` against its own `key`/`value [n, N, C]` (N >> T) → `[n, T, C]`, without projecting the N
        keys and values: the key projection is folded into the queries (`q W_k` per head, `heads * T` rows of width
        C), and the value projection is applied after the probabilities have averaged the raw values.
        """
        scaled = self._scaled_heads(self.q_proj(query))  # [n, T, heads, d]
        key_weight, key_bias = self._head_weights(self.k_proj)
        folded = torch.einsum("nthd,hdc->nhtc", scaled, key_weight).flatten(1, 2)  # [n, heads*T, C]
        folded_bias = torch.einsum("nthd,hd->nht", scaled, key_bias).flatten(1)[..., None]
        scores = torch.baddbmm(folded_bias, folded, key.transpose(1, 2))  # [n, heads*T, N]
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
        averaged = torch.bmm(probs, value).unflatten(1, (self.num_heads, -1))  # [n, heads, T, C]
        value_weight, value_bias = self._head_weights(self.v_proj)
        attended = torch.einsum("nhtc,hdc->nthd", averaged, value_weight) + value_bias
        return self.out_proj(attended.flatten(2))

    def attend_from_image(
        self, image: torch.Tensor, key: torch.Tensor, value: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """
        Image tokens attend to the prompt tokens, plus the residual: `residual + attention(image, key, value)`.

        Args:
            image: the image-side queries, `[B, N, C]` shared by the Q prompts of an image (their projection is
                computed once) or `[B, Q, N, C]` per prompt (the projection is then folded into the token keys:
                `heads * T` columns instead of C').
            key, value: `[B, Q, T, C]` tokens.
            residual: `[B, N, C]` or `[B, Q, N, C]`.

        Returns:
            `[B * Q, N, C]`. The output projection is folded into the token values (`heads * T` rows instead of C').
        """
        batch_size, num_queries, num_tokens, _ = key.shape
        scaled_keys = self._scaled_heads(self.k_proj(key))  # [B, Q, T, heads, d]
        if image.ndim == 3:
            projected = self.q_proj(image).unflatten(-1, (self.num_heads, -1))  # [B, N, heads, d]
            scores = torch.einsum("bqthd,bnhd->bqhtn", scaled_keys, projected)
        else:
            query_weight, query_bias = self._head_weights(self.q_proj)
            folded = torch.einsum("bqthd,hdc->bqhtc", scaled_keys, query_weight).flatten(2, 3).flatten(0, 1)
            folded_bias = torch.einsum("bqthd,hd->bqht", scaled_keys, query_bias).flatten(2)[..., None].flatten(0, 1)
            scores = torch.baddbmm(folded_bias, folded, image.flatten(0, 1).transpose(1, 2))
        # Laid out [n, heads, T, N]: the softmax over the T tokens runs along a strided axis, vectorised over N.
        scores = scores.reshape(batch_size * num_queries, self.num_heads, num_tokens, -1)
        probs = scores.softmax(dim=2, dtype=torch.float32).to(scores.dtype).flatten(1, 2).transpose(1, 2)
        through = self._values_through_output(value.flatten(0, 1))  # [B*Q, heads*T, C]
        if residual.ndim == 3:
            attended = torch.bmm(probs, through).unflatten(0, (batch_size, num_queries))
            return (attended + residual[:, None]).flatten(0, 1)
        return torch.baddbmm(residual.flatten(0, 1), probs, through)


class EfficientSamTwoWayAttentionBlock(GradientCheckpointingLayer):
    """
    Token self-attention, token→image cross-attention, token MLP, image→token cross-attention; checkpointed when the
    model's gradient checkpointing is on.

    Differs from `transformers`' SAM in the self-attention step: the first block keeps its residual, and later
    blocks add the query positional encoding to the queries themselves (so it stays in the residual stream).

    Two calling conventions, told apart by rank (never by value, so traced graphs have no branch):

    - tiled (the plain computation, used while recording attentions): `queries [n, T, C]`, `keys [n, N, C]`, one
      image copy per query, every attention through the modules' `forward`;
    - fast: `queries [B, Q, T, C]` with `keys [B, N, C]` shared by the Q prompts of an image (the first block) or
      `[B, Q, N, C]` per prompt (later blocks); returns `keys [B, Q, N, C]`.
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
        if queries.ndim == 4:
            return self._forward_shared(queries, keys, query_pe, key_pe)
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

    def _forward_shared(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block on `queries [B, Q, T, C]` and shared `[B, N, C]` or per-prompt `[B, Q, N, C]` keys."""
        batch_size, num_queries = queries.shape[:2]
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        flat = queries.flatten(0, 1)
        attn_out, _ = self.self_attn(flat, flat, flat)
        queries = self.layer_norm1(queries + attn_out.unflatten(0, (batch_size, num_queries)))

        keys_with_pe = keys + key_pe
        if keys.ndim == 3:  # the first block: the image itself, identical for every prompt
            attn_out = self.cross_attn_token_to_image.attend_shared_keys(queries + query_pe, keys_with_pe, keys)
        else:
            attn_out = self.cross_attn_token_to_image.attend_keys_per_query(
                (queries + query_pe).flatten(0, 1), keys_with_pe.flatten(0, 1), keys.flatten(0, 1)
            ).unflatten(0, (batch_size, num_queries))
        queries = self.layer_norm2(queries + attn_out)
        queries = self.layer_norm3(queries + self.mlp(queries))

        keys = self.cross_attn_image_to_token.attend_from_image(keys_with_pe, queries + query_pe, queries, keys)
        keys = self.layer_norm4(keys).unflatten(0, (batch_size, num_queries))
        return queries, keys


class EfficientSamTwoWayTransformer(nn.Module):
    def __init__(self, config: EfficientSamMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EfficientSamTwoWayAttentionBlock(config, skip_first_layer_pe=i == 0)
            for i in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = EfficientSamTwoWayAttention(config, config.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, point_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `image_embeddings [B, C, h, w]` (one per image), `image_pe [1, C, h, w]`, `point_embeddings [B, Q, T, C]` →
        (tokens `[B*Q, T, C]`, image tokens `[B*Q, h*w, C]`), query `b * Q + q` holding prompt q of image b.

        The image is never tiled per prompt: the first block reads it once per image (see
        `EfficientSamTwoWayAttentionBlock`), and it becomes per-prompt only where the image→token attention updates it.

        Under a recording forward with attentions, the plain tiled computation runs instead (same outputs to float
        rounding) and hooks collect the probabilities in call order: per block the token self-attention
        `[B*Q, heads, T, T]`, token→image `[B*Q, heads, T, h*w]` and image→token `[B*Q, heads, h*w, T]`, then the
        final token→image attention.
        """
        batch_size, num_queries, num_tokens, width = point_embeddings.shape
        keys = image_embeddings.flatten(2).transpose(1, 2).contiguous()  # [B, N, C]
        key_pe = image_pe.flatten(2).transpose(1, 2)
        # Decided once out here so that a checkpointed block recomputes with the same attention path; the tensors
        # are positional so that reentrant checkpointing propagates their gradients.
        output_attentions = recording_attentions()
        if output_attentions:
            return self._forward_tiled(
                keys.repeat_interleave(num_queries, dim=0), key_pe, point_embeddings.flatten(0, 1)
            )
        queries = point_embeddings
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embeddings, key_pe)
        queries, query_pe = queries.flatten(0, 1), point_embeddings.flatten(0, 1)
        if keys.ndim == 3:  # no blocks: the image is still shared
            attn_out = self.final_attn_token_to_image.attend_shared_keys(
                queries.unflatten(0, (batch_size, num_queries)) + point_embeddings, keys + key_pe, keys
            ).flatten(0, 1)
            keys = keys.repeat_interleave(num_queries, dim=0)
        else:
            keys = keys.flatten(0, 1)
            attn_out = self.final_attn_token_to_image.attend_keys_per_query(queries + query_pe, keys + key_pe, keys)
        return self.layer_norm_final_attn(queries + attn_out), keys

    def _forward_tiled(
        self, keys: torch.Tensor, key_pe: torch.Tensor, point_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain computation on tiled `keys [n, N, C]` and `point_embeddings [n, T, C]`, recording attentions."""
        queries = point_embeddings
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embeddings, key_pe, output_attentions=True)
        attn_out, _ = self.final_attn_token_to_image(
            queries + point_embeddings, keys + key_pe, keys, output_attentions=True
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

    def forward_pixels(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """
        The same layer on channels-last pixel rows: `[n, R, C_in]` → `[n, 4 R, C_out]`, output row `4 r + 2 i + j`
        being sub-pixel `(i, j)` of input pixel `r`. A kernel-2 stride-2 transposed conv does not mix pixels, so it
        is one matmul `C_in → (i, j, C_out)`; GroupNorm(1, C) normalises each sample over all its values, which is
        a layer norm over the last two axes (the per-channel affine is broadcast along the rows).
        """
        weight = self.conv.weight.permute(2, 3, 1, 0).flatten(0, 2)  # [(i, j, C_out), C_in]
        bias = self.conv.bias.repeat(4)
        hidden_states = F.linear(hidden_states, weight, bias).unflatten(-1, (4, -1)).flatten(1, 2)
        if isinstance(self.norm, nn.GroupNorm):
            shape = hidden_states.shape[1:]
            hidden_states = F.layer_norm(
                hidden_states, shape, self.norm.weight.expand(shape), self.norm.bias.expand(shape), self.norm.eps
            )
        return self.act(hidden_states)


# Prompts upscaled together in one piece (see `EfficientSamMaskDecoder.forward`).
UPSCALING_CHUNK_SIZE = 16


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

    def _hypernetworks(self, mask_tokens_out: torch.Tensor, selected: range) -> torch.Tensor:
        """
        The hypernetwork MLPs of the `selected` mask tokens, run together as batched matmuls over the token axis:
        `mask_tokens_out [n, M_all, C]` → `[n, len(selected), C_up]`. Unselected MLPs are not touched (no gradient).
        """
        mlps = [self.output_hypernetworks_mlps[i] for i in selected]
        hidden_states = mask_tokens_out[:, selected.start : selected.stop].transpose(0, 1)  # [M, n, C]
        for depth in range(len(mlps[0].layers) + 1):
            linears = [mlp.layers[depth] if depth < len(mlp.layers) else mlp.proj_out for mlp in mlps]
            weight = torch.stack([linear.weight for linear in linears]).transpose(1, 2)  # [M, C_in, C_out]
            bias = torch.stack([linear.bias for linear in linears])[:, None]  # [M, 1, C_out]
            hidden_states = torch.baddbmm(bias, hidden_states, weight)
            if depth < len(mlps[0].layers):
                hidden_states = mlps[0].act(hidden_states)
        return hidden_states.transpose(0, 1)

    def _upscaled_masks(self, image_tokens: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """Per-prompt image tokens `[n, h*w, C]` → upscaled pixel rows → mask logits `[n, rows, M]`."""
        upscaled = image_tokens
        for layer in self.upscaling_layers:
            upscaled = layer.forward_pixels(upscaled)
        return torch.bmm(upscaled, hyper_in.transpose(1, 2))

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

        Computes what the original computes on the image tiled per query, without tiling it: see
        `EfficientSamTwoWayTransformer`. The upscaling runs as matmuls on channels-last pixel rows, and only the
        selected mask tokens' hypernetworks and masks are computed.
        """
        batch_size, num_queries, num_points, width = sparse_prompt_embeddings.shape
        _, channels, height, grid_width = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch_size, num_queries, -1, -1), sparse_prompt_embeddings], dim=2)
        hidden_tokens, image_tokens = self.transformer(image_embeddings, image_pe, tokens)
        iou_token_out = hidden_tokens[:, 0]
        mask_tokens_out = hidden_tokens[:, 1 : 1 + self.num_mask_tokens]

        selected = range(1, self.num_mask_tokens) if multimask_output and self.num_mask_tokens > 1 else range(0, 1)
        hyper_in = self._hypernetworks(mask_tokens_out, selected)  # [n, M, C_up]
        chunk = UPSCALING_CHUNK_SIZE
        if is_tracing() or image_tokens.shape[0] <= chunk:
            masks = self._upscaled_masks(image_tokens, hyper_in)
        else:
            # The upscaled pixel rows are the decoder's largest tensors (537 MB for 64 prompts at 256x256 masks):
            # a few prompts at a time bound the peak memory; each prompt's arithmetic is unchanged.
            pieces = zip(image_tokens.split(chunk), hyper_in.split(chunk), strict=True)
            masks = torch.cat([self._upscaled_masks(tokens, hyper) for tokens, hyper in pieces])
        # Rows are (y, x, i_1, j_1, ..., i_L, j_L) for L upscaling layers: back to [n, M, 2^L h, 2^L w].
        levels = len(self.upscaling_layers)
        masks = masks.reshape(-1, height, grid_width, *([2] * (2 * levels)), len(selected))
        order = [0, 3 + 2 * levels, 1, *range(3, 3 + 2 * levels, 2), 2, *range(4, 3 + 2 * levels, 2)]
        scale = 2**levels
        masks = masks.permute(order).reshape(batch_size, num_queries, len(selected), scale * height, scale * grid_width)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, selected.start : selected.stop]
        return masks, iou_pred.reshape(batch_size, num_queries, -1)


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
        input_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: `[B, C, g, g]`.
            points: `[B, Q, P, 2]` in the encoder frame, already merged/padded by `assemble_prompts`.
            labels: `[B, Q, P]`.
            input_masks: `[B, Q, 4g, 4g]` mask logits (models with a mask encoder), or `None`.

        Returns:
            `pred_masks [B, Q, M, 4g, 4g]` logits and `iou_scores [B, Q, M]`.
        """
        sparse = self.embed_prompts(points, labels).to(image_embeddings.dtype)
        return self.decode(image_embeddings, sparse, multimask_output, input_masks=input_masks)

    def embed_prompts(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`points [B, Q, P, 2]` and `labels [B, Q, P]` (from `assemble_prompts`) → sparse embeddings `[B, Q, P, C]`."""
        batch_size, num_queries, num_points, _ = points.shape
        sparse = self.prompt_encoder(
            points.reshape(batch_size * num_queries, num_points, 2), labels.reshape(batch_size * num_queries, -1)
        )
        return sparse.reshape(batch_size, num_queries, num_points, -1)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool = True,
        input_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Mask decoder on any sparse prompt embeddings (points, learned text tokens, or both) and, for a model with a
        mask encoder, dense mask prompts.

        Args:
            image_embeddings: `[B, C, g, g]`.
            sparse_prompt_embeddings: `[B, Q, P, C]` in the dtype of `image_embeddings`.
            input_masks: `[B, Q, 4g, 4g]` mask logits, one per query, or `None`.

        Returns:
            `pred_masks [B, Q, M, 4g, 4g]` logits and `iou_scores [B, Q, M]`.

        Without mask prompts the image embedding (plus the "no mask" embedding, when the model has a mask encoder) is
        shared by every query of an image. With them each query has its own image embedding plus its mask's
        embedding, so the queries are decoded as images of one query each.
        """
        image_pe = self.prompt_encoder.get_dense_pe(image_embeddings.dtype)
        dense = self.prompt_encoder.embed_masks(input_masks)
        if dense is None:
            return self.mask_decoder(image_embeddings, image_pe, sparse_prompt_embeddings, multimask_output)
        dense = dense.to(image_embeddings.dtype)
        if input_masks is None:
            return self.mask_decoder(image_embeddings + dense, image_pe, sparse_prompt_embeddings, multimask_output)
        batch_size, num_queries = sparse_prompt_embeddings.shape[:2]
        per_query = (image_embeddings[:, None] + dense).flatten(0, 1)
        masks, iou_scores = self.mask_decoder(
            per_query, image_pe, sparse_prompt_embeddings.flatten(0, 1)[:, None], multimask_output
        )
        return masks.reshape(batch_size, num_queries, *masks.shape[2:]), iou_scores.reshape(batch_size, num_queries, -1)


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
    "MASK_PROMPT_ZERO_INIT",
    "EfficientSamMaskDecoder",
    "EfficientSamMaskEmbedding",
    "EfficientSamModule",
    "EfficientSamPromptEncoder",
    "EfficientSamVisionEncoder",
]
