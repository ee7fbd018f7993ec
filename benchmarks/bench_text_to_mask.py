"""Text → mask speed: one joint call vs a LAVIS-style compose, and 8 texts on one image vs 8 separate calls.

Random weights at BLIP-base ITM size (ViT-B/16 384², BERT-base) plus an EfficientSAM-Ti-sized half (1024²).
- this package: `model(pixel_values, blip_pixel_values, input_ids, attention_mask)`: Grad-CAM by an attention-only
  gradient, heatmap peaks → points, EfficientSAM decoder on the image embedding computed once.
- LAVIS-style compose: Grad-CAM with a full `loss.backward()` (LAVIS `compute_gradcam`), the same peaks, then a
  separate EfficientSAM forward that encodes the image again, as chaining the two original code bases does.
All in one process, interleaved; the masks of both paths must agree.

    python benchmarks/bench_text_to_mask.py [--repeats 3] [--threads N]
"""

import statistics

import torch
from bench_gradcam import blip_base_config, lavis_style_gradcam
from common import benchmark_arguments, wall_times

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.text_prompting import heatmap_to_prompts


def median_time(fn, repeats: int) -> float:
    return statistics.median(wall_times(fn, repeats))


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0])
    config = blip_base_config(sam_vision_config={"hidden_size": 192, "num_attention_heads": 3})
    model = EsamBlipForPromptableSegmentation(config).eval()
    blip = model.model.blip
    pixel_values, blip_pixel_values = torch.randn(1, 3, 1024, 1024), torch.randn(1, 3, 384, 384)
    input_ids = torch.randint(1000, 30000, (8, 12))
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    attention_mask = torch.ones_like(input_ids)

    def ours(ids: torch.Tensor, mask: torch.Tensor):
        with torch.no_grad():
            return model(
                pixel_values=pixel_values, blip_pixel_values=blip_pixel_values, input_ids=ids, attention_mask=mask
            )

    def lavis_compose(ids: torch.Tensor, mask: torch.Tensor):
        gradcam = lavis_style_gradcam(blip, blip_pixel_values, ids, mask)
        points, labels = heatmap_to_prompts(
            gradcam[:, 1],
            1024,
            config.text_prompt_num_points,
            config.text_prompt_min_distance,
            config.text_prompt_threshold,
            config.text_prompt_num_background_points,
        )
        with torch.no_grad():
            return model(pixel_values=pixel_values, input_points=points[:, None], input_labels=labels[:, None])

    one_ids, one_mask = input_ids[:1], attention_mask[:1]
    reference, candidate = lavis_compose(one_ids, one_mask), ours(one_ids, one_mask)  # also the warm-up
    difference = (reference.pred_masks - candidate.pred_masks).abs().max().item()

    lavis_time = median_time(lambda: lavis_compose(one_ids, one_mask), args.repeats)
    ours_time = median_time(lambda: ours(one_ids, one_mask), args.repeats)
    eight_batched = median_time(lambda: ours(input_ids, attention_mask), args.repeats)
    eight_separate = median_time(lambda: [ours(input_ids[i : i + 1], attention_mask[i : i + 1]) for i in range(8)], 1)

    # Where one call's time goes: the two image encoders, which every path must run once, set its floor.
    with torch.no_grad():
        sam_encoder = median_time(lambda: model.get_image_embeddings(pixel_values), args.repeats)
        blip_encoder = median_time(lambda: blip.get_image_features(blip_pixel_values), args.repeats)
    floor = sam_encoder + blip_encoder

    print(
        f"threads: {torch.get_num_threads()}, BLIP-base ITM + EfficientSAM-Ti (random weights), "
        f"max |mask logits ours - compose| = {difference:.1e}"
    )
    print("| text → mask, one image | time (s) | ratio |")
    print("|---|---:|---:|")
    print(f"| LAVIS-style compose (full backward Grad-CAM, then EfficientSAM re-encodes) | {lavis_time:.2f} | 1.00 |")
    print(f"| this package, one call | {ours_time:.2f} | {ours_time / lavis_time:.2f} |")
    print(f"| its two image encoders alone (EfficientSAM {sam_encoder:.2f} s + BLIP ViT {blip_encoder:.2f} s) | {floor:.2f} | "
          f"{floor / lavis_time:.2f} |")  # fmt: skip
    print(f"| its text, Grad-CAM and decoder work | {ours_time - floor:.2f} | {(ours_time - floor) / lavis_time:.2f} |")
    print(f"| 8 texts, 8 separate calls | {eight_separate:.2f} | 1.00 |")
    print(f"| 8 texts, one call (image encoded once) | {eight_batched:.2f} | {eight_batched / eight_separate:.2f} |")


if __name__ == "__main__":
    main()
