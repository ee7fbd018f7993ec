"""Evaluate referring segmentation at the images' own resolution: masks, match probabilities, the package's metric.

    python -m transformers_esam_blip.evaluation                      # esam-blip-shapes on 500 fresh synthetic scenes
    python -m transformers_esam_blip.evaluation --model DIR --dataset my_data --dataset_split test --json scores.json

Every image is encoded once for all its expressions (consecutive rows with the same `scene_id`, or the same image,
form a group). Each expression's best candidate (highest predicted IoU) is resized bicubically to the image size and
thresholded at 0, as `post_process_masks` does; `mean_iou` etc. are computed over the expressions whose object is
present (match label 1), `itm_roc_auc` ranks present against absent expressions by the ITM match probability.
"""

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .builtin import DEFAULT_BUILTIN_MODEL
from .commands import CliError, CommandParser, load_checkpoint_config, run_command
from .data import load_referring_dataset, mask_to_bool, synthetic_referring_dataset
from .evaluation_prompts import evaluate_prompt_types, format_prompt_type_table
from .metrics import best_masks, compute_referring_metrics, mask_ious, roc_auc
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor
from .text_prompt_strategies import text_prompt_mode_choices

SUMMARY = __doc__.split("\n", 1)[0]
# Seed of the README's test scenes: the training command draws its scenes with seeds 0 (training) and 1 (evaluation).
DEFAULT_TEST_SEED = 2026


