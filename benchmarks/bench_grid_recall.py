"""Segment everything on scenes whose answer is known: the full grid against coarse-to-fine, recall, points and time.

The built-in model `esam-blip-shapes` on freshly drawn synthetic scenes (seed 777, never used in training), at its
default thresholds. Recall is the share of the scenes' objects that some kept mask overlaps at mask IoU >= 0.5; the
baseline row is the full grid, which is what `pipeline("mask-generation")` decodes.

    python benchmarks/bench_grid_recall.py [--threads 2] [--num_scenes 30] [--points_per_side 16 32]
"""

import argparse
import time

import numpy as np
import torch

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.data.synthetic import generate_scene, scene_rng
from transformers_esam_blip.evaluation_prompts import objects_found
from transformers_esam_blip.mask_generator import EsamBlipMaskGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--num_scenes", type=int, default=30)
    parser.add_argument("--points_per_side", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = EsamBlipForPromptableSegmentation.from_pretrained("esam-blip-shapes").eval()
    processor = EsamBlipProcessor.from_pretrained("esam-blip-shapes").image_processor
    scenes = [generate_scene(scene_rng(seed=777, scene_id=i)) for i in range(args.num_scenes)]
    EsamBlipMaskGenerator(model, processor, progress=False)(scenes[0][0])  # warm-up
    print(f"{args.num_scenes} scenes, {sum(len(objects) for _, objects in scenes)} objects, threads {args.threads}")
    print("| grid | points per side | recall (IoU >= 0.5) | points decoded | time (s) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for side in args.points_per_side:
        baseline = None
        for grid in ("full", "coarse_to_fine"):
            generator = EsamBlipMaskGenerator(model, processor, points_per_side=side, grid=grid, progress=False)
            found, decoded, seconds = [], 0, 0.0
            for image, objects in scenes:
                start = time.perf_counter()
                out = generator(image)
                seconds += time.perf_counter() - start
                decoded += out["num_points_decoded"]
                found += objects_found(out["masks"], [obj["mask"] for obj in objects])
            baseline = baseline or seconds
            print(
                f"| {grid} | {side} | {np.mean(found):.3f} | {decoded:,} of {side**2 * len(scenes):,} | "
                f"{seconds:.2f} | {baseline / seconds:.2f}x |"
            )


if __name__ == "__main__":
    main()
