"""Grad-CAM arithmetic over a BLIP cross-attention layer, with LAVIS's row layout and PnP-VQA's heatmap."""

import torch
from torch import Tensor


def gradcam_from_cross_attention(
    attention_probs: Tensor, attention_grads: Tensor, attention_mask: Tensor, grid_size: int
) -> Tensor:
    r"""
    Turn the cross-attention probabilities of one text layer and their gradients into LAVIS's Grad-CAM rows.

    The arithmetic is LAVIS's `compute_gradcam`: drop the image [CLS] column, clamp the gradients at 0, zero the padded
    text rows, multiply, average over heads. The heads and the grid come from the tensors and `grid_size` instead of
    LAVIS's hard-coded 12 heads and 24x24 grid.

    Args:
        attention_probs (`torch.Tensor` of shape `(batch_size, num_heads, text_length, 1 + grid_size**2)`):
            softmax probabilities of the cross-attention (text queries over image tokens, image [CLS] first).
        attention_grads (`torch.Tensor`, same shape as `attention_probs`): gradient of the summed match logit with
            respect to `attention_probs`.
        attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`): 1 for real tokens, 0 for padding.
            Padding must be on the right (the tokenizer's default), as LAVIS assumes.
        grid_size (`int`): side `g` of the image patch grid.

    Returns:
        `torch.Tensor` of shape `(batch_size, text_length + 1, grid_size, grid_size)`: row 0 is the first ([ENC])
        token, row 1 the mean over the `n` caption tokens (`n` = real tokens minus [ENC] and [SEP]), rows 2.. are
        the tokens 1..L-1. LAVIS divides by `n` even when it is 0 (giving NaN for an empty caption); here `n` is
        clamped to 1, so an empty caption gets a zero mean row. Otherwise the values are LAVIS's.
    """
    if attention_probs.dim() != 4:
        raise ValueError(
            "`attention_probs` must have shape (batch_size, num_heads, text_length, 1 + grid_size**2), got "
            f"{tuple(attention_probs.shape)}."
        )
    if attention_grads.shape != attention_probs.shape:
        raise ValueError(
            f"`attention_grads` must have the shape of `attention_probs` {tuple(attention_probs.shape)}, got "
            f"{tuple(attention_grads.shape)}."
        )
    batch_size, num_heads, text_length, num_image_tokens = attention_probs.shape
    if num_image_tokens != 1 + grid_size * grid_size:
        raise ValueError(
            f"`grid_size` {grid_size} expects {1 + grid_size * grid_size} image tokens (one [CLS] plus the patches), "
            f"the attention has {num_image_tokens}."
        )
    if tuple(attention_mask.shape) != (batch_size, text_length):
        raise ValueError(
            f"`attention_mask` must have shape {(batch_size, text_length)}, got {tuple(attention_mask.shape)}."
        )

    mask = attention_mask.view(batch_size, 1, text_length, 1, 1).to(attention_probs.dtype)
    grid_shape = (batch_size, num_heads, text_length, grid_size, grid_size)
    cams = attention_probs[..., 1:].reshape(grid_shape) * mask
    grads = attention_grads[..., 1:].clamp(min=0).reshape(grid_shape) * mask
    per_token = (cams * grads).mean(dim=1)

    num_caption_tokens = (attention_mask.sum(dim=-1) - 2).clamp(min=1)
    positions = torch.arange(text_length, device=attention_mask.device)
    in_caption = (positions >= 1) & (positions <= num_caption_tokens[:, None])
    caption_sum = (per_token * in_caption[:, :, None, None].to(per_token.dtype)).sum(dim=1, keepdim=True)
    caption_mean = caption_sum / num_caption_tokens.view(batch_size, 1, 1, 1).to(per_token.dtype)
    return torch.cat([per_token[:, :1], caption_mean, per_token[:, 1:]], dim=1)


def pnp_vqa_gradcams(gradcam: Tensor) -> Tensor:
    r"""
    The heatmap PnP-VQA samples image patches from: the caption-mean row of the Grad-CAM, flattened.

    Args:
        gradcam (`torch.Tensor` of shape `(batch_size, text_length + 1, grid_size, grid_size)`): output of
            [`gradcam_from_cross_attention`].

    Returns:
        `torch.Tensor` of shape `(batch_size, grid_size * grid_size)`.
    """
    if gradcam.dim() != 4 or gradcam.shape[1] < 2:
        raise ValueError(
            "`gradcam` must have shape (batch_size, text_length + 1, grid_size, grid_size) with at least 2 rows, got "
            f"{tuple(gradcam.shape)}."
        )
    return gradcam[:, 1].reshape(gradcam.shape[0], -1)


__all__ = ["gradcam_from_cross_attention", "pnp_vqa_gradcams"]
