"""Pictures of results: mask overlays, Grad-CAM heatmaps and text-prompt results, saved as PNG (matplotlib optional)."""

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

# Mask colours: saturated hues far apart in CIELAB. `draw_masks` gives each mask the one farthest from the mean colour
# under it, so a blue object on a blue sky gets a yellow or green outline and a red one keeps looking red under a light
# green fill.
PALETTE = [
    (255, 225, 25),  # yellow
    (0, 215, 255),  # cyan
    (255, 40, 200),  # magenta
    (60, 240, 60),  # green
    (255, 140, 0),  # orange
    (40, 80, 255),  # blue
    (230, 25, 50),  # red
]
# A mask takes a colour no earlier mask has if one is at least this fraction as far from it as the farthest colour.
_DISTINCT_COLOUR_FRACTION = 0.6
# sRGB (D65) to CIE XYZ, and the D65 white point, for the CIELAB distances of the colour choice.
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_D65_WHITE = np.array([0.9505, 1.0, 1.089])
# Outline width in pixels per pixel of the image's longer side (at least 2 px); dashes of absent masks are this many
# widths long, as are the gaps between them.
_OUTLINE_PER_PIXEL = 1 / 200
_MIN_OUTLINE = 2
_DASH_WIDTHS = 4
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# The fill is diagonal stripes one outline width wide, one every this many widths: between them the object keeps its
# own colour (a uniform tint of a contrasting colour turns a red square brown).
_HATCH_WIDTHS = 4
ABSENT_LABEL = "absent"
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


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {alpha}.")


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


