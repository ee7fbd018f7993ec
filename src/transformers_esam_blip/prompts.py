"""
The prompt module: the vocabulary, validation and assembly of every prompt type EfficientSAM reads.

Every other module (image processor, processor, models, collators, pipelines, CLI) takes prompt labels, checks and
assembly from here, so a new prompt type is one change to this file plus its tests.

**Vocabulary.** [`PromptLabel`]: -1 padding, 0 background, 1 foreground, 2/3 box corners. Padded points sit at
`(PADDING_COORDINATE, PADDING_COORDINATE)`, as the original EfficientSAM expects.

**Validation contract.** Checks run once, at the model's boundary (`validate_point_and_box_prompts`, called by the
models' `forward` before any compute), and are skipped while tracing, exporting or compiling ([`is_tracing`]), so
`torch.export` and ONNX graphs hold no value-dependent branch. What is checked, in the encoder frame:
- types: tensors, with integer labels (a float label tensor is accepted only when every value is integral);
- shapes: `input_points [B, Q, P, 2]`, `input_labels [B, Q, P]`, `input_boxes [B, Q, 4]`, the same `B` as the
  images and the same `Q` for points and boxes, at least one query;
- values: labels in the vocabulary; real points and boxes finite and inside the `S x S` frame; `x1 <= x2`, `y1 <= y2`.
Nothing is cast silently except integral float labels to int64 and coordinates to float32. The image processor checks
user input in image pixels with the same rules before rescaling ([`rescale_coordinates`]).

The same boundary checks the other tensor inputs ([`check_image_tensor`], [`check_token_ids`]): images and embeddings
must have the configured shape (so a BLIP image of the wrong size is refused, never cut short), a batch of at least one,
a floating-point dtype and finite values; token ids must lie in the vocabulary. A floating-point input of another
precision than the model's (float16/float64 into float32) is cast to the model's dtype, which is safe; integer pixels
(uint8) are refused, since they have not been normalised by the image processor.

**Assembly.** [`assemble_prompts`] merges points and boxes (two corner points, after the query's points) into exactly
`max_num_points` slots; [`append_points`] adds points computed by the model (Grad-CAM peaks) to every query;
[`append_prompt_tokens`] appends learned text tokens after the embedded points.

**Dense mask prompts.** `input_masks [B, Q, m, m]`: low-resolution mask logits, one per query (SAM's mask input;
`m` is `prompt_encoder_config.mask_input_size`, four times the embedding grid), e.g. a previous call's `pred_masks`
for iterative refinement. [`validate_mask_prompts`] checks them; a binary user mask becomes
`+MASK_PROMPT_LOGIT` inside and `-MASK_PROMPT_LOGIT` outside (the image processor does it).
"""

import math
import numbers
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils import logging

logger = logging.get_logger(__name__)


class PromptLabel(IntEnum):
    """Label of one sparse prompt point, as the original EfficientSAM reads it."""

    PADDING = -1
    BACKGROUND = 0
    FOREGROUND = 1
    BOX_TOP_LEFT = 2
    BOX_BOTTOM_RIGHT = 3


VALID_LABELS = tuple(int(label) for label in PromptLabel)
USER_POINT_LABELS = (int(PromptLabel.BACKGROUND), int(PromptLabel.FOREGROUND))
BOX_CORNER_LABELS = (int(PromptLabel.BOX_TOP_LEFT), int(PromptLabel.BOX_BOTTOM_RIGHT))
PADDING_COORDINATE = -1.0
LABELS_HELP = "-1 padding, 0 background, 1 foreground, 2/3 box corners"
# The logit a binary mask prompt gets inside (and its negative outside): confident, like a previous prediction.
MASK_PROMPT_LOGIT = 10.0


def is_tracing() -> bool:
    """True under `torch.export`, `torch.compile`, `torch.jit.trace` or ONNX export: argument checks are skipped."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def check_tensor(name: str, value: object, ndim: int, last: int | None, expected: str) -> torch.Tensor:
    """`value` must be a tensor with `ndim` axes (and `last` entries on the last one): TypeError/ValueError otherwise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(value).__name__}.")
    if value.ndim != ndim or (last is not None and value.shape[-1] != last):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(value.shape)}.")
    return value


