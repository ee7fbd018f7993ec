"""One picture of a PnP-VQA answer: the question's heatmap, the enhanced heatmap, the sampled patches, the captions."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .visualization import _to_rgb_array, draw_heatmap, draw_panels, save_png

_PATCH_OUTLINE = (255, 215, 0)
_DIMMED = 0.25  # brightness of the patches no caption saw
_BLANK = (235, 235, 235)


def _rgb(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    return Image.fromarray(_to_rgb_array(image))


def patch_sample_counts(patch_indices: torch.Tensor | np.ndarray, patch_grid_size: int) -> np.ndarray:
    """
    How many captions saw each patch.

    Args:
        patch_indices: `[n, K]` indices in `[1, G*G]` (0 is the ViT's [CLS]), e.g. one question's `patch_indices`.
        patch_grid_size: `G`.

    Returns:
        `[G, G]` int counts, row-major as the ViT orders its patches.
    """
    indices = np.asarray(patch_indices.detach().cpu() if isinstance(patch_indices, torch.Tensor) else patch_indices)
    cells = patch_grid_size * patch_grid_size
    if indices.ndim != 2 or indices.size == 0 or indices.min() < 1 or indices.max() > cells:
        raise ValueError(
            f"`patch_indices` must be a non-empty [n, K] array of indices in [1, {cells}], got shape {indices.shape}"
            f"{'' if indices.size == 0 else f' with values in [{indices.min()}, {indices.max()}]'}."
        )
    return np.bincount(indices.reshape(-1) - 1, minlength=cells).reshape(patch_grid_size, patch_grid_size)


def draw_sampled_patches(
    image: Image.Image | np.ndarray | torch.Tensor, patch_indices: torch.Tensor | np.ndarray, patch_grid_size: int
) -> Image.Image:
    """
    The image dimmed where no caption looked, each patch lit by how many captions saw it; the first caption's `K`
    patches outlined.

    Args:
        image: the image (PIL, HWC/CHW array or tensor).
        patch_indices: `[n, K]` indices in `[1, G*G]`.
        patch_grid_size: `G`, the captioner's grid (the image is divided into `G x G` cells).

    Returns:
        A new RGB `PIL.Image` of the image's size.
    """
    picture = _rgb(image)
    counts = patch_sample_counts(patch_indices, patch_grid_size).astype(np.float32)
    light = _DIMMED + (1 - _DIMMED) * counts / counts.max()
    width, height = picture.size
    light = np.asarray(Image.fromarray(light).resize((width, height), Image.Resampling.NEAREST))
    canvas = (np.asarray(picture, dtype=np.float32) * light[..., None]).round().astype(np.uint8)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    first = np.asarray(patch_indices[0].tolist() if isinstance(patch_indices, torch.Tensor) else patch_indices[0])
    for index in first - 1:
        row, col = divmod(int(index), patch_grid_size)
        x0, x1 = col * width / patch_grid_size, (col + 1) * width / patch_grid_size - 1
        y0, y1 = row * height / patch_grid_size, (row + 1) * height / patch_grid_size - 1
        draw.rectangle([x0, y0, x1, y1], outline=_PATCH_OUTLINE, width=max(1, round(min(width, height) / 128)))
    return picture


def _text_block(
    lines: Sequence[str], width: int, font_size: int, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Black text on `background`, each line wrapped at word boundaries to `width`."""
    font = ImageFont.load_default(font_size)
    margin = font_size // 2
    wrapped: list[str] = []
    for line in lines:
        current = ""
        for word in line.split():
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width - 2 * margin:
                wrapped.append(current)
                current = "   " + word
            else:
                current = candidate
        wrapped.append(current)
    line_height = round(font_size * 1.3)
    block = Image.new("RGB", (width, len(wrapped) * line_height + 2 * margin), background)
    draw = ImageDraw.Draw(block)
    for index, line in enumerate(wrapped):
        draw.text((margin, margin + index * line_height), line, fill=(0, 0, 0), font=font)
    return block


def draw_pnp_vqa(
    image: Image.Image | np.ndarray | torch.Tensor,
    heatmap: torch.Tensor | np.ndarray,
    patch_indices: torch.Tensor | np.ndarray,
    patch_grid_size: int,
    captions: Sequence[str],
    enhanced_heatmap: torch.Tensor | np.ndarray | None = None,
    question: str | None = None,
    answer: str | None = None,
    panel_size: int = 256,
    max_captions: int = 10,
) -> Image.Image:
    """
    One question's PnP-VQA in one figure: three panels (the question's Grad-CAM heatmap, the mask-enhanced heatmap,
    the sampled patches), then the question, the answer and the captions.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor).
        heatmap: `[g, g]` the question's Grad-CAM (e.g. the pipeline's `"heatmap"`).
        patch_indices: `[n, K]` the patches of each caption, in `[1, G*G]`.
        patch_grid_size: `G`, the captioner's patch grid.
        captions: the `n` captions.
        enhanced_heatmap: `[g, g]`, or `None` without mask enhancement (that panel then says so).
        question, answer: shown above the captions when given.
        panel_size: longer side of each panel in pixels (small images are enlarged so the text stays readable).
        max_captions: captions listed; the rest are counted.

    Returns:
        A new RGB `PIL.Image`.
    """
    if panel_size < 32:
        raise ValueError(f"`panel_size` must be >= 32 pixels, got {panel_size}.")
    if max_captions < 1:
        raise ValueError(f"`max_captions` must be >= 1, got {max_captions}.")
    if len(captions) != len(patch_indices):
        raise ValueError(f"Got {len(captions)} captions for {len(patch_indices)} patch sets; pass one per caption.")
    picture = _rgb(image)
    scale = panel_size / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.BICUBIC)
    panels = [draw_heatmap(picture, heatmap)]
    titles = ["question heatmap (Grad-CAM)"]
    if enhanced_heatmap is None:
        blank = Image.new("RGB", size, _BLANK)
        blank.paste(_text_block(["no mask enhancement"], size[0], max(10, panel_size // 20), _BLANK), (0, 0))
        panels.append(blank)
    else:
        panels.append(draw_heatmap(picture, enhanced_heatmap))
    titles.append("mask-enhanced heatmap")
    panels.append(draw_sampled_patches(picture, patch_indices, patch_grid_size))
    titles.append(f"sampled patches ({len(captions)} captions x {len(patch_indices[0])}; caption 1 outlined)")
    grid = draw_panels(panels, titles, columns=3)

    lines = []
    if question is not None:
        lines.append(f"Q: {question}")
    if answer is not None:
        lines.append(f"A: {answer}")
    lines += [f"{index + 1}. {caption}" for index, caption in enumerate(captions[:max_captions])]
    if len(captions) > max_captions:
        lines.append(f"... and {len(captions) - max_captions} more captions")
    text = _text_block(lines, grid.width, max(10, panel_size // 18))
    figure = Image.new("RGB", (grid.width, grid.height + text.height), (255, 255, 255))
    figure.paste(grid, (0, 0))
    figure.paste(text, (0, grid.height))
    return figure


_RESULT_KEYS = ("heatmap", "patch_indices", "patch_grid_size", "captions", "enhanced_heatmap", "question", "answer")


def draw_pnp_vqa_result(
    image: Image.Image | np.ndarray | torch.Tensor, result: Mapping[str, Any], **kwargs
) -> Image.Image:
    """[`draw_pnp_vqa`] of one result dict of `pipeline("esam-blip-pnp-vqa")`; `kwargs` go to it."""
    missing = [key for key in _RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"`result` lacks {missing}: pass one result dict of the esam-blip-pnp-vqa pipeline.")
    return draw_pnp_vqa(image, **{key: result[key] for key in _RESULT_KEYS}, **kwargs)


def save_pnp_vqa_png(path: str | Path, image, **kwargs) -> Path:
    """`draw_pnp_vqa(image, **kwargs)` saved to `path` as PNG; returns the path."""
    return save_png(path, draw_pnp_vqa(image, **kwargs))


__all__ = [
    "draw_pnp_vqa",
    "draw_pnp_vqa_result",
    "draw_sampled_patches",
    "patch_sample_counts",
    "save_pnp_vqa_png",
]
