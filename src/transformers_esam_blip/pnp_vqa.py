"""PnP-VQA (Tiong et al. 2022): zero-shot answers from a mask-enhanced question heatmap, patch captions and a reader."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipProcessor,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import ModelOutput, logging

from .best_mask import select_best_masks
from .builtin import BUILTIN_PNP_VQA_MODELS, builtin_pnp_vqa_path, resolve_pretrained_name
from .configuration_esam_blip import EsamBlipConfig
from .configuration_pnp_vqa import EsamBlipPnpVqaConfig
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .pnp_vqa_reader import PNP_VQA_READER_FORMS
from .processing_esam_blip import EsamBlipProcessor
from .text_prompt_strategies import pair_with_texts
from .text_prompting import mask_enhanced_heatmap, sample_patch_indices

logger = logging.get_logger(__name__)

CAPTIONER_FOLDER = "captioner"
READER_FOLDER = "reader"
# A cell the heatmap gives no weight keeps this share of the map's maximum, so that `K` distinct patches can always be
# drawn (LAVIS's multinomial fails when fewer than `K` cells are positive, e.g. for a clamped Grad-CAM).
_ZERO_CELL_SHARE = 1e-6


@dataclass
class EsamBlipPnpVqaHeatmapOutput(ModelOutput):
    r"""
    Output of [`EsamBlipForPnpVqa.heatmap`]: where in the image each question looks.

    Args:
        heatmap (`torch.FloatTensor` of shape `[T, g, g]`): the question's ITM Grad-CAM (caption-mean row) on the
            matcher's BLIP patch grid.
        enhanced_heatmap (`torch.FloatTensor` of shape `[T, g, g]`, *optional*): `alpha * heatmap + (1 - alpha) *
            mask`, normalised to [0, 1]; `None` without mask enhancement.
        mask (`torch.BoolTensor` of shape `[T, h, w]`, *optional*): EfficientSAM's best low-resolution mask for the
            question (the candidate with the highest predicted IoU); `None` without mask enhancement.
        gradcams (`torch.FloatTensor` of shape `[T, g * g]`): the map patches are sampled from (`enhanced_heatmap`,
            else `heatmap`), flattened as PnP-VQA's `gradcams`.
        itm_probability (`torch.FloatTensor` of shape `[T]`): BLIP ITM probability that the question matches the image.
    """

    heatmap: torch.FloatTensor | None = None
    enhanced_heatmap: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    gradcams: torch.FloatTensor | None = None
    itm_probability: torch.FloatTensor | None = None


@dataclass
class EsamBlipPnpVqaOutput(EsamBlipPnpVqaHeatmapOutput):
    r"""
    Output of [`EsamBlipForPnpVqa.forward`]: the fields of [`EsamBlipPnpVqaHeatmapOutput`], then

    Args:
        patch_indices (`list[torch.LongTensor]`): per question, `[n, K]` indices of the patches each kept caption was
            generated from, in `[1, G * G]` (0 is the captioner ViT's [CLS]; patch `i` is at row `(i - 1) // G`,
            column `(i - 1) % G` of the captioner's grid).
        captions (`list[list[str]]`): per question, the `n` kept captions (`1 <= n <= num_captions`), in the order
            of `patch_indices`.
        answers (`list[str]`): one answer per question.
        patch_grid_size (`int`): `G`, side of the captioner's patch grid.
    """

    patch_indices: list[torch.LongTensor] | None = None
    captions: list[list[str]] | None = None
    answers: list[str] | None = None
    patch_grid_size: int | None = None


def _class_names(obj: Any) -> set[str]:
    # Remote code loads the package's classes from a separate module copy: compare by name.
    return {cls.__name__ for cls in type(obj).__mro__}


def _question_list(questions: Any) -> list[str]:
    """One question or a non-empty list of them, each non-empty once stripped of spaces and `?`."""
    items = [questions] if isinstance(questions, str) else questions
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"`questions` must be a question or a non-empty list of questions, got {questions!r}.")
    for index, question in enumerate(items):
        if not isinstance(question, str) or not question.strip().strip("?").strip():
            raise ValueError(f"`questions[{index}]` must be a non-empty question, got {question!r}.")
    return list(items)


def _checkpoint_config(
    role: str, name_or_path: str | os.PathLike, subfolder: str, expected: type, architecture: str, *aliases: str
):
    """
    The checkpoint's config, or a `TypeError` (before any weight loads) when it is not an `architecture` checkpoint:
    its config class must be `expected` and its `architectures`, when saved, must name `architecture` or an alias.
    """
    config = AutoConfig.from_pretrained(resolve_pretrained_name(name_or_path), subfolder=subfolder)
    architectures = getattr(config, "architectures", None) or []
    accepted = {architecture, *aliases}
    if not isinstance(config, expected) or (architectures and accepted.isdisjoint(architectures)):
        where = f"{name_or_path}/{subfolder}" if subfolder else str(name_or_path)
        raise TypeError(
            f"`{role}` must be a {architecture} checkpoint, but {where} holds a {config.model_type!r} config for "
            f"{architectures or 'an unnamed architecture'}."
        )
    return config


def load_matcher(
    name_or_path: str | os.PathLike, subfolder: str = ""
) -> tuple[EsamBlipForPromptableSegmentation, EsamBlipProcessor]:
    """The ITM/EfficientSAM half from an EsamBlip checkpoint (a folder, a Hub id or a built-in model's name)."""
    _checkpoint_config("matcher", name_or_path, subfolder, EsamBlipConfig, EsamBlipForPromptableSegmentation.__name__)
    model = EsamBlipForPromptableSegmentation.from_pretrained(name_or_path, subfolder=subfolder)
    processor = EsamBlipProcessor.from_pretrained(name_or_path, subfolder=subfolder)
    return model, processor


def load_captioner(
    name_or_path: str | os.PathLike, subfolder: str = ""
) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A `transformers` BLIP captioner and its processor (e.g. `Salesforce/blip-image-captioning-base`)."""
    _checkpoint_config("captioner", name_or_path, subfolder, BlipConfig, BlipForConditionalGeneration.__name__)
    model = BlipForConditionalGeneration.from_pretrained(name_or_path, subfolder=subfolder)
    return model, BlipProcessor.from_pretrained(name_or_path, subfolder=subfolder)


def load_reader(
    name_or_path: str | os.PathLike, subfolder: str = ""
) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase]:
    """A `transformers` T5 question-answering reader and its tokenizer (e.g. `allenai/unifiedqa-t5-base`)."""
    # Early T5 checkpoints (e.g. `t5-base`) name the same head by its old name.
    _checkpoint_config(
        "reader", name_or_path, subfolder, T5Config, T5ForConditionalGeneration.__name__, "T5WithLMHeadModel"
    )
    model = T5ForConditionalGeneration.from_pretrained(name_or_path, subfolder=subfolder)
    return model, AutoTokenizer.from_pretrained(name_or_path, subfolder=subfolder)


def _component(role: str, value: Any, processor: Any, loader, processor_name: str) -> tuple[Any, Any]:
    """A loaded `(model, processor)` from a checkpoint name/path, or the given model with its given processor."""
    if isinstance(value, (str, os.PathLike)):
        if processor is not None:
            raise ValueError(
                f"`{processor_name}` is loaded with `{role}` from its checkpoint; pass it only with a model."
            )
        return loader(value)
    if processor is None:
        raise ValueError(f"`{role}` is a loaded model: pass its `{processor_name}` too (or a checkpoint path instead).")
    return value, processor


class EsamBlipForPnpVqa(nn.Module):
    r"""
    PnP-VQA: zero-shot visual question answering from three pretrained models, none trained for VQA.

    1. **Matcher** (this package's [`EsamBlipForPromptableSegmentation`]): the question's ITM Grad-CAM says where the
       image answers it ([`heatmap`]); EfficientSAM's mask of what the question refers to can enhance it.
    2. **Captioner** (`transformers`' [`BlipForConditionalGeneration`]): for each of `N` captions, `K` patches are
       drawn from the heatmap ([`sample_patches`]) and the text decoder describes only those patch embeddings, with
       nucleus sampling ([`captions`]).
    3. **Reader** (`transformers`' [`T5ForConditionalGeneration`], UnifiedQA): reads `question \n captions` and
       generates the answer ([`answer`]).

    `model(images, questions)` runs all three ([`forward`]). Every setting is an [`EsamBlipPnpVqaConfig`] field,
    overridable per call by keyword.

    ```python
    >>> from transformers_esam_blip.pnp_vqa import EsamBlipForPnpVqa
    >>> vqa = EsamBlipForPnpVqa.from_components(
    ...     matcher="path/to/esam-blip-base",
    ...     captioner="Salesforce/blip-image-captioning-base",
    ...     reader="allenai/unifiedqa-t5-base",
    ... )
    >>> output = vqa(image, "what is the man holding?", num_captions=20)
    >>> output.answers[0], output.captions[0][:3]
    ```

    Args:
        matcher ([`EsamBlipForPromptableSegmentation`]): with the BLIP half; with the EfficientSAM half too for mask
            enhancement.
        matcher_processor ([`EsamBlipProcessor`]): its processor, with a tokenizer.
        captioner ([`BlipForConditionalGeneration`]): the captioner.
        captioner_processor ([`BlipProcessor`]): its image processor and tokenizer.
        reader ([`T5ForConditionalGeneration`]): the question-answering reader.
        reader_tokenizer ([`PreTrainedTokenizerBase`]): its tokenizer.
        config ([`EsamBlipPnpVqaConfig`], *optional*): the default settings.
    """

    def __init__(
        self,
        matcher: EsamBlipForPromptableSegmentation,
        matcher_processor: EsamBlipProcessor,
        captioner: BlipForConditionalGeneration,
        captioner_processor: BlipProcessor,
        reader: T5ForConditionalGeneration,
        reader_tokenizer: PreTrainedTokenizerBase,
        config: EsamBlipPnpVqaConfig | None = None,
    ) -> None:
        super().__init__()
        config = EsamBlipPnpVqaConfig() if config is None else config
        if not isinstance(config, EsamBlipPnpVqaConfig):
            raise TypeError(f"`config` must be an EsamBlipPnpVqaConfig, got {type(config).__name__}.")
        self._check_components(matcher, matcher_processor, captioner, captioner_processor, reader, reader_tokenizer)
        self.matcher = matcher
        self.captioner = captioner
        self.reader = reader
        self.matcher_processor = matcher_processor
        self.captioner_processor = captioner_processor
        self.reader_tokenizer = reader_tokenizer
        self.config = config
        self._check_settings(config)
        self.eval()  # Grad-CAM and sampling assume eval mode, as LAVIS loads PnP-VQA

    @staticmethod
    def _check_components(matcher, matcher_processor, captioner, captioner_processor, reader, reader_tokenizer) -> None:
        if EsamBlipForPromptableSegmentation.__name__ not in _class_names(matcher):
            raise TypeError(
                "`matcher` must be an EsamBlipForPromptableSegmentation (load any EsamBlip checkpoint with it), got "
                f"{type(matcher).__name__}."
            )
        if not matcher.config.has_blip:
            raise ValueError(
                "`matcher` has no BLIP half (config.vision_config/text_config are None): PnP-VQA needs its image-text "
                "matching for the question's heatmap."
            )
        if getattr(matcher_processor, "tokenizer", None) is None or not hasattr(matcher_processor, "image_processor"):
            raise TypeError(
                f"`matcher_processor` must be an EsamBlipProcessor with a tokenizer, got {type(matcher_processor).__name__}."
            )
        if not isinstance(captioner, BlipForConditionalGeneration):
            raise TypeError(
                "`captioner` must be a transformers BlipForConditionalGeneration (e.g. "
                f"Salesforce/blip-image-captioning-base), got {type(captioner).__name__}."
            )
        if getattr(captioner_processor, "tokenizer", None) is None or not hasattr(
            captioner_processor, "image_processor"
        ):
            raise TypeError(
                "`captioner_processor` must be a processor with an image processor and a tokenizer (BlipProcessor), "
                f"got {type(captioner_processor).__name__}."
            )
        if not isinstance(reader, T5ForConditionalGeneration):
            raise TypeError(
                "`reader` must be a transformers T5ForConditionalGeneration (e.g. allenai/unifiedqa-t5-base), got "
                f"{type(reader).__name__}."
            )
        if not isinstance(reader_tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"`reader_tokenizer` must be a tokenizer, got {type(reader_tokenizer).__name__}.")

    def _check_settings(self, settings: EsamBlipPnpVqaConfig) -> None:
        """What the components can serve: the patch count and the mask enhancement."""
        patches = self.patch_grid_size**2
        if settings.num_patches > patches:
            raise ValueError(
                f"`num_patches` ({settings.num_patches}) exceeds the captioner's {self.patch_grid_size}x"
                f"{self.patch_grid_size} = {patches} patches; ask for at most {patches}."
            )
        if settings.use_mask_enhancement and not self.matcher.config.has_segmentation:
            raise ValueError(
                "`use_mask_enhancement=True` needs a matcher with the EfficientSAM half; this checkpoint is "
                "matching-only. Pass `use_mask_enhancement=False`, or a checkpoint converted with `--efficientsam`."
            )

    def _settings(self, **overrides: Any) -> EsamBlipPnpVqaConfig:
        settings = self.config.replace(**overrides)
        self._check_settings(settings)
        return settings

    @classmethod
    def from_components(
        cls,
        matcher: str | os.PathLike | EsamBlipForPromptableSegmentation,
        captioner: str | os.PathLike | BlipForConditionalGeneration,
        reader: str | os.PathLike | T5ForConditionalGeneration,
        matcher_processor: EsamBlipProcessor | None = None,
        captioner_processor: BlipProcessor | None = None,
        reader_tokenizer: PreTrainedTokenizerBase | None = None,
        config: EsamBlipPnpVqaConfig | None = None,
        **settings: Any,
    ) -> "EsamBlipForPnpVqa":
        """
        Assemble PnP-VQA from three checkpoints, each loaded by its own `from_pretrained` with its processor: a
        folder, a Hub id, or (for the matcher) a built-in model's name. A checkpoint of the wrong class is a
        `TypeError` before any weight loads. A loaded model may be passed instead of a checkpoint, with its processor.

        Args:
            matcher: an EsamBlip checkpoint with the BLIP half (and the EfficientSAM half for mask enhancement).
            captioner: a `BlipForConditionalGeneration` checkpoint, e.g. `Salesforce/blip-image-captioning-base` or
                `Salesforce/blip-image-captioning-large`.
            reader: a `T5ForConditionalGeneration` checkpoint, e.g. `allenai/unifiedqa-t5-base` or
                `allenai/unifiedqa-v2-t5-base-1363200` (LAVIS's).
            matcher_processor, captioner_processor, reader_tokenizer: only with loaded models.
            config ([`EsamBlipPnpVqaConfig`], *optional*): default settings; `settings` override its fields.
        """
        matcher, matcher_processor = _component(
            "matcher", matcher, matcher_processor, load_matcher, "matcher_processor"
        )
        captioner, captioner_processor = _component(
            "captioner", captioner, captioner_processor, load_captioner, "captioner_processor"
        )
        reader, reader_tokenizer = _component("reader", reader, reader_tokenizer, load_reader, "reader_tokenizer")
        config = (EsamBlipPnpVqaConfig() if config is None else config).replace(**settings)
        return cls(matcher, matcher_processor, captioner, captioner_processor, reader, reader_tokenizer, config)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | os.PathLike, **settings: Any) -> "EsamBlipForPnpVqa":
        """
        Load a folder (or Hub repository) written by [`save_pretrained`]: the matcher at its top level, the captioner
        and the reader in the `captioner/` and `reader/` subfolders, the settings in `pnp_vqa_config.json`. Also takes
        a built-in PnP-VQA model's name (`"esam-blip-shapes-vqa"`, see `builtin.BUILTIN_PNP_VQA_MODELS`): its matcher
        is a built-in model, its captioner, reader and settings are in its folder; a local folder of the same name wins.
        """
        name = pretrained_name_or_path
        if isinstance(name, str) and name in BUILTIN_PNP_VQA_MODELS and not os.path.exists(name):
            folder = builtin_pnp_vqa_path(name)
            return cls(
                *load_matcher(BUILTIN_PNP_VQA_MODELS[name].matcher),
                *load_captioner(folder, subfolder=CAPTIONER_FOLDER),
                *load_reader(folder, subfolder=READER_FOLDER),
                config=EsamBlipPnpVqaConfig.from_pretrained(folder, **settings),
            )
        config = EsamBlipPnpVqaConfig.from_pretrained(pretrained_name_or_path, **settings)
        return cls(
            *load_matcher(pretrained_name_or_path),
            *load_captioner(pretrained_name_or_path, subfolder=CAPTIONER_FOLDER),
            *load_reader(pretrained_name_or_path, subfolder=READER_FOLDER),
            config=config,
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """
        Save all three components with their processors and the settings: the matcher at the top level (so the
        folder is also an EsamBlip checkpoint, and `pipeline("esam-blip-pnp-vqa", model=folder)` finds the rest),
        the captioner in `captioner/`, the reader in `reader/`, the settings in `pnp_vqa_config.json`.
        """
        folder = Path(save_directory)
        self.matcher.save_pretrained(folder)
        self.matcher_processor.save_pretrained(folder)
        self.captioner.save_pretrained(folder / CAPTIONER_FOLDER)
        self.captioner_processor.save_pretrained(folder / CAPTIONER_FOLDER)
        self.reader.save_pretrained(folder / READER_FOLDER)
        self.reader_tokenizer.save_pretrained(folder / READER_FOLDER)
        self.config.save_pretrained(folder)
        return folder

    @property
    def device(self) -> torch.device:
        return self.matcher.device

    @property
    def patch_grid_size(self) -> int:
        """`G`: side of the captioner ViT's patch grid, on which patches are sampled."""
        vision = self.captioner.config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def heatmap_grid_size(self) -> int:
        """`g`: side of the matcher's BLIP patch grid, on which the heatmaps are computed."""
        return self.matcher.model.blip.grid_size

    @torch.no_grad()
    def heatmap(
        self,
        images: Any,
        questions: str | Sequence[str],
        use_mask_enhancement: bool | None = None,
        heatmap_mask_alpha: float | None = None,
        text_prompt_mode: str | None = None,
        gradcam_block_num: int | None = None,
    ) -> EsamBlipPnpVqaHeatmapOutput:
        r"""
        Stage 1, image-question matching: each question's ITM Grad-CAM over its image and, with mask enhancement, the
        heatmap enhanced by EfficientSAM's mask of what the question refers to. As PnP-VQA, `?` is stripped from the
        question for matching.

        Args:
            images: one image (PIL, array or tensor, as [`EsamBlipProcessor`] takes) for every question, or one per
                question.
            questions (`str` or `list[str]`): `T` non-empty questions.
            use_mask_enhancement, heatmap_mask_alpha, text_prompt_mode, gradcam_block_num: override the settings (see
                [`EsamBlipPnpVqaConfig`]).

        Returns:
            [`EsamBlipPnpVqaHeatmapOutput`]: `heatmap [T, g, g]`, `enhanced_heatmap [T, g, g]` and `mask [T, h, w]`
            (or `None`), `gradcams [T, g*g]`, `itm_probability [T]`.
        """
        questions = _question_list(questions)
        settings = self._settings(
            use_mask_enhancement=use_mask_enhancement,
            heatmap_mask_alpha=heatmap_mask_alpha,
            text_prompt_mode=text_prompt_mode,
            gradcam_block_num=gradcam_block_num,
        )
        matching_texts = [question.strip().strip("?") for question in questions]
        inputs = self.matcher_processor(images=images, text=matching_texts, return_tensors="pt")
        inputs = inputs.to(device=self.matcher.device, dtype=self.matcher.dtype)
        base = self.matcher.model
        blip_image_embeds = base.blip.get_image_features(inputs["blip_pixel_values"])
        mask = enhanced = None
        if settings.use_mask_enhancement:
            segmentation = self.matcher(
                pixel_values=inputs["pixel_values"],
                blip_image_embeds=blip_image_embeds,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                text_prompt_mode=settings.text_prompt_mode,
            )
            best_logits, _ = select_best_masks(segmentation.pred_masks[:, 0], segmentation.iou_scores[:, 0])
            mask = best_logits > 0  # the sign decides the mask
            itm_image_embeds = base.itm_image_embeds(blip_image_embeds, image_embeddings=segmentation.image_embeddings)
        else:
            itm_image_embeds = base.itm_image_embeds(blip_image_embeds, pixel_values=inputs.get("pixel_values"))
        gradcam, itm_logits = base.blip.compute_gradcam(
            inputs["input_ids"],
            inputs["attention_mask"],
            pair_with_texts(itm_image_embeds, len(questions), "images"),
            block_num=settings.gradcam_block_num,
        )
        heatmap = gradcam[:, 1]
        if mask is not None:
            alpha = settings.heatmap_mask_alpha
            alpha = self.matcher.config.heatmap_mask_alpha if alpha is None else alpha
            enhanced = mask_enhanced_heatmap(heatmap, mask, alpha)
        sampled = heatmap if enhanced is None else enhanced
        return EsamBlipPnpVqaHeatmapOutput(
            heatmap=heatmap,
            enhanced_heatmap=enhanced,
            mask=mask,
            gradcams=sampled.flatten(1),
            itm_probability=itm_logits.softmax(dim=-1)[:, 1],
        )

    def patch_weights(self, gradcams: torch.Tensor) -> torch.Tensor:
        """
        The sampling weights of the captioner's patches: the heatmap `[T, g*g]` (or `[T, g, g]`) resized to the
        captioner's `G x G` grid when the grids differ (bilinear, antialiased), negative values clamped to 0, cells of
        zero weight given a `1e-6` share of the map's maximum. Returns `[T, G*G]` float32.
        """
        if not isinstance(gradcams, torch.Tensor) or gradcams.dim() not in (2, 3) or gradcams.shape[0] == 0:
            shape = tuple(gradcams.shape) if isinstance(gradcams, torch.Tensor) else type(gradcams).__name__
            raise ValueError(f"`gradcams` must be a [T, g*g] or [T, g, g] tensor, got {shape}.")
        maps = gradcams.detach().float()
        side = round(maps[0].numel() ** 0.5)
        if (maps.dim() == 3 and maps.shape[1] != maps.shape[2]) or side * side != maps[0].numel():
            raise ValueError(f"`gradcams` must hold square g x g maps, got shape {tuple(gradcams.shape)}.")
        maps = maps.reshape(-1, 1, side, side)
        grid = self.patch_grid_size
        if side != grid:
            maps = F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
        weights = maps.flatten(1).clamp(min=0)
        floor = _ZERO_CELL_SHARE * weights.max(dim=1, keepdim=True).values
        return torch.where(weights > 0, weights, floor)

    def sample_patches(
        self,
        gradcams: torch.Tensor,
        num_captions: int | None = None,
        num_patches: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """
        Stage 2a: for each question and each of its `N` captions, `K` distinct patches drawn from the heatmap
        (multinomial without replacement over [`patch_weights`], sorted), as PnP-VQA samples them. Drawn on the CPU,
        so a seeded CPU `generator` gives the same patches on any device.

        Args:
            gradcams (`torch.Tensor` of shape `[T, g*g]` or `[T, g, g]`): e.g. [`heatmap`]'s `gradcams`.
            num_captions, num_patches (`int`, *optional*): `N` and `K`, overriding the settings.
            generator (`torch.Generator`, *optional*): a CPU generator, for reproducible patches.

        Returns:
            `torch.LongTensor` of shape `[T, N, K]`, indices in `[1, G*G]` of the captioner's image tokens (0 is its
            [CLS]).
        """
        settings = self._settings(num_captions=num_captions, num_patches=num_patches)
        weights = self.patch_weights(gradcams).cpu()
        per_caption = weights.repeat_interleave(settings.num_captions, dim=0)
        indices = sample_patch_indices(per_caption, settings.num_patches, generator=generator)
        return indices.view(weights.shape[0], settings.num_captions, settings.num_patches)

    @torch.no_grad()
    def encode_caption_images(self, images: Any) -> torch.Tensor:
        """The captioner ViT's tokens of `B` images, `[B, 1 + G*G, D]` ([CLS] first), as its `generate` computes them."""
        pixel_values = self.captioner_processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self.captioner.device, dtype=self.captioner.dtype)
        return self.captioner.vision_model(pixel_values=pixel_values).last_hidden_state

    def _prompt_ids(self, prompt: str, max_length: int) -> torch.Tensor:
        """The captioner's prompt `[P]`: BLIP's tokenised prompt with [DEC] for [CLS] and without the final [SEP]."""
        ids = self.captioner_processor.tokenizer(prompt, return_tensors="pt")["input_ids"][0]
        ids[0] = self.captioner.config.text_config.bos_token_id
        ids = ids[:-1]
        if ids.numel() >= max_length:
            raise ValueError(
                f"`caption_max_length` ({max_length}) must exceed the prompt's {ids.numel()} tokens "
                f"(`caption_prompt={prompt!r}`)."
            )
        return ids

    @torch.no_grad()
    def captions(
        self,
        patch_indices: torch.Tensor,
        images: Any = None,
        image_embeds: torch.Tensor | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        caption_max_length: int | None = None,
        caption_min_length: int | None = None,
        repetition_penalty: float | None = None,
        caption_prompt: str | None = None,
    ) -> list[list[str]]:
        """
        Stage 2b, question-guided captioning: one caption per patch set, decoded by the captioner's text decoder from
        only those patch embeddings (its encoder states), with nucleus sampling after `caption_prompt`. Sampling
        draws from torch's global generator: seed it (`torch.manual_seed`) for reproducible captions.

        Args:
            patch_indices (`torch.LongTensor` of shape `[T, N, K]`): from [`sample_patches`].
            images: the images (one, or one per question); or
            image_embeds (`torch.Tensor` of shape `[1 or T, 1 + G*G, D]`): from [`encode_caption_images`].
            top_p, top_k, caption_max_length, caption_min_length, repetition_penalty, caption_prompt: override the
                settings.

        Returns:
            `list[list[str]]`: `T` lists of `N` captions, without the prompt.
        """
        settings = self._settings(
            top_p=top_p,
            top_k=top_k,
            caption_max_length=caption_max_length,
            caption_min_length=caption_min_length,
            repetition_penalty=repetition_penalty,
            caption_prompt=caption_prompt,
        )
        if (images is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of `images` and `image_embeds`.")
        grid = self.patch_grid_size
        if not isinstance(patch_indices, torch.Tensor) or patch_indices.dim() != 3 or patch_indices.dtype != torch.long:
            shape = tuple(patch_indices.shape) if isinstance(patch_indices, torch.Tensor) else type(patch_indices)
            raise ValueError(f"`patch_indices` must be a [T, N, K] long tensor from `sample_patches`, got {shape}.")
        if patch_indices.numel() == 0 or patch_indices.min() < 1 or patch_indices.max() > grid * grid:
            raise ValueError(f"`patch_indices` must lie in [1, {grid * grid}] (the captioner's {grid}x{grid} patches).")
        if image_embeds is None:
            image_embeds = self.encode_caption_images(images)
        num_questions, num_captions, num_patches = patch_indices.shape
        image_embeds = pair_with_texts(image_embeds, num_questions, "images")
        width = image_embeds.shape[-1]
        flat = patch_indices.to(image_embeds.device).reshape(num_questions, -1)
        patches = image_embeds.gather(1, flat[..., None].expand(-1, -1, width))
        patches = patches.reshape(num_questions * num_captions, num_patches, width)

        prompt = self._prompt_ids(settings.caption_prompt, settings.caption_max_length).to(patches.device)
        text_config = self.captioner.config.text_config
        sequences = self.captioner.text_decoder.generate(
            input_ids=prompt.expand(patches.shape[0], -1),
            encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device),
            do_sample=True,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_length=settings.caption_max_length,
            min_length=settings.caption_min_length,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=text_config.sep_token_id,
            pad_token_id=text_config.pad_token_id,
        )
        texts = self.captioner_processor.tokenizer.batch_decode(
            sequences[:, prompt.numel() :], skip_special_tokens=True
        )
        texts = [text.strip() for text in texts]
        return [texts[q * num_captions : (q + 1) * num_captions] for q in range(num_questions)]

    @torch.no_grad()
    def answer(
        self,
        questions: str | Sequence[str],
        captions: Sequence[Sequence[str]],
        reader_form: str | None = None,
        captions_per_passage: int | None = None,
        answer_max_length: int | None = None,
        answer_min_length: int | None = None,
        num_beams: int | None = None,
    ) -> list[str]:
        r"""
        Stage 3, answering: the reader reads each question with its captions (`question \n caption. caption. ...`,
        see `pnp_vqa_reader`) and generates the answer.

        Args:
            questions (`str` or `list[str]`): `T` questions.
            captions (`list[list[str]]`): `T` non-empty lists of captions (e.g. from [`captions`]).
            reader_form, captions_per_passage, answer_max_length, answer_min_length, num_beams: override the settings.

        Returns:
            `list[str]`: `T` answers.
        """
        questions = _question_list(questions)
        settings = self._settings(
            reader_form=reader_form,
            captions_per_passage=captions_per_passage,
            answer_max_length=answer_max_length,
            answer_min_length=answer_min_length,
            num_beams=num_beams,
        )
        if not isinstance(captions, (list, tuple)) or len(captions) != len(questions):
            raise ValueError(
                f"`captions` must hold one list of captions per question ({len(questions)}), got "
                f"{len(captions) if isinstance(captions, (list, tuple)) else type(captions).__name__}."
            )
        for index, caps in enumerate(captions):
            if not isinstance(caps, (list, tuple)) or not caps or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"`captions[{index}]` must be a non-empty list of strings, got {caps!r}.")
        ids = PNP_VQA_READER_FORMS[settings.reader_form](
            self.reader,
            self.reader_tokenizer,
            questions,
            captions,
            captions_per_passage=settings.captions_per_passage,
            max_length=settings.answer_max_length,
            min_length=settings.answer_min_length,
            num_beams=settings.num_beams,
        )
        return [text.strip() for text in self.reader_tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _guided_captions(
        self,
        gradcams: torch.Tensor,
        image_embeds: torch.Tensor,
        settings: EsamBlipPnpVqaConfig,
        generator: torch.Generator | None,
    ) -> tuple[list[list[str]], list[torch.Tensor]]:
        """
        Captions per question with LAVIS's filter (`deduplicate_captions`): rounds of fresh patches and captions for
        the questions still short of `num_captions`, a caption kept unless a kept one contains it.
        """
        num_questions = gradcams.shape[0]
        image_embeds = pair_with_texts(image_embeds, num_questions, "images")
        kept: list[list[str]] = [[] for _ in range(num_questions)]
        kept_patches: list[list[torch.Tensor]] = [[] for _ in range(num_questions)]
        rounds = settings.max_caption_rounds if settings.deduplicate_captions else 1
        pending = list(range(num_questions))
        for _ in range(rounds):
            indices = self.sample_patches(
                gradcams[pending], settings.num_captions, settings.num_patches, generator=generator
            )
            texts = self.captions(
                indices,
                image_embeds=image_embeds[pending],
                top_p=settings.top_p,
                top_k=settings.top_k,
                caption_max_length=settings.caption_max_length,
                caption_min_length=settings.caption_min_length,
                repetition_penalty=settings.repetition_penalty,
                caption_prompt=settings.caption_prompt,
            )
            for row, question in enumerate(pending):
                for caption, patches in zip(texts[row], indices[row]):
                    full = len(kept[question]) >= settings.num_captions
                    repeated = settings.deduplicate_captions and any(caption in other for other in kept[question])
                    if not full and not repeated:
                        kept[question].append(caption)
                        kept_patches[question].append(patches)
            pending = [question for question in pending if len(kept[question]) < settings.num_captions]
            if not pending:
                break
        if pending:
            logger.info(
                f"{len(pending)} question(s) kept fewer than {settings.num_captions} distinct captions after "
                f"{rounds} rounds: {[len(kept[question]) for question in pending]}."
            )
        return kept, [torch.stack(patches) for patches in kept_patches]

    def forward(
        self, images: Any, questions: str | Sequence[str], generator: torch.Generator | None = None, **settings: Any
    ) -> EsamBlipPnpVqaOutput:
        """
        PnP-VQA end to end: [`heatmap`] → [`sample_patches`] and [`captions`] (with the caption filter) → [`answer`].

        Args:
            images: one image for every question, or one image per question.
            questions (`str` or `list[str]`): `T` non-empty questions.
            generator (`torch.Generator`, *optional*): a CPU generator for the patch sampling; the captioner samples
                from torch's global generator.
            settings: any [`EsamBlipPnpVqaConfig`] field, for this call (an unknown name is a `TypeError`).

        Returns:
            [`EsamBlipPnpVqaOutput`].
        """
        questions = _question_list(questions)
        resolved = self._settings(**settings)
        with torch.no_grad():
            located = self.heatmap(
                images,
                questions,
                use_mask_enhancement=resolved.use_mask_enhancement,
                heatmap_mask_alpha=resolved.heatmap_mask_alpha,
                text_prompt_mode=resolved.text_prompt_mode,
                gradcam_block_num=resolved.gradcam_block_num,
            )
            image_embeds = self.encode_caption_images(images)
            captions, patch_indices = self._guided_captions(located.gradcams, image_embeds, resolved, generator)
            answers = self.answer(
                questions,
                captions,
                reader_form=resolved.reader_form,
                captions_per_passage=resolved.captions_per_passage,
                answer_max_length=resolved.answer_max_length,
                answer_min_length=resolved.answer_min_length,
                num_beams=resolved.num_beams,
            )
        return EsamBlipPnpVqaOutput(
            **located,
            patch_indices=patch_indices,
            captions=captions,
            answers=answers,
            patch_grid_size=self.patch_grid_size,
        )


__all__ = [
    "CAPTIONER_FOLDER",
    "READER_FOLDER",
    "EsamBlipForPnpVqa",
    "EsamBlipPnpVqaHeatmapOutput",
    "EsamBlipPnpVqaOutput",
    "load_captioner",
    "load_matcher",
    "load_reader",
]