def _scalar(value: Any) -> Any:
    """A one-element tensor or a 0-d array as its Python number; anything else unchanged."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or getattr(value, "shape", None) == ():
        return value.item()
    return value


def check_finite(name: str, value: Any, minimum: float | None = None) -> float:
    """A finite number (at least `minimum` when given) as a float; `TypeError`/`ValueError` naming `name`."""
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r:.40}.")
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"`{name}` must be a finite number{bound}, got {number!r}.")
    return float(number)


def check_threshold(name: str, value: Any) -> float:
    """A number in [0, 1] (a threshold or probability) as a float; `TypeError`/`ValueError` naming `name`."""
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"`{name}` must be a number in [0, 1], got {type(value).__name__} {value!r}.")
    if not 0.0 <= number <= 1.0:  # also False for NaN
        raise ValueError(f"`{name}` must be a number in [0, 1], got {number!r}.")
    return float(number)


def check_image_tensor(name: str, value: object, shape: tuple[int, ...], hint: str) -> torch.Tensor:
    """An image-like input `[B, *shape]`: a non-empty batch, that shape, floating point and finite."""
    expected = f"[batch, {', '.join(str(side) for side in shape)}]"
    check_tensor(name, value, 1 + len(shape), None, expected)
    if tuple(value.shape[1:]) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {expected} ({hint}), got {tuple(value.shape)}.")
    if value.shape[0] == 0:
        raise ValueError(f"`{name}` holds no image (a batch of 0); pass at least one.")
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor ({hint}), got dtype {value.dtype}.")
    if not torch.isfinite(value).all():
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values.")
    return value


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Token ids must be integers in `[0, vocab_size)`: an id outside would index past the embedding table."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"`{name}` must hold token ids in [0, {vocab_size - 1}] (the text encoder's vocabulary), got values in "
            f"[{input_ids.min().item()}, {input_ids.max().item()}]. Tokenize with the checkpoint's EsamBlipProcessor."
        )


def rescale_coordinates(coords: torch.Tensor, original_size: tuple[int, int], target_size: int) -> torch.Tensor:
    """`(x, y)` pixels of an image of `(height, width)` → the `target_size` square frame, per axis (EfficientSAM)."""
    height, width = original_size
    return torch.stack([coords[..., 0] * target_size / width, coords[..., 1] * target_size / height], dim=-1)


def default_labels(input_points: torch.Tensor) -> torch.Tensor:
    """Labels for points given without any: every point foreground."""
    return torch.full(input_points.shape[:3], int(PromptLabel.FOREGROUND), dtype=torch.long, device=input_points.device)


def _check_labels(input_labels: torch.Tensor, input_points: torch.Tensor) -> torch.Tensor:
    check_tensor("input_labels", input_labels, 3, None, "[batch, queries, points]")
    if input_labels.shape != input_points.shape[:3]:
        raise ValueError(
            f"`input_labels` must have shape {tuple(input_points.shape[:3])} to match `input_points` "
            f"{tuple(input_points.shape)}, got {tuple(input_labels.shape)}."
        )
    if input_labels.dtype == torch.bool or input_labels.is_complex():
        raise TypeError(f"`input_labels` must be an integer tensor ({LABELS_HELP}), got dtype {input_labels.dtype}.")
    if input_labels.is_floating_point():
        fractional = input_labels[input_labels != input_labels.round()]
        if fractional.numel():
            raise TypeError(
                f"`input_labels` must hold integers ({LABELS_HELP}), got {input_labels.dtype} values such as "
                f"{fractional[0].item():g}."
            )
    labels = input_labels.long()
    bad = ~torch.isin(labels, torch.tensor(VALID_LABELS, device=labels.device))
    if bad.any():
        raise ValueError(
            f"`input_labels` must be in {list(VALID_LABELS)} ({LABELS_HELP}), got {sorted(set(labels[bad].tolist()))}."
        )
    return labels


def _check_in_frame(name: str, coords: torch.Tensor, frame_size: int, hint: str) -> None:
    if not coords.numel():
        return
    if not torch.isfinite(coords).all():
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values.")
    low, high = coords.min().item(), coords.max().item()
    if low < 0 or high > frame_size:
        raise ValueError(
            f"`{name}` must lie in the {frame_size}x{frame_size} encoder frame ([0, {frame_size}] per axis); got values "
            f"in [{low:.1f}, {high:.1f}]. {hint}"
        )


_FRAME_HINT = "Pass image-pixel coordinates through EsamBlipImageProcessor/EsamBlipProcessor, which rescales them."


def validate_point_and_box_prompts(
    batch_size: int,
    frame_size: int,
    input_points: torch.Tensor | None,
    input_labels: torch.Tensor | None,
    input_boxes: torch.Tensor | None,
    required: bool = True,
) -> None:
    """
    The boundary checks of point and box prompts in the encoder frame (see the module docstring). Raises
    `TypeError`/`ValueError` naming the argument; returns nothing, so callers compute on the inputs unchanged.

    Args:
        batch_size: the number of images (or texts) the prompts go with.
        frame_size: the encoder frame `S` (`sam_vision_config.image_size`).
        required: whether at least one of `input_points`/`input_boxes` must be given.
    """
    if input_points is None and input_labels is not None:
        raise ValueError("`input_labels` was given without `input_points`.")
    if input_points is None and input_boxes is None:
        if required:
            raise ValueError(
                "Pass `input_points` and/or `input_boxes` (or a text with `input_ids`): EfficientSAM needs a prompt."
            )
        return
    counts = []
    if input_points is not None:
        check_tensor("input_points", input_points, 4, 2, "[batch, queries, points, 2]")
        if not input_points.is_floating_point() and input_points.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"`input_points` must be a float or integer tensor, got dtype {input_points.dtype}.")
        if input_points.shape[2] == 0:
            raise ValueError(f"`input_points` must hold at least one point per query, got {tuple(input_points.shape)}.")
        labels = default_labels(input_points) if input_labels is None else _check_labels(input_labels, input_points)
        _check_in_frame("input_points", input_points[labels != PromptLabel.PADDING], frame_size, _FRAME_HINT)
        counts.append(("input_points", input_points.shape[0], input_points.shape[1]))
    if input_boxes is not None:
        check_tensor("input_boxes", input_boxes, 3, 4, "[batch, queries, 4] as (x1, y1, x2, y2)")
        if not input_boxes.is_floating_point() and input_boxes.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"`input_boxes` must be a float or integer tensor, got dtype {input_boxes.dtype}.")
        _check_in_frame("input_boxes", input_boxes, frame_size, _FRAME_HINT)
        if (input_boxes[..., 2] < input_boxes[..., 0]).any() or (input_boxes[..., 3] < input_boxes[..., 1]).any():
            raise ValueError("`input_boxes` must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1.")
        counts.append(("input_boxes", input_boxes.shape[0], input_boxes.shape[1]))
    for name, batch, queries in counts:
        if batch != batch_size:
            raise ValueError(f"`{name}` has batch size {batch} but the images have {batch_size}.")
        if queries == 0:
            raise ValueError(f"`{name}` holds no query (shape with 0 queries); give at least one query per image.")
    if len(counts) == 2 and counts[0][2] != counts[1][2]:
        raise ValueError(
            f"`input_points` ({counts[0][2]} queries) and `input_boxes` ({counts[1][2]} queries) must hold the same "
            "number of queries per image."
        )


def validate_mask_prompts(input_masks: object, batch_size: int, num_queries: int, mask_input_size: int) -> None:
    """
    The boundary checks of dense mask prompts: a floating-point tensor `[batch_size, num_queries, m, m]` of finite
    logits, `m = mask_input_size`. Raises `TypeError`/`ValueError` naming `input_masks`.

    Args:
        batch_size: the number of images (or texts) the masks go with.
        num_queries: the queries per image of the point/box prompts (1 for text alone).
        mask_input_size: `prompt_encoder_config.mask_input_size`.
    """
    expected = f"[batch, queries, {mask_input_size}, {mask_input_size}] (mask logits at the model's mask-input size)"
    check_tensor("input_masks", input_masks, 4, None, expected)
    if tuple(input_masks.shape[2:]) != (mask_input_size, mask_input_size):
        raise ValueError(
            f"`input_masks` must have shape {expected}, got {tuple(input_masks.shape)}. EsamBlipImageProcessor "
            "resizes a full-size mask."
        )
    if not input_masks.is_floating_point():
        raise TypeError(
            f"`input_masks` must be floating-point mask logits, got dtype {input_masks.dtype}; pass a binary mask "
            f"through EsamBlipImageProcessor (it becomes +/-{MASK_PROMPT_LOGIT:g})."
        )
    if input_masks.shape[0] != batch_size:
        raise ValueError(f"`input_masks` has batch size {input_masks.shape[0]} but the prompts have {batch_size}.")
    if input_masks.shape[1] != num_queries:
        raise ValueError(
            f"`input_masks` holds {input_masks.shape[1]} masks per image but the point/box prompts hold {num_queries} "
            "queries: give one mask per query."
        )
    if not torch.isfinite(input_masks).all():
        raise ValueError("`input_masks` must be finite, got NaN or infinite values.")


def assemble_prompts(
    input_points: torch.Tensor | None,
    input_labels: torch.Tensor | None,
    input_boxes: torch.Tensor | None,
    max_num_points: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Merge points and boxes into exactly `max_num_points` prompts per query.

    Box corners come after the points (labels 2 and 3); queries are padded with `(-1, -1)` / label -1. Where a
    query holds more than `max_num_points` prompts, its padding goes first and then (with a warning, outside tracing)
    the trailing real prompts, as the original truncates.

    Returns:
        `points [B, Q, max_num_points, 2]` float32 and `labels [B, Q, max_num_points]` int64.
    """
    parts_points, parts_labels = [], []
    if input_points is not None:
        parts_points.append(input_points)
        parts_labels.append(default_labels(input_points) if input_labels is None else input_labels)
    if input_boxes is not None:
        parts_points.append(input_boxes.reshape(*input_boxes.shape[:2], 2, 2))
        corner_labels = torch.tensor(BOX_CORNER_LABELS, device=input_boxes.device)
        parts_labels.append(corner_labels.expand(*input_boxes.shape[:2], 2))
    points = torch.cat([p.float() for p in parts_points], dim=2)
    labels = torch.cat([lab.long() for lab in parts_labels], dim=2)

    num = points.shape[2]
    if num > max_num_points:
        # Padding carries no information: drop it before any real prompt (stable sort keeps the order).
        order = torch.sort((labels == PromptLabel.PADDING).int(), dim=2, stable=True).indices
        labels = labels.gather(2, order)
        points = points.gather(2, order[..., None].expand_as(points))
        if not is_tracing() and (labels[..., max_num_points:] != PromptLabel.PADDING).any():
            logger.warning(
                f"A query holds more than {max_num_points} prompts (points + 2 per box); only the first "
                f"{max_num_points} are used, as the original EfficientSAM does."
            )
        points, labels = points[:, :, :max_num_points], labels[:, :, :max_num_points]
    elif num < max_num_points:
        points = F.pad(points, (0, 0, 0, max_num_points - num), value=PADDING_COORDINATE)
        labels = F.pad(labels, (0, max_num_points - num), value=int(PromptLabel.PADDING))
    return points, labels


