"""EfficientSAM half: shapes, prompt assembly, batching, save/load, Auto classes and input validation."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_sam_config
from transformers import AutoModel, AutoModelForMaskGeneration

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipModel
from transformers_esam_blip.prompts import assemble_prompts


@pytest.fixture
def model() -> EsamBlipForPromptableSegmentation:
    return EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()


def test_output_shapes_and_single_mask(model):
    pixel_values = torch.randn(2, 3, 64, 64)
    points = torch.rand(2, 3, 2, 2) * 64
    labels = torch.ones(2, 3, 2, dtype=torch.long)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_points=points, input_labels=labels)
        single = model(
            image_embeddings=out.image_embeddings, input_points=points, input_labels=labels, multimask_output=False
        )
    assert out.pred_masks.shape == (2, 3, 3, 32, 32)
    assert out.iou_scores.shape == (2, 3, 3)
    assert out.image_embeddings.shape == (2, 16, 8, 8)
    assert single.pred_masks.shape == (2, 3, 1, 32, 32)
    assert torch.isfinite(out.pred_masks).all()


def test_cached_embeddings_equal_pixels(model):
    pixel_values = torch.randn(1, 3, 64, 64)
    points = torch.tensor([[[[10.0, 20.0]]]])
    with torch.no_grad():
        direct = model(pixel_values=pixel_values, input_points=points)
        embeddings = model.get_image_embeddings(pixel_values)
        cached = model(image_embeddings=embeddings, input_points=points)
    torch.testing.assert_close(direct.pred_masks, cached.pred_masks, rtol=0, atol=0)


def test_boxes_equal_corner_points(model):
    embeddings = torch.randn(1, 16, 8, 8)
    box = torch.tensor([[[5.0, 6.0, 40.0, 50.0]]])
    corners = box.reshape(1, 1, 2, 2)
    labels = torch.tensor([[[2, 3]]])
    with torch.no_grad():
        from_box = model(image_embeddings=embeddings, input_boxes=box)
        from_points = model(image_embeddings=embeddings, input_points=corners, input_labels=labels)
    torch.testing.assert_close(from_box.pred_masks, from_points.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(from_box.iou_scores, from_points.iou_scores, rtol=0, atol=0)


def test_padding_to_max_points_is_invariant(model):
    embeddings = torch.randn(1, 16, 8, 8)
    points = torch.tensor([[[[10.0, 20.0], [30.0, 31.0]]]])
    labels = torch.tensor([[[1, 0]]])
    padded_points = torch.cat([points, torch.full((1, 1, 3, 2), -1.0)], dim=2)
    padded_labels = torch.cat([labels, torch.full((1, 1, 3), -1)], dim=2)
    with torch.no_grad():
        short = model(image_embeddings=embeddings, input_points=points, input_labels=labels)
        long = model(image_embeddings=embeddings, input_points=padded_points, input_labels=padded_labels)
    torch.testing.assert_close(short.pred_masks, long.pred_masks, rtol=0, atol=0)


def test_assemble_prompts_drops_padding_before_real_prompts(caplog):
    points = torch.tensor([[[[1.0, 1.0], [-1, -1], [-1, -1], [-1, -1], [-1, -1], [2.0, 2.0]]]])
    labels = torch.tensor([[[1, -1, -1, -1, -1, 0]]])
    box = torch.tensor([[[3.0, 3.0, 9.0, 9.0]]])
    merged, merged_labels = assemble_prompts(points, labels, box, max_num_points=6)
    assert merged_labels.tolist() == [[[1, 0, 2, 3, -1, -1]]]
    assert merged[0, 0, :4].tolist() == [[1, 1], [2, 2], [3, 3], [9, 9]]
    too_many = torch.rand(1, 1, 7, 2)
    merged, merged_labels = assemble_prompts(too_many, torch.ones(1, 1, 7, dtype=torch.long), None, 6)
    assert merged.shape == (1, 1, 6, 2)
    torch.testing.assert_close(merged, too_many[:, :, :6])


def test_batch_with_ragged_prompts_equals_one_by_one(model):
    pixel_values = torch.randn(2, 3, 64, 64)
    # Image 0: two queries (two points, one point + padding); image 1: one real query and a padded one.
    points = torch.tensor(
        [
            [[[10.0, 12.0], [30.0, 40.0]], [[50.0, 5.0], [-1.0, -1.0]]],
            [[[20.0, 22.0], [-1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]],
        ]
    )
    labels = torch.tensor([[[1, 0], [1, -1]], [[1, -1], [-1, -1]]])
    with torch.no_grad():
        batched = model(pixel_values=pixel_values, input_points=points, input_labels=labels)
        first = model(pixel_values=pixel_values[:1], input_points=points[:1], input_labels=labels[:1])
        second = model(pixel_values=pixel_values[1:], input_points=points[1:, :1, :1], input_labels=labels[1:, :1, :1])
    torch.testing.assert_close(batched.pred_masks[:1], first.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.iou_scores[:1], first.iou_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.pred_masks[1:, :1], second.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.iou_scores[1:, :1], second.iou_scores, rtol=0, atol=1e-5)


def test_sdpa_matches_explicit_attention(tmp_path, model):
    model.save_pretrained(tmp_path)
    eager = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config.sam_vision_config._attn_implementation == "eager"
    pixel_values = torch.randn(1, 3, 64, 64)
    points = torch.tensor([[[[10.0, 20.0]]]])
    with torch.no_grad():
        a = model(pixel_values=pixel_values, input_points=points)
        b = eager(pixel_values=pixel_values, input_points=points)
    torch.testing.assert_close(a.pred_masks, b.pred_masks, rtol=0, atol=1e-4)


def test_save_load_is_bit_identical(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    pixel_values = torch.randn(1, 3, 64, 64)
    points = torch.tensor([[[[10.0, 20.0]]]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixel_values, input_points=points).pred_masks,
            reloaded(pixel_values=pixel_values, input_points=points).pred_masks,
            rtol=0,
            atol=0,
        )


def test_half_precision_checkpoint_reloads_in_requested_dtype(tmp_path, model):
    model.to(torch.float16).save_pretrained(tmp_path)
    as_saved = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path)
    as_float = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path, dtype=torch.float32)
    assert as_saved.dtype == torch.float16
    assert as_float.dtype == torch.float32


def test_auto_classes(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert isinstance(AutoModelForMaskGeneration.from_pretrained(tmp_path), EsamBlipForPromptableSegmentation)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, EsamBlipModel)
    torch.testing.assert_close(base.sam.vision_encoder.pos_embed, model.model.sam.vision_encoder.pos_embed)


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "config.json").read_text()
    assert '"auto_map"' in config
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["transformers_esam_blip"] = None  # importing the package now fails: prove it is not needed
        import torch
        from transformers import AutoModelForMaskGeneration
        model = AutoModelForMaskGeneration.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        out = model(pixel_values=torch.zeros(1, 3, 64, 64), input_points=torch.tensor([[[[3.0, 4.0]]]]))
        assert "transformers_esam_blip" not in type(model).__module__.split(".")[0], type(model).__module__
        print(type(model).__name__, tuple(out.pred_masks.shape))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "EsamBlipForPromptableSegmentation (1, 1, 3, 32, 32)" in result.stdout


def test_blip_only_checkpoint_cannot_segment():
    from transformers_esam_blip import EsamBlipConfig

    config = EsamBlipConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "intermediate_size": 64,
        },
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 50,
        },
        gradcam_block_num=1,
    )
    model = EsamBlipForPromptableSegmentation(config)
    with pytest.raises(ValueError, match="no EfficientSAM half"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), input_points=torch.zeros(1, 1, 1, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a prompt"),
        ({"input_points": torch.zeros(1, 2, 2)}, r"input_points.*\[batch, queries, points, 2\].*\(1, 2, 2\)"),
        ({"input_points": torch.zeros(1, 1, 2, 3)}, r"input_points.*\(1, 1, 2, 3\)"),
        ({"input_points": [[[[1.0, 2.0]]]]}, "input_points.*torch.Tensor.*list"),
        ({"input_points": torch.zeros(1, 1, 2, 2), "input_labels": torch.ones(1, 1, 3)}, r"input_labels.*\(1, 1, 2\)"),
        ({"input_points": torch.zeros(1, 1, 1, 2), "input_labels": torch.tensor([[[5]]])}, r"input_labels.*\[5\]"),
        ({"input_points": torch.tensor([[[[70.0, 3.0]]]])}, r"encoder frame \(\[0, 64\]"),
        ({"input_points": torch.tensor([[[[-5.0, 3.0]]]])}, r"encoder frame"),
        ({"input_points": torch.zeros(2, 1, 1, 2)}, "batch size 2 but the images have 1"),
        ({"input_boxes": torch.tensor([[[30.0, 5.0, 10.0, 20.0]]])}, "x2 >= x1"),
        ({"input_boxes": torch.zeros(1, 4)}, r"input_boxes.*\(1, 4\)"),
        ({"input_points": torch.zeros(1, 2, 1, 2), "input_boxes": torch.zeros(1, 3, 4)}, "same number of queries"),
        ({"input_labels": torch.ones(1, 1, 1)}, "without `input_points`"),
    ],
)
def test_bad_prompts_raise_clear_errors(model, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model(image_embeddings=torch.zeros(1, 16, 8, 8), **kwargs)


def test_bad_images_raise_clear_errors(model):
    points = torch.zeros(1, 1, 1, 2)
    with pytest.raises(ValueError, match="exactly one of `pixel_values` and `image_embeddings`"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), image_embeddings=torch.zeros(1, 16, 8, 8), input_points=points)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_points=points)
    with pytest.raises(ValueError, match=r"pixel_values.*\[batch, 3, 64, 64\].*\(1, 3, 32, 32\)"):
        model(pixel_values=torch.zeros(1, 3, 32, 32), input_points=points)
    with pytest.raises(ValueError, match=r"image_embeddings.*\[batch, 16, 8, 8\].*\(1, 16, 4, 4\)"):
        model(image_embeddings=torch.zeros(1, 16, 4, 4), input_points=points)


def test_attention_probabilities_and_eager_path_match_sdpa(model):
    from transformers_esam_blip.modeling_efficient_sam import EfficientSamTwoWayAttention, EfficientSamVisionAttention

    vision = next(m for m in model.modules() if isinstance(m, EfficientSamVisionAttention))
    hidden = torch.randn(2, 64, 32)
    with torch.no_grad():
        fast, no_probs = vision(hidden)
        eager, probs = vision(hidden, output_attentions=True)
    assert no_probs is None
    assert probs.shape == (2, 2, 64, 64)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 64))
    torch.testing.assert_close(eager, fast, rtol=0, atol=1e-5)

    cross = model.model.sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    assert isinstance(cross, EfficientSamTwoWayAttention)
    tokens, image = torch.randn(3, 11, 16), torch.randn(3, 64, 16)
    with torch.no_grad():
        fast, _ = cross(tokens, image, image)
        eager, probs = cross(tokens, image, image, output_attentions=True)
    assert probs.shape == (3, 2, 11, 64)
    torch.testing.assert_close(eager, fast, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 deprecates the name, still honours it
def test_blocks_are_gradient_checkpointing_layers(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    sam = model.model.sam
    blocks = [*sam.vision_encoder.layers, *sam.mask_decoder.transformer.layers]
    assert all(isinstance(block, GradientCheckpointingLayer) for block in blocks)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert all(block.gradient_checkpointing for block in blocks)
    assert blocks[0]._gradient_checkpointing_func.keywords == {"use_reentrant": True}
    assert model.model.sam.vision_encoder.get_input_embeddings() is sam.vision_encoder.patch_embed
