"""Pictures of results: mask overlays with prompt points and boxes, saved as PNG (matplotlib optional)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = [(30, 144, 255), (255, 99, 71), (50, 205, 50), (255, 215, 0), (186, 85, 211), (0, 206, 209)]


def _to_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"`image` must be an RGB or gray image (HWC, CHW or HW), got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def draw_masks(
    image: Image.Image | np.ndarray | torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    points: list | torch.Tensor | None = None,
    labels: list | torch.Tensor | None = None,
    boxes: list | torch.Tensor | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """
    Tint each mask over the image in its own colour, outline boxes and mark points.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor).
        masks: `[N, H, W]` or `[H, W]` booleans at the image size (e.g. from `post_process_masks`).
        points: `[K, 2]` (x, y) image pixels; foreground points are drawn as filled green dots, background ones red.
        labels: `[K]` point labels (1 foreground, 0 background); all foreground if omitted.
        boxes: `[M, 4]` (x1, y1, x2, y2) image pixels.
        alpha: opacity of the tint, in [0, 1].

    Returns:
        A new RGB `PIL.Image` of the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    canvas = _to_rgb_array(image).astype(np.float32)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    masks = masks[None] if masks.ndim == 2 else masks
    if masks.ndim != 3 or masks.shape[1:] != canvas.shape[:2]:
        raise ValueError(f"`masks` must be [N, {canvas.shape[0]}, {canvas.shape[1]}] (the image size), got {masks.shape}.")
    for index, mask in enumerate(masks.astype(bool)):
        colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(picture.size) / 80))
    for index, box in enumerate([] if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        draw.rectangle(box.tolist(), outline=PALETTE[index % len(PALETTE)], width=max(2, radius // 2))
    if points is not None:
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        labels = np.ones(len(points)) if labels is None else np.asarray(labels).reshape(-1)
        for (x, y), label in zip(points, labels):
            if label < 0:
                continue
            fill = (0, 200, 0) if label == 1 else (220, 0, 0)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return picture


def save_masks_png(path: str | Path, image, masks, **kwargs) -> Path:
    """`draw_masks(image, masks, **kwargs)` saved to `path` as PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_masks(image, masks, **kwargs).save(path, format="PNG")
    return path


def plot_masks(image, masks, ax=None, title: str | None = None, **kwargs):
    """Show `draw_masks(...)` on a matplotlib axis (created if omitted); returns the axis. Needs matplotlib."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_masks needs matplotlib: pip install 'transformers-esam-blip[plot]'") from error
    if ax is None:
        _, ax = plt.subplots()
    ax.imshow(draw_masks(image, masks, **kwargs))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


__all__ = ["draw_masks", "plot_masks", "save_masks_png"]
