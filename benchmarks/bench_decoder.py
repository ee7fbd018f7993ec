"""EfficientSAM mask decoder cost per prompt: the shared-work decoder against the plain tiled one, next to the FLOP floor.

Random weights at EfficientSAM-Ti size (the decoder is the same for every EfficientSAM size: width 256, 2 blocks,
8 heads, 64x64 image tokens, 6 points per prompt). The decoder weights are redrawn at a scale that gives logits of
order five (the default init gives ~1e-5, against which an equality check would check nothing). Everything runs in
one process: `plain_tiled_decode` below is the previous decoder (image tiled per prompt, every projection of every
image token per prompt, ConvTranspose2d upscaling, one hypernetwork MLP at a time), on the same module weights, and
the outputs of both are asserted equal within 1e-5.

`--compile` adds a second table: the same decoder compiled in place (`mask_decoder.compile(dynamic=False)`, torch
inductor, one compilation per prompt count), against its eager runs above, with the compile time and the largest
difference from the eager outputs.

    python benchmarks/bench_decoder.py [--repeats 3] [--threads 2] [--profile] [--compile]
"""

import math
import sys
import time

import torch
import torch.nn.functional as F
from bench_efficient_sam import best_matmul_flops, timed
from common import benchmark_arguments

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation
from transformers_esam_blip.prompts import assemble_prompts

PROMPT_COUNTS = (1, 16, 64)
TOLERANCE = 1e-5


# The previous decoder, kept here as the baseline ------------------------------------------------------------------


def _attention(module, query, key, value):
    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], module.num_heads, -1).transpose(1, 2)

    attended = F.scaled_dot_product_attention(
        heads(module.q_proj(query)), heads(module.k_proj(key)), heads(module.v_proj(value))
    )
    return module.out_proj(attended.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1))


def _mlp(mlp, x):
    for layer in mlp.layers:
        x = mlp.act(layer(x))
    return mlp.proj_out(x)


