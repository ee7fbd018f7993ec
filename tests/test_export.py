"""ONNX export of the EfficientSAM half and the onnxruntime runner, against the torch model (tiny random weights)."""

import json

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import tiny_sam_config

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipImageProcessor
from transformers_esam_blip import export as export_module
from transformers_esam_blip.export import EsamBlipOnnxRunner, PromptDecoderGraph, export_onnx

TOLERANCE = 1e-4
SIZE = 64  # tiny config: 64x64 input, 8x8 embedding grid, 32x32 masks, 6 points per query


def _tiny_model() -> EsamBlipForPromptableSegmentation:
    torch.manual_seed(0)
    model = EsamBlipForPromptableSegmentation(tiny_sam_config()).eval()
    # The default init gives mask logits of ~1e-5, against which a 1e-4 tolerance would check nothing.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _tiny_model()
    folder = tmp_path_factory.mktemp("export") / "esam-onnx"
    folder.mkdir()  # an existing empty folder is not "taken"
    paths = export_onnx(model, folder)
    return model, paths, EsamBlipOnnxRunner.from_pretrained(folder)


def _points(generator: torch.Generator, batch: int, queries: int, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.rand(batch, queries, points, 2, generator=generator) * SIZE
    labels = torch.randint(0, 2, (batch, queries, points), generator=generator)
    return coords, labels


def _boxes(generator: torch.Generator, batch: int, queries: int) -> torch.Tensor:
    corners = torch.rand(batch, queries, 2, 2, generator=generator) * SIZE
    return corners.sort(dim=2).values.reshape(batch, queries, 4)  # (x1, y1, x2, y2) with x1 <= x2, y1 <= y2


def _max_error(actual: np.ndarray, expected: torch.Tensor) -> float:
    assert actual.shape == tuple(expected.shape)
    return float(np.abs(actual - expected.numpy()).max())


def test_export_writes_the_folder(exported):
    model, paths, runner = exported
    folder = paths["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "image_encoder.onnx",
        "onnx_config.json",
        "prompt_decoder.onnx",
    ]
    assert all(paths[key].is_file() for key in ("image_encoder", "prompt_decoder", "config", "onnx_config"))
    assert [p.name for p in folder.parent.iterdir()] == ["esam-onnx"], "staging folder left behind"
    onnx_config = json.loads(paths["onnx_config"].read_text())
    assert onnx_config["opset_version"] == 17
    assert onnx_config["prompt_decoder"]["inputs"] == ["image_embeddings", "points", "labels"]
    assert onnx_config["prompt_decoder"]["outputs"] == ["pred_masks", "iou_scores"]
    assert onnx_config["num_mask_tokens"] == 4
    assert onnx_config["multimask_output"] == {"true": [1, 4], "false": [0, 1]}
    assert onnx_config["processor_class"] is None and runner.processor is None
    assert EsamBlipConfig.from_pretrained(folder).sam_vision_config.image_size == SIZE
    inputs = {i.name: i.shape for i in runner.prompt_decoder.get_inputs()}
    assert inputs["points"][:3] == ["batch", "queries", "points"] and inputs["labels"] == ["batch", "queries", "points"]


@pytest.mark.parametrize("batch", [1, 3])
def test_image_encoder_matches_torch(exported, batch):
    model, _, runner = exported
    pixel_values = torch.randn(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.get_image_embeddings(pixel_values)
    assert _max_error(runner.get_image_embeddings(pixel_values.numpy()), expected) < TOLERANCE
    assert _max_error(runner.get_image_embeddings(pixel_values), expected) < TOLERANCE  # torch input too


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("num_queries", [1, 7])
@pytest.mark.parametrize("prompt", ["points", "boxes", "points+boxes"])
def test_runner_matches_model(exported, prompt, num_queries, multimask_output):
    model, _, runner = exported
    generator = torch.Generator().manual_seed(num_queries)
    pixel_values = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    prompts = {}
    if "points" in prompt:
        prompts["input_points"], prompts["input_labels"] = _points(generator, 2, num_queries, 3)
    if "boxes" in prompt:
        prompts["input_boxes"] = _boxes(generator, 2, num_queries)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, multimask_output=multimask_output, **prompts)
    # numpy prompts with torch images: the runner takes either, as the processor returns them.
    outputs = runner(
        pixel_values=pixel_values, multimask_output=multimask_output, **{k: v.numpy() for k, v in prompts.items()}
    )
    num_masks = 3 if multimask_output else 1
    assert outputs["pred_masks"].shape == (2, num_queries, num_masks, 32, 32)
    assert _max_error(outputs["pred_masks"], expected.pred_masks) < TOLERANCE
    assert _max_error(outputs["iou_scores"], expected.iou_scores) < TOLERANCE
    assert _max_error(outputs["image_embeddings"], expected.image_embeddings) < TOLERANCE
    assert expected.pred_masks.abs().max() > 1e-2  # the comparison is not vacuous

    # Prompting cached embeddings gives the same masks.
    again = runner(image_embeddings=outputs["image_embeddings"], multimask_output=multimask_output, **prompts)
    assert np.array_equal(again["pred_masks"], outputs["pred_masks"])


def test_decoder_graph_has_dynamic_queries_and_points(exported):
    """One export, run with several batch sizes, query and point counts (also P != max_num_points)."""
    model, _, runner = exported
    sam = model.model.sam
    generator = torch.Generator().manual_seed(1)
    for batch, num_queries, num_points in [(1, 1, 6), (2, 5, 2), (3, 2, 9), (1, 11, 1)]:
        embeddings = torch.randn(batch, 16, 8, 8, generator=generator)
        points, labels = _points(generator, batch, num_queries, num_points)
        labels[..., -1] = -1  # a padded slot
        masks, scores = runner.prompt_decoder.run(
            None, {"image_embeddings": embeddings.numpy(), "points": points.numpy(), "labels": labels.numpy()}
        )
        with torch.no_grad():
            expected_masks, expected_scores = PromptDecoderGraph(sam)(embeddings, points, labels)
            multimask, _ = sam.decode(embeddings, sam.embed_prompts(points, labels), multimask_output=True)
        assert masks.shape == (batch, num_queries, 4, 32, 32)
        assert _max_error(masks, expected_masks) < TOLERANCE
        assert _max_error(scores, expected_scores) < TOLERANCE
        assert torch.equal(expected_masks[:, :, 1:], multimask)  # tokens 1..3 are the multimask output


def test_runner_varied_point_counts(exported):
    """Queries with 1 or 8 points (assembled to 6, truncating as the model does) match `model(...)`."""
    model, _, runner = exported
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator)
    for num_points in (1, 8):
        points, labels = _points(generator, 2, 4, num_points)
        with torch.no_grad():
            expected = model(image_embeddings=embeddings, input_points=points, input_labels=labels)
        outputs = runner(image_embeddings=embeddings.numpy(), input_points=points, input_labels=labels)
        assert _max_error(outputs["pred_masks"], expected.pred_masks) < TOLERANCE


