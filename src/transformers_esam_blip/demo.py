"""The README's main job: referring segmentation with the built-in model on freshly drawn scenes.

    python -m transformers_esam_blip.demo [--model esam-blip-shapes] [--num_scenes 3] [--seed 7] [--output_dir DIR]

Draws `--num_scenes` synthetic scenes the model never saw (coloured circles, squares and triangles on noisy gray),
asks for every object in each ("the red circle") and for two objects that are not there, and prints per expression
the ITM match probability and the IoU of the predicted mask with the true one; writes one overlay PNG per scene. The
built-in `esam-blip-shapes` model ships inside the package: nothing is downloaded.

A model without a learned text prompter (e.g. a converted EfficientSAM checkpoint) gets the point-and-box demo
instead: the bundled scene (or `--image`) segmented from one point and one box.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .best_mask import best_mask_indices
from .builtin import DEFAULT_BUILTIN_MODEL
from .commands import CliError, CommandParser, load_checkpoint_config, run_command
from .data import COLOURS, SHAPES, generate_scene, scene_rng
from .evaluation import predict_referring
from .metrics import compute_referring_metrics
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor
from .visualization import draw_masks, draw_panels, save_masks_png, save_png

SUMMARY = __doc__.split("\n", 1)[0]
DEMO_IMAGE = Path(__file__).resolve().parent / "assets" / "demo_scene.png"
DEMO_POINT = [125.0, 135.0]
DEMO_BOX = [262.0, 52.0, 428.0, 178.0]
# The training command draws its scenes with seeds 0 and 1; the demo's default seed gives other scenes.
DEFAULT_DEMO_SEED = 7
NUM_ABSENT_PER_SCENE = 2
# Magenta: none of the scene colours (red, green, blue, yellow) or the gray background.
MASK_COLOUR = (255, 0, 255)


def run_text_demo(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    output_dir: Path,
    num_scenes: int = 3,
    seed: int = DEFAULT_DEMO_SEED,
) -> list[dict]:
    """
    Segment every object of `num_scenes` fresh synthetic scenes, plus absent objects, by text; print a table and
    write `scene_<i>.png` overlays to `output_dir`.

    Returns:
        one dict per expression: `scene`, `text`, `present`, `match_probability`, `iou` (None when absent),
        `mask_area`.
    """
    rows = []
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'scene':>5}  {'expression':<22} {'present':>7}  {'match prob':>10}  {'IoU':>5}")
    for scene_id in range(num_scenes):
        rng = scene_rng(seed, scene_id)
        image, objects = generate_scene(rng)
        present = {(obj["colour"], obj["shape"]): obj["mask"] for obj in objects}
        absent = [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in present]
        picks = rng.choice(len(absent), size=min(NUM_ABSENT_PER_SCENE, len(absent)), replace=False)
        queries = [*present, *(absent[i] for i in picks)]
        texts = [f"the {colour} {shape}" for colour, shape in queries]
        masks, probabilities = predict_referring(model, processor, Image.fromarray(image), texts)
        pictures, titles = [], []
        for text, pair, mask, probability in zip(texts, queries, masks.numpy(), probabilities.tolist()):
            target = present.get(pair)
            iou = None if target is None else compute_referring_metrics([mask], [target])["mean_iou"]
            rows.append(
                {
                    "scene": scene_id,
                    "text": text,
                    "present": target is not None,
                    "match_probability": probability,
                    "iou": iou,
                    "mask_area": int(mask.sum()),
                }
            )
            shown = f"{iou:.2f}" if iou is not None else "  -  "
            print(
                f"{scene_id:>5}  {text:<22} {'yes' if target is not None else 'no':>7}  {probability:>10.3f}  {shown}"
            )
            pictures.append(draw_masks(image, mask, alpha=0.6, colours=[MASK_COLOUR]))
            verdict = "match" if probability >= model.config.match_threshold else "no match"
            titles.append(f"{text}: {verdict} (p={probability:.2f})" + ("" if iou is None else f", IoU {iou:.2f}"))
        save_png(
            output_dir / f"scene_{scene_id}.png", draw_panels([Image.fromarray(image), *pictures], ["input", *titles])
        )
    ious = [row["iou"] for row in rows if row["iou"] is not None]
    present_probs = [row["match_probability"] for row in rows if row["present"]]
    absent_probs = [row["match_probability"] for row in rows if not row["present"]]
    print(
        f"Mean IoU over {len(ious)} present objects: {np.mean(ious):.3f}; mean match probability "
        f"{np.mean(present_probs):.3f} (present) vs {np.mean(absent_probs):.3f} (absent)"
    )
    print(f"Overlays written to {output_dir}/scene_*.png")
    return rows


def run_point_box_demo(
    model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor, image_path: Path, output: Path
) -> dict:
    """Segment `image_path` from one point query and one box query (one image encoding); write the overlay."""
    image = Image.open(image_path).convert("RGB")
    point, box = DEMO_POINT, DEMO_BOX
    inputs = processor(images=image, input_points=[[[point]]], input_labels=[[[1]]], return_tensors="pt")
    box_inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
    with torch.inference_mode():
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        from_point = model(
            image_embeddings=embeddings, input_points=inputs["input_points"], input_labels=inputs["input_labels"]
        )
        from_box = model(image_embeddings=embeddings, input_boxes=box_inputs["input_boxes"])
    results, masks = {}, []
    for name, out in (("point", from_point), ("box", from_box)):
        full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
        best = int(best_mask_indices(out.iou_scores[0, 0]))
        masks.append(full[best])
        results[name] = {
            "best_candidate": best,
            "predicted_iou": out.iou_scores[0, 0, best].item(),
            "area": int(full[best].sum()),
        }
        print(
            f"{name:>5} query: best of 3 candidates = #{best}, predicted IoU {results[name]['predicted_iou']:.3f}, "
            f"mask area {results[name]['area']} px"
        )
    save_masks_png(output, image, torch.stack(masks), points=[point], labels=[1], boxes=[box])
    print(f"Overlay written to {output}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's arguments to `parser` (the `python -m` command's, or `esam-blip demo`'s)."""
    parser.add_argument(
        "--model", default=DEFAULT_BUILTIN_MODEL, help=f"name, folder or Hub id (default {DEFAULT_BUILTIN_MODEL})"
    )
    parser.add_argument("--num_scenes", type=int, default=3, help="scenes to draw (default 3)")
    parser.add_argument("--seed", type=int, default=DEFAULT_DEMO_SEED, help=f"scene seed (default {DEFAULT_DEMO_SEED})")
    parser.add_argument("--output_dir", type=Path, default=Path("esam_blip_demo"), help="where the PNGs go")
    parser.add_argument("--image", type=Path, default=DEMO_IMAGE, help="point-and-box demo image (models without text)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.demo`."""
    parser = CommandParser(prog="python -m transformers_esam_blip.demo", description=SUMMARY)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the demo as the parsed command line says (`python -m transformers_esam_blip.demo` / `esam-blip demo`)."""
    if args.num_scenes < 1:
        raise CliError(f"--num_scenes must be >= 1, got {args.num_scenes}")
    load_checkpoint_config(args.model)
    try:
        model = EsamBlipForPromptableSegmentation.from_pretrained(args.model).eval()
        processor = EsamBlipProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load --model {args.model}: {error}") from error
    print(f"Model: {args.model} ({model.num_parameters():,} parameters)")
    if model.config.prompter_source is not None and model.config.has_blip and processor.tokenizer is not None:
        run_text_demo(model, processor, args.output_dir, args.num_scenes, args.seed)
        return
    if not args.image.is_file():
        raise CliError(f"--image {args.image} does not exist")
    print("No learned text prompter: segmenting from a point and a box instead.")
    run_point_box_demo(model, processor, args.image, args.output_dir / "point_box.png")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "DEMO_BOX",
    "DEMO_IMAGE",
    "DEMO_POINT",
    "SUMMARY",
    "add_arguments",
    "build_parser",
    "main",
    "run",
    "run_point_box_demo",
    "run_text_demo",
]

if __name__ == "__main__":
    sys.exit(main())
