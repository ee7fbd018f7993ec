"""Processor for EsamBlip: the image processor plus an optional BLIP BERT tokenizer with LAVIS caption cleaning."""

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import BertTokenizer, PreTrainedTokenizerBase
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils import PROCESSOR_NAME, TensorType, cached_file

from .builtin import BuiltinNamesMixin
from .image_processing_esam_blip import EsamBlipImageProcessor, EsamBlipImagesKwargs, ImageLike

ENC_TOKEN = "[ENC]"
DEC_TOKEN = "[DEC]"
# Any of these files means the checkpoint carries a tokenizer; a segmentation-only checkpoint has none of them.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")
# LAVIS `BlipCaptionProcessor.pre_caption`.
_CAPTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_REPEATED_WHITESPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """
    Clean a caption exactly as LAVIS `BlipCaptionProcessor.pre_caption`: lowercase, replace `.!"()*#:;~` by spaces,
    collapse runs of 2+ whitespace characters into one space, strip, keep the first `max_words` words.
    """
    caption = _CAPTION_PUNCTUATION.sub(" ", caption.lower())
    caption = _REPEATED_WHITESPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


class EsamBlipProcessorKwargs(ProcessingKwargs, total=False):
    """
    Keyword arguments of [`EsamBlipProcessor.__call__`], flat or grouped by modality (`text_kwargs={...}`,
    `images_kwargs={...}`): the tokenizer's (`TextKwargs`: `padding`, `max_length`, `truncation`,
    `return_attention_mask`, ...) go to the tokenizer only, [`EsamBlipImagesKwargs`] to the image processor only.
    """

    images_kwargs: EsamBlipImagesKwargs


# `return_tensors` is an argument of `__call__` itself and goes to both.
_TEXT_KWARGS = frozenset(TextKwargs.__annotations__) - {"return_tensors"}
_IMAGES_KWARGS = frozenset(EsamBlipImagesKwargs.__annotations__)


def build_blip_tokenizer(vocab_or_dir: str | os.PathLike = "bert-base-uncased") -> BertTokenizer:
    """
    BERT WordPiece tokenizer with BLIP's special tokens, as LAVIS `init_tokenizer` builds it: `[DEC]` added as the
    bos token, then `[ENC]` as the additional special token whose id is the ITM `enc_token_id`. Adding them to a
    tokenizer that already has them changes nothing.

    Args:
        vocab_or_dir (`str` or `os.PathLike`, defaults to `"bert-base-uncased"`): a `vocab.txt` file, a saved tokenizer
            directory or a Hub id (LAVIS uses `bert-base-uncased`, which gives `[DEC]` 30522 and `[ENC]` 30523).
    """
    if Path(vocab_or_dir).is_file():
        tokenizer = BertTokenizer(vocab=str(vocab_or_dir))
    else:
        tokenizer = BertTokenizer.from_pretrained(str(vocab_or_dir))
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


