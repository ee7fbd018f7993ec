"""Ready-made `transformers.Trainer`s: referring segmentation ([`build_trainer`]) and image-text matching alone."""

from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import Trainer, TrainingArguments

from ..metrics import make_compute_metrics, preprocess_logits_for_metrics
from ..modeling_esam_blip import (
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
)
from ..processing_esam_blip import EsamBlipProcessor
from ..text_prompt_strategies import TEXT_PROMPT_STRATEGIES, resolve_text_prompt_mode
from .collators import EsamBlipItmCollator, EsamBlipTrainingCollator
from .metrics import itm_compute_metrics
from .prompt_mix import EsamBlipPromptMixCollator, EsamBlipRefinementTrainer, PromptMix

TASKS = ("segmentation", "itm")
# Trainer otherwise also takes `input_labels` (a forward argument whose name holds "label") for a label.
LABEL_NAMES = ["labels", "match_labels"]
# `task="itm"` trains `EsamBlipForImageTextMatching`, whose `labels` are the 0/1 match targets.
ITM_LABEL_NAMES = ["labels"]
_TASK_LABEL_NAMES = {"segmentation": LABEL_NAMES, "itm": ITM_LABEL_NAMES}


def training_arguments(
    output_dir: str | Path,
    evaluate: bool = False,
    task: str = "segmentation",
    **overrides: Any,
) -> TrainingArguments:
    """
    `TrainingArguments` for [`build_trainer`] (`task="segmentation"`) or [`build_itm_trainer`] (`task="itm"`):
    `label_names=["labels", "match_labels"]` (`["labels"]` for `"itm"`) and
    `remove_unused_columns=False` (the collator reads the raw columns) are fixed; the defaults below can be overridden.

    Defaults: `report_to="none"`, `logging_steps=10`, `save_steps=200`, evaluation every `save_steps` when
    `evaluate`, `ddp_timeout=600` (a stuck process fails after 10 minutes instead of Trainer's 30), and without an
    accelerator `use_cpu=True` (so that a `torchrun` / `accelerate launch` process group is joined with gloo) and no
    pinned memory.

    Checkpoints are always safetensors (`transformers` 5 has no other format and no `save_safetensors` switch).
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
    label_names = _TASK_LABEL_NAMES[task]
    for name, fixed in (("label_names", label_names), ("remove_unused_columns", False)):
        if name in overrides and overrides[name] != fixed:
            raise ValueError(f"`{name}` must be {fixed!r} for EsamBlip training, got {overrides[name]!r}.")
    # Without an accelerator, `use_cpu` is what makes Trainer join a `torchrun`/`accelerate launch` process group
    # with gloo; without it every process would train alone on all the data.
    use_cpu = overrides.get("use_cpu") or not torch.accelerator.is_available()
    settings: dict[str, Any] = {
        "report_to": "none",
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 200,
        "eval_strategy": "steps" if evaluate else "no",
        "ddp_timeout": 600,
        "dataloader_pin_memory": not use_cpu,
        **overrides,
        "use_cpu": use_cpu,
        "label_names": label_names,
        "remove_unused_columns": False,
    }
    if evaluate and settings.get("eval_steps") is None:
        settings["eval_steps"] = settings["save_steps"]
    return TrainingArguments(output_dir=str(output_dir), **settings)


def _trainer_arguments(
    args: TrainingArguments | None,
    output_dir: str | Path | None,
    evaluate: bool,
    task: str,
    training_kwargs: dict[str, Any],
) -> TrainingArguments:
    """`args` checked against `task`'s fixed settings, or new ones built by [`training_arguments`]."""
    if args is None:
        if output_dir is None:
            raise ValueError("Pass `output_dir` (or ready `args`).")
        return training_arguments(output_dir, evaluate=evaluate, task=task, **training_kwargs)
    if training_kwargs or output_dir is not None:
        raise ValueError("Pass either `args` or `output_dir` and training keyword arguments, not both.")
    label_names = _TASK_LABEL_NAMES[task]
    if list(args.label_names or []) != label_names or args.remove_unused_columns:
        builder = "`training_arguments`" if task == "segmentation" else f"`training_arguments(task={task!r})`"
        raise ValueError(
            f"`args` must have label_names={label_names} and remove_unused_columns=False, got "
            f"{args.label_names} and {args.remove_unused_columns}; build them with {builder}."
        )
    return args