def _groups(dataset: datasets.Dataset, max_texts: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows of one image (same `scene_id` if the column exists), at most `max_texts` per group."""
    group: list[dict[str, Any]] = []
    key = None
    for row in dataset:
        row_key = row["scene_id"] if "scene_id" in row else id(row)
        if group and (row_key != key or len(group) == max_texts):
            yield group
            group = []
        group.append(row)
        key = row_key
    if group:
        yield group


@torch.inference_mode()
def predict_referring(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    image: Any,
    texts: list[str],
    text_prompt_mode: str = "learned",
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Masks and match probabilities of `texts` on one image (encoded once).

    Returns:
        `(masks, match_probabilities)`: `[T, H, W]` bool at the image's size and `[T]` floats.
    """
    inputs = processor(images=image, text=texts, return_tensors="pt")
    height, width = (int(v) for v in inputs.pop("original_sizes")[0])
    inputs.pop("reshaped_input_sizes", None)
    inputs = inputs.to(model.device)
    outputs = model(**inputs, text_prompt_mode=text_prompt_mode)
    masks = best_masks(outputs.pred_masks.float().cpu(), outputs.iou_scores.float().cpu(), size=(height, width))
    return masks, outputs.itm_probability.float().cpu()


def evaluate_referring_segmentation(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    dataset: datasets.Dataset,
    text_prompt_mode: str = "learned",
    max_texts_per_call: int = 32,
    progress: bool = True,
    breakdown: bool = False,
) -> dict[str, float]:
    """
    Segment every row of a referring dataset (columns `image`, `text`, `mask`, `match_label`) and score it with
    [`compute_referring_metrics`] at the images' resolution.

    Args:
        model, processor: a model with both halves (a learned prompter for `text_prompt_mode="learned"`).
        dataset (`datasets.Dataset`): e.g. [`synthetic_referring_dataset`] or [`load_referring_dataset`].
        text_prompt_mode (`str`, defaults to `"learned"`): `"learned"` or `"gradcam"`.
        max_texts_per_call (`int`, defaults to 32): expressions of one image segmented in one forward pass.
        progress (`bool`, defaults to True): show a progress bar.
        breakdown (`bool`, defaults to False): add the scores of [`synthetic_breakdown`] (needs the `scene_id`,
            `colour` and `shape` columns of [`synthetic_referring_dataset`]).

    Returns:
        `dict[str, float]`: `mean_iou`, `cumulative_iou`, `precision@0.5/0.7/0.9` (present expressions),
        `itm_accuracy`, `itm_roc_auc`, and `num_present`, `num_absent`; with `breakdown`, the keys of
        [`synthetic_breakdown`] too.
    """
    if text_prompt_mode not in text_prompt_mode_choices():
        raise ValueError(f"`text_prompt_mode` must be one of {text_prompt_mode_choices()}, got {text_prompt_mode!r}.")
    missing = [name for name in ("image", "text", "mask") if name not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}.")
    if max_texts_per_call < 1:
        raise ValueError(f"`max_texts_per_call` must be >= 1, got {max_texts_per_call}.")
    if breakdown:
        _check_breakdown_columns(dataset)
    model.eval()
    predictions, targets, probabilities, labels = [], [], [], []
    with tqdm(total=len(dataset), desc="Evaluating", unit="expr", disable=not progress) as bar:
        for group in _groups(dataset, max_texts_per_call):
            masks, probs = predict_referring(
                model, processor, group[0]["image"], [row["text"] for row in group], text_prompt_mode
            )
            for row, mask, prob in zip(group, masks, probs):
                target = mask_to_bool(row["mask"])
                predictions.append(mask.numpy())
                targets.append(target)
                probabilities.append(float(prob))
                labels.append(int(row["match_label"]) if row.get("match_label") is not None else int(target.any()))
            bar.update(len(group))
    results = compute_referring_metrics(predictions, targets, np.array(probabilities), np.array(labels))
    results["num_present"] = int(sum(labels))
    results["num_absent"] = len(labels) - int(sum(labels))
    if breakdown:
        results.update(synthetic_breakdown(dataset, mask_ious(predictions, targets).tolist(), probabilities))
    return results


_BREAKDOWN_COLUMNS = ("scene_id", "colour", "shape", "match_label")


def _check_breakdown_columns(dataset: datasets.Dataset) -> None:
    missing = [name for name in _BREAKDOWN_COLUMNS if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The breakdown needs the columns {list(_BREAKDOWN_COLUMNS)} of synthetic_referring_dataset; the dataset "
            f"lacks {missing}."
        )


def synthetic_breakdown(
    dataset: datasets.Dataset, ious: Sequence[float], match_probabilities: Sequence[float]
) -> dict[str, float]:
    """
    Where a model fails on the synthetic task: mIoU by whether another object of the scene shares the referred
    object's colour or shape, and ITM ROC-AUC of all present expressions against each kind of absent expression.

    Args:
        dataset (`datasets.Dataset`): rows of [`synthetic_referring_dataset`] (columns `scene_id`, `colour`, `shape`,
            `match_label`); a scene's objects are its present rows, so pass whole scenes.
        ious (`Sequence[float]`): one IoU per row (read for present rows only).
        match_probabilities (`Sequence[float]`): one match probability per row.

    Returns:
        `dict[str, float]` (NaN where a group is empty; the `num_*` counts are ints):
        - `mean_iou_distinct`: present objects whose colour and shape are both unique in the scene;
        - `mean_iou_same_colour` / `mean_iou_same_shape`: another object of the scene has the same colour / shape
          (an object can be in both groups);
        - `itm_roc_auc_colour_absent`: absent expressions whose colour is in no object of the scene;
        - `itm_roc_auc_shape_absent`: the colour is in the scene, the shape is not;
        - `itm_roc_auc_both_present`: the colour and the shape are in the scene, on different objects.
    """
    _check_breakdown_columns(dataset)
    columns = {name: dataset[name] for name in _BREAKDOWN_COLUMNS}
    if not len(ious) == len(match_probabilities) == len(dataset):
        raise ValueError(
            f"`ious` ({len(ious)}) and `match_probabilities` ({len(match_probabilities)}) need one value per row of "
            f"the dataset ({len(dataset)})."
        )
    objects: dict[int, list[tuple[str, str]]] = {}
    for scene, colour, shape, label in zip(*columns.values()):
        if label == 1:
            objects.setdefault(scene, []).append((colour, shape))
    iou_groups: dict[str, list[float]] = {"distinct": [], "same_colour": [], "same_shape": []}
    negative_groups: dict[str, list[float]] = {"colour_absent": [], "shape_absent": [], "both_present": []}
    positives = []
    for index, (scene, colour, shape, label) in enumerate(zip(*columns.values())):
        scene_objects = objects.get(scene, [])
        colours = [c for c, _ in scene_objects]
        shapes = [s for _, s in scene_objects]
        if label == 1:
            positives.append(match_probabilities[index])
            same_colour, same_shape = colours.count(colour) > 1, shapes.count(shape) > 1
            if same_colour:
                iou_groups["same_colour"].append(ious[index])
            if same_shape:
                iou_groups["same_shape"].append(ious[index])
            if not (same_colour or same_shape):
                iou_groups["distinct"].append(ious[index])
        else:
            kind = (
                "colour_absent" if colour not in colours else "shape_absent" if shape not in shapes else "both_present"
            )
            negative_groups[kind].append(match_probabilities[index])
    results: dict[str, float] = {}
    for name, values in iou_groups.items():
        results[f"mean_iou_{name}"] = float(np.mean(values)) if values else float("nan")
        results[f"num_{name}"] = len(values)
    for name, negatives in negative_groups.items():
        scores = np.array(positives + negatives, dtype=float)
        labels = np.array([1] * len(positives) + [0] * len(negatives))
        results[f"itm_roc_auc_{name}"] = roc_auc(scores, labels)  # NaN when a side is empty
        results[f"num_{name}"] = len(negatives)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluation command's arguments to `parser` (the `python -m` command's, or `esam-blip evaluate`'s)."""
    parser.add_argument(
        "--model", default=DEFAULT_BUILTIN_MODEL, help=f"name, folder or Hub id (default {DEFAULT_BUILTIN_MODEL})"
    )
    parser.add_argument("--dataset", default="synthetic", help="'synthetic' (default) or a folder / Hub dataset id")
    parser.add_argument("--dataset_split", help="split of --dataset (needed when it has several)")
    parser.add_argument("--num_scenes", type=int, default=500, help="synthetic scenes (default 500)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_TEST_SEED, help=f"synthetic seed (default {DEFAULT_TEST_SEED})"
    )
    parser.add_argument("--absent_fraction", type=float, default=0.25, help="synthetic absent expressions (0.25)")
    parser.add_argument("--text_prompt_mode", choices=text_prompt_mode_choices(), default="learned")
    parser.add_argument("--cache_dir", help="`datasets` cache folder")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="synthetic data: mIoU and ITM ROC-AUC by kind of confusion, and the per-prompt-type table (points, box, "
        "text, Grad-CAM text, mask refinement, everything mode) against the built-in model's goals",
    )
    parser.add_argument(
        "--gradcam_scenes", type=int, default=100, help="with --breakdown: scenes for the Grad-CAM text mode (100)"
    )
    parser.add_argument(
        "--everything_scenes", type=int, default=100, help="with --breakdown: scenes for everything mode (100)"
    )
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.evaluation`."""
    parser = CommandParser(prog="python -m transformers_esam_blip.evaluation", description=SUMMARY)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    """Evaluate as the parsed command line says (`python -m transformers_esam_blip.evaluation` / `esam-blip evaluate`)."""
    if args.num_scenes < 1:
        raise CliError(f"--num_scenes must be >= 1, got {args.num_scenes}")
    if not 0 <= args.absent_fraction < 1:
        raise CliError(f"--absent_fraction must lie in [0, 1), got {args.absent_fraction}")
    for name in ("gradcam_scenes", "everything_scenes"):
        if getattr(args, name) < 0:
            raise CliError(f"--{name} must be >= 0, got {getattr(args, name)}")
    load_checkpoint_config(args.model)
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.model)
    processor = EsamBlipProcessor.from_pretrained(args.model)
    if args.dataset == "synthetic":
        dataset = synthetic_referring_dataset(
            args.num_scenes, seed=args.seed, absent_fraction=args.absent_fraction, cache_dir=args.cache_dir
        )
    else:
        dataset = load_referring_dataset(args.dataset, split=args.dataset_split, cache_dir=args.cache_dir)
    results = evaluate_referring_segmentation(
        model, processor, dataset, args.text_prompt_mode, breakdown=args.breakdown
    )
    print(f"{args.model} on {args.dataset} ({len(dataset)} expressions, text_prompt_mode={args.text_prompt_mode}):")
    for name, value in results.items():
        print(f"  {name:<26} {value:.4f}" if isinstance(value, float) else f"  {name:<26} {value}")
    if args.breakdown:
        prompt_types = evaluate_prompt_types(
            model,
            processor,
            dataset,
            seed=args.seed,
            gradcam_scenes=args.gradcam_scenes,
            everything_scenes=args.everything_scenes,
        )
        print(f"Per prompt type ({prompt_types['num_objects']} objects; see evaluation_prompts for the protocol):")
        print(format_prompt_type_table(prompt_types))
        results["prompt_types"] = prompt_types
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "DEFAULT_TEST_SEED",
    "SUMMARY",
    "add_arguments",
    "build_parser",
    "evaluate_referring_segmentation",
    "main",
    "predict_referring",
    "run",
    "synthetic_breakdown",
]

if __name__ == "__main__":
    sys.exit(main())
