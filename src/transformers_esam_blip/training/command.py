"""The training command: load the model and the data, train with `transformers.Trainer`, save, report.

Without a GPU the command trains on the CPU and joins a multi-process launch with gloo. `accelerate launch --cpu`
(accelerate 1.x) starts a single process whatever `--num_processes` says unless given an MPI hostfile; the command
then warns. Every checkpoint (and the final model in `--output_dir`) holds `model.safetensors`, the config and the
processor, and loads with `AutoModel` / `AutoModelForMaskGeneration` / `AutoProcessor`. Errors are one line on stderr
(`error: ...`) and exit status 2; progress goes to stderr. At the end, `--output_dir` gets a model card (`README.md`:
the command line, the data, the final metrics, the time, the base model) and the same facts as `training.json`;
`--push_to_hub` uploads that card.
"""

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import TrainOutput

from ..builtin_presets import build_preset_config, build_preset_processor
from ..commands import CliError, load_checkpoint_config, looks_like_hub_id, run_command
from ..data import load_referring_dataset, synthetic_referring_dataset
from ..data.user_data import check_metadata_file, find_referring_source
from ..model_card import TRAINING_RECORD_FILE, TrainingRecord, training_model_card
from ..modeling_esam_blip import (
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
)
from ..processing_esam_blip import EsamBlipProcessor
from ..text_prompt_strategies import TEXT_PROMPT_STRATEGIES, resolve_text_prompt_mode
from .arguments import build_parser, check_arguments, command_training_arguments
from .embedding_cache import cache_image_embeddings
from .freezing import apply_freezing
from .prompt_mix import PromptMix
from .reinitialize import reinitialize_prompt_decoder
from .trainer_builders import build_itm_trainer, build_trainer


def _progress(message: str, args: TrainingArguments) -> None:
    # One process speaks for all of them under `accelerate launch`.
    if args.process_index == 0:
        print(message, file=sys.stderr, flush=True)


def _single_process_under_accelerate_cpu(args: TrainingArguments) -> bool:
    """Whether `accelerate launch --cpu --num_processes N>1` started this process alone (it sets MASTER_ADDR only then)."""
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return asked_cpu and "MASTER_ADDR" in os.environ and args.world_size == 1


def load_dataset(
    source: str,
    split: str | None,
    num_scenes: int,
    seed: int,
    args: argparse.Namespace,
    shared_attribute_fraction: float = 0.0,
) -> datasets.Dataset:
    """`--dataset` / `--eval_dataset`: synthetic scenes drawn with `seed`, or a referring dataset from disk or the Hub."""
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
    check_dataset_source(source)
    try:
        return load_referring_dataset(source, split=split, cache_dir=args.cache_dir)
    except StopIteration as error:  # `datasets` lets one escape from an empty or unreadable source
        raise CliError(f"dataset {source} holds no examples, or none it can read") from error


def check_dataset_source(source: str, argument: str = "--dataset") -> None:
    """
    Before any progress is printed: a local dataset folder exists and its metadata file reads (see
    [`check_metadata_file`]); a Hub id is left to `datasets`.
    """
    if source == "synthetic":
        return
    path = Path(source)
    if not path.exists():
        if not looks_like_hub_id(source):
            raise CliError(f"{argument} {source} does not exist (give 'synthetic', a folder or a Hub dataset id)")
        return
    if not path.is_dir():
        try:  # a COCO instances file, a RefCOCO refs file, or one table file
            find_referring_source(path)
        except ValueError as error:
            raise CliError(f"{argument} {source}: {error}") from error
        return
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return  # written by `save_to_disk`
    try:
        check_metadata_file(path)
    except ValueError as error:
        raise CliError(f"{argument} {source}: {error}") from error


