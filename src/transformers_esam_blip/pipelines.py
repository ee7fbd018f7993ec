"""Segmentation pipelines: "text-prompted-segmentation" (texts) and "promptable-segmentation" (any prompt type)."""

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
PROMPTABLE_TASK = "promptable-segmentation"
# The prompts of one image that `pipeline("promptable-segmentation")` takes, as call keywords or input dict keys.
PROMPT_KEYS = ("text", "input_points", "input_labels", "input_boxes", "input_masks")
_VISUAL_PROMPT_KEYS = PROMPT_KEYS[1:]


def _text_list(text: Any, name: str) -> list[str]:
    """One string or a non-empty list of non-empty strings, as a list."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"`{name}` must be a string or a non-empty list of strings, got {texts!r}.")
    for index, item in enumerate(texts):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"`{name}[{index}]` must be a non-empty string, got {item!r}.")
    return list(texts)


def _load_input_image(image: Any, timeout: float | None) -> PIL.Image.Image | np.ndarray | torch.Tensor:
    """A path, URL or PIL image loaded as RGB; arrays and tensors as they are (the processor checks them)."""
    if isinstance(image, (str, PIL.Image.Image)):
        return load_image(image, timeout=timeout)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"`image` must be a path, a URL, a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__}."
        )
    return image


class _EsamBlipSegmentationPipeline(Pipeline):
    """
    What the segmentation pipelines share: an EsamBlip segmentation model with its [`EsamBlipProcessor`], one model
    call per image (all its prompts at once), the best candidate mask per query, and saving with the processor.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _task = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Remote code loads the model and this module from separate copies of the modeling code (a cache folder per
        # loaded module), so the class is recognised by name.
        model_classes = {cls.__name__ for cls in type(self.model).__mro__}
        if EsamBlipForPromptableSegmentation.__name__ not in model_classes or not self.model.config.has_segmentation:
            raise ValueError(
                f"{self._task} needs an EsamBlipForPromptableSegmentation with an EfficientSAM half, got "
                f"{type(self.model).__name__}."
            )
        if self.processor is None:
            raise ValueError(
                f"{self._task} needs an EsamBlipProcessor: pass `processor=` (e.g. "
                "`EsamBlipProcessor.from_pretrained(checkpoint)`)."
            )

    def _check_text_support(self) -> None:
        """Texts need the BLIP half, a tokenizer and the BLIP input: a `ValueError` naming what is missing."""
        if not self.model.config.has_blip:
            raise ValueError(
                f"{self._task}: texts need a checkpoint with the BLIP half (texts are matched and located by BLIP); "
                "this one is segmentation-only. Convert it with `--blip` as well, or prompt it with points and boxes."
            )
        if getattr(self.processor, "tokenizer", None) is None:
            raise ValueError(
                f"{self._task}: texts need an EsamBlipProcessor with a tokenizer: pass `processor=` (e.g. "
                "`EsamBlipProcessor.from_pretrained(checkpoint)`)."
            )
        if self.processor.image_processor.blip_image_size is None:
            raise ValueError(
                f"{self._task}: texts need an image processor with `blip_image_size` set (the BLIP input)."
            )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """
        Save the model, the processor and this pipeline's code, with the task in the config's `custom_pipelines`: the
        folder then loads with `pipeline(task, model=folder, trust_remote_code=True)` where this package is not
        installed. Because the config names the pipeline code, `pipeline()` asks for `trust_remote_code=True` for
        that folder also where the package is installed (or pass `pipeline_class`).
        """
        super().save_pretrained(save_directory, **kwargs)
        # Pipeline.save_pretrained saves a tokenizer and an image processor, but not a processor.
        self.processor.save_pretrained(save_directory, **kwargs)

    def _check_batch_size(self, kwargs: dict[str, Any]) -> None:
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if batch_size != 1:
            # Each image is already one batch (all its prompts in one model call); images have different counts.
            raise ValueError(
                f"{self._task} runs one image per model call with all its prompts; `batch_size` must be 1."
            )

    def _common_parameters(
        self, mask_threshold: float | None, timeout: float | None, text_prompt_mode: str | None
    ) -> tuple[dict, dict, dict]:
        """The checked `timeout` (preprocess), `text_prompt_mode` (forward) and `mask_threshold` (postprocess)."""
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

    def _forward(self, model_inputs: dict[str, Any], **forward_params: Any) -> dict[str, Any]:
        """One model call for the image and all its prompts; the output holds `pred_masks [N, Q, M, h, w]` and more."""
        texts, original_sizes = model_inputs.pop("texts"), model_inputs.pop("original_sizes")
        model_inputs.pop("reshaped_input_sizes", None)
        outputs = self.model(**model_inputs, **forward_params)
        return {"texts": texts, "original_sizes": original_sizes, "outputs": outputs}

    def _best_masks(
        self, outputs: EsamBlipSegmentationOutput, original_size: tuple[int, int], mask_threshold: float
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """
        Each query's candidate with the highest predicted IoU: `(masks, low_res_logits, scores)` with, per batch entry
        (the image, or each text), bool `[Q, H, W]` at the original size; `[N, Q, h, w]` logits; `[N, Q]` scores.
        """
        pred_masks, iou_scores = outputs["pred_masks"], outputs["iou_scores"]
        low_res_logits, scores = select_best_masks(pred_masks, iou_scores)
        masks = self.processor.post_process_masks(
            pred_masks, [original_size], mask_threshold=mask_threshold, iou_scores=iou_scores, best=True
        )
        return masks, low_res_logits, scores

    def _text_fields(
        self, outputs: EsamBlipSegmentationOutput, texts: list[str], original_size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        """
        Per text: the text, its Grad-CAM prompt points and heatmaps (empty/None with learned prompts), its match and
        its unknown words (with a warning naming them).
        """
        unknown_words = self.processor.unknown_words(texts)
        for text, words in zip(texts, unknown_words, strict=True):
            if words:
                logger.warning(
                    f"{text!r} holds words the model's tokenizer does not know ({', '.join(words)}): it is reported "
                    "as no match; the model cannot read them."
                )
        from_gradcam = outputs.get("prompt_points") is not None
        fields = []
        for t, text in enumerate(texts):
            points, point_labels = [], []
            if from_gradcam:
                real = outputs["prompt_labels"][t] != PromptLabel.PADDING
                text_points = outputs["prompt_points"][t][real]
                points = self.processor.post_process_points([text_points], [original_size])[0].tolist()
                point_labels = outputs["prompt_labels"][t][real].tolist()
            fields.append(
                {
                    "text": text,
                    "points": points,
                    "point_labels": point_labels,
                    "heatmap": outputs["heatmap"][t].float() if from_gradcam else None,
                    "enhanced_heatmap": outputs["enhanced_heatmap"][t].float() if from_gradcam else None,
                    "match_probability": outputs["itm_probability"][t].item(),
                    "is_match": bool(outputs["is_match"][t]),
                    "unknown_words": unknown_words[t],
                }
            )
        return fields


class TextPromptedSegmentationPipeline(_EsamBlipSegmentationPipeline):
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
    - `"score"` (`float`): its predicted IoU (SAM's IoU head is a linear regression: a score may land a little
      outside [0, 1]);
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

    To combine texts with points, boxes or a mask, use [`PromptableSegmentationPipeline`].
    """

    _task = TASK

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_text_support()

    def __call__(self, images: Any, texts: str | list[str] | list[list[str]] | None = None, **kwargs: Any) -> list:
        """
        Segment what each text describes.

        Args:
            images: an image, a list of images, or `{"image": ..., "text": ...}` dicts (then no `texts`).
            texts: a text or a list of texts (for every image), or one list of texts per image.
            kwargs: `mask_threshold`, `text_prompt_mode`, `timeout`, and the usual pipeline arguments.

        Returns:
            For one image, a list with one result dict per text; for a list of images, one such list per image.
        """
        self._check_batch_size(kwargs)
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
        return self._common_parameters(mask_threshold, timeout, text_prompt_mode)

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`{"image", "text"}` → the processor's tensors for one image and its `T` texts (`input_ids [T, L]`)."""
        if not isinstance(inputs, dict) or "image" not in inputs or "text" not in inputs:
            raise ValueError(
                f'Each input must be a dict {{"image": ..., "text": ...}} (or pass `texts`), got {type(inputs).__name__}'
                f"{' with keys ' + str(sorted(inputs)) if isinstance(inputs, dict) else ''}."
            )
        texts = _text_list(inputs["text"], "text")
        image = _load_input_image(inputs["image"], timeout)
        model_inputs = self.processor(images=image, text=texts, return_tensors="pt").to(self.dtype)
        return {"texts": texts, **model_inputs}

    def postprocess(self, model_outputs: dict[str, Any], mask_threshold: float = 0.0) -> list[dict[str, Any]]:
        """The model output of one image → one result dict per text (see the class docstring)."""
        outputs: EsamBlipSegmentationOutput = model_outputs["outputs"]
        original_size = tuple(int(side) for side in model_outputs["original_sizes"][0])
        # Text prompts make one query per text.
        masks, _, scores = self._best_masks(outputs, original_size, mask_threshold)
        texts = model_outputs["texts"]
        return [
            {**fields, "mask": masks[t][0], "score": scores[t, 0].item()}
            for t, fields in enumerate(self._text_fields(outputs, texts, original_size))
        ]


class PromptableSegmentationPipeline(_EsamBlipSegmentationPipeline):
    """
    Promptable segmentation as SAM's predictor does it, for every prompt type: points, boxes, masks and texts. Each
    query gets the candidate with the highest predicted IoU, at the original size, with its score. Texts need a
    checkpoint with the BLIP half; points, boxes and masks work with any EsamBlip segmentation checkpoint, masks
    with one that has a mask encoder (`prompt_encoder_config.mask_prompts`).

    ```python
    >>> import transformers_esam_blip  # registers the task
    >>> from transformers import pipeline
    >>> segmenter = pipeline("promptable-segmentation", model="esam-blip-shapes")
    >>> first = segmenter("scene.png", input_points=[[[40, 50]]])[0]           # one query of one point
    >>> first["mask"].shape, first["score"]
    >>> refined = segmenter("scene.png", input_points=[[[40, 50], [70, 20]]], input_labels=[[1, 0]],
    ...                     input_masks=[first["low_res_logits"]])[0]         # SAM's interactive refinement
    >>> segmenter("scene.png", text="the red circle", input_boxes=[[10, 10, 90, 90]])   # text plus a box
    ```

    Prompts are those of one image, in its pixels, with the image level of [`EsamBlipProcessor`]'s nesting removed:
    - `input_points`: per query, its points `(x, y)`, i.e. `[Q, P, 2]`;
    - `input_labels`: per query, a label per point (1 foreground, 0 background), i.e. `[Q, P]`; all 1 if omitted;
    - `input_boxes`: per query `[x1, y1, x2, y2]`, i.e. `[Q, 4]`;
    - `input_masks`: per query one 2-D mask, i.e. `[Q, H, W]`: binary (bool, 0/1, 0/255, a PIL "L"/"1" image) at
      the image's size, or logits at the model's mask input size (a previous result's `"low_res_logits"`);
    - `text`: a text or a list of `T` texts; each text is one query. Points, boxes and masks given with texts must
      hold one query, which is added to every text's.
    Points, boxes and masks given together must hold the same number of queries: query `q` of each prompts one
    object.

    Calls: `segmenter(image, input_points=..., ...)`, or `segmenter({"image": image, "input_points": ..., ...})`, or a
    list/dataset/generator of such dicts (each image with its own prompts). Images are paths, URLs, `PIL.Image`s, or
    arrays/tensors the processor accepts. All queries of an image go through the model in one call.

    Each result is a list with one dict per query (per text with texts), holding:
    - `"mask"` (`torch.BoolTensor` `[H, W]`): the candidate with the highest predicted IoU, at the original size;
    - `"score"` (`float`): its predicted IoU (SAM's IoU head is a linear regression: a score may land a little
      outside [0, 1]);
    - `"low_res_logits"` (`torch.FloatTensor` `[m, m]`): its low-resolution logits, to pass back as that query's
      `input_masks` entry (iterative refinement);
    - with texts, the fields of [`TextPromptedSegmentationPipeline`] too: `"text"`, `"points"`, `"point_labels"`,
      `"heatmap"`, `"enhanced_heatmap"`, `"match_probability"`, `"is_match"`, `"unknown_words"`.

    Call parameters: `mask_threshold` (`float`, defaults to 0.0), `multimask_output` (`bool`, defaults to True: the
    best of three candidates; False: the decoder's single mask), `text_prompt_mode` (as for
    [`TextPromptedSegmentationPipeline`]) and `timeout` (`float`, seconds to fetch an image URL).
    """

    _task = PROMPTABLE_TASK

    def __call__(self, images: Any, **kwargs: Any) -> list:
        """
        Segment every query of an image.

        Args:
            images: an image (with the prompts as keywords), an `{"image": ..., <prompts>}` dict, or a list, dataset
                or generator of such dicts.
            kwargs: the prompts of the image (`text`, `input_points`, `input_labels`, `input_boxes`, `input_masks`),
                `mask_threshold`, `multimask_output`, `text_prompt_mode`, `timeout`, and the usual pipeline
                arguments.

        Returns:
            For one image, a list with one result dict per query; for a list of dicts, one such list per image.
        """
        self._check_batch_size(kwargs)
        prompts = {key: kwargs.pop(key) for key in PROMPT_KEYS if key in kwargs}
        prompts = {key: value for key, value in prompts.items() if value is not None}
        if isinstance(images, (str, PIL.Image.Image, np.ndarray, torch.Tensor)):
            return super().__call__({"image": images, **prompts}, **kwargs)
        if prompts and isinstance(images, dict):
            raise TypeError(f"Give the prompts either in the input dict or as keywords ({sorted(prompts)}), not both.")
        if prompts:
            raise TypeError(
                f"Prompts given as keywords ({sorted(prompts)}) go with one image; for several images, give a list of "
                '{"image": ..., "input_points": ..., ...} dicts, each image with its own prompts (in its pixels).'
            )
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("`images` is an empty list.")
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(
        self,
        mask_threshold: float | None = None,
        multimask_output: bool | None = None,
        timeout: float | None = None,
        text_prompt_mode: str | None = None,
        **unexpected: Any,
    ) -> tuple[dict, dict, dict]:
        if unexpected:  # a misspelt keyword must not be swallowed
            raise TypeError(
                f"{PROMPTABLE_TASK} got unexpected keyword arguments {sorted(unexpected)}; it takes the prompts "
                f"({', '.join(f'`{key}`' for key in PROMPT_KEYS)}), `mask_threshold`, `multimask_output`, "
                "`text_prompt_mode`, `timeout` (and `batch_size`, `num_workers`)."
            )
        preprocess_params, forward_params, postprocess_params = self._common_parameters(
            mask_threshold, timeout, text_prompt_mode
        )
        if multimask_output is not None:
            if not isinstance(multimask_output, bool):
                raise TypeError(
                    f"`multimask_output` must be a bool, got {type(multimask_output).__name__} {multimask_output!r}."
                )
            forward_params["multimask_output"] = multimask_output
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`{"image", <prompts>}` → the processor's tensors for one image and its queries (or its `T` texts)."""
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError(
                f'Each input must be a dict {{"image": ..., "input_points": ..., ...}}, got {type(inputs).__name__}'
                f"{' with keys ' + str(sorted(inputs)) if isinstance(inputs, dict) else ''}."
            )
        unknown = sorted(set(inputs) - {"image", *PROMPT_KEYS})
        if unknown:
            raise ValueError(
                f"Unknown input keys {unknown}; an input holds `image` and the prompts {list(PROMPT_KEYS)}."
            )
        prompts = {key: inputs[key] for key in PROMPT_KEYS if inputs.get(key) is not None}
        if not prompts.keys() - {"input_labels"}:
            raise ValueError(
                f"{PROMPTABLE_TASK} needs a prompt: `text`, `input_points`, `input_boxes` and/or `input_masks`."
            )
        texts = None
        if "text" in prompts:
            self._check_text_support()
            texts = _text_list(prompts["text"], "text")
        image = _load_input_image(inputs["image"], timeout)
        # The processor's nesting starts with the images: this image's prompts are its only entry.
        visual = {key: [prompts[key]] for key in _VISUAL_PROMPT_KEYS if key in prompts}
        model_inputs = self.processor(images=image, text=texts, return_tensors="pt", **visual)
        if texts is not None:
            for key in _VISUAL_PROMPT_KEYS:
                if key not in model_inputs:
                    continue
                if model_inputs[key].shape[1] != 1:
                    raise ValueError(
                        f"With `text`, `{key}` must hold one query, which is added to every text's query; got "
                        f"{model_inputs[key].shape[1]}."
                    )
                # The model reads one row of prompts per text.
                model_inputs[key] = model_inputs[key].expand(len(texts), *model_inputs[key].shape[1:])
        return {"texts": texts, **model_inputs.to(self.dtype)}

    def postprocess(self, model_outputs: dict[str, Any], mask_threshold: float = 0.0) -> list[dict[str, Any]]:
        """The model output of one image → one result dict per query, or per text (see the class docstring)."""
        outputs: EsamBlipSegmentationOutput = model_outputs["outputs"]
        original_size = tuple(int(side) for side in model_outputs["original_sizes"][0])
        masks, low_res_logits, scores = self._best_masks(outputs, original_size, mask_threshold)
        texts = model_outputs["texts"]
        if texts is None:
            return [
                {"mask": masks[0][q], "score": scores[0, q].item(), "low_res_logits": low_res_logits[0, q].float()}
                for q in range(scores.shape[1])
            ]
        return [
            {
                **fields,
                "mask": masks[t][0],
                "score": scores[t, 0].item(),
                "low_res_logits": low_res_logits[t, 0].float(),
            }
            for t, fields in enumerate(self._text_fields(outputs, texts, original_size))
        ]


# `pt_model` is saved as the Auto class's name in `custom_pipelines`, which `pipeline(..., trust_remote_code=True)`
# resolves in `transformers` and then through the checkpoint's `auto_map`: a class of this package would not resolve.
PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=TextPromptedSegmentationPipeline, pt_model=AutoModelForMaskGeneration, type="multimodal"
)
PIPELINE_REGISTRY.register_pipeline(
    PROMPTABLE_TASK,
    pipeline_class=PromptableSegmentationPipeline,
    pt_model=AutoModelForMaskGeneration,
    type="multimodal",
)

__all__ = [
    "PROMPTABLE_TASK",
    "PROMPT_KEYS",
    "TASK",
    "PromptableSegmentationPipeline",
    "TextPromptedSegmentationPipeline",
]
