"""Pictures of results: mask overlays, Grad-CAM heatmaps and text-prompt results, saved as PNG (matplotlib optional)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

PALETTE = [(30, 144, 255), (255, 99, 71), (50, 205, 50), (255, 215, 0), (186, 85, 211), (0, 206, 209)]
# matplotlib's "jet" as (position, value) breakpoints per channel, so the colormap needs no matplotlib.
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# LAVIS `getAttMap` blurs with sigma = 0.02 * max(H, W); scipy truncates the kernel at 4 sigma.
_BLUR_SIGMA_FRACTION = 0.02
_BLUR_TRUNCATE = 4.0
# The blur kernel grows with the image; above this side the map is blurred at a reduced size and then upsampled,
# which looks the same (the map is smooth at that scale) and keeps a 4000 px photo fast.
_MAX_BLUR_SIDE = 512
_FOREGROUND_POINT = (0, 200, 0)
_BACKGROUND_POINT = (220, 0, 0)


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


def _as_numpy(value: torch.Tensor | np.ndarray | list) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")


def _prompt_arrays(points, labels) -> tuple[np.ndarray, np.ndarray]:
    """`points [K, 2]` float and `labels [K]` (all 1 when omitted), validated."""
    points = _as_numpy(points).astype(np.float32)
    if points.size == 0:
        points = points.reshape(0, 2)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"`points` must be [K, 2] (x, y) image pixels, got shape {points.shape}.")
    labels = np.ones(len(points)) if labels is None else _as_numpy(labels).reshape(-1)
    if len(labels) != len(points):
        raise ValueError(f"`labels` must hold one label per point ({len(points)}), got {len(labels)}.")
    return points, labels


def _draw_prompts(picture: Image.Image, points=None, labels=None, boxes=None) -> Image.Image:
    """Outline `boxes [M, 4]` and mark `points [K, 2]` on `picture` in place: label 1 green, 0 red, -1 skipped."""
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(picture.size) / 80))
    if boxes is not None:
        boxes = _as_numpy(boxes).astype(np.float32)
        if boxes.size and (boxes.ndim not in (1, 2) or boxes.shape[-1] != 4):
            raise ValueError(f"`boxes` must be [M, 4] (x1, y1, x2, y2) image pixels, got shape {boxes.shape}.")
        for index, box in enumerate(boxes.reshape(-1, 4)):
            draw.rectangle(box.tolist(), outline=PALETTE[index % len(PALETTE)], width=max(2, radius // 2))
    if points is not None:
        for (x, y), label in zip(*_prompt_arrays(points, labels)):
            if label < 0:
                continue
            fill = _FOREGROUND_POINT if label == 1 else _BACKGROUND_POINT
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return picture


def draw_masks(
    image: Image.Image | np.ndarray | torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    points: list | torch.Tensor | None = None,
    labels: list | torch.Tensor | None = None,
    boxes: list | torch.Tensor | None = None,
    alpha: float = 0.5,
    colours: Sequence[Sequence[int]] | None = None,
) -> Image.Image:
    """
    Tint each mask over the image in its own colour, outline boxes and mark points.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor).
        masks: `[N, H, W]` or `[H, W]` booleans at the image size (e.g. from `post_process_masks`).
        points: `[K, 2]` (x, y) image pixels; foreground points are drawn as filled green dots, background ones red,
            padding (label -1) not at all.
        labels: `[K]` point labels (1 foreground, 0 background, -1 padding); all foreground if omitted.
        boxes: `[M, 4]` (x1, y1, x2, y2) image pixels.
        alpha: opacity of the tint, in [0, 1].
        colours: RGB tint of each mask (cycled), e.g. `[(255, 0, 255)]` to stand out on blue objects; default
            `PALETTE`.

    Returns:
        A new RGB `PIL.Image` of the image's size.
    """
    _check_alpha(alpha)
    palette = PALETTE if colours is None else [tuple(int(c) for c in colour) for colour in colours]
    if not palette or any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for colour in palette):
        raise ValueError(f"`colours` must be a non-empty list of (R, G, B) values in [0, 255], got {colours!r}.")
    canvas = _to_rgb_array(image).astype(np.float32)
    masks = _as_numpy(masks)
    masks = masks[None] if masks.ndim == 2 else masks
    if masks.ndim != 3 or masks.shape[1:] != canvas.shape[:2]:
        raise ValueError(
            f"`masks` must be [N, {canvas.shape[0]}, {canvas.shape[1]}] (the image size), got {masks.shape}."
        )
    for index, mask in enumerate(masks.astype(bool)):
        colour = np.array(palette[index % len(palette)], dtype=np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    return _draw_prompts(Image.fromarray(canvas.round().astype(np.uint8)), points, labels, boxes)


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """
    matplotlib's "jet" colormap without matplotlib.

    Args:
        values: array of any shape with values in [0, 1] (clipped).

    Returns:
        `values.shape + (3,)` float32 RGB in [0, 1].
    """
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    channels = [np.interp(values, *zip(*_JET[name])) for name in ("red", "green", "blue")]
    return np.stack(channels, axis=-1).astype(np.float32)


def _symmetric_gaussian_blur(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of `[H, W]` with scipy `gaussian_filter`'s defaults (mode "reflect", kernel cut at 4 sigma)."""
    radius = int(_BLUR_TRUNCATE * sigma + 0.5)
    if radius == 0:
        return values
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(values.dtype)
    for dim in (0, 1):
        size = values.shape[dim]
        # "reflect" repeats the edge sample (d c b a | a b c d); the modulo handles kernels wider than the image.
        index = torch.arange(-radius, size + radius) % (2 * size)
        index = torch.where(index >= size, 2 * size - 1 - index, index)
        padded = values.index_select(dim, index).movedim(dim, -1)
        blurred = F.conv1d(padded.reshape(-1, 1, padded.shape[-1]), kernel.view(1, 1, -1))
        values = blurred.reshape(padded.shape[:-1] + (size,)).movedim(-1, dim)
    return values


