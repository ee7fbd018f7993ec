"""Text-prompt strategies and fusions are registered classes: a new one is a class in the user's own file."""

import pytest
import torch
from test_fusion import _inputs, tiny_joint_config
from torch import nn

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation
from transformers_esam_blip.fusion import FUSIONS, EsamBlipFusion, fusion_type_choices, register_fusion
from transformers_esam_blip.modeling_outputs import EsamBlipSegmentationOutput
from transformers_esam_blip.prompts import PromptLabel, append_points, assemble_prompts
from transformers_esam_blip.text_prompt_strategies import (
    TEXT_PROMPT_STRATEGIES,
    EsamBlipTextPromptStrategy,
    TextPromptResult,
    pair_with_texts,
    register_text_prompt_strategy,
    resolve_text_prompt_mode,
    text_prompt_mode_choices,
)


@pytest.fixture
def centre_point_strategy():
    """A strategy written here, touching no package file: one foreground point at the frame's centre per text."""

    @register_text_prompt_strategy("centre_point")
    class CentrePoint(EsamBlipTextPromptStrategy):
        settings = {"fraction": "heatmap_mask_alpha"}  # borrows a config default, overridable per call

        def __call__(self, inputs):
            frame = self.config.sam_vision_config.image_size
            num_texts = inputs.num_texts
            centre = torch.full((num_texts, 1, 2), frame * self.fraction)
            labels = torch.full((num_texts, 1), int(PromptLabel.FOREGROUND))
            points, labels = append_points(inputs.input_points, inputs.input_labels, centre, labels, 1)
            points, labels = assemble_prompts(points, labels, None, self.config.prompt_encoder_config.max_num_points)
            embeddings = pair_with_texts(inputs.image_embeddings, num_texts, "image_embeddings")
            masks, scores = self.model.sam.predict_masks(embeddings, points, labels, inputs.multimask_output)
            itm_image_embeds = pair_with_texts(inputs.itm_image_embeds, num_texts, "image_embeds")
            logits = self.model.blip.itm_logits(inputs.input_ids, inputs.attention_mask, itm_image_embeds)
            return TextPromptResult(fields={"iou_scores": scores, "pred_masks": masks}, itm_logits=logits)

    yield CentrePoint
    del TEXT_PROMPT_STRATEGIES["centre_point"]


def test_a_strategy_registered_in_a_test_file_runs_through_the_model(centre_point_strategy):
    assert "centre_point" in text_prompt_mode_choices()
    model = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    inputs = {**_inputs(1), "input_ids": torch.tensor([[1, 5, 6, 3], [1, 7, 3, 0]])}
    del inputs["input_points"]
    with torch.no_grad():
        out = model(**inputs, text_prompt_mode="centre_point", text_prompt_kwargs={"fraction": 0.25})
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        expected = model(
            image_embeddings=embeddings.expand(2, -1, -1, -1),
            input_points=torch.full((2, 1, 1, 2), 16.0),
            input_labels=torch.ones(2, 1, 1, dtype=torch.long),
        )
    assert type(out) is EsamBlipSegmentationOutput and out.itm_probability.shape == (2,)
    torch.testing.assert_close(out.pred_masks, expected.pred_masks)
    with pytest.raises(TypeError, match=r"does not take; it takes \['fraction'\]"):
        model(**inputs, text_prompt_mode="centre_point", text_prompt_kwargs={"fractoin": 0.25})


def test_auto_resolves_in_one_place():
    plain = tiny_joint_config()
    assert resolve_text_prompt_mode(plain) == "gradcam"
    assert resolve_text_prompt_mode(tiny_joint_config(prompter_source="text")) == "learned"
    assert resolve_text_prompt_mode(plain, "learned") == "learned"
    with pytest.raises(ValueError, match=r"`text_prompt_mode` must be one of \('auto', 'gradcam', 'learned'\)"):
        resolve_text_prompt_mode(plain, "magic")
    with pytest.raises(ValueError, match="already registered"):
        register_text_prompt_strategy("gradcam")(type("Again", (EsamBlipTextPromptStrategy,), {}))


def test_gradcam_settings_are_overridable_per_call():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    inputs = {**_inputs(1), "input_ids": torch.tensor([[1, 5, 6, 3]])}
    del inputs["input_points"]
    with torch.no_grad():
        one = model(**inputs, text_prompt_kwargs={"num_points": 1})
        two = model(**inputs, text_prompt_kwargs={"num_points": 2, "num_background_points": 1})
        strict = model(**inputs, match_threshold=1.0)
    assert one.prompt_points.shape[1] == 1 and two.prompt_points.shape[1] == 3
    assert not strict.is_match.any()
    with pytest.raises(TypeError, match="`match_threshold` must be a number"):
        model(**inputs, match_threshold="high")
    with pytest.raises(ValueError, match="`text_prompt_kwargs` configure text prompts"):
        model(
            pixel_values=inputs["pixel_values"],
            input_points=torch.rand(1, 1, 1, 2) * 64,
            text_prompt_kwargs={"num_points": 2},
        )


@pytest.fixture
def gated_fusion():
    """A decoder-side fusion written here: a learned scalar gate on the mean BLIP token, zero at init."""

    @register_fusion("gated_mean")
    class GatedMean(EsamBlipFusion):
        location = "decoder"

        def __init__(self, blip_width: int, channels: int) -> None:
            super().__init__()
            self.proj = nn.Linear(blip_width, channels)
            self.gate = nn.Parameter(torch.zeros(()))

        @classmethod
        def from_config(cls, config: EsamBlipConfig) -> "GatedMean":
            return cls(config.vision_config.hidden_size, config.sam_vision_config.output_channels)

        def forward(self, sam_features, blip_image_embeds):
            return sam_features + self.gate * self.proj(blip_image_embeds.mean(dim=1))[:, :, None, None]

    yield GatedMean
    del FUSIONS["gated_mean"]


def test_a_fusion_registered_in_a_test_file_runs_through_the_model(gated_fusion):
    assert "gated_mean" in fusion_type_choices()
    fused = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="gated_mean")).eval()
    plain = EsamBlipForPromptableSegmentation(tiny_joint_config()).eval()
    plain.load_state_dict(fused.state_dict(), strict=False)
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).pred_masks, plain(**inputs).pred_masks)
        fused.model.fusion.gate.fill_(1.0)
        assert not torch.equal(fused(**inputs).pred_masks, plain(**inputs).pred_masks)
    with pytest.raises(ValueError, match=r"`fusion_type` must be one of \('none', 'concat'"):
        tiny_joint_config(fusion_type="gated_meen")


def test_fusions_declare_where_they_act():
    assert {name: cls.location for name, cls in FUSIONS.items()} == {
        "concat": "decoder",
        "cross_attention": "decoder",
        "adapter": "decoder",
        "multilevel": "encoder",
    }
