"""The prompt module: vocabulary, boundary validation, assembly, and tracing/export of the point/box path."""

import pytest
import torch
from conftest import tiny_sam_config

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.prompts import (
    VALID_LABELS,
    PromptLabel,
    append_points,
    append_prompt_tokens,
    assemble_prompts,
    is_tracing,
    validate_point_and_box_prompts,
)

FRAME = 64


def test_vocabulary_is_the_originals():
    assert [int(label) for label in PromptLabel] == [-1, 0, 1, 2, 3] == list(VALID_LABELS)
    assert PromptLabel.PADDING == -1 and PromptLabel.BOX_BOTTOM_RIGHT == 3


def _points(batch=1, queries=2, points=2):
    return torch.rand(batch, queries, points, 2) * FRAME


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_points": _points(), "input_labels": torch.full((1, 2, 2), 0.5)}, TypeError, "`input_labels` must hold integers"),
        ({"input_points": _points(), "input_labels": torch.ones(1, 2, 2, dtype=torch.bool)}, TypeError, "`input_labels` must be an integer"),
        ({"input_points": _points(), "input_labels": torch.full((1, 2, 2), 7)}, ValueError, r"`input_labels` must be in \[-1, 0, 1, 2, 3\]"),
        ({"input_points": _points(), "input_labels": torch.ones(1, 2, 3, dtype=torch.long)}, ValueError, "`input_labels` must have shape"),
        ({"input_points": torch.full((1, 1, 1, 2), float("nan"))}, ValueError, "`input_points` must be finite"),
        ({"input_points": torch.full((1, 1, 1, 2), 500.0)}, ValueError, "`input_points` must lie in the 64x64 encoder frame"),
        ({"input_points": torch.zeros(1, 0, 1, 2)}, ValueError, "`input_points` holds no query"),
        ({"input_points": torch.zeros(1, 1, 0, 2)}, ValueError, "`input_points` must hold at least one point"),
        ({"input_points": [[[[1.0, 2.0]]]]}, TypeError, "`input_points` must be a torch.Tensor"),
        ({"input_boxes": torch.tensor([[[1.0, 2.0, float("nan"), 4.0]]])}, ValueError, "`input_boxes` must be finite"),
        ({"input_boxes": torch.tensor([[[1.0, 2.0, 900.0, 4.0]]])}, ValueError, "`input_boxes` must lie in the 64x64"),
        ({"input_boxes": torch.tensor([[[9.0, 2.0, 1.0, 4.0]]])}, ValueError, "x2 >= x1"),
        ({"input_boxes": torch.zeros(1, 0, 4)}, ValueError, "`input_boxes` holds no query"),
        ({"input_boxes": torch.zeros(2, 1, 4)}, ValueError, "`input_boxes` has batch size 2 but the images have 1"),
        ({"input_points": _points(queries=2), "input_boxes": torch.zeros(1, 3, 4)}, ValueError, "same number of queries"),
        ({"input_labels": torch.ones(1, 1, 1)}, ValueError, "`input_labels` was given without `input_points`"),
        ({}, ValueError, "EfficientSAM needs a prompt"),
    ],
)  # fmt: skip
def test_validation_names_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        validate_point_and_box_prompts(
            1, FRAME, kwargs.get("input_points"), kwargs.get("input_labels"), kwargs.get("input_boxes")
        )


def test_integral_float_labels_and_padding_points_outside_the_frame_are_accepted():
    points = torch.tensor([[[[10.0, 10.0], [-1.0, -1.0]]]])
    labels = torch.tensor([[[1.0, -1.0]]])
    validate_point_and_box_prompts(1, FRAME, points, labels, None)


def test_the_model_validates_at_its_boundary_with_the_module_messages():
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    embeddings = torch.randn(1, 16, 8, 8)
    with pytest.raises(ValueError, match="`input_boxes` must be finite"):
        model(image_embeddings=embeddings, input_boxes=torch.tensor([[[1.0, 2.0, float("nan"), 4.0]]]))
    with pytest.raises(TypeError, match="`multimask_output` must be a bool, got str"):
        model(image_embeddings=embeddings, input_points=_points(), multimask_output="no")
    with pytest.raises(TypeError, match="multimask_outputs"):
        model(image_embeddings=embeddings, input_points=_points(), multimask_outputs=False)


