"""EfficientSAM conversion: fixture parity end to end (processor + converted model), CLI behaviour, bad checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EFFICIENTSAM_FIXTURE
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForMaskGeneration, AutoProcessor

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.conversion.checkpoint import convert_checkpoint, main
from transformers_esam_blip.conversion.efficient_sam import (
    efficient_sam_configs_from_state_dict,
    rename_efficient_sam_key,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("converted") / "esam"
    convert_checkpoint(output, efficientsam=EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt")
    return output


def _fixture_inputs():
    meta = json.loads((EFFICIENTSAM_FIXTURE / "meta.json").read_text())
    reference = load_file(EFFICIENTSAM_FIXTURE / "reference_outputs.safetensors")
    image = Image.open(EFFICIENTSAM_FIXTURE / "image.png").convert("RGB")
    return meta, reference, image


def test_converted_checkpoint_reproduces_the_original(converted):
    """Tolerances: the reference ran in float32 on the same (float16-exact) weights; we measure ~1e-6."""
    meta, reference, image = _fixture_inputs()
    model = AutoModelForMaskGeneration.from_pretrained(converted).eval()
    processor = AutoProcessor.from_pretrained(converted)
    assert isinstance(model, EsamBlipForPromptableSegmentation) and isinstance(processor, EsamBlipProcessor)
    points = [[q["points"] for q in meta["queries"]]]
    labels = [[q["labels"] for q in meta["queries"]]]
    inputs = processor(images=image, input_points=points, input_labels=labels, return_tensors="pt")
    assert inputs["original_sizes"].tolist() == [meta["image_hw"]]
    with torch.no_grad():
        out = model(**inputs)
    embedding_error = (out.image_embeddings - reference["image_embeddings"]).abs().max().item()
    logit_error = (out.pred_masks - reference["low_res_logits"]).abs().max().item()
    iou_error = (out.iou_scores - reference["iou_predictions"]).abs().max().item()
    assert embedding_error <= 1e-3, embedding_error
    assert logit_error <= 2e-3, logit_error
    assert iou_error <= 1e-3, iou_error

    full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
    best = out.iou_scores[0].argmax(-1)
    best_masks = full[torch.arange(len(best)), best]
    agreement = (best_masks == reference["best_mask_full_res"][0].bool()).float().mean().item()
    assert agreement >= 0.999, agreement


def test_box_prompt_equals_corner_labels(converted):
    meta, reference, image = _fixture_inputs()
    box_query = meta["queries"][1]
    assert box_query["labels"] == [2, 3]
    box = [coordinate for point in box_query["points"] for coordinate in point]
    model = EsamBlipForPromptableSegmentation.from_pretrained(converted).eval()
    processor = EsamBlipProcessor.from_pretrained(converted)
    inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert (out.pred_masks[0, 0] - reference["low_res_logits"][0, 1]).abs().max().item() <= 2e-3
    assert (out.iou_scores[0, 0] - reference["iou_predictions"][0, 1]).abs().max().item() <= 1e-3


def test_converted_folder_contents(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "conversion.json"} <= names
    assert any(name.startswith("modeling_esam_blip") for name in names)  # trust_remote_code files
    card = (converted / "README.md").read_text()
    assert "library_name: transformers" in card and "{{" not in card
    assert "EfficientSAM" in card
    config = json.loads((converted / "config.json").read_text())
    assert config["sam_vision_config"]["num_hidden_layers"] == 1
    assert config["sam_vision_config"]["num_attention_heads"] == 6
    assert config["vision_config"] is None


def test_never_overwrites_without_flag(converted, tmp_path):
    source = EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt"
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(output, efficientsam=source)
    assert (output / "keep.txt").read_text() == "mine"
    convert_checkpoint(output, efficientsam=source, overwrite=True, dtype="float16")
    assert not (output / "keep.txt").exists()
    reloaded = EsamBlipForPromptableSegmentation.from_pretrained(output)
    assert reloaded.dtype == torch.float16
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or backup folders left behind


def test_bare_state_dict_and_failed_run_leave_nothing(tmp_path):
    state = torch.load(EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt", weights_only=True)["model"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    convert_checkpoint(tmp_path / "ok", efficientsam=bare)
    assert (tmp_path / "ok" / "model.safetensors").is_file()

    broken = dict(state)
    broken["image_encoder.extra.weight"] = torch.zeros(1)
    del broken["mask_decoder.iou_token.weight"]
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing keys.*mask_decoder.iou_token.weight"):
        convert_checkpoint(tmp_path / "bad", efficientsam=tmp_path / "broken.pt")
    broken["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"]
    torch.save({"model": broken}, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match=r"unknown keys.*image_encoder\.extra\.weight"):
        convert_checkpoint(tmp_path / "bad", efficientsam=tmp_path / "unknown.pt")
    missing_block = {k: v for k, v in state.items() if "blocks.0.mlp.fc2" not in k}
    torch.save({"model": missing_block}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys.*model\.sam\.vision_encoder\.layers\.0\.mlp\.fc2\.weight"):
        convert_checkpoint(tmp_path / "bad", efficientsam=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="--sam_num_heads: 5 heads do not divide the encoder width 384"):
        convert_checkpoint(tmp_path / "bad", efficientsam=bare, sam_num_heads=5)
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt", "broken.pt", "missing.pt", "ok", "unknown.pt"]


@pytest.mark.parametrize("variant", ["vitt", "vits"])
def test_real_checkpoint_layouts_are_fully_mapped(variant):
    """Every key of the real EfficientSAM-Ti/-S checkpoints has a rule, and the config inferred has 12 blocks."""
    path = EFFICIENTSAM_FIXTURE.parent / f"original_keys_efficient_sam_{variant}.json"
    shapes = json.loads(path.read_text())
    assert all(rename_efficient_sam_key(key) is not None for key in shapes)
    state = {key: torch.empty(shape) for key, shape in shapes.items()}
    configs = efficient_sam_configs_from_state_dict(state)
    vision = configs["sam_vision_config"]
    assert vision.num_hidden_layers == 12
    assert vision.num_attention_heads == {"vitt": 3, "vits": 6}[variant]
    assert configs["mask_decoder_config"].iou_head_depth == 3
    model = EsamBlipForPromptableSegmentation(
        __import__("transformers_esam_blip").EsamBlipConfig(segmentation=True, **configs)
    )
    expected = {k.removeprefix("model.sam."): tuple(v.shape) for k, v in model.state_dict().items()}
    from transformers_esam_blip.conversion.efficient_sam import convert_efficient_sam_state_dict

    converted = {k: tuple(v.shape) for k, v in convert_efficient_sam_state_dict(state).items()}
    assert converted == expected
    assert sum(np.prod(s) for s in shapes.values()) / 1e6 == pytest.approx(
        {"vitt": 10.2, "vits": 26.4}[variant], abs=0.1
    )


def test_cli_reports_one_clear_line(tmp_path):
    script = REPO / "conversion" / "convert_esam_blip.py"
    result = subprocess.run(
        [sys.executable, str(script), "--efficientsam", str(tmp_path / "nope.pt"), "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --efficientsam: no such file: {tmp_path / 'nope.pt'}; re-run with --debug for the traceback"
    )
    assert main(["--output_dir", str(tmp_path / "o")]) == 2