def build_trainer(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None = None,
    output_dir: str | Path | None = None,
    text_prompt_mode: str | None = None,
    args: TrainingArguments | None = None,
    prompt_mix: PromptMix | None = None,
    **training_kwargs: Any,
) -> Trainer:
    """
    A `transformers.Trainer` for referring segmentation: [`EsamBlipTrainingCollator`] with labels at the model's mask
    size, `compute_metrics` from the package's `evaluate` metric with [`preprocess_logits_for_metrics`] (only the
    best mask per example is kept during evaluation), and the processor as `processing_class`, so that every
    checkpoint folder also holds the processor.

    Args:
        model ([`EsamBlipForPromptableSegmentation`]): the model (freeze it first with [`apply_freezing`]).
        processor ([`EsamBlipProcessor`]): with a tokenizer when the data has texts.
        train_dataset, eval_dataset (`datasets.Dataset`): rows with the columns of `REFERRING_FEATURES`.
        output_dir (`str` or `Path`): where checkpoints go; needed unless `args` is given.
        text_prompt_mode (`str`, *optional*): how texts become prompts (`text_prompt_mode_choices()`), written into
            `model.config.text_prompt_mode` (so every checkpoint keeps it); `None` keeps the model's setting.
        args (`TrainingArguments`, *optional*): ready arguments (made by [`training_arguments`], or with the same
            `label_names` and `remove_unused_columns=False`); otherwise built from `output_dir` and `training_kwargs`.
        prompt_mix ([`PromptMix`], *optional*): SAM's training mix (texts, texts plus points, points, jittered boxes
            sampled from the masks, and simulated refinement with mask prompts): an [`EsamBlipPromptMixCollator`] and
            an [`EsamBlipRefinementTrainer`]. Without it every batch is prompted as the dataset says.
        training_kwargs: passed to [`training_arguments`].
    """
    args = _trainer_arguments(args, output_dir, eval_dataset is not None, "segmentation", training_kwargs)
    mode = model.config.text_prompt_mode if text_prompt_mode is None else text_prompt_mode
    # An unknown mode, or one the model cannot run, fails here rather than at the first step.
    TEXT_PROMPT_STRATEGIES[resolve_text_prompt_mode(model.config, mode)].check_model(model.base_model)
    model.config.text_prompt_mode = mode
    trainer_class, extra = Trainer, {}
    if prompt_mix is None:
        collator = EsamBlipTrainingCollator(processor, model.config)
    else:
        collator = EsamBlipPromptMixCollator(processor, model.config, prompt_mix, rank=args.process_index)
        trainer_class, extra = EsamBlipRefinementTrainer, {"prompt_mix": prompt_mix}
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=make_compute_metrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        **extra,
    )
    # The forward takes **kwargs, which Trainer reads as "the loss is a sum over `num_items_in_batch`" and then
    # multiplies it by the number of processes; this loss is already a mean.
    trainer.model_accepts_loss_kwargs = False
    return trainer


def build_itm_trainer(
    model: EsamBlipForImageTextMatching,
    processor: EsamBlipProcessor,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None = None,
    args: TrainingArguments | None = None,
    output_dir: str | Path | None = None,
    **training_kwargs: Any,
) -> Trainer:
    """
    A `transformers.Trainer` for image-text matching alone (the BLIP half): [`EsamBlipItmCollator`], ITM accuracy
    and ROC-AUC as `compute_metrics`, the processor saved with every checkpoint. Only the BLIP half runs, so a step
    costs a fraction of a referring-segmentation step; combine it with `apply_freezing(model, "itm")` to leave
    learned text prompts untouched.

    Args: as [`build_trainer`]; `args` must come from `training_arguments(..., task="itm")`.
    """
    args = _trainer_arguments(args, output_dir, eval_dataset is not None, "itm", training_kwargs)
    model.base_model.require_blip()
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=EsamBlipItmCollator(processor, sam_pixel_values=model.config.itm_fusion),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=itm_compute_metrics,
    )
    trainer.model_accepts_loss_kwargs = False
    return trainer


__all__ = [
    "ITM_LABEL_NAMES",
    "LABEL_NAMES",
    "TASKS",
    "build_itm_trainer",
    "build_trainer",
    "training_arguments",
]