def plain_tiled_decode(decoder, image_embeddings, image_pe, sparse, multimask_output=True):
    """The decoder as it was: `repeat_interleave` of the image per prompt, then the original's computation."""
    batch_size, num_queries, num_points, width = sparse.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        [output_tokens.expand(batch_size * num_queries, -1, -1), sparse.reshape(-1, num_points, width)], dim=1
    )
    tiled = image_embeddings.repeat_interleave(num_queries, dim=0)
    n, channels, height, grid_width = tiled.shape
    keys = tiled.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in decoder.transformer.layers:
        if not layer.skip_first_layer_pe:
            queries = queries + tokens
        queries = layer.layer_norm1(queries + _attention(layer.self_attn, queries, queries, queries))
        keys_with_pe = keys + key_pe
        queries = layer.layer_norm2(
            queries + _attention(layer.cross_attn_token_to_image, queries + tokens, keys_with_pe, keys)
        )
        queries = layer.layer_norm3(queries + _mlp(layer.mlp, queries))
        keys = layer.layer_norm4(
            keys + _attention(layer.cross_attn_image_to_token, keys_with_pe, queries + tokens, queries)
        )
    final = decoder.transformer
    queries = final.layer_norm_final_attn(
        queries + _attention(final.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    )
    upscaled = keys.transpose(1, 2).reshape(n, channels, height, grid_width)
    for layer in decoder.upscaling_layers:
        upscaled = layer(upscaled)  # ConvTranspose2d → GroupNorm → GELU
    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens]
    hyper = torch.stack([_mlp(mlp, mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    _, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(n, c, h * w)).reshape(n, -1, h, w)
    iou = _mlp(decoder.iou_prediction_head, queries[:, 0])
    selected = slice(1, None) if multimask_output and decoder.num_mask_tokens > 1 else slice(0, 1)
    masks, iou = masks[:, selected], iou[:, selected]
    return masks.reshape(batch_size, num_queries, -1, h, w), iou.reshape(batch_size, num_queries, -1)


# FLOP counts (2 x multiply-adds of the matmuls; element-wise work not counted) -------------------------------------


def decoder_flops(config: EsamBlipConfig, shared_work: bool, num_points: int = 6) -> tuple[float, float]:
    """
    `(per prompt, per image)` FLOPs of the decoder with `multimask_output=True`. `shared_work=False` counts the plain
    tiled decoder (everything per prompt); `shared_work=True` counts the package's decoder: the first block's image
    projections once per image, the per-prompt image projections folded into the `heads * T` token rows.
    """
    dec, pe = config.mask_decoder_config, config.prompt_encoder_config
    width, heads, inner = dec.hidden_size, dec.num_attention_heads, dec.hidden_size // dec.attention_downsample_rate
    num_mask_tokens = dec.num_multimask_outputs + 1 if dec.num_multimask_outputs > 1 else 1
    tokens = 1 + num_mask_tokens + num_points
    pixels = pe.image_embedding_size**2
    folded = heads * tokens  # rows a folded projection has instead of `inner` columns

    def linear(rows, fan_in, fan_out):
        return 2 * rows * fan_in * fan_out

    self_attention = 4 * linear(tokens, width, width) + 2 * 2 * tokens * tokens * width
    mlp = 2 * linear(tokens, width, dec.mlp_dim)
    per_prompt, per_image = 0.0, 0.0
    for block in range(dec.num_hidden_layers + 1):  # the last pass is the final token→image attention
        final = block == dec.num_hidden_layers
        per_prompt += 0 if final else self_attention + mlp + 2 * linear(tokens, width, inner)
        per_prompt += linear(tokens, width, inner) + linear(tokens, inner, width)  # t2i q and out
        if not shared_work:
            per_prompt += 2 * linear(pixels, width, inner) + 2 * 2 * tokens * pixels * inner  # t2i k, v, attention
            if not final:
                per_prompt += linear(pixels, width, inner) + linear(pixels, inner, width)  # i2t q, out
                per_prompt += 2 * 2 * pixels * tokens * inner
        elif block == 0:
            per_image += 2 * linear(pixels, width, inner) + linear(pixels, width, inner)  # t2i k, v; i2t q
            per_prompt += 2 * 2 * tokens * pixels * inner  # t2i attention on the shared keys
            per_prompt += 2 * pixels * tokens * inner + linear(folded, inner // heads, width)  # i2t scores, fold
            per_prompt += linear(pixels, folded, width)  # i2t output through the folded values
        else:
            per_prompt += 2 * linear(folded, width, pixels) + 2 * linear(tokens, width, inner)  # t2i folded
            if not final:
                per_prompt += 2 * linear(tokens, inner, width) + 2 * linear(pixels, width, folded)  # i2t folded
    channels, rows = width, pixels
    for out_channels in dec.upscaling_hidden_sizes:
        per_prompt += linear(rows, channels, 4 * out_channels)
        channels, rows = out_channels, 4 * rows
    masks = num_mask_tokens if not shared_work else num_mask_tokens - 1
    per_prompt += linear(rows, channels, masks)
    per_prompt += masks * (2 * linear(1, width, width) + linear(1, width, channels))
    per_prompt += linear(1, width, dec.iou_head_hidden_dim) * (dec.iou_head_depth - 1)
    return per_prompt, per_image


# Benchmark ---------------------------------------------------------------------------------------------------------


def randomise_decoder(decoder: torch.nn.Module, scale: float = 0.8) -> None:
    """
    Weights ~ N(0, (scale / sqrt(fan_in))^2), norms ~ 1 ± 0.2: logits of order five. (At logits of order ten, float32
    rounding alone moves them by ~1e-5: the previous decoder differs by that much from itself run one prompt at a
    time, and from a float64 computation.)
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in decoder.named_parameters():
            if "norm" in name.split(".")[-2]:
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + 0.2 * torch.randn(parameter.shape, generator=generator))
            else:
                fan_in = parameter.shape[1] if parameter.ndim > 1 else parameter.shape[0]
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale / math.sqrt(fan_in))


def main() -> None:
    profile, compile_decoder = "--profile" in sys.argv, "--compile" in sys.argv
    sys.argv = [a for a in sys.argv if a not in ("--profile", "--compile")]
    args = benchmark_arguments(__doc__.splitlines()[0])

    config = EsamBlipConfig(sam_vision_config={"hidden_size": 192, "num_attention_heads": 3})
    model = EsamBlipForPromptableSegmentation(config).eval()
    sam = model.model.sam
    randomise_decoder(sam.mask_decoder)
    size = config.prompt_encoder_config.image_size
    generator = torch.Generator().manual_seed(0)
    rows, diffs = [], []
    with torch.inference_mode():
        pixel_values = torch.randn(1, 3, size, size, generator=generator)
        encode = timed(lambda: sam.get_image_embeddings(pixel_values), args.repeats)
        embeddings = sam.get_image_embeddings(pixel_values)
        image_pe = sam.prompt_encoder.get_dense_pe()
        peak = best_matmul_flops(args.repeats)
        new_flops, shared_flops = decoder_flops(config, shared_work=True)
        old_flops, _ = decoder_flops(config, shared_work=False)
        times = {}
        for count in PROMPT_COUNTS:
            points = torch.rand(1, count, 1, 2, generator=generator) * size
            labels = torch.ones(1, count, 1, dtype=torch.long)
            assembled = assemble_prompts(points, labels, None, config.prompt_encoder_config.max_num_points)

            def new(assembled=assembled):
                return sam.predict_masks(embeddings, *assembled)

            def old(assembled=assembled):
                return plain_tiled_decode(sam.mask_decoder, embeddings, image_pe, sam.embed_prompts(*assembled))

            got, want = new(), old()
            diff = max((got[0] - want[0]).abs().max().item(), (got[1] - want[1]).abs().max().item())
            assert diff <= TOLERANCE, (
                f"{count} prompts: outputs differ by {diff:.2e} (logits up to {want[0].abs().max():.1f})"
            )
            diffs.append((count, diff, want[0].abs().max().item()))
            times[count] = (timed(new, args.repeats), timed(old, args.repeats))
            seconds_new, seconds_old = times[count]
            floor = new_flops + shared_flops / count
            rows.append(
                f"| {count} | {1e3 * seconds_old / count:.1f} | {1e3 * seconds_new / count:.1f} | "
                f"{seconds_old / seconds_new:.2f}x | {floor / 1e9:.2f} | {floor * count / seconds_new / peak:.0%} |"
            )
        if profile:
            points = torch.rand(1, 16, 1, 2, generator=generator) * size
            assembled = assemble_prompts(points, torch.ones(1, 16, 1, dtype=torch.long), None, 6)
            with torch.profiler.profile(record_shapes=True) as prof:
                sam.predict_masks(embeddings, *assembled)

    print(f"threads: {torch.get_num_threads()}, best matmul: {peak / 1e9:.1f} GFLOP/s, encode: {encode:.3f} s")
    print(
        f"decoder FLOPs per prompt: plain tiled {old_flops / 1e9:.2f} GFLOP; shared-work {new_flops / 1e9:.2f} GFLOP "
        f"+ {shared_flops / 1e9:.2f} GFLOP per image (the floor below: per prompt + per image / prompts)"
    )
    print(
        "| prompts | plain tiled (ms/prompt) | shared-work (ms/prompt) | speed-up | floor (GFLOP/prompt) | "
        "fraction of best matmul rate |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    for label, index in (("plain tiled", 1), ("shared-work", 0)):
        one, many = times[1][index], times[16][index]
        print(f"{label}: (encode + 16 prompts) / (encode + 1 prompt) = {(encode + many) / (encode + one):.2f}")
    for count, diff, magnitude in diffs:
        print(f"{count} prompts: max abs difference {diff:.1e} (logits up to {magnitude:.1f})")
    if profile:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
    if compile_decoder:
        compiled_rows(sam, config, times, args.repeats)


def compiled_rows(sam, config: EsamBlipConfig, eager_times: dict, repeats: int) -> None:
    """The decoder compiled in place by torch inductor against its eager times: `| prompts | eager | compiled | ...`."""
    size = config.prompt_encoder_config.image_size
    generator = torch.Generator().manual_seed(1)
    rows = []
    with torch.inference_mode():
        embeddings = torch.randn(1, sam.mask_decoder.config.hidden_size, 64, 64, generator=generator)
        inputs = {}
        for count in PROMPT_COUNTS:
            points = torch.rand(1, count, 1, 2, generator=generator) * size
            labels = torch.ones(1, count, 1, dtype=torch.long)
            inputs[count] = assemble_prompts(points, labels, None, config.prompt_encoder_config.max_num_points)
        eager = {count: sam.predict_masks(embeddings, *inputs[count]) for count in PROMPT_COUNTS}
        sam.mask_decoder.compile(dynamic=False)
        for count in PROMPT_COUNTS:
            start = time.perf_counter()
            got = sam.predict_masks(embeddings, *inputs[count])  # compiles for this shape
            compile_seconds = time.perf_counter() - start
            diff = max((got[0] - eager[count][0]).abs().max().item(), (got[1] - eager[count][1]).abs().max().item())
            assert diff <= TOLERANCE, f"compiled, {count} prompts: outputs differ by {diff:.2e}"
            seconds = timed(lambda count=count: sam.predict_masks(embeddings, *inputs[count]), repeats)
            eager_ms = 1e3 * eager_times[count][0] / count
            rows.append(
                f"| {count} | {eager_ms:.1f} | {1e3 * seconds / count:.1f} | {eager_times[count][0] / seconds:.2f}x | "
                f"{compile_seconds:.0f} | {diff:.1e} |"
            )
    print("| prompts | eager (ms/prompt) | compiled (ms/prompt) | speed-up | compile time (s) | max abs difference |")
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
