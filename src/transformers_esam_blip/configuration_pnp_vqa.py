"""PnP-VQA settings: how many captions from how many patches, how they are sampled and how the reader answers."""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import cached_file

from .pnp_vqa_reader import PNP_VQA_READER_FORMS

PNP_VQA_CONFIG_NAME = "pnp_vqa_config.json"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")


def _check_number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    in_range = (low < value if low_open else low <= value) and value <= high  # also False for NaN
    if not in_range:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"`{name}` must be in {interval}, got {value}.")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}.")


@dataclass(frozen=True)
class EsamBlipPnpVqaConfig:
    r"""
    Settings of [`EsamBlipForPnpVqa`]: every knob of the three PnP-VQA stages (Tiong et al. 2022). These are defaults
    of the calls, not structure: each stage method, `EsamBlipForPnpVqa.__call__` and the pipeline take any of them as
    a keyword argument that overrides it for that call. The defaults are LAVIS `PNPVQA.predict_answers`'s, with the
    paper's 20 patches per caption.

    Args:
        num_captions (`int`, defaults to 50): `N`, captions generated per question.
        num_patches (`int`, defaults to 20): `K`, image patches sampled (without replacement) from the question's
            heatmap for each caption; at most the captioner's patch count.
        top_p (`float`, defaults to 1.0): nucleus-sampling mass of the captioner, in (0, 1].
        top_k (`int`, defaults to 50): the captioner samples among the `top_k` likeliest tokens (0: no limit).
        caption_max_length (`int`, defaults to 20): longest caption in tokens, the prompt included (as BLIP and LAVIS
            count it); must exceed the prompt's length.
        caption_min_length (`int`, defaults to 10): shortest caption in tokens, the prompt included.
        repetition_penalty (`float`, defaults to 1.0): the captioner's repetition penalty (1.0: none).
        caption_prompt (`str`, defaults to `"a picture of "`): text the captioner continues (BLIP's captioning
            prompt); removed from the returned captions.
        deduplicate_captions (`bool`, defaults to `True`): LAVIS's filter: a caption contained in a caption already
            kept for the same question is dropped, and new patches are sampled and captioned until `num_captions`
            are kept or `max_caption_rounds` rounds have run (so fewer than `num_captions` may remain; at least one
            always does). `False` keeps all `num_captions` captions of one round.
        max_caption_rounds (`int`, defaults to 5): bound on the rounds of the filter (LAVIS loops until it has
            `num_captions`, which never ends for a captioner with few distinct captions).
        use_mask_enhancement (`bool`, defaults to `True`): sample patches from the mask-enhanced heatmap
            (`alpha * heatmap + (1 - alpha) * mask`, with EfficientSAM's mask of what the question refers to) instead
            of the plain Grad-CAM. Needs a matcher checkpoint with the EfficientSAM half.
        heatmap_mask_alpha (`float`, *optional*): weight of the heatmap in the enhanced heatmap, in [0, 1]; defaults to
            the matcher's `config.heatmap_mask_alpha`.
        text_prompt_mode (`str`, *optional*): the matcher's text-prompt strategy that segments what the question refers
            to (`"gradcam"`, `"learned"`, `"auto"`); defaults to the matcher's `config.text_prompt_mode`.
        gradcam_block_num (`int`, *optional*): text layer whose cross-attention the question's Grad-CAM reads;
            defaults to the matcher's `config.gradcam_block_num` (PnP-VQA's 7 for BLIP-base).
        reader_form (`str`, defaults to `"concat"`): how the reader reads the captions, a key of
            `pnp_vqa_reader.PNP_VQA_READER_FORMS`: `"concat"` (one passage `question \n caption. caption. ...`) or
            `"fid"` (fusion-in-decoder: passages of `captions_per_passage` captions encoded separately, decoded
            together).
        captions_per_passage (`int`, defaults to 1): captions per passage with `reader_form="fid"` (LAVIS's
            `num_captions_fid`).
        answer_max_length (`int`, defaults to 20): longest answer in tokens (the decoder start token included).
        answer_min_length (`int`, defaults to 0): shortest answer in tokens.
        num_beams (`int`, defaults to 1): beams of the reader's search (1: greedy).
    """

    num_captions: int = 50
    num_patches: int = 20
    top_p: float = 1.0
    top_k: int = 50
    caption_max_length: int = 20
    caption_min_length: int = 10
    repetition_penalty: float = 1.0
    caption_prompt: str = "a picture of "
    deduplicate_captions: bool = True
    max_caption_rounds: int = 5
    use_mask_enhancement: bool = True
    heatmap_mask_alpha: float | None = None
    text_prompt_mode: str | None = None
    gradcam_block_num: int | None = None
    reader_form: str = "concat"
    captions_per_passage: int = 1
    answer_max_length: int = 20
    answer_min_length: int = 0
    num_beams: int = 1

    def __post_init__(self) -> None:
        for name in ("num_captions", "num_patches", "caption_max_length", "max_caption_rounds"):
            _check_int(name, getattr(self, name), 1)
        for name in ("captions_per_passage", "answer_max_length", "num_beams"):
            _check_int(name, getattr(self, name), 1)
        for name in ("top_k", "caption_min_length", "answer_min_length"):
            _check_int(name, getattr(self, name), 0)
        _check_number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_number("repetition_penalty", self.repetition_penalty, 0.0, float("inf"), low_open=True)
        if self.caption_min_length > self.caption_max_length:
            raise ValueError(
                f"`caption_min_length` ({self.caption_min_length}) must not exceed `caption_max_length` "
                f"({self.caption_max_length})."
            )
        if self.answer_min_length > self.answer_max_length:
            raise ValueError(
                f"`answer_min_length` ({self.answer_min_length}) must not exceed `answer_max_length` "
                f"({self.answer_max_length})."
            )
        if not isinstance(self.caption_prompt, str):
            raise TypeError(f"`caption_prompt` must be a string, got {type(self.caption_prompt).__name__}.")
        _check_bool("deduplicate_captions", self.deduplicate_captions)
        _check_bool("use_mask_enhancement", self.use_mask_enhancement)
        if self.heatmap_mask_alpha is not None:
            _check_number("heatmap_mask_alpha", self.heatmap_mask_alpha, 0.0, 1.0)
        if self.text_prompt_mode is not None and not isinstance(self.text_prompt_mode, str):
            raise TypeError(f"`text_prompt_mode` must be a string or None, got {type(self.text_prompt_mode).__name__}.")
        if self.gradcam_block_num is not None:
            _check_int("gradcam_block_num", self.gradcam_block_num, 0)
        if self.reader_form not in PNP_VQA_READER_FORMS:
            raise ValueError(f"`reader_form` must be one of {sorted(PNP_VQA_READER_FORMS)}, got {self.reader_form!r}.")

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The names every PnP-VQA call accepts as keyword arguments."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> "EsamBlipPnpVqaConfig":
        """
        A copy with `overrides` (validated); `None` values keep the current setting, so callers can pass their
        keyword defaults through. An unknown name is a `TypeError` listing the known ones.
        """
        unknown = sorted(set(overrides) - set(self.setting_names()))
        if unknown:
            raise TypeError(f"Unknown PnP-VQA settings {unknown}; the settings are {sorted(self.setting_names())}.")
        given = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the settings to `save_directory/pnp_vqa_config.json`; returns the file."""
        path = Path(save_directory) / PNP_VQA_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "EsamBlipPnpVqaConfig":
        """
        Read `pnp_vqa_config.json` (see [`save_pretrained`]) from a local folder or a Hub repository; `overrides`
        replace saved settings.
        """
        if Path(directory).is_dir():
            path = Path(directory) / PNP_VQA_CONFIG_NAME
            path = path if path.is_file() else None
        else:
            path = cached_file(str(directory), PNP_VQA_CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
        if path is None:
            raise FileNotFoundError(f"{directory} holds no {PNP_VQA_CONFIG_NAME}: it is not a saved PnP-VQA folder.")
        return cls().replace(**json.loads(Path(path).read_text(encoding="utf-8"))).replace(**overrides)


__all__ = ["PNP_VQA_CONFIG_NAME", "EsamBlipPnpVqaConfig"]
