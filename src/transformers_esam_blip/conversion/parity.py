"""How closely a converted checkpoint reproduces its source, measured at conversion time on a probe input.

The conversion command computes the outputs twice on one probe input and writes the largest differences into the
checkpoint's model card and `conversion.json`:

- **source**, in float32: the EfficientSAM half with the source tensors loaded into this package's modules in memory
  (this package's EfficientSAM code is checked against the original code's outputs by its tests, `tests/fixtures`;
  the original code does not run here); the BLIP half with the source tensors in `transformers`'
  `BlipForImageTextRetrieval`, an implementation independent of this package's ITM code.
- **checkpoint**: the written folder reloaded with `from_pretrained` in float32, so a `float16`/`bfloat16` checkpoint
  shows the rounding of its stored weights, and anything lost in saving (a config field, a buffer) shows too.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import BatchFeature, BlipConfig, BlipForImageTextRetrieval

from ..configuration_esam_blip import EsamBlipConfig
from ..processing_esam_blip import EsamBlipProcessor

# The probe: a fixed smooth pseudo-random image (not square, so the per-axis rescaling is exercised), one point query
# and one box query for EfficientSAM, and two captions for BLIP.
PROBE_IMAGE_SIZE = (240, 320)  # (height, width)
PROBE_SEED = 0
PROBE_POINTS = [[[[160.0, 120.0]], [[40.0, 30.0], [280.0, 210.0]]]]
PROBE_LABELS = [[[1], [2, 3]]]
PROBE_TEXTS = ["a dog on the grass", "a red ball on a table"]
PROBE_DESCRIPTION = (
    f"a fixed pseudo-random {PROBE_IMAGE_SIZE[1]}x{PROBE_IMAGE_SIZE[0]} RGB image (seed {PROBE_SEED}); EfficientSAM: "
    "one foreground point and one box; BLIP: the captions " + " and ".join(f'"{text}"' for text in PROBE_TEXTS)
)
SOURCE_REFERENCES = {
    "EfficientSAM": "source weights, float32, in this package's EfficientSAM modules",
    "BLIP": "source weights, float32, in transformers' BlipForImageTextRetrieval",
}


@dataclass(frozen=True)
class ParityMeasurement:
    """
    One compared output.

    Attributes:
        part: `"EfficientSAM"` or `"BLIP"`.
        output: what was compared (`"image embeddings"`, `"ITM logits"`, ...).
        shape: its shape on the probe input.
        reference: what the checkpoint was compared with.
        max_abs_error: largest absolute difference between the checkpoint's and the reference's output.
        reference_max_abs: largest absolute value of the reference output (the scale of the error).
    """

    part: str
    output: str
    shape: tuple[int, ...]
    reference: str
    max_abs_error: float
    reference_max_abs: float


def probe_image() -> np.ndarray:
    """The probe image: `uint8 [H, W, 3]`, smooth colour fields plus a little noise, the same on every machine."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    coarse = torch.rand(1, 3, 6, 8, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=PROBE_IMAGE_SIZE, mode="bilinear", align_corners=False)[0]
    image = image + 0.05 * torch.randn(image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def probe_inputs(processor: EsamBlipProcessor, config: EsamBlipConfig) -> BatchFeature:
    """The processor's tensors for the probe, with the prompts of the halves `config` has."""
    kwargs = {}
    if config.has_segmentation:
        kwargs.update(input_points=PROBE_POINTS, input_labels=PROBE_LABELS)
    if config.has_blip:
        kwargs["text"] = PROBE_TEXTS
    return processor(images=probe_image(), return_tensors="pt", **kwargs)


def _efficient_sam_outputs(model: torch.nn.Module, probe: BatchFeature) -> dict[tuple[str, str], Tensor]:
    embeddings = model.get_image_embeddings(probe["pixel_values"])
    out = model(image_embeddings=embeddings, input_points=probe["input_points"], input_labels=probe["input_labels"])
    return {
        ("EfficientSAM", "image embeddings"): embeddings,
        ("EfficientSAM", "low-res mask logits"): out.pred_masks,
        ("EfficientSAM", "IoU predictions"): out.iou_scores,
    }


def _encoder_input_ids(input_ids: Tensor, enc_token_id: int) -> Tensor:
    ids = input_ids.clone()
    ids[:, 0] = enc_token_id  # LAVIS's ITM reads [ENC] first; transformers' BLIP takes the ids as given
    return ids


@torch.no_grad()
def source_outputs(
    model: torch.nn.Module, blip_weights: Mapping[str, Tensor] | None, probe: BatchFeature
) -> dict[tuple[str, str], Tensor]:
    """
    The reference outputs on the probe, in float32.

    Args:
        model: the converted model holding the source tensors, in float32, before it is saved.
        blip_weights: the BLIP source tensors under `transformers`' `BlipForImageTextRetrieval` names (what
            `convert_blip_state_dict` returns), `None` without the BLIP half.
        probe: [`probe_inputs`].

    Returns:
        `{(part, output): tensor}`.
    """
    config = model.config
    outputs = _efficient_sam_outputs(model, probe) if config.has_segmentation else {}
    if blip_weights is not None:
        reference = BlipForImageTextRetrieval(
            BlipConfig(
                vision_config=config.vision_config.to_dict(),
                text_config=config.text_config.to_dict(),
                image_text_hidden_size=config.image_text_hidden_size,
            )
        ).eval()
        reference.load_state_dict({name: value.float() for name, value in blip_weights.items()}, strict=True)
        num_texts = probe["input_ids"].shape[0]
        outputs[("BLIP", "ITM logits")] = reference(
            input_ids=_encoder_input_ids(probe["input_ids"], config.enc_token_id),
            attention_mask=probe["attention_mask"],
            pixel_values=probe["blip_pixel_values"].expand(num_texts, -1, -1, -1),
        ).itm_score
        outputs[("BLIP", "ITC similarity")] = reference(
            input_ids=probe["input_ids"],
            attention_mask=probe["attention_mask"],
            pixel_values=probe["blip_pixel_values"],
            use_itm_head=False,
        ).itm_score
    return outputs


@torch.no_grad()
def checkpoint_outputs(model: torch.nn.Module, probe: BatchFeature) -> dict[tuple[str, str], Tensor]:
    """The same outputs as [`source_outputs`] from the saved checkpoint (`model`, reloaded in float32)."""
    config = model.config
    outputs = _efficient_sam_outputs(model, probe) if config.has_segmentation else {}
    if config.has_blip:
        blip = model.base_model.require_blip()
        image_embeds = blip.get_image_features(probe["blip_pixel_values"])
        num_texts = probe["input_ids"].shape[0]
        outputs[("BLIP", "ITM logits")] = blip.itm_logits(
            probe["input_ids"], probe["attention_mask"], image_embeds.expand(num_texts, -1, -1)
        )
        outputs[("BLIP", "ITC similarity")] = blip.itc_similarity(
            probe["input_ids"], probe["attention_mask"], image_embeds
        )
    return outputs


def compare_outputs(
    reference: Mapping[tuple[str, str], Tensor], checkpoint: Mapping[tuple[str, str], Tensor]
) -> list[ParityMeasurement]:
    """One [`ParityMeasurement`] per output of `reference`; a missing output or another shape is a `ValueError`."""
    measurements = []
    for (part, output), expected in reference.items():
        actual = checkpoint.get((part, output))
        if actual is None or actual.shape != expected.shape:
            found = "nothing" if actual is None else f"shape {tuple(actual.shape)}"
            raise ValueError(
                f"The written checkpoint does not reproduce the source: {part} {output} should have shape "
                f"{tuple(expected.shape)}, got {found}."
            )
        expected, actual = expected.float(), actual.float()
        measurements.append(
            ParityMeasurement(
                part=part,
                output=output,
                shape=tuple(expected.shape),
                reference=SOURCE_REFERENCES[part],
                max_abs_error=(actual - expected).abs().max().item(),
                reference_max_abs=expected.abs().max().item(),
            )
        )
    return measurements


__all__ = [
    "PROBE_DESCRIPTION",
    "ParityMeasurement",
    "checkpoint_outputs",
    "compare_outputs",
    "probe_image",
    "probe_inputs",
    "source_outputs",
]
