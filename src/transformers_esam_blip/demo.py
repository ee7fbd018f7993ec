"""The README's main job: every prompt type of the built-in model on freshly drawn scenes, scored against the truth.

    python -m transformers_esam_blip.demo [--model esam-blip-shapes] [--num_scenes 3] [--seed 7] [--output_dir DIR]

Draws `--num_scenes` synthetic scenes the model never saw (coloured circles, squares and triangles on noisy gray) and
encodes each image once. Every object is then segmented with each prompt type: one point, three points, its box, its
text ("the red circle"), its text plus one point, the one-point result refined by feeding its mask logits back as a
mask prompt (models with a mask encoder), and everything mode (no prompt: the package's mask generator). Texts for two
objects that are not in the scene test the image-text matching. Prints each text's match probability and IoU, then a
table of the mean IoU with the true masks per prompt type, and writes one PNG per scene with a panel per prompt type.
The built-in `esam-blip-shapes` model ships inside the package: nothing is downloaded.

A model without a learned text prompter (e.g. a converted EfficientSAM checkpoint) gets the point-and-box demo
instead: the bundled scene (or `--image`) segmented from one point and one box.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import web_demo  # Gradio itself is imported only when the web demo starts
from .best_mask import best_mask_indices
from .builtin import DEFAULT_BUILTIN_MODEL
from .commands import CliError, CommandParser, load_checkpoint_config, run_command
from .data import COLOURS, SHAPES, generate_scene, scene_rng
from .encoded_image import EncodedImageModel, best_of_queries, encode_image
from .mask_generator import EsamBlipMaskGenerator
from .metrics import mask_ious, roc_auc
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
# Prompt types in the order of the table and the panels.
ONE_POINT, THREE_POINTS, BOX, TEXT, TEXT_AND_POINT, POINT_AND_MASK, EVERYTHING = (
    "1 point",
    "3 points",
    "box",
    "text",
    "text + point",
    "point + mask",
    "everything",
)
PROMPT_TYPES = (ONE_POINT, THREE_POINTS, BOX, TEXT, TEXT_AND_POINT, POINT_AND_MASK, EVERYTHING)
# Everything mode: a 16 x 16 grid puts a point every 16 px of a 256 px scene, at least 2 x 2 points on the smallest
# object (32 px); coarse to fine skips the points inside objects already found.
EVERYTHING_POINTS_PER_SIDE = 16
# Everything mode counts an object as found when one of its masks overlaps it this much.
FOUND_IOU = 0.5
PANEL_COLUMNS = 4


def object_points(mask: np.ndarray, rng: np.random.Generator) -> tuple[list[float], list[list[float]]]:
    """
    The point prompts of one object: its centre point, the mask pixel nearest to the mask's centroid (inside any
    convex shape), and three points, the centre plus two drawn with `rng` among the pixels nearer to the centroid
    than the median pixel (away from the edge).

    Args:
        mask: `[H, W]` bool, the object's true mask (not empty).
        rng: the scene's generator, so that the points are a function of `(seed, scene)`.

    Returns:
        `(point, points)`: `[x, y]` and a list of three `[x, y]`, in image pixels.
    """
    rows, cols = np.nonzero(mask)
    distances = np.hypot(rows - rows.mean(), cols - cols.mean())
    centre = int(distances.argmin())
    inner = np.flatnonzero(distances <= np.median(distances))
    inner = inner[inner != centre]
    others = rng.choice(inner, size=min(2, len(inner)), replace=False)
    points = [[float(cols[i]), float(rows[i])] for i in (centre, *others)]
    return points[0], points


def reads_text(model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor) -> bool:
    """Whether the demo can prompt `model` with texts: a learned text prompter, the BLIP half and a tokenizer."""
    return model.config.prompter_source is not None and model.config.has_blip and processor.tokenizer is not None


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@torch.inference_mode()
def segment_scene(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    image: np.ndarray,
    objects: list[dict[str, Any]],
    absent_texts: list[str],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """
    Segment every object of one scene with each prompt type, the image encoded once.

    Args:
        image: `[H, W, 3]` uint8 scene; objects: its objects as `generate_scene` returns them.
        absent_texts: expressions of objects that are not in the scene.
        rng: the scene's generator (for the three-point prompts).

    Returns:
        `dict` with, per prompt type that ran, `{"masks": [N, H, W] bool, "ious": list, "scores": list}` (plus
        `"points"`/`"boxes"` as drawn, and `"texts"`, `"match_probability"`, `"is_match"`, `"present"` for the text
        types; `"objects_found"` and `"num_masks"` for everything mode), and `"skipped"`: `{prompt type: reason}`.
    """
    picture = Image.fromarray(image)
    image_inputs, sizes = encode_image(model, processor, picture)
    truth = [obj["mask"] for obj in objects]
    centres, triples = zip(*(object_points(mask, rng) for mask in truth))
    boxes = [obj["bbox"] for obj in objects]
    results: dict[str, Any] = {"skipped": {}}

    def decode(**prompts: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = model(**image_inputs, **prompts)
        masks, scores, logits = best_of_queries(outputs, processor, sizes)
        return outputs, masks, scores, logits

    def record(name: str, masks: torch.Tensor, scores: torch.Tensor, targets: list[np.ndarray], **extra: Any) -> None:
        masks = masks.numpy()
        ious = mask_ious(list(masks[: len(targets)]), targets).tolist()
        results[name] = {"masks": masks, "ious": ious, "scores": scores.float().tolist(), **extra}

    prompt_points = processor.image_processor.preprocess_prompts
    one = prompt_points(sizes, input_points=[[[point] for point in centres]])
    _, masks, scores, point_logits = decode(**one)
    record(ONE_POINT, masks, scores, truth, points=list(centres))
    _, masks, scores, _ = decode(**prompt_points(sizes, input_points=[[list(points) for points in triples]]))
    record(THREE_POINTS, masks, scores, truth, points=[point for points in triples for point in points])
    _, masks, scores, _ = decode(**prompt_points(sizes, input_boxes=[boxes]))
    record(BOX, masks, scores, truth, boxes=boxes)
    if getattr(model.config.prompt_encoder_config, "mask_prompts", False):
        _, masks, scores, _ = decode(**one, input_masks=point_logits[None])
        record(POINT_AND_MASK, masks, scores, truth, points=list(centres))
    else:
        results["skipped"][POINT_AND_MASK] = "no mask encoder (config.prompt_encoder_config.mask_prompts is False)"

    if reads_text(model, processor):
        texts = [f"the {obj['colour']} {obj['shape']}" for obj in objects]
        for name, queries, prompts in (
            (TEXT, texts + absent_texts, {}),
            (TEXT_AND_POINT, texts, prompt_points(sizes.expand(len(texts), 2), [[[point]] for point in centres])),
        ):
            outputs, masks, scores, _ = decode(**processor(text=queries, return_tensors="pt"), **prompts)
            record(
                name,
                masks,
                scores,
                truth,
                texts=queries,
                present=[index < len(texts) for index in range(len(queries))],
                match_probability=outputs.itm_probability.float().tolist(),
                is_match=outputs.is_match.tolist(),
                **({"points": list(centres)} if prompts else {}),
            )
    else:
        for name in (TEXT, TEXT_AND_POINT):
            results["skipped"][name] = "no learned text prompter"

    if "image_embeddings" in image_inputs:
        generator = EsamBlipMaskGenerator(
            EncodedImageModel(model, image_inputs),
            processor.image_processor,
            points_per_side=EVERYTHING_POINTS_PER_SIDE,
            grid="coarse_to_fine",
            progress=False,
        )
        found = generator(picture)["masks"]
        masks = torch.stack(found) if found else torch.zeros((0, *image.shape[:2]), dtype=torch.bool)
        best = [max(mask_ious(list(masks.numpy()), [mask] * len(masks)), default=0.0) for mask in truth]
        results[EVERYTHING] = {
            "masks": masks.numpy(),
            "ious": [float(iou) for iou in best],
            "scores": [],
            "objects_found": sum(iou >= FOUND_IOU for iou in best),
            "num_masks": len(masks),
        }
    else:
        results["skipped"][EVERYTHING] = "the model's fusion runs inside the encoder: no image embeddings to reuse"
    return results


def _panels(image: np.ndarray, results: dict[str, Any]) -> tuple[list[Image.Image], list[str]]:
    """The pictures of one scene: the input, one panel per point/box/refinement/everything type, one per text."""
    pictures, titles = [Image.fromarray(image)], ["input"]
    for name in (ONE_POINT, THREE_POINTS, BOX, POINT_AND_MASK, TEXT_AND_POINT, EVERYTHING):
        if name not in results:
            continue
        result = results[name]
        absent = [not match for match in result["is_match"]] if "is_match" in result else None
        pictures.append(
            draw_masks(image, result["masks"], points=result.get("points"), boxes=result.get("boxes"), absent=absent)
        )
        if name == EVERYTHING:
            titles.append(
                f"everything: {result['num_masks']} masks, {result['objects_found']}/{len(result['ious'])} objects "
                f"found (IoU >= {FOUND_IOU})"
            )
        else:
            titles.append(f"{name}: mean IoU {_mean(result['ious']):.2f}")
    if TEXT in results:
        result = results[TEXT]
        for index, text in enumerate(result["texts"]):
            is_match, probability = result["is_match"][index], result["match_probability"][index]
            if result["present"][index]:
                scores = f"IoU {result['ious'][index]:.2f}"
            else:
                text, scores = f"{text} (not in the scene)", ""
            verdict = f"{'match' if is_match else 'no match'}, p={probability:.2f}"
            pictures.append(draw_masks(image, result["masks"][index], absent=[not is_match]))
            titles.append(f"{text}: {verdict}" + (f", {scores}" if scores else ""))
    return pictures, titles


def run_scene_demo(
    model: EsamBlipForPromptableSegmentation,
    processor: EsamBlipProcessor,
    output_dir: Path,
    num_scenes: int = 3,
    seed: int = DEFAULT_DEMO_SEED,
) -> dict[str, Any]:
    """
    Segment every object of `num_scenes` fresh synthetic scenes with every prompt type (see [`segment_scene`]); print
    each text's verdict, a table of mean IoU per prompt type and the image-text matching scores; write
    `scene_<i>.png` to `output_dir`.

    Returns:
        `dict` with `"prompt_types"`: per prompt type that ran `{"mean_iou", "mean_predicted_iou", "num_queries"}`
        (everything mode: `mean_iou` is each object's best IoU with any mask, plus `"objects_found"`); `"skipped"`:
        `{prompt type: reason}`; `"texts"`: one dict per expression (`scene`, `text`, `present`, `match_probability`,
        `is_match`, `iou`, None when absent).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    ious: dict[str, list[float]] = {name: [] for name in PROMPT_TYPES}
    scores: dict[str, list[float]] = {name: [] for name in PROMPT_TYPES}
    found, skipped, text_rows = 0, {}, []
    if reads_text(model, processor):
        print(f"{'scene':>5}  {'expression':<22} {'present':>7}  {'match prob':>10}  {'IoU':>5}")
    for scene_id in range(num_scenes):
        rng = scene_rng(seed, scene_id)
        image, objects = generate_scene(rng)
        present = {(obj["colour"], obj["shape"]) for obj in objects}
        absent = [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in present]
        picks = rng.choice(len(absent), size=min(NUM_ABSENT_PER_SCENE, len(absent)), replace=False)
        absent_texts = [f"the {absent[i][0]} {absent[i][1]}" for i in picks]
        results = segment_scene(model, processor, image, objects, absent_texts, rng)
        skipped.update(results["skipped"])
        for name in PROMPT_TYPES:
            if name in results:
                ious[name] += results[name]["ious"]
                scores[name] += results[name]["scores"][: len(objects)]
        found += results.get(EVERYTHING, {}).get("objects_found", 0)
        if TEXT in results:
            text = results[TEXT]
            for index, expression in enumerate(text["texts"]):
                is_present = text["present"][index]
                iou = text["ious"][index] if is_present else None
                probability = text["match_probability"][index]
                text_rows.append(
                    {
                        "scene": scene_id,
                        "text": expression,
                        "present": is_present,
                        "match_probability": probability,
                        "is_match": text["is_match"][index],
                        "iou": iou,
                    }
                )
                shown = "  -  " if iou is None else f"{iou:.2f}"
                print(
                    f"{scene_id:>5}  {expression:<22} {'yes' if is_present else 'no':>7}  {probability:>10.3f}  {shown}"
                )
        save_png(output_dir / f"scene_{scene_id}.png", draw_panels(*_panels(image, results), columns=PANEL_COLUMNS))

    num_objects = len(ious[ONE_POINT])
    print(
        f"\nMean IoU over {num_objects} objects in {num_scenes} scenes, per prompt type (predicted IoU: the model's own"
    )
    print("estimate for its best candidate):")
    print(f"  {'prompt type':<14} {'queries':>7}  {'mean IoU':>8}  {'predicted IoU':>13}")
    summary: dict[str, dict[str, float]] = {}
    for name in PROMPT_TYPES:
        if name in skipped:
            print(f"  {name:<14} {'-':>7}  skipped: {skipped[name]}")
            continue
        summary[name] = {
            "mean_iou": _mean(ious[name]),
            "mean_predicted_iou": _mean(scores[name]),
            "num_queries": len(ious[name]),
        }
        if name == EVERYTHING:
            summary[name]["objects_found"] = found
            print(
                f"  {name:<14} {'-':>7}  {summary[name]['mean_iou']:>8.3f}  {'-':>13}  (best mask per object; "
                f"{found}/{num_objects} objects found at IoU >= {FOUND_IOU})"
            )
        else:
            print(
                f"  {name:<14} {len(ious[name]):>7}  {summary[name]['mean_iou']:>8.3f}  "
                f"{summary[name]['mean_predicted_iou']:>13.3f}"
            )
    if text_rows:
        labels = np.array([row["present"] for row in text_rows], dtype=np.int64)
        probabilities = np.array([row["match_probability"] for row in text_rows])
        correct = np.mean([row["is_match"] == row["present"] for row in text_rows])
        print(
            f"Image-text matching over {labels.sum()} present and {len(labels) - labels.sum()} absent texts: "
            f"is_match right for {correct:.0%}, mean match probability {_mean(probabilities[labels == 1]):.3f} "
            f"(present) vs {_mean(probabilities[labels == 0]):.3f} (absent), "
            f"ROC-AUC {roc_auc(probabilities, labels):.3f}"
        )
    print(f"Pictures written to {output_dir}/scene_*.png")
    return {"prompt_types": summary, "skipped": skipped, "texts": text_rows}


def run_point_box_demo(
    model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor, image_path: Path, output: Path
) -> dict:
    """Segment `image_path` from one point query and one box query (one image encoding); write the overlay."""
    image = Image.open(image_path).convert("RGB")
    point, box = DEMO_POINT, DEMO_BOX
    prompts = processor.image_processor.preprocess_prompts
    with torch.inference_mode():
        image_inputs, sizes = encode_image(model, processor, image)
        from_point = model(**image_inputs, **prompts(sizes, input_points=[[[point]]], input_labels=[[[1]]]))
        from_box = model(**image_inputs, **prompts(sizes, input_boxes=[[box]]))
    results, masks = {}, []
    for name, out in (("point", from_point), ("box", from_box)):
        (mask,), (score,), _ = best_of_queries(out, processor, sizes)
        masks.append(mask)
        results[name] = {
            "best_candidate": int(best_mask_indices(out.iou_scores[0, 0])),
            "predicted_iou": score.item(),
            "area": int(mask.sum()),
        }
        print(
            f"{name:>5} query: best of 3 candidates = #{results[name]['best_candidate']}, predicted IoU "
            f"{results[name]['predicted_iou']:.3f}, mask area {results[name]['area']} px"
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
    parser.add_argument(
        "--web",
        action="store_true",
        help="serve the interactive web demo on 127.0.0.1 instead (pip install 'transformers-esam-blip[demo]')",
    )
    parser.add_argument("--port", type=int, default=7860, help="port of the web demo (with --web; default 7860)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.demo`."""
    parser = CommandParser(prog="python -m transformers_esam_blip.demo", description=SUMMARY)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the demo as the parsed command line says (`python -m transformers_esam_blip.demo` / `esam-blip demo`)."""
    if args.web:
        web_demo.run(args)
        return
    if args.num_scenes < 1:
        raise CliError(f"--num_scenes must be >= 1, got {args.num_scenes}")
    load_checkpoint_config(args.model)
    try:
        model = EsamBlipForPromptableSegmentation.from_pretrained(args.model).eval()
        processor = EsamBlipProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load --model {args.model}: {error}") from error
    print(f"Model: {args.model} ({model.num_parameters():,} parameters)")
    if reads_text(model, processor):
        run_scene_demo(model, processor, args.output_dir, args.num_scenes, args.seed)
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
    "PROMPT_TYPES",
    "SUMMARY",
    "add_arguments",
    "build_parser",
    "main",
    "object_points",
    "reads_text",
    "run",
    "run_point_box_demo",
    "run_scene_demo",
    "segment_scene",
]

if __name__ == "__main__":
    sys.exit(main())