def load_model(args: argparse.Namespace) -> tuple[EsamBlipForPromptableSegmentation, EsamBlipProcessor]:
    """The model and processor of `--model` or `--config`, with the prompter/fusion the command line asks for."""
    names = ("prompter_source", "fusion_type", "itm_fusion", "absent_mask_loss")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    model_class = EsamBlipForImageTextMatching if args.task == "itm" else EsamBlipForPromptableSegmentation
    if args.config is not None:
        processor = build_preset_processor(args.config)
        config = build_preset_config(args.config, processor, **{"prompter_source": "text", **overrides})
        config.prompt_encoder_config.mask_prompts = config.prompt_encoder_config.mask_prompts or args.mask_prompts
        if args.text_prompt_mode is not None:
            config.text_prompt_mode = args.text_prompt_mode
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
    # A prompter, fusion or mask encoder the checkpoint lacks starts from the model's init (the fusion as the identity,
    # the mask encoder as a no-op).
    if args.mask_prompts:
        config.prompt_encoder_config.mask_prompts = True
        for name, value in overrides.items():
            setattr(config, name, value)
        model = EsamBlipForPromptableSegmentation.from_pretrained(args.model, config=config)
    else:
        model = EsamBlipForPromptableSegmentation.from_pretrained(args.model, **overrides)
    mode = model.config.text_prompt_mode if args.text_prompt_mode is None else args.text_prompt_mode
    try:
        TEXT_PROMPT_STRATEGIES[resolve_text_prompt_mode(model.config, mode)].check_model(model.base_model)
    except ValueError as error:
        raise CliError(
            f"--text_prompt_mode {mode} does not fit --model {args.model}: {error} On the command line: add a "
            "prompter with --prompter_source text|itm, or pick another --text_prompt_mode"
        ) from error
    model.config.text_prompt_mode = mode
    processor = EsamBlipProcessor.from_pretrained(args.model)
    if processor.tokenizer is None:
        raise CliError(f"--model {args.model} has no tokenizer; referring-segmentation training needs the texts")
    return model, processor


