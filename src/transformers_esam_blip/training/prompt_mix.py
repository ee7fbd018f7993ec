"""
SAM's training mix of prompts for referring-segmentation data: every batch is prompted by texts, texts plus points,
points, or a box (sampled from each example's mask), and a share of the steps is simulated interactive refinement: a
first pass without gradient, then the trained pass with its best mask fed back as a mask prompt plus a corrective
point from the error region.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from ..best_mask import select_best_masks
from ..configuration_esam_blip import EsamBlipConfig
from ..data import mask_to_bool
from ..processing_esam_blip import EsamBlipProcessor
from ..prompts import MASK_PROMPT_LOGIT, PromptLabel, check_threshold
from .collators import EsamBlipTrainingCollator

PROMPT_KINDS = ("text", "text_points", "points", "box")


@dataclass
class PromptMix:
    r"""
    How [`EsamBlipPromptMixCollator`] and [`EsamBlipRefinementTrainer`] prompt the batches.

    Args:
        weights (`dict[str, float]`): relative frequency of each batch kind (`PROMPT_KINDS`): `"text"` the texts
            alone; `"text_points"` texts plus 1-2 foreground points on present objects; `"points"` 1 to `max_points`
            foreground/background points (a single foreground point with probability `single_point_probability`,
            the everything-mode case); `"box"` the mask's box, each side jittered by a normal with `box_jitter` times
            the box side (at most `max_box_jitter` of the image side), as SAM trains.
        max_points (`int`): most sampled points per query; keep one slot free for the corrective point.
        single_point_probability (`float`): share of `"points"` batches with one foreground point.
        refine_probability (`float`): share of steps trained as a refinement pass (needs a model with a mask
            encoder; 0 otherwise).
        binary_mask_probability (`float`): share of refinement passes whose mask prompt is the binarised previous
            mask (`+/-MASK_PROMPT_LOGIT`, what a user's mask becomes) instead of its logits.
        seed (`int`): the sampling seed (each process adds its rank).
    """

    weights: dict[str, float] = field(
        default_factory=lambda: {"text": 0.3, "text_points": 0.1, "points": 0.4, "box": 0.2}
    )
    max_points: int = 5
    single_point_probability: float = 0.4
    box_jitter: float = 0.1
    max_box_jitter: float = 0.1
    refine_probability: float = 0.25
    binary_mask_probability: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(f"`weights` of PromptMix must be keyed by {PROMPT_KINDS}, got unknown keys {unknown}.")
        if any(not np.isfinite(weight) or weight < 0 for weight in self.weights.values()):
            raise ValueError(f"`weights` of PromptMix must be finite and >= 0, got {self.weights}.")
        if sum(self.weights.values()) <= 0:
            raise ValueError(f"`weights` of PromptMix must have a positive sum, got {self.weights}.")
        if not isinstance(self.max_points, int) or self.max_points < 1:
            raise ValueError(f"`max_points` of PromptMix must be an int >= 1, got {self.max_points!r}.")
        for name in ("single_point_probability", "refine_probability", "binary_mask_probability", "box_jitter"):
            check_threshold(name, getattr(self, name))
        check_threshold("max_box_jitter", self.max_box_jitter)

    def kind_probabilities(self) -> tuple[list[str], np.ndarray]:
        kinds = [kind for kind in PROMPT_KINDS if self.weights.get(kind, 0) > 0]
        weights = np.array([self.weights[kind] for kind in kinds], dtype=np.float64)
        return kinds, weights / weights.sum()


def _sample_pixels(rng: np.random.Generator, region: np.ndarray, count: int) -> list[list[float]]:
    """`count` pixel centres `(x, y)` drawn uniformly from the True pixels of `region`."""
    ys, xs = np.nonzero(region)
    picks = rng.integers(len(xs), size=count)
    return [[float(xs[i]), float(ys[i])] for i in picks]


def sample_points(
    rng: np.random.Generator, mask: np.ndarray, count: int, single: bool
) -> tuple[list[list[float]], list[int]]:
    """
    Points on `mask` (bool `[H, W]`, non-empty): the first foreground, each further one foreground or background
    (half and half, background drawn outside the mask); one foreground point when `single`.
    """
    if single:
        return _sample_pixels(rng, mask, 1), [int(PromptLabel.FOREGROUND)]
    points = _sample_pixels(rng, mask, 1)
    labels = [int(PromptLabel.FOREGROUND)]
    outside = ~mask
    for _ in range(count - 1):
        foreground = rng.random() < 0.5 or not outside.any()
        points += _sample_pixels(rng, mask if foreground else outside, 1)
        labels.append(int(PromptLabel.FOREGROUND if foreground else PromptLabel.BACKGROUND))
    return points, labels


def jittered_box(rng: np.random.Generator, mask: np.ndarray, jitter: float, max_jitter: float) -> list[float]:
    """The box of `mask` (x1, y1, x2, y2 in pixels), each side moved by noise as SAM's training does."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
    noise = rng.normal(size=4) * jitter * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    noise = np.clip(noise, -max_jitter * max(height, width), max_jitter * max(height, width))
    x1, y1, x2, y2 = x1 + noise[0], y1 + noise[1], x2 + noise[2], y2 + noise[3]
    x1, x2 = sorted((float(np.clip(x1, 0, width - 1)), float(np.clip(x2, 0, width - 1))))
    y1, y2 = sorted((float(np.clip(y1, 0, height - 1)), float(np.clip(y2, 0, height - 1))))
    return [x1, y1, x2, y2]


class EsamBlipPromptMixCollator(EsamBlipTrainingCollator):
    r"""
    [`EsamBlipTrainingCollator`] that prompts each batch by one kind of [`PromptMix`], drawn at random: the texts
    (`"text"`), the texts plus points on present objects (`"text_points"`), or, without texts, points or a jittered
    box sampled from each example's mask (`"points"`, `"box"`; examples whose object is absent are left out of those
    batches, and a batch with no present object falls back to `"text"`). Non-text batches carry no `match_labels`.

    Args:
        processor ([`EsamBlipProcessor`]): images, prompts and texts.
        config ([`EsamBlipConfig`]): the config of the model being trained.
        prompt_mix ([`PromptMix`]): the mix.
        rank (`int`, defaults to 0): the process index, added to the seed so that processes draw different prompts.
    """

    def __init__(
        self, processor: EsamBlipProcessor, config: EsamBlipConfig, prompt_mix: PromptMix, rank: int = 0
    ) -> None:
        super().__init__(processor, config)
        max_points = config.prompt_encoder_config.max_num_points
        if prompt_mix.max_points > max_points:
            raise ValueError(
                f"`prompt_mix.max_points` ({prompt_mix.max_points}) exceeds the model's `max_num_points` ({max_points})."
            )
        self.prompt_mix = prompt_mix
        self.rng = np.random.default_rng([prompt_mix.seed, rank])
        self.kinds, self.probabilities = prompt_mix.kind_probabilities()

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        kind = self.kinds[self.rng.choice(len(self.kinds), p=self.probabilities)]
        if kind == "text":
            return super().__call__(features)
        masks = [mask_to_bool(feature["mask"], f"features[{i}]['mask']") for i, feature in enumerate(features)]
        present = [i for i, mask in enumerate(masks) if mask.any()]
        if not present:
            return super().__call__(features)
        mix = self.prompt_mix
        if kind == "text_points":
            prompted = []
            for feature, mask in zip(features, masks):
                if mask.any():
                    points = _sample_pixels(self.rng, mask, int(self.rng.integers(1, 3)))
                    labels = [int(PromptLabel.FOREGROUND)] * len(points)
                    feature = {**feature, "input_points": points, "input_labels": labels}
                prompted.append(feature)
            return super().__call__(prompted)
        prompted = []
        for i in present:
            feature = {key: value for key, value in features[i].items() if key not in ("text", "match_label")}
            if kind == "points":
                single = bool(self.rng.random() < mix.single_point_probability)
                count = 1 if single else int(self.rng.integers(2, mix.max_points + 1))
                feature["input_points"], feature["input_labels"] = sample_points(self.rng, masks[i], count, single)
            else:
                feature["input_boxes"] = jittered_box(self.rng, masks[i], mix.box_jitter, mix.max_box_jitter)
            prompted.append(feature)
        batch = super().__call__(prompted)
        batch.pop("match_labels", None)
        return batch


def corrective_points(
    best_logits: torch.Tensor, labels: torch.Tensor, frame_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One point per query from the error region of a prediction, as SAM's interactive training picks it: a pixel
    drawn uniformly from the pixels the prediction gets wrong, foreground where the target is (a missed part),
    background where it is not (a false part); padding where there is no error.

    Args:
        best_logits: `[B, Q, h, w]` the previous pass's chosen mask logits.
        labels: `[B, Q, h, w]` the binary targets at the same size.
        frame_size: the encoder frame `S`; the point is the centre of the chosen low-resolution pixel, in that frame.

    Returns:
        `points [B, Q, 1, 2]` and `labels [B, Q, 1]`.
    """
    errors = (best_logits > 0) != labels.bool()
    flat = errors.flatten(2).float()
    has_error = flat.sum(-1) > 0
    weights = torch.where(has_error[..., None], flat, torch.ones_like(flat))
    index = torch.multinomial(weights.flatten(0, 1), 1, generator=generator).reshape(*flat.shape[:2])
    width = labels.shape[-1]
    scale = frame_size / width
    points = torch.stack([(index % width + 0.5) * scale, (index // width + 0.5) * scale], dim=-1)
    target = labels.flatten(2).gather(2, index[..., None])[..., 0].bool()
    point_labels = torch.where(target, int(PromptLabel.FOREGROUND), int(PromptLabel.BACKGROUND))
    points = torch.where(has_error[..., None], points, torch.full_like(points, -1.0))
    point_labels = torch.where(has_error, point_labels, int(PromptLabel.PADDING))
    return points[:, :, None], point_labels[:, :, None]


class EsamBlipRefinementTrainer(Trainer):
    r"""
    `transformers.Trainer` whose steps are, with probability `prompt_mix.refine_probability`, SAM's simulated
    interactive refinement: a first forward without gradient, then the trained forward with the first pass's best
    mask (by predicted IoU) as `input_masks` (its logits, or binarised to `+/-MASK_PROMPT_LOGIT`) and a corrective
    point from the error region added to every query. Other steps, and evaluation, are plain. Needs a model with a
    mask encoder (`prompt_encoder_config.mask_prompts`) when `refine_probability > 0`.

    Args:
        prompt_mix ([`PromptMix`]): the refinement settings; the other arguments are `Trainer`'s.
    """

    def __init__(self, *args: Any, prompt_mix: PromptMix, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if prompt_mix.refine_probability > 0 and not config.prompt_encoder_config.mask_prompts:
            raise ValueError(
                "`prompt_mix.refine_probability` > 0 trains mask prompts, but the model has no mask encoder "
                "(`prompt_encoder_config.mask_prompts=False`; `--mask_prompts` adds one in the training command)."
            )
        self.prompt_mix = prompt_mix
        self.refine_rng = np.random.default_rng([prompt_mix.seed, self.args.process_index, 1])
        self.refine_generator = torch.Generator().manual_seed(prompt_mix.seed * 1000 + self.args.process_index)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and "labels" in inputs and self.refine_rng.random() < self.prompt_mix.refine_probability:
            inputs = self._refinement_inputs(model, inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    @torch.no_grad()
    def _refinement_inputs(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        first = model(**{key: value for key, value in inputs.items() if key not in ("labels", "match_labels")})
        logits, _ = select_best_masks(first.pred_masks, first.iou_scores)  # [B, Q, h, w]
        labels = inputs["labels"].to(logits.device)
        if labels.ndim == 3:
            labels = labels[:, None]
        labels = labels.expand(-1, logits.shape[1], -1, -1)
        config = self.model.config
        if tuple(logits.shape[-2:]) != (config.prompt_encoder_config.mask_input_size,) * 2:
            raise ValueError(
                f"Refinement feeds `pred_masks` back as `input_masks`, but the decoder's masks are "
                f"{tuple(logits.shape[-2:])} and the mask encoder reads {config.prompt_encoder_config.mask_input_size}."
            )
        frame = config.sam_vision_config.image_size
        points, point_labels = corrective_points(logits.float().cpu(), labels.cpu(), frame, self.refine_generator)
        if self.refine_rng.random() < self.prompt_mix.binary_mask_probability:
            logits = torch.where(logits > 0, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).to(logits.dtype)
        device = inputs["labels"].device
        points, point_labels = points.to(device), point_labels.to(device)
        refined = {**inputs, "input_masks": logits.detach()}
        if inputs.get("input_points") is not None:
            old_labels = inputs.get("input_labels")
            if old_labels is None:
                old_labels = torch.ones(inputs["input_points"].shape[:-1], dtype=torch.long, device=device)
            refined["input_points"] = torch.cat([inputs["input_points"].to(points.dtype), points], dim=2)
            refined["input_labels"] = torch.cat([old_labels.long(), point_labels], dim=2)
        else:
            refined["input_points"], refined["input_labels"] = points, point_labels
        return refined


__all__ = [
    "PROMPT_KINDS",
    "EsamBlipPromptMixCollator",
    "EsamBlipRefinementTrainer",
    "PromptMix",
    "corrective_points",
    "jittered_box",
    "sample_points",
]
