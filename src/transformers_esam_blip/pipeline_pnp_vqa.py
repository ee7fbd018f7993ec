"""`pipeline("esam-blip-pnp-vqa")`: zero-shot answers to questions about images, with their heatmaps and captions."""

import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForMaskGeneration
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .builtin import BUILTIN_PNP_VQA_MODELS, builtin_model_path, builtin_pnp_vqa_path
from .configuration_pnp_vqa import PNP_VQA_CONFIG_NAME, EsamBlipPnpVqaConfig
from .pnp_vqa import CAPTIONER_FOLDER, READER_FOLDER, EsamBlipForPnpVqa, _question_list

TASK = "esam-blip-pnp-vqa"


def _builtin_companion(matcher_path: Path) -> Path | None:
    """The built-in PnP-VQA folder whose matcher is the built-in model at `matcher_path`, if any."""
    for name, entry in BUILTIN_PNP_VQA_MODELS.items():
        try:
            if matcher_path.resolve() == builtin_model_path(entry.matcher).resolve():
                return builtin_pnp_vqa_path(name)
        except (ValueError, FileNotFoundError):
            continue
    return None


class EsamBlipPnpVqaPipeline(Pipeline):
    """
    PnP-VQA ([`EsamBlipForPnpVqa`]): an EsamBlip checkpoint as the matcher (`model`), a `transformers` BLIP captioner
    and a T5 (UnifiedQA) reader.

    ```python
    >>> import transformers_esam_blip.pipeline_pnp_vqa  # registers the task
    >>> from transformers import pipeline
    >>> vqa = pipeline(
    ...     "esam-blip-pnp-vqa",
    ...     model="path/to/esam-blip-base",
    ...     captioner="Salesforce/blip-image-captioning-base",
    ...     reader="allenai/unifiedqa-t5-base",
    ... )
    >>> vqa("photo.jpg", "what is the man holding?")["answer"]
    ```

    A folder written by `EsamBlipForPnpVqa.save_pretrained` needs no `captioner`/`reader`: they load from its
    subfolders, with its saved settings as defaults. Nor does the built-in matcher `"esam-blip-shapes"`: it brings the
    tiny captioner and reader of the built-in `"esam-blip-shapes-vqa"` (synthetic scenes only), so
    `pipeline("esam-blip-pnp-vqa", model="esam-blip-shapes")` answers offline.

    Its own task, not `"visual-question-answering"`: that pipeline tokenizes the question with the model's one
    tokenizer, calls one `generate` and decodes with the same tokenizer, while PnP-VQA reads the question with three
    (BLIP's for matching, the captioner's, the reader's T5) and its answer comes with captions and heatmaps.

    Calls: `vqa(image, question)` gives one result dict; `vqa(image, [question, ...])` one per question (the image is
    encoded once); `vqa({"image": ..., "question": ...})` or a list of such dicts, one result (or list) each.
    Images are paths, URLs, `PIL.Image`s or arrays/tensors the processors accept.

    Each result dict holds `"question"`, `"answer"` (`str`), `"captions"` (`list[str]`), `"heatmap"` (`[g, g]`
    Grad-CAM), `"enhanced_heatmap"` (`[g, g]` or None), `"mask"` (`[h, w]` bool EfficientSAM mask or None),
    `"patch_indices"` (`[n, K]`, one row per caption), `"patch_grid_size"` (`G`) and `"match_probability"`.
    `visualization_pnp_vqa.draw_pnp_vqa_result(image, result)` draws it.

    Call parameters: every [`EsamBlipPnpVqaConfig`] field (`num_captions`, `num_patches`, `top_p`,
    `use_mask_enhancement`, `reader_form`, ...), `generator` (a CPU `torch.Generator` for the patch sampling) and
    `timeout` (seconds to fetch an image URL).

    Args (construction, besides the usual `model`, `processor`, `device`):
        captioner (`str`, `os.PathLike` or `BlipForConditionalGeneration`): the captioner checkpoint, or model (then
            `captioner_processor` too).
        reader (`str`, `os.PathLike` or `T5ForConditionalGeneration`): the reader checkpoint, or model (then
            `reader_tokenizer` too).
        pnp_vqa_config ([`EsamBlipPnpVqaConfig`], *optional*): default settings.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(
        self,
        *args,
        captioner: Any = None,
        reader: Any = None,
        captioner_processor: Any = None,
        reader_tokenizer: Any = None,
        pnp_vqa_config: EsamBlipPnpVqaConfig | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"{TASK} needs the matcher's EsamBlipProcessor: pass `processor=`.")
        saved = Path(getattr(self.model, "name_or_path", "") or "")
        companion = _builtin_companion(saved)
        if captioner is None and reader is None and companion is not None:
            saved = companion  # a built-in matcher brings its built-in captioner and reader
        if (saved / PNP_VQA_CONFIG_NAME).is_file():
            captioner = saved / CAPTIONER_FOLDER if captioner is None else captioner
            reader = saved / READER_FOLDER if reader is None else reader
            pnp_vqa_config = EsamBlipPnpVqaConfig.from_pretrained(saved) if pnp_vqa_config is None else pnp_vqa_config
        if captioner is None or reader is None:
            raise ValueError(
                f"{TASK} needs `captioner=` (e.g. 'Salesforce/blip-image-captioning-base') and `reader=` (e.g. "
                "'allenai/unifiedqa-t5-base'), or a `model` folder saved by EsamBlipForPnpVqa.save_pretrained."
            )
        # Settings given at construction are the defaults of every call.
        init_settings = {name: value for name, value in self._forward_params.items() if name != "generator"}
        self.pnp_vqa = EsamBlipForPnpVqa.from_components(
            matcher=self.model,
            matcher_processor=self.processor,
            captioner=captioner,
            captioner_processor=captioner_processor,
            reader=reader,
            reader_tokenizer=reader_tokenizer,
            config=pnp_vqa_config,
            **init_settings,
        )
        self.pnp_vqa.to(self.device)

    def __call__(
        self,
        images: Any,
        questions: str | list[str] | None = None,
        question: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        Answer each question about its image.

        Args:
            images: an image, or `{"image": ..., "question": ...}` dicts (then no `questions`).
            questions: a question or a list of questions about `images`.
            question: the same as `questions`, under the name `pipeline("visual-question-answering")` uses.
            kwargs: PnP-VQA settings, `generator`, `timeout`.

        Returns:
            A result dict for one question, a list of them for a list of questions (or per input dict).
        """
        if question is not None:
            if questions is not None:
                raise TypeError("Give the questions once: `questions=` or `question=`, not both.")
            questions = question
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if batch_size != 1:
            raise ValueError(f"{TASK} answers one image (with all its questions) per call; `batch_size` must be 1.")
        if questions is None:
            return super().__call__(images, **kwargs)
        if isinstance(images, (dict, list, tuple)):
            raise TypeError(
                "With `questions`, give one image; for several images pass dicts {'image': ..., 'question': ...}."
            )
        return super().__call__({"image": images, "question": questions}, **kwargs)

    def _sanitize_parameters(
        self, timeout: float | None = None, generator: torch.Generator | None = None, **settings: Any
    ) -> tuple[dict, dict, dict]:
        preprocess_params = {}
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError(f"`timeout` must be a number of seconds > 0, got {timeout!r}.")
            preprocess_params["timeout"] = float(timeout)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")
        if settings and hasattr(self, "pnp_vqa"):
            self.pnp_vqa._settings(**settings)  # unknown names and bad values fail here, before any image loads
        # Flat, so that call-time settings are merged with (not swapped for) those given at construction.
        forward_params = dict(settings)
        if generator is not None:
            forward_params["generator"] = generator
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`{"image", "question"}` → the loaded image and the list of its questions."""
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            keys = f" with keys {sorted(inputs)}" if isinstance(inputs, dict) else ""
            raise ValueError(
                f'Each input must be a dict {{"image": ..., "question": ...}} (or pass `questions`), got '
                f"{type(inputs).__name__}{keys}."
            )
        image = inputs["image"]
        if isinstance(image, (str, PIL.Image.Image)):
            image = load_image(image, timeout=timeout)
        elif not isinstance(image, (np.ndarray, torch.Tensor)):
            raise TypeError(
                f"`image` must be a path, a URL, a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__}."
            )
        question = inputs["question"]
        return {"image": image, "questions": _question_list(question), "single": isinstance(question, str)}

    def _forward(
        self, model_inputs: dict[str, Any], generator: torch.Generator | None = None, **settings: Any
    ) -> dict[str, Any]:
        output = self.pnp_vqa(model_inputs["image"], model_inputs["questions"], generator=generator, **settings)
        return {"questions": model_inputs["questions"], "single": model_inputs["single"], "output": output}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        # The base class rebuilds the output on its way back from the device, dropping its `None` fields: use `get`.
        output = model_outputs["output"]
        enhanced, mask = output.get("enhanced_heatmap"), output.get("mask")
        results = []
        for index, question in enumerate(model_outputs["questions"]):
            results.append(
                {
                    "question": question,
                    "answer": output["answers"][index],
                    "captions": output["captions"][index],
                    "heatmap": output["heatmap"][index].float().cpu(),
                    "enhanced_heatmap": None if enhanced is None else enhanced[index].float().cpu(),
                    "mask": None if mask is None else mask[index].cpu(),
                    "patch_indices": output["patch_indices"][index].cpu(),
                    "patch_grid_size": output["patch_grid_size"],
                    "match_probability": output["itm_probability"][index].item(),
                }
            )
        return results[0] if model_outputs["single"] else results

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the three components and the settings (`EsamBlipForPnpVqa.save_pretrained`); reload with
        `pipeline("esam-blip-pnp-vqa", model=save_directory)`."""
        self.pnp_vqa.save_pretrained(save_directory)


PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=EsamBlipPnpVqaPipeline,
    # The matcher is the pipeline's `model`; its Auto class resolves an EsamBlip folder to the segmentation head.
    pt_model=AutoModelForMaskGeneration,
    type="multimodal",
)

__all__ = ["TASK", "EsamBlipPnpVqaPipeline"]
