"""Automatic mask generation on one encoded image: a point grid decoded in batches, filtered, deduplicated; full or coarse-to-fine."""

from collections.abc import Callable
from typing import Any

import torch
from huggingface_hub.utils import are_progress_bars_disabled
from tqdm.auto import tqdm
from transformers.utils import logging

from .image_processing_esam_blip import EsamBlipImageProcessor, ImageLike
from .mask_generation_utils import (
    DeferredMaskLogits,
    build_point_grid,
    check_filter_thresholds,
    deduplicate_masks,
    filter_crop_masks,
    grid_points_per_layer,
    no_mask_hint,
    rle_to_mask,
)
from .prompts import PromptLabel, check_threshold

logger = logging.get_logger(__name__)

# Strides of the coarse-to-fine levels over the full grid: every 4th point per side, then every 2nd, then the rest.
COARSE_TO_FINE_STRIDES = (4, 2, 1)


def full_grid_levels(points_per_side: int) -> list[torch.Tensor]:
    """One level: every point of the grid, in the grid's order (x fastest), as the pipeline decodes them."""
    return [torch.arange(points_per_side**2)]


def coarse_to_fine_levels(
    points_per_side: int, strides: tuple[int, ...] = COARSE_TO_FINE_STRIDES
) -> list[torch.Tensor]:
    """
    Levels of grid indices, coarsest first: level `k` holds the points on rows and columns `o (mod strides[k])` not
    in an earlier level, with one offset `o = strides[0] // 2` for all levels so each level's points contain the
    coarser ones (the coarsest level sits centred in the grid). The levels partition the full grid.
    """
    side = torch.arange(points_per_side)
    offset = strides[0] // 2
    rows, cols = torch.meshgrid(side, side, indexing="ij")
    taken = torch.zeros(points_per_side, points_per_side, dtype=torch.bool)
    levels = []
    for stride in strides:
        on_level = ((rows - offset) % stride == 0) & ((cols - offset) % stride == 0) & ~taken
        levels.append(torch.nonzero(on_level.flatten()).flatten())
        taken |= on_level
    if not bool(taken.all()):
        raise ValueError(f"The coarse-to-fine strides {strides} must end with 1 so that every grid point has a level.")
    return [level for level in levels if len(level)]


# Grid schedules by name: each returns the levels of grid indices to decode in turn. From the second level on, points
# inside a mask already accepted are not decoded.
GRID_SCHEDULES: dict[str, Callable[[int], list[torch.Tensor]]] = {
    "full": full_grid_levels,
    "coarse_to_fine": coarse_to_fine_levels,
}


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    return value


def _progress_bar(total: int, progress: bool | None) -> tqdm:
    """
    A bar over the grid points that follows the ecosystem's switches: `transformers.utils.logging.
    disable_progress_bar()`, `HF_HUB_DISABLE_PROGRESS_BARS`, and tqdm's own (`TQDM_DISABLE`, off when stderr is no
    terminal) unless `progress=True` asks for it.
    """
    if progress is False or not logging.is_progress_bar_enabled() or are_progress_bars_disabled():
        return tqdm(total=total, disable=True)
    options = {} if progress is None else {"disable": False}
    return tqdm(total=total, desc="Decoding grid points", unit="point", **options)


