"""Segment everything: EfficientSAM-Ti (this package) against transformers' SamModel ViT-B, time, peak memory and masks.

Random weights for both, the same 1024x1024 image, a 16x16 point grid, 64 points per decoder call, default thresholds.
Rows: SamModel through `pipeline("mask-generation")`; EfficientSAM-Ti through the same unchanged pipeline; and through
`EsamBlipMaskGenerator` with the full and the coarse-to-fine grid. Each row runs in its own process so that its peak
RSS (`ru_maxrss`) is its own; the child sends its result back as one JSON line.

`--thresholds zero` also turns both filters off (every mask kept): random-weight models predict IoUs near 0, so at
the default thresholds no mask is accepted and the coarse-to-fine grid has nothing to skip.

SamModel's image processor imports torchvision for its NMS, which has no CPU build here: it is given this package's
plain-torch NMS instead (a negligible part of the time).

    python benchmarks/bench_everything.py [--threads N] [--thresholds default|zero]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

ROWS = ("sam-vit-b pipeline", "esam-ti pipeline", "esam-ti generator full", "esam-ti generator coarse_to_fine")
GOALS = "goals: >= 3x faster than SamModel ViT-B (plain grid), >= 10x (coarse-to-fine), peak RSS <= 2 GiB"


def run_child(row: str, threads: int | None, thresholds: str) -> dict:
    import numpy as np
    import PIL.Image
    import torch
    from transformers import pipeline

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = PIL.Image.fromarray((np.random.default_rng(0).random((1024, 1024, 3)) * 255).astype(np.uint8))
    settings = {} if thresholds == "default" else {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    if row.startswith("sam-vit-b"):
        from transformers import SamConfig, SamImageProcessorPil, SamModel

        from transformers_esam_blip.mask_generation_utils import deduplicate_masks

        class SamImageProcessorTorchNms(SamImageProcessorPil):
            def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
                return deduplicate_masks(all_masks, all_scores, all_boxes, crops_nms_thresh)

        model, processor = SamModel(SamConfig()).eval(), SamImageProcessorTorchNms()
    else:
        from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipImageProcessor

        config = EsamBlipConfig(sam_vision_config={"hidden_size": 192, "num_attention_heads": 3})  # EfficientSAM-Ti
        model, processor = EsamBlipForPromptableSegmentation(config).eval(), EsamBlipImageProcessor()
    start = time.perf_counter()
    if row.endswith("pipeline"):
        generator = pipeline("mask-generation", model=model, image_processor=processor, device="cpu")
        masks = generator(image, points_per_crop=16, points_per_batch=64, **settings)["masks"]
        decoded = 256
    else:
        from transformers_esam_blip.mask_generator import EsamBlipMaskGenerator

        grid = row.rsplit(" ", 1)[-1]
        generator = EsamBlipMaskGenerator(
            model, processor, points_per_side=16, points_per_batch=64, grid=grid, progress=False, **settings
        )
        out = generator(image)
        masks, decoded = out["masks"], out["num_points_decoded"]
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"row": row, "seconds": seconds, "peak_rss_gib": peak_kib / 2**20, "masks": len(masks), "decoded": decoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--thresholds", choices=("default", "zero"), default="default")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS, help="which rows to run")
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.threads, args.thresholds)))
        return

    results = {}
    for row in args.rows:
        command = [sys.executable, __file__, "--child", row, "--thresholds", args.thresholds]
        if args.threads:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results[row] = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"done: {row} ({results[row]['seconds']:.1f} s)", file=sys.stderr, flush=True)

    baseline = results.get(ROWS[0], {}).get("seconds")
    print(f"1024x1024 image, 16x16 grid, points_per_batch=64, {args.thresholds} thresholds, random weights")
    print(
        f"{'row':34s} {'time (s)':>9s} {'speed-up vs SAM':>16s} {'peak RSS (GiB)':>15s} {'decoded':>8s} {'masks':>6s}"
    )
    for row, result in results.items():
        ratio = f"{baseline / result['seconds']:.2f}x" if baseline else "-"
        print(
            f"{row:34s} {result['seconds']:9.1f} {ratio:>16s} {result['peak_rss_gib']:15.2f} {result['decoded']:8d} "
            f"{result['masks']:6d}"
        )
    print(GOALS)


if __name__ == "__main__":
    main()
