"""Binary mask codecs for referring-segmentation data: images, COCO RLE (uncompressed and compressed), polygons."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from ..mask_generation_utils import mask_to_rle, rle_to_mask

# Storage convention of every mask this package writes: a mode "L" PNG, 0 background, 255 foreground.
MASK_MODE = "L"
MASK_FOREGROUND = 255


def mask_to_bool(mask: Any, name: str = "mask") -> np.ndarray:
    """
    Any common form of a binary mask as a bool array: non-zero pixels are foreground.

    Args:
        mask: a PIL image (mode "1", "L", "P" (palette index, 0 = background), "I", or a colour mode, where any
            non-zero colour channel is foreground and alpha is ignored), or a 2-D numpy array / torch tensor (a
            trailing or leading channel axis of size 1 is accepted).
        name (`str`): how errors refer to the mask.

    Returns:
        `np.ndarray` of shape `(H, W)`, bool.
    """
    if isinstance(mask, PIL.Image.Image):
        array = np.asarray(mask)
        if mask.mode in ("RGBA", "LA", "PA"):
            array = array[..., :-1]
        return array.any(axis=-1) if array.ndim == 3 else array != 0
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"`{name}` must be a PIL image, a numpy array or a torch tensor, got {type(mask).__name__}.")
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
    if mask.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (H, W) mask, got shape {mask.shape}.")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` has dtype {mask.dtype}; expected bool, integer or float.")
    return mask != 0


def bool_to_mask_image(mask: np.ndarray) -> PIL.Image.Image:
    """`(H, W)` bool mask → mode "L" PIL image with 0 / 255, the storage form of the `mask` columns."""
    return PIL.Image.fromarray(np.where(mask, MASK_FOREGROUND, 0).astype(np.uint8), mode=MASK_MODE)


def _decode_rle_string(counts: str) -> list[int]:
    """Counts of a compressed COCO RLE string (pycocotools `rleFrString`): 5-bit groups, deltas after the 3rd."""
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError(f"Compressed RLE counts {counts!r} end in the middle of a number.")
            group = ord(counts[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def _encode_rle_string(counts: Sequence[int]) -> str:
    """Inverse of [`_decode_rle_string`] (pycocotools `rleToString`)."""
    characters = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(characters)


def decode_rle(rle: Any, name: str = "mask") -> np.ndarray:
    """
    Decode a COCO run-length encoding, as pycocotools writes it: `{"size": [H, W], "counts": ...}` with the pixels in
    column-major order and counts alternating between runs of 0 and 1, starting with 0. `counts` is a list of ints
    (uncompressed) or a string / bytes (compressed, pycocotools' `frPyObjects` / `encode` output).

    Returns:
        `np.ndarray` of shape `(H, W)`, bool.
    """
    if not isinstance(rle, dict) or not {"size", "counts"} <= rle.keys():
        raise ValueError(
            f"`{name}` must be a COCO RLE dict {{'size': [H, W], 'counts': [...] or '...'}}, got {_describe(rle)}."
        )
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or any(int(v) != v or v < 0 for v in size):
        raise ValueError(f"`{name}['size']` must be [height, width] with non-negative ints, got {size!r}.")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _decode_rle_string(counts)
    if not isinstance(counts, (list, tuple, np.ndarray)) or any(int(c) != c or c < 0 for c in counts):
        raise ValueError(f"`{name}['counts']` must be non-negative ints or a compressed RLE string, got {counts!r}.")
    height, width = (int(v) for v in size)
    try:
        return rle_to_mask({"size": [height, width], "counts": [int(c) for c in counts]}).numpy()
    except ValueError as error:
        raise ValueError(f"`{name}` is not a valid RLE: {error}") from None


def encode_rle(mask: np.ndarray, compressed: bool = False) -> dict[str, Any]:
    """
    COCO RLE of an `(H, W)` bool mask: `{"size": [H, W], "counts": [...]}`, or with `compressed=True` the counts as
    pycocotools' compact string (what `pycocotools.mask.encode` returns, as `str` rather than `bytes`).
    """
    rle = mask_to_rle(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])[0]
    return {"size": rle["size"], "counts": _encode_rle_string(rle["counts"])} if compressed else rle


def polygons_to_mask(polygons: Any, height: int, width: int, name: str = "mask") -> np.ndarray:
    """
    Rasterise COCO polygons (a list of `[x1, y1, x2, y2, ...]` in image pixels, or one such flat list) into an
    `(H, W)` bool mask, their union, with PIL (no antialiasing, so the mask is exactly what PIL fills).
    """
    if isinstance(polygons, (list, tuple)) and polygons and all(isinstance(v, (int, float)) for v in polygons):
        polygons = [polygons]
    if not isinstance(polygons, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of polygons [x1, y1, x2, y2, ...], got {_describe(polygons)}.")
    canvas = PIL.Image.new("1", (width, height), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    for i, polygon in enumerate(polygons):
        if (
            not isinstance(polygon, (list, tuple))
            or len(polygon) < 6
            or len(polygon) % 2
            or not all(isinstance(v, (int, float)) for v in polygon)
        ):
            raise ValueError(
                f"`{name}[{i}]` must be a flat list [x1, y1, x2, y2, ...] of at least 3 (x, y) points, got "
                f"{_describe(polygon)}."
            )
        draw.polygon([float(v) for v in polygon], fill=1)
    return np.asarray(canvas).copy()


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


__all__ = [
    "MASK_FOREGROUND",
    "MASK_MODE",
    "bool_to_mask_image",
    "decode_rle",
    "encode_rle",
    "mask_to_bool",
    "polygons_to_mask",
]
