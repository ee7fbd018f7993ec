"""Training entry point on `transformers.Trainer`: freezing presets, a ready-made Trainer and the training command.

    python -m transformers_esam_blip.training --config tiny --dataset synthetic --output_dir out --max_steps 50
    python -m transformers_esam_blip.training --model esam-blip-base --prompter_source text --fusion_type adapter \
        --freeze prompter_fusion --dataset my_data --eval_dataset my_eval_data --output_dir out [--push_to_hub me/x]
    python -m transformers_esam_blip.training ... --output_dir out --resume_from_checkpoint [out/checkpoint-100]
    accelerate launch --multi_gpu --num_processes 2 -m transformers_esam_blip.training ...   # 2 processes, also CPU

Without a GPU the command trains on the CPU and joins a multi-process launch with gloo. `accelerate launch --cpu`
(accelerate 1.x) starts a single process whatever `--num_processes` says unless given an MPI hostfile; the command
then warns. Every checkpoint (and the final model in `--output_dir`) holds `model.safetensors`, the config and the processor, and
loads with `AutoModel` / `AutoModelForMaskGeneration` / `AutoProcessor`. Errors are one line on stderr
(`error: ...`) and exit status 2; progress goes to stderr.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments, set_seed

from .cli import (
    CliError,
    CommandParser,
    load_checkpoint_config,
    looks_like_hub_id,
    run_command,
)
from .configuration_esam_blip import FUSION_TYPES, PROMPTER_SOURCES, EsamBlipConfig
from .data import (
    COLOURS,
    EXPRESSION_TEMPLATES,
    SHAPES,
    EsamBlipDataCollator,
    load_referring_dataset,
    synthetic_referring_dataset,
)
from .data.masks import mask_to_bool
from .image_processing_esam_blip import EsamBlipImageProcessor
from .metrics import make_compute_metrics, preprocess_logits_for_metrics
from .metrics.referring_segmentation.referring_segmentation import roc_auc
from .modeling_esam_blip import (
    TEXT_PROMPT_MODES,
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
)
from .processing_esam_blip import ENC_TOKEN, EsamBlipProcessor, build_blip_tokenizer

FREEZE_PRESETS = ("decoder", "prompter_fusion", "itm", "itm_heads", "all")
TASKS = ("segmentation", "itm")
BUILTIN_CONFIGS = ("tiny", "shapes")
# Trainer otherwise also takes `input_labels` (a forward argument whose name holds "label") for a label.
LABEL_NAMES = ["labels", "match_labels"]
# `--task itm` trains `EsamBlipForImageTextMatching`, whose `labels` are the 0/1 match targets.
ITM_LABEL_NAMES = ["labels"]
_TASK_LABEL_NAMES = {"segmentation": LABEL_NAMES, "itm": ITM_LABEL_NAMES}
# Side of the square synthetic scenes; object sides scale with it (32..96 at the generator's default of 256).
DEFAULT_SCENE_SIZE = 256
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def apply_freezing(model: torch.nn.Module, preset: str) -> int:
    """
    Choose which parameters train; every other one gets `requires_grad=False`.

    Presets:
    - `"decoder"`: the EfficientSAM mask decoder only (`model.sam.mask_decoder`), SAM's fine-tuning recipe for point
      and box prompts. The prompter, if any, stays as it is (train it first, or use `"all"`).
    - `"prompter_fusion"`: the learned text prompter and the encoder fusions (`model.prompter`, `model.fusion`,
      `model.itm_fusion`, whichever the config builds), nothing else: both encoders, the prompt encoder, the mask
      decoder and the ITM/ITC heads of a converted checkpoint stay exactly as converted, and the new joins learn to
      drive them.
    - `"itm"`: what image-text matching uses and the text-only features do not: the BLIP image encoder, the
      cross-attention blocks of the text encoder, the ITM head and the `itm_fusion` module if any. Text-only features
      (the ITC text side and a `prompter_source="text"` prompter's input) stay exactly as they are, so ITM training
      leaves learned text prompts (and their masks) unchanged, except through a `fusion_type` that feeds BLIP's ViT to
      the mask decoder: then use `"itm_heads"`.
    - `"itm_heads"`: `"itm"` without the BLIP image encoder: the text encoder's cross-attention blocks, the ITM head
      and the `itm_fusion` module. Every mask-path input stays exactly as it is (also with a fusion), so the masks
      do not change; with `itm_fusion` the matching still learns from EfficientSAM's (frozen) view of the image.
    - `"all"`: every parameter.

    Args:
        model ([`EsamBlipForPromptableSegmentation`] or [`EsamBlipModel`]): the model, changed in place.
        preset (`str`): one of `FREEZE_PRESETS`.

    Returns:
        `int`: the number of trainable parameters (elements).
    """
    if preset not in FREEZE_PRESETS:
        raise ValueError(f"`preset` must be one of {FREEZE_PRESETS}, got {preset!r}.")
    base = model.base_model
    if preset == "all":
        trained = [model]
    elif preset == "decoder":
        trained = [base.require_segmentation().mask_decoder]
    elif preset in ("itm", "itm_heads"):
        blip = base.require_blip()
        cross_attention = [layer.crossattention for layer in blip.text_encoder.encoder.layer]
        trained = [*cross_attention, blip.itm_head] + ([blip.vision_model] if preset == "itm" else [])
        trained += [base.itm_fusion] if base.itm_fusion is not None else []
    else:
        trained = [module for module in (base.prompter, base.fusion, base.itm_fusion) if module is not None]
        if not trained:
            raise ValueError(
                "`preset='prompter_fusion'` trains the learned text prompter and the encoder fusion, but the model has "
                "neither: build it with `prompter_source` ('text' or 'itm') and/or a `fusion_type` other than 'none'."
            )
    model.requires_grad_(False)
    for module in trained:
        module.requires_grad_(True)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def low_res_mask_size(config: EsamBlipConfig) -> int:
    """Side of the model's `pred_masks` (each transposed convolution of the decoder doubles the embedding grid)."""
    upscaling = 2 ** len(config.mask_decoder_config.upscaling_hidden_sizes)
    return config.sam_vision_config.image_embedding_size * upscaling


class EsamBlipTrainingCollator(EsamBlipDataCollator):
    r"""
    [`EsamBlipDataCollator`] that also tells the model how to turn the texts into prompts (`text_prompt_mode` in
    every batch with texts), since `Trainer` calls `model(**batch)`.

    Args:
        processor ([`EsamBlipProcessor`]): images, prompts and texts.
        mask_size (`int` or `"original"`): side of the `labels`; use [`low_res_mask_size`] of the model's config.
        text_prompt_mode (`str`, defaults to `"learned"`): one of `TEXT_PROMPT_MODES`.
    """

    def __init__(self, processor: EsamBlipProcessor, mask_size: int | str, text_prompt_mode: str = "learned") -> None:
        super().__init__(processor, mask_size=mask_size)
        if text_prompt_mode not in TEXT_PROMPT_MODES:
            raise ValueError(f"`text_prompt_mode` must be one of {TEXT_PROMPT_MODES}, got {text_prompt_mode!r}.")
        self.text_prompt_mode = text_prompt_mode

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        if "input_ids" in batch:
            batch["text_prompt_mode"] = self.text_prompt_mode
        return batch


def training_arguments(
    output_dir: str | Path, evaluate: bool = False, task: str = "segmentation", **overrides: Any
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
    text_prompt_mode: str = "learned",
    args: TrainingArguments | None = None,
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
        text_prompt_mode (`str`, defaults to `"learned"`): how texts become prompts (see the model's `forward`).
        args (`TrainingArguments`, *optional*): ready arguments (made by [`training_arguments`], or with the same
            `label_names` and `remove_unused_columns=False`); otherwise built from `output_dir` and `training_kwargs`.
        training_kwargs: passed to [`training_arguments`].
    """
    args = _trainer_arguments(args, output_dir, eval_dataset is not None, "segmentation", training_kwargs)
    if text_prompt_mode == "learned":
        model.base_model.require_prompter()
    collator = EsamBlipTrainingCollator(processor, low_res_mask_size(model.config), text_prompt_mode)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=make_compute_metrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    # The forward takes **kwargs, which Trainer reads as "the loss is a sum over `num_items_in_batch`" and then
    # multiplies it by the number of processes; this loss is already a mean.
    trainer.model_accepts_loss_kwargs = False
    return trainer


class EsamBlipItmCollator(EsamBlipDataCollator):
    r"""
    Image-text matching batches for [`EsamBlipForImageTextMatching`]: `blip_pixel_values`, `input_ids`,
    `attention_mask` and `labels` (1 match, 0 no match: the `match_label` column, or else whether `mask` is non-empty).
    Masks and point/box prompts are ignored.

    Args:
        processor ([`EsamBlipProcessor`]): with a tokenizer and a BLIP image size.
        sam_pixel_values (`bool`, defaults to `False`): also pass the EfficientSAM `pixel_values`, which the ITM of
            a model with `config.itm_fusion` reads.
    """

    def __init__(self, processor: EsamBlipProcessor, sam_pixel_values: bool = False) -> None:
        super().__init__(processor, mask_size="original")
        if processor.tokenizer is None or processor.image_processor.blip_image_size is None:
            raise ValueError("ITM training needs a processor with a tokenizer and `blip_image_size` set.")
        self.sam_pixel_values = sam_pixel_values

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        kept = []
        for i, feature in enumerate(features):
            if not isinstance(feature, Mapping):
                raise TypeError(f"`features[{i}]` must be a dict, got {type(feature).__name__}.")
            label = feature.get("match_label")
            if label is None:
                if feature.get("mask") is None:
                    raise ValueError(f"`features[{i}]` has neither `match_label` nor `mask`; ITM needs a target.")
                label = int(mask_to_bool(feature["mask"]).any())
            kept.append({"image": feature.get("image"), "text": feature.get("text"), "match_label": label})
        batch = super().__call__(kept)
        if "input_ids" not in batch:
            raise ValueError("ITM training needs a `text` in every example.")
        keys = ("blip_pixel_values", "input_ids", "attention_mask") + (
            ("pixel_values",) if self.sam_pixel_values else ()
        )
        return {**{key: batch[key] for key in keys}, "labels": batch["match_labels"]}


def _itm_compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """ITM accuracy (match probability >= 0.5) and ROC-AUC from the `itm_score` logits."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    probabilities = torch.as_tensor(logits).float().softmax(dim=-1)[:, 1].numpy()
    labels = np.asarray(eval_pred.label_ids).reshape(-1)
    return {
        "itm_accuracy": float(((probabilities >= 0.5) == labels).mean()),
        "itm_roc_auc": roc_auc(probabilities, labels),
    }


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
        compute_metrics=_itm_compute_metrics,
    )
    trainer.model_accepts_loss_kwargs = False
    return trainer


def synthetic_processor(sam_image_size: int, blip_image_size: int) -> EsamBlipProcessor:
    """A processor for the synthetic task: the given input sides and a BLIP tokenizer over the task's vocabulary."""
    words = {word for template in EXPRESSION_TEMPLATES for word in template.split() if not word.startswith("{")}
    vocabulary = [*_SPECIAL_TOKENS, *sorted(words), *COLOURS, *SHAPES]
    with tempfile.TemporaryDirectory() as folder:  # the BLIP tokenizer builder reads a vocab.txt file
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        tokenizer = build_blip_tokenizer(vocab_file)
    image_processor = EsamBlipImageProcessor(sam_image_size=sam_image_size, blip_image_size=blip_image_size)
    return EsamBlipProcessor(image_processor, tokenizer=tokenizer)


def tiny_processor() -> EsamBlipProcessor:
    """The processor of the built-in `tiny` config: 64² EfficientSAM input, 32² BLIP input, the synthetic vocabulary."""
    return synthetic_processor(64, 32)


def shapes_processor() -> EsamBlipProcessor:
    """The processor of the built-in `shapes` config: 128² EfficientSAM and BLIP inputs, the synthetic vocabulary."""
    return synthetic_processor(128, 128)


def tiny_sam_config_kwargs() -> dict:
    """EfficientSAM sub-configs of the built-in `tiny` model: 64x64 input, 8x8 embedding grid, 32x32 masks."""
    return {
        "sam_vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "pretrain_image_size": 32,
            "neck_hidden_sizes": [16, 16],
        },
        "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "image_embedding_size": 8},
        "mask_decoder_config": {
            "hidden_size": 16,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
            "upscaling_hidden_sizes": [8, 4],
        },
    }


def _tokenizer_fields(processor: EsamBlipProcessor) -> tuple[dict[str, int], dict[str, int]]:
    """The text-config fields and the joint-config fields that the tokenizer fixes."""
    tokenizer = processor.tokenizer
    text_fields = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    joint_fields = {"enc_token_id": tokenizer.convert_tokens_to_ids(ENC_TOKEN), "max_txt_len": processor.max_txt_len}
    return text_fields, joint_fields


def tiny_config(processor: EsamBlipProcessor, **overrides: Any) -> EsamBlipConfig:
    """
    The built-in `tiny` config (for tests and smoke runs, random weights): EfficientSAM with a 2-block, width-32 ViT
    on 64² images (8x8 embedding grid, 32x32 masks) and a BLIP half with a 1-block ViT on 32² images and a 2-layer
    text encoder sized to `processor`'s tokenizer.
    """
    text_fields, joint_fields = _tokenizer_fields(processor)
    config = {
        **tiny_sam_config_kwargs(),
        "vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "intermediate_size": 64,
            "initializer_range": 0.02,
        },
        "text_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            **text_fields,
        },
        "gradcam_block_num": 1,
        **joint_fields,
        **overrides,
    }
    return EsamBlipConfig(**config)


