"""The `esam-blip` command: segment an image from text, points or a box, segment everything, score image-text matches.

    esam-blip segment IMAGE --text "a dog" [--text ...] --model DIR_OR_REPO --output out.png [--json out.json]
    esam-blip segment IMAGE --points 120,80 300,200,0 [--box 10,20,200,220] --model ... --output out.png
    esam-blip everything IMAGE --model ... --output out.png [--json ...] [--points-per-batch 64] [--pred-iou-thresh 0.88]
    esam-blip itm IMAGE --text "a dog" [--text ...] --model ... [--json out.json]

Errors are one line on stderr (`error: ...`) and exit status 2; results go to stdout, progress to stderr.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import PIL.Image
import torch
from transformers import pipeline
from transformers.image_utils import load_image

from .builtin import resolve_pretrained_name
from .configuration_esam_blip import EsamBlipConfig
from .modeling_esam_blip import EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation
from .pipelines import TASK
from .processing_esam_blip import EsamBlipProcessor
from .visualization import draw_masks, draw_panels, draw_text_result, save_png

EXIT_ERROR = 2
# Point labels a user may give on the command line (box corners come from --box).
_USER_POINT_LABELS = (0, 1)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class CliError(Exception):
    """A problem with the command line or its inputs, reported as one `error: ...` line."""


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors raise [`CliError`] (one line, a status) instead of exiting the interpreter."""

    # argparse prints the usage and exits; the CLI reports one line and returns a status instead, so `main()` can be
    # called in-process.
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


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


