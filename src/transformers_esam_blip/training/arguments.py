r"""The training command's arguments: the parser, the checks no parser makes, and the `TrainingArguments` they give.

    python -m transformers_esam_blip.training --config tiny --dataset synthetic --output_dir out --max_steps 50
    python -m transformers_esam_blip.training --model esam-blip-base --prompter_source text --fusion_type adapter \
        --freeze prompter_fusion --dataset my_data --eval_dataset my_eval_data --output_dir out [--push_to_hub me/x]
    python -m transformers_esam_blip.training ... --output_dir out --resume_from_checkpoint [out/checkpoint-100]
    accelerate launch --multi_gpu --num_processes 2 -m transformers_esam_blip.training ...   # 2 processes, also CPU
    esam-blip train ...                                                                      # the same command
"""

import argparse
from pathlib import Path

from transformers import TrainingArguments

from ..builtin import BUILTIN_PRESETS
from ..commands import CliError, CommandParser, check_writable
from ..configuration_esam_blip import PROMPTER_SOURCES
from ..fusion import fusion_type_choices
from ..text_prompt_strategies import text_prompt_mode_choices
from .freezing import FREEZE_PRESETS
from .prompt_mix import PROMPT_KINDS
from .trainer_builders import TASKS, training_arguments

PROG = "python -m transformers_esam_blip.training"
SUMMARY = "Train or fine-tune EsamBlip with `transformers.Trainer` (referring segmentation, or image-text matching)."
BUILTIN_CONFIGS = tuple(BUILTIN_PRESETS)
# Side of the square synthetic scenes; object sides scale with it (32..96 at the generator's default of 256).
DEFAULT_SCENE_SIZE = 256
EXAMPLES = __doc__.split("\n", 1)[1].strip("\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training command's arguments to `parser` (the `python -m` command's, or `esam-blip train`'s)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help="checkpoint folder, built-in name or Hub id to start from (e.g. a converted one)",
    )
    source.add_argument(
        "--config",
        choices=BUILTIN_CONFIGS,
        help="random weights of a built-in preset (tiny: 64² input, for tests; shapes: 128² input, the packaged "
        "esam-blip-shapes model); a text prompter unless --prompter_source",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        required=True,
        help="'synthetic', or a folder / Hub id for load_referring_dataset",
    )
    data.add_argument(
        "--dataset_split",
        help="split of --dataset to load (needed when it has several)",
    )
    data.add_argument(
        "--eval_dataset",
        help="'synthetic', or a folder / Hub id; evaluated every --eval_steps",
    )
    data.add_argument("--eval_split", help="split of --eval_dataset to load")
    data.add_argument(
        "--num_scenes",
        type=int,
        default=200,
        help="synthetic training scenes (default 200)",
    )
    data.add_argument(
        "--num_eval_scenes",
        type=int,
        default=20,
        help="synthetic evaluation scenes (default 20)",
    )
    data.add_argument(
        "--absent_fraction",
        type=float,
        default=0.25,
        help="synthetic data: expected fraction of absent expressions (empty mask, match label 0); default 0.25",
    )
    data.add_argument(
        "--scene_size",
        type=int,
        default=DEFAULT_SCENE_SIZE,
        help="side of the synthetic images",
    )
    data.add_argument(
        "--shared_attribute_fraction",
        type=float,
        default=0.0,
        help="synthetic training scenes only: fraction whose objects all share a colour or a shape (a curriculum; "
        "the evaluation scenes keep the task's distribution); default 0",
    )
    data.add_argument(
        "--cache_dir",
        help="where `datasets` caches the data (its default cache otherwise)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--task",
        choices=TASKS,
        default="segmentation",
        help="segmentation (default): referring segmentation + ITM with EsamBlipForPromptableSegmentation; itm: image-"
        "text matching alone with EsamBlipForImageTextMatching (the BLIP half runs, much cheaper per step)",
    )
    model.add_argument(
        "--text_prompt_mode",
        choices=text_prompt_mode_choices(),
        help="how texts become prompts, saved in the model's config (default: the model's config; auto: learned when "
        "the model has a prompter, else gradcam)",
    )
    model.add_argument(
        "--prompter_source",
        choices=PROMPTER_SOURCES,
        help="add/replace the learned text prompter",
    )
    model.add_argument(
        "--fusion_type",
        choices=fusion_type_choices(),
        help="add/replace the fusion of the two encoders",
    )
    model.add_argument(
        "--itm_fusion",
        action=argparse.BooleanOptionalAction,
        help="add EfficientSAM's image embeddings to BLIP's tokens for image-text matching (config.itm_fusion; "
        "default: the model's config, off for --config)",
    )
    model.add_argument(
        "--freeze",
        choices=FREEZE_PRESETS,
        default="all",
        help="what trains (default: all)",
    )
    model.add_argument(
        "--reinitialize_decoder",
        action="store_true",
        help="start the prompt encoder and mask decoder from a fresh initialisation (e.g. to teach points and boxes "
        "to a decoder trained on text prompts alone); everything else keeps its weights",
    )
    model.add_argument(
        "--cache_image_embeddings",
        action="store_true",
        help="encode every image once before training and train on the cached embeddings (needs frozen image "
        "encoders, e.g. --freeze prompt_decoder or decoder); a step then costs a decoder pass",
    )
    model.add_argument(
        "--absent_mask_loss",
        action=argparse.BooleanOptionalAction,
        help="also train absent expressions' masks towards empty (config.absent_mask_loss; default: the model's "
        "config, off for --config): stage 1 of the packaged esam-blip-shapes model was trained with it",
    )
    model.add_argument(
        "--mask_prompts",
        action="store_true",
        help="add SAM's mask encoder (prompt_encoder_config.mask_prompts) so that input_masks prompt the decoder; a "
        "new mask encoder starts as a no-op",
    )
    model.add_argument(
        "--prompt_mix",
        action="store_true",
        help="SAM's training mix: each batch prompted by texts, texts + points, 1-5 points or a jittered box sampled "
        "from the masks, and --refine_probability of the steps as refinement with the previous mask as mask prompt",
    )
    model.add_argument(
        "--prompt_weights",
        metavar="KIND=W,...",
        help="with --prompt_mix: relative frequency of each batch kind (text, text_points, points, box); default "
        "text=0.3,text_points=0.1,points=0.4,box=0.2",
    )
    model.add_argument(
        "--refine_probability",
        type=float,
        default=0.25,
        help="with --prompt_mix: share of refinement steps (needs a mask encoder; default 0.25)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--output_dir",
        required=True,
        type=Path,
        help="checkpoints and the final model go here",
    )
    train.add_argument(
        "--max_steps",
        type=int,
        default=-1,
        help="optimizer steps (overrides --num_train_epochs)",
    )
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
    train.add_argument(
        "--save_steps",
        type=int,
        default=200,
        help="checkpoint every N steps (default 200)",
    )
    train.add_argument("--eval_steps", type=int, help="evaluate every N steps (default: --save_steps)")
    train.add_argument("--save_total_limit", type=int, help="keep at most N checkpoints")
    train.add_argument("--dataloader_num_workers", type=int, default=0, help="default 0")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the model init, the data and the order; default 0",
    )
    train.add_argument(
        "--use_cpu",
        action="store_true",
        help="train on the CPU even when a GPU is present",
    )
    train.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        metavar="PATH",
        help="continue from PATH, or without PATH from the last checkpoint in --output_dir",
    )
    train.add_argument(
        "--push_to_hub",
        metavar="REPO_ID",
        help="push every checkpoint and the final model there",
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.training`."""
    parser = CommandParser(
        prog=prog,
        description=SUMMARY,
        epilog=f"examples:\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def parse_prompt_weights(text: str) -> dict[str, float]:
    """`"text=0.2,points=0.5"` → `{"text": 0.2, "points": 0.5}`; a `CliError` naming `--prompt_weights` otherwise."""
    weights = {}
    for item in text.split(","):
        kind, _, value = item.partition("=")
        kind = kind.strip()
        if kind not in PROMPT_KINDS:
            raise CliError(f"--prompt_weights: unknown kind {kind!r} in {text!r}; kinds are {', '.join(PROMPT_KINDS)}")
        try:
            weight = float(value)
        except ValueError:
            raise CliError(f"--prompt_weights: {item!r} must be KIND=NUMBER") from None
        if not weight >= 0 or weight == float("inf"):
            raise CliError(f"--prompt_weights: the weight of {kind} must be a finite number >= 0, got {value}")
        weights[kind] = weight
    if sum(weights.values()) <= 0:
        raise CliError(f"--prompt_weights: the weights must have a positive sum, got {text!r}")
    return weights


def check_arguments(args: argparse.Namespace) -> None:
    """What the parser cannot check: ranges and paths, each error naming its argument."""
    positive = (
        "num_scenes",
        "num_eval_scenes",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
    )
    positive += ("gradient_accumulation_steps", "logging_steps", "save_steps")
    for name in positive:
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.eval_steps is not None and args.eval_steps < 1:
        raise CliError(f"--eval_steps must be >= 1, got {args.eval_steps}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise CliError(f"--max_steps must be >= 1 (or -1 to use --num_train_epochs), got {args.max_steps}")
    if not 0 <= args.refine_probability <= 1:  # also False for NaN
        raise CliError(f"--refine_probability must lie in [0, 1], got {args.refine_probability}")
    if args.prompt_weights is not None:
        if not args.prompt_mix:
            raise CliError("--prompt_weights sets the --prompt_mix; add --prompt_mix")
        args.prompt_weights = parse_prompt_weights(args.prompt_weights)
    if args.task == "itm" and (args.prompt_mix or args.mask_prompts):
        raise CliError("--prompt_mix and --mask_prompts train the segmentation half; they do not apply to --task itm")
    if args.task == "itm" and (args.reinitialize_decoder or args.cache_image_embeddings):
        raise CliError(
            "--reinitialize_decoder and --cache_image_embeddings apply to the segmentation half, not to --task itm"
        )
    if args.cache_image_embeddings and args.freeze not in ("decoder", "prompt_decoder"):
        raise CliError(
            f"--cache_image_embeddings needs frozen image encoders (--freeze decoder or prompt_decoder), got --freeze "
            f"{args.freeze}"
        )
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
    check_writable(args.output_dir, "--output_dir", folder=True)
    checkpoint = args.resume_from_checkpoint
    if isinstance(checkpoint, str) and not Path(checkpoint).is_dir():
        raise CliError(f"--resume_from_checkpoint {checkpoint} is not a checkpoint folder")


def command_training_arguments(args: argparse.Namespace) -> TrainingArguments:
    """The `TrainingArguments` of a parsed command line."""
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


__all__ = [
    "BUILTIN_CONFIGS",
    "DEFAULT_SCENE_SIZE",
    "SUMMARY",
    "add_arguments",
    "build_parser",
    "check_arguments",
    "command_training_arguments",
]