def test_assembly_puts_box_corners_after_points_and_pads():
    points, labels = assemble_prompts(_points(queries=1, points=1), None, torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), 6)
    assert points.shape == (1, 1, 6, 2)
    assert (
        labels[0, 0].tolist()
        == [PromptLabel.FOREGROUND, PromptLabel.BOX_TOP_LEFT, PromptLabel.BOX_BOTTOM_RIGHT] + [PromptLabel.PADDING] * 3
    )
    assert points[0, 0, 1:3].flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (points[0, 0, 3:] == -1).all()


def test_append_points_and_tokens():
    extra, extra_labels = torch.rand(2, 3, 2), torch.ones(2, 3, dtype=torch.long)
    points, labels = append_points(None, None, extra, extra_labels, num_queries=4)
    assert points.shape == (2, 4, 3, 2) and labels.shape == (2, 4, 3)
    points, labels = append_points(torch.rand(2, 4, 1, 2), None, extra, extra_labels, num_queries=4)
    assert points.shape == (2, 4, 4, 2) and labels[:, :, 0].eq(PromptLabel.FOREGROUND).all()
    tokens = torch.randn(2, 5, 8)
    assert append_prompt_tokens(None, tokens).shape == (2, 1, 5, 8)
    sparse = append_prompt_tokens(torch.randn(2, 4, 6, 8), tokens)
    assert sparse.shape == (2, 4, 11, 8) and torch.equal(sparse[:, 2, 6:], tokens)


class _PointBoxPath(torch.nn.Module):
    """The model's point/box path as a function of tensors only, for `torch.export`."""

    def __init__(self, model: EsamBlipForPromptableSegmentation) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, input_points, input_labels, input_boxes):
        out = self.model(
            image_embeddings=image_embeddings,
            input_points=input_points,
            input_labels=input_labels,
            input_boxes=input_boxes,
        )
        return out.pred_masks, out.iou_scores


def _prompts(num_queries: int):
    points = torch.rand(1, num_queries, 2, 2) * FRAME
    labels = torch.randint(0, 2, (1, num_queries, 2))
    boxes = torch.tensor([[[1.0, 2.0, 40.0, 50.0]]]).repeat(1, num_queries, 1)
    return points, labels, boxes


@pytest.mark.slow
@pytest.mark.parametrize("num_queries", [1, 7])
def test_torch_export_of_the_point_box_path(num_queries):
    model = _PointBoxPath(EsamBlipForPromptableSegmentation(tiny_sam_config()).eval())
    embeddings = torch.randn(1, 16, 8, 8)
    args = (embeddings, *_prompts(num_queries))
    exported = torch.export.export(model, args)
    for got, expected in zip(exported.module()(*args), model(*args), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.slow
def test_torch_export_with_a_dynamic_number_of_queries():
    model = _PointBoxPath(EsamBlipForPromptableSegmentation(tiny_sam_config()).eval())
    embeddings = torch.randn(1, 16, 8, 8)
    queries = torch.export.Dim("queries", min=1, max=64)
    dynamic = {
        "image_embeddings": None,
        "input_points": {1: queries},
        "input_labels": {1: queries},
        "input_boxes": {1: queries},
    }
    exported = torch.export.export(model, (embeddings, *_prompts(2)), dynamic_shapes=dynamic)
    for num_queries in (1, 3, 7):
        args = (embeddings, *_prompts(num_queries))
        masks, scores = exported.module()(*args)
        assert masks.shape[1] == num_queries
        torch.testing.assert_close((masks, scores), model(*args), rtol=0, atol=0)


def test_checks_are_skipped_while_tracing(monkeypatch):
    assert not is_tracing()
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    called = []
    monkeypatch.setattr(type(model), "_check_inputs", lambda self, *args: called.append(args))
    model(image_embeddings=torch.randn(1, 16, 8, 8), input_points=_points())
    assert len(called) == 1
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model(image_embeddings=torch.randn(1, 16, 8, 8), input_points=_points())
    assert len(called) == 1
