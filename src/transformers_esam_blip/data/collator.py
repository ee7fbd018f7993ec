"""Data collator for `transformers.Trainer`: images, texts, ragged point/box prompts and target masks → a batch."""

from collections.abc import Mapping, Sequence
from typing import Any

import PIL.Image
import torch
from torch.nn import functional as F

from ..processing_esam_blip import EsamBlipProcessor
from .masks import mask_to_bool

# Side of EfficientSAM's low-resolution mask logits (`pred_masks [..., 256, 256]`) at the 1024 input.
DEFAULT_MASK_SIZE = 256
# A query with no real point: one padding point, which the processor keeps and the model ignores.
_PADDING_QUERY = ([[-1.0, -1.0]], [-1])
_ONE_EXAMPLE = "one example is one image, one text and one mask"
# Columns of precomputed embeddings (`training.cache_image_embeddings`), passed to the model instead of the pixels.
CACHED_EMBEDDING_COLUMNS = ("image_embeddings", "blip_image_embeds")


def _gather(features: Sequence[Mapping[str, Any]], key: str) -> list[Any] | None:
    """`key`'s values when every example has it (not None), None when none has; a clear error otherwise."""
    present = [i for i, feature in enumerate(features) if feature.get(key) is not None]
    if not present:
        return None
    if len(present) != len(features):
        missing = [i for i in range(len(features)) if i not in set(present)]
        raise ValueError(
            f"Got {len(present)} `{key}` values for {len(features)} examples (missing in examples {missing}); give "
            f"`{key}` in every example of a batch or in none ({_ONE_EXAMPLE})."
        )
    return [feature[key] for feature in features]


