"""Image processor for EsamBlip: EfficientSAM and BLIP pixels, point/box prompts, mask post-processing, AMG hooks."""

import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import PIL.Image
import torch
from torch.nn import functional as F
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
)
from transformers.processing_utils import Unpack
from transformers.utils import TensorType, logging

from .best_mask import select_best_masks
from .builtin import BuiltinNamesMixin
from .mask_generation_utils import (
    RLE,
    DeferredMaskLogits,
    build_point_grid,
    compute_crop_boxes,
    deduplicate_masks,
    filter_crop_masks,
    grid_points_per_layer,
    no_mask_hint,
    upsample_mask_logits,
)
from .prompts import (
    MASK_PROMPT_LOGIT,
    PADDING_COORDINATE,
    VALID_LABELS,
    PromptLabel,
    check_finite,
    rescale_coordinates,
)

logger = logging.get_logger(__name__)

ImageLike = PIL.Image.Image | np.ndarray | torch.Tensor
SizeLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


def _sizes_per_entry(original_sizes: SizeLike, num_entries: int, what: str) -> list[tuple[int, int]]:
    """
    `(height, width)` for each of `num_entries` entries of `what` (images, or texts of one image): one size per entry,
    or one size shared by all. Raises a `ValueError` naming both counts otherwise.
    """
    sizes = _check_original_sizes(original_sizes)
    if len(sizes) == 1 and num_entries > 1:
        sizes = sizes * num_entries
    if len(sizes) != num_entries:
        raise ValueError(
            f"Got {what} for {num_entries} images (or texts) but {len(sizes)} `original_sizes`; give one size per "
            f"entry of `{what}`, or one size for all."
        )
    return sizes


def _check_original_sizes(original_sizes: Any) -> list[tuple[int, int]]:
    """`original_sizes` as `(height, width)` pairs of positive integers (a TypeError/ValueError naming it otherwise)."""
    if isinstance(original_sizes, (torch.Tensor, np.ndarray)):
        if original_sizes.dtype == bool or original_sizes.dtype == torch.bool:
            raise TypeError("`original_sizes` must hold integer (height, width) pairs, got booleans.")
        original_sizes = original_sizes.tolist()
    if not isinstance(original_sizes, (list, tuple)):
        raise TypeError(
            f"`original_sizes` must be [B, 2] (height, width) pairs (a list, array or tensor), got "
            f"{type(original_sizes).__name__}."
        )
    sizes = []
    for size in original_sizes:
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"`original_sizes` must hold (height, width) pairs, got {list(original_sizes)}.")
        for side in size:
            if isinstance(side, bool) or not isinstance(side, (int, float, np.integer, np.floating)):
                raise TypeError(f"`original_sizes` must hold integer sides, got {side!r} in {list(size)}.")
            if not math.isfinite(side) or side != int(side) or side < 1:
                raise ValueError(
                    f"`original_sizes` must hold positive integer (height, width) pairs, got {list(size)}."
                )
        sizes.append((int(size[0]), int(size[1])))
    if not sizes:
        raise ValueError("`original_sizes` is empty; give one (height, width) per image.")
    return sizes


# PIL raises DecompressionBombError above twice its MAX_IMAGE_PIXELS; the same bound keeps a bad array from
# allocating tens of GB in the resize.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# Modes whose conversion to 8-bit RGB would clip or rescale values silently.
_UNSUPPORTED_PIL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

_POINTS_LAYOUT = "images -> queries -> points -> (x, y), i.e. [B, Q, P, 2]"
_LABELS_LAYOUT = "images -> queries -> point labels, i.e. [B, Q, P]"
_BOXES_LAYOUT = "images -> queries -> [x1, y1, x2, y2], i.e. [B, Q, 4]"
_MASKS_LAYOUT = "images -> queries -> one 2-D mask per query, i.e. [B, Q, H, W]"
# Single-channel PIL modes a drawn mask comes in: 8-bit gray (0/255) and 1-bit.
_MASK_PIL_MODES = ("L", "1")


class _PixelSettings(TypedDict, total=False):
    """The pixel settings an image processor stores and every `preprocess` call may override."""

    do_resize: bool | None
    do_rescale: bool | None
    rescale_factor: float | int | None
    do_normalize: bool | None
    image_mean: Sequence[float | int] | None
    image_std: Sequence[float | int] | None
    blip_image_mean: Sequence[float | int] | None
    blip_image_std: Sequence[float | int] | None


class EsamBlipImagesKwargs(_PixelSettings, total=False):
    """
    Per-call keyword arguments of [`EsamBlipImageProcessor.preprocess`] (the processor's `images_kwargs`): the pixel
    settings (`None` keeps the stored value) and the channel axis of the input.
    """

    input_data_format: str | ChannelDimension | None


class EsamBlipImageProcessorKwargs(_PixelSettings, total=False):
    """Settings of [`EsamBlipImageProcessor`]; `from_pretrained(..., **kwargs)` overrides the saved ones with these."""

    sam_image_size: int | None
    blip_image_size: int | None
    max_num_points: int
    max_image_pixels: int | None
    mask_input_size: int


_FLAGS = ("do_resize", "do_rescale", "do_normalize")
_CHANNEL_STATS = ("image_mean", "image_std", "blip_image_mean", "blip_image_std")


