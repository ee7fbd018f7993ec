"""EfficientSAM speed: SDPA vs explicit attention in the encoder, and many prompts on one cached image embedding.

Random weights at EfficientSAM-Ti size (width 192, 12 blocks, 3 heads, 1024x1024 input). Everything runs in one
process so the ratios compare like with like; the matmul rate is measured in the same run.

    python benchmarks/bench_efficient_sam.py [--repeats 3] [--threads N]
"""

import statistics

import torch
from common import benchmark_arguments, wall_times

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs after one warm-up."""
    fn()
    return statistics.median(wall_times(fn, repeats))


def best_matmul_flops(repeats: int) -> float:
    """Best float32 GEMM rate (FLOP/s) over a few square sizes: the machine's practical peak."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        seconds = timed(lambda a=a, b=b: a @ b, repeats)
        best = max(best, 2 * n**3 / seconds)
    return best


def encoder_flops(config: EsamBlipConfig) -> float:
    """Multiply-adds x2 of the encoder (patch embedding, blocks, neck) at its configured input size."""
    vision = config.sam_vision_config
    tokens = vision.image_embedding_size**2
    width, hidden = vision.hidden_size, int(vision.hidden_size * vision.mlp_ratio)
    patch = 2 * tokens * width * vision.num_channels * vision.patch_size**2
    per_block = 2 * tokens * width * (3 * width + width + 2 * hidden) + 2 * 2 * tokens * tokens * width
    neck_a, neck_b = vision.neck_hidden_sizes
    neck = 2 * tokens * (width * neck_a + 9 * neck_a * neck_b)
    return patch + vision.num_hidden_layers * per_block + neck


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0])

    config = EsamBlipConfig(sam_vision_config={"hidden_size": 192, "num_attention_heads": 3})
    model = EsamBlipForPromptableSegmentation(config).eval()
    pixel_values = torch.randn(1, 3, 1024, 1024)
    rows = []
    with torch.inference_mode():
        config.sam_vision_config._attn_implementation = "eager"
        eager = timed(lambda: model.get_image_embeddings(pixel_values), args.repeats)
        config.sam_vision_config._attn_implementation = "sdpa"
        sdpa = timed(lambda: model.get_image_embeddings(pixel_values), args.repeats)
        peak = best_matmul_flops(args.repeats)
        flops = encoder_flops(config)
        rows.append(("encoder, explicit attention (original style)", eager, 1.0, flops / eager / peak))
        rows.append(("encoder, SDPA (this package)", sdpa, sdpa / eager, flops / sdpa / peak))

        embeddings = model.get_image_embeddings(pixel_values)

        def prompts(n: int):
            points = torch.rand(1, n, 1, 2) * 1024
            labels = torch.ones(1, n, 1, dtype=torch.long)
            return lambda: model(image_embeddings=embeddings, input_points=points, input_labels=labels)

        one = timed(prompts(1), args.repeats)
        sixteen = timed(prompts(16), args.repeats)
        rows.append(("decoder, 1 prompt on cached embeddings", one, 1.0, None))
        rows.append(("decoder, 16 prompts in one call", sixteen, sixteen / one, None))
        rows.append(("encode + 1 prompt", sdpa + one, 1.0, None))
        rows.append(("encode once + 16 prompts", sdpa + sixteen, (sdpa + sixteen) / (sdpa + one), None))
        rows.append(
            ("encode + 1 prompt, 16 times (no reuse)", 16 * (sdpa + one), 16 * (sdpa + one) / (sdpa + one), None)
        )

    print(
        f"threads: {torch.get_num_threads()}, best matmul: {peak / 1e9:.1f} GFLOP/s, encoder: {flops / 1e9:.1f} GFLOP"
    )
    print("| case | time (s) | ratio | fraction of best matmul rate |")
    print("|---|---:|---:|---:|")
    for name, seconds, ratio, fraction in rows:
        fraction_text = f"{fraction:.0%}" if fraction is not None else ""
        print(f"| {name} | {seconds:.3f} | {ratio:.2f}x | {fraction_text} |")


if __name__ == "__main__":
    main()
