"""The demo on tiny random models: every prompt type on one encoding, the refinement loop, the table and the pictures.

The built-in model's run of the demo command is in test_builtin_model.py.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_esam_blip import EsamBlipForPromptableSegmentation, demo
from transformers_esam_blip.best_mask import select_best_masks
from transformers_esam_blip.builtin import BUILTIN_PRESETS
from transformers_esam_blip.builtin_presets import tiny_config, tiny_processor
from transformers_esam_blip.data import generate_scene, scene_rng

SEED = 3


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _model(processor, mask_prompts: bool, **overrides) -> EsamBlipForPromptableSegmentation:
    prompt_encoder = {**BUILTIN_PRESETS["tiny"].config["prompt_encoder_config"], "mask_prompts": mask_prompts}
    config = tiny_config(processor, prompter_source="text", prompt_encoder_config=prompt_encoder, **overrides)
    return EsamBlipForPromptableSegmentation(config).eval()


def _spy(monkeypatch, model, name: str) -> list[tuple[dict, object]]:
    """Record the keyword arguments and the result of every call of `model.<name>`."""
    calls = []
    original = getattr(model, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((kwargs if not args else {**kwargs, "args": args}, result))
        return result

    monkeypatch.setattr(model, name, spy)
    return calls


def test_object_points_lie_inside_the_object():
    _, objects = generate_scene(scene_rng(SEED, 0))
    for obj in objects:
        point, points = demo.object_points(obj["mask"], np.random.default_rng(0))
        assert len(points) == 3 and points[0] == point and len({tuple(p) for p in points}) == 3
        assert all(obj["mask"][int(y), int(x)] for x, y in points)
        assert demo.object_points(obj["mask"], np.random.default_rng(0)) == (point, points)  # deterministic
        rows, cols = np.nonzero(obj["mask"])
        assert abs(point[0] - cols.mean()) <= 2 and abs(point[1] - rows.mean()) <= 2  # the centre


def test_every_prompt_type_on_one_encoding(processor, tmp_path, monkeypatch, capsys):
    model = _model(processor, mask_prompts=True, fusion_type="concat")
    encodings = _spy(monkeypatch, model, "get_image_embeddings")
    calls = _spy(monkeypatch, model, "forward")
    summary = demo.run_scene_demo(model, processor, tmp_path, num_scenes=1, seed=SEED)
    _, objects = generate_scene(scene_rng(SEED, 0))

    assert len(encodings) == 1  # one image encoding for every prompt type, everything mode included
    assert all("pixel_values" not in kwargs and kwargs["image_embeddings"] is encodings[0][1] for kwargs, _ in calls)
    assert all(kwargs["blip_image_embeds"] is not None for kwargs, _ in calls)  # the concat fusion reads them
    assert set(summary["prompt_types"]) == set(demo.PROMPT_TYPES) and not summary["skipped"]
    for name, scores in summary["prompt_types"].items():
        assert 0.0 <= scores["mean_iou"] <= 1.0, name
        assert scores["num_queries"] == len(objects), name
    assert len(summary["texts"]) == len(objects) + demo.NUM_ABSENT_PER_SCENE
    assert sum(row["present"] for row in summary["texts"]) == len(objects)

    printed = capsys.readouterr().out
    assert f"Mean IoU over {len(objects)} objects in 1 scenes" in printed
    for name in demo.PROMPT_TYPES:
        assert f"  {name} " in printed
    assert "Image-text matching over" in printed and "ROC-AUC" in printed
    with Image.open(tmp_path / "scene_0.png") as picture:
        assert picture.width == demo.PANEL_COLUMNS * 256  # panels of the 256 px scene, four to a row
        num_panels = 7 + len(objects) + demo.NUM_ABSENT_PER_SCENE  # input, 6 prompt types, one per text
        assert picture.height > (num_panels // demo.PANEL_COLUMNS) * 256


def test_refinement_feeds_back_the_best_low_res_logits(processor, tmp_path, monkeypatch):
    model = _model(processor, mask_prompts=True)
    calls = _spy(monkeypatch, model, "forward")
    demo.run_scene_demo(model, processor, tmp_path, num_scenes=1, seed=SEED)
    refined = [index for index, (kwargs, _) in enumerate(calls) if kwargs.get("input_masks") is not None]
    assert len(refined) == 1
    kwargs, _ = calls[refined[0]]
    first_kwargs, first_outputs = calls[0]  # the one-point call, with the same points
    assert torch.equal(kwargs["input_points"], first_kwargs["input_points"])
    expected, _ = select_best_masks(first_outputs.pred_masks[0], first_outputs.iou_scores[0])
    mask_input_size = model.config.prompt_encoder_config.mask_input_size
    assert kwargs["input_masks"].shape == (1, len(expected), mask_input_size, mask_input_size)
    assert torch.equal(kwargs["input_masks"][0], expected)


def test_models_without_a_mask_encoder_skip_the_refinement(processor, tmp_path, monkeypatch, capsys):
    model = _model(processor, mask_prompts=False)
    calls = _spy(monkeypatch, model, "forward")
    summary = demo.run_scene_demo(model, processor, tmp_path, num_scenes=1, seed=SEED)
    assert demo.POINT_AND_MASK not in summary["prompt_types"] and demo.POINT_AND_MASK in summary["skipped"]
    assert not any(kwargs.get("input_masks") is not None for kwargs, _ in calls)
    assert "point + mask" in capsys.readouterr().out.split("skipped: no mask encoder")[0].splitlines()[-1]


def test_encoder_fusion_passes_pixels_and_skips_everything(processor, tmp_path, monkeypatch, capsys):
    model = _model(processor, mask_prompts=False, fusion_type="multilevel", fusion_layer=1)
    calls = _spy(monkeypatch, model, "forward")
    summary = demo.run_scene_demo(model, processor, tmp_path, num_scenes=1, seed=SEED)
    assert all("image_embeddings" not in kwargs and kwargs["pixel_values"] is not None for kwargs, _ in calls)
    assert demo.EVERYTHING in summary["skipped"] and demo.TEXT in summary["prompt_types"]
    assert "skipped: the model's fusion runs inside the encoder" in capsys.readouterr().out


def test_models_without_text_prompts_get_the_point_and_box_demo(processor, tmp_path, capsys):
    """A model without a learned prompter (here with a fusion that reads the BLIP image) segments `--image`."""
    folder = tmp_path / "model"
    EsamBlipForPromptableSegmentation(tiny_config(processor, fusion_type="concat")).save_pretrained(folder)
    processor.save_pretrained(folder)
    assert demo.main(["--model", str(folder), "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "No learned text prompter" in printed and "point query" in printed and "box query" in printed
    with Image.open(tmp_path / "out" / "point_box.png") as picture, Image.open(demo.DEMO_IMAGE) as scene:
        assert picture.size == scene.size
    assert demo.main(["--model", str(folder), "--image", str(tmp_path / "missing.png")]) == 2
    assert "--image" in capsys.readouterr().err
