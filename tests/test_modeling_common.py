"""Common model checks in the spirit of transformers' `ModelTesterMixin`, run on every public EsamBlip model."""

import copy
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import tiny_sam_config
from transformers import PreTrainedModel

from transformers_esam_blip import (
    EsamBlipConfig,
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
    EsamBlipModel,
)

VOCAB_SIZE = 50
ENC_TOKEN_ID = 3
BLIP_CONFIG = {
    "vision_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 16,
        "intermediate_size": 64,
    },
    "text_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "vocab_size": VOCAB_SIZE,
    },
    "image_text_hidden_size": 8,
    "enc_token_id": ENC_TOKEN_ID,
    "gradcam_block_num": 1,
}


def _texts(batch_size: int) -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0], [1, 10, 2, 0, 0]])[:batch_size]
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


def _point_inputs(batch_size: int) -> dict[str, torch.Tensor]:
    points = torch.tensor([[[10.0, 12.0], [30.0, 40.0]], [[50.0, 5.0], [-1.0, -1.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    return {
        "pixel_values": torch.randn(batch_size, 3, 64, 64),
        "input_points": points.expand(batch_size, -1, -1, -1).clone(),
        "input_labels": labels.expand(batch_size, -1, -1).clone(),
    }


def _box_inputs(batch_size: int) -> dict[str, torch.Tensor]:
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 2.0, 60.0, 30.0]])
    return {"pixel_values": torch.randn(batch_size, 3, 64, 64), "input_boxes": boxes.expand(batch_size, -1, -1).clone()}


@dataclass
class EsamBlipModelTester:
    """One public model with a tiny config and its inputs, and what its outputs must hold."""

    name: str
    model_class: type[PreTrainedModel]
    config_kwargs: dict
    make_inputs: Callable[[int], dict[str, torch.Tensor]]
    # Output fields that carry the main predictions (compared by the equivalence checks).
    prediction_fields: tuple[str, ...]
    # Parameters that get no (or only zero) gradient from the training loss, by design (a name prefix each).
    unused_parameters: tuple[str, ...] = ()
    training_labels: Callable[[int], dict[str, torch.Tensor]] | None = None
    no_training_reason: str = ""
    uses_sam: bool = True
    uses_blip: bool = False
    export_skip_reason: str | None = "torch.export is promised for the point/box segmentation path only"
    extra: dict = field(default_factory=dict)

    def get_config(self) -> EsamBlipConfig:
        if self.uses_sam:
            return tiny_sam_config(**copy.deepcopy(self.config_kwargs))
        return EsamBlipConfig(**copy.deepcopy(self.config_kwargs))

    def prepare_config_and_inputs(self, batch_size: int = 2) -> tuple[EsamBlipConfig, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        return self.get_config(), {**self.make_inputs(batch_size), **self.extra}

    def build(self, batch_size: int = 2) -> tuple[PreTrainedModel, dict[str, torch.Tensor]]:
        config, inputs = self.prepare_config_and_inputs(batch_size)
        torch.manual_seed(0)
        return self.model_class(config).eval(), inputs


def _segmentation_labels(batch_size: int) -> dict[str, torch.Tensor]:
    return {"labels": (torch.rand(batch_size, 2, 32, 32) > 0.5).float()}


TESTERS = [
    EsamBlipModelTester(
        name="segmentation_points",
        model_class=EsamBlipForPromptableSegmentation,
        config_kwargs={},
        make_inputs=_point_inputs,
        prediction_fields=("iou_scores", "pred_masks", "image_embeddings"),
        # Multimask output reads mask tokens 1..3: the single-mask token's hypernetwork MLP is not used.
        unused_parameters=("model.sam.mask_decoder.output_hypernetworks_mlps.0.",),
        training_labels=_segmentation_labels,
        export_skip_reason=None,
    ),
    EsamBlipModelTester(
        name="segmentation_boxes",
        model_class=EsamBlipForPromptableSegmentation,
        config_kwargs={},
        make_inputs=_box_inputs,
        prediction_fields=("iou_scores", "pred_masks", "image_embeddings"),
        unused_parameters=("model.sam.mask_decoder.output_hypernetworks_mlps.0.",),
        training_labels=_segmentation_labels,
        export_skip_reason=None,
    ),
    EsamBlipModelTester(
        name="joint_base",
        model_class=EsamBlipModel,
        config_kwargs=BLIP_CONFIG,
        make_inputs=lambda n: {
            "pixel_values": torch.randn(n, 3, 64, 64),
            "blip_pixel_values": torch.randn(n, 3, 32, 32),
        },
        prediction_fields=("image_embeddings", "blip_image_embeds"),
        no_training_reason="the base model has no loss",
        uses_blip=True,
    ),
    EsamBlipModelTester(
        name="matching",
        model_class=EsamBlipForImageTextMatching,
        config_kwargs={**BLIP_CONFIG, "segmentation": False},
        make_inputs=lambda n: {**_texts(n), "blip_pixel_values": torch.randn(n, 3, 32, 32)},
        prediction_fields=("itm_score", "image_embeds", "text_embeds"),
        # The ITM loss does not read the ITC projections.
        unused_parameters=("model.blip.vision_proj.", "model.blip.text_proj."),
        training_labels=lambda n: {"labels": torch.tensor([1, 0, 1])[:n]},
        uses_sam=False,
        uses_blip=True,
    ),
    EsamBlipModelTester(
        name="learned_text",
        model_class=EsamBlipForPromptableSegmentation,
        config_kwargs={**BLIP_CONFIG, "prompter_source": "text", "num_prompt_tokens": 2},
        make_inputs=lambda n: {
            "pixel_values": torch.randn(n, 3, 64, 64),
            "blip_pixel_values": torch.randn(n, 3, 32, 32),
            **_texts(n),
        },
        prediction_fields=("iou_scores", "pred_masks", "itm_probability"),
        # Without points or boxes the text tokens are the only prompt: the point/box embeddings are not used.
        unused_parameters=(
            "model.sam.mask_decoder.output_hypernetworks_mlps.0.",
            "model.sam.prompt_encoder.",
            "model.blip.vision_proj.",
            "model.blip.text_proj.",
        ),
        training_labels=lambda n: {
            "labels": (torch.rand(n, 1, 32, 32) > 0.5).float(),
            "match_labels": torch.tensor([1, 0, 1])[:n],
        },
        uses_blip=True,
        extra={"text_prompt_mode": "learned"},
    ),
    EsamBlipModelTester(
        name="gradcam_text",
        model_class=EsamBlipForPromptableSegmentation,
        config_kwargs=BLIP_CONFIG,
        make_inputs=lambda n: {
            "pixel_values": torch.randn(n, 3, 64, 64),
            "blip_pixel_values": torch.randn(n, 3, 32, 32),
            **_texts(n),
        },
        prediction_fields=("iou_scores", "pred_masks", "itm_probability", "heatmap", "prompt_points"),
        no_training_reason="zero-shot Grad-CAM prompts train nothing of BLIP; the mask loss is the points' path",
        uses_blip=True,
        extra={"text_prompt_mode": "gradcam"},
    ),
]


@pytest.fixture(params=TESTERS, ids=lambda tester: tester.name)
def tester(request) -> EsamBlipModelTester:
    return request.param


def _assert_same(a, b, atol: float = 0.0, path: str = "output") -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{path}: {m}")
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, atol, f"{path}[{i}]")
    else:
        assert a == b, path


def _run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


# Config ---------------------------------------------------------------------------------------------------------


def test_config_round_trips(tester, tmp_path):
    config = tester.get_config()
    from_dict = EsamBlipConfig.from_dict(config.to_dict())
    assert from_dict.to_dict() == config.to_dict()
    from_json = EsamBlipConfig.from_dict(json.loads(config.to_json_string()))
    assert from_json.to_json_string() == config.to_json_string()
    config.save_pretrained(tmp_path)
    reloaded = EsamBlipConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.has_segmentation == tester.uses_sam
    assert reloaded.has_blip == tester.uses_blip


# Outputs --------------------------------------------------------------------------------------------------------


def test_save_load_gives_identical_outputs(tester, tmp_path):
    model, inputs = tester.build()
    model.save_pretrained(tmp_path)
    reloaded = tester.model_class.from_pretrained(tmp_path).eval()
    expected, actual = _run(model, inputs), _run(reloaded, inputs)
    for name in tester.prediction_fields:
        _assert_same(getattr(actual, name), getattr(expected, name), path=name)


def test_return_dict_false_returns_the_dict_values(tester):
    model, inputs = tester.build()
    flags = {"output_attentions": True, "output_hidden_states": True}
    as_dict = _run(model, inputs, **flags)
    as_tuple = _run(model, inputs, return_dict=False, **flags)
    assert isinstance(as_tuple, tuple)
    _assert_same(as_tuple, as_dict.to_tuple())
    model.config.return_dict = False
    _assert_same(_run(model, inputs, **flags), as_dict.to_tuple())


def test_outputs_are_typed(tester):
    model, inputs = tester.build()
    output = _run(model, inputs)
    assert type(output).__name__.startswith("EsamBlip") and type(output).__name__.endswith("Output")
    for name in tester.prediction_fields:
        assert isinstance(getattr(output, name), torch.Tensor), name


def test_determinism(tester):
    model, inputs = tester.build()
    first, second = _run(model, inputs), _run(model, inputs)
    for name in tester.prediction_fields:
        _assert_same(getattr(first, name), getattr(second, name), path=name)


def test_batching_equivalence(tester):
    model, inputs = tester.build(batch_size=2)
    batched = _run(model, inputs)
    for index in range(2):
        single = _run(model, {k: v[index : index + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        for name in tester.prediction_fields:
            _assert_same(getattr(single, name), getattr(batched, name)[index : index + 1], atol=1e-5, path=name)


def test_unknown_keyword_raises_type_error(tester):
    model, inputs = tester.build()
    with pytest.raises(TypeError, match="multimask_outputs"):
        model(**inputs, multimask_outputs=False)
    assert not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values()
    ), "forward must not swallow unknown keywords"


# Attentions and hidden states -----------------------------------------------------------------------------------


def _expected_sam_recordings(config: EsamBlipConfig, batch_size: int, output) -> None:
    vision, decoder = config.sam_vision_config, config.mask_decoder_config
    tokens = vision.image_embedding_size**2
    assert len(output.vision_hidden_states) == vision.num_hidden_layers + 1
    for hidden in output.vision_hidden_states:
        assert hidden.shape == (batch_size, tokens, vision.hidden_size)
    assert len(output.vision_attentions) == vision.num_hidden_layers
    for attention in output.vision_attentions:
        assert attention.shape == (batch_size, vision.num_attention_heads, tokens, tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    attentions = output.mask_decoder_attentions
    assert len(attentions) == 3 * decoder.num_hidden_layers + 1
    queries = output.pred_masks.shape[0] * output.pred_masks.shape[1]
    num_tokens = attentions[0].shape[-1]
    heads = decoder.num_attention_heads
    for block in range(decoder.num_hidden_layers):
        self_attn, token_to_image, image_to_token = attentions[3 * block : 3 * block + 3]
        assert self_attn.shape == (queries, heads, num_tokens, num_tokens)
        assert token_to_image.shape == (queries, heads, num_tokens, tokens)
        assert image_to_token.shape == (queries, heads, tokens, num_tokens)
    assert attentions[-1].shape == (queries, heads, num_tokens, tokens)


def _expected_blip_recordings(config: EsamBlipConfig, output, num_texts: int | None) -> None:
    vision, text = config.vision_config, config.text_config
    image_tokens = 1 + (vision.image_size // vision.patch_size) ** 2
    assert len(output.blip_vision_hidden_states) == vision.num_hidden_layers + 1
    assert len(output.blip_vision_attentions) == vision.num_hidden_layers
    assert output.blip_vision_attentions[0].shape[1:] == (vision.num_attention_heads, image_tokens, image_tokens)
    if num_texts is None:
        return
    length = output.blip_cross_attentions[0].shape[2]
    if hasattr(output, "blip_text_attentions"):  # the matching model: one text pass, whose every state it returns
        assert len(output.blip_text_hidden_states) == text.num_hidden_layers + 1
        assert output.blip_text_hidden_states[0].shape == (num_texts, length, text.hidden_size)
        assert len(output.blip_text_attentions) == text.num_hidden_layers
        assert output.blip_text_attentions[0].shape == (num_texts, text.num_attention_heads, length, length)
    assert len(output.blip_cross_attentions) == text.num_hidden_layers
    assert output.blip_cross_attentions[0].shape == (num_texts, text.num_attention_heads, length, image_tokens)


def test_attentions_and_hidden_states(tester):
    model, inputs = tester.build()
    plain = _run(model, inputs)
    recorded = _run(model, inputs, output_attentions=True, output_hidden_states=True)
    for name in tester.prediction_fields:
        _assert_same(getattr(recorded, name), getattr(plain, name), atol=1e-5, path=name)
    recorded_fields = [name for name in recorded.keys() if name.endswith(("attentions", "hidden_states"))]
    assert recorded_fields and not [name for name in plain.keys() if name in recorded_fields]
    config = model.config
    if tester.uses_sam and "pred_masks" in tester.prediction_fields:
        _expected_sam_recordings(config, inputs["pixel_values"].shape[0], recorded)
    elif tester.uses_sam:
        assert len(recorded.vision_hidden_states) == config.sam_vision_config.num_hidden_layers + 1
    if tester.uses_blip:
        num_texts = inputs["input_ids"].shape[0] if "input_ids" in inputs else None
        _expected_blip_recordings(config, recorded, num_texts)
    only_attentions = _run(model, inputs, output_attentions=True)
    assert all(not name.endswith("hidden_states") for name in only_attentions.keys())


def test_config_flags_switch_recording_on(tester):
    model, inputs = tester.build()
    model.config.output_hidden_states = True
    output = _run(model, inputs)
    assert any(name.endswith("hidden_states") for name in output.keys())
    assert not any(name.endswith("attentions") for name in output.keys())


def test_eager_matches_sdpa(tester, tmp_path):
    model, inputs = tester.build()
    model.save_pretrained(tmp_path)
    eager = tester.model_class.from_pretrained(tmp_path, attn_implementation="eager").eval()
    # The default: SDPA for EfficientSAM (BLIP's transformers classes only have the eager path).
    sdpa = tester.model_class.from_pretrained(tmp_path).eval()
    if tester.uses_sam:
        assert eager.config.sam_vision_config._attn_implementation == "eager"
        assert eager.config.mask_decoder_config._attn_implementation == "eager"
        assert sdpa.config.mask_decoder_config._attn_implementation in (None, "sdpa")  # None: the SDPA default
    a, b = _run(eager, inputs), _run(sdpa, inputs)
    for name in tester.prediction_fields:
        _assert_same(getattr(a, name), getattr(b, name), atol=1e-5, path=name)


# Training -------------------------------------------------------------------------------------------------------


def _training_loss(model, inputs, labels):
    output = model(**inputs, **labels)
    return output.loss


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def test_training_step_reaches_every_trainable_parameter(tester):
    if tester.training_labels is None:
        pytest.skip(tester.no_training_reason)
    model, inputs = tester.build()
    model.train()
    loss = _training_loss(model, inputs, tester.training_labels(inputs[next(iter(inputs))].shape[0]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is None and not name.startswith(tester.unused_parameters)
    ]
    assert not missing, f"no gradient reached {missing}"
    unexpected = [
        name
        for name, p in model.named_parameters()
        if name.startswith(tester.unused_parameters) and p.grad is not None and p.grad.any()
    ]
    assert not unexpected, f"{unexpected} are listed as unused but got non-zero gradients"


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames gradient_checkpointing_enable
def test_gradient_checkpointing_gives_identical_gradients(tester, use_reentrant):
    if tester.training_labels is None:
        pytest.skip(tester.no_training_reason)
    model, inputs = tester.build()
    model.train()
    labels = tester.training_labels(inputs[next(iter(inputs))].shape[0])
    _training_loss(model, inputs, labels).backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.is_gradient_checkpointing
    checkpointed_layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert checkpointed_layers
    for layer in checkpointed_layers:
        assert getattr(layer._gradient_checkpointing_func, "keywords", {}).get("use_reentrant") == use_reentrant
    _training_loss(model, inputs, labels).backward()
    for name, grad in _grads(model).items():
        if reference[name] is None:
            assert grad is None, name
        else:
            torch.testing.assert_close(
                grad, reference[name], rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


# Embeddings -----------------------------------------------------------------------------------------------------


def test_input_embeddings(tester):
    model, _ = tester.build()
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Module)
    if tester.uses_blip:
        assert isinstance(embeddings, torch.nn.Embedding) and embeddings.num_embeddings == VOCAB_SIZE
        replacement = torch.nn.Embedding(VOCAB_SIZE, embeddings.embedding_dim)
        model.set_input_embeddings(replacement)
        assert model.get_input_embeddings() is replacement
    else:
        # As transformers' vision models (SamModel, ViT): the patch embedding.
        assert embeddings is model.base_model.sam.vision_encoder.patch_embed


def test_resize_token_embeddings(tester):
    model, inputs = tester.build()
    if not tester.uses_blip:
        with pytest.raises(ValueError, match="no BLIP"):
            model.resize_token_embeddings(VOCAB_SIZE + 2)
        return
    embeddings = model.resize_token_embeddings(VOCAB_SIZE + 2)
    assert embeddings.num_embeddings == VOCAB_SIZE + 2
    assert model.config.text_config.vocab_size == VOCAB_SIZE + 2
    if "input_ids" in inputs:
        inputs["input_ids"][0, 1] = VOCAB_SIZE + 1  # one of the new tokens
        output = _run(model, inputs)
        assert all(torch.isfinite(getattr(output, name)).all() for name in tester.prediction_fields)
    model.resize_token_embeddings(VOCAB_SIZE - 5)
    assert model.get_input_embeddings().num_embeddings == VOCAB_SIZE - 5


# Export ---------------------------------------------------------------------------------------------------------


def test_torch_export(tester):
    if tester.export_skip_reason:
        pytest.skip(tester.export_skip_reason)
    model, inputs = tester.build()
    exported = torch.export.export(model, args=(), kwargs=inputs)
    expected = _run(model, inputs)
    actual = exported.module()(**inputs)
    for name in ("iou_scores", "pred_masks"):
        _assert_same(actual[name] if isinstance(actual, dict) else getattr(actual, name), getattr(expected, name), 1e-5)
