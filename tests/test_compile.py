"""`torch.compile` of the mask decoder (the per-prompt cost): the same masks and IoUs as eager, the same checkpoint."""

import pytest
import torch
from conftest import tiny_sam_config

from transformers_esam_blip import EsamBlipForPromptableSegmentation

SIZE = 64  # tiny config: 64x64 input, 8x8 embedding grid


def _prompts(generator: torch.Generator, queries: int) -> dict[str, torch.Tensor]:
    return {
        "input_points": torch.rand(1, queries, 2, 2, generator=generator) * SIZE,
        "input_labels": torch.randint(0, 2, (1, queries, 2), generator=generator),
    }


@pytest.mark.slow
def test_compiled_decoder_matches_eager_and_saves_the_same_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    with torch.no_grad():  # logits of order one: the default init's ~1e-5 would make any tolerance vacuous
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, SIZE, SIZE, generator=generator)
    prompts = {count: _prompts(generator, count) for count in (3, 5)}
    with torch.inference_mode():
        eager = {count: model(pixel_values=pixel_values, **prompts[count]) for count in prompts}
        keys = list(model.state_dict())
        model.model.sam.mask_decoder.compile(dynamic=False)  # in place: the module and its parameter names stay
        for count in prompts:  # a second prompt count recompiles for its shape
            compiled = model(pixel_values=pixel_values, **prompts[count])
            assert eager[count].pred_masks.abs().max() > 0.5
            # float32 with fused kernels: summation order differs, so equal to rounding (observed ~1e-7).
            torch.testing.assert_close(compiled.pred_masks, eager[count].pred_masks, rtol=0, atol=1e-5)
            torch.testing.assert_close(compiled.iou_scores, eager[count].iou_scores, rtol=0, atol=1e-5)
    assert list(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    reloaded = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        again = reloaded(pixel_values=pixel_values, **prompts[3])
    torch.testing.assert_close(again.pred_masks, eager[3].pred_masks, rtol=0, atol=1e-6)
