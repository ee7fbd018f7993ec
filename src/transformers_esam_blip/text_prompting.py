"""Zero-shot text prompts: Grad-CAM heatmap → salient points, mask-enhanced heatmaps, PnP-VQA patch sampling."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .prompts import PADDING_COORDINATE, PromptLabel


def _check_heatmap(heatmap: Tensor, name: str = "heatmap") -> None:
    if not isinstance(heatmap, Tensor) or heatmap.dim() != 3 or heatmap.shape[-1] != heatmap.shape[-2]:
        shape = tuple(heatmap.shape) if isinstance(heatmap, Tensor) else type(heatmap).__name__
        raise ValueError(f"`{name}` must be a [batch, g, g] tensor, got {shape}.")


def _check_int(name: str, value: object, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}`{hint} must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}`{hint} must be >= {minimum}, got {value}.")


def _check_fraction(name: str, value: object, hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number in [0, 1]{hint}, got {type(value).__name__} {value!r}.")
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise ValueError(f"`{name}` must be in [0, 1]{hint}, got {value}.")
    return float(value)


def _greedy_spaced_cells(scores: Tensor, allowed: Tensor, count: int, min_distance: int) -> tuple[Tensor, Tensor]:
    """Up to `count` cells per map in decreasing `scores`, among `allowed`, pairwise Chebyshev distance >= min_distance."""
    batch_size, grid, _ = scores.shape
    rows = torch.arange(grid, device=scores.device)
    cells = torch.zeros(batch_size, count, 2, dtype=torch.long, device=scores.device)
    valid = torch.zeros(batch_size, count, dtype=torch.bool, device=scores.device)
    available = allowed.clone()
    for slot in range(count):
        masked = scores.masked_fill(~available, float("-inf")).flatten(1)
        best = masked.argmax(dim=1)
        found = torch.isfinite(masked.gather(1, best[:, None]))[:, 0]
        row, col = best // grid, best % grid
        cells[:, slot, 0], cells[:, slot, 1] = row, col
        valid[:, slot] = found
        near_row = (rows[None, :] - row[:, None]).abs() < min_distance
        near_col = (rows[None, :] - col[:, None]).abs() < min_distance
        near = near_row[:, :, None] & near_col[:, None, :]
        available &= ~(near & found[:, None, None])
    return cells, valid


def select_salient_cells(
    heatmap: Tensor, num_points: int, min_distance: int = 2, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """
    Peaks of each heatmap: local maxima (3x3) at or above `threshold * max`, strongest first, at least
    `min_distance` cells apart. The global maximum is always chosen, so every text gets at least one point.

    Args:
        heatmap: `[B, g, g]` non-negative scores.
        num_points: at most this many peaks per map (`k >= 1`).
        min_distance: minimum Chebyshev distance between two peaks, in cells (>= 1).
        threshold: relative threshold in [0, 1].

    Returns:
        `cells [B, k, 2]` as (row, col) and `valid [B, k]` (False where fewer peaks qualified).
    """
    _check_heatmap(heatmap)
    _check_int("num_points", num_points, 1, " (k)")
    _check_int("min_distance", min_distance, 1, " (cells)")
    threshold = _check_fraction("threshold", threshold, " (relative to each map's maximum)")
    heatmap = heatmap.float()
    local_max = heatmap == F.max_pool2d(heatmap[:, None], 3, stride=1, padding=1)[:, 0]
    peak = heatmap.flatten(1).max(dim=1).values[:, None, None]
    allowed = local_max & (heatmap >= threshold * peak)
    return _greedy_spaced_cells(heatmap, allowed, num_points, min_distance)


def select_background_cells(heatmap: Tensor, num_points: int, min_distance: int = 2) -> tuple[Tensor, Tensor]:
    """The `num_points` coldest cells of each `[B, g, g]` heatmap, `min_distance` apart: `(cells [B, n, 2], valid)`."""
    _check_heatmap(heatmap)
    _check_int("num_points", num_points, 1)
    _check_int("min_distance", min_distance, 1, " (cells)")
    allowed = torch.ones_like(heatmap, dtype=torch.bool)
    return _greedy_spaced_cells(-heatmap.float(), allowed, num_points, min_distance)


def cells_to_points(cells: Tensor, grid_size: int, frame_size: int | tuple[int, int]) -> Tensor:
    """
    Cell centres in a `frame_size` frame: `x = (col + 0.5) * W / g`, `y = (row + 0.5) * H / g`.

    Args:
        cells: `[..., 2]` (row, col).
        grid_size: `g`.
        frame_size: `S` for a square frame, or `(H, W)`.

    Returns:
        `[..., 2]` float (x, y).
    """
    height, width = (frame_size, frame_size) if isinstance(frame_size, int) else frame_size
    rows, cols = cells[..., 0].float(), cells[..., 1].float()
    return torch.stack([(cols + 0.5) * width / grid_size, (rows + 0.5) * height / grid_size], dim=-1)


def heatmap_to_prompts(
    heatmap: Tensor,
    frame_size: int,
    num_points: int,
    min_distance: int,
    threshold: float,
    num_background_points: int = 0,
) -> tuple[Tensor, Tensor]:
    """
    Point prompts from heatmaps: salient cells (label 1) then coldest cells (label 0), at cell centres of the
    `frame_size` square frame; unused slots are `(-1, -1)` with label -1.

    Returns:
        `points [B, k + n_bg, 2]` and `labels [B, k + n_bg]`.
    """
    grid = heatmap.shape[-1]
    cells, valid = select_salient_cells(heatmap, num_points, min_distance, threshold)
    labels = valid.long() * int(PromptLabel.FOREGROUND)
    if num_background_points:
        background, background_valid = select_background_cells(heatmap, num_background_points, min_distance)
        cells = torch.cat([cells, background], dim=1)
        valid = torch.cat([valid, background_valid], dim=1)
        background_labels = torch.full_like(background_valid, int(PromptLabel.BACKGROUND), dtype=torch.long)
        labels = torch.cat([labels, background_labels], dim=1)
    points = cells_to_points(cells, grid, frame_size)
    points = points.masked_fill(~valid[..., None], PADDING_COORDINATE)
    labels = labels.masked_fill(~valid, int(PromptLabel.PADDING))
    return points, labels


def _normalise_per_map(values: Tensor) -> Tensor:
    """Min-max to [0, 1] per map; a constant map becomes all zeros."""
    flat = values.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = (high - low).clamp(min=torch.finfo(values.dtype).tiny)
    return ((values - low[:, None, None]) / scale[:, None, None]).where((high > low)[:, None, None], 0.0)


def mask_enhanced_heatmap(heatmap: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """
    `alpha * heatmap + (1 - alpha) * mask` on the heatmap grid, normalised to [0, 1].

    The heatmap is first min-max normalised (Grad-CAM values are tiny and scale with the model, the mask is a
    fraction), the mask is area-averaged down to the `g x g` grid (the fraction of each cell it covers), and the sum
    is min-max normalised per map.

    Args:
        heatmap: `[B, g, g]` (e.g. Grad-CAM).
        mask: `[B, H, W]` binary or soft mask covering the same image (any resolution).
        alpha: weight of the heatmap, in [0, 1].

    Returns:
        `[B, g, g]` in [0, 1].
    """
    _check_heatmap(heatmap)
    alpha = _check_fraction("alpha", alpha)
    if not isinstance(mask, Tensor) or mask.dim() != 3 or mask.shape[0] != heatmap.shape[0]:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"`mask` must be a [{heatmap.shape[0]}, H, W] tensor (one per heatmap), got {shape}.")
    grid = heatmap.shape[-1]
    coverage = F.adaptive_avg_pool2d(mask[:, None].float(), (grid, grid))[:, 0]
    combined = float(alpha) * _normalise_per_map(heatmap.float()) + (1.0 - float(alpha)) * coverage
    return _normalise_per_map(combined)


def sample_patch_indices(gradcams: Tensor, num_patches: int, generator: torch.Generator | None = None) -> Tensor:
    """
    Image-token indices to keep, sampled as PnP-VQA's captioning step does: multinomial over the `[B, g*g]` heatmap
    without replacement, sorted, +1 to skip the ViT's [CLS] token.

    Returns:
        `[B, num_patches]` long, in `[1, g*g]`.
    """
    if not isinstance(gradcams, Tensor) or gradcams.dim() != 2:
        raise ValueError(f"`gradcams` must be a [batch, g*g] tensor, got {getattr(gradcams, 'shape', type(gradcams))}.")
    _check_int("num_patches", num_patches, 1)
    if num_patches > gradcams.shape[1]:
        raise ValueError(f"`num_patches` must be in [1, {gradcams.shape[1]}], got {num_patches}.")
    weights = gradcams.float().clamp(min=0)
    # A map with no positive weight (e.g. an all-zero Grad-CAM) is sampled uniformly rather than failing.
    weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
    indices = torch.multinomial(weights, num_patches, replacement=False, generator=generator)
    return indices.sort(dim=1).values + 1


__all__ = [
    "cells_to_points",
    "heatmap_to_prompts",
    "mask_enhanced_heatmap",
    "sample_patch_indices",
    "select_background_cells",
    "select_salient_cells",
]