def append_points(
    input_points: torch.Tensor | None,
    input_labels: torch.Tensor | None,
    extra_points: torch.Tensor,
    extra_labels: torch.Tensor,
    num_queries: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Add per-batch-entry points (`extra_points [B, K, 2]`, `extra_labels [B, K]`, e.g. Grad-CAM peaks) after the
    points of each of the `num_queries` queries (`input_points [B, Q, P, 2]` or `None`).

    Returns:
        `points [B, Q, P + K, 2]` and `labels [B, Q, P + K]`, ready for [`assemble_prompts`].
    """
    points = extra_points[:, None].expand(-1, num_queries, -1, -1)
    labels = extra_labels[:, None].expand(-1, num_queries, -1).long()
    if input_points is None:
        return points, labels
    if input_labels is None:
        input_labels = default_labels(input_points)
    return torch.cat([input_points.to(points.dtype), points], dim=2), torch.cat([input_labels.long(), labels], dim=2)


def append_prompt_tokens(point_embeddings: torch.Tensor | None, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """
    Learned prompt tokens (`[B, N, C]`, one set per batch entry) after each query's embedded points
    (`[B, Q, P, C]`), or as the only query when there are no points: sparse embeddings `[B, Q, P + N, C]`.
    """
    if point_embeddings is None:
        return prompt_tokens[:, None]
    prompt_tokens = prompt_tokens[:, None].expand(-1, point_embeddings.shape[1], -1, -1)
    return torch.cat([point_embeddings, prompt_tokens.to(point_embeddings.dtype)], dim=2)


def count_queries(*prompts: torch.Tensor | None) -> int:
    """Queries per image of the first prompt tensor given (`[B, Q, ...]`), or 1 when none is."""
    return next((prompt.shape[1] for prompt in prompts if prompt is not None), 1)


__all__ = [
    "BOX_CORNER_LABELS",
    "LABELS_HELP",
    "MASK_PROMPT_LOGIT",
    "PADDING_COORDINATE",
    "USER_POINT_LABELS",
    "VALID_LABELS",
    "PromptLabel",
    "append_points",
    "append_prompt_tokens",
    "assemble_prompts",
    "check_finite",
    "check_image_tensor",
    "check_tensor",
    "check_threshold",
    "check_token_ids",
    "count_queries",
    "default_labels",
    "is_tracing",
    "rescale_coordinates",
    "validate_mask_prompts",
    "validate_point_and_box_prompts",
]