def shapes_config(processor: EsamBlipProcessor, **overrides: Any) -> EsamBlipConfig:
    """
    The built-in `shapes` config, the architecture of the packaged `esam-blip-shapes` model (1.3M parameters):
    EfficientSAM with a 4-block, width-96 ViT on 128² images (patch 8: 16x16 embedding grid of 64 channels, 64x64
    masks) and a width-64 mask decoder; BLIP with a 3-block, width-96 ViT on 128² images (patch 16: 8x8 grid) and a
    3-layer width-96 text encoder with cross-attention, whose [CLS] drives a learned text prompter.
    """
    text_fields, joint_fields = _tokenizer_fields(processor)
    config = {
        "sam_vision_config": {
            "hidden_size": 96,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
            "mlp_ratio": 2.0,
            "image_size": 128,
            "patch_size": 8,
            "pretrain_image_size": 128,
            "neck_hidden_sizes": [64, 64],
        },
        "prompt_encoder_config": {"hidden_size": 64, "image_size": 128, "image_embedding_size": 16},
        "mask_decoder_config": {
            "hidden_size": 64,
            "num_attention_heads": 2,
            "mlp_dim": 128,
            "iou_head_hidden_dim": 64,
            "upscaling_hidden_sizes": [32, 16],
        },
        "vision_config": {
            "hidden_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "image_size": 128,
            "patch_size": 16,
            "intermediate_size": 192,
            # BlipVisionConfig's default (1e-10) suits only weights loaded over it: a near-zero ViT trains badly.
            "initializer_range": 0.02,
        },
        "text_config": {
            "hidden_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "intermediate_size": 192,
            **text_fields,
        },
        "image_text_hidden_size": 64,
        "gradcam_block_num": 1,
        "fusion_hidden_size": 64,
        "fusion_num_attention_heads": 4,
        "prompter_source": "text",
        **joint_fields,
        **overrides,
    }
    return EsamBlipConfig(**config)


