"""The built-in model's outputs, pinned to the values the code gave before the core redesign (commit 29ee528)."""

import pytest
import torch
from PIL import Image

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor, builtin_model_path

# Measured with the pre-redesign code on the same inputs; the redesign reproduced them bit for bit.
PINNED = {
    "learned": {
        "iou": [[-0.0301361083984375, 0.8036924004554749, 0.6816195845603943],
                [-0.038090307265520096, 1.0082032680511475, 0.8801900744438171]],
        "itm": [0.9668046236038208, 0.673784613609314],
        "mask_sum": [[4.219824710937125, -108645.93523577426, -110301.13323892496],
                     [6.427883810842758, -123601.94302222366, -129851.13133686339]],
    },
    "gradcam": {
        "iou": [[-0.03461231291294098, 0.9142359495162964, 0.7902745604515076],
                [-0.034654367715120316, 0.9283596873283386, 0.7972975969314575]],
        "itm": [0.9668046236038208, 0.673784613609314],
        "mask_sum": [[-0.7395218969014566, -147255.88901874487, -196324.9854471758],
                     [1.8199971357536349, -154849.78817019798, -202478.79520374537]],
    },
    "points_and_box": {
        "iou": [[-0.035444408655166626, 0.882154643535614, 0.7870116233825684]],
        "mask_sum": [[-0.1336526284170816, -138114.41084499448, -164146.93727696617]],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def builtin():
    path = builtin_model_path()
    model = EsamBlipForPromptableSegmentation.from_pretrained(path).eval()
    processor = EsamBlipProcessor.from_pretrained(path)
    image = Image.open(path.parent.parent / "demo_scene.png").convert("RGB")
    return model, processor, image


def _check(out, pinned: dict) -> None:
    # float32 sums over 65,536 logits: 1e-5 relative is ~100x the run-to-run noise of a reordered reduction.
    torch.testing.assert_close(out.iou_scores[:, 0].tolist(), pinned["iou"], rtol=1e-5, atol=1e-6)
    mask_sum = out.pred_masks.double().sum(dim=(-1, -2))[:, 0].tolist()
    torch.testing.assert_close(mask_sum, pinned["mask_sum"], rtol=1e-5, atol=1e-3)
    if "itm" in pinned:
        torch.testing.assert_close(out.itm_probability.tolist(), pinned["itm"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["learned", "gradcam"])
def test_text_prompts_are_unchanged(builtin, mode):
    model, processor, image = builtin
    inputs = processor(images=image, text=["the red circle", "the blue square"], return_tensors="pt")
    with torch.no_grad():
        _check(model(**inputs, text_prompt_mode=mode), PINNED[mode])


@pytest.mark.slow
def test_point_and_box_prompts_are_unchanged(builtin):
    model, processor, image = builtin
    texts = processor(images=image, text=["the red circle"], return_tensors="pt")
    inputs = processor(
        images=image, input_points=[[[[40, 50]]]], input_boxes=[[[10, 20, 90, 100]]], return_tensors="pt"
    )
    with torch.no_grad():
        out = model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
            input_boxes=inputs["input_boxes"],
            blip_pixel_values=texts["blip_pixel_values"],  # the built-in model's concat fusion reads BLIP
        )
    _check(out, PINNED["points_and_box"])
