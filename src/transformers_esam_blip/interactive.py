"""Interactive segmentation of one image: encode it once, then prompt it with clicks, a box, texts or nothing at all.

    session = EsamBlipInteractiveSession.from_pretrained("esam-blip-shapes")
    session.set_image("scene.png")                          # the only encoder pass for this image
    [result] = session.segment(points=[[120, 80]], point_labels=[1])
    results = session.segment(texts=["the red circle", "the blue square"], box=[10, 20, 200, 220])
    everything = session.segment_everything()

What SAM's `SamPredictor` is to SAM, for this package's model and its text prompts. The web demo
(`transformers_esam_blip.web_demo`) keeps one session per browser tab.
"""

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch

from .encoded_image import EncodedImageModel, best_of_queries, encode_image
from .mask_generator import GRID_SCHEDULES, EsamBlipMaskGenerator
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor
from .prompts import PromptLabel
from .text_prompt_strategies import pair_with_texts

# Point labels a person can give: foreground and background (box corners come from the box).
USER_POINT_LABELS = (int(PromptLabel.FOREGROUND), int(PromptLabel.BACKGROUND))
# Everything mode on a small image: a 16 x 16 grid, coarse to fine (see `EsamBlipMaskGenerator`).
DEFAULT_EVERYTHING_POINTS_PER_SIDE = 16
DEFAULT_EVERYTHING_GRID = "coarse_to_fine"


@dataclass
class EsamBlipQueryResult:
    """
    The best mask of one query (the click/box query, or one text with the clicks and box).

    Attributes:
        mask: `[H, W]` bool at the image size.
        score: the predicted IoU of the mask (the best of the candidates).
        text: the query's text, `None` for a point/box query.
        match_probability: BLIP ITM probability that the text describes the image (texts only).
        is_match: `match_probability >= match_threshold` and no unknown word (texts only).
        unknown_words: the text's words the tokenizer does not know; such a text is never a match.
        heatmap: `[g, g]` Grad-CAM of the text over the BLIP patch grid (texts only).
        points: `[K, 2]` (x, y) image pixels of the points that prompted the mask (the user's, plus the salient points
            of a Grad-CAM text prompt).
        point_labels: `[K]` their labels (1 foreground or salient, 0 background).
    """

    mask: np.ndarray
    score: float
    text: str | None = None
    match_probability: float | None = None
    is_match: bool | None = None
    unknown_words: list[str] = field(default_factory=list)
    heatmap: np.ndarray | None = None
    points: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)


