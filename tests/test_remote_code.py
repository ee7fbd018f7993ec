"""Saved checkpoints load with `trust_remote_code=True` where the package cannot be imported: Auto classes, pipeline."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sam_config
from transformers import pipeline

from transformers_esam_blip import (
    EsamBlipForPromptableSegmentation,
    EsamBlipImageProcessor,
    EsamBlipModel,
    EsamBlipProcessor,
)
from transformers_esam_blip.pipelines import TASK, TextPromptedSegmentationPipeline
from transformers_esam_blip.processing_esam_blip import build_blip_tokenizer

WORDS = ["a", "the", "dog", "cat", "red", "ball", "on", "grass"]
TEXTS = ["a red ball", "the dog on the grass"]
POINTS = [[[[10, 12], [30, 20]]]]

# Runs in a fresh interpreter where `import transformers_esam_blip` fails, so only the code saved next to the weights
# can run. Prints one JSON line of class names; saves the outputs for the test to compare with in-process ones.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["transformers_esam_blip"] = None  # `import transformers_esam_blip` now raises ImportError
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, AutoProcessor, pipeline

    folder, image_file, output_file = sys.argv[1:4]
    texts, points = json.loads(sys.argv[4]), json.loads(sys.argv[5])
    image = np.load(image_file)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    segmenter = AutoModelForMaskGeneration.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=image, input_points=points, return_tensors="pt")
    with torch.no_grad():
        embeddings = base.get_image_embeddings(inputs["pixel_values"])
        masks = segmenter(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])
    text_pipeline = pipeline("text-prompted-segmentation", model=folder, trust_remote_code=True, device="cpu")
    results = text_pipeline(image, texts)
    torch.save(
        {
            "inputs": dict(inputs),
            "image_embeddings": embeddings,
            "pred_masks": masks.pred_masks,
            "iou_scores": masks.iou_scores,
            "pipeline": results,
        },
        output_file,
    )
    loaded = [config, base, segmenter, processor, processor.image_processor, text_pipeline]
    print(json.dumps({type(obj).__name__: type(obj).__module__ for obj in loaded}))
    """
)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> "pipeline":
    """A random tiny model with both halves (64 px EfficientSAM, 32 px BLIP) and its processor, as a pipeline."""
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = build_blip_tokenizer(folder / "vocab.txt")
    processor = EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64, blip_image_size=32), tokenizer)
    config = tiny_sam_config(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "intermediate_size": 64,
        },
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        },
        image_text_hidden_size=16,
        gradcam_block_num=1,
        enc_token_id=processor.enc_token_id,
    )
    torch.manual_seed(0)
    model = EsamBlipForPromptableSegmentation(config).eval()
    return pipeline(TASK, model=model, processor=processor, device="cpu")


@pytest.fixture(scope="module")
def saved(tiny_pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "esam-blip-tiny"
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


def test_model_checkpoints_carry_every_auto_class(tmp_path: Path) -> None:
    config = tiny_sam_config()
    for model_class in (EsamBlipForPromptableSegmentation, EsamBlipModel):
        folder = tmp_path / model_class.__name__
        model_class(config).save_pretrained(folder)
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert auto_map == {
            "AutoConfig": "configuration_esam_blip.EsamBlipConfig",
            "AutoModel": "modeling_esam_blip.EsamBlipModel",
            "AutoModelForMaskGeneration": "modeling_esam_blip.EsamBlipForPromptableSegmentation",
        }
        assert {"configuration_esam_blip.py", "modeling_esam_blip.py"} <= {path.name for path in folder.iterdir()}


def test_saved_pipeline_names_its_code_and_the_processor(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "pipelines.TextPromptedSegmentationPipeline",
            "pt": ["AutoModelForMaskGeneration"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((saved / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_esam_blip.EsamBlipProcessor"
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_esam_blip.EsamBlipImageProcessor"
    )
    names = {path.name for path in saved.iterdir()}
    assert {"pipelines.py", "processing_esam_blip.py", "image_processing_esam_blip.py", "prompts.py"} <= names
    # Everything the saved modules import relatively was saved with them (the loader reads flat sibling files only).
    for module in saved.glob("*.py"):
        for line in module.read_text().splitlines():
            if line.lstrip().startswith("from .") and " import " in line:
                assert (saved / f"{line.split()[1][1:]}.py").is_file(), f"{module.name}: {line.strip()}"


@pytest.mark.slow
def test_remote_code_without_the_package_matches_in_process(saved: Path, image: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "image.npy", image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_SCRIPT,
            str(saved),
            str(tmp_path / "image.npy"),
            str(tmp_path / "remote.pt"),
            json.dumps(TEXTS),
            json.dumps(POINTS),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(classes) == {
        "EsamBlipConfig",
        "EsamBlipModel",
        "EsamBlipForPromptableSegmentation",
        "EsamBlipProcessor",
        "EsamBlipImageProcessor",
        "TextPromptedSegmentationPipeline",
    }
    assert all(module.startswith("transformers_modules.") for module in classes.values()), classes
    remote = torch.load(tmp_path / "remote.pt", weights_only=False)

    # The same folder in-process, through the package's classes.
    processor = EsamBlipProcessor.from_pretrained(saved)
    model = EsamBlipForPromptableSegmentation.from_pretrained(saved).eval()
    base = EsamBlipModel.from_pretrained(saved).eval()
    inputs = processor(images=image, input_points=POINTS, return_tensors="pt")
    assert set(remote["inputs"]) == set(inputs)
    for key, value in inputs.items():
        assert torch.equal(remote["inputs"][key], value), key
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])
        embeddings = base.get_image_embeddings(inputs["pixel_values"])
    assert torch.equal(remote["image_embeddings"], embeddings)
    assert torch.equal(remote["pred_masks"], out.pred_masks)
    assert torch.equal(remote["iou_scores"], out.iou_scores)

    # A folder that names its pipeline code asks for `trust_remote_code` unless the pipeline class is given.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline(TASK, model=str(saved), device="cpu")
    in_process = pipeline(TASK, model=str(saved), pipeline_class=TextPromptedSegmentationPipeline, device="cpu")
    assert type(in_process.model) is EsamBlipForPromptableSegmentation
    expected = in_process(image, TEXTS)
    assert len(remote["pipeline"]) == len(expected) == len(TEXTS)
    for got, want in zip(remote["pipeline"], expected, strict=True):
        assert set(got) == set(want)
        assert got["text"] == want["text"] and got["is_match"] == want["is_match"]
        assert torch.equal(got["mask"], want["mask"])
        assert got["points"] == want["points"] and got["point_labels"] == want["point_labels"]
        assert got["score"] == want["score"] and got["match_probability"] == want["match_probability"]
        assert torch.equal(got["heatmap"], want["heatmap"])
        assert torch.equal(got["enhanced_heatmap"], want["enhanced_heatmap"])