def _normalise(values: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1]; a constant map becomes all zeros."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def heatmap_to_image_size(heatmap: torch.Tensor | np.ndarray, size: tuple[int, int], blur: bool = True) -> np.ndarray:
    """
    Upsample a patch-grid heatmap to an image as LAVIS `getAttMap` does: bicubic resize to the image size, Gaussian
    blur with sigma = 0.02 * max(H, W) (with `blur`), min-max normalisation.

    Args:
        heatmap: `[g, g]` (or any `[h, w]`) finite scores, e.g. one row of a Grad-CAM.
        size: `(H, W)` of the image.
        blur: smooth the upsampled map (LAVIS's default).

    Returns:
        `[H, W]` float32 in [0, 1].
    """
    values = _as_numpy(heatmap)
    if values.ndim != 2 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"`heatmap` must be a non-empty 2-D array of scores [g, g], got shape {values.shape}.")
    values = torch.from_numpy(values.astype(np.float32))
    if not torch.isfinite(values).all():
        raise ValueError("`heatmap` holds NaN or infinite values.")
    height, width = size
    scale = min(1.0, _MAX_BLUR_SIDE / max(height, width)) if blur else 1.0
    work_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    values = F.interpolate(_normalise(values)[None, None], size=work_size, mode="bicubic", align_corners=False)[0, 0]
    if blur:
        values = _symmetric_gaussian_blur(values, _BLUR_SIGMA_FRACTION * max(work_size))
    if work_size != (height, width):
        values = F.interpolate(values[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return _normalise(values).numpy()


def draw_heatmap(
    image: Image.Image | np.ndarray | torch.Tensor,
    heatmap: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    blur: bool = True,
) -> Image.Image:
    """
    Blend a heatmap, upsampled as [`heatmap_to_image_size`] does and coloured with "jet", over the image.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor).
        heatmap: `[g, g]` scores (e.g. `heatmap[t]` of the text-prompt output); only their relative values matter.
        alpha: weight of the colours, in [0, 1] (0 gives the image back).
        blur: smooth the upsampled map with a Gaussian (LAVIS's default).

    Returns:
        A new RGB `PIL.Image` of the image's size.
    """
    _check_alpha(alpha)
    canvas = _to_rgb_array(image).astype(np.float32)
    colours = jet_colormap(heatmap_to_image_size(heatmap, canvas.shape[:2], blur)) * 255
    return Image.fromarray(((1 - alpha) * canvas + alpha * colours).round().astype(np.uint8))


def _title_band(title: str, width: int, height: int) -> Image.Image:
    """A white band holding `title` in black, wrapped at word boundaries to `width`; the font scales with `height`."""
    font_size = max(10, round(height / 24))
    font = ImageFont.load_default(font_size)
    margin = font_size // 2
    lines: list[str] = []
    for word in title.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width - 2 * margin:
            lines[-1] = candidate
        else:
            lines.append(word)
    line_height = round(font_size * 1.25)
    band = Image.new("RGB", (width, len(lines) * line_height + 2 * margin), (255, 255, 255))
    ImageDraw.Draw(band).multiline_text(
        (margin, margin), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=line_height - font_size
    )
    return band


def draw_text_result(
    image: Image.Image | np.ndarray | torch.Tensor,
    mask: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    points: list | torch.Tensor | None = None,
    labels: list | torch.Tensor | None = None,
    title: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """
    One text prompt's result side by side: on the left the mask tinted over the image, on the right the heatmap the
    points came from; both show the points (salient green, background red), so a bad mask can be traced to its
    heatmap or its points. An optional title band sits above both panels.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor), `H x W`.
        mask: `[H, W]` booleans (e.g. the pipeline's `"mask"`).
        heatmap: `[g, g]` scores (e.g. the pipeline's `"heatmap"`).
        points: `[K, 2]` (x, y) image pixels (e.g. the pipeline's `"points"`).
        labels: `[K]` 1 salient, 0 background, -1 padding; all 1 if omitted.
        title: text of the band above the panels (e.g. the prompt and its scores); no band if `None`.
        alpha: opacity of the mask tint and the heatmap colours, in [0, 1].

    Returns:
        A new RGB `PIL.Image` of size `(2 W, H + band)`: the mask panel at `(0, band)`, the heatmap panel at
        `(W, band)`, `band = 0` without a title.
    """
    canvas = _to_rgb_array(image)
    mask = _as_numpy(mask)
    if mask.shape != canvas.shape[:2]:
        raise ValueError(f"`mask` must be [{canvas.shape[0]}, {canvas.shape[1]}] (the image size), got {mask.shape}.")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"`title` must be a string or None, got {type(title).__name__}.")
    left = draw_masks(canvas, mask, points=points, labels=labels, alpha=alpha)
    right = _draw_prompts(draw_heatmap(canvas, heatmap, alpha=alpha), points, labels)
    height, width = canvas.shape[:2]
    band = _title_band(title, 2 * width, height) if title else None
    offset = 0 if band is None else band.height
    picture = Image.new("RGB", (2 * width, height + offset), (255, 255, 255))
    if band is not None:
        picture.paste(band, (0, 0))
    picture.paste(left, (0, offset))
    picture.paste(right, (width, offset))
    return picture


def draw_panels(pictures: list[Image.Image], titles: list[str] | None = None, columns: int = 4) -> Image.Image:
    """
    Pictures in a grid (row by row, `columns` per row), each under its own title band; cells take the size of the
    largest picture.

    Args:
        pictures: `PIL.Image`s (e.g. from [`draw_masks`]).
        titles: one string per picture (e.g. the prompt and its scores), or `None` for no bands.
        columns: pictures per row, >= 1.

    Returns:
        A new RGB `PIL.Image`.
    """
    if not pictures:
        raise ValueError("`pictures` must hold at least one image.")
    if titles is not None and len(titles) != len(pictures):
        raise ValueError(f"Got {len(titles)} titles for {len(pictures)} pictures.")
    if columns < 1:
        raise ValueError(f"`columns` must be >= 1, got {columns}.")
    width = max(picture.width for picture in pictures)
    height = max(picture.height for picture in pictures)
    bands = [_title_band(title, width, height) for title in titles] if titles is not None else None
    band_height = max(band.height for band in bands) if bands else 0
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    grid = Image.new("RGB", (columns * width, rows * (height + band_height)), (255, 255, 255))
    for index, picture in enumerate(pictures):
        x, y = (index % columns) * width, (index // columns) * (height + band_height)
        if bands:
            grid.paste(bands[index], (x, y))
        grid.paste(picture.convert("RGB"), (x, y + band_height))
    return grid


def save_png(path: str | Path, picture: Image.Image) -> Path:
    """Write `picture` to `path` as PNG, creating the parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


def save_masks_png(path: str | Path, image, masks, **kwargs) -> Path:
    """`draw_masks(image, masks, **kwargs)` saved to `path` as PNG; returns the path."""
    return save_png(path, draw_masks(image, masks, **kwargs))


def save_heatmap_png(path: str | Path, image, heatmap, **kwargs) -> Path:
    """`draw_heatmap(image, heatmap, **kwargs)` saved to `path` as PNG; returns the path."""
    return save_png(path, draw_heatmap(image, heatmap, **kwargs))


def save_text_result_png(path: str | Path, image, mask, heatmap, **kwargs) -> Path:
    """`draw_text_result(image, mask, heatmap, **kwargs)` saved to `path` as PNG; returns the path."""
    return save_png(path, draw_text_result(image, mask, heatmap, **kwargs))


def _show(picture: Image.Image, ax, title: str | None, caller: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(f"{caller} needs matplotlib: pip install 'transformers-esam-blip[plot]'") from error
    if ax is None:
        _, ax = plt.subplots()
    ax.imshow(picture)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_masks(image, masks, ax=None, title: str | None = None, **kwargs):
    """Show `draw_masks(...)` on a matplotlib axis (created if omitted); returns the axis. Needs matplotlib."""
    return _show(draw_masks(image, masks, **kwargs), ax, title, "plot_masks")


def plot_heatmap(image, heatmap, ax=None, title: str | None = None, **kwargs):
    """Show `draw_heatmap(...)` on a matplotlib axis (created if omitted); returns the axis. Needs matplotlib."""
    return _show(draw_heatmap(image, heatmap, **kwargs), ax, title, "plot_heatmap")


def plot_text_result(image, mask, heatmap, ax=None, title: str | None = None, **kwargs):
    """
    Show `draw_text_result(...)` (without its title band) on a matplotlib axis (created if omitted), `title` as the
    axis title; returns the axis. Needs matplotlib.
    """
    return _show(draw_text_result(image, mask, heatmap, **kwargs), ax, title, "plot_text_result")


__all__ = [
    "draw_heatmap",
    "draw_masks",
    "draw_panels",
    "draw_text_result",
    "heatmap_to_image_size",
    "jet_colormap",
    "plot_heatmap",
    "plot_masks",
    "plot_text_result",
    "save_heatmap_png",
    "save_masks_png",
    "save_png",
    "save_text_result_png",
]
