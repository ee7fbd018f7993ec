"""BLIP half: LAVIS fixture parity (ITM, ITC, Grad-CAM), transformers checkpoint conversion, batching and errors."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

from transformers_esam_blip.configuration_esam_blip import EsamBlipConfig
from transformers_esam_blip.conversion.blip import (
    blip_configs_from_state_dict,
    convert_blip_state_dict,
    load_blip_source,
    load_blip_source_config,
    split_ignored_blip_keys,
)
from transformers_esam_blip.gradcam import gradcam_from_cross_attention, pnp_vqa_gradcams
from transformers_esam_blip.modeling_blip_itm import EsamBlipImageTextModule
from transformers_esam_blip.modeling_esam_blip import EsamBlipForImageTextMatching

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_C = FIXTURES / "lavis_blip_itm" / "fixture_C"


def _fixture_kwargs(state_dict: dict[str, torch.Tensor]) -> dict:
    meta = json.loads((FIXTURE_C / "config.json").read_text())
    kwargs = blip_configs_from_state_dict(
        state_dict, "lavis", vision_heads=meta["vision"]["heads"], text_heads=meta["text"]["num_attention_heads"]
    )
    enc_token_id = BertTokenizer.from_pretrained(FIXTURE_C / "tokenizer").convert_tokens_to_ids("[ENC]")
    return {**kwargs, "enc_token_id": enc_token_id, "gradcam_block_num": meta["gradcam"]["block_num"]}


@pytest.fixture(scope="module")
def lavis():
    """The fixture's LAVIS checkpoint converted into an EsamBlipImageTextModule, with its inputs and outputs."""
    state_dict, kind, ignored = load_blip_source(FIXTURE_C / "checkpoint.pth")
    config = EsamBlipConfig(**_fixture_kwargs(state_dict))
    module = EsamBlipImageTextModule(config).eval()
    module.load_state_dict(convert_blip_state_dict(state_dict, kind), strict=True)
    inputs = torch.load(FIXTURE_C / "inputs.pt", weights_only=True)
    outputs = torch.load(FIXTURE_C / "outputs.pt", weights_only=True)
    with torch.no_grad():
        image_embeds = module.get_image_features(inputs["images"])
    return {
        "state_dict": state_dict,
        "kind": kind,
        "ignored": ignored,
        "config": config,
        "module": module,
        "inputs": inputs,
        "outputs": outputs,
        "image_embeds": image_embeds,
        "pair_embeds": image_embeds[outputs["itm_pairs"][:, 0]],
    }


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_fixture_loads_as_lavis_and_reports_ignored_keys(lavis):
    assert lavis["kind"] == "lavis"
    assert lavis["ignored"] == ["text_encoder.embeddings.position_ids"]
    config = lavis["config"]
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (112, 16)
    assert config.text_config.num_hidden_layers == 3 and config.image_text_hidden_size == 32
    assert lavis["module"].grid_size == 7


