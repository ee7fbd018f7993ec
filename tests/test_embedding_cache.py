"""Training on cached image embeddings: the same loss and gradients as from pixels, guards, a fresh decoder, the CLI."""

import re

import datasets
import pytest
import torch
from test_fusion import tiny_joint_config

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.modeling_efficient_sam import MASK_PROMPT_ZERO_INIT
from transformers_esam_blip.training import (
    CACHED_EMBEDDING_COLUMNS,
    EsamBlipTrainingCollator,
    apply_freezing,
    cache_image_embeddings,
    check_cacheable,
    main,
    reinitialize_prompt_decoder,
    tiny_processor,
)
from transformers_esam_blip.training.prompt_mix import EsamBlipPromptMixCollator, PromptMix


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> datasets.Dataset:
    cache = tmp_path_factory.mktemp("data")
    return synthetic_referring_dataset(
        4, seed=3, cache_dir=str(cache), progress=False, image_size=64, min_side=16, max_side=32
    )


def _model(**overrides) -> EsamBlipForPromptableSegmentation:
    torch.manual_seed(0)
    config = tiny_joint_config(prompter_source="text", fusion_type="concat", **overrides)
    config.prompt_encoder_config.mask_prompts = True
    return EsamBlipForPromptableSegmentation(config)


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("kind", ["text", "points", "box"])
def test_cached_batches_give_the_loss_and_gradients_of_pixel_batches(dataset, kind):
    model, processor = _model(), tiny_processor()
    apply_freezing(model, "prompt_decoder")
    cached = cache_image_embeddings(model, processor, dataset, batch_size=3, progress=False)
    assert set(CACHED_EMBEDDING_COLUMNS) <= set(cached.column_names)
    assert cached[0]["image_embeddings"].shape == (16, 8, 8)  # tiny: width 16, 8x8 grid
    assert cached[0]["blip_image_embeds"].shape == (5, 32)  # [CLS] + 2x2 patches, width 32
    mix = PromptMix(weights={kind: 1.0}, seed=1)
    rows = [i for i in range(len(dataset)) if dataset[i]["match_label"] == 1][:4]
    plain = EsamBlipPromptMixCollator(processor, model.config, mix)([dataset[i] for i in rows])
    fast = EsamBlipPromptMixCollator(processor, model.config, mix)([cached[i] for i in rows])
    assert "pixel_values" not in fast and "blip_pixel_values" not in fast
    assert {key for key in plain if "pixel" not in key} == {key for key in fast if "embed" not in key}
    for key in ("input_points", "input_labels", "input_boxes", "input_ids", "labels"):
        if key in plain:
            torch.testing.assert_close(fast[key], plain[key])
    model.train()
    loss, grads = _loss_and_grads(model, plain)
    cached_loss, cached_grads = _loss_and_grads(model, fast)
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == cached_grads.keys() and grads
    assert all(name.startswith("model.sam.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cache_is_reused_and_follows_the_weights(dataset):
    model, processor = _model(), tiny_processor()
    apply_freezing(model, "prompt_decoder")
    first = cache_image_embeddings(model, processor, dataset, progress=False)
    again = cache_image_embeddings(model, processor, dataset, progress=False)
    assert again._fingerprint == first._fingerprint
    with torch.no_grad():
        model.model.sam.vision_encoder.neck.conv1.weight.add_(0.5)
    changed = cache_image_embeddings(model, processor, dataset, progress=False)
    assert changed._fingerprint != first._fingerprint
    assert not torch.allclose(
        torch.as_tensor(changed[0]["image_embeddings"]), torch.as_tensor(first[0]["image_embeddings"])
    )


def test_cache_refuses_trainable_encoders_an_encoder_fusion_and_bad_input(dataset):
    processor = tiny_processor()
    model = _model()
    apply_freezing(model, "all")
    with pytest.raises(ValueError, match=r"need frozen image encoders, but these parameters train: \['"):
        cache_image_embeddings(model, processor, dataset, progress=False)
    fused = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="multilevel"))
    apply_freezing(fused, "decoder")
    with pytest.raises(ValueError, match=r"`fusion_type='multilevel'` feeds BLIP into the EfficientSAM encoder"):
        check_cacheable(fused)
    apply_freezing(model, "prompt_decoder")
    with pytest.raises(TypeError, match=r"`dataset` must be a datasets.Dataset, got list"):
        cache_image_embeddings(model, processor, [dataset[0]])
    with pytest.raises(ValueError, match=r"`dataset` needs an `image` column"):
        cache_image_embeddings(model, processor, dataset.remove_columns("image"))
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1, got 0"):
        cache_image_embeddings(model, processor, dataset, batch_size=0)


def test_collator_needs_cached_embeddings_in_every_example_or_none(dataset):
    model, processor = _model(), tiny_processor()
    apply_freezing(model, "prompt_decoder")
    cached = cache_image_embeddings(model, processor, dataset, progress=False)
    collator = EsamBlipTrainingCollator(processor, model.config)
    with pytest.raises(ValueError, match=r"Got 1 `image_embeddings` values for 2 examples"):
        collator([cached[0], dataset[1]])


def test_reinitialize_prompt_decoder_keeps_everything_else():
    model = _model()
    sam = model.model.sam
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffer = sam.prompt_encoder.shared_embedding.positional_embedding.clone()
    count = reinitialize_prompt_decoder(model, seed=7)
    after = dict(model.named_parameters())
    reset = {name for name in before if not torch.equal(before[name], after[name])}
    decoder_names = {f"model.sam.{part}.{name}" for part in ("mask_decoder", "prompt_encoder")
                     for name, _ in getattr(sam, part).named_parameters()}  # fmt: skip
    assert reset and reset <= decoder_names
    assert count == sum(after[name].numel() for name in decoder_names)
    assert torch.equal(sam.prompt_encoder.shared_embedding.positional_embedding, buffer)
    zero = [m for m in sam.prompt_encoder.modules() if getattr(m, MASK_PROMPT_ZERO_INIT, False)]
    assert zero and all(not m.weight.any() for m in zero)  # the new mask encoder starts as a no-op
    # Seeded: the same new weights twice.
    other = _model()
    reinitialize_prompt_decoder(other, seed=7)
    for name in decoder_names:
        torch.testing.assert_close(dict(other.named_parameters())[name], after[name])


def test_cli_trains_a_fresh_decoder_on_cached_embeddings(tmp_path, capsys):
    argv = ["--config", "tiny", "--dataset", "synthetic", "--num_scenes", "3", "--scene_size", "64",
            "--cache_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--mask_prompts", "--prompt_mix"]  # fmt: skip
    assert main([*argv, "--freeze", "prompt_decoder", "--reinitialize_decoder", "--cache_image_embeddings"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert re.search(r"Model: [\d,]+ of [\d,]+ parameters train \(--freeze prompt_decoder\)", out)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main([*argv, "--cache_image_embeddings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: --cache_image_embeddings needs frozen image encoders (--freeze decoder or prompt_decoder), got "
        "--freeze all"
    )
    itm_argv = [arg for arg in argv if arg not in ("--mask_prompts", "--prompt_mix")]
    assert main([*itm_argv, "--task", "itm", "--reinitialize_decoder"]) == 2
    assert "apply to the segmentation half, not to --task itm" in capsys.readouterr().err