_BUILTIN = {"tiny": (tiny_processor, tiny_config), "shapes": (shapes_processor, shapes_config)}


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.training`."""
    summary, examples = __doc__.split("\n", 1)
    parser = CommandParser(
        prog="python -m transformers_esam_blip.training",
        description=summary,
        epilog=f"examples:\n{examples.lstrip()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder or Hub id to start from (e.g. a converted one)")
    source.add_argument(
        "--config",
        choices=BUILTIN_CONFIGS,
        help="random weights of a built-in config (tiny: 64² input, for tests; shapes: 128² input, the packaged "
        "esam-blip-shapes model); a text prompter unless --prompter_source",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="'synthetic', or a folder / Hub id for load_referring_dataset")
    data.add_argument("--dataset_split", help="split of --dataset to load (needed when it has several)")
    data.add_argument("--eval_dataset", help="'synthetic', or a folder / Hub id; evaluated every --eval_steps")
    data.add_argument("--eval_split", help="split of --eval_dataset to load")
    data.add_argument("--num_scenes", type=int, default=200, help="synthetic training scenes (default 200)")
    data.add_argument("--num_eval_scenes", type=int, default=20, help="synthetic evaluation scenes (default 20)")
    data.add_argument(
        "--absent_fraction",
        type=float,
        default=0.25,
        help="synthetic data: expected fraction of absent expressions (empty mask, match label 0); default 0.25",
    )
    data.add_argument("--scene_size", type=int, default=DEFAULT_SCENE_SIZE, help="side of the synthetic images")
    data.add_argument(
        "--shared_attribute_fraction",
        type=float,
        default=0.0,
        help="synthetic training scenes only: fraction whose objects all share a colour or a shape (a curriculum; "
        "the evaluation scenes keep the task's distribution); default 0",
    )
    data.add_argument("--cache_dir", help="where `datasets` caches the data (its default cache otherwise)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--task",
        choices=TASKS,
        default="segmentation",
        help="segmentation (default): referring segmentation + ITM with EsamBlipForPromptableSegmentation; itm: image-"
        "text matching alone with EsamBlipForImageTextMatching (the BLIP half runs, much cheaper per step)",
    )
    model.add_argument("--text_prompt_mode", choices=TEXT_PROMPT_MODES, default="learned", help="default: learned")
    model.add_argument("--prompter_source", choices=PROMPTER_SOURCES, help="add/replace the learned text prompter")
    model.add_argument("--fusion_type", choices=FUSION_TYPES, help="add/replace the fusion of the two encoders")
    model.add_argument(
        "--itm_fusion",
        action=argparse.BooleanOptionalAction,
        help="add EfficientSAM's image embeddings to BLIP's tokens for image-text matching (config.itm_fusion; "
        "default: the model's config, off for --config)",
    )
    model.add_argument("--freeze", choices=FREEZE_PRESETS, default="all", help="what trains (default: all)")
    model.add_argument(
        "--absent_mask_loss",
        action=argparse.BooleanOptionalAction,
        help="also train absent expressions' masks towards empty (config.absent_mask_loss; default: the model's "
        "config, off for --config): stage 1 of the packaged esam-blip-shapes model was trained with it",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True, type=Path, help="checkpoints and the final model go here")
    train.add_argument("--max_steps", type=int, default=-1, help="optimizer steps (overrides --num_train_epochs)")
    train.add_argument("--num_train_epochs", type=float, default=3.0, help="default 3")
    train.add_argument("--learning_rate", type=float, default=1e-4, help="default 1e-4")
    train.add_argument("--weight_decay", type=float, default=0.0, help="default 0")
    train.add_argument("--warmup_steps", type=int, default=0, help="default 0")
    train.add_argument(
        "--lr_scheduler_type",
        default="linear",
        help="a transformers scheduler name (linear, cosine, ...); default linear",
    )
    train.add_argument("--per_device_train_batch_size", type=int, default=8, help="default 8")
    train.add_argument("--per_device_eval_batch_size", type=int, default=8, help="default 8")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="default 1")
    train.add_argument("--logging_steps", type=int, default=10, help="default 10")
    train.add_argument("--save_steps", type=int, default=200, help="checkpoint every N steps (default 200)")
    train.add_argument("--eval_steps", type=int, help="evaluate every N steps (default: --save_steps)")
    train.add_argument("--save_total_limit", type=int, help="keep at most N checkpoints")
    train.add_argument("--dataloader_num_workers", type=int, default=0, help="default 0")
    train.add_argument("--seed", type=int, default=0, help="seeds the model init, the data and the order; default 0")
    train.add_argument("--use_cpu", action="store_true", help="train on the CPU even when a GPU is present")
    train.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        metavar="PATH",
        help="continue from PATH, or without PATH from the last checkpoint in --output_dir",
    )
    train.add_argument("--push_to_hub", metavar="REPO_ID", help="push every checkpoint and the final model there")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    positive = ("num_scenes", "num_eval_scenes", "per_device_train_batch_size", "per_device_eval_batch_size")
    positive += ("gradient_accumulation_steps", "logging_steps", "save_steps")
    for name in positive:
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.eval_steps is not None and args.eval_steps < 1:
        raise CliError(f"--eval_steps must be >= 1, got {args.eval_steps}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise CliError(f"--max_steps must be >= 1 (or -1 to use --num_train_epochs), got {args.max_steps}")
    if args.scene_size < 16:
        raise CliError(f"--scene_size must be >= 16 pixels, got {args.scene_size}")
    if not 0 <= args.absent_fraction < 1:
        raise CliError(f"--absent_fraction must lie in [0, 1), got {args.absent_fraction}")
    if not 0 <= args.shared_attribute_fraction <= 1:
        raise CliError(f"--shared_attribute_fraction must lie in [0, 1], got {args.shared_attribute_fraction}")
    if args.learning_rate <= 0:
        raise CliError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CliError(f"--output_dir {args.output_dir} is a file")
    checkpoint = args.resume_from_checkpoint
    if isinstance(checkpoint, str) and not Path(checkpoint).is_dir():
        raise CliError(f"--resume_from_checkpoint {checkpoint} is not a checkpoint folder")


def _progress(message: str, args: TrainingArguments) -> None:
    # One process speaks for all of them under `accelerate launch`.
    if args.process_index == 0:
        print(message, file=sys.stderr, flush=True)


def _single_process_under_accelerate_cpu(args: TrainingArguments) -> bool:
    """Whether `accelerate launch --cpu --num_processes N>1` started this process alone (it sets MASTER_ADDR only then)."""
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return asked_cpu and "MASTER_ADDR" in os.environ and args.world_size == 1


def _load_dataset(
    source: str,
    split: str | None,
    num_scenes: int,
    seed: int,
    args: argparse.Namespace,
    shared_attribute_fraction: float = 0.0,
) -> datasets.Dataset:
    if source == "synthetic":
        side = args.scene_size
        return synthetic_referring_dataset(
            num_scenes,
            seed=seed,
            absent_fraction=args.absent_fraction,
            cache_dir=args.cache_dir,
            image_size=side,
            min_side=side // 8,
            max_side=3 * side // 8,
            shared_attribute_fraction=shared_attribute_fraction,
        )
    if not Path(source).exists() and not looks_like_hub_id(source):
        raise CliError(f"dataset {source} does not exist (give 'synthetic', a folder or a Hub dataset id)")
    return load_referring_dataset(source, split=split, cache_dir=args.cache_dir)


def _load_model(args: argparse.Namespace) -> tuple[EsamBlipForPromptableSegmentation, EsamBlipProcessor]:
    """The model and processor of `--model` or `--config`, with the prompter/fusion the command line asks for."""
    names = ("prompter_source", "fusion_type", "itm_fusion", "absent_mask_loss")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    model_class = EsamBlipForImageTextMatching if args.task == "itm" else EsamBlipForPromptableSegmentation
    if args.config is not None:
        make_processor, make_config = _BUILTIN[args.config]
        processor = make_processor()
        config = make_config(processor, **{"prompter_source": "text", **overrides})
        return model_class(config), processor
    config = load_checkpoint_config(args.model)
    if args.task == "itm":
        if not config.has_blip:
            raise CliError(f"--task itm needs the BLIP half, but --model {args.model} has none")
        processor = EsamBlipProcessor.from_pretrained(args.model)
        if processor.tokenizer is None:
            raise CliError(f"--model {args.model} has no tokenizer; ITM training needs the texts")
        return model_class.from_pretrained(args.model, **overrides), processor
    if not (config.has_segmentation and config.has_blip):
        raise CliError(
            f"--model {args.model} needs both halves for referring segmentation (has_segmentation="
            f"{config.has_segmentation}, has_blip={config.has_blip}); convert it with --efficientsam and --blip"
        )
    if args.text_prompt_mode == "learned" and config.prompter_source is None and "prompter_source" not in overrides:
        raise CliError(
            f"--text_prompt_mode learned needs a learned prompter, but --model {args.model} has none: add one with "
            "--prompter_source text|itm"
        )
    # A prompter or fusion the checkpoint lacks starts from the model's init (the fusion as the identity).
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.model, **overrides)
    processor = EsamBlipProcessor.from_pretrained(args.model)
    if processor.tokenizer is None:
        raise CliError(f"--model {args.model} has no tokenizer; referring-segmentation training needs the texts")
    return model, processor


def _training_arguments(args: argparse.Namespace) -> TrainingArguments:
    """The command line's `TrainingArguments`."""
    return training_arguments(
        args.output_dir,
        evaluate=args.eval_dataset is not None,
        task=args.task,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        eval_steps=args.eval_steps,
        save_total_limit=args.save_total_limit,
        dataloader_num_workers=args.dataloader_num_workers,
        seed=args.seed,
        use_cpu=args.use_cpu,
        push_to_hub=args.push_to_hub is not None,
        hub_model_id=args.push_to_hub,
    )


def _report(trainer: Trainer, global_step: int, evaluate: bool, args: argparse.Namespace) -> None:
    """Print the loss trend and, with evaluation data, the final scores."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = f"Trained to step {global_step}"
    if losses:
        summary += f"; logged loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    _progress(f"{summary}; model and processor saved to {args.output_dir}", trainer.args)
    if evaluate:
        # Trainer has evaluated the final step already when it falls on `eval_steps`.
        last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
        metrics = last if last is not None and last["step"] == global_step else trainer.evaluate()
        scores = {name: value for name, value in metrics.items() if name.startswith("eval_") and "_per_" not in name}
        _progress("Evaluation: " + ", ".join(f"{name}={value:.4f}" for name, value in scores.items()), trainer.args)


def _run(args: argparse.Namespace) -> None:
    _check_arguments(args)
    training_args = _training_arguments(args)
    if _single_process_under_accelerate_cpu(training_args):
        _progress(
            "warning: `accelerate launch --cpu` starts one process whatever --num_processes says (it needs an MPI "
            "hostfile for more); for N gloo processes on the CPU use `accelerate launch --multi_gpu --num_processes N` "
            "or `torchrun --nproc_per_node N` (this command trains on the CPU when there is no GPU, or with --use_cpu)",
            training_args,
        )
    set_seed(args.seed)  # the same random init in every process
    model, processor = _load_model(args)
    trainable = apply_freezing(model, args.freeze)
    total = sum(parameter.numel() for parameter in model.parameters())
    # Process 0 writes the `datasets` cache first; the others then read it instead of racing to write it.
    with training_args.main_process_first(desc="dataset"):
        _progress(f"Loading the training data ({args.dataset}) ...", training_args)
        train_dataset = _load_dataset(
            args.dataset, args.dataset_split, args.num_scenes, args.seed, args, args.shared_attribute_fraction
        )
        eval_dataset = None
        if args.eval_dataset is not None:
            _progress(f"Loading the evaluation data ({args.eval_dataset}) ...", training_args)
            # A different seed keeps the synthetic evaluation scenes out of the training scenes.
            eval_seed = args.seed + 1 if args.eval_dataset == args.dataset else args.seed
            eval_dataset = _load_dataset(args.eval_dataset, args.eval_split, args.num_eval_scenes, eval_seed, args)
    _progress(
        f"Model: {trainable:,} of {total:,} parameters train (--freeze {args.freeze}); {len(train_dataset)} training "
        f"examples; {training_args.world_size} process(es) on {training_args.device}",
        training_args,
    )
    if args.task == "itm":
        trainer = build_itm_trainer(model, processor, train_dataset, eval_dataset, args=training_args)
    else:
        trainer = build_trainer(
            model, processor, train_dataset, eval_dataset, text_prompt_mode=args.text_prompt_mode, args=training_args
        )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    _report(trainer, result.global_step, eval_dataset is not None, args)
    if args.push_to_hub is not None:
        trainer.push_to_hub()


def main(argv: list[str] | None = None) -> int:
    """Run the training command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), _run, argv)


__all__ = [
    "BUILTIN_CONFIGS",
    "EsamBlipItmCollator",
    "EsamBlipTrainingCollator",
    "ITM_LABEL_NAMES",
    "TASKS",
    "build_itm_trainer",
    "FREEZE_PRESETS",
    "LABEL_NAMES",
    "apply_freezing",
    "build_parser",
    "build_trainer",
    "low_res_mask_size",
    "main",
    "shapes_config",
    "shapes_processor",
    "synthetic_processor",
    "tiny_config",
    "tiny_processor",
    "tiny_sam_config_kwargs",
    "training_arguments",
]

if __name__ == "__main__":
    sys.exit(main())