def test_runner_validates_inputs_like_the_model(exported):
    _, _, runner = exported
    embeddings = np.zeros((1, 16, 8, 8), dtype=np.float32)
    points = np.full((1, 1, 1, 2), 10.0, dtype=np.float32)
    with pytest.raises(ValueError, match="exactly one of `pixel_values` and `image_embeddings`"):
        runner(input_points=points)
    with pytest.raises(ValueError, match="`pixel_values` must have shape"):
        runner(pixel_values=np.zeros((1, 3, 32, 32), dtype=np.float32), input_points=points)
    with pytest.raises(ValueError, match="`image_embeddings` must have shape"):
        runner(image_embeddings=np.zeros((1, 8, 8, 8), dtype=np.float32), input_points=points)
    with pytest.raises(ValueError, match="needs a prompt"):
        runner(image_embeddings=embeddings)
    with pytest.raises(ValueError, match="`input_labels` must be in"):
        runner(image_embeddings=embeddings, input_points=points, input_labels=np.array([[[7]]]))
    with pytest.raises(ValueError, match="encoder frame"):
        runner(image_embeddings=embeddings, input_points=points * 100)
    with pytest.raises(ValueError, match="batch size 2"):
        runner(image_embeddings=embeddings, input_points=np.repeat(points, 2, axis=0))
    with pytest.raises(TypeError, match="`input_points` must be a torch.Tensor"):
        runner(image_embeddings=embeddings, input_points=[[[[1.0, 2.0]]]])


def test_refuses_to_overwrite(exported, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="`output_dir`.*overwrite=True"):
        export_onnx(exported[0], output)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="`output_dir`.*not a folder"):
        export_onnx(exported[0], output / "keep.txt")


