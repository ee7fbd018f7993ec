"""Texts with words the tokenizer does not know are reported, warned about and never a match."""

import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from transformers import pipeline
from transformers.utils import logging as hf_logging

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor


@pytest.fixture(scope="module")
def builtin():
    model = EsamBlipForPromptableSegmentation.from_pretrained("esam-blip-shapes").eval()
    return model, EsamBlipProcessor.from_pretrained("esam-blip-shapes")


def test_processor_names_the_unknown_words(builtin):
    _, processor = builtin
    assert processor.unknown_words(["a dog", "the red circle", "🔴🔵 vs 🐶🚗🌈"]) == [
        ["dog"],
        [],
        ["🔴🔵", "vs", "🐶🚗🌈"],
    ]  # 16-word vocabulary


@pytest.mark.parametrize("mode", ["learned", "gradcam"])
def test_model_never_matches_a_text_with_unknown_tokens(builtin, mode):
    model, processor = builtin
    image = Image.open(FIXTURES / "dogs.jpg")
    inputs = processor(images=image, text=["a dog", "🔴🔵", "the red circle"], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, text_prompt_mode=mode, match_threshold=0.0)  # every known text would match at 0
    assert out.has_unknown_tokens.tolist() == [True, True, False]
    assert out.is_match.tolist() == [False, False, True]


def test_pipeline_reports_and_warns(builtin, caplog):
    model, processor = builtin
    segment = pipeline("text-prompted-segmentation", model=model, processor=processor)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            results = segment(Image.open(FIXTURES / "dogs.jpg"), ["a dog", "the red circle"])
    finally:
        hf_logging.disable_propagation()
    assert results[0]["unknown_words"] == ["dog"] and results[0]["is_match"] is False
    assert results[1]["unknown_words"] == []
    assert "'a dog' holds words the model's tokenizer does not know (dog)" in caplog.text
