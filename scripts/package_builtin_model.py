"""Copy a trained checkpoint into the package as a built-in model, scored on fresh test scenes, with a model card.

    python scripts/package_builtin_model.py RUN_DIR [--name esam-blip-shapes] [--test_scenes 500] \
        [--training_command "..."] [--training_time "..."] [--overwrite]

Keeps only what loading needs (config without `auto_map`, `model.safetensors`, processor and tokenizer files): the
package's own classes load it, so no code files travel with it. The model card states the test scores.
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
from transformers_esam_blip.evaluation import DEFAULT_TEST_SEED, evaluate_referring_segmentation

KEPT = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="package_builtin_model.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("run_dir", help="output folder of the training command")
    parser.add_argument("--name", default="esam-blip-shapes", choices=sorted(BUILTIN_MODELS))
    parser.add_argument("--test_scenes", type=int, default=500)
    parser.add_argument("--training_command", default="", help="recorded in the model card")
    parser.add_argument("--training_time", default="", help="recorded in the model card")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def run(args: argparse.Namespace) -> None:
    target = MODELS_DIR / args.name
    if target.exists() and not args.overwrite:
        raise CliError(f"{target} exists; pass --overwrite to replace it")
    if args.test_scenes < 1:
        raise CliError(f"--test_scenes must be >= 1, got {args.test_scenes}")
    load_checkpoint_config(args.run_dir, argument="RUN_DIR")
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.run_dir).eval()
    processor = EsamBlipProcessor.from_pretrained(args.run_dir)
    test_set = synthetic_referring_dataset(args.test_scenes, seed=DEFAULT_TEST_SEED)
    scores = evaluate_referring_segmentation(model, processor, test_set)
    with tempfile.TemporaryDirectory(dir=MODELS_DIR.parent) as staging:
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
        (folder / "README.md").write_text(_card(args, model, scores, len(test_set)), encoding="utf-8")
        (folder / "test_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
    print(f"{args.name} -> {target}: {json.dumps(scores)}")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def _card(args: argparse.Namespace, model, scores: dict, num_rows: int) -> str:
    score_lines = "\n".join(f"| {name} | {value:.4f} |" for name, value in scores.items() if isinstance(value, float))
    return f"""---
library_name: transformers
tags: [image-segmentation, referring-segmentation, esam-blip, synthetic]
---

# {args.name}

{BUILTIN_MODELS[args.name]}. Trained from scratch here with `transformers_esam_blip.training` on synthetic scenes;
it knows four colours (red, green, blue, yellow) and three shapes (circle, square, triangle) and nothing else.
{model.num_parameters():,} parameters.

## Test scores

{args.test_scenes} fresh synthetic scenes (seed {DEFAULT_TEST_SEED}, never used in training), {num_rows} expressions
({scores["num_present"]} present, {scores["num_absent"]} absent), masks scored at the images' 256x256 resolution
(`python -m transformers_esam_blip.evaluation --model {args.name} --num_scenes {args.test_scenes}`):

| metric | value |
|---|---:|
{score_lines}

## Training

```bash
{args.training_command}
```

Time: {args.training_time}
"""


if __name__ == "__main__":
    sys.exit(main())