def test_overwrite_replaces_the_folder(exported, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    paths = export_onnx(exported[0], output, overwrite=True)
    assert not (output / "keep.txt").exists() and paths["prompt_decoder"].is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # neither the old nor the staging folder is left


def test_failed_export_leaves_no_folder(exported, tmp_path, monkeypatch):
    calls = []
    real_export_graph = export_module._export_graph

    def fail_on_decoder(module, *args, **kwargs):
        calls.append(type(module).__name__)
        if isinstance(module, PromptDecoderGraph):
            raise RuntimeError("simulated exporter failure")
        return real_export_graph(module, *args, **kwargs)

    monkeypatch.setattr(export_module, "_export_graph", fail_on_decoder)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(exported[0], tmp_path / "new")
    assert calls == ["ImageEncoderGraph", "PromptDecoderGraph"]  # the encoder graph had been written
    assert list(tmp_path.iterdir()) == []

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(exported[0], previous, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]
    assert [p.name for p in previous.iterdir()] == ["old.txt"]


def test_refuses_checkpoints_it_cannot_export(tmp_path):
    fused = EsamBlipForPromptableSegmentation(tiny_sam_config())
    fused.config.fusion_type = "concat"  # as a fused checkpoint reads; the check needs no trained fusion weights
    with pytest.raises(ValueError, match='point/box prompting of fusion_type="none" checkpoints'):
        export_onnx(fused, tmp_path / "fused")
    no_sam = EsamBlipForPromptableSegmentation(tiny_sam_config())
    no_sam.model.sam = None
    with pytest.raises(ValueError, match="no EfficientSAM half"):
        export_onnx(no_sam, tmp_path / "no-sam")
    with pytest.raises(TypeError, match="EsamBlipForPromptableSegmentation"):
        export_onnx(torch.nn.Linear(1, 1), tmp_path / "linear")
    with pytest.raises(ValueError, match="opset_version"):
        export_onnx(fused, tmp_path / "opset", opset_version=11)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        EsamBlipOnnxRunner.from_pretrained(tmp_path)


@pytest.mark.slow
def test_export_from_folder_keeps_the_processor(tmp_path):
    model = _tiny_model()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor = EsamBlipImageProcessor(sam_image_size=SIZE)
    processor.save_pretrained(checkpoint)
    with pytest.raises(ValueError, match="own folder"):
        export_onnx(str(checkpoint), checkpoint, overwrite=True)

    paths = export_onnx(str(checkpoint), tmp_path / "onnx")
    runner = EsamBlipOnnxRunner.from_pretrained(paths["folder"])
    assert runner.processor is not None
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    inputs = runner.processor(
        images=image, input_points=[[[[10, 20], [30, 5]]]], input_labels=[[[1, 0]]], input_boxes=[[[5, 5, 40, 30]]]
    )
    with torch.no_grad():
        expected = model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
            input_boxes=inputs["input_boxes"],
        )
    outputs = runner(
        pixel_values=inputs["pixel_values"],
        input_points=inputs["input_points"],
        input_labels=inputs["input_labels"],
        input_boxes=inputs["input_boxes"],
    )
    assert _max_error(outputs["pred_masks"], expected.pred_masks) < TOLERANCE
    assert _max_error(outputs["iou_scores"], expected.iou_scores) < TOLERANCE


@pytest.mark.slow
def test_export_keeps_the_callers_model_as_it_was(tmp_path):
    """A float16 model in training mode is exported as float32 from a copy; the caller's model is left untouched."""
    model = _tiny_model().half().train()
    runner = EsamBlipOnnxRunner.from_pretrained(export_onnx(model, tmp_path / "half")["folder"])
    assert model.training and model.model.sam.mask_decoder.training
    assert next(model.parameters()).dtype == torch.float16
    reference = model.float().eval()
    points, labels = _points(torch.Generator().manual_seed(4), 1, 2, 3)
    pixel_values = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, input_points=points, input_labels=labels)
    outputs = runner(pixel_values=pixel_values, input_points=points, input_labels=labels)
    assert _max_error(outputs["pred_masks"], expected.pred_masks) < TOLERANCE


@pytest.mark.slow
def test_torch_export_of_the_decoder_with_dynamic_queries():
    model = _tiny_model()
    graph = PromptDecoderGraph(model.model.sam)
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(2, 16, 8, 8, generator=generator)
    points, labels = _points(generator, 2, 3, 6)
    queries = torch.export.Dim("queries", min=1, max=64)
    program = torch.export.export(
        graph,
        (embeddings, points, labels),
        dynamic_shapes={"image_embeddings": None, "points": {1: queries}, "labels": {1: queries}},
    )
    for num_queries in (1, 7):
        points, labels = _points(generator, 2, num_queries, 6)
        with torch.no_grad():
            expected = graph(embeddings, points, labels)
            actual = program.module()(embeddings, points, labels)
        for got, want in zip(actual, expected):
            assert got.shape == want.shape and (got - want).abs().max() < TOLERANCE


def test_providers_are_passed_to_onnxruntime(exported):
    runner = EsamBlipOnnxRunner.from_pretrained(exported[1]["folder"], providers=["CPUExecutionProvider"])
    assert runner.image_encoder.get_providers() == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