class EsamBlipDataCollator:
    r"""
    Collate referring-segmentation examples (the columns of [`REFERRING_FEATURES`], e.g. from
    [`synthetic_referring_dataset`] or [`load_referring_dataset`]) into the inputs of
    [`EsamBlipForPromptableSegmentation.forward`].

    One example is a dict with:
    - `image`: a PIL image, numpy array or tensor (any form [`EsamBlipImageProcessor`] takes);
    - `text` (*optional*): one string;
    - `mask` (*optional*): the target, `(H, W)` at the image's size; a PIL image (non-zero = object), bool/int array
      or tensor. An empty mask is an absent object;
    - `match_label` (*optional*): 1 if the text matches the image, 0 if not; without it, 1 for a non-empty mask;
    - `input_points` (*optional*): `[[x, y], ...]`, one query's points in image pixels, any number per example;
      `input_labels` (*optional*): their labels (1 foreground, 0 background; all 1 if omitted);
    - `input_boxes` (*optional*): `[x1, y1, x2, y2]` in image pixels;
    - `image_embeddings` / `blip_image_embeds` (*optional*, in every example or none): the image's embeddings from
      [`cache_image_embeddings`], passed to the model instead of `pixel_values` / `blip_pixel_values` (the image is
      still read for its size, which prompts and masks are rescaled from).

    `image` is required; `text`, `mask` and `input_boxes` must be in every example of a batch or in none, and so must
    `match_label` when there are no masks; `input_points` may be missing in some examples (they get a padding-only
    query, which a text prompt fills).

    With `transformers.Trainer`, pass `remove_unused_columns=False` (the collator needs the raw columns) and
    `label_names=["labels", "match_labels"]` (otherwise Trainer also takes `input_labels` for a label).

    Args:
        processor ([`EsamBlipProcessor`]): images, prompts and (with a tokenizer) texts.
        mask_size (`int` or `"original"`, defaults to 256): side of the square `labels`. 256 is the size of the
            model's low-resolution mask logits; masks are resized from their image's size (aspect not kept, as
            the image is) by area averaging then thresholding at 0.5, so a label pixel is foreground when at least
            half of it is. `"original"` keeps the masks as they are (every image of a batch must have one size).
    """

    def __init__(self, processor: EsamBlipProcessor, mask_size: int | str = DEFAULT_MASK_SIZE) -> None:
        if not isinstance(processor, EsamBlipProcessor):
            raise TypeError(f"`processor` must be an EsamBlipProcessor, got {type(processor).__name__}.")
        if mask_size != "original" and (not isinstance(mask_size, int) or isinstance(mask_size, bool) or mask_size < 1):
            raise ValueError(f"`mask_size` must be a positive int or 'original', got {mask_size!r}.")
        self.processor = processor
        self.mask_size = mask_size

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """
        Returns:
            `dict` with `pixel_values [B, 3, S, S]`, `blip_pixel_values [B, 3, s, s]` (when the processor makes
            them), `input_ids` / `attention_mask [B, L]` (with texts), `input_points [B, 1, P, 2]` /
            `input_labels [B, 1, P]` / `input_boxes [B, 1, 4]` (with prompts, in the SAM frame, padded),
            `labels [B, 1, mask_size, mask_size]` float32 0/1 (with masks), `image_embeddings [B, C, g, g]` /
            `blip_image_embeds [B, 1 + N, D]` in place of the pixels (with cached embeddings), `match_labels [B]` int64 (with masks
            or match labels) and, for `mask_size="original"`, `original_sizes [B, 2]` (which the model needs to
            compare full-resolution labels with its logits).
        """
        if not isinstance(features, Sequence) or not features:
            raise ValueError(f"`features` must be a non-empty list of examples, got {features!r:.80}.")
        for i, feature in enumerate(features):
            if not isinstance(feature, Mapping):
                raise TypeError(f"`features[{i}]` must be a dict, got {type(feature).__name__}.")
            if feature.get("image") is None:
                raise ValueError(f"`features[{i}]` has no `image`; keys: {sorted(feature)}.")
        texts = _gather(features, "text")
        masks = _gather(features, "mask")
        for i, text in enumerate(texts or []):
            if not isinstance(text, str):
                count = f" of {len(text)} texts" if isinstance(text, (list, tuple)) else ""
                raise TypeError(
                    f"`features[{i}]['text']` must be one string ({_ONE_EXAMPLE}), got {type(text).__name__}{count}."
                )
        cached = {name: _gather(features, name) for name in CACHED_EMBEDDING_COLUMNS}
        if cached["image_embeddings"] is None:
            inputs = self.processor(
                images=[feature["image"] for feature in features],
                text=texts,
                return_tensors="pt",
                **self._prompts(features),
            )
        else:
            # Embeddings computed once (`cache_image_embeddings`): the images are read only for their sizes, which
            # the prompts are rescaled from, and never resized or normalised again.
            sizes = [self._image_size(feature["image"], i) for i, feature in enumerate(features)]
            inputs = {"original_sizes": torch.tensor(sizes, dtype=torch.int64)}
            inputs.update(self.processor.image_processor.preprocess_prompts(sizes, **self._prompts(features)))
            if texts is not None:
                inputs.update(self.processor(text=texts, return_tensors="pt"))
            for name, embeddings in cached.items():
                if embeddings is not None:
                    inputs[name] = torch.stack([torch.as_tensor(embedding) for embedding in embeddings]).float()
        # The model reads `original_sizes` only to bring full-resolution labels to its 256² logits.
        dropped = (
            ("reshaped_input_sizes",) if self.mask_size == "original" else ("original_sizes", "reshaped_input_sizes")
        )
        batch = {key: value for key, value in inputs.items() if key not in dropped}
        if masks is None:
            match_labels = _gather(features, "match_label")
        else:
            sizes = inputs["original_sizes"].tolist()
            targets = [self._mask_tensor(mask, i, tuple(size)) for i, (mask, size) in enumerate(zip(masks, sizes))]
            batch["labels"] = self._stack_labels(targets)
            match_labels = [
                int(target.any()) if feature.get("match_label") is None else feature["match_label"]
                for feature, target in zip(features, targets)
            ]
        if match_labels is not None:
            bad = [(i, label) for i, label in enumerate(match_labels) if label not in (0, 1)]
            if bad:
                raise ValueError(f"`match_label` must be 0 or 1; got (example, value) {bad}.")
            batch["match_labels"] = torch.tensor([int(label) for label in match_labels], dtype=torch.int64)
        return batch

    @staticmethod
    def _prompts(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per-example prompts nested as the processor wants them (images → one query → points)."""
        prompts: dict[str, Any] = {}
        boxes = _gather(features, "input_boxes")
        if boxes is not None:
            prompts["input_boxes"] = [[box] for box in boxes]
        if any(feature.get("input_points") is not None for feature in features):
            points, labels = [], []
            for i, feature in enumerate(features):
                query_points, query_labels = feature.get("input_points"), feature.get("input_labels")
                if query_points is None:
                    if query_labels is not None:
                        raise ValueError(f"`features[{i}]` has `input_labels` but no `input_points`.")
                    query_points, query_labels = _PADDING_QUERY
                elif query_labels is None:
                    query_labels = [1] * len(query_points)
                points.append([query_points])
                labels.append([query_labels])
            prompts["input_points"], prompts["input_labels"] = points, labels
        elif any(feature.get("input_labels") is not None for feature in features):
            raise ValueError("Some examples have `input_labels` but none has `input_points`.")
        return prompts

    def _image_size(self, image: Any, index: int) -> tuple[int, int]:
        """`(height, width)` of one example's image, without decoding a PIL image's pixels."""
        if isinstance(image, PIL.Image.Image):
            return image.height, image.width
        rgb = self.processor.image_processor._to_rgb_tensor(image, f"features[{index}]['image']")
        return int(rgb.shape[-2]), int(rgb.shape[-1])

    @staticmethod
    def _mask_tensor(mask: Any, index: int, image_size: tuple[int, int]) -> torch.Tensor:
        name = f"features[{index}]['mask']"
        target = torch.from_numpy(mask_to_bool(mask, name))
        if tuple(target.shape) != image_size:
            raise ValueError(
                f"`{name}` is {target.shape[0]}x{target.shape[1]} (HxW) but its image is {image_size[0]}x"
                f"{image_size[1]}; a mask must have the size of its image."
            )
        return target

    def _stack_labels(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """`B` bool `(H_i, W_i)` masks → `[B, 1, mask_size, mask_size]` float32 (or `[B, 1, H, W]` for "original")."""
        if self.mask_size == "original":
            sizes = sorted({tuple(target.shape) for target in targets})
            if len(sizes) > 1:
                raise ValueError(
                    f"`mask_size='original'` needs one mask size per batch, got {sizes}; use an int `mask_size`."
                )
            return torch.stack(targets)[:, None].float()
        size = (self.mask_size, self.mask_size)
        resized = [F.interpolate(target[None, None].float(), size=size, mode="area") for target in targets]
        return (torch.cat(resized) >= 0.5).float()


__all__ = ["CACHED_EMBEDDING_COLUMNS", "DEFAULT_MASK_SIZE", "EsamBlipDataCollator"]