def _draw_prompts(
    picture: Image.Image, points=None, labels=None, boxes=None, box_colours: Sequence[tuple[int, int, int]] = ()
) -> Image.Image:
    """
    Outline `boxes [M, 4]` (box `i` in `box_colours[i]`, `PALETTE` beyond them) and mark `points [K, 2]` on `picture`
    in place: label 1 green, 0 red (white and black rims), -1 skipped.
    """
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(picture.size) / 80))
    if boxes is not None:
        boxes = _as_numpy(boxes).astype(np.float32)
        if boxes.size and (boxes.ndim not in (1, 2) or boxes.shape[-1] != 4):
            raise ValueError(f"`boxes` must be [M, 4] (x1, y1, x2, y2) image pixels, got shape {boxes.shape}.")
        for index, box in enumerate(boxes.reshape(-1, 4)):
            colour = box_colours[index] if index < len(box_colours) else PALETTE[index % len(PALETTE)]
            draw.rectangle(box.tolist(), outline=colour, width=max(2, radius // 2))
    if points is not None:
        for (x, y), label in zip(*_prompt_arrays(points, labels)):
            if label < 0:
                continue
            fill = _FOREGROUND_POINT if label == 1 else _BACKGROUND_POINT
            # A white ring inside a black one: the dot stands out on light, dark and same-coloured objects alike.
            ring = radius + 1
            draw.ellipse([x - ring, y - ring, x + ring, y + ring], fill=(0, 0, 0))
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return picture


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """`[..., 3]` sRGB in [0, 255] → CIELAB `[..., 3]` (D65), the space in which colour distances are compared."""
    values = np.asarray(rgb, dtype=np.float64) / 255
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def contrast_colour(
    mean_colour: Sequence[float], palette: Sequence[Sequence[int]] = PALETTE, taken: Sequence[int] = ()
) -> int:
    """
    The index of the `palette` colour that stands out most against `mean_colour`: the farthest in CIELAB, or, when a
    colour not in `taken` is nearly as far (at least 0.6 of the largest distance), the farthest such colour, so that
    neighbouring masks differ. Deterministic: ties go to the earlier palette entry.

    Args:
        mean_colour: `(R, G, B)` in [0, 255], e.g. the mean of the pixels under a mask.
        palette: candidate `(R, G, B)` colours.
        taken: indices of colours already given to other masks.

    Returns:
        `int`: an index into `palette`.
    """
    distances = np.linalg.norm(_to_lab(np.asarray(palette, dtype=np.float64)) - _to_lab(mean_colour), axis=-1)
    order = np.argsort(-distances, kind="stable")
    for index in order:
        if index not in taken and distances[index] >= _DISTINCT_COLOUR_FRACTION * distances[order[0]]:
            return int(index)
    return int(order[0])


def _window_counts(mask: np.ndarray, radius: int) -> np.ndarray:
    """
    How many pixels of `mask [H, W]` are set in the `(2 radius + 1)`-pixel square around each pixel, separably with
    running sums; pixels beyond the array count as unset.
    """
    size = 2 * radius + 1
    counts = mask.astype(np.int32)
    for axis in (0, 1):
        values = np.moveaxis(counts, axis, 0)
        # One extra leading zero makes the cumulative sum start at 0, so window sums are differences of two entries.
        sums = np.cumsum(np.pad(values, ((radius + 1, radius), (0, 0))), axis=0)
        counts = np.moveaxis(sums[size:] - sums[:-size], 0, axis)
    return counts


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` eroded by a `(2 radius + 1)`-pixel square; beyond the array is background, so edges there are outlined."""
    return _window_counts(mask, radius) == (2 * radius + 1) ** 2


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of `mask [H, W]`'s bounding box as slices, `None` for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _outline_steps(contour: np.ndarray) -> np.ndarray:
    """
    The position along the outline of each pixel of a one-pixel `contour [H, W]`: breadth-first steps over
    8-neighbours from the first pixel (row-major) of each connected piece, so that both ways round a closed outline
    count up from there.
    """
    rows, cols = (values.tolist() for values in np.nonzero(contour))
    pixels = set(zip(rows, cols))
    steps: dict[tuple[int, int], int] = {}
    for start in zip(rows, cols):
        if start in steps:
            continue
        steps[start] = 0
        queue = deque([start])
        while queue:
            row, col = queue.popleft()
            step = steps[row, col] + 1
            for d_row, d_col in _NEIGHBOURS:
                neighbour = (row + d_row, col + d_col)
                if neighbour in pixels and neighbour not in steps:
                    steps[neighbour] = step
                    queue.append(neighbour)
    positions = np.zeros(contour.shape, dtype=np.int64)
    positions[rows, cols] = [steps[pixel] for pixel in zip(rows, cols)]
    return positions


def _dashes(mask: np.ndarray, ring: np.ndarray, width: int) -> np.ndarray:
    """
    The pixels of the outline `ring` (the outer `width` pixels of `mask`) drawn for a dashed line: the mask's one-pixel
    edge is cut by position along the outline into dashes and gaps, and each ring pixel follows the edge pixels
    within `width - 1` of it. A dash grows by up to `width - 1` at either end that way, so it is cut that much shorter.
    """
    contour = mask & ~_erode(mask, 1)
    period = 2 * _DASH_WIDTHS * width
    on = contour & (_outline_steps(contour) % period < _DASH_WIDTHS * width - (width - 1))
    return ring & (_window_counts(on, width - 1) > 0)


def _absent_flags(absent, count: int) -> np.ndarray:
    """`absent` (None, one bool for every mask, or `count` bools) as a `[count]` bool array."""
    if absent is None:
        return np.zeros(count, dtype=bool)
    flags = _as_numpy(absent)
    if flags.dtype != bool:
        raise TypeError(f"`absent` must be booleans (one per mask, True where the object is absent), got {absent!r}.")
    if flags.ndim == 0:
        return np.full(count, bool(flags))
    if flags.shape != (count,):
        raise ValueError(f"`absent` must hold one bool per mask ({count}), got shape {flags.shape}.")
    return flags


def _outline_width(outline_width: int | None, shape: tuple[int, int]) -> int:
    if outline_width is None:
        return max(_MIN_OUTLINE, round(max(shape) * _OUTLINE_PER_PIXEL))
    if not isinstance(outline_width, (int, np.integer)) or isinstance(outline_width, bool) or outline_width < 1:
        raise ValueError(f"`outline_width` must be an int >= 1 (pixels) or None, got {outline_width!r}.")
    return int(outline_width)


def _label_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int, int]:
    """`(width, height, padding)` of the box [`_draw_label`] draws."""
    _, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, font.size // 5)
    return right + 2 * pad, bottom + 2 * pad, pad


def _draw_label(draw: ImageDraw.ImageDraw, text: str, corner: tuple[int, int], colour, font) -> None:
    """
    `text` on a box of `colour` (black or white letters, whichever contrasts), just above the point `corner` (a mask's
    top-left) or, where there is no room above, just below it; always inside the picture.
    """
    width, height, pad = _label_size(draw, text, font)
    picture_width, picture_height = draw.im.size
    x = min(max(0, corner[0]), max(0, picture_width - width))
    y = corner[1] - height if corner[1] >= height else corner[1]
    y = min(max(0, y), max(0, picture_height - height))
    ink = (0, 0, 0) if _to_lab(colour)[0] > 60 else (255, 255, 255)
    draw.rectangle([x, y, x + width - 1, y + height - 1], fill=tuple(colour))
    draw.text((x + pad, y + pad), text, fill=ink, font=font)


def draw_masks(
    image: Image.Image | np.ndarray | torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    points: list | torch.Tensor | None = None,
    labels: list | torch.Tensor | None = None,
    boxes: list | torch.Tensor | None = None,
    alpha: float = 0.6,
    colours: Sequence[Sequence[int]] | None = None,
    absent: Sequence[bool] | bool | None = None,
    outline_width: int | None = None,
) -> Image.Image:
    """
    Draw each mask as an outline plus a light fill, outline boxes and mark points.

    Each mask gets the `PALETTE` colour that contrasts most with the mean colour of the pixels under it (see
    [`contrast_colour`]). The outline runs along the inside of the mask's edge (the pixels outside every mask keep
    their values); the fill is thin diagonal stripes, so that between them the object keeps its own colour. A mask
    marked `absent` (e.g. a text whose `is_match` is False) gets no fill, a dashed outline and the word "absent" at
    its top-left corner (at the picture's top-left when the mask is empty).

    Args:
        image: the original image (PIL, HWC/CHW array or tensor).
        masks: `[N, H, W]` or `[H, W]` booleans at the image size (e.g. from `post_process_masks`).
        points: `[K, 2]` (x, y) image pixels; foreground points are drawn as filled green dots, background ones red,
            padding (label -1) not at all.
        labels: `[K]` point labels (1 foreground, 0 background, -1 padding); all foreground if omitted.
        boxes: `[M, 4]` (x1, y1, x2, y2) image pixels; box `i` in the colour of mask `i`.
        alpha: opacity of the fill's stripes, in [0, 1] (they cover a quarter of the mask).
        colours: `(R, G, B)` colour of each mask (cycled), instead of the contrast choice.
        absent: one bool per mask (or one for all), True for a "no match" result.
        outline_width: outline width in pixels; default 1/200 of the image's longer side, at least 2.

    Returns:
        A new RGB `PIL.Image` of the image's size.
    """
    _check_alpha(alpha)
    palette = None
    if colours is not None:
        palette = [tuple(int(c) for c in colour) for colour in colours]
        if not palette or any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for colour in palette):
            raise ValueError(f"`colours` must be a non-empty list of (R, G, B) values in [0, 255], got {colours!r}.")
    canvas = _to_rgb_array(image)
    masks = _as_numpy(masks)
    masks = masks[None] if masks.ndim == 2 else masks
    if masks.ndim != 3 or masks.shape[1:] != canvas.shape[:2]:
        raise ValueError(
            f"`masks` must be [N, {canvas.shape[0]}, {canvas.shape[1]}] (the image size), got {masks.shape}."
        )
    masks = masks.astype(bool)
    flags = _absent_flags(absent, len(masks))
    width = _outline_width(outline_width, canvas.shape[:2])

    # Each mask is drawn inside its bounding box only: a photo's many small masks stay fast.
    boxes_of_masks = [_bounding_box(mask) for mask in masks]
    mask_colours, taken = [], []
    for index, (mask, box) in enumerate(zip(masks, boxes_of_masks)):
        if palette is not None:
            mask_colours.append(palette[index % len(palette)])
            continue
        choice = (
            index % len(PALETTE) if box is None else contrast_colour(canvas[box][mask[box]].mean(axis=0), taken=taken)
        )
        taken.append(choice)
        mask_colours.append(PALETTE[choice])
    # Fills first, then every outline, so that no fill covers another mask's edge.
    blended = canvas.astype(np.float32)
    for mask, box, colour, is_absent in zip(masks, boxes_of_masks, mask_colours, flags):
        if box is None or is_absent:
            continue
        rows, cols = (np.arange(part.start, part.stop) for part in box)
        stripes = (rows[:, None] + cols[None, :]) % (_HATCH_WIDTHS * width) < width
        region, filled = blended[box], mask[box] & stripes
        region[filled] = (1 - alpha) * region[filled] + alpha * np.asarray(colour, dtype=np.float32)
    picture = blended.round().astype(np.uint8)
    for mask, box, colour, is_absent in zip(masks, boxes_of_masks, mask_colours, flags):
        if box is None:
            continue
        ring = mask[box] & ~_erode(mask[box], width)
        picture[box][_dashes(mask[box], ring, width) if is_absent else ring] = colour
    picture = Image.fromarray(picture)

    if flags.any():
        draw = ImageDraw.Draw(picture)
        font = ImageFont.load_default(max(10, round(min(canvas.shape[:2]) / 20)))
        empty_slot = 0
        for box, colour, is_absent in zip(boxes_of_masks, mask_colours, flags):
            if not is_absent:
                continue
            if box is not None:
                corner = (box[1].start, box[0].start)
            else:  # an empty mask has no place of its own: its label goes to the top-left corner, one under another
                empty_slot += 1
                corner = (0, empty_slot * _label_size(draw, ABSENT_LABEL, font)[1])
            _draw_label(draw, ABSENT_LABEL, corner, colour, font)
    return _draw_prompts(picture, points, labels, boxes, box_colours=mask_colours)


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
    alpha: float = 0.6,
    absent: bool = False,
    heatmap_alpha: float = 0.5,
) -> Image.Image:
    """
    One text prompt's result side by side: on the left the mask drawn over the image (as [`draw_masks`] does), on the
    right the heatmap the points came from; both show the points (salient green, background red), so a bad mask can
    be traced to its heatmap or its points. An optional title band sits above both panels.

    Args:
        image: the original image (PIL, HWC/CHW array or tensor), `H x W`.
        mask: `[H, W]` booleans (e.g. the pipeline's `"mask"`).
        heatmap: `[g, g]` scores (e.g. the pipeline's `"heatmap"`).
        points: `[K, 2]` (x, y) image pixels (e.g. the pipeline's `"points"`).
        labels: `[K]` 1 salient, 0 background, -1 padding; all 1 if omitted.
        title: text of the band above the panels (e.g. the prompt and its scores); no band if `None`.
        alpha: opacity of the stripes of the mask's fill, in [0, 1].
        absent: True for a "no match" result (the text's `is_match` is False): the mask is drawn with a dashed
            outline, no fill and the word "absent".
        heatmap_alpha: weight of the heatmap colours, in [0, 1].

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
    _check_alpha(heatmap_alpha, "heatmap_alpha")
    left = draw_masks(canvas, mask, points=points, labels=labels, alpha=alpha, absent=absent)
    right = _draw_prompts(draw_heatmap(canvas, heatmap, alpha=heatmap_alpha), points, labels)
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
    """`draw_masks(image, masks, **kwargs)` (e.g. `absent=[...]`) saved to `path` as PNG; returns the path."""
    return save_png(path, draw_masks(image, masks, **kwargs))


def save_heatmap_png(path: str | Path, image, heatmap, **kwargs) -> Path:
    """`draw_heatmap(image, heatmap, **kwargs)` saved to `path` as PNG; returns the path."""
    return save_png(path, draw_heatmap(image, heatmap, **kwargs))


def save_text_result_png(path: str | Path, image, mask, heatmap, **kwargs) -> Path:
    """`draw_text_result(image, mask, heatmap, **kwargs)` (e.g. `absent=True`) saved to `path` as PNG; returns it."""
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
    """
    Show `draw_masks(image, masks, **kwargs)` (e.g. `absent=[...]`) on a matplotlib axis (created if omitted); returns
    the axis. Needs matplotlib.
    """
    return _show(draw_masks(image, masks, **kwargs), ax, title, "plot_masks")


def plot_heatmap(image, heatmap, ax=None, title: str | None = None, **kwargs):
    """Show `draw_heatmap(...)` on a matplotlib axis (created if omitted); returns the axis. Needs matplotlib."""
    return _show(draw_heatmap(image, heatmap, **kwargs), ax, title, "plot_heatmap")


def plot_text_result(image, mask, heatmap, ax=None, title: str | None = None, **kwargs):
    """
    Show `draw_text_result(image, mask, heatmap, **kwargs)` (e.g. `absent=True`; without its title band) on a
    matplotlib axis (created if omitted), `title` as the axis title; returns the axis. Needs matplotlib.
    """
    return _show(draw_text_result(image, mask, heatmap, **kwargs), ax, title, "plot_text_result")


__all__ = [
    "ABSENT_LABEL",
    "PALETTE",
    "contrast_colour",
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