class EsamBlipMaskGenerator:
    r"""
    Segment everything in an image with an EfficientSAM model: encode the image once, prompt the decoder with a grid of
    single foreground points in batches, keep the masks whose predicted IoU and stability pass their thresholds (the
    filters run on the low-resolution logits; only kept masks are upsampled), and remove duplicates by box NMS.

    With `grid="full"` the result is that of `pipeline("mask-generation")` with the same settings and no crops. With
    `grid="coarse_to_fine"`, the grid is decoded in levels (every 4th point per side, every 2nd, then the rest) and a
    point that falls inside a mask accepted at an earlier level is not decoded: on scenes of separate objects this
    finds the same objects from far fewer decoder calls. A part inside an already accepted whole is found only if a
    coarser point falls on it.

    Args:
        model: an `EsamBlipForPromptableSegmentation` (or any model with SAM's `get_image_embeddings` and
            `forward(image_embeddings=..., input_points=..., input_labels=...)` returning `pred_masks` and `iou_scores`).
        image_processor ([`EsamBlipImageProcessor`]): the model's image processor.
        points_per_side (`int`, defaults to 32): grid points per side (at most 1024).
        points_per_batch (`int`, defaults to 64): point prompts per decoder call.
        grid (`str`, defaults to `"full"`): a key of [`GRID_SCHEDULES`]: `"full"` or `"coarse_to_fine"`.
        pred_iou_thresh (`float` in [0, 1], defaults to 0.88): minimum predicted IoU; 0 turns the filter off.
        stability_score_thresh (`float` in [0, 1], defaults to 0.95): minimum stability score; 0 turns it off.
        stability_score_offset (`float`, defaults to 1.0): logit offset of the stability score.
        mask_threshold (`float`, defaults to 0.0): logit above which a pixel is in the mask.
        box_nms_thresh (`float` in [0, 1], defaults to 0.7): box IoU above which the lower-scored mask is dropped.
        progress (`bool` or `None`, defaults to `None`): a tqdm bar over the grid points; `None` follows the usual
            switches (see `transformers.utils.logging.disable_progress_bar`), `False` hides it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: EsamBlipImageProcessor,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        grid: str = "full",
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        progress: bool | None = None,
    ) -> None:
        if grid not in GRID_SCHEDULES:
            raise ValueError(f"`grid` must be one of {sorted(GRID_SCHEDULES)}, got {grid!r}.")
        if getattr(image_processor, "sam_image_size", None) is None:
            raise ValueError("`image_processor` has no EfficientSAM frame (`sam_image_size=None`): it cannot segment.")
        grid_points_per_layer(points_per_side, name="points_per_side")
        check_filter_thresholds(pred_iou_thresh, stability_score_thresh, mask_threshold, stability_score_offset)
        self.model = model
        self.image_processor = image_processor
        self.points_per_side = points_per_side
        self.points_per_batch = _positive_int("points_per_batch", points_per_batch)
        self.grid = grid
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = check_threshold("box_nms_thresh", box_nms_thresh)
        self.progress = progress

    @torch.inference_mode()
    def generate(self, image: ImageLike) -> dict[str, Any]:
        """
        All masks of `image` (any form the image processor accepts).

        Returns:
            `dict` with the keys of `pipeline("mask-generation")`'s output (`output_bboxes_mask=True,
            output_rle_mask=True`) and one more:
            - `masks`: `K` bool tensors `[H, W]`, by decreasing score;
            - `scores`: `[K]` predicted IoU;
            - `bounding_boxes`: `[K, 4]` int64 `[x0, y0, x1, y1]` (inclusive);
            - `rle_mask`: `K` uncompressed RLEs (column-major counts, as pycocotools reads them);
            - `num_points_decoded`: how many grid points went through the decoder (all of them with `grid="full"`).
        """
        processor = self.image_processor
        frame = processor.sam_image_size
        _, frame_points, (pixels,), _ = processor.generate_crop_boxes(
            image, frame, points_per_crop=self.points_per_side
        )
        height, width = pixels.shape[-2:]
        device = self.model.device
        inputs = processor(images=pixels, return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(device=device, dtype=self.model.dtype))
        extra = self._fusion_inputs(inputs, device)
        frame_points = frame_points[:, :, 0].to(device=device)  # [1, N, 2]: the whole image is the only crop
        # The pixel each grid point falls on, for the test against the accepted masks.
        unit = build_point_grid(self.points_per_side)
        columns = (unit[:, 0] * width).long().clamp(max=width - 1)
        rows = (unit[:, 1] * height).long().clamp(max=height - 1)

        covered = torch.zeros(height, width, dtype=torch.bool)
        rles, scores, boxes = [], [], []
        best_iou, decoded = None, 0
        levels = GRID_SCHEDULES[self.grid](self.points_per_side)
        with _progress_bar(len(unit), self.progress) as bar:
            for level, indices in enumerate(levels):
                if level > 0:
                    skipped = covered[rows[indices], columns[indices]]
                    bar.update(int(skipped.sum()))
                    indices = indices[~skipped]
                if not len(indices):
                    continue
                for batch in indices.split(self.points_per_batch):
                    points = frame_points[:, batch, None]  # [1, B, 1, 2]: one point per query
                    labels = torch.full(points.shape[:-1], int(PromptLabel.FOREGROUND), device=device)
                    outputs = self.model(image_embeddings=embeddings, input_points=points, input_labels=labels, **extra)
                    iou_scores = outputs.iou_scores[0].float()
                    batch_best = float(iou_scores.max())
                    best_iou = batch_best if best_iou is None else max(best_iou, batch_best)
                    batch_rles, batch_scores, batch_boxes = filter_crop_masks(
                        DeferredMaskLogits(outputs.pred_masks[0], (height, width)),
                        iou_scores,
                        (height, width),
                        [0, 0, width, height],
                        self.pred_iou_thresh,
                        self.stability_score_thresh,
                        self.mask_threshold,
                        self.stability_score_offset,
                    )
                    rles.extend(batch_rles)
                    scores.append(batch_scores.cpu())
                    boxes.append(batch_boxes.cpu())
                    if level < len(levels) - 1:  # the next levels skip what these masks cover
                        for rle in batch_rles:
                            covered |= rle_to_mask(rle)
                    decoded += len(batch)
                    bar.update(len(batch))
        if not rles:
            logger.warning(no_mask_hint(self.pred_iou_thresh, self.stability_score_thresh, best_iou))
        all_scores = torch.cat(scores) if scores else torch.zeros(0)
        all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.int64)
        masks, kept_scores, kept_rles, kept_boxes = deduplicate_masks(rles, all_scores, all_boxes, self.box_nms_thresh)
        return {
            "masks": masks,
            "scores": kept_scores,
            "bounding_boxes": kept_boxes,
            "rle_mask": kept_rles,
            "num_points_decoded": decoded,
        }

    __call__ = generate

    def _fusion_inputs(self, inputs: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """
        The BLIP tokens a model with a decoder-side fusion reads with every prompt, computed once per image (none for
        a model without fusion).
        """
        base = getattr(self.model, "base_model", None)
        if getattr(base, "fusion", None) is None:
            return {}
        config = self.model.config
        blip_pixel_values = inputs.get("blip_pixel_values")
        if blip_pixel_values is None:
            raise ValueError(
                f"The model fuses BLIP features into EfficientSAM's (`fusion_type={config.fusion_type!r}`), but "
                "`image_processor` makes no BLIP input (`blip_image_size=None`); use the model's own processor."
            )
        blip = base.blip
        return {
            "blip_image_embeds": blip.get_image_features(blip_pixel_values.to(device=device, dtype=self.model.dtype))
        }


__all__ = [
    "COARSE_TO_FINE_STRIDES",
    "GRID_SCHEDULES",
    "EsamBlipMaskGenerator",
    "coarse_to_fine_levels",
    "full_grid_levels",
]
