"""
Text-prompt strategies: how texts become EfficientSAM prompts. One class per strategy, in a registry keyed by
`text_prompt_mode`. A new strategy is one subclass of [`EsamBlipTextPromptStrategy`] decorated with
`@register_text_prompt_strategy("name")`, in its own file (the built-in `text_prompt_gradcam.py` and
`text_prompt_learned.py`, imported by the modeling file) or in user code.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .modeling_outputs import EsamBlipSegmentationOutput

if TYPE_CHECKING:
    from .configuration_esam_blip import EsamBlipConfig
    from .modeling_esam_blip import EsamBlipModel

AUTO = "auto"
TEXT_PROMPT_STRATEGIES: dict[str, type["EsamBlipTextPromptStrategy"]] = {}


@dataclass
class TextPromptInputs:
    """
    What a strategy reads, already validated and encoded by the head model.

    Attributes:
        image_embeddings: `[B, C, g, g]` the decoder's image embeddings (after any decoder-side fusion), `B` = `T` or
            1 (one image for every text).
        itm_image_embeds: `[B, 1 + N, D]` the tokens BLIP's ITM cross-attention reads.
        input_ids, attention_mask: `[T, L]` the texts.
        input_points, input_labels, input_boxes: the user's point/box prompts for each text (`[T, Q, ...]`) or `None`.
        multimask_output: three candidates per query if True, one otherwise.
        input_masks: `[T, Q, m, m]` dense mask prompts (logits) for each text's queries, or `None`; pass them to
            `EfficientSamModule.decode`/`predict_masks`.
    """

    image_embeddings: torch.Tensor
    itm_image_embeds: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    input_points: torch.Tensor | None
    input_labels: torch.Tensor | None
    input_boxes: torch.Tensor | None
    multimask_output: bool
    input_masks: torch.Tensor | None = None

    @property
    def num_texts(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class TextPromptResult:
    """`fields` of the strategy's `output_class` (at least `iou_scores` and `pred_masks`) and the ITM logits `[T, 2]`."""

    fields: dict[str, torch.Tensor]
    itm_logits: torch.Tensor


def register_text_prompt_strategy(name: str):
    """Class decorator: make a [`EsamBlipTextPromptStrategy`] subclass available as `text_prompt_mode=name`."""

    def register(cls: type["EsamBlipTextPromptStrategy"]) -> type["EsamBlipTextPromptStrategy"]:
        if name == AUTO or name in TEXT_PROMPT_STRATEGIES:
            raise ValueError(f"A text-prompt strategy named {name!r} is already registered.")
        cls.name = name
        TEXT_PROMPT_STRATEGIES[name] = cls
        return cls

    return register


def text_prompt_mode_choices() -> tuple[str, ...]:
    """The values `text_prompt_mode` accepts: `"auto"` and every registered strategy."""
    return (AUTO, *TEXT_PROMPT_STRATEGIES)


def resolve_text_prompt_mode(config: "EsamBlipConfig", mode: str | None = None) -> str:
    """
    The strategy name for a call: `mode`, else `config.text_prompt_mode`; `"auto"` picks the first registered
    strategy whose `auto_select(config)` is true (`"learned"` for checkpoints with a prompter, then `"gradcam"`).
    """
    mode = config.text_prompt_mode if mode is None else mode
    if not isinstance(mode, str) or mode not in text_prompt_mode_choices():
        raise ValueError(f"`text_prompt_mode` must be one of {text_prompt_mode_choices()}, got {mode!r}.")
    if mode != AUTO:
        return mode
    return next(
        name for name, cls in sorted(TEXT_PROMPT_STRATEGIES.items(), key=_auto_order) if cls.auto_select(config)
    )


def _auto_order(item: tuple[str, type["EsamBlipTextPromptStrategy"]]) -> float:
    return item[1].auto_priority


def pair_with_texts(images: torch.Tensor, num_texts: int, name: str) -> torch.Tensor:
    """One image per text; a single image is broadcast (a view, not a copy) to every text."""
    if images.shape[0] == num_texts:
        return images
    if images.shape[0] == 1:
        return images.expand(num_texts, *images.shape[1:])
    raise ValueError(
        f"`{name}`: got {images.shape[0]} images for {num_texts} texts. Pass one image per text, or a single image "
        "for every text."
    )


class EsamBlipTextPromptStrategy:
    """
    How texts become EfficientSAM prompts. A subclass registered with `@register_text_prompt_strategy(name)` owns:
    - `settings`: per-call setting name → the config attribute holding its default (overridable with
      `forward(text_prompt_kwargs={...})`; unknown names are a `TypeError`);
    - `output_class`: the `ModelOutput` it fills (a subclass of [`EsamBlipSegmentationOutput`]);
    - `trains_itm`: whether its ITM logits are differentiable, so `match_labels` can train them;
    - `check_model(model)`: a `ValueError` when the checkpoint cannot run it;
    - `__call__(inputs)`: the computation, from [`TextPromptInputs`] to a [`TextPromptResult`];
    - `auto_select(config)` / `auto_priority`: whether and in which order `"auto"` picks it.
    """

    name: ClassVar[str] = ""
    settings: ClassVar[dict[str, str]] = {}
    output_class: ClassVar[type[EsamBlipSegmentationOutput]] = EsamBlipSegmentationOutput
    trains_itm: ClassVar[bool] = False
    auto_priority: ClassVar[float] = math.inf

    def __init__(self, model: "EsamBlipModel", **overrides: Any) -> None:
        unknown = sorted(set(overrides) - set(self.settings))
        if unknown:
            raise TypeError(
                f"`text_prompt_kwargs` got {unknown}, which the {self.name!r} strategy does not take; it takes "
                f"{sorted(self.settings)}."
            )
        self.check_model(model)
        self.model = model
        self.config = model.config
        for setting, config_attribute in self.settings.items():
            setattr(self, setting, overrides.get(setting, getattr(self.config, config_attribute)))

    @classmethod
    def check_model(cls, model: "EsamBlipModel") -> None:
        """Raise a `ValueError` when `model` lacks what this strategy needs."""

    @classmethod
    def auto_select(cls, config: "EsamBlipConfig") -> bool:
        return False

    def __call__(self, inputs: TextPromptInputs) -> TextPromptResult:
        raise NotImplementedError


__all__ = [
    "AUTO",
    "TEXT_PROMPT_STRATEGIES",
    "EsamBlipTextPromptStrategy",
    "TextPromptInputs",
    "TextPromptResult",
    "pair_with_texts",
    "register_text_prompt_strategy",
    "resolve_text_prompt_mode",
    "text_prompt_mode_choices",
]
