"""BLIP Grad-CAM speed: this package's attention-only gradient vs LAVIS's full `loss.backward()`, from pixels.

Random weights at BLIP-base ITM size (ViT-B/16 at 384x384, BERT-base with cross-attention in all 12 layers), one image
and one caption. The LAVIS-style baseline runs the ViT with autograd, calls `backward()` on the summed match logit
(gradients for every parameter and through the ViT) and reads the attention gradient from a tensor hook, as LAVIS's
`compute_gradcam` does. Both run in one process, interleaved, on the same model; the maps must agree.

    python benchmarks/bench_gradcam.py [--repeats 3] [--threads N]
"""

import statistics

import torch
from common import benchmark_arguments, wall_times

from transformers_esam_blip import EsamBlipConfig, EsamBlipForImageTextMatching
from transformers_esam_blip.gradcam import gradcam_from_cross_attention
from transformers_esam_blip.modeling_blip_itm import EsamBlipImageTextModule


def blip_base_config(**extra) -> EsamBlipConfig:
    """BLIP-base ITM sizes (LAVIS `blip_itm_base.yaml`), plus `extra` config fields (e.g. an EfficientSAM half)."""
    return EsamBlipConfig(
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 384,
            "patch_size": 16,
            "layer_norm_eps": 1e-6,
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": 30524,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        image_text_hidden_size=256,
        enc_token_id=30523,
        **extra,
    )


def lavis_style_gradcam(
    blip: EsamBlipImageTextModule, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """LAVIS's recipe: ViT with autograd, `loss.backward()` through everything, gradient saved by a tensor hook."""
    saved: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        saved["attention"] = output[1]
        output[1].register_hook(lambda grad: saved.__setitem__("grad", grad))

    layer = blip.text_encoder.encoder.layer[blip.config.gradcam_block_num].crossattention.self
    handle = layer.register_forward_hook(keep)
    try:
        blip.zero_grad()
        image_embeds = blip.get_image_features(pixel_values)
        logits = blip.itm_logits(input_ids, attention_mask, image_embeds)
        logits[:, 1].sum().backward()
    finally:
        handle.remove()
    gradcam = gradcam_from_cross_attention(saved["attention"].detach(), saved["grad"], attention_mask, blip.grid_size)
    blip.zero_grad(set_to_none=True)
    return gradcam


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0])

    model = EsamBlipForImageTextMatching(blip_base_config()).eval()
    blip = model.model.blip
    pixel_values = torch.randn(1, 3, 384, 384)
    input_ids = torch.randint(1000, 30000, (1, 12))
    input_ids[0, 0], input_ids[0, -1] = 101, 102
    attention_mask = torch.ones_like(input_ids)

    def ours() -> torch.Tensor:
        return model.compute_gradcam(input_ids, attention_mask, blip_pixel_values=pixel_values).gradcam

    def lavis() -> torch.Tensor:
        return lavis_style_gradcam(blip, pixel_values, input_ids, attention_mask)

    reference = lavis()  # also the warm-up of both paths
    difference = (ours() - reference).abs().max().item()
    ours_times, lavis_times = [], []
    for _ in range(args.repeats):
        lavis_times += wall_times(lavis, 1)
        ours_times += wall_times(ours, 1)
    ours_median, lavis_median = statistics.median(ours_times), statistics.median(lavis_times)

    parameters = sum(p.numel() for p in blip.parameters()) / 1e6
    print(
        f"threads: {torch.get_num_threads()}, BLIP ITM {parameters:.1f}M parameters, image 384x384 (24x24 grid), "
        f"{input_ids.shape[1]} tokens, block {blip.config.gradcam_block_num}, {args.repeats} repeats, "
        f"max |gradcam| = {reference.abs().max().item():.1e}, max |ours - LAVIS-style| = {difference:.1e}"
    )
    # Both columns: on a shared machine the median absorbs noise from other processes, the minimum does not.
    print("| Grad-CAM from pixels | median (s) | min (s) | ratio of medians | ratio of minima |")
    print("|---|---:|---:|---:|---:|")
    print(f"| LAVIS-style (full `loss.backward()`) | {lavis_median:.3f} | {min(lavis_times):.3f} | 1.00 | 1.00 |")
    print(
        f"| this package (`torch.autograd.grad` on one attention map) | {ours_median:.3f} | {min(ours_times):.3f} "
        f"| {ours_median / lavis_median:.2f} | {min(ours_times) / min(lavis_times):.2f} |"
    )


if __name__ == "__main__":
    main()
