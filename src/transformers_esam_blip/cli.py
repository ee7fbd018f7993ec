"""The `esam-blip` command: segment, score matches, and every other command of the package under one name.

    esam-blip segment IMAGE --text "a dog" [--text ...] --model DIR_OR_NAME --output out.png [--json out.json]
    esam-blip segment IMAGE --points 120,80 300,200,0 [--box 10,20,200,220] [--mask m.png] --model ... --output o.png
    esam-blip everything IMAGE --model ... --output out.png [--json ...] [--points-per-batch 64] [--pred-iou-thresh 0.88]
    esam-blip itm IMAGE --text "a dog" [--text ...] --model ... [--json out.json]
    esam-blip train --config tiny --dataset synthetic --output_dir out     # python -m transformers_esam_blip.training
    esam-blip evaluate [--model esam-blip-shapes] [--json scores.json]     # python -m transformers_esam_blip.evaluation
    esam-blip demo [--num_scenes 3] [--web [--port 7860]]                  # python -m transformers_esam_blip.demo
    esam-blip annotate IMAGES_OR_DATASET --text "the red circle" --output_dir out   # python -m ....annotate
    esam-blip convert --efficientsam vits.pt --output_dir esam-s           # conversion/convert_esam_blip.py
    esam-blip export MODEL --output DIR [--overwrite] [--opset N]          # ONNX (pip install ".[onnx]")

Errors are one line on stderr (`error: ...`) and exit status 2 (`--debug` shows the traceback instead); results go to
stdout, progress to stderr.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import pipeline
from transformers.image_utils import load_image

from . import annotate as annotate_command  # the module (its `annotate` is the function)
from . import demo, evaluation
from .best_mask import best_mask_indices
from .commands import (
    CliError,
    CommandParser,
    check_writable,
    default_device,
    load_checkpoint_config,
    looks_like_hub_id,
    parse_device,
    resolve_model_argument,
    run_command,
)
from .configuration_esam_blip import EsamBlipConfig
from .conversion import checkpoint as conversion
from .export import MAX_OPSET, MIN_OPSET, export_onnx
from .mask_generator import EsamBlipMaskGenerator
from .modeling_esam_blip import EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation
from .pipelines import PROMPTABLE_TASK
from .processing_esam_blip import EsamBlipProcessor
from .text_prompt_strategies import text_prompt_mode_choices
from .training import arguments as training_arguments
from .training import command as training
from .visualization import draw_masks, draw_panels, draw_text_result, save_png

# Point labels a user may give on the command line (box corners come from --box).
_USER_POINT_LABELS = (0, 1)
# PIL modes of a single-channel mask picture: 8-bit gray (0 and 255, or 0 and 1) and 1-bit.
_MASK_MODES = ("L", "1")


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = None
    if values is None or len(values) not in counts:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """`"x,y"` or `"x,y,label"` (label 1 foreground, 0 background) → `(x, y, label)`."""
    values = _numbers(text, "point (expected x,y or x,y,label with label 1 or 0)", (2, 3))
    label = 1 if len(values) == 2 else values[2]
    if label not in _USER_POINT_LABELS:
        raise argparse.ArgumentTypeError(f"invalid point {text!r}: label must be 1 (foreground) or 0 (background)")
    return values[0], values[1], int(label)


def parse_box(text: str) -> list[float]:
    """`"x1,y1,x2,y2"` → `[x1, y1, x2, y2]` (top-left then bottom-right corner, image pixels)."""
    return _numbers(text, "box (expected x1,y1,x2,y2)", (4,))


def _add_inference_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("image", type=Path, help="image file (any format PIL reads)")
    command.add_argument("--model", required=True, help="checkpoint folder, built-in model name or Hub id")
    command.add_argument("--json", type=Path, help="also write the results to this JSON file")
    command.add_argument(
        "--device", type=parse_device, help="torch device: cpu, cuda, cuda:1, ... (default: the accelerator if any)"
    )


def _add_export_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", help="checkpoint folder or built-in model name")
    command.add_argument("--output", type=Path, required=True, help="folder for the ONNX files")
    command.add_argument("--overwrite", action="store_true", help="replace the files of an existing --output")
    command.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")


def _add_command(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
    examples: str | None = None,
) -> None:
    command = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=None if examples is None else f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(command)
    command.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    summary, examples = __doc__.strip().split("\n\n", 2)[:2]
    parser = CommandParser(
        prog="esam-blip",
        description=summary,
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    segment = commands.add_parser("segment", help="segment what a text describes, or from points and/or a box")
    _add_inference_arguments(segment)
    segment.add_argument("--text", action="append", help="what to segment (repeat for several objects)")
    segment.add_argument(
        "--text-prompt-mode",
        dest="text_prompt_mode",
        choices=text_prompt_mode_choices(),
        help="how texts become prompts: the trained prompter (learned), Grad-CAM points (gradcam), or learned when "
        "the model has a prompter (auto); default: the model's config",
    )
    segment.add_argument(
        "--points", nargs="+", type=parse_point, metavar="X,Y[,LABEL]", help="point prompts in image pixels"
    )
    segment.add_argument("--box", type=parse_box, metavar="X1,Y1,X2,Y2", help="box prompt in image pixels")
    segment.add_argument(
        "--mask",
        type=Path,
        metavar="PNG",
        help="mask prompt: a single-channel PNG of the image's size, white (255) inside and black (0) outside; it "
        "joins the points/box query, or each --text (needs a model with a mask encoder)",
    )
    segment.add_argument("--output", type=Path, required=True, help="PNG picture of the result")
    segment.set_defaults(run=_run_inference)

    everything = commands.add_parser("everything", help="segment everything (automatic mask generation)")
    _add_inference_arguments(everything)
    everything.add_argument("--output", type=Path, required=True, help="PNG picture of all masks")
    everything.add_argument("--points-per-side", type=int, default=32, help="prompt grid points per side")
    everything.add_argument("--points-per-batch", type=int, default=64, help="point prompts per decoder call")
    everything.add_argument("--pred-iou-thresh", type=float, default=0.88, help="minimum predicted IoU of a mask")
    everything.add_argument("--stability-score-thresh", type=float, default=0.95, help="minimum stability score")
    everything.add_argument("--crops-n-layers", type=int, default=0, help="layers of image crops beyond the image")
    everything.add_argument(
        "--grid",
        choices=("full", "coarse-to-fine"),
        default="full",
        help="prompt grid: every point, or coarse to fine (skips points inside masks already found)",
    )
    everything.add_argument("--no-progress", action="store_true", help="hide the progress bar over grid points")
    everything.set_defaults(run=_run_inference)

    itm = commands.add_parser("itm", help="image-text match probability (ITM) and similarity (ITC) per text")
    _add_inference_arguments(itm)
    itm.add_argument("--text", action="append", required=True, help="a text to score (repeat for several)")
    itm.set_defaults(run=_run_inference)

    _add_command(
        commands,
        "annotate",
        "masks for a whole image collection, over processes (python -m transformers_esam_blip.annotate)",
        annotate_command.SUMMARY,
        annotate_command.add_arguments,
        annotate_command.run,
        annotate_command.EXAMPLES,
    )
    _add_command(
        commands,
        "train",
        "train or fine-tune a model (python -m transformers_esam_blip.training)",
        training_arguments.SUMMARY,
        training_arguments.add_arguments,
        training.run,
        training_arguments.EXAMPLES,
    )
    _add_command(
        commands,
        "evaluate",
        "score referring segmentation (python -m transformers_esam_blip.evaluation)",
        evaluation.SUMMARY,
        evaluation.add_arguments,
        evaluation.run,
    )
    _add_command(
        commands,
        "demo",
        "the built-in model on fresh scenes (python -m transformers_esam_blip.demo)",
        demo.SUMMARY,
        demo.add_arguments,
        demo.run,
    )
    _add_command(
        commands,
        "convert",
        "convert original checkpoints (conversion/convert_esam_blip.py)",
        conversion.SUMMARY,
        conversion.add_arguments,
        conversion.run,
    )
    _add_command(
        commands,
        "export",
        "export a model to ONNX (needs the onnx extra)",
        "Export an EsamBlip model (folder or built-in name) to ONNX files.",
        _add_export_arguments,
        run_export,
    )
    return parser


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_image(path: Path) -> PIL.Image.Image:
    if not path.exists():
        raise CliError(f"image {path} does not exist")
    if not path.is_file():
        raise CliError(f"image {path} is not a file")
    try:
        return load_image(str(path))
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise CliError(f"{path} is not a readable image ({error})") from error


def load_mask(path: Path, image: PIL.Image.Image) -> np.ndarray:
    """
    `--mask PNG` as a binary `[H, W]` array of the image's size: a single-channel picture (mode L or 1) holding only
    0 and 255 (or 0 and 1). Raises a [`CliError`] starting with `--mask:` otherwise.
    """
    if not path.is_file():
        raise CliError(f"--mask: {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with PIL.Image.open(path) as picture:
            picture.load()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise CliError(f"--mask: {path} is not a readable image ({error})") from error
    if picture.mode not in _MASK_MODES:
        channels = "+".join(picture.getbands())
        raise CliError(
            f"--mask: {path} has mode {picture.mode} ({channels}); a mask must be single-channel, mode L (0 and 255) "
            "or 1: save it as 8-bit grayscale"
        )
    if picture.size != image.size:
        raise CliError(
            f"--mask: {path} is {picture.width}x{picture.height} pixels but the image is {image.width}x{image.height}; "
            "draw the mask at the image's size"
        )
    values = np.asarray(picture)
    found = np.unique(values)
    if not (set(found.tolist()) <= {0, 255} or set(found.tolist()) <= {0, 1}):
        shown = ", ".join(str(value) for value in found[:6]) + (", ..." if len(found) > 6 else "")
        raise CliError(
            f"--mask: {path} is not binary: it holds the values {{{shown}}}; a mask holds only 0 (outside) and 255 "
            "(inside), or 0 and 1"
        )
    return values


def _require_part(config: EsamBlipConfig, model: str, blip: bool, what: str) -> None:
    if blip and not config.has_blip:
        raise CliError(f"{what} needs the BLIP half, but --model {model} is segmentation-only (convert it with --blip)")
    if not blip and not config.has_segmentation:
        raise CliError(
            f"{what} needs the EfficientSAM half, but --model {model} is matching-only (convert it with --efficientsam)"
        )


def _device(device: torch.device | None) -> torch.device:
    return device if device is not None else default_device()


def _check_png(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise CliError(f"--output {path} must end in .png (the picture is written as PNG)")


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        _progress(f"Wrote {path}")


def _save_picture(path: Path, picture: PIL.Image.Image) -> None:
    _progress(f"Wrote {save_png(path, picture)}")


def _stack_rows(pictures: list[PIL.Image.Image]) -> PIL.Image.Image:
    """Pictures of equal width one above the other."""
    canvas = PIL.Image.new("RGB", (pictures[0].width, sum(p.height for p in pictures)), (255, 255, 255))
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def _image_size(image: PIL.Image.Image) -> dict[str, int]:
    return {"width": image.width, "height": image.height}


def segment_text(args: argparse.Namespace, image: PIL.Image.Image, mask: np.ndarray | None) -> dict[str, Any]:
    """
    Text mode: the promptable pipeline with the texts (and the `--mask` for each); one picture row (mask | heatmap,
    with points and scores) per text.
    """
    _progress(f"Loading {args.model} ...")
    segmenter = pipeline(PROMPTABLE_TASK, model=args.model, device=_device(args.device))
    results = segmenter(
        image,
        text=args.text,
        input_masks=None if mask is None else [mask],
        text_prompt_mode=args.text_prompt_mode,
    )
    rows, summary = [], []
    for result in results:
        verdict = "match" if result["is_match"] else "probably absent"
        if result["unknown_words"]:
            verdict = f"unknown: {', '.join(result['unknown_words'])}"
        title = f"{result['text']!r}: ITM {result['match_probability']:.2f} ({verdict}), predicted IoU {result['score']:.2f}"
        if result["heatmap"] is None:  # learned text prompts: no heatmap, no points
            rows.append(draw_panels([draw_masks(image, result["mask"], absent=not result["is_match"])], [title]))
        else:
            rows.append(
                draw_text_result(
                    image,
                    result["mask"],
                    result["heatmap"],
                    result["points"],
                    result["point_labels"],
                    title=title,
                    absent=not result["is_match"],
                )
            )
        area = int(result["mask"].sum())
        print(f"{title}, mask {area} px")
        summary.append(
            {
                "text": result["text"],
                "score": result["score"],
                "match_probability": result["match_probability"],
                "is_match": result["is_match"],
                "unknown_words": result["unknown_words"],
                "mask_area": area,
                "points": result["points"],
                "point_labels": result["point_labels"],
            }
        )
    _save_picture(args.output, _stack_rows(rows))
    return {
        "mode": "text",
        "image_size": _image_size(image),
        "mask_prompt": None if args.mask is None else str(args.mask),
        "results": summary,
    }


def segment_prompts(args: argparse.Namespace, image: PIL.Image.Image, mask: np.ndarray | None) -> dict[str, Any]:
    """
    Point/box mode: one query from all points, the box and the `--mask`; the best of the 3 candidates by predicted
    IoU.
    """
    device = _device(args.device)
    _progress(f"Loading {args.model} ...")
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.model).to(device).eval()
    processor = EsamBlipProcessor.from_pretrained(args.model)
    points = [[x, y] for x, y, _ in args.points] if args.points else None
    labels = [label for _, _, label in args.points] if args.points else None
    inputs = processor(
        images=image,
        input_points=None if points is None else [[points]],
        input_labels=None if labels is None else [[labels]],
        input_boxes=None if args.box is None else [[args.box]],
        input_masks=None if mask is None else [[mask]],
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = model(**inputs.to(device=device, dtype=model.dtype))
    scores = out.iou_scores[0, 0].cpu()
    best = int(best_mask_indices(scores))
    mask = processor.post_process_masks(out.pred_masks[:, :, best : best + 1].cpu(), inputs["original_sizes"])[0][0, 0]
    area = int(mask.sum())
    print(f"best of {len(scores)} candidates: #{best}, predicted IoU {scores[best].item():.2f}, mask {area} px")
    picture = draw_masks(image, mask, points=points, labels=labels, boxes=None if args.box is None else [args.box])
    _save_picture(args.output, picture)
    return {
        "mode": "prompts",
        "image_size": _image_size(image),
        "points": points,
        "point_labels": labels,
        "box": args.box,
        "mask_prompt": None if args.mask is None else str(args.mask),
        "best_candidate": best,
        "score": scores[best].item(),
        "scores": scores.tolist(),
        "mask_area": area,
    }


def run_segment(args: argparse.Namespace) -> dict[str, Any]:
    if args.text and (args.points or args.box):
        raise CliError("give either --text or --points/--box, not both")
    if not args.text and not args.points and args.box is None:
        raise CliError("give what to segment: --text, --points and/or --box (a --mask joins one of them)")
    _check_png(args.output)
    image = _load_image(args.image)
    config = load_checkpoint_config(args.model)
    _require_part(config, args.model, blip=False, what="segment")
    if args.text:
        _require_part(config, args.model, blip=True, what="segment --text")
    mask = None
    if args.mask is not None:
        if not config.prompt_encoder_config.mask_prompts:
            raise CliError(
                f"--mask: --model {args.model} has no mask encoder (prompt_encoder_config.mask_prompts is False), so "
                "it cannot take mask prompts; use a model trained with them"
            )
        mask = load_mask(args.mask, image)
    if args.text:
        return segment_text(args, image, mask)
    return segment_prompts(args, image, mask)


def run_everything(args: argparse.Namespace) -> dict[str, Any]:
    """
    All masks of the image: `EsamBlipMaskGenerator` (encode once, batched decoding, a full or coarse-to-fine grid),
    or `pipeline("mask-generation")` with crops; largest drawn first so small ones stay visible.
    """
    _check_png(args.output)
    for name in ("points_per_side", "points_per_batch"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    image = _load_image(args.image)
    config = load_checkpoint_config(args.model)
    _require_part(config, args.model, blip=False, what="everything")
    _progress(f"Loading {args.model} ...")
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.model).eval()
    processor = EsamBlipProcessor.from_pretrained(args.model)
    if args.grid == "coarse-to-fine" and args.crops_n_layers:
        raise CliError("--grid coarse-to-fine works on the whole image; drop --crops-n-layers")
    if args.crops_n_layers:
        generator = pipeline(
            "mask-generation", model=model, image_processor=processor.image_processor, device=_device(args.device)
        )
        out = generator(
            image,
            points_per_crop=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            crops_n_layers=args.crops_n_layers,
            output_bboxes_mask=True,
        )
    else:
        generator = EsamBlipMaskGenerator(
            model.to(_device(args.device)),
            processor.image_processor,
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            grid=args.grid.replace("-", "_"),
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            progress=False if args.no_progress else None,
        )
        out = generator(image)
    masks = [torch.as_tensor(mask).bool() for mask in out["masks"]]
    order = sorted(range(len(masks)), key=lambda index: -int(masks[index].sum()))
    stacked = (
        torch.stack([masks[i] for i in order])
        if masks
        else torch.zeros((0, image.height, image.width), dtype=torch.bool)
    )
    _save_picture(args.output, draw_masks(image, stacked))
    print(f"{len(masks)} masks")
    return {
        "mode": "everything",
        "image_size": _image_size(image),
        "masks": [
            {
                "score": float(out["scores"][i]),
                "area": int(masks[i].sum()),
                "box": torch.as_tensor(out["bounding_boxes"][i]).tolist(),
            }
            for i in order
        ],
    }


def run_itm(args: argparse.Namespace) -> dict[str, Any]:
    """ITM match probability (pairs) and ITC cosine similarity of the image with each text; the image is encoded once."""
    image = _load_image(args.image)
    config = load_checkpoint_config(args.model)
    _require_part(config, args.model, blip=True, what="itm")
    device = _device(args.device)
    _progress(f"Loading {args.model} ...")
    model = EsamBlipForImageTextMatching.from_pretrained(args.model).to(device).eval()
    processor = EsamBlipProcessor.from_pretrained(args.model)
    inputs = processor(images=image, text=args.text, return_tensors="pt").to(device=device, dtype=model.dtype)
    with torch.inference_mode():
        image_embeds = model.get_image_features(inputs["blip_pixel_values"]).last_hidden_state
        # A checkpoint with `itm_fusion` matches with the EfficientSAM features too.
        sam_embeddings = model.model.get_image_embeddings(inputs["pixel_values"]) if config.itm_fusion else None
        texts = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        itm = model(**texts, image_embeds=image_embeds, image_embeddings=sam_embeddings, use_itm_head=True)
        match = itm.itm_score.softmax(dim=-1)[:, 1]
        similarity = model(**texts, image_embeds=image_embeds, use_itm_head=False).itm_score[0]
    results = []
    print("ITM match  ITC similarity  text")
    for text, probability, cosine in zip(args.text, match.tolist(), similarity.tolist()):
        print(f"{probability:9.3f}  {cosine:+14.3f}  {text}")
        results.append({"text": text, "match_probability": probability, "itc_similarity": cosine})
    return {"mode": "itm", "image_size": _image_size(image), "results": results}


def run_export(args: argparse.Namespace) -> None:
    """ONNX files of `args.model` in `args.output`, one line per file written."""
    model = resolve_model_argument(args.model, argument="MODEL")
    load_checkpoint_config(model, argument="MODEL")
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"--output {args.output} is a file; give a folder")
    if args.output.is_dir() and any(args.output.iterdir()) and not args.overwrite:
        raise CliError(f"--output {args.output} is not empty; pass --overwrite to replace its contents")
    if args.opset is not None and not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise CliError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {args.opset}")
    _progress(f"Exporting {args.model} to {args.output} ...")
    try:
        written = export_onnx(model, args.output, overwrite=args.overwrite, opset_version=args.opset)
    except ImportError as error:  # onnx and onnxruntime are an optional extra
        raise CliError(f"export needs ONNX: pip install 'transformers-esam-blip[onnx]' ({error})") from error
    for name, path in written.items():
        print(f"{name}: {path}")


INFERENCE_COMMANDS = {"segment": run_segment, "everything": run_everything, "itm": run_itm}


def _run_inference(args: argparse.Namespace) -> None:
    # Outputs are checked before the model runs, so an unwritable path does not cost a whole run.
    for name in ("output", "json"):
        if getattr(args, name, None) is not None:
            check_writable(getattr(args, name), f"--{name}")
    args.model = resolve_model_argument(args.model)  # a built-in model's name → its folder
    _write_json(args.json, INFERENCE_COMMANDS[args.command](args))


def _run(args: argparse.Namespace) -> None:
    args.run(args)  # the sub-command's own runner (set by `set_defaults`)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `esam-blip` command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), _run, argv)


__all__ = [
    "CliError",
    "CommandParser",
    "build_parser",
    "load_checkpoint_config",
    "load_mask",
    "looks_like_hub_id",
    "main",
    "parse_box",
    "parse_point",
    "run_command",
    "run_export",
]

if __name__ == "__main__":
    sys.exit(main())