def test_fixture_itm_logits_and_prob(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    with torch.no_grad():
        logits = module.itm_logits(outputs["itm_input_ids"], outputs["itm_attention_mask"], lavis["pair_embeds"])
    assert _max_abs(logits, outputs["itm_logits"]) <= 2e-5
    assert _max_abs(logits.softmax(dim=-1)[:, 1], outputs["itm_prob"]) <= 2e-5


def test_fixture_itc_similarity(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    with torch.no_grad():
        sim = module.itc_similarity(outputs["itc_input_ids"], outputs["itc_attention_mask"], lavis["image_embeds"])
    assert sim.shape == (2, 3)
    assert _max_abs(sim, outputs["itc_sim"]) <= 2e-5


def test_fixture_gradcam_under_no_grad_leaves_no_grad(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    with torch.no_grad():
        gradcam, logits = module.compute_gradcam(
            outputs["itm_input_ids"], outputs["itm_attention_mask"], lavis["pair_embeds"], block_num=2
        )
    assert gradcam.shape == outputs["gradcam_stacked"].shape == (6, 23, 7, 7)
    assert _max_abs(gradcam, outputs["gradcam_stacked"]) <= 5e-6
    assert _max_abs(logits, outputs["gradcam_itm_logits"]) <= 2e-5
    assert not gradcam.requires_grad and not logits.requires_grad
    assert all(parameter.grad is None for parameter in module.parameters())


def test_fixture_gradcam_default_block_inference_mode_and_frozen_parameters(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    module.requires_grad_(False)
    try:
        with torch.inference_mode():
            image_embeds = module.get_image_features(lavis["inputs"]["images"])
            gradcam, _ = module.compute_gradcam(
                outputs["itm_input_ids"], outputs["itm_attention_mask"], image_embeds[outputs["itm_pairs"][:, 0]]
            )
    finally:
        module.requires_grad_(True)
    assert _max_abs(gradcam, outputs["gradcam_stacked"]) <= 5e-6


def test_batched_equals_one_by_one_and_padding_does_not_leak(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    input_ids, attention_mask = outputs["itm_input_ids"], outputs["itm_attention_mask"]
    with torch.no_grad():
        batched_logits = module.itm_logits(input_ids, attention_mask, lavis["pair_embeds"])
        batched_cam, _ = module.compute_gradcam(input_ids, attention_mask, lavis["pair_embeds"])
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            ids, mask = input_ids[row : row + 1, :length], attention_mask[row : row + 1, :length]
            embeds = lavis["pair_embeds"][row : row + 1]
            assert _max_abs(module.itm_logits(ids, mask, embeds)[0], batched_logits[row]) <= 1e-5
            alone, _ = module.compute_gradcam(ids, mask, embeds)
            assert alone.shape[1] == length + 1
            assert _max_abs(alone[0], batched_cam[row, : length + 1]) <= 1e-6
            assert not batched_cam[row, length + 1 :].any()  # padded token rows are zeroed by the mask


def test_model_class_itm_itc_loss_broadcast_and_gradcam(lavis):
    outputs, images = lavis["outputs"], lavis["inputs"]["images"]
    model = EsamBlipForImageTextMatching(lavis["config"]).eval()
    converted = convert_blip_state_dict(lavis["state_dict"], "lavis")
    model.load_state_dict({f"model.blip.{key}": value for key, value in converted.items()}, strict=True)
    pairs = outputs["itm_pairs"]
    labels = (pairs[:, 0] == 1).long()
    with torch.no_grad():
        itm = model(
            input_ids=outputs["itm_input_ids"],
            attention_mask=outputs["itm_attention_mask"],
            blip_pixel_values=images[pairs[:, 0]],
            labels=labels,
        )
        itc = model(
            input_ids=outputs["itc_input_ids"],
            attention_mask=outputs["itc_attention_mask"],
            blip_pixel_values=images,
            use_itm_head=False,
        )
        one_image = model(
            input_ids=outputs["itc_input_ids"],
            attention_mask=outputs["itc_attention_mask"],
            image_embeds=lavis["image_embeds"][1:2],
        )
        cam = model.compute_gradcam(
            outputs["itm_input_ids"], outputs["itm_attention_mask"], blip_pixel_values=images[pairs[:, 0]]
        )
    assert _max_abs(itm.itm_score, outputs["itm_logits"]) <= 2e-5
    expected_loss = torch.nn.functional.cross_entropy(outputs["itm_logits"], labels)
    assert abs(itm.loss.item() - expected_loss.item()) <= 2e-5
    assert _max_abs(itc.itm_score, outputs["itc_sim"]) <= 2e-5
    assert _max_abs(one_image.itm_score, outputs["itm_logits_matrix"][1]) <= 2e-5
    assert _max_abs(cam.gradcam, outputs["gradcam_stacked"]) <= 5e-6
    assert torch.equal(cam.gradcams, pnp_vqa_gradcams(cam.gradcam))
    assert torch.equal(cam.gradcams, cam.gradcam[:, 1].flatten(1)) and cam.gradcams.shape == (6, 49)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_model_class_input_errors(lavis):
    model = EsamBlipForImageTextMatching(lavis["config"]).eval()
    outputs, images = lavis["outputs"], lavis["inputs"]["images"]
    ids, mask = outputs["itc_input_ids"], outputs["itc_attention_mask"]
    with pytest.raises(ValueError, match="exactly one of `blip_pixel_values` and `image_embeds`"):
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="exactly one of `blip_pixel_values` and `image_embeds`"):
        model(input_ids=ids, attention_mask=mask, blip_pixel_values=images, image_embeds=lavis["image_embeds"])
    with pytest.raises(ValueError, match="2 images for 3 texts"):
        model(input_ids=ids, attention_mask=mask, blip_pixel_values=images)
    with pytest.raises(ValueError, match="at least one tokenized text"):
        model(input_ids=ids[:, :0], blip_pixel_values=images[:1])
    with pytest.raises(ValueError, match="`labels`"):
        model(input_ids=ids, blip_pixel_values=images[:1], labels=torch.tensor([0, 1, 2]))


def test_model_class_without_blip_half_raises():
    config = EsamBlipConfig(
        sam_vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "neck_hidden_sizes": [32, 32],
        },
        mask_decoder_config={
            "hidden_size": 32,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "iou_head_hidden_dim": 32,
            "upscaling_hidden_sizes": [8, 4],
        },
    )
    model = EsamBlipForImageTextMatching(config)
    with pytest.raises(ValueError, match="no BLIP half"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), blip_pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="BLIP half"):
        EsamBlipImageTextModule(config)


def test_gradcam_and_enc_token_errors(lavis):
    outputs, module = lavis["outputs"], lavis["module"]
    ids, mask = outputs["itm_input_ids"], outputs["itm_attention_mask"]
    with pytest.raises(ValueError, match=r"`block_num` must be an int in \[0, 2\].*got 3"):
        module.compute_gradcam(ids, mask, lavis["pair_embeds"], block_num=3)
    with pytest.raises(ValueError, match=r"`block_num`.*got -1"):
        module.compute_gradcam(ids, mask, lavis["pair_embeds"], block_num=-1)
    with pytest.raises(ValueError, match="2 images but `input_ids` has 6 texts"):
        module.itm_logits(ids, mask, lavis["image_embeds"])
    with pytest.raises(ValueError, match=r"`image_embeds` must have shape \[batch, 50, 96\]"):
        module.compute_gradcam(ids, mask, lavis["pair_embeds"][:, :-1])
    kwargs = {**_fixture_kwargs(lavis["state_dict"]), "enc_token_id": None}
    no_enc = EsamBlipImageTextModule(EsamBlipConfig(**kwargs)).eval()
    with pytest.raises(ValueError, match="enc_token_id"):
        no_enc.itm_logits(ids, mask, lavis["pair_embeds"])
    with pytest.raises(ValueError, match="enc_token_id"):
        no_enc.compute_gradcam(ids, mask, lavis["pair_embeds"])


def test_conversion_errors(lavis):
    state_dict = lavis["state_dict"]
    with pytest.raises(ValueError, match="width 96 is not a multiple of 64.*`vision_heads`"):
        blip_configs_from_state_dict(state_dict, "lavis", text_heads=4)
    with pytest.raises(ValueError, match="`vision_heads` must be a positive int dividing the ViT width 96, got 5"):
        blip_configs_from_state_dict(state_dict, "lavis", vision_heads=5, text_heads=4)
    with pytest.raises(ValueError, match="`text_heads` must be a positive int dividing the text encoder width 64"):
        blip_configs_from_state_dict(state_dict, "lavis", vision_heads=4, text_heads=3)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        convert_blip_state_dict(state_dict, "timm")
    with pytest.raises(ValueError, match=r"Unknown keys.*'visual_encoder\.head\.weight'"):
        convert_blip_state_dict({**state_dict, "visual_encoder.head.weight": torch.zeros(2, 96)}, "lavis")
    with pytest.raises(ValueError, match=r"unexpected keys \['text_encoder\.pooler\.dense\.weight'\]"):
        convert_blip_state_dict({**state_dict, "text_encoder.pooler.dense.weight": torch.zeros(64, 64)}, "lavis")
    missing = {key: value for key, value in state_dict.items() if key != "itm_head.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['itm_head\.bias'\]"):
        convert_blip_state_dict(missing, "lavis")
    with pytest.raises(ValueError, match="Ignorable keys must be set aside first"):
        convert_blip_state_dict({**state_dict, "temp": torch.tensor(0.07)}, "lavis")


def test_load_blip_source_sets_aside_momentum_and_queues(lavis, tmp_path):
    state_dict = dict(lavis["state_dict"])
    extra = {
        "visual_encoder_m.cls_token": torch.zeros(1, 1, 96),
        "text_proj_m.weight": torch.zeros(32, 64),
        "image_queue": torch.zeros(32, 8),
        "text_queue": torch.zeros(32, 8),
        "idx_queue": torch.zeros(1, 8, dtype=torch.long),
        "ptr_queue": torch.zeros(1, dtype=torch.long),
        "temp": torch.tensor(0.07),
    }
    torch.save(state_dict | extra, tmp_path / "bare.pth")
    loaded, kind, ignored = load_blip_source(tmp_path / "bare.pth")
    assert kind == "lavis" and ignored == sorted(extra)
    assert loaded.keys() == state_dict.keys()
    assert split_ignored_blip_keys(state_dict | extra)[1] == sorted(extra)


def _tiny_transformers_blip(tmp_path: Path) -> tuple[BlipForImageTextRetrieval, Path]:
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={
            "vocab_size": 60,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "bos_token_id": 57,
            "sep_token_id": 3,
        },
        vision_config={
            "hidden_size": 24,
            "intermediate_size": 40,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "image_size": 32,
            "patch_size": 8,
        },
        image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():
        # transformers initialises the BLIP ViT with std 1e-10: spread the weights so the comparison means something.
        for name, parameter in model.named_parameters():
            parameter.normal_(std=0.2)
            if "norm" in name.lower() and name.endswith(".weight"):
                parameter.add_(1.0)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_transformers_checkpoint_converts_to_same_itm_and_itc(tmp_path):
    reference, folder = _tiny_transformers_blip(tmp_path)
    state_dict, kind, ignored = load_blip_source(folder)
    assert (kind, ignored) == ("transformers", [])
    kwargs = blip_configs_from_state_dict(state_dict, kind, source_config=load_blip_source_config(folder))
    assert kwargs["vision_config"]["num_attention_heads"] == 3  # from config.json, not width / 64
    assert kwargs["vision_config"]["layer_norm_eps"] == reference.config.vision_config.layer_norm_eps
    enc_token_id = 59
    module = EsamBlipImageTextModule(EsamBlipConfig(**kwargs, enc_token_id=enc_token_id)).eval()
    module.load_state_dict(convert_blip_state_dict(state_dict, kind), strict=True)

    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    input_ids = torch.randint(5, 55, (3, 7), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 5:], attention_mask[1, 5:] = 0, 0
    encoder_input_ids = input_ids.clone()
    encoder_input_ids[:, 0] = enc_token_id
    with torch.no_grad():
        expected_itm = reference(
            input_ids=encoder_input_ids, pixel_values=pixel_values, attention_mask=attention_mask
        ).itm_score
        expected_itc = reference(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, use_itm_head=False
        ).itm_score
        image_embeds = module.get_image_features(pixel_values)
        itm = module.itm_logits(input_ids, attention_mask, image_embeds)
        itc = module.itc_similarity(input_ids, attention_mask, image_embeds)
    assert expected_itm.abs().max() > 1e-2  # not a degenerate model
    assert _max_abs(itm, expected_itm) <= 1e-5
    assert itc.shape == (3, 3) and _max_abs(itc, expected_itc) <= 1e-5


def test_transformers_source_config_must_agree_with_weights(tmp_path):
    _, folder = _tiny_transformers_blip(tmp_path)
    state_dict, kind, _ = load_blip_source(folder)
    source_config = load_blip_source_config(folder)
    with pytest.raises(ValueError, match="contradicts the source config's num_attention_heads=3"):
        blip_configs_from_state_dict(state_dict, kind, vision_heads=4, source_config=source_config)
    source_config["text_config"]["intermediate_size"] = 64
    with pytest.raises(ValueError, match="text_config.intermediate_size is 64 but the weights say 48"):
        blip_configs_from_state_dict(state_dict, kind, source_config=source_config)


def test_gradcam_rows_follow_lavis_layout():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 5, 1 + 4, generator=generator)
    grads = torch.randn(2, 3, 5, 1 + 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    gradcam = gradcam_from_cross_attention(probs, grads, mask, grid_size=2)
    per_token = (probs[..., 1:] * grads[..., 1:].clamp(min=0)).mean(dim=1).reshape(2, 5, 2, 2)
    per_token = per_token * mask[:, :, None, None]
    assert gradcam.shape == (2, 6, 2, 2)
    torch.testing.assert_close(gradcam[:, 0], per_token[:, 0])
    torch.testing.assert_close(gradcam[0, 1], per_token[0, 1:4].mean(dim=0))  # 5 real tokens: n = 3
    torch.testing.assert_close(gradcam[1, 1], per_token[1, 1])  # 3 real tokens: n = 1
    torch.testing.assert_close(gradcam[:, 2:], per_token[:, 1:])
    with pytest.raises(ValueError, match="`grid_size` 3 expects 10 image tokens"):
        gradcam_from_cross_attention(probs, grads, mask, grid_size=3)


def test_real_blip_base_key_list_converts():
    listing = json.loads((FIXTURES / "lavis_blip_itm" / "original_keys_blip_itm_base.json").read_text())
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in listing["keys"].items()}
    kept, ignored = split_ignored_blip_keys(state_dict)
    assert ignored == ["text_encoder.embeddings.position_ids"]
    kwargs = blip_configs_from_state_dict(kept, "lavis")
    vision, text = kwargs["vision_config"], kwargs["text_config"]
    assert (vision["image_size"], vision["patch_size"], vision["num_attention_heads"]) == (384, 16, 12)
    assert (text["num_hidden_layers"], text["num_attention_heads"], text["vocab_size"]) == (12, 12, 30524)
    assert (kwargs["image_text_hidden_size"], kwargs["gradcam_block_num"]) == (256, 7)
    assert len(convert_blip_state_dict(kept, "lavis")) == len(kept) == 472


def _tiny_blip_module() -> EsamBlipImageTextModule:
    config = EsamBlipConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "intermediate_size": 64,
        },
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "vocab_size": 50,
        },
        image_text_hidden_size=8,
        enc_token_id=3,
        gradcam_block_num=1,
    )
    return EsamBlipImageTextModule(config).eval()


