"""
The mask decoder's shared-work fast path against the plain computation.

The decoder computes once per image what no prompt changes (dense positional encoding, first-block image keys and
values, first-block image queries), never tiles the image per prompt, folds the per-prompt key/value/output
projections into the few prompt tokens, and runs the upscaling as matmuls. `reference_decode` below is the plain
tiled computation the original EfficientSAM performs, written out with the same weights; outputs must agree to
1e-5 (max abs, float32).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import EFFICIENTSAM_FIXTURE, tiny_sam_config
from safetensors.torch import load_file

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.modeling_efficient_sam import EfficientSamModule
from transformers_esam_blip.output_recording import _ACTIVE_RECORDER
from transformers_esam_blip.prompts import assemble_prompts

TOLERANCE = 1e-5


# The plain computation -----------------------------------------------------------------------------------------


def _attention(module, query, key, value, num_heads):
    """Plain multi-head attention of `EfficientSamTwoWayAttention`'s weights: explicit softmax, no sharing."""

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)

    q, k, v = heads(module.q_proj(query)), heads(module.k_proj(key)), heads(module.v_proj(value))
    probs = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    attended = (probs @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
    return module.out_proj(attended)


def _mlp(mlp, x):
    for layer in mlp.layers:
        x = mlp.act(layer(x))
    return mlp.proj_out(x)


def reference_decode(decoder, image_embeddings, image_pe, sparse, multimask_output):
    """The original's decoder: image tiled per query, every projection of every image token per query."""
    heads = decoder.config.num_attention_heads
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
    for index, layer in enumerate(decoder.transformer.layers):
        if index > 0:
            queries = queries + tokens
        queries = layer.layer_norm1(queries + _attention(layer.self_attn, queries, queries, queries, heads))
        attended = _attention(layer.cross_attn_token_to_image, queries + tokens, keys + key_pe, keys, heads)
        queries = layer.layer_norm2(queries + attended)
        queries = layer.layer_norm3(queries + _mlp(layer.mlp, queries))
        attended = _attention(layer.cross_attn_image_to_token, keys + key_pe, queries + tokens, queries, heads)
        keys = layer.layer_norm4(keys + attended)
    final = decoder.transformer
    attended = _attention(final.final_attn_token_to_image, queries + tokens, keys + key_pe, keys, heads)
    queries = final.layer_norm_final_attn(queries + attended)

    upscaled = keys.transpose(1, 2).reshape(n, channels, height, grid_width)
    for layer in decoder.upscaling_layers:
        upscaled = F.conv_transpose2d(upscaled, layer.conv.weight, layer.conv.bias, stride=2)
        if isinstance(layer.norm, torch.nn.GroupNorm):
            upscaled = F.group_norm(upscaled, 1, layer.norm.weight, layer.norm.bias, layer.norm.eps)
        upscaled = layer.act(upscaled)
    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens]
    hyper = torch.stack([_mlp(mlp, mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    _, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(n, c, h * w)).reshape(n, -1, h, w)
    iou = _mlp(decoder.iou_prediction_head, queries[:, 0])
    selected = slice(1, None) if multimask_output and decoder.num_mask_tokens > 1 else slice(0, 1)
    masks, iou = masks[:, selected], iou[:, selected]
    return masks.reshape(batch_size, num_queries, -1, h, w), iou.reshape(batch_size, num_queries, -1)


# Helpers ---------------------------------------------------------------------------------------------------------


def _randomise(module: torch.nn.Module, scale: float) -> None:
    """Weights ~ N(0, scale / sqrt(fan_in)), norms ~ 1 ± 0.2: logits of order one to ten (the default init gives ~1e-5)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "norm" in name.split(".")[-2]:
                parameter.copy_(
                    (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(parameter.shape, generator=generator)
                )
            else:
                fan_in = parameter.shape[1] if parameter.ndim > 1 else parameter.shape[0]
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale / math.sqrt(fan_in))


def _sam(**decoder_overrides) -> EfficientSamModule:
    config = tiny_sam_config()
    for key, value in decoder_overrides.items():
        setattr(config.mask_decoder_config, key, value)
    sam = EfficientSamModule(config).eval()
    _randomise(sam, scale=1.0)
    return sam


def _prompts(sam: EfficientSamModule, batch: int, queries: int, generator: torch.Generator) -> torch.Tensor:
    size = sam.config.prompt_encoder_config.image_size
    points = torch.rand(batch, queries, 3, 2, generator=generator) * size
    labels = torch.randint(-1, 4, (batch, queries, 3), generator=generator)
    return sam.embed_prompts(*assemble_prompts(points, labels, None, 6))


def _max_diffs(actual, expected) -> tuple[float, float]:
    assert actual[0].shape == expected[0].shape and actual[1].shape == expected[1].shape
    return (actual[0] - expected[0]).abs().max().item(), (actual[1] - expected[1]).abs().max().item()


# Tests -------------------------------------------------------------------------------------------------------------

CONFIGS = {
    "tiny": {},
    "one_block_four_heads": {"num_hidden_layers": 1, "num_attention_heads": 4},
    "three_blocks_three_upscalings": {"num_hidden_layers": 3, "upscaling_hidden_sizes": [8, 8, 4]},
    "one_upscaling_no_downsample": {"upscaling_hidden_sizes": [4], "attention_downsample_rate": 1},
    "single_mask_token": {"num_multimask_outputs": 1},
}


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize(("batch", "queries"), [(1, 1), (2, 3), (3, 7)])
@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_decoder_matches_plain_tiled_computation(overrides, batch, queries, multimask_output):
    sam = _sam(**overrides)
    generator = torch.Generator().manual_seed(batch * 10 + queries)
    embeddings = torch.randn(batch, 16, 8, 8, generator=generator)
    with torch.no_grad():
        sparse = _prompts(sam, batch, queries, generator)
        image_pe = sam.prompt_encoder.get_dense_pe()
        expected = reference_decode(sam.mask_decoder, embeddings, image_pe, sparse, multimask_output)
        actual = sam.decode(embeddings, sparse, multimask_output)
    assert expected[0].abs().max() > 1.0, "logits too small for the tolerance to mean anything"
    mask_diff, iou_diff = _max_diffs(actual, expected)
    assert mask_diff <= TOLERANCE and iou_diff <= TOLERANCE, (mask_diff, iou_diff)


def test_no_decoder_blocks():
    """With no two-way blocks the image stays shared up to the final attention."""
    sam = _sam(num_hidden_layers=0)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator)
    with torch.no_grad():
        sparse = _prompts(sam, 2, 3, generator)
        expected = reference_decode(sam.mask_decoder, embeddings, sam.prompt_encoder.get_dense_pe(), sparse, True)
        actual = sam.decode(embeddings, sparse, True)
    assert max(_max_diffs(actual, expected)) <= TOLERANCE


def test_each_query_is_independent_of_the_others():
    """Sharing the image across queries must not mix them: a query decoded alone equals it decoded among others."""
    sam = _sam()
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator)
    with torch.no_grad():
        sparse = _prompts(sam, 2, 5, generator)
        together = sam.decode(embeddings, sparse)
        alone = sam.decode(embeddings[1:], sparse[1:, 3:4])
    assert (together[0][1:, 3:4] - alone[0]).abs().max() <= TOLERANCE
    assert (together[1][1:, 3:4] - alone[1]).abs().max() <= TOLERANCE


def test_gradients_match_plain_computation():
    """Training goes through the fast path too: its parameter and input gradients equal the plain computation's."""
    sam = _sam()
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator, requires_grad=True)
    sparse = _prompts(sam, 2, 3, generator).detach()
    weights = torch.randn(2, 3, 3, 32, 32, generator=generator)

    def grads(decode):
        sam.zero_grad()
        embeddings.grad = None
        masks, iou = decode()
        ((masks * weights).sum() + iou.square().sum()).backward()
        named = {name: p.grad.clone() for name, p in sam.mask_decoder.named_parameters() if p.grad is not None}
        return named, embeddings.grad.clone()

    image_pe = sam.prompt_encoder.get_dense_pe()
    expected, expected_input = grads(lambda: reference_decode(sam.mask_decoder, embeddings, image_pe, sparse, True))
    actual, actual_input = grads(lambda: sam.decode(embeddings, sparse, True))
    # The plain computation runs every hypernetwork and drops token 0's mask; the fast path never runs it.
    unused = {name for name in expected if name.startswith("output_hypernetworks_mlps.0.")}
    assert unused and all(expected[name].abs().max() == 0 for name in unused)
    assert actual.keys() == expected.keys() - unused
    for name, grad in actual.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(actual_input, expected_input, rtol=1e-4, atol=1e-4)


def test_recording_path_matches_fast_path():
    """Recording attentions runs the plain tiled path through the modules (for the hooks): same outputs."""
    sam = _sam()
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator)
    with torch.no_grad():
        sparse = _prompts(sam, 2, 4, generator)
        fast = sam.decode(embeddings, sparse)
        token = _ACTIVE_RECORDER.set({"mask_decoder_attentions": []})
        try:
            recorded = sam.decode(embeddings, sparse)
        finally:
            _ACTIVE_RECORDER.reset(token)
    assert max(_max_diffs(recorded, fast)) <= TOLERANCE