@dataclass
class EsamBlipEverythingResult:
    """
    Every mask found in the image (automatic mask generation), largest first.

    Attributes:
        masks: `[K, H, W]` bool.
        scores: `[K]` predicted IoU.
        boxes: `[K, 4]` `[x0, y0, x1, y1]` (inclusive) of each mask.
        num_points_decoded: how many grid points went through the decoder.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    num_points_decoded: int


def load_image(image: Any) -> PIL.Image.Image:
    """
    `image` as an RGB `PIL.Image`: a path (any format PIL reads), a `PIL.Image`, or a `[H, W, 3]`/`[H, W]` uint8 array.

    Raises:
        `ValueError`: the file is not an image PIL can read, or the array has the wrong shape or type.
        `TypeError`: `image` is none of those.
    """
    if isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        if not os.path.isfile(name):
            raise ValueError(f"`image`: {name} is not a file.")
        try:
            with PIL.Image.open(name) as opened:
                opened.load()
                return opened.convert("RGB")
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            base = os.path.basename(name)
            reason = str(error).replace(repr(name), repr(base)).replace(name, base)  # no server paths in the message
            raise ValueError(
                f"`image`: {base} is not an image PIL can read ({reason}). Give a PNG, JPEG or another picture file."
            ) from error
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
            raise ValueError(
                f"`image` as an array must be uint8 [H, W, 3] (RGB) or [H, W] (gray), got {image.dtype} "
                f"{list(image.shape)}."
            )
        return PIL.Image.fromarray(image).convert("RGB")
    raise TypeError(f"`image` must be a path, a PIL.Image or a numpy array, got {type(image).__name__}.")


def _check_points(points: Any, point_labels: Any) -> tuple[list[list[float]], list[int]]:
    """`points [K, 2]` and `point_labels [K]` (all foreground when omitted) as lists, labels in `USER_POINT_LABELS`."""
    points = [] if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist()
    labels = [int(PromptLabel.FOREGROUND)] * len(points) if point_labels is None else list(point_labels)
    if len(labels) != len(points):
        raise ValueError(f"`point_labels` must hold one label per point ({len(points)}), got {len(labels)}.")
    for label in labels:
        if label not in USER_POINT_LABELS:
            raise ValueError(f"`point_labels` must be 1 (foreground) or 0 (background), got {label!r}.")
    return points, [int(label) for label in labels]


def _check_box(box: Any) -> list[float] | None:
    """`box` `[x1, y1, x2, y2]` with its corners in any order → top-left then bottom-right; `None` stays `None`."""
    if box is None:
        return None
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"`box` must be 4 finite numbers [x1, y1, x2, y2], got {box!r}.")
    x1, y1, x2, y2 = values.tolist()
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _check_texts(texts: Any) -> list[str]:
    """`texts` as a list of non-empty strings (a string is one text); `None` is no text."""
    if texts is None:
        return []
    texts = [texts] if isinstance(texts, str) else list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`texts[{index}]` must be a non-empty string, got {text!r}.")
    return texts


class EsamBlipInteractiveSession:
    """
    One image at a time, encoded once by [`set_image`] (EfficientSAM embeddings, and the BLIP tokens when the model
    has the BLIP half), then segmented as often as wanted from the cached encodings.

    Args:
        model ([`EsamBlipForPromptableSegmentation`]): in eval mode; shared by every session.
        processor ([`EsamBlipProcessor`]): the model's processor.
    """

    def __init__(self, model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor) -> None:
        if not isinstance(model, EsamBlipForPromptableSegmentation):
            raise TypeError(f"`model` must be an EsamBlipForPromptableSegmentation, got {type(model).__name__}.")
        model.model.require_segmentation()
        self.model = model
        self.processor = processor
        self.image: np.ndarray | None = None
        self.num_encodings = 0
        self._image_inputs: dict[str, torch.Tensor] = {}
        self._sizes: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, **kwargs: Any) -> "EsamBlipInteractiveSession":
        """A session over `model` (a built-in model's name, a converted folder or a Hub id), loaded in eval mode."""
        return cls(
            EsamBlipForPromptableSegmentation.from_pretrained(model, **kwargs).eval(),
            EsamBlipProcessor.from_pretrained(model),
        )

    @property
    def supports_text(self) -> bool:
        """Whether the model can take texts: the BLIP half, a tokenizer and a BLIP input size."""
        return (
            self.model.config.has_blip
            and self.processor.tokenizer is not None
            and self.processor.image_processor.blip_image_size is not None
        )

    @property
    def supports_everything(self) -> bool:
        """Whether everything mode can reuse the encodings (not with a fusion inside the EfficientSAM encoder)."""
        fusion = self.model.model.fusion
        return fusion is None or fusion.location != "encoder"

    @property
    def max_points(self) -> int:
        """Points per query the decoder sees (two fewer with a box, which takes two corner points)."""
        return self.model.config.prompt_encoder_config.max_num_points

    @torch.inference_mode()
    def set_image(self, image: Any) -> np.ndarray:
        """
        Encode `image` (see [`load_image`]) for every prompt that follows; replaces the previous image.

        Returns:
            `[H, W, 3]` uint8: the image as the session sees it.
        """
        picture = load_image(image)
        self._image_inputs, self._sizes = encode_image(self.model, self.processor, picture)
        self.image = np.asarray(picture)
        self.num_encodings += 1
        return self.image

    def _require_image(self) -> None:
        if self.image is None:
            raise ValueError("No image yet: call `set_image` (upload an image) before segmenting.")

    @torch.inference_mode()
    def segment(
        self,
        points: Any = None,
        point_labels: Any = None,
        box: Any = None,
        texts: Any = None,
        text_prompt_mode: str | None = None,
    ) -> list[EsamBlipQueryResult]:
        """
        Segment the current image from points, a box and texts, all optional but not all absent.

        Without texts, the points and the box form one query. With texts, each text is a query and the points and
        box join every one of them (e.g. "the red circle" plus a click on it).

        Args:
            points: `[K, 2]` (x, y) image pixels.
            point_labels: `[K]` 1 (foreground) or 0 (background); all foreground if omitted.
            box: `[x1, y1, x2, y2]` image pixels, two opposite corners in any order.
            texts: a string or a list of strings (needs a model with the BLIP half).
            text_prompt_mode: how texts become prompts (`text_prompt_strategies.text_prompt_mode_choices()`);
                defaults to the model's config.

        Returns:
            `list[EsamBlipQueryResult]`: one per text, or one for the point/box query.
        """
        self._require_image()
        points, labels = _check_points(points, point_labels)
        box = _check_box(box)
        texts = _check_texts(texts)
        if not points and box is None and not texts:
            raise ValueError("Nothing to segment from: give points, a box or a text.")
        limit = self.max_points - (2 if box is not None else 0)
        if len(points) > limit:
            raise ValueError(
                f"`points`: this model reads at most {self.max_points} points per query (two of them taken by a box); "
                f"got {len(points)} points{' and a box' if box is not None else ''}. Remove some."
            )
        if texts and not self.supports_text:
            raise ValueError(
                "`texts`: this model is segmentation-only (no BLIP half or no tokenizer); prompt it with points and a "
                "box."
            )
        num_queries = max(1, len(texts))
        sizes = self._sizes.expand(num_queries, 2)
        prompts = self.processor.image_processor.preprocess_prompts(
            sizes,
            input_points=[[points]] * num_queries if points else None,
            input_labels=[[labels]] * num_queries if points else None,
            input_boxes=[[box]] * num_queries if box is not None else None,
        )
        if texts:
            prompts.update(self.processor(text=texts, return_tensors="pt"))
            prompts["text_prompt_mode"] = text_prompt_mode
        elif text_prompt_mode is not None:
            raise ValueError("`text_prompt_mode` says how texts become prompts: pass it with `texts`.")
        outputs = self.model(**self._image_inputs, **prompts)
        masks, scores, _ = best_of_queries(outputs, self.processor, self._sizes)
        if not texts:
            return [EsamBlipQueryResult(masks[0].numpy(), scores[0].item(), points=points, point_labels=labels)]
        return self._text_results(outputs, prompts, texts, masks, scores, points, labels)

    def _text_results(
        self,
        outputs: Any,
        prompts: dict[str, Any],
        texts: list[str],
        masks: torch.Tensor,
        scores: torch.Tensor,
        points: list[list[float]],
        labels: list[int],
    ) -> list[EsamBlipQueryResult]:
        """Per text: its mask and score, the match, the unknown words, and the Grad-CAM heatmap and its points."""
        heatmaps = outputs.get("heatmap")
        text_points = text_labels = None
        if heatmaps is None:  # a learned prompter: Grad-CAM only for the picture, of the same ITM the match came from
            itm_image_embeds = self.model.model.itm_image_embeds(
                outputs.blip_image_embeds, image_embeddings=outputs.image_embeddings
            )
            gradcam, _ = self.model.model.blip.compute_gradcam(
                prompts["input_ids"],
                prompts["attention_mask"],
                pair_with_texts(itm_image_embeds, len(texts), "image_embeds"),
            )
            heatmaps = gradcam[:, 1]
        else:  # Grad-CAM text prompts: the salient points it chose, in image pixels
            text_points = self.processor.post_process_points(outputs.prompt_points, self._sizes)
            text_labels = outputs.prompt_labels
        unknown_words = self.processor.unknown_words(texts)
        results = []
        for index, text in enumerate(texts):
            extra_points, extra_labels = [], []
            if text_points is not None:
                real = text_labels[index] != PromptLabel.PADDING
                extra_points = text_points[index][real].tolist()
                extra_labels = text_labels[index][real].tolist()
            results.append(
                EsamBlipQueryResult(
                    mask=masks[index].numpy(),
                    score=scores[index].item(),
                    text=text,
                    match_probability=outputs.itm_probability[index].item(),
                    is_match=bool(outputs.is_match[index]),
                    unknown_words=unknown_words[index],
                    heatmap=heatmaps[index].float().numpy(),
                    points=points + extra_points,
                    point_labels=labels + extra_labels,
                )
            )
        return results

    @torch.inference_mode()
    def segment_everything(
        self,
        points_per_side: int = DEFAULT_EVERYTHING_POINTS_PER_SIDE,
        grid: str = DEFAULT_EVERYTHING_GRID,
        **generator_kwargs: Any,
    ) -> EsamBlipEverythingResult:
        """
        Every mask of the current image ([`EsamBlipMaskGenerator`] on the cached embeddings).

        Args:
            points_per_side: grid points per side.
            grid: `"coarse_to_fine"` or `"full"` (a key of `mask_generator.GRID_SCHEDULES`).
            generator_kwargs: further [`EsamBlipMaskGenerator`] settings (`pred_iou_thresh`, `points_per_batch`, ...).

        Returns:
            [`EsamBlipEverythingResult`], largest mask first.
        """
        self._require_image()
        if grid not in GRID_SCHEDULES:
            raise ValueError(f"`grid` must be one of {sorted(GRID_SCHEDULES)}, got {grid!r}.")
        if not self.supports_everything:
            raise ValueError(
                "Segment everything reuses the image embeddings, but this model fuses BLIP features inside the "
                f"EfficientSAM encoder (`fusion_type={self.model.config.fusion_type!r}`): there are none to reuse."
            )
        generator = EsamBlipMaskGenerator(
            EncodedImageModel(self.model, self._image_inputs),
            self.processor.image_processor,
            points_per_side=points_per_side,
            grid=grid,
            progress=False,
            **generator_kwargs,
        )
        found = generator(PIL.Image.fromarray(self.image))
        height, width = self.image.shape[:2]
        masks = torch.stack(found["masks"]).numpy() if found["masks"] else np.zeros((0, height, width), dtype=bool)
        order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
        return EsamBlipEverythingResult(
            masks=masks[order],
            scores=np.asarray(found["scores"], dtype=np.float32).reshape(-1)[order],
            boxes=np.asarray(found["bounding_boxes"], dtype=np.int64).reshape(-1, 4)[order],
            num_points_decoded=found["num_points_decoded"],
        )


__all__ = [
    "DEFAULT_EVERYTHING_GRID",
    "DEFAULT_EVERYTHING_POINTS_PER_SIDE",
    "USER_POINT_LABELS",
    "EsamBlipEverythingResult",
    "EsamBlipInteractiveSession",
    "EsamBlipQueryResult",
    "load_image",
]
