"""The per-prompt-type evaluation: centre points, every score present and in range, the table, the command."""

import math

import numpy as np
import pytest
import torch

from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.evaluation import main
from transformers_esam_blip.evaluation_prompts import (
    PROMPT_TYPE_TARGETS,
    centre_point,
    evaluate_prompt_types,
    format_prompt_type_table,
)
from transformers_esam_blip.modeling_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.training import tiny_config, tiny_processor


def test_centre_point_is_farthest_from_the_boundary():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:16, 10:31] = True  # 11 x 21: the centre row is 10, the centre column 20
    assert centre_point(mask) == (20.0, 10.0)
    ring = np.zeros((20, 20), dtype=bool)
    ring[2:18, 2:18] = True
    ring[2:18, 2:5] = False  # an L-shape's thick part wins over its thin arm
    x, y = centre_point(ring)
    assert ring[int(y), int(x)] and 8 <= x <= 12
    single = np.zeros((5, 5), dtype=bool)
    single[4, 0] = True
    assert centre_point(single) == (0.0, 4.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return synthetic_referring_dataset(2, seed=4, cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)


@pytest.mark.parametrize("mask_prompts", [False, True])
def test_every_prompt_type_is_scored(scenes, mask_prompts):
    processor = tiny_processor()
    torch.manual_seed(0)
    config = tiny_config(processor, prompter_source="text")
    config.prompt_encoder_config.mask_prompts = mask_prompts
    model = EsamBlipForPromptableSegmentation(config).eval()
    results = evaluate_prompt_types(model, processor, scenes, gradcam_scenes=1, everything_scenes=1, progress=False)
    assert set(PROMPT_TYPE_TARGETS) <= set(results)
    present = sum(scenes["match_label"])
    assert results["num_objects"] == present and results["num_absent"] == len(scenes) - present
    first_scene = sum(label for scene, label in zip(scenes["scene_id"], scenes["match_label"]) if scene == 0)
    assert results["num_gradcam_objects"] == results["num_everything_objects"] == first_scene
    for key in ("text_miou", "one_point_miou", "three_points_miou", "box_miou", "everything_recall", "itm_roc_auc"):
        assert 0.0 <= results[key] <= 1.0, key
    refine = ("refine_mask_only_delta", "refine_with_point_delta")
    assert all(math.isnan(results[key]) != mask_prompts for key in refine)
    table = format_prompt_type_table(results)
    assert table.count("\n") == len(PROMPT_TYPE_TARGETS) + 1 and "| box_miou |" in table


def test_errors(scenes):
    processor = tiny_processor()
    model = EsamBlipForPromptableSegmentation(tiny_config(processor, prompter_source="text"))
    with pytest.raises(ValueError, match="lacks the column"):
        evaluate_prompt_types(model, processor, scenes.remove_columns("scene_id"))
    with pytest.raises(ValueError, match="`everything_scenes` must be an int >= 0, got -1"):
        evaluate_prompt_types(model, processor, scenes, everything_scenes=-1)


@pytest.mark.slow
def test_command_prints_the_table(tmp_path, capsys):
    argv = ["--num_scenes", "2", "--breakdown", "--gradcam_scenes", "1", "--everything_scenes", "1"]
    assert main([*argv, "--cache_dir", str(tmp_path), "--json", str(tmp_path / "scores.json")]) == 0
    out = capsys.readouterr().out
    assert "| score | value | goal | met |" in out and "| one_point_miou |" in out
    assert main(["--everything_scenes", "-2"]) == 2
    assert "error: --everything_scenes must be >= 0, got -2" in capsys.readouterr().err
