"""`pipeline("text-prompted-segmentation")`: masks, heatmaps and match scores for texts describing what to segment."""

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForMaskGeneration
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.utils import logging

from .best_mask import select_best_masks
from .modeling_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipSegmentationOutput
from .prompts import PromptLabel, check_finite
from .text_prompt_strategies import TEXT_PROMPT_STRATEGIES, resolve_text_prompt_mode

logger = logging.get_logger(__name__)

TASK = "text-prompted-segmentation"


def _text_list(text: Any, name: str) -> list[str]:
    """One string or a non-empty list of non-empty strings, as a list."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"`{name}` must be a string or a non-empty list of strings, got {texts!r}.")
    for index, item in enumerate(texts):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"`{name}[{index}]` must be a non-empty string, got {item!r}.")
    return list(texts)


class TextPromptedSegmentationPipeline(Pipeline):
    """
    Text-prompted segmentation with an EsamBlip checkpoint that has both halves. Zero-shot (`text_prompt_mode=
    "gradcam"`): each text's BLIP Grad-CAM heatmap gives salient points, EfficientSAM turns them into a mask. With a
    trained text prompter (`"learned"`, e.g. the built-in `esam-blip-shapes`), the prompter's tokens prompt the mask
    decoder directly. Either way BLIP ITM says whether the text matches at all.

    ```python
    >>> import transformers_esam_blip  # registers the task
    >>> from transformers import pipeline
    >>> segmenter = pipeline("text-prompted-segmentation", model="esam-blip-base")
    >>> results = segmenter("photo.jpg", ["a dog", "a red ball"])   # one model call for both texts
    >>> results[0]["mask"].shape, results[0]["score"], results[0]["match_probability"]
    ```

    Calls:
    - `segmenter(image, text)` or `segmenter(image, [text, ...])`: a list with one dict per text;
    - `segmenter([image, ...], [text, ...])`: every image with the same texts; `segmenter([image, ...], [[texts of
      image 0], [texts of image 1], ...])`: texts per image. Either way a list (per image) of lists (per text);
    - `segmenter({"image": image, "text": text_or_texts})`, or a list/dataset/generator of such dicts.

    Images are paths, URLs, `PIL.Image`s, or arrays/tensors the processor accepts. All texts of an image go through
    the model in one call, so the image is encoded once.

    Each result dict holds:
    - `"text"` (`str`): the text as given;
    - `"mask"` (`torch.BoolTensor` `[H, W]`): the candidate with the highest predicted IoU, at the original size;
    - `"score"` (`float`): its predicted IoU;
    - `"points"` (`list[list[float]]`): the prompt points `[x, y]` in original-image pixels (padding dropped; empty
      with learned prompts);
    - `"point_labels"` (`list[int]`): 1 salient point, 0 background point;
    - `"heatmap"` (`torch.FloatTensor` `[g, g]`): the text's Grad-CAM (caption-mean row); None with learned prompts;
    - `"enhanced_heatmap"` (`torch.FloatTensor` `[g, g]`): the mask-enhanced heatmap, in [0, 1]; None with learned
      prompts;
    - `"match_probability"` (`float`): BLIP ITM probability that the text matches the image;
    - `"is_match"` (`bool`): False means the object is probably absent and the mask should not be trusted;
    - `"unknown_words"` (`list[str]`): the text's words the tokenizer does not know (then `is_match` is False and a
      warning names them).

    Call parameters: `mask_threshold` (`float`, defaults to 0.0, the logit above which a pixel is in the mask),
    `text_prompt_mode` (`"auto"` (default: `"learned"` when the model has a trained prompter, else `"gradcam"`),
    `"learned"` or `"gradcam"`) and `timeout` (`float`, seconds to fetch an image URL).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        # Remote code loads the model and this module from separate copies of the modeling code (a cache folder per
        # loaded module), so the class is recognised by name.
        model_classes = {cls.__name__ for cls in type(self.model).__mro__}
        if EsamBlipForPromptableSegmentation.__name__ not in model_classes or not config.has_segmentation:
            raise ValueError(
                f"{TASK} needs an EsamBlipForPromptableSegmentation with an EfficientSAM half, got "
                f"{type(self.model).__name__}."
            )
        if not config.has_blip:
            raise ValueError(
                f"{TASK} needs a checkpoint with the BLIP half (texts are matched and located by BLIP); this one is "
                "segmentation-only. Convert it with `--blip` as well, or prompt it with points and boxes."
            )
        if self.processor is None or getattr(self.processor, "tokenizer", None) is None:
            raise ValueError(
                f"{TASK} needs an EsamBlipProcessor with a tokenizer: pass `processor=` (e.g. "
                "`EsamBlipProcessor.from_pretrained(checkpoint)`)."
            )
        if self.processor.image_processor.blip_image_size is None:
            raise ValueError(f"{TASK} needs an image processor with `blip_image_size` set (the BLIP input).")

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """
        Save the model, the processor and this pipeline's code, with the task in the config's `custom_pipelines`: the
        folder then loads with `pipeline("text-prompted-segmentation", model=folder, trust_remote_code=True)` where
        this package is not installed. Because the config names the pipeline code, `pipeline()` asks for
        `trust_remote_code=True` for that folder also where the package is installed (or pass `pipeline_class`).
        """
        super().save_pretrained(save_directory, **kwargs)
        # Pipeline.save_pretrained saves a tokenizer and an image processor, but not a processor.
        self.processor.save_pretrained(save_directory, **kwargs)

    def __call__(self, images: Any, texts: str | list[str] | list[list[str]] | None = None, **kwargs: Any) -> list:
        """
        Segment what each text describes.

        Args:
            images: an image, a list of images, or `{"image": ..., "text": ...}` dicts (then no `texts`).
            texts: a text or a list of texts (for every image), or one list of texts per image.
            kwargs: `mask_threshold`, `timeout`, and the usual pipeline arguments.

        Returns:
            For one image, a list with one result dict per text; for a list of images, one such list per image.
        """
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if batch_size != 1:
            # Each image is already one batch (all its texts in one model call); images have different text counts.
            raise ValueError(f"{TASK} runs one image per model call with all its texts; `batch_size` must be 1.")
        if texts is None:
            return super().__call__(images, **kwargs)
        if isinstance(images, dict):
            raise TypeError("Give the texts either in the input dict (`text`) or as `texts`, not both.")
        if not isinstance(images, (list, tuple)):
            return super().__call__({"image": images, "text": _text_list(texts, "texts")}, **kwargs)
        if not images:
            raise ValueError("`images` is an empty list.")
        if isinstance(texts, (list, tuple)) and texts and all(isinstance(item, (list, tuple)) for item in texts):
            if len(texts) != len(images):
                raise ValueError(
                    f"Got {len(texts)} lists of texts for {len(images)} images; give one list of texts per image, or "
                    "a single list for every image."
                )
            per_image = [_text_list(item, f"texts[{index}]") for index, item in enumerate(texts)]
        else:
            per_image = [_text_list(texts, "texts")] * len(images)
        return super().__call__([{"image": image, "text": text} for image, text in zip(images, per_image)], **kwargs)

    def _sanitize_parameters(
        self,
        mask_threshold: float | None = None,
        timeout: float | None = None,
        text_prompt_mode: str | None = None,
        **unexpected: Any,
    ) -> tuple[dict, dict, dict]:
        if unexpected:  # a misspelt keyword must not be swallowed
            raise TypeError(
                f"{TASK} got unexpected keyword arguments {sorted(unexpected)}; it takes `mask_threshold`, "
                "`text_prompt_mode`, `timeout` (and `batch_size`, `num_workers`)."
            )
        preprocess_params = {}
        if timeout is not None:
            if check_finite("timeout", timeout) <= 0:
                raise ValueError(f"`timeout` must be > 0 seconds, got {timeout!r}.")
            preprocess_params["timeout"] = float(timeout)
        postprocess_params = {}
        if mask_threshold is not None:
            postprocess_params["mask_threshold"] = check_finite("mask_threshold", mask_threshold)
        forward_params = {}
        if text_prompt_mode is not None:
            if not isinstance(text_prompt_mode, str):
                raise TypeError(
                    f"`text_prompt_mode` must be a string, got {type(text_prompt_mode).__name__} {text_prompt_mode!r}."
                )
            mode = resolve_text_prompt_mode(self.model.config, text_prompt_mode)
            TEXT_PROMPT_STRATEGIES[mode].check_model(self.model.base_model)
            forward_params["text_prompt_mode"] = mode
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`{"image", "text"}` → the processor's tensors for one image and its `T` texts (`input_ids [T, L]`)."""
        if not isinstance(inputs, dict) or "image" not in inputs or "text" not in inputs:
            raise ValueError(
                f'Each input must be a dict {{"image": ..., "text": ...}} (or pass `texts`), got {type(inputs).__name__}'
                f"{' with keys ' + str(sorted(inputs)) if isinstance(inputs, dict) else ''}."
            )
        texts = _text_list(inputs["text"], "text")
        image = inputs["image"]
        if isinstance(image, (str, PIL.Image.Image)):
            image = load_image(image, timeout=timeout)
        elif not isinstance(image, (np.ndarray, torch.Tensor)):
            raise TypeError(
                f"`image` must be a path, a URL, a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__}."
            )
        model_inputs = self.processor(images=image, text=texts, return_tensors="pt").to(self.dtype)
        return {"texts": texts, **model_inputs}

    def _forward(self, model_inputs: dict[str, Any], text_prompt_mode: str | None = None) -> dict[str, Any]:
        """One model call for the image and all its texts; the output holds `pred_masks [T, 1, 3, h, w]` and more."""
        texts, original_sizes = model_inputs.pop("texts"), model_inputs.pop("original_sizes")
        model_inputs.pop("reshaped_input_sizes", None)
        outputs = self.model(**model_inputs, text_prompt_mode=text_prompt_mode)
        return {"texts": texts, "original_sizes": original_sizes, "outputs": outputs}

    def postprocess(self, model_outputs: dict[str, Any], mask_threshold: float = 0.0) -> list[dict[str, Any]]:
        """The model output of one image → one result dict per text (see the class docstring)."""
        outputs: EsamBlipSegmentationOutput = model_outputs["outputs"]
        original_size = tuple(int(side) for side in model_outputs["original_sizes"][0])
        # Text prompts make one query per text; only its best candidate is upsampled to the image size.
        best_logits, best_scores = select_best_masks(outputs["pred_masks"][:, 0], outputs["iou_scores"][:, 0])
        masks = self.processor.post_process_masks([best_logits], [original_size], mask_threshold=mask_threshold)[0]
        results = []
        from_gradcam = outputs.get("prompt_points") is not None
        unknown_words = self.processor.unknown_words(model_outputs["texts"])
        for text, words in zip(model_outputs["texts"], unknown_words, strict=True):
            if words:
                logger.warning(
                    f"{text!r} holds words the model's tokenizer does not know ({', '.join(words)}): it is reported "
                    "as no match; the model cannot read them."
                )
        for t, text in enumerate(model_outputs["texts"]):
            points, point_labels = [], []
            if from_gradcam:
                real = outputs["prompt_labels"][t] != PromptLabel.PADDING
                text_points = outputs["prompt_points"][t][real]
                points = self.processor.post_process_points([text_points], [original_size])[0].tolist()
                point_labels = outputs["prompt_labels"][t][real].tolist()
            results.append(
                {
                    "text": text,
                    "mask": masks[t],
                    "score": best_scores[t].item(),
                    "points": points,
                    "point_labels": point_labels,
                    "heatmap": outputs["heatmap"][t].float() if from_gradcam else None,
                    "enhanced_heatmap": outputs["enhanced_heatmap"][t].float() if from_gradcam else None,
                    "match_probability": outputs["itm_probability"][t].item(),
                    "is_match": bool(outputs["is_match"][t]),
                    "unknown_words": unknown_words[t],
                }
            )
        return results


PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=TextPromptedSegmentationPipeline,
    # Saved as the Auto class's name in `custom_pipelines`, which `pipeline(..., trust_remote_code=True)` resolves in
    # `transformers` and then through the checkpoint's `auto_map`: a class of this package would not resolve there.
    pt_model=AutoModelForMaskGeneration,
    type="multimodal",
)

__all__ = ["TASK", "TextPromptedSegmentationPipeline"]
