"""The README's main job: segment the bundled scene from a point and a box and write an overlay PNG.

    python -m transformers_esam_blip.demo [--model DIR_OR_REPO] [--output esam_blip_demo.png]

Without `--model` the model is EfficientSAM-Ti-sized with RANDOM weights (no download happens): the pipeline is
real, the masks are meaningless. Convert the original weights with `conversion/convert_esam_blip.py` and pass the
folder with `--model` for real masks.
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from . import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipImageProcessor, EsamBlipProcessor
from .visualization import save_masks_png

DEMO_IMAGE = Path(__file__).resolve().parent / "assets" / "demo_scene.png"
DEMO_POINT = [125.0, 135.0]
DEMO_BOX = [262.0, 52.0, 428.0, 178.0]


def random_efficient_sam_ti(seed: int) -> tuple[EsamBlipForPromptableSegmentation, EsamBlipProcessor]:
    """EfficientSAM-Ti architecture (width 192, 12 blocks, 3 heads) with seeded random weights."""
    torch.manual_seed(seed)
    config = EsamBlipConfig(sam_vision_config={"hidden_size": 192, "num_attention_heads": 3})
    return EsamBlipForPromptableSegmentation(config).eval(), EsamBlipProcessor(EsamBlipImageProcessor())


def run_demo(model_path: str | None, image_path: Path, output: Path, seed: int = 0) -> dict:
    """Segment `image_path` from one point query and one box query; write the overlay; return the scores."""
    if model_path is None:
        model, processor = random_efficient_sam_ti(seed)
        weights = "RANDOM weights (EfficientSAM-Ti architecture): the masks are meaningless"
    else:
        model = EsamBlipForPromptableSegmentation.from_pretrained(model_path).eval()
        processor = EsamBlipProcessor.from_pretrained(model_path)
        weights = f"weights from {model_path}"
    image = Image.open(image_path).convert("RGB")
    point, box = DEMO_POINT, DEMO_BOX
    inputs = processor(images=image, input_points=[[[point]]], input_labels=[[[1]]], return_tensors="pt")
    box_inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
    with torch.inference_mode():
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        from_point = model(image_embeddings=embeddings, input_points=inputs["input_points"], input_labels=inputs["input_labels"])
        from_box = model(image_embeddings=embeddings, input_boxes=box_inputs["input_boxes"])
    results, masks = {}, []
    for name, out in (("point", from_point), ("box", from_box)):
        full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
        best = int(out.iou_scores[0, 0].argmax())
        masks.append(full[best])
        results[name] = {"best_candidate": best, "predicted_iou": out.iou_scores[0, 0, best].item(), "area": int(full[best].sum())}
    save_masks_png(output, image, torch.stack(masks), points=[point], labels=[1], boxes=[box])
    print(f"Model: {weights}.")
    for name, result in results.items():
        print(f"{name:>5} query: best of 3 candidates = #{result['best_candidate']}, predicted IoU "
              f"{result['predicted_iou']:.3f}, mask area {result['area']} px")
    print(f"Overlay written to {output}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segment the bundled demo scene from a point and a box.")
    parser.add_argument("--model", help="converted checkpoint folder or Hub id (default: random-weight EfficientSAM-Ti)")
    parser.add_argument("--image", type=Path, default=DEMO_IMAGE, help="image to segment (default: the bundled scene)")
    parser.add_argument("--output", type=Path, default=Path("esam_blip_demo.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.image.is_file():
        print(f"error: --image {args.image} does not exist", file=sys.stderr)
        return 2
    run_demo(args.model, args.image, args.output, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