def build_parser() -> argparse.ArgumentParser:
    summary, examples = __doc__.split("\n", 1)
    parser = CommandParser(
        prog="esam-blip",
        description=summary,
        epilog=f"examples:\n{examples.lstrip()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    def add_common(command: argparse.ArgumentParser) -> None:
        command.add_argument("image", type=Path, help="image file (any format PIL reads)")
        command.add_argument("--model", required=True, help="converted checkpoint folder or Hub id")
        command.add_argument("--json", type=Path, help="also write the results to this JSON file")
        command.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    segment = commands.add_parser("segment", help="segment what a text describes, or from points and/or a box")
    add_common(segment)
    segment.add_argument("--text", action="append", help="what to segment (repeat for several objects)")
    segment.add_argument(
        "--text-prompt-mode",
        dest="text_prompt_mode",
        choices=("auto", "learned", "gradcam"),
        default="auto",
        help="how texts become prompts: the trained prompter (learned), Grad-CAM points (gradcam), or learned when "
        "the model has a prompter (auto, default)",
    )
    segment.add_argument(
        "--points", nargs="+", type=parse_point, metavar="X,Y[,LABEL]", help="point prompts in image pixels"
    )
    segment.add_argument("--box", type=parse_box, metavar="X1,Y1,X2,Y2", help="box prompt in image pixels")
    segment.add_argument("--output", type=Path, required=True, help="PNG picture of the result")

    everything = commands.add_parser("everything", help="segment everything (automatic mask generation)")
    add_common(everything)
    everything.add_argument("--output", type=Path, required=True, help="PNG picture of all masks")
    everything.add_argument("--points-per-side", type=int, default=32, help="prompt grid points per side")
    everything.add_argument("--points-per-batch", type=int, default=64, help="point prompts per decoder call")
    everything.add_argument("--pred-iou-thresh", type=float, default=0.88, help="minimum predicted IoU of a mask")
    everything.add_argument("--stability-score-thresh", type=float, default=0.95, help="minimum stability score")
    everything.add_argument("--crops-n-layers", type=int, default=0, help="layers of image crops beyond the image")

    itm = commands.add_parser("itm", help="image-text match probability (ITM) and similarity (ITC) per text")
    add_common(itm)
    itm.add_argument("--text", action="append", required=True, help="a text to score (repeat for several)")
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


def looks_like_hub_id(model: str) -> bool:
    """`name` or `owner/name`, as the Hub spells repositories; anything else can only be a local path."""
    return _HUB_ID.fullmatch(model) is not None


def load_checkpoint_config(model: str) -> EsamBlipConfig:
    """The `EsamBlipConfig` of `--model` (built-in name, folder or Hub id), or a [`CliError`] saying what is wrong."""
    model = str(resolve_pretrained_name(model))  # a built-in model's name → its folder
    path = Path(model)
    if path.exists() and not path.is_dir():
        raise CliError(f"--model {model} is a file; give the converted checkpoint folder")
    if not path.exists() and not looks_like_hub_id(model):
        raise CliError(f"--model {model} does not exist")
    try:
        config_dict, _ = EsamBlipConfig.get_config_dict(model)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load --model {model}: {error}") from error
    # A folder without config.json gives an empty dict rather than an error.
    if config_dict.get("model_type") != EsamBlipConfig.model_type:
        found = f"model_type {config_dict['model_type']!r}" if "model_type" in config_dict else "no config.json"
        raise CliError(
            f"--model {model} is not an EsamBlip checkpoint ({found}); convert one with conversion/convert_esam_blip.py"
        )
    return EsamBlipConfig.from_dict(config_dict)


def _require_part(config: EsamBlipConfig, model: str, blip: bool, what: str) -> None:
    if blip and not config.has_blip:
        raise CliError(f"{what} needs the BLIP half, but --model {model} is segmentation-only (convert it with --blip)")
    if not blip and not config.has_segmentation:
        raise CliError(
            f"{what} needs the EfficientSAM half, but --model {model} is matching-only (convert it with --efficientsam)"
        )


def _device(name: str | None) -> torch.device:
    return torch.device(name if name is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


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


def segment_text(args: argparse.Namespace, image: PIL.Image.Image) -> dict[str, Any]:
    """Text mode: the text pipeline; one picture row (mask | heatmap, with points and scores) per text."""
    _progress(f"Loading {args.model} ...")
    segmenter = pipeline(TASK, model=args.model, device=_device(args.device))
    results = segmenter(image, args.text, text_prompt_mode=args.text_prompt_mode)
    rows, summary = [], []
    for result in results:
        verdict = "match" if result["is_match"] else "probably absent"
        title = f"{result['text']!r}: ITM {result['match_probability']:.2f} ({verdict}), predicted IoU {result['score']:.2f}"
        if result["heatmap"] is None:  # learned text prompts: no heatmap, no points
            rows.append(draw_panels([draw_masks(image, result["mask"])], [title]))
        else:
            rows.append(
                draw_text_result(
                    image, result["mask"], result["heatmap"], result["points"], result["point_labels"], title=title
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
                "mask_area": area,
                "points": result["points"],
                "point_labels": result["point_labels"],
            }
        )
    _save_picture(args.output, _stack_rows(rows))
    return {"mode": "text", "image_size": _image_size(image), "results": summary}


def segment_prompts(args: argparse.Namespace, image: PIL.Image.Image) -> dict[str, Any]:
    """Point/box mode: one query from all points and the box; the best of the 3 candidates by predicted IoU."""
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
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = model(**inputs.to(device=device, dtype=model.dtype))
    scores = out.iou_scores[0, 0].cpu()
    best = int(scores.argmax())
    mask = processor.post_process_masks(out.pred_masks[:, :, best : best + 1].cpu(), inputs["original_sizes"])[0][0, 0]
    area = int(mask.sum())
    print(f"best of {len(scores)} candidates: #{best}, predicted IoU {scores[best].item():.3f}, mask {area} px")
    picture = draw_masks(image, mask, points=points, labels=labels, boxes=None if args.box is None else [args.box])
    _save_picture(args.output, picture)
    return {
        "mode": "prompts",
        "image_size": _image_size(image),
        "points": points,
        "point_labels": labels,
        "box": args.box,
        "best_candidate": best,
        "score": scores[best].item(),
        "scores": scores.tolist(),
        "mask_area": area,
    }


def run_segment(args: argparse.Namespace) -> dict[str, Any]:
    if args.text and (args.points or args.box):
        raise CliError("give either --text or --points/--box, not both")
    if not args.text and not args.points and args.box is None:
        raise CliError("give what to segment: --text, --points and/or --box")
    _check_png(args.output)
    image = _load_image(args.image)
    config = load_checkpoint_config(args.model)
    _require_part(config, args.model, blip=False, what="segment")
    if args.text:
        _require_part(config, args.model, blip=True, what="segment --text")
        return segment_text(args, image)
    return segment_prompts(args, image)


def run_everything(args: argparse.Namespace) -> dict[str, Any]:
    """All masks of `pipeline("mask-generation")`, largest drawn first so small ones stay visible."""
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
        image_embeds = model.get_image_features(inputs["blip_pixel_values"])
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


COMMANDS = {"segment": run_segment, "everything": run_everything, "itm": run_itm}


def run_command(parser: argparse.ArgumentParser, action, argv: list[str] | None) -> int:
    """Parse `argv` and run `action(args)`; errors become one `error: ...` line and `EXIT_ERROR`."""
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        action(args)
    except (CliError, ValueError, TypeError, OSError) as error:
        # Library errors name the argument and the fix already; one line keeps them readable in a terminal.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _run(args: argparse.Namespace) -> None:
    args.model = str(resolve_pretrained_name(args.model))  # a built-in model's name → its folder
    _write_json(args.json, COMMANDS[args.command](args))


def main(argv: list[str] | None = None) -> int:
    """Run the `esam-blip` command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), _run, argv)


__all__ = [
    "CliError",
    "CommandParser",
    "build_parser",
    "load_checkpoint_config",
    "looks_like_hub_id",
    "main",
    "parse_box",
    "parse_point",
    "run_command",
]

if __name__ == "__main__":
    sys.exit(main())
