"""Binary mask codecs for referring-segmentation data: images, COCO RLE (uncompressed and compressed), polygons."""

import warnings
from typing import Any

import numpy as np
import PIL.Image
import pycocotools.mask as mask_utils
import torch

from ..mask_generation_utils import mask_to_rle

# Storage convention of every mask this package writes: a mode "L" PNG, 0 background, 255 foreground.
MASK_MODE = "L"
MASK_FOREGROUND = 255
# pycocotools' compiled `decode` builds its array the numpy 1 way, which numpy 2 reports on every call.
_PYCOCOTOOLS_NUMPY2_WARNING = "__array__ implementation doesn't accept a copy keyword"


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


def _check_size(size: Any, name: str) -> tuple[int, int]:
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0 for v in size)
    ):
        raise ValueError(f"`{name}['size']` must be [height, width] with non-negative ints, got {size!r}.")
    return int(size[0]), int(size[1])


def _decode(rle: dict[str, Any]) -> np.ndarray:
    """`pycocotools.mask.decode` of one compressed RLE as an `(H, W)` bool array."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PYCOCOTOOLS_NUMPY2_WARNING, category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def decode_rle(rle: Any, name: str = "mask") -> np.ndarray:
    """
    Decode a COCO run-length encoding with `pycocotools`: `{"size": [H, W], "counts": ...}` with the pixels in
    column-major order and counts alternating between runs of 0 and 1, starting with 0. `counts` is a list of ints
    (uncompressed, as COCO stores crowd masks; the counts must cover exactly `H * W` pixels) or a string / bytes
    (compressed, pycocotools' `frPyObjects` / `encode` output).

    Returns:
        `np.ndarray` of shape `(H, W)`, bool.

    Raises:
        `ValueError`: `rle` is not such a dict, its size is not `[H, W]`, or its counts do not decode to `H * W`
            pixels.
    """
    if not isinstance(rle, dict) or not {"size", "counts"} <= rle.keys():
        raise ValueError(
            f"`{name}` must be a COCO RLE dict {{'size': [H, W], 'counts': [...] or '...'}}, got {_describe(rle)}."
        )
    height, width = _check_size(rle["size"], name)
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if isinstance(counts, bytes):
        compressed = {"size": [height, width], "counts": counts}
    else:
        if not isinstance(counts, (list, tuple, np.ndarray)) or any(
            isinstance(c, bool) or not isinstance(c, (int, float, np.integer)) or int(c) != c or c < 0 for c in counts
        ):
            raise ValueError(
                f"`{name}['counts']` must be non-negative ints or a compressed RLE string, got {_describe(counts)}."
            )
        # pycocotools pads short counts with background; an uncompressed RLE must describe every pixel.
        total = sum(int(c) for c in counts)
        if total != height * width:
            raise ValueError(
                f"`{name}` is not a valid RLE: its counts sum to {total}, expected height * width = {height * width}."
            )
        compressed = mask_utils.frPyObjects(
            {"size": [height, width], "counts": [int(c) for c in counts]}, height, width
        )
    try:
        return _decode(compressed)
    except ValueError as error:
        raise ValueError(f"`{name}` is not a valid RLE ({error}): {_describe(rle)}.") from None


def encode_rle(mask: np.ndarray, compressed: bool = False) -> dict[str, Any]:
    """
    COCO RLE of an `(H, W)` bool mask: `{"size": [H, W], "counts": [...]}` (uncompressed, column-major run lengths
    starting with background), or with `compressed=True` pycocotools' compact string (`pycocotools.mask.encode`'s
    output, with the counts as `str` rather than `bytes`, so the dict is JSON-ready).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be a 2-D (H, W) array, got shape {mask.shape}.")
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return mask_to_rle(torch.from_numpy(np.ascontiguousarray(mask))[None])[0]


def polygons_to_mask(polygons: Any, height: int, width: int, name: str = "mask") -> np.ndarray:
    """
    Rasterise COCO polygons (a list of `[x1, y1, x2, y2, ...]` in image pixels, or one such flat list) into an
    `(H, W)` bool mask, their union, exactly as COCO does (`pycocotools.mask.frPyObjects`). An empty list is an empty
    mask.

    Raises:
        `TypeError` / `ValueError`: a polygon that is not a flat list of numbers, has an odd number of coordinates, or
            has fewer than 3 points.
    """
    polygons = _check_polygons(polygons, name)
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([[float(v) for v in polygon] for polygon in polygons], height, width)
    return _decode(mask_utils.merge(rles))


def check_segmentation(segmentation: Any, height: int, width: int, name: str = "segmentation") -> None:
    """
    Check a COCO `segmentation` against its image without decoding it: an RLE dict's `size` must be the image's
    `[height, width]`; polygons must be flat lists of an even number (at least 6) of coordinates.

    Raises:
        `ValueError` / `TypeError` naming `name`, what was expected and what was found.
    """
    if isinstance(segmentation, dict):
        if not {"size", "counts"} <= segmentation.keys():
            raise ValueError(
                f"`{name}` must be a COCO RLE dict {{'size': [H, W], 'counts': ...}} or a list of polygons, got "
                f"{_describe(segmentation)}."
            )
        size = _check_size(segmentation["size"], name)
        if size != (height, width):
            raise ValueError(
                f"`{name}` is an RLE of size {size[0]}x{size[1]} (HxW) but its image is {height}x{width}; an RLE must "
                "have the size of its image."
            )
        return
    _check_polygons(segmentation, name)


def segmentation_to_mask(segmentation: Any, height: int, width: int, name: str = "segmentation") -> np.ndarray:
    """
    A COCO annotation's `segmentation` (polygons, or an uncompressed or compressed RLE) as the `(H, W)` bool mask of
    its `height` x `width` image, decoded by `pycocotools` after [`check_segmentation`].
    """
    check_segmentation(segmentation, height, width, name)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, name)
    return polygons_to_mask(segmentation, height, width, name)


def _check_polygons(polygons: Any, name: str) -> list:
    """COCO polygons as a list of flat coordinate lists (one flat list is one polygon), checked."""
    if isinstance(polygons, (list, tuple)) and polygons and all(_is_number(v) for v in polygons):
        polygons = [polygons]
    if not isinstance(polygons, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of polygons [x1, y1, x2, y2, ...], got {_describe(polygons)}.")
    for i, polygon in enumerate(polygons):
        if not isinstance(polygon, (list, tuple)) or not all(_is_number(v) for v in polygon):
            raise ValueError(
                f"`{name}[{i}]` must be a flat list of numbers [x1, y1, x2, y2, ...], got {_describe(polygon)}."
            )
        if len(polygon) % 2:
            raise ValueError(
                f"`{name}[{i}]` has an odd number of coordinates ({len(polygon)}); a polygon is a flat list of (x, y) "
                f"pairs [x1, y1, x2, y2, ...], got {_describe(polygon)}."
            )
        if len(polygon) < 6:
            raise ValueError(f"`{name}[{i}]` must have at least 3 (x, y) points, got {_describe(polygon)}.")
    return list(polygons)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


__all__ = [
    "MASK_FOREGROUND",
    "MASK_MODE",
    "bool_to_mask_image",
    "check_segmentation",
    "decode_rle",
    "encode_rle",
    "mask_to_bool",
    "polygons_to_mask",
    "segmentation_to_mask",
]