def test_encode_methods_return_attentions_hidden_states_and_projections():
    module = _tiny_blip_module()
    pixels = torch.randn(2, 3, 32, 32)
    input_ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        image = module.encode_image(pixels, output_attentions=True, output_hidden_states=True)
        text = module.encode_text(input_ids, attention_mask, output_attentions=True, output_hidden_states=True)
        joint = module.encode_multimodal(input_ids, attention_mask, image.last_hidden_state, output_attentions=True)
        plain = module.encode_image(pixels)
    assert image.last_hidden_state.shape == (2, 5, 32) and image.pooler_output.shape == (2, 8)
    assert len(image.hidden_states) == 3 and len(image.attentions) == 2
    assert image.attentions[0].shape == (2, 2, 5, 5)
    assert plain.attentions is None and plain.hidden_states is None
    assert text.pooler_output.shape == (2, 8) and len(text.hidden_states) == 3
    assert text.attentions[1].shape == (2, 4, 4, 4)
    assert [a.shape for a in joint.cross_attentions] == [(2, 4, 4, 5)] * 2
    # The tensor-returning helpers are the same computations.
    torch.testing.assert_close(module.get_image_features(pixels), image.last_hidden_state)
    torch.testing.assert_close(module.get_text_features(input_ids, attention_mask), text.last_hidden_state)
    itc = module.itc_similarity(input_ids, attention_mask, image.last_hidden_state)
    expected = F.normalize(image.pooler_output, dim=-1) @ F.normalize(text.pooler_output, dim=-1).T
    torch.testing.assert_close(itc, expected)


def test_input_embeddings_are_the_text_word_embeddings():
    module = _tiny_blip_module()
    embeddings = module.get_input_embeddings()
    assert embeddings is module.text_encoder.embeddings.word_embeddings
    bigger = torch.nn.Embedding(52, 32)
    module.set_input_embeddings(bigger)
    assert module.text_encoder.embeddings.word_embeddings is bigger