class EsamBlipProcessor(BuiltinNamesMixin, ProcessorMixin):
    r"""
    Joint processor of [`EsamBlipModel`]: an [`EsamBlipImageProcessor`] for images and point/box prompts, and a BLIP
    BERT tokenizer (with `[DEC]` and `[ENC]`, see [`build_blip_tokenizer`]) for text. The tokenizer is optional: a
    segmentation-only checkpoint saves and loads without one.

    Text is cleaned as LAVIS does (`pre_caption(max_words)`) and tokenised with padding to the longest text,
    truncation at `max_txt_len`, `[CLS]` first (the model swaps in `[ENC]` for image-text matching).

    Args:
        image_processor ([`EsamBlipImageProcessor`]): the image processor.
        tokenizer ([`BertTokenizer`], *optional*): the BLIP tokenizer; `None` for segmentation only.
        max_txt_len (`int`, defaults to 35): truncation length of the tokenised text (LAVIS `max_txt_len`).
        max_words (`int`, defaults to 50): words kept by the caption cleaning (LAVIS `max_words`).
    """

    build_blip_tokenizer = staticmethod(build_blip_tokenizer)
    valid_processor_kwargs = EsamBlipProcessorKwargs

    def __init__(
        self,
        image_processor: EsamBlipImageProcessor,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_txt_len: int = 35,
        max_words: int = 50,
    ) -> None:
        if not isinstance(max_txt_len, int) or max_txt_len < 2:
            raise ValueError(f"`max_txt_len` must be an int >= 2 ([CLS] and [SEP] included), got {max_txt_len!r}.")
        if not isinstance(max_words, int) or max_words < 1:
            raise ValueError(f"`max_words` must be a positive int, got {max_words!r}.")
        self.max_txt_len = max_txt_len
        self.max_words = max_words
        super().__init__(image_processor, tokenizer)

    # ProcessorMixin requires every sub-processor; the three overrides below make the tokenizer optional.

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "tokenizer" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls, sub_processor_type: str, pretrained_model_name_or_path: str | os.PathLike, subfolder: str = "", **kwargs
    ) -> PreTrainedTokenizerBase | None:
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        has_tokenizer = any(
            cached_file(
                pretrained_model_name_or_path,
                filename,
                subfolder=subfolder,
                _raise_exceptions_for_missing_entries=False,
                **hub_kwargs,
            )
            is not None
            for filename in _TOKENIZER_FILES
        )
        if not has_tokenizer:
            return None
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """
        Save the processor (`processor_config.json`, with the image processor inside) and, when there is one, the
        tokenizer files; reload with [`~EsamBlipProcessor.from_pretrained`] or `AutoProcessor.from_pretrained`.
        """
        if self.tokenizer is not None:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        os.makedirs(save_directory, exist_ok=True)
        # What ProcessorMixin.save_pretrained does for the sub-processors present: the auto_map entries for
        # `trust_remote_code` loading, then the composite config.
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=[self.image_processor, self])
        if self.image_processor._auto_class is not None:
            custom_object_save(self.image_processor, save_directory, config=self.image_processor)
        processor_file = os.path.join(save_directory, PROCESSOR_NAME)
        self.to_json_file(processor_file)
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), **kwargs)
        return [processor_file]

    @property
    def text_kwargs(self) -> dict[str, Any]:
        """
        Tokenizer defaults, the lowest priority of `_merge_kwargs`: LAVIS pads to the longest text, truncates at
        `max_txt_len` and has no token types.
        """
        return {
            "padding": "longest",
            "truncation": True,
            "max_length": self.max_txt_len,
            "return_token_type_ids": False,
        }

    @property
    def unused_input_names(self) -> list[str]:
        # BLIP's text encoder has no token-type embeddings.
        return ["token_type_ids"]

    def _require_tokenizer(self, what: str) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError(
                f"{what} needs a tokenizer, but this processor has none (segmentation-only checkpoint). Build one "
                "with `EsamBlipProcessor.build_blip_tokenizer(...)` and pass it as `tokenizer`."
            )
        return self.tokenizer

    @property
    def enc_token_id(self) -> int:
        """Id of `[ENC]`, which replaces `[CLS]` as the first token for image-text matching."""
        tokenizer = self._require_tokenizer("`enc_token_id`")
        if ENC_TOKEN not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {ENC_TOKEN} token; build it with `EsamBlipProcessor.build_blip_tokenizer`, "
                "which adds [DEC] and [ENC] as LAVIS does."
            )
        return tokenizer.convert_tokens_to_ids(ENC_TOKEN)

    def unknown_words(self, text: str | list[str]) -> list[list[str]]:
        """
        The words of each text (after LAVIS caption cleaning, split at spaces) that the tokenizer maps to its unknown
        token, in order: what the model cannot read. The model reports such texts with `has_unknown_tokens=True`
        and never as a match.
        """
        tokenizer = self._require_tokenizer("`unknown_words`")
        unknown = tokenizer.unk_token
        return [
            [word for word in cleaned.split() if unknown in tokenizer.tokenize(word)]
            for cleaned in self.clean_text(text)
        ]

    def clean_text(self, text: str | list[str]) -> list[str]:
        """
        Validate `text` (a string or a non-empty list of strings) and clean each with LAVIS `pre_caption`.

        Returns:
            `list[str]`: the cleaned texts, in order.
        """
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError(f"`text` must be a string or a non-empty list of strings, got {type(text).__name__}.")
        cleaned = []
        for i, raw in enumerate(texts):
            if not isinstance(raw, str):
                raise TypeError(f"`text[{i}]` must be a string, got {type(raw).__name__}.")
            caption = pre_caption(raw, self.max_words)
            if not caption.strip():
                raise ValueError(f"`text[{i}]` ({raw!r}) is empty after caption cleaning; give a non-empty text.")
            cleaned.append(caption)
        return cleaned

    def __call__(
        self,
        images: ImageLike | list[ImageLike] | None = None,
        text: str | list[str] | None = None,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        return_tensors: str | TensorType | None = "pt",
        input_masks: Any = None,
        **kwargs: Unpack[EsamBlipProcessorKwargs],
    ) -> BatchFeature:
        """
        Prepare images, prompts and texts for [`EsamBlipModel`].

        Args:
            images: `B` images, see [`EsamBlipImageProcessor.preprocess`].
            text (`str` or `list[str]`, *optional*): `T` texts. With `B > 1` images, `T` must equal `B` (text `i` goes
                with image `i`); with one image, every text goes with it (the model broadcasts the image).
            input_points, input_labels, input_boxes: prompts in original-image pixels, see
                [`EsamBlipImageProcessor.preprocess_prompts`].
            input_masks: mask prompts, one 2-D mask per query (binary, or float logits) at the image's size or the
                model's mask input size, see [`EsamBlipImageProcessor.preprocess_prompts`]. With text alone, each
                image has one mask (its text's query); the model takes one row per text, so several texts of one
                image need the row repeated (`input_masks.expand(num_texts, -1, -1, -1)`).
            return_tensors (`str` or [`~utils.TensorType`], defaults to `"pt"`): `"pt"` or `"np"`.
            kwargs: [`EsamBlipProcessorKwargs`]: tokenizer arguments (e.g. `padding`, `max_length`), which override
                the LAVIS defaults ([`text_kwargs`]) and need `text`, and image processor arguments (e.g.
                `input_data_format`, `do_normalize`), which need `images`; flat, or as `text_kwargs={...}` /
                `images_kwargs={...}`. Any other keyword raises a `TypeError` naming it.

        Returns:
            [`BatchFeature`] with the image processor's outputs (`pixel_values` `[B, 3, S, S]`, `blip_pixel_values`
            `[B, 3, s, s]`, `original_sizes`, `reshaped_input_sizes`, `input_points` `[B, Q, P, 2]`, `input_labels`
            `[B, Q, P]`, `input_boxes` `[B, Q, 4]`, `input_masks` `[B, Q, m, m]`, as configured and given) and, for
            text, `input_ids` and `attention_mask` `[T, L]` int64 with `L <= max_txt_len`.
        """
        prompts = (input_points, input_labels, input_boxes, input_masks)
        if images is None and any(prompt is not None for prompt in prompts):
            raise ValueError(
                "Point, box and mask prompts need `images` (their sizes set the rescaling); to prompt precomputed "
                "image embeddings, use `image_processor.preprocess_prompts(original_sizes, ...)`."
            )
        if images is None and text is None:
            raise ValueError("Give `images`, `text`, or both.")
        text_kwargs, images_kwargs = self._split_kwargs(
            kwargs, has_images=images is not None, has_text=text is not None
        )
        data: dict[str, Any] = {}
        num_images = None
        if images is not None:
            image_inputs = self.image_processor(
                images,
                input_points=input_points,
                input_labels=input_labels,
                input_boxes=input_boxes,
                input_masks=input_masks,
                return_tensors=return_tensors,
                **images_kwargs,
            )
            num_images = len(image_inputs["original_sizes"])
            data.update(image_inputs)
        if text is not None:
            tokenizer = self._require_tokenizer("`text`")
            texts = self.clean_text(text)
            if num_images is not None and num_images > 1 and len(texts) != num_images:
                raise ValueError(
                    f"Got {len(texts)} texts for {num_images} images; give one text per image, or a single image "
                    "for several texts."
                )
            data.update(tokenizer(texts, return_tensors=return_tensors, **text_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _split_kwargs(
        self, kwargs: dict[str, Any], has_images: bool, has_text: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        The call's keyword arguments as `(text_kwargs, images_kwargs)`, merged with the defaults by `_merge_kwargs`.
        Unknown keys and wrongly typed values raise a `TypeError`, arguments of an absent modality a `ValueError`.
        """
        grouped = {"text_kwargs": _TEXT_KWARGS, "images_kwargs": _IMAGES_KWARGS}
        given = {"text_kwargs": set(), "images_kwargs": set()}
        unknown = []
        for key, value in kwargs.items():
            if key in grouped:
                if not isinstance(value, dict):
                    raise TypeError(f"`{key}` must be a dict, got {type(value).__name__}.")
                unknown += [f"{key}[{name!r}]" for name in value if name not in grouped[key]]
                given[key].update(value)
            elif key in _TEXT_KWARGS:
                given["text_kwargs"].add(key)
            elif key in _IMAGES_KWARGS:
                given["images_kwargs"].add(key)
            else:
                unknown.append(key)
        if unknown:
            raise TypeError(
                f"EsamBlipProcessor got unexpected keyword arguments {sorted(unknown)}; it takes the tokenizer's "
                f"arguments (e.g. padding, max_length, truncation, return_attention_mask) and the image processor's "
                f"{sorted(_IMAGES_KWARGS)}."
            )
        if given["images_kwargs"] and not has_images:
            raise ValueError(f"{sorted(given['images_kwargs'])} only apply to images, but no `images` were given.")
        if given["text_kwargs"] and not has_text:
            raise ValueError(f"{sorted(given['text_kwargs'])} only apply to text, but no `text` was given.")
        try:
            merged = self._merge_kwargs(EsamBlipProcessorKwargs, tokenizer_init_kwargs={}, **kwargs)
        except StrictDataclassFieldValidationError as error:
            raise TypeError(str(error)) from error
        return merged["text_kwargs"], merged["images_kwargs"]

    def post_process_masks(self, *args, **kwargs) -> list:
        """Forwards to [`EsamBlipImageProcessor.post_process_masks`]."""
        return self.image_processor.post_process_masks(*args, **kwargs)

    def post_process_points(self, *args, **kwargs) -> list:
        """Forwards to [`EsamBlipImageProcessor.post_process_points`]."""
        return self.image_processor.post_process_points(*args, **kwargs)


__all__ = ["EsamBlipProcessor", "build_blip_tokenizer", "pre_caption"]