def _report(trainer: Trainer, global_step: int, evaluate: bool, args: argparse.Namespace) -> dict[str, float]:
    """Print the loss trend and, with evaluation data, the final scores; returns those scores (`{}` without)."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = f"Trained to step {global_step}"
    if losses:
        summary += f"; logged loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    _progress(f"{summary}; model and processor saved to {args.output_dir}", trainer.args)
    if evaluate:
        # Trainer has evaluated the final step already when it falls on `eval_steps`.
        last = next(
            (entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry),
            None,
        )
        metrics = last if last is not None and last["step"] == global_step else trainer.evaluate()
        scores = {name: value for name, value in metrics.items() if name.startswith("eval_") and "_per_" not in name}
        _progress(
            "Evaluation: " + ", ".join(f"{name}={value:.4f}" for name, value in scores.items()),
            trainer.args,
        )
        return scores
    return {}


def _eval_seed(args: argparse.Namespace) -> int:
    # A different seed keeps the synthetic evaluation scenes out of the training scenes.
    return args.seed + 1 if args.eval_dataset == args.dataset else args.seed


def _command_line(args: argparse.Namespace) -> str:
    """`python -m transformers_esam_blip.training` with every option of `args` that differs from its default."""
    words = ["python", "-m", "transformers_esam_blip.training"]
    for action in build_parser()._actions:  # argparse lists its options nowhere public
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or action.dest == "debug" or value == action.default:
            continue
        option = next(name for name in action.option_strings if name.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(option if value else f"--no-{option[2:]}")
        elif action.nargs == 0 or (action.nargs == "?" and value == action.const):
            words.append(option)
        else:
            words += [option, *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return shlex.join(words)


def _data_description(source: str, split: str | None, num_scenes: int, seed: int, args: argparse.Namespace) -> str:
    if source != "synthetic":
        return f"`{source}`" + (f", split `{split}`" if split else "")
    return (
        f"synthetic scenes (`transformers_esam_blip.data`): {num_scenes:,} drawn with seed {seed} at "
        f"{args.scene_size}x{args.scene_size}, absent-expression fraction {args.absent_fraction}"
    )


def _training_record(
    args: argparse.Namespace,
    trainer: Trainer,
    result: TrainOutput,
    data: tuple[datasets.Dataset, datasets.Dataset | None],
    parameters: tuple[int, int],
    scores: dict[str, float],
    started: float,
) -> TrainingRecord:
    """What this run did, for its model card (see [`training_model_card`])."""
    train_dataset, eval_dataset = data
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    train_data = _data_description(args.dataset, args.dataset_split, args.num_scenes, args.seed, args)
    if args.dataset == "synthetic" and args.shared_attribute_fraction:
        train_data += f", shared-attribute fraction {args.shared_attribute_fraction}"
    return TrainingRecord(
        command=_command_line(args),
        base_model=args.model,
        preset=args.config,
        task=args.task,
        freeze=args.freeze,
        train_data=train_data,
        num_train_examples=len(train_dataset),
        eval_data=None
        if eval_dataset is None
        else _data_description(args.eval_dataset, args.eval_split, args.num_eval_scenes, _eval_seed(args), args),
        num_eval_examples=None if eval_dataset is None else len(eval_dataset),
        global_step=result.global_step,
        num_parameters=parameters[0],
        trainable_parameters=parameters[1],
        final_metrics=scores,
        train_loss=(losses[0], losses[-1]) if losses else None,
        train_runtime_s=result.metrics.get("train_runtime"),
        wall_time_s=time.monotonic() - started,
        world_size=trainer.args.world_size,
        device=str(trainer.args.device),
    )


def run(args: argparse.Namespace) -> None:
    """Train as the parsed command line says (`python -m transformers_esam_blip.training` / `esam-blip train`)."""
    started = time.monotonic()
    check_arguments(args)
    check_dataset_source(args.dataset, "--dataset")
    if args.eval_dataset is not None:
        check_dataset_source(args.eval_dataset, "--eval_dataset")
    training_args = command_training_arguments(args)
    if _single_process_under_accelerate_cpu(training_args):
        _progress(
            "warning: `accelerate launch --cpu` starts one process whatever --num_processes says (it needs an MPI "
            "hostfile for more); for N gloo processes on the CPU use `accelerate launch --multi_gpu --num_processes N` "
            "or `torchrun --nproc_per_node N` (this command trains on the CPU when there is no GPU, or with --use_cpu)",
            training_args,
        )
    set_seed(args.seed)  # the same random init in every process
    model, processor = load_model(args)
    if args.reinitialize_decoder:
        reinitialize_prompt_decoder(model, seed=args.seed)
    trainable = apply_freezing(model, args.freeze)
    total = sum(parameter.numel() for parameter in model.parameters())
    # Process 0 writes the `datasets` cache first; the others then read it instead of racing to write it.
    with training_args.main_process_first(desc="dataset"):
        _progress(f"Loading the training data ({args.dataset}) ...", training_args)
        train_dataset = load_dataset(
            args.dataset,
            args.dataset_split,
            args.num_scenes,
            args.seed,
            args,
            args.shared_attribute_fraction,
        )
        eval_dataset = None
        if args.eval_dataset is not None:
            _progress(f"Loading the evaluation data ({args.eval_dataset}) ...", training_args)
            eval_dataset = load_dataset(
                args.eval_dataset,
                args.eval_split,
                args.num_eval_scenes,
                _eval_seed(args),
                args,
            )
    for name, dataset in (("--dataset", train_dataset), ("--eval_dataset", eval_dataset)):
        if dataset is not None and len(dataset) == 0:
            raise CliError(f"{name} {getattr(args, name[2:])} holds no examples")
    if args.cache_image_embeddings:
        with training_args.main_process_first(desc="image embeddings"):
            progress = training_args.process_index == 0
            train_dataset = cache_image_embeddings(model, processor, train_dataset, progress=progress)
            if eval_dataset is not None:
                eval_dataset = cache_image_embeddings(model, processor, eval_dataset, progress=progress)
    _progress(
        f"Model: {trainable:,} of {total:,} parameters train (--freeze {args.freeze}); {len(train_dataset)} training "
        f"examples; {training_args.world_size} process(es) on {training_args.device}",
        training_args,
    )
    if args.task == "itm":
        trainer = build_itm_trainer(model, processor, train_dataset, eval_dataset, args=training_args)
    else:
        prompt_mix = None
        if args.prompt_mix:
            refine = args.refine_probability if model.config.prompt_encoder_config.mask_prompts else 0.0
            weights = {} if args.prompt_weights is None else {"weights": args.prompt_weights}
            prompt_mix = PromptMix(refine_probability=refine, seed=args.seed, **weights)
        trainer = build_trainer(
            model, processor, train_dataset, eval_dataset, args=training_args, prompt_mix=prompt_mix
        )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if args.push_to_hub is not None:
        # `save_model` pushes too, and `Trainer.push_to_hub` writes its own draft card over README.md before it
        # uploads: no draft there; the run's card goes up with the last push below.
        trainer.create_model_card = lambda **_: None
    trainer.save_model()
    trainer.save_state()
    scores = _report(trainer, result.global_step, eval_dataset is not None, args)
    record = _training_record(args, trainer, result, (train_dataset, eval_dataset), (total, trainable), scores, started)
    card = training_model_card(record, model, args.push_to_hub or Path(args.output_dir).name)
    readme = Path(args.output_dir) / "README.md"
    if trainer.is_world_process_zero():
        card.save(readme)
        (Path(args.output_dir) / TRAINING_RECORD_FILE).write_text(record.to_json(), encoding="utf-8")
    if args.push_to_hub is not None:
        trainer.create_model_card = lambda **_: card.save(readme)  # in place of the draft: this run's card
        trainer.push_to_hub()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = ["check_dataset_source", "load_dataset", "load_model", "main", "run"]
