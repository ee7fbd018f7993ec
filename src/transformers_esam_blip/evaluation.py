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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .builtin import DEFAULT_BUILTIN_MODEL
from .data import load_referring_dataset, mask_to_bool, synthetic_referring_dataset
from .metrics import best_masks, compute_referring_metrics
from .modeling_esam_blip import TEXT_PROMPT_MODES, EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor

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

    Returns:
        `dict[str, float]`: `mean_iou`, `cumulative_iou`, `precision@0.5/0.7/0.9` (present expressions),
        `itm_accuracy`, `itm_roc_auc`, and `num_present`, `num_absent`.
    """
    if text_prompt_mode not in TEXT_PROMPT_MODES:
        raise ValueError(f"`text_prompt_mode` must be one of {TEXT_PROMPT_MODES}, got {text_prompt_mode!r}.")
    missing = [name for name in ("image", "text", "mask") if name not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}.")
    if max_texts_per_call < 1:
        raise ValueError(f"`max_texts_per_call` must be >= 1, got {max_texts_per_call}.")
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
    return results


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n", 1)[0]
    parser = argparse.ArgumentParser(prog="python -m transformers_esam_blip.evaluation", description=summary)
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
    parser.add_argument("--text_prompt_mode", choices=TEXT_PROMPT_MODES, default="learned")
    parser.add_argument("--cache_dir", help="`datasets` cache folder")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_scenes < 1:
        print(f"error: --num_scenes must be >= 1, got {args.num_scenes}", file=sys.stderr)
        return 2
    try:
        model = EsamBlipForPromptableSegmentation.from_pretrained(args.model)
        processor = EsamBlipProcessor.from_pretrained(args.model)
        if args.dataset == "synthetic":
            dataset = synthetic_referring_dataset(
                args.num_scenes, seed=args.seed, absent_fraction=args.absent_fraction, cache_dir=args.cache_dir
            )
        else:
            dataset = load_referring_dataset(args.dataset, split=args.dataset_split, cache_dir=args.cache_dir)
        results = evaluate_referring_segmentation(model, processor, dataset, args.text_prompt_mode)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.model} on {args.dataset} ({len(dataset)} expressions, text_prompt_mode={args.text_prompt_mode}):")
    for name, value in results.items():
        print(f"  {name:<16} {value:.4f}" if isinstance(value, float) else f"  {name:<16} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["DEFAULT_TEST_SEED", "evaluate_referring_segmentation", "predict_referring"]

if __name__ == "__main__":
    sys.exit(main())