def test_dense_positional_encoding_is_cached_and_invalidated():
    sam = _sam()
    encoder = sam.prompt_encoder
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first  # cached
    assert encoder.get_dense_pe(torch.float64).dtype == torch.float64
    torch.testing.assert_close(first, encoder.shared_embedding._compute_dense(8), rtol=0, atol=0)
    # An in-place write (what `load_state_dict` does) bumps the buffer's version: recomputed.
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    state["prompt_encoder.shared_embedding.positional_embedding"].mul_(2)
    sam.load_state_dict(state)
    reloaded = encoder.get_dense_pe()
    assert reloaded is not first and not torch.allclose(reloaded, first)
    torch.testing.assert_close(reloaded, encoder.shared_embedding._compute_dense(8), rtol=0, atol=0)
    # A dtype move replaces the buffer.
    sam.to(torch.float64)
    assert encoder.get_dense_pe().dtype == torch.float64
    # Made under inference mode, the cached tensor still serves autograd.
    sam.to(torch.float32)
    with torch.inference_mode():
        encoder.get_dense_pe()
    assert not encoder.get_dense_pe().is_inference()


def test_dense_positional_encoding_after_from_pretrained(tmp_path):
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path).eval()
    encoders = (model.model.sam.prompt_encoder, reloaded.model.sam.prompt_encoder)
    torch.testing.assert_close(encoders[1].get_dense_pe(), encoders[0].get_dense_pe(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def converted_fixture(tmp_path_factory):
    from transformers_esam_blip.conversion.checkpoint import convert_checkpoint

    output = tmp_path_factory.mktemp("converted") / "esam"
    convert_checkpoint(output, efficientsam=EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt")
    return output


@pytest.mark.parametrize("multimask_output", [True, False])
def test_converted_fixture_matches_plain_computation(converted_fixture, multimask_output):
    """The real (EfficientSAM-S) decoder weights on the fixture's image embedding and prompts."""
    model = EsamBlipForPromptableSegmentation.from_pretrained(converted_fixture).eval()
    processor = EsamBlipProcessor.from_pretrained(converted_fixture)
    sam = model.model.sam
    meta = json.loads((EFFICIENTSAM_FIXTURE / "meta.json").read_text())
    reference = load_file(EFFICIENTSAM_FIXTURE / "reference_outputs.safetensors")
    from PIL import Image

    image = Image.open(EFFICIENTSAM_FIXTURE / "image.png").convert("RGB")
    points = [[q["points"] for q in meta["queries"]]]
    labels = [[q["labels"] for q in meta["queries"]]]
    inputs = processor(images=image, input_points=points, input_labels=labels, return_tensors="pt")
    embeddings = reference["image_embeddings"].float()
    # Two images (the second flipped) so that batch > 1 is covered with real weights too.
    embeddings = torch.cat([embeddings, embeddings.flip(-1)])
    prompt_points = inputs["input_points"].expand(2, -1, -1, -1)
    prompt_labels = inputs["input_labels"].expand(2, -1, -1)
    with torch.no_grad():
        sparse = sam.embed_prompts(*assemble_prompts(prompt_points, prompt_labels, None, 6))
        expected = reference_decode(
            sam.mask_decoder, embeddings, sam.prompt_encoder.get_dense_pe(), sparse, multimask_output
        )
        actual = sam.decode(embeddings, sparse, multimask_output)
    mask_diff, iou_diff = _max_diffs(actual, expected)
    assert mask_diff <= TOLERANCE and iou_diff <= TOLERANCE, (mask_diff, iou_diff)
    if multimask_output:  # and the original's own outputs, at the conversion test's tolerance
        assert (actual[0][:1] - reference["low_res_logits"]).abs().max() <= 2e-3