def _called_by_mask_generation_pipeline(frame: Any) -> bool:
    """
    Whether `frame` is `transformers`' `MaskGenerationPipeline._forward`. That method upsamples every mask with
    `post_process_masks` before `filter_masks` sees the thresholds; recognising it lets the upsampling wait until
    the filters have run, without changing the pipeline (a subclass that overrides `_forward` gets upsampled logits).
    """
    return (
        frame is not None
        and frame.f_code.co_name == "_forward"
        and frame.f_globals.get("__name__") == "transformers.pipelines.mask_generation"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _nested_numbers(
    value: Any, name: str, levels: tuple[str, ...], layout: str, leaf_size: int | None, path: str = ""
) -> list:
    """Validate a nested list/array prompt level by level and return it as nested Python lists of floats."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"`{name}{path}` must be a list of {levels[0]}, got {type(value).__name__}. Expected nesting: {layout}."
        )
    if len(levels) > 1:
        return [
            _nested_numbers(item, name, levels[1:], layout, leaf_size, f"{path}[{i}]") for i, item in enumerate(value)
        ]
    if leaf_size is not None and len(value) != leaf_size:
        raise ValueError(
            f"`{name}{path}` must hold {leaf_size} {levels[0]}, got {len(value)}. Expected nesting: {layout}."
        )
    for item in value:
        if not _is_number(item):
            raise TypeError(f"`{name}{path}` must hold numbers, got {type(item).__name__}. Expected nesting: {layout}.")
    return [float(item) for item in value]


def _per_image(value: Any, name: str, num_images: int, ndim: int, layout: str) -> Any:
    """Check the batch level of a prompt: one entry per image (arrays/tensors must be `ndim`-dimensional)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != ndim:
            raise ValueError(f"`{name}` must be {ndim}-dimensional ({layout}), got shape {tuple(value.shape)}.")
    elif not isinstance(value, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a nested list, a numpy array or a torch tensor ({layout}), got {type(value).__name__}."
        )
    if len(value) != num_images:
        raise ValueError(
            f"`{name}` holds prompts for {len(value)} images but {num_images} images were given; give one entry per "
            f"image ({layout})."
        )
    return value


def _mask_tensor(mask: Any, name: str) -> torch.Tensor:
    """One mask prompt as a 2-D CPU tensor (bool, int64/uint8 or float32): TypeError/ValueError naming it otherwise."""
    if isinstance(mask, PIL.Image.Image):
        if mask.mode not in _MASK_PIL_MODES:
            raise ValueError(
                f"`{name}` is a PIL image of mode {mask.mode!r}; a mask must be single-channel, mode 'L' (0 and 255) "
                "or '1'. Convert it, e.g. `mask.convert('L')`."
            )
        return torch.from_numpy(np.array(mask))
    if isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "buif":
            raise TypeError(f"`{name}` has dtype {mask.dtype}; a mask holds booleans, integers or float logits.")
        if mask.dtype.kind in "ui" and mask.dtype != np.uint8:
            mask = mask.astype(np.int64)
        # A copy: the array may be read-only (`np.asarray` of a PIL image), which torch warns about.
        tensor = torch.from_numpy(np.array(mask))
    elif isinstance(mask, torch.Tensor):
        tensor = mask.detach().cpu()
        if tensor.is_complex():
            raise TypeError(f"`{name}` has dtype {tensor.dtype}; a mask holds booleans, integers or float logits.")
    else:
        raise TypeError(
            f"`{name}` must be a 2-D numpy array, torch tensor or PIL image (mode 'L' or '1'), got "
            f"{type(mask).__name__}. Expected nesting: {_MASKS_LAYOUT}."
        )
    if tensor.ndim == 3 and min(tensor.shape[0], tensor.shape[-1]) in (3, 4):
        raise ValueError(
            f"`{name}` has shape {tuple(tensor.shape)}, a multi-channel (RGB/RGBA) image; a mask is single-channel "
            "2-D (H, W)."
        )
    if tensor.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D (H, W), got shape {tuple(tensor.shape)}. Expected nesting: {_MASKS_LAYOUT}."
        )
    if tensor.is_floating_point():
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"`{name}` holds NaN or infinite values; mask logits must be finite.")
    elif tensor.dtype not in (torch.bool, torch.uint8):
        tensor = tensor.long()
    return tensor


