"""Evaluate PnP-VQA on fresh synthetic scenes: answer accuracy per question template, mask enhancement on and off.

    python -m transformers_esam_blip.evaluation_vqa                  # esam-blip-shapes-vqa on 200 fresh scenes
    python -m transformers_esam_blip.evaluation_vqa --num_scenes 50 --enhancement on --json scores.json

Each scene (seed `--seed`, distinct from the seeds the matcher, captioner and reader were trained on) is asked up to
four questions of three templates:

- `what colour is the {shape}?` about one object whose shape no other object of the scene has (answer: its colour);
- `what shape is the {colour} object?` about one object whose colour no other object has (answer: its shape);
- `is there a {colour} {shape}?` twice: once about an object of the scene (`yes`), once about a (colour, shape) pair
  the scene does not hold (`no`), so the yes/no questions are balanced.

A scene without an object of unique shape (or colour) is not asked the first (or second) template. Answers are compared
to the expected word after stripping and lowercasing. With the enhancement on and off, every scene is answered with the
same seeds (patch sampling and caption sampling), so the two settings differ only in the heatmap the patches are drawn
from.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .builtin import BUILTIN_PNP_VQA_MODELS
from .commands import CliError, CommandParser, run_command
from .data.synthetic import COLOURS, SHAPES, generate_scene, scene_rng
from .pnp_vqa import EsamBlipForPnpVqa

SUMMARY = __doc__.split("\n", 1)[0]
DEFAULT_VQA_MODEL = "esam-blip-shapes-vqa"
# Seed of the test scenes: training used seeds 0 and 1 (matcher, captioner, reader) and 3 (validation).
DEFAULT_VQA_TEST_SEED = 2027
# Template name → question template.
QUESTION_TEMPLATES: dict[str, str] = {
    "colour": "what colour is the {shape}?",
    "shape": "what shape is the {colour} object?",
    "exists": "is there a {colour} {shape}?",
}
VALID_ANSWERS: frozenset[str] = frozenset([*COLOURS, *SHAPES, "yes", "no"])
ENHANCEMENT_SETTINGS: dict[str, bool] = {"on": True, "off": False}


def scene_questions(objects: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, str]]:
    """
    The questions asked about one scene (see the module docstring), each `{"template", "question", "answer"}`.

    Args:
        objects (`Sequence[dict]`): the scene's objects, each with `"colour"` and `"shape"` (as `generate_scene`
            returns them).
        rng (`np.random.Generator`): picks the objects and the absent pair.
    """
    if not objects:
        raise ValueError("`objects` must hold at least one object, got none.")
    questions = []
    unique_shape = [obj for obj in objects if sum(other["shape"] == obj["shape"] for other in objects) == 1]
    if unique_shape:
        obj = unique_shape[rng.integers(len(unique_shape))]
        question = QUESTION_TEMPLATES["colour"].format(shape=obj["shape"])
        questions.append({"template": "colour", "question": question, "answer": obj["colour"]})
    unique_colour = [obj for obj in objects if sum(other["colour"] == obj["colour"] for other in objects) == 1]
    if unique_colour:
        obj = unique_colour[rng.integers(len(unique_colour))]
        question = QUESTION_TEMPLATES["shape"].format(colour=obj["colour"])
        questions.append({"template": "shape", "question": question, "answer": obj["shape"]})
    obj = objects[rng.integers(len(objects))]
    question = QUESTION_TEMPLATES["exists"].format(colour=obj["colour"], shape=obj["shape"])
    questions.append({"template": "exists", "question": question, "answer": "yes"})
    present = {(obj["colour"], obj["shape"]) for obj in objects}
    absent = [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in present]
    if absent:
        colour, shape = absent[rng.integers(len(absent))]
        question = QUESTION_TEMPLATES["exists"].format(colour=colour, shape=shape)
        questions.append({"template": "exists", "question": question, "answer": "no"})
    return questions


def _accuracies(correct: dict[str, list[bool]]) -> dict[str, float]:
    scores = {name: float(np.mean(values)) if values else float("nan") for name, values in correct.items()}
    scores["overall"] = float(np.mean([value for values in correct.values() for value in values]))
    return scores


def evaluate_pnp_vqa(
    vqa: EsamBlipForPnpVqa,
    num_scenes: int = 200,
    seed: int = DEFAULT_VQA_TEST_SEED,
    enhancement: Sequence[str] = ("on", "off"),
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """
    Answer the questions of `num_scenes` fresh synthetic scenes (see the module docstring) with the mask enhancement
    on and/or off, and score the answers.

    Args:
        vqa ([`EsamBlipForPnpVqa`]): the model (e.g. `EsamBlipForPnpVqa.from_pretrained("esam-blip-shapes-vqa")`).
        num_scenes (`int`, defaults to 200): scenes `0 .. num_scenes - 1` of `seed`.
        seed (`int`, defaults to `DEFAULT_VQA_TEST_SEED`): the scenes' seed; also seeds the patch and caption sampling.
        enhancement (`Sequence[str]`, defaults to `("on", "off")`): the settings to run, among `"on"` and `"off"`.
        progress (`bool`, defaults to `True`): show a progress bar.
        settings: [`EsamBlipPnpVqaConfig`] fields for every call (e.g. `num_captions`); `use_mask_enhancement` is set
            by `enhancement`.

    Returns:
        `dict`: `num_scenes`, `seed`, `num_questions` (per template and `"overall"`), and for each setting of
        `enhancement` an entry `"enhancement_on"` / `"enhancement_off"` with the accuracy per template and
        `"overall"`; with both settings, `"enhancement_change"` (on minus off) too. Also `"answers"`: per setting, the
        answers in question order, and `"questions"`: the questions with their template and expected answer.
    """
    if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 1:
        raise ValueError(f"`num_scenes` must be an int >= 1, got {num_scenes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    enhancement = list(dict.fromkeys(enhancement))
    if not enhancement or any(name not in ENHANCEMENT_SETTINGS for name in enhancement):
        raise ValueError(f"`enhancement` must hold 'on' and/or 'off', got {enhancement!r}.")
    if "use_mask_enhancement" in settings:
        raise ValueError("Pass the mask enhancement as `enhancement` ('on' and/or 'off'), not `use_mask_enhancement`.")
    all_questions: list[dict[str, str]] = []
    answers: dict[str, list[str]] = {name: [] for name in enhancement}
    with tqdm(total=num_scenes, desc="PnP-VQA", unit="scene", disable=not progress) as bar:
        for index in range(num_scenes):
            rng = scene_rng(seed, index)
            image, objects = generate_scene(rng)
            questions = scene_questions(objects, rng)
            all_questions.extend(questions)
            texts = [item["question"] for item in questions]
            for name in enhancement:
                torch.manual_seed(seed * 100_003 + index)  # the captioner samples from the global generator
                generator = torch.Generator().manual_seed(seed * 100_003 + index)
                output = vqa(
                    image, texts, generator=generator, use_mask_enhancement=ENHANCEMENT_SETTINGS[name], **settings
                )
                answers[name].extend(answer.strip().lower() for answer in output.answers)
            bar.update()
    results: dict[str, Any] = {
        "num_scenes": num_scenes,
        "seed": seed,
        "num_questions": {
            **{name: sum(item["template"] == name for item in all_questions) for name in QUESTION_TEMPLATES},
            "overall": len(all_questions),
        },
    }
    for name in enhancement:
        correct: dict[str, list[bool]] = {template: [] for template in QUESTION_TEMPLATES}
        for item, answer in zip(all_questions, answers[name]):
            correct[item["template"]].append(answer == item["answer"])
        results[f"enhancement_{name}"] = _accuracies(correct)
    if len(enhancement) == 2:
        on, off = results["enhancement_on"], results["enhancement_off"]
        results["enhancement_change"] = {key: on[key] - off[key] for key in on}
    results["questions"] = all_questions
    results["answers"] = answers
    return results


def format_vqa_table(results: dict[str, Any]) -> str:
    """The Markdown table of [`evaluate_pnp_vqa`]'s results: questions and accuracy per template and overall."""
    settings = [name for name in ENHANCEMENT_SETTINGS if f"enhancement_{name}" in results]
    header = ["question template", "questions", *[f"enhancement {name}" for name in settings]]
    if "enhancement_change" in results:
        header.append("change (on - off)")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for key in [*QUESTION_TEMPLATES, "overall"]:
        label = f"`{QUESTION_TEMPLATES[key]}`" if key in QUESTION_TEMPLATES else "**overall**"
        cells = [label, str(results["num_questions"][key])]
        cells += [f"{results[f'enhancement_{name}'][key]:.3f}" for name in settings]
        if "enhancement_change" in results:
            cells.append(f"{results['enhancement_change'][key]:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the VQA evaluation's arguments to `parser`."""
    parser.add_argument(
        "--model",
        default=DEFAULT_VQA_MODEL,
        help=f"a built-in PnP-VQA model or a folder saved by EsamBlipForPnpVqa.save_pretrained (default "
        f"{DEFAULT_VQA_MODEL})",
    )
    parser.add_argument("--num_scenes", type=int, default=200, help="synthetic scenes (default 200)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_VQA_TEST_SEED, help=f"scenes' seed (default {DEFAULT_VQA_TEST_SEED})"
    )
    parser.add_argument(
        "--enhancement", choices=["both", "on", "off"], default="both", help="mask enhancement setting(s) (both)"
    )
    parser.add_argument("--num_captions", type=int, help="captions per question (default: the model's settings)")
    parser.add_argument("--num_patches", type=int, help="patches per caption (default: the model's settings)")
    parser.add_argument("--json", type=Path, help="also write the results (with every answer) to this JSON file")
    parser.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.evaluation_vqa`."""
    parser = CommandParser(prog="python -m transformers_esam_blip.evaluation_vqa", description=SUMMARY)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the parsed command line says; prints the table and returns the results."""
    if args.num_scenes < 1:
        raise CliError(f"--num_scenes must be >= 1, got {args.num_scenes}")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    for name in ("num_captions", "num_patches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.model not in BUILTIN_PNP_VQA_MODELS and not os.path.isdir(args.model):
        raise CliError(
            f"--model {args.model} is neither a built-in PnP-VQA model ({', '.join(sorted(BUILTIN_PNP_VQA_MODELS))}) "
            "nor a folder saved by EsamBlipForPnpVqa.save_pretrained"
        )
    if args.json is not None and args.json.is_dir():
        raise CliError(f"--json {args.json} is a folder; give a file name")
    settings = {name: getattr(args, name) for name in ("num_captions", "num_patches") if getattr(args, name)}
    vqa = EsamBlipForPnpVqa.from_pretrained(args.model, **settings)
    enhancement = ["on", "off"] if args.enhancement == "both" else [args.enhancement]
    results = evaluate_pnp_vqa(vqa, args.num_scenes, args.seed, enhancement, progress=args.progress)
    print(
        f"{args.model} on {args.num_scenes} synthetic scenes (seed {args.seed}), "
        f"{results['num_questions']['overall']} questions, {vqa.config.num_captions} captions of "
        f"{vqa.config.num_patches} patches per question:"
    )
    print(format_vqa_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the VQA evaluation command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "DEFAULT_VQA_MODEL",
    "DEFAULT_VQA_TEST_SEED",
    "QUESTION_TEMPLATES",
    "SUMMARY",
    "VALID_ANSWERS",
    "add_arguments",
    "build_parser",
    "evaluate_pnp_vqa",
    "format_vqa_table",
    "main",
    "run",
    "scene_questions",
]

if __name__ == "__main__":
    sys.exit(main())
