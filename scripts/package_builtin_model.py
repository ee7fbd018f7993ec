"""Copy a trained checkpoint into the package as a built-in model, scored on fresh test scenes, with a model card.

    python scripts/package_builtin_model.py RUN_DIR [--name esam-blip-shapes] [--test_scenes 500] \
        [--slow_mode_scenes 100] [--training_command "..."] [--training_time "..."] [--output_dir DIR] [--overwrite]

Keeps only what loading needs (config without `auto_map`, `model.safetensors`, processor and tokenizer files): the
package's own classes load it, so no code files travel with it. The model card (`README.md`, written with
`huggingface_hub.ModelCard`) states the model's domain first, then the test scores, the per-prompt-type table
(`evaluation_prompts`), the training commands and their time. Without `--training_command` / `--training_time`, the
card takes them from RUN_DIR's `training.json`, which the training command writes (a run of several stages needs them
given).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.builtin import BUILTIN_MODELS, MODELS_DIR
from transformers_esam_blip.commands import CliError, CommandParser, load_checkpoint_config, run_command
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.data.synthetic import COLOURS, SHAPES
from transformers_esam_blip.evaluation import DEFAULT_TEST_SEED, evaluate_referring_segmentation
from transformers_esam_blip.evaluation_prompts import evaluate_prompt_types, format_prompt_type_table
from transformers_esam_blip.model_card import TRAINING_RECORD_FILE, builtin_model_card

KEPT = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="package_builtin_model.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("run_dir", help="output folder of the training command")
    parser.add_argument("--name", default="esam-blip-shapes", choices=sorted(BUILTIN_MODELS))
    parser.add_argument("--test_scenes", type=int, default=500)
    parser.add_argument(
        "--slow_mode_scenes",
        type=int,
        default=100,
        help="scenes for the slower Grad-CAM text mode and everything mode of the per-prompt-type table (default 100)",
    )
    parser.add_argument("--training_command", help="recorded in the model card (default: RUN_DIR's training.json)")
    parser.add_argument("--training_time", help="recorded in the model card (default: RUN_DIR's training.json)")
    parser.add_argument("--output_dir", type=Path, help="where to write the model (default: the package's assets)")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def domain_sentence() -> str:
    """What the synthetic-scene models know, in one sentence, from the scene generator's vocabulary."""
    return (
        f"It knows {len(COLOURS)} colours ({', '.join(COLOURS)}) and {len(SHAPES)} shapes ({', '.join(SHAPES)}) on "
        "synthetic scenes; nothing else."
    )


def training_facts(run_dir: Path, command: str | None, time: str | None) -> tuple[str, str]:
    """The card's training commands and time: the given ones, else those of RUN_DIR's `training.json`."""
    record_file = run_dir / TRAINING_RECORD_FILE
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    if command is None:
        command = record.get("command")
    if time is None and "wall_time_s" in record:
        inside = record.get("train_runtime_s")
        time = (
            f"{record['wall_time_s'] / 60:.0f} min for the training command"
            + (f" ({inside:,.0f} s inside Trainer.train)" if inside is not None else "")
            + f", {record.get('world_size', 1)} process(es) on {record.get('device', 'cpu')}, finished {record.get('date')}"
        )
    if command is None:
        raise CliError(f"give --training_command: {record_file} does not exist or records no command")
    return command, time or ""


def package(args: argparse.Namespace) -> tuple[Path, dict]:
    """Score RUN_DIR, then write the built-in model folder with its card; returns the folder and the scores."""
    target = args.output_dir or MODELS_DIR / args.name
    if target.exists() and not args.overwrite:
        raise CliError(f"{target} exists; pass --overwrite to replace it")
    if args.test_scenes < 1:
        raise CliError(f"--test_scenes must be >= 1, got {args.test_scenes}")
    if args.slow_mode_scenes < 0:
        raise CliError(f"--slow_mode_scenes must be >= 0, got {args.slow_mode_scenes}")
    run_dir = Path(args.run_dir)
    load_checkpoint_config(run_dir, argument="RUN_DIR")
    command, time = training_facts(run_dir, args.training_command, args.training_time)
    model = EsamBlipForPromptableSegmentation.from_pretrained(run_dir).eval()
    processor = EsamBlipProcessor.from_pretrained(run_dir)
    test_set = synthetic_referring_dataset(args.test_scenes, seed=DEFAULT_TEST_SEED)
    scores = evaluate_referring_segmentation(model, processor, test_set, breakdown=True)
    slow_scenes = min(args.slow_mode_scenes, args.test_scenes)
    prompt_types = evaluate_prompt_types(
        model, processor, test_set, seed=DEFAULT_TEST_SEED, gradcam_scenes=slow_scenes, everything_scenes=slow_scenes
    )
    card = builtin_model_card(
        args.name,
        description=BUILTIN_MODELS[args.name],
        domain=domain_sentence(),
        model=model,
        scores=scores,
        test_set=(
            f"{args.test_scenes} fresh synthetic scenes (seed {DEFAULT_TEST_SEED}, never used in training), "
            f"{len(test_set)} expressions ({scores.get('num_present')} present, {scores.get('num_absent')} absent), "
            "masks scored at the images' 256x256 resolution (best of 3 candidates by predicted IoU)"
        ),
        evaluation_command=(
            f"python -m transformers_esam_blip.evaluation --model {args.name} --num_scenes {args.test_scenes} "
            "--breakdown"
        ),
        training_commands=command,
        training_time=time,
        prompt_type_table=(
            f"Each prompt type on the same test scenes ({prompt_types['num_objects']:,} objects; the Grad-CAM text "
            f"mode and everything mode on the first {slow_scenes}); the goals are the built-in model's:\n\n"
            + format_prompt_type_table(prompt_types)
        ),
    )
    scores["prompt_types"] = prompt_types  # as `python -m transformers_esam_blip.evaluation --breakdown --json` writes
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        staging = Path(staging)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        folder = staging / args.name
        folder.mkdir()
        for name in KEPT:
            shutil.copy2(staging / name, folder / name)
        config = json.loads((folder / "config.json").read_text())
        config.pop("auto_map", None)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in ("processor_config.json", "tokenizer_config.json"):
            data = json.loads((folder / name).read_text())
            if isinstance(data, dict):
                data.pop("auto_map", None)
                for value in data.values():
                    if isinstance(value, dict):
                        value.pop("auto_map", None)
            (folder / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        card.save(folder / "README.md")
        (folder / "test_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target, scores


def run(args: argparse.Namespace) -> None:
    target, scores = package(args)
    print(f"{args.name} -> {target}: {json.dumps(scores)}")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