def _binary_mask(mask: torch.Tensor, name: str) -> torch.Tensor | None:
    """
    `mask` as a bool tensor when it is binary (booleans; integers all 0/1 or all 0/255; floats all 0/1), `None` for
    float logits; integers of other values raise a `ValueError` naming `name`.
    """
    if mask.dtype == torch.bool:
        return mask
    values = torch.unique(mask)
    if bool(torch.isin(values, values.new_tensor([0, 1])).all()):
        return mask == 1
    if mask.is_floating_point():
        return None
    if bool(torch.isin(values, values.new_tensor([0, 255])).all()):
        return mask == 255
    shown = ", ".join(str(value) for value in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    raise ValueError(
        f"`{name}` is an integer mask with values {{{shown}}}; an integer mask must be binary, only 0 and 1 or only 0 "
        "and 255 (pass float logits for a soft mask)."
    )


def _channel_stats(values: Any, name: str, positive: bool = False) -> tuple[float, float, float]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
        raise TypeError(f"`{name}` must be a sequence of 3 numbers (RGB), got {values!r}.")
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
        raise ValueError(
            f"`{name}` must hold 3 {'positive ' if positive else ''}values (RGB), all finite, got {values}."
        )
    return values


def _check_pixel_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Validated pixel settings (`_PixelSettings`): `TypeError` for a wrong type, `ValueError` for a wrong value."""
    checked = {}
    for name, value in settings.items():
        if name in _FLAGS:
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r}).")
        elif name == "rescale_factor":
            if not _is_number(value):
                raise TypeError(f"`rescale_factor` must be a number, got {type(value).__name__} ({value!r}).")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`rescale_factor` must be a positive finite number, got {value!r}.")
            value = float(value)
        else:
            value = _channel_stats(value, name, positive=name.endswith("_std"))
        checked[name] = value
    return checked


def _rescale(pixels: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """8-bit pixels (as float32) times `rescale_factor` when `do_rescale` is set."""
    if not settings["do_rescale"]:
        return pixels
    # Dividing by the reciprocal keeps the default 1/255 bit-identical to EfficientSAM's and ToTensor's `/ 255`.
    return pixels / (1 / settings["rescale_factor"])


def _normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


class EsamBlipImageProcessor(BuiltinNamesMixin, BaseImageProcessor):
    r"""
    Image processor of [`EsamBlipModel`]. Produces the EfficientSAM input (square resize, no aspect ratio kept) and,
    when `blip_image_size` is set, the BLIP input (LAVIS `BlipImageEvalProcessor`); rescales point and box prompts
    to the SAM frame; upsamples mask logits; and implements every hook of `pipeline("mask-generation")`.

    Accepted images: `PIL.Image.Image` (any 8-bit mode, converted to RGB; RGBA/LA lose their alpha channel, which
    is dropped, not composited), numpy arrays (HWC by default, CHW recognised), torch tensors (CHW by default, HWC
    recognised; `input_data_format` settles ambiguous shapes), 2-D arrays (gray), and 4-D arrays/tensors (a batch).
    Gray images are replicated to 3 channels, a 4th (alpha) channel is dropped. Integer pixels must lie in
    [0, 255]; float pixels are taken as already rescaled, in [0, 1] (for the BLIP resize they are rounded to 8 bits
    first, as LAVIS resizes 8-bit PIL images).

    The steps follow the `transformers` flags, each stored here and overridable per call of [`preprocess`]:
    rescale (8-bit pixels times `rescale_factor`), resize (bilinear for EfficientSAM, PIL bicubic for BLIP), normalise
    (with the mean and std of each input). The defaults reproduce the originals exactly.

    Args:
        sam_image_size (`int` or `None`, defaults to 1024): side `S` of the square EfficientSAM input; `None` for a
            matching-only checkpoint (no `pixel_values`, no prompts).
        image_mean (`tuple[float, float, float]`, defaults to the ImageNet mean): EfficientSAM normalisation mean.
        image_std (`tuple[float, float, float]`, defaults to the ImageNet std): EfficientSAM normalisation std.
        blip_image_size (`int` or `None`, defaults to `None`): side of the square BLIP input (384 for BLIP-base);
            `None` for no `blip_pixel_values`.
        blip_image_mean (`tuple[float, float, float]`, defaults to the CLIP mean): BLIP normalisation mean.
        blip_image_std (`tuple[float, float, float]`, defaults to the CLIP std): BLIP normalisation std.
        max_num_points (`int`, defaults to 6): prompt points per query the decoder takes (a box counts as 2); longer
            queries are truncated with a warning.
        max_image_pixels (`int` or `None`, defaults to 178956970): largest accepted `height * width` (PIL's
            decompression-bomb bound); `None` disables the check.
        mask_input_size (`int`, defaults to 256): side `m` of the square mask prompts (`input_masks`) the model's
            mask encoder reads, `config.prompt_encoder_config.mask_input_size` (4x the image embedding grid: 256 for
            the original 1024 frame, 64 for `esam-blip-shapes`).
        do_resize (`bool`, defaults to `True`): resize to the square inputs; with `False`, images must already have
            the input size (`sam_image_size` and/or `blip_image_size`).
        do_rescale (`bool`, defaults to `True`): multiply 8-bit pixels by `rescale_factor`; float images are taken as
            already rescaled.
        rescale_factor (`float`, defaults to 1/255): the factor of `do_rescale`.
        do_normalize (`bool`, defaults to `True`): subtract the mean and divide by the std of each input.
    """

    model_input_names = [
        "pixel_values",
        "blip_pixel_values",
        "original_sizes",
        "reshaped_input_sizes",
        "input_points",
        "input_labels",
        "input_boxes",
        "input_masks",
    ]
    valid_kwargs = EsamBlipImageProcessorKwargs

    def __init__(
        self,
        sam_image_size: int | None = 1024,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        blip_image_size: int | None = None,
        blip_image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        blip_image_std: Sequence[float] = OPENAI_CLIP_STD,
        max_num_points: int = 6,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        mask_input_size: int = 256,
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        **kwargs,
    ) -> None:
        if "size" in kwargs:
            raise ValueError("`size` is derived from `sam_image_size`; pass `sam_image_size` instead.")
        super().__init__(**kwargs)
        for name, value in (("sam_image_size", sam_image_size), ("blip_image_size", blip_image_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
        if sam_image_size is None and blip_image_size is None:
            raise ValueError("At least one of `sam_image_size` and `blip_image_size` must be set.")
        if not isinstance(max_num_points, int) or max_num_points < 1:
            raise ValueError(f"`max_num_points` must be a positive int, got {max_num_points!r}.")
        if max_image_pixels is not None and (not isinstance(max_image_pixels, int) or max_image_pixels < 1):
            raise ValueError(f"`max_image_pixels` must be a positive int or None, got {max_image_pixels!r}.")
        if not isinstance(mask_input_size, int) or isinstance(mask_input_size, bool) or mask_input_size < 1:
            raise ValueError(f"`mask_input_size` must be a positive int, got {mask_input_size!r}.")
        self.sam_image_size = sam_image_size
        self.blip_image_size = blip_image_size
        self.max_num_points = max_num_points
        self.max_image_pixels = max_image_pixels
        self.mask_input_size = mask_input_size
        settings = _check_pixel_settings(
            {
                "do_resize": do_resize,
                "do_rescale": do_rescale,
                "rescale_factor": rescale_factor,
                "do_normalize": do_normalize,
                "image_mean": image_mean,
                "image_std": image_std,
                "blip_image_mean": blip_image_mean,
                "blip_image_std": blip_image_std,
            }
        )
        for name, value in settings.items():
            setattr(self, name, value)

    def _call_settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The stored pixel settings with a call's overrides (`None` keeps the stored value), validated."""
        unknown = sorted(set(overrides) - set(_PixelSettings.__annotations__))
        if unknown:
            raise TypeError(
                f"`preprocess` got unexpected keyword arguments {unknown}; besides the prompts, `return_tensors` and "
                f"`input_data_format`, it takes {sorted(_PixelSettings.__annotations__)}."
            )
        stored = {name: getattr(self, name) for name in _PixelSettings.__annotations__}
        return {**stored, **_check_pixel_settings({k: v for k, v in overrides.items() if v is not None})}

    @property
    def size(self) -> dict[str, int]:
        """`{"height": S, "width": S}`, the SAM frame `pipeline("mask-generation")` reads; `{}` without SAM."""
        if self.sam_image_size is None:
            return {}
        return {"height": self.sam_image_size, "width": self.sam_image_size}

    def to_dict(self) -> dict[str, Any]:
        # BaseImageProcessor.to_dict drops None values, but None is meaningful here (no BLIP or SAM pixels, no limit).
        return ImageProcessingMixin.to_dict(self)

    def _require_sam(self, what: str) -> int:
        if self.sam_image_size is None:
            raise ValueError(f"{what} need the EfficientSAM frame, but this image processor has `sam_image_size=None`.")
        return self.sam_image_size

    # ------------------------------------------------------------------ images

    def _to_rgb_tensor(
        self, image: Any, name: str, input_data_format: str | ChannelDimension | None = None
    ) -> torch.Tensor:
        """One image as a `[3, H, W]` CPU tensor: uint8, or float32 in [0, 1]."""
        if isinstance(image, PIL.Image.Image):
            self._check_image_size(image.height, image.width, name)
            if image.mode in _UNSUPPORTED_PIL_MODES:
                raise ValueError(
                    f"`{name}` is a PIL image of mode {image.mode!r}; only 8-bit modes are supported (convert it, or "
                    "pass a float array in [0, 1])."
                )
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            raise TypeError(
                f"`{name}` must be a PIL.Image.Image, a numpy array or a torch tensor, got {type(image).__name__}."
            )
        # From the shape alone, before anything is copied (a zero-copy view of a huge array must cost nothing).
        if image.ndim in (2, 3):
            sides = sorted(image.shape)[-2:] if image.ndim == 3 else list(image.shape)
            self._check_image_size(int(sides[0]), int(sides[1]), name)
        if isinstance(image, np.ndarray):
            pixels, channels_last = self._array_to_tensor(image, name), True
        else:
            pixels, channels_last = image.detach().cpu(), False
        if pixels.ndim == 2:
            pixels = pixels[None]
        elif pixels.ndim == 3:
            if input_data_format is not None:
                if input_data_format not in (ChannelDimension.FIRST, ChannelDimension.LAST):
                    raise ValueError(
                        f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
                    )
                channels_last = input_data_format == ChannelDimension.LAST
            elif channels_last and pixels.shape[-1] > 4 and pixels.shape[0] <= 4:
                channels_last = False
            elif not channels_last and pixels.shape[0] > 4 and pixels.shape[-1] <= 4:
                channels_last = True
            if channels_last:
                pixels = pixels.permute(2, 0, 1)
        else:
            raise ValueError(
                f"`{name}` must have 2 (H, W) or 3 (H, W, C / C, H, W) dimensions, got shape {tuple(pixels.shape)}."
            )
        num_channels, height, width = pixels.shape
        self._check_image_size(height, width, name)
        if num_channels not in (1, 3, 4):
            raise ValueError(
                f"`{name}` has {num_channels} channels (shape {tuple(image.shape)}); expected 1 (gray), 3 (RGB) or "
                "4 (RGBA, alpha dropped). Set `input_data_format` if the channel axis was misread."
            )
        pixels = self._check_pixel_values(pixels[:3], name)
        return pixels.expand(3, -1, -1) if num_channels == 1 else pixels

    @staticmethod
    def _array_to_tensor(image: np.ndarray, name: str) -> torch.Tensor:
        if image.dtype.kind not in "uif":
            raise TypeError(f"`{name}` has dtype {image.dtype}; expected uint8 (or integers in [0, 255]) or float.")
        if image.dtype.kind in "ui" and image.dtype != np.uint8:
            image = image.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(image))

    def _check_image_size(self, height: int, width: int, name: str) -> None:
        if height == 0 or width == 0:
            raise ValueError(f"`{name}` is empty (height {height}, width {width}).")
        if self.max_image_pixels is not None and height * width > self.max_image_pixels:
            raise ValueError(
                f"`{name}` has {height * width} pixels ({height}x{width}), over `max_image_pixels`="
                f"{self.max_image_pixels}; downscale it, or raise or disable (None) `max_image_pixels`."
            )

    @staticmethod
    def _check_pixel_values(pixels: torch.Tensor, name: str) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            return pixels
        if pixels.dtype == torch.bool or pixels.is_complex():
            raise TypeError(f"`{name}` has dtype {pixels.dtype}; expected uint8 (or integers in [0, 255]) or float.")
        if pixels.is_floating_point():
            pixels = pixels.float()
            if not bool(torch.isfinite(pixels).all()) or pixels.min() < 0 or pixels.max() > 1:
                raise ValueError(
                    f"`{name}` is a float image with values in [{pixels.min().item():g}, {pixels.max().item():g}]; "
                    "float images must lie in [0, 1] (divide 8-bit pixels by 255, or pass uint8)."
                )
            return pixels
        if pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(
                f"`{name}` is an integer image with values in [{pixels.min().item()}, {pixels.max().item()}]; integer "
                "images must lie in [0, 255]."
            )
        return pixels.to(torch.uint8)

    @staticmethod
    def _as_image_list(images: Any) -> list:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            return list(images)
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("`images` is an empty list.")
            return list(images)
        return [images]

    def _check_input_size(self, image: torch.Tensor, name: str) -> None:
        """With `do_resize=False`, every configured input size must be the image's own."""
        height, width = image.shape[-2:]
        for what, size in (("sam_image_size", self.sam_image_size), ("blip_image_size", self.blip_image_size)):
            if size is not None and (height, width) != (size, size):
                raise ValueError(
                    f"`{name}` is {height}x{width}, but with `do_resize=False` images must already be {size}x{size} "
                    f"(`{what}`); resize them, or keep `do_resize=True`."
                )

    def _sam_pixels(self, image: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        """EfficientSAM `preprocess`: [0, 1] floats, bilinear resize to S x S (no antialias), then normalise."""
        size = self.sam_image_size
        pixels = _rescale(image.float(), settings) if image.dtype == torch.uint8 else image
        if settings["do_resize"]:
            pixels = F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if settings["do_normalize"]:
            pixels = _normalize(pixels, settings["image_mean"], settings["image_std"])
        return pixels

    def _blip_pixels(self, image: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        """LAVIS `BlipImageEvalProcessor`: PIL bicubic resize of the 8-bit RGB image, ToTensor, normalise."""
        size = self.blip_image_size
        if settings["do_resize"]:
            if image.dtype != torch.uint8:
                # LAVIS resizes 8-bit PIL images; rounding makes this lossless for floats that came from uint8 / 255.
                image = (image * 255).round().to(torch.uint8)
            resized = PIL.Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).resize(
                (size, size), resample=PIL.Image.Resampling.BICUBIC
            )
            image = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
        pixels = _rescale(image.float(), settings) if image.dtype == torch.uint8 else image
        if settings["do_normalize"]:
            pixels = _normalize(pixels, settings["blip_image_mean"], settings["blip_image_std"])
        return pixels

    def preprocess(
        self,
        images: ImageLike | Sequence[ImageLike],
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        return_tensors: str | TensorType | None = "pt",
        input_data_format: str | ChannelDimension | None = None,
        input_masks: Any = None,
        **kwargs: Unpack[_PixelSettings],
    ) -> BatchFeature:
        """
        Preprocess a batch of `B` images and their optional prompts.

        Args:
            images: one image or a list of them (see the class docstring for the accepted forms).
            input_points, input_labels, input_boxes: prompts in original-image pixels, see [`preprocess_prompts`].
            input_masks: mask prompts, one 2-D mask per query, see [`preprocess_prompts`].
            return_tensors (`str` or [`~utils.TensorType`], defaults to `"pt"`): `"pt"` or `"np"` (`None` keeps torch).
            input_data_format (`str` or [`~image_utils.ChannelDimension`], *optional*): channel axis of 3-D arrays,
                `"channels_first"` or `"channels_last"`; inferred when omitted.
            kwargs: per-call overrides of the stored `do_resize`, `do_rescale`, `rescale_factor`, `do_normalize`,
                `image_mean`, `image_std`, `blip_image_mean` and `blip_image_std` (`None` keeps the stored value).
                A wrongly typed value raises a `TypeError` naming it, and so does any other keyword.

        Returns:
            [`BatchFeature`] with
            - `pixel_values` `[B, 3, S, S]` float32 (only with `sam_image_size`),
            - `blip_pixel_values` `[B, 3, s, s]` float32 (only with `blip_image_size`),
            - `original_sizes` `[B, 2]` int64 `(height, width)`,
            - `reshaped_input_sizes` `[B, 2]` int64, every row `(S, S)` (only with `sam_image_size`),
            - the outputs of [`preprocess_prompts`] when prompts are given.
        """
        settings = self._call_settings(kwargs)
        if return_tensors not in (None, "pt", "np", TensorType.PYTORCH, TensorType.NUMPY):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        image_list = self._as_image_list(images)
        names = [f"images[{i}]" if len(image_list) > 1 else "images" for i in range(len(image_list))]
        rgb = [
            self._to_rgb_tensor(image, name, input_data_format) for image, name in zip(image_list, names, strict=True)
        ]
        if not settings["do_resize"]:
            for image, name in zip(rgb, names, strict=True):
                self._check_input_size(image, name)
        original_sizes = [tuple(image.shape[-2:]) for image in rgb]
        data: dict[str, torch.Tensor] = {"original_sizes": torch.tensor(original_sizes, dtype=torch.int64)}
        if self.sam_image_size is not None:
            data["pixel_values"] = torch.stack([self._sam_pixels(image, settings) for image in rgb])
            data["reshaped_input_sizes"] = torch.tensor([list(self.size.values())] * len(rgb), dtype=torch.int64)
        if self.blip_image_size is not None:
            data["blip_pixel_values"] = torch.stack([self._blip_pixels(image, settings) for image in rgb])
        data.update(self.preprocess_prompts(original_sizes, input_points, input_labels, input_boxes, input_masks))
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ----------------------------------------------------------------- prompts

    def preprocess_prompts(
        self,
        original_sizes: SizeLike,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        input_masks: Any = None,
    ) -> dict[str, torch.Tensor]:
        """
        Validate point, box and mask prompts, rescale them per axis to the S x S SAM frame (`x * S / W`, `y * S / H`,
        each image with its own size; masks to the `m x m` mask input), truncate and pad them. Useful on its own to
        prompt precomputed image embeddings.

        Args:
            original_sizes: `[B, 2]` `(height, width)` of each image.
            input_points: per image, per query, per point `(x, y)` in original-image pixels; nested lists (ragged
                allowed) or an array/tensor `[B, Q, P, 2]`. Real points must satisfy `0 <= x <= W`, `0 <= y <= H`;
                points labelled -1 are padding: they are dropped (a query of padding only stays a padded query).
            input_labels: per image, per query, per point label, same nesting as `input_points` (`[B, Q, P]`):
                1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding. Defaults to all 1.
            input_boxes: per image, per query `[x1, y1, x2, y2]` in original-image pixels (nested lists or
                `[B, Q, 4]`), inside the image with `x1 <= x2` and `y1 <= y2`. With `input_points`, each image must
                have as many box queries as point queries: box `q` and the points of query `q` prompt the same object.
            input_masks: per image, per query one 2-D mask (SAM's dense mask prompt): nested lists, per image a
                `[Q, H, W]` array, or an array/tensor `[B, Q, H, W]`. A mask is a numpy array, a torch tensor or a
                PIL image of mode "L" or "1", either
                - binary: booleans, integers that are all 0/1 or all 0/255 (mode "L"), or floats that are all 0/1:
                  +`MASK_PROMPT_LOGIT` inside, -`MASK_PROMPT_LOGIT` outside; or
                - logits: any other floats (e.g. a previous call's low-resolution `pred_masks` of the chosen
                  candidate, for iterative refinement), kept as they are.
                Its size is the mask input size `(m, m)` (kept) or the image's `(H, W)`, resized to `m x m` as the
                image is resized to the SAM frame (no aspect ratio kept): bilinearly for logits, by area and then
                re-binarised at one half for binary masks. With points or boxes, each image must have one mask per
                point/box query; without them, every mask is a query (one per text for text prompts).

        A query keeps at most `max_num_points` points, or `max_num_points - 2` with a box (the model appends the box
        as two corner points); longer queries are truncated with a warning. Ragged prompts are padded to the batch's
        largest query count `Q` and point count `P` with points `(-1, -1)`, labels -1 and boxes `(-1, -1, -1, -1)`;
        the outputs of padded queries are meaningless.

        Returns:
            `dict` with, when given, `input_points` `[B, Q, P, 2]` float32, `input_labels` `[B, Q, P]` int64 and
            `input_boxes` `[B, Q, 4]` float32, all in the SAM frame, and `input_masks` `[B, Q, m, m]` float32 logits
            (padded queries get an empty mask).
        """
        if input_points is None and input_labels is None and input_boxes is None and input_masks is None:
            return {}
        if input_labels is not None and input_points is None:
            raise ValueError("`input_labels` were given without `input_points`.")
        target_size = self._require_sam("Point, box and mask prompts")
        sizes = _check_original_sizes(original_sizes)
        outputs: dict[str, torch.Tensor] = {}
        query_counts = None
        if input_boxes is not None:
            boxes = self._parse_boxes(input_boxes, sizes)
            query_counts = [len(image_boxes) for image_boxes in boxes]
        if input_points is not None:
            # The model appends each box as two corner points; they count towards the query's `max_num_points`.
            max_points = self.max_num_points - (2 if input_boxes is not None else 0)
            if max_points < 1:
                raise ValueError(
                    f"`max_num_points`={self.max_num_points} leaves no room for points next to a box's two corners."
                )
            points, labels = self._parse_points(input_points, input_labels, sizes, max_points)
            point_counts = [len(image_points) for image_points in points]
            if query_counts is not None and point_counts != query_counts:
                raise ValueError(
                    f"`input_boxes` has {query_counts} queries per image but `input_points` has {point_counts}; with "
                    "both given, box q and the points of query q prompt the same object, so the counts must match."
                )
            query_counts = point_counts
        if input_masks is not None:
            masks = self._parse_masks(input_masks, sizes, query_counts)
            query_counts = [len(image_masks) for image_masks in masks]
        num_queries = max(query_counts)
        if num_queries == 0:
            raise ValueError("The prompts hold no query for any image.")
        if input_points is not None:
            outputs["input_points"], outputs["input_labels"] = self._pad_points(
                points, labels, sizes, num_queries, target_size
            )
        if input_boxes is not None:
            padded = torch.full((len(sizes), num_queries, 4), PADDING_COORDINATE)
            for b, (image_boxes, size) in enumerate(zip(boxes, sizes, strict=True)):
                if image_boxes:
                    corners = torch.tensor(image_boxes, dtype=torch.float32).view(-1, 2, 2)
                    padded[b, : len(image_boxes)] = rescale_coordinates(corners, size, target_size).view(-1, 4)
            outputs["input_boxes"] = padded
        if input_masks is not None:
            padded = torch.full(
                (len(sizes), num_queries, self.mask_input_size, self.mask_input_size), -MASK_PROMPT_LOGIT
            )
            for b, image_masks in enumerate(masks):
                if image_masks:
                    padded[b, : len(image_masks)] = torch.stack(image_masks)
            outputs["input_masks"] = padded
        return outputs

    def _parse_points(
        self, input_points: Any, input_labels: Any, sizes: list[tuple[int, int]], max_points: int
    ) -> tuple[list[list[list[list[float]]]], list[list[list[int]]]]:
        """Validated nested points and integer labels, without padding points and truncated to `max_points`."""
        levels = ("queries", "points", "coordinates (x, y)")
        points = [
            _nested_numbers(image_points, "input_points", levels, _POINTS_LAYOUT, 2, f"[{b}]")
            for b, image_points in enumerate(_per_image(input_points, "input_points", len(sizes), 4, _POINTS_LAYOUT))
        ]
        if input_labels is None:
            labels = [[[int(PromptLabel.FOREGROUND)] * len(query) for query in image_points] for image_points in points]
        else:
            labels = [
                _nested_numbers(image_labels, "input_labels", ("queries", "labels"), _LABELS_LAYOUT, None, f"[{b}]")
                for b, image_labels in enumerate(
                    _per_image(input_labels, "input_labels", len(sizes), 3, _LABELS_LAYOUT)
                )
            ]
        truncated = []
        for b, (image_points, image_labels, (height, width)) in enumerate(zip(points, labels, sizes, strict=True)):
            if len(image_labels) != len(image_points):
                raise ValueError(
                    f"`input_labels[{b}]` has {len(image_labels)} queries but `input_points[{b}]` has "
                    f"{len(image_points)}."
                )
            for q, (query_points, query_labels) in enumerate(zip(image_points, image_labels, strict=True)):
                where = f"[{b}][{q}]"
                if len(query_labels) != len(query_points):
                    raise ValueError(
                        f"`input_labels{where}` has {len(query_labels)} labels but `input_points{where}` has "
                        f"{len(query_points)} points; give one label per point."
                    )
                if not query_points:
                    raise ValueError(f"`input_points{where}` is an empty query; give at least one point.")
                for p, ((x, y), label) in enumerate(zip(query_points, query_labels, strict=True)):
                    if label not in VALID_LABELS:
                        raise ValueError(
                            f"`input_labels{where}[{p}]` is {label:g}; labels must be one of {VALID_LABELS} "
                            "(1 foreground, 0 background, 2/3 box corners, -1 padding)."
                        )
                    if label != PromptLabel.PADDING and not (0 <= x <= width and 0 <= y <= height):
                        raise ValueError(
                            f"`input_points{where}[{p}]` = ({x:g}, {y:g}) lies outside image {b} (width {width}, "
                            f"height {height}); points are (x, y) in original-image pixels with 0 <= x <= {width} "
                            f"and 0 <= y <= {height}."
                        )
                # Padding points carry nothing; dropping them here lets the batch be re-padded to its own size.
                real = [
                    (point, int(label))
                    for point, label in zip(query_points, query_labels, strict=True)
                    if label != PromptLabel.PADDING
                ]
                if len(real) > max_points:
                    truncated.append(f"{where} ({len(real)} points)")
                    real = real[:max_points]
                image_points[q] = [point for point, _ in real]
                image_labels[q] = [label for _, label in real]
        if truncated:
            boxes_note = " minus 2 for the box corners" if max_points < self.max_num_points else ""
            warnings.warn(
                f"Queries {', '.join(truncated)} of `input_points` have more than {max_points} points "
                f"(max_num_points={self.max_num_points}{boxes_note}); only their first {max_points} points are used.",
                UserWarning,
                stacklevel=4,
            )
        return points, labels

    def _pad_points(
        self,
        points: list[list[list[list[float]]]],
        labels: list[list[list[int]]],
        sizes: list[tuple[int, int]],
        num_queries: int,
        target_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A query given only as padding keeps one padding point.
        num_points = max(1, *(len(query) for image_points in points for query in image_points))
        padded_points = torch.full((len(sizes), num_queries, num_points, 2), PADDING_COORDINATE)
        padded_labels = torch.full((len(sizes), num_queries, num_points), int(PromptLabel.PADDING), dtype=torch.int64)
        for b, (image_points, image_labels, size) in enumerate(zip(points, labels, sizes, strict=True)):
            for q, (query_points, query_labels) in enumerate(zip(image_points, image_labels, strict=True)):
                if query_points:
                    coords = torch.tensor(query_points, dtype=torch.float32)
                    padded_points[b, q, : len(query_points)] = rescale_coordinates(coords, size, target_size)
                    padded_labels[b, q, : len(query_points)] = torch.tensor(query_labels, dtype=torch.int64)
        return padded_points, padded_labels

    def _parse_boxes(self, input_boxes: Any, sizes: list[tuple[int, int]]) -> list[list[list[float]]]:
        boxes = [
            _nested_numbers(image_boxes, "input_boxes", ("queries", "coordinates"), _BOXES_LAYOUT, 4, f"[{b}]")
            for b, image_boxes in enumerate(_per_image(input_boxes, "input_boxes", len(sizes), 3, _BOXES_LAYOUT))
        ]
        for b, (image_boxes, (height, width)) in enumerate(zip(boxes, sizes, strict=True)):
            for q, (x1, y1, x2, y2) in enumerate(image_boxes):
                if not (x1 <= x2 and y1 <= y2):
                    raise ValueError(
                        f"`input_boxes[{b}][{q}]` = [{x1:g}, {y1:g}, {x2:g}, {y2:g}] must satisfy x1 <= x2 and "
                        "y1 <= y2 ([x1, y1, x2, y2] = top-left then bottom-right corner)."
                    )
                if not (0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height):
                    raise ValueError(
                        f"`input_boxes[{b}][{q}]` = [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside image {b} (width "
                        f"{width}, height {height}); boxes are in original-image pixels within [0, {width}] x "
                        f"[0, {height}]."
                    )
        return boxes

    def _parse_masks(
        self, input_masks: Any, sizes: list[tuple[int, int]], query_counts: list[int] | None
    ) -> list[list[torch.Tensor]]:
        """Per image, one `[m, m]` float32 logit map per query (see [`preprocess_prompts`] for the rules)."""
        size = self.mask_input_size
        per_image = _per_image(input_masks, "input_masks", len(sizes), 4, _MASKS_LAYOUT)
        masks = []
        for b, (image_masks, (height, width)) in enumerate(zip(per_image, sizes, strict=True)):
            if isinstance(image_masks, (np.ndarray, torch.Tensor)):
                if image_masks.ndim != 3:
                    raise ValueError(
                        f"`input_masks[{b}]` must be a list of 2-D masks or a [Q, H, W] array (one mask per query), "
                        f"got shape {tuple(image_masks.shape)}. Expected nesting: {_MASKS_LAYOUT}."
                    )
                if image_masks.shape[-1] in (3, 4) and tuple(image_masks.shape[:2]) in ((height, width), (size, size)):
                    raise ValueError(
                        f"`input_masks[{b}]` has shape {tuple(image_masks.shape)}, a multi-channel (RGB/RGBA) image; "
                        f"give one single-channel 2-D mask per query. Expected nesting: {_MASKS_LAYOUT}."
                    )
            elif not isinstance(image_masks, (list, tuple)):
                raise TypeError(
                    f"`input_masks[{b}]` must be a list of masks (one per query) or a [Q, H, W] array, got "
                    f"{type(image_masks).__name__}. Expected nesting: {_MASKS_LAYOUT}."
                )
            if len(image_masks) == 0:
                raise ValueError(f"`input_masks[{b}]` holds no mask; give one mask per query.")
            if query_counts is not None and len(image_masks) != query_counts[b]:
                raise ValueError(
                    f"`input_masks[{b}]` holds {len(image_masks)} masks but image {b} has {query_counts[b]} point/box "
                    "queries; give one mask per query."
                )
            masks.append(
                [
                    self._mask_logits(mask, f"input_masks[{b}][{q}]", (height, width))
                    for q, mask in enumerate(image_masks)
                ]
            )
        return masks

    def _mask_logits(self, mask: Any, name: str, image_size: tuple[int, int]) -> torch.Tensor:
        """One mask prompt → `[m, m]` float32 logits: binary masks to +/-`MASK_PROMPT_LOGIT`, resized as the image."""
        size = self.mask_input_size
        tensor = _mask_tensor(mask, name)
        if tuple(tensor.shape) not in ((size, size), image_size):
            raise ValueError(
                f"`{name}` has size {tuple(tensor.shape)}; a mask prompt must have the model's mask input size "
                f"{(size, size)} (`mask_input_size`) or its image's size {image_size} (height, width)."
            )
        binary = _binary_mask(tensor, name)
        if binary is None:  # logits
            if tensor.shape == (size, size):
                return tensor
            return F.interpolate(tensor[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        if binary.shape != (size, size):
            # The fraction of each low-resolution cell inside the mask, then the majority.
            inside = F.interpolate(binary[None, None].float(), size=(size, size), mode="area")[0, 0]
            binary = inside >= 0.5
        return torch.where(binary, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).float()

    # ------------------------------------------------------------------- masks

    def post_process_masks(
        self,
        masks: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
        original_sizes: SizeLike,
        reshaped_input_sizes: SizeLike | None = None,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        iou_scores: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray] | None = None,
        best: bool = False,
        **kwargs,
    ) -> list[torch.Tensor]:
        """
        Upsample low-resolution mask logits straight to each original image size with one bicubic interpolation (as
        EfficientSAM does; no intermediate S x S step, no padding to remove), then threshold. With `best=True`, only
        the candidate with the highest predicted IoU of each query is kept (and upsampled).

        Args:
            masks: `[B, Q, M, h, w]` logits, or a list of `B` arrays `[..., h, w]` (e.g. `[Q, M, h, w]`).
            original_sizes: `[B, 2]` `(height, width)` of each image, or `[1, 2]` for all: several texts prompting
                one image give `pred_masks [T, Q, M, h, w]` with the texts on the batch axis, all of that image's size.
            reshaped_input_sizes: accepted for API compatibility with SAM and unused (the SAM frame has no padding).
            mask_threshold (`float`, defaults to 0.0): logits above it are foreground.
            binarize (`bool`, defaults to `True`): return boolean masks; otherwise float32 logits.
            iou_scores: the model's `iou_scores` `[B, Q, M]` (or a list of `B` arrays `[..., M]` matching `masks`);
                needed with `best=True`, read only then.
            best (`bool`, defaults to `False`): keep each query's best candidate by predicted IoU (the model's masks
                are not sorted), as [`~best_mask.select_best_masks`] picks it.

        Returns:
            `list[torch.Tensor]`: per image, `[..., H, W]` (e.g. `[Q, M, H, W]`, or `[Q, H, W]` with `best=True`),
            bool or float32.
        """
        if kwargs:
            raise ValueError(f"`post_process_masks` does not support {sorted(kwargs)} for EfficientSAM masks.")
        check_finite("mask_threshold", mask_threshold)
        if not isinstance(binarize, bool):
            raise TypeError(f"`binarize` must be a bool, got {type(binarize).__name__} {binarize!r}.")
        if not isinstance(best, bool):
            raise TypeError(f"`best` must be a bool, got {type(best).__name__} {best!r}.")
        if best and iou_scores is None:
            raise ValueError(
                "`best=True` picks each query's candidate by predicted IoU: pass the model's `iou_scores`."
            )
        if iou_scores is not None and not best:
            raise ValueError(
                "`iou_scores` is read only with `best=True` (keep each query's best candidate); pass both."
            )
        if not isinstance(masks, (torch.Tensor, np.ndarray, list, tuple)):
            raise TypeError(
                f"`masks` must be a torch tensor, a numpy array or a list of them, got {type(masks).__name__}."
            )
        for i, image_masks in enumerate(masks):
            if not isinstance(image_masks, (torch.Tensor, np.ndarray)):
                raise TypeError(
                    f"`masks[{i}]` must be a torch tensor or a numpy array of logits, got {type(image_masks).__name__}."
                )
        original_sizes = _sizes_per_entry(original_sizes, len(masks), "masks")
        if best:
            if not isinstance(iou_scores, (torch.Tensor, np.ndarray, list, tuple)):
                raise TypeError(
                    f"`iou_scores` must be a torch tensor, a numpy array or a list of them, got "
                    f"{type(iou_scores).__name__}."
                )
            if len(iou_scores) != len(masks):
                raise ValueError(
                    f"`iou_scores` holds scores for {len(iou_scores)} images but `masks` for {len(masks)}; pass the "
                    "model's `iou_scores` with its `pred_masks`."
                )
        defer = not binarize and _called_by_mask_generation_pipeline(sys._getframe(1))
        outputs = []
        for i, (image_masks, size) in enumerate(zip(masks, original_sizes, strict=True)):
            image_masks = torch.as_tensor(image_masks)
            if image_masks.ndim < 2:
                raise ValueError(
                    f"Each image's masks must be at least 2-D (..., h, w), got shape {tuple(image_masks.shape)}."
                )
            if best:
                scores = torch.as_tensor(iou_scores[i])
                if image_masks.ndim < 3 or tuple(scores.shape) != tuple(image_masks.shape[:-2]):
                    raise ValueError(
                        f"`iou_scores[{i}]` must have shape {tuple(image_masks.shape[:-2])} (one score per candidate "
                        f"mask of `masks[{i}]` {tuple(image_masks.shape)}), got {tuple(scores.shape)}."
                    )
                image_masks = select_best_masks(image_masks, scores.to(image_masks.device))[0]
            if defer:
                outputs.append(DeferredMaskLogits(image_masks, size))
                continue
            logits = upsample_mask_logits(image_masks, size)
            outputs.append(logits > mask_threshold if binarize else logits)
        return outputs

    def post_process_points(
        self, points: torch.Tensor | Sequence[torch.Tensor], original_sizes: SizeLike
    ) -> list[torch.Tensor]:
        """
        Map points from the square EfficientSAM frame (`prompt_points` of Grad-CAM text prompts, `[T, K, 2]` (x, y))
        back to original-image pixels, per axis (`x * W / S`, `y * H / S`), the inverse of the prompt scaling.
        Padding points `(-1, -1)` stay `(-1, -1)`.

        Args:
            points: `[B, K, 2]`, or a list of `B` tensors `[..., 2]`.
            original_sizes: `[B, 2]` `(height, width)` of each image, or `[1, 2]` for all (several texts, one image).

        Returns:
            `list[torch.Tensor]`: per entry, float32 `[..., 2]` in image pixels.
        """
        if self.sam_image_size is None:
            raise ValueError("This image processor has no EfficientSAM frame (`sam_image_size=None`).")
        original_sizes = _sizes_per_entry(original_sizes, len(points), "points")
        outputs = []
        for entry, (height, width) in zip(points, original_sizes, strict=True):
            entry = torch.as_tensor(entry).float()
            if entry.ndim < 1 or entry.shape[-1] != 2:
                raise ValueError(f"Each entry of `points` must have shape [..., 2] (x, y), got {tuple(entry.shape)}.")
            scale = entry.new_tensor([int(width), int(height)]) / self.sam_image_size
            padding = (entry == PADDING_COORDINATE).all(dim=-1, keepdim=True)
            outputs.append(torch.where(padding, entry, entry * scale))
        return outputs

    # -------------------------------------------------- mask-generation hooks

    def generate_crop_boxes(
        self,
        image: ImageLike,
        target_size: int,
        crop_n_layers: int = 0,
        overlap_ratio: float = 512 / 1500,
        points_per_crop: int = 32,
        crop_n_points_downscale_factor: int = 1,
        device: torch.device | str | None = None,
        input_data_format: str | ChannelDimension | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """
        Crops and point grids of the automatic mask generator (`pipeline("mask-generation")`): the whole image, then
        `(2**i)**2` overlapping crops for layer `i = 1..crop_n_layers`, each with a regular grid of
        `(points_per_crop // crop_n_points_downscale_factor**i)**2` point prompts.

        Args:
            image: one image (any form [`preprocess`] accepts).
            target_size (`int`): side of the SAM frame (`size["height"]`).
            crop_n_layers (`int`, defaults to 0): number of crop layers beyond the whole image.
            overlap_ratio (`float`, defaults to 512/1500): crop overlap as a fraction of the short side (first layer).
            points_per_crop (`int`, defaults to 32): grid points per side in the whole image.
            crop_n_points_downscale_factor (`int`, defaults to 1): per-layer divisor of the points per side.
            device: device of the returned tensors (CPU by default).

        Raises:
            `ValueError`: a layer's grid would have no point, or the grid more than
            [`~mask_generation_utils.MAX_GRID_POINTS`] points (checked before anything is allocated).

        Returns:
            `(crop_boxes, points, cropped_images, input_labels)`:
            - `crop_boxes` `[C, 4]` float32 `[x0, y0, x1, y1]` in original pixels (x1, y1 exclusive);
            - `points` `[1, N, C, 2]` float32: the grid of crop `c` in `points[0, :, c]`, in the SAM frame of that
              crop (per axis). Layers with fewer points repeat theirs cyclically up to `N` (the duplicate masks are
              removed by the final NMS);
            - `cropped_images`: `C` tensors `[3, h_c, w_c]` (uint8, or float32 in [0, 1]);
            - `input_labels` `[1, N, C]` int64, all 1.
        """
        if not isinstance(target_size, int) or target_size < 1:
            raise ValueError(f"`target_size` must be a positive int, got {target_size!r}.")
        if not 0 <= overlap_ratio < 1:
            raise ValueError(f"`overlap_ratio` must lie in [0, 1), got {overlap_ratio}.")
        points_per_layer = grid_points_per_layer(points_per_crop, crop_n_layers, crop_n_points_downscale_factor)
        pixels = self._to_rgb_tensor(image, "image", input_data_format)
        height, width = pixels.shape[-2:]
        boxes, layers = compute_crop_boxes(height, width, crop_n_layers, overlap_ratio)
        grids = [build_point_grid(points_per_side) for points_per_side in points_per_layer]
        num_points = max(len(grid) for grid in grids)
        cropped_images, crop_points = [], []
        for (left, top, right, bottom), layer in zip(boxes, layers, strict=True):
            crop_size = (bottom - top, right - left)
            cropped_images.append(pixels[:, top:bottom, left:right])
            grid = grids[layer][torch.arange(num_points) % len(grids[layer])]
            in_crop_pixels = grid * torch.tensor([crop_size[1], crop_size[0]], dtype=torch.float32)
            crop_points.append(rescale_coordinates(in_crop_pixels, crop_size, target_size))
        points = torch.stack(crop_points, dim=1)[None]
        input_labels = torch.full(points.shape[:-1], int(PromptLabel.FOREGROUND), dtype=torch.int64)
        device = torch.device("cpu") if device is None else device
        return (
            torch.tensor(boxes, dtype=torch.float32, device=device),
            points.to(device),
            cropped_images,
            input_labels.to(device),
        )

    def filter_masks(
        self,
        masks: torch.Tensor | DeferredMaskLogits,
        iou_scores: torch.Tensor,
        original_size: Sequence[int] | torch.Tensor,
        cropped_box_image: Sequence[int] | torch.Tensor,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        mask_threshold: float = 0.0,
        stability_score_offset: float = 1.0,
    ) -> tuple[list[RLE], torch.Tensor, torch.Tensor]:
        """
        Keep the masks of one crop with predicted IoU above `pred_iou_thresh`, stability score above
        `stability_score_thresh` (each test off at 0), and not cut by the crop's edge; see
        [`~mask_generation_utils.filter_crop_masks`]. Inside `pipeline("mask-generation")` the masks arrive at low
        resolution and only those that pass the filters are upsampled.

        Args:
            masks (`torch.Tensor` of shape `(Q, M, h_c, w_c)`, or `DeferredMaskLogits`): logits at the crop's
                resolution, or low-resolution logits with the crop's size.
            iou_scores (`torch.Tensor` of shape `(Q, M)`).
            original_size: `(H, W)` of the whole image.
            cropped_box_image: `[x0, y0, x1, y1]` of the crop.
            pred_iou_thresh, stability_score_thresh (`float` in [0, 1]): the filters' thresholds.
            mask_threshold (`float`), stability_score_offset (`float` >= 0): finite.

        Returns:
            `(rles, scores [K], boxes [K, 4] int64)` with the masks as RLEs of the whole image (int64 tensor counts).

        Raises:
            `ValueError`: a threshold is NaN or out of range (naming it), or `original_size` holds several sizes
            (the pipeline called with `batch_size > 1`).
        """
        return filter_crop_masks(
            masks,
            iou_scores,
            original_size,
            cropped_box_image,
            pred_iou_thresh,
            stability_score_thresh,
            mask_threshold,
            stability_score_offset,
        )

    def post_process_for_mask_generation(
        self,
        all_masks: list[RLE],
        all_scores: torch.Tensor,
        all_boxes: torch.Tensor,
        crops_nms_thresh: float = 0.7,
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[RLE], torch.Tensor]:
        """
        Box NMS over all crops' masks; see [`~mask_generation_utils.deduplicate_masks`]. Logs a warning naming the
        thresholds to lower when no mask passed the filters.

        Returns:
            `(masks, scores, rles, boxes)`: kept masks as bool `[H, W]` tensors, scores `[K]`, their RLEs (counts as
            lists of ints) and boxes `[K, 4]`.
        """
        result = deduplicate_masks(all_masks, all_scores, all_boxes, crops_nms_thresh)
        if not all_masks:
            logger.warning(no_mask_hint())
        return result


__all__ = ["EsamBlipImageProcessor"]
