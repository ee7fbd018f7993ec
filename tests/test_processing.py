"""EsamBlipProcessor: LAVIS caption cleaning and tokenisation, [ENC]/[DEC], optional tokenizer, save/load, errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoProcessor, BertTokenizer

from transformers_esam_blip.configuration_esam_blip import EsamBlipConfig
from transformers_esam_blip.image_processing_esam_blip import EsamBlipImageProcessor
from transformers_esam_blip.processing_esam_blip import EsamBlipProcessor, build_blip_tokenizer, pre_caption

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_C = FIXTURES / "lavis_blip_itm" / "fixture_C"
needs_lavis_fixture = pytest.mark.skipif(
    not (FIXTURE_C / "tokenizer" / "vocab.txt").is_file(),
    reason=f"LAVIS BLIP ITM fixture not found at {FIXTURE_C}",
)
WORDS = ["a", "the", "dog", "cat", "red", "bus", "runs", "on", "grass", "?", ",", "-", "'", "s", "##s"]


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def processor(vocab_file: Path) -> EsamBlipProcessor:
    return EsamBlipProcessor(
        EsamBlipImageProcessor(sam_image_size=32, blip_image_size=16), build_blip_tokenizer(vocab_file)
    )


def random_image(height: int = 12, width: int = 10) -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, size=(height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ text cleaning


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("A Dog.", "a dog"),
        ("The  red   bus?", "the red bus?"),
        ('a "dog" (on) the *grass*: #1; ~ok!', "a dog on the grass 1 ok"),
        ("  a dog\n", "a dog"),
        ("a\tdog", "a\tdog"),
        ("a\t\tdog", "a dog"),
        ("dog's, cat-s", "dog's, cat-s"),
    ],
)
def test_pre_caption_follows_lavis(raw: str, cleaned: str) -> None:
    assert pre_caption(raw) == cleaned


def test_pre_caption_keeps_max_words() -> None:
    assert pre_caption("one two three four", max_words=2) == "one two"
    assert pre_caption(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


# ----------------------------------------------------------------------------------------- tokenisation


@needs_lavis_fixture
def test_fixture_captions_tokenise_as_lavis() -> None:
    inputs = torch.load(FIXTURE_C / "inputs.pt", weights_only=True)
    outputs = torch.load(FIXTURE_C / "outputs.pt", weights_only=True)
    tokenizer = BertTokenizer.from_pretrained(FIXTURE_C / "tokenizer")
    processor = EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=None, blip_image_size=112), tokenizer)
    encoded = processor(text=inputs["captions_raw"])
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert torch.equal(encoded["input_ids"], outputs["itc_input_ids"])
    assert torch.equal(encoded["attention_mask"], outputs["itc_attention_mask"])
    assert processor.enc_token_id == 196
    # The model puts [ENC] first for ITM; the processor output equals LAVIS's [CLS]-first ITM ids as well.
    assert torch.equal(encoded["input_ids"].repeat(2, 1), outputs["itm_input_ids"])


@needs_lavis_fixture
def test_build_blip_tokenizer_matches_the_fixture_tokenizer() -> None:
    built = build_blip_tokenizer(FIXTURE_C / "tokenizer" / "vocab.txt")
    saved = BertTokenizer.from_pretrained(FIXTURE_C / "tokenizer")
    assert len(built) == len(saved) == 197
    assert built.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [195, 196]
    assert built.bos_token == "[DEC]"
    captions = ["the merlion statue spouting water near the river", "a red bus?"]
    assert built(captions)["input_ids"] == saved(captions)["input_ids"]


def test_build_blip_tokenizer_is_idempotent(vocab_file: Path, tmp_path: Path) -> None:
    tokenizer = build_blip_tokenizer(vocab_file)
    dec_enc = tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"])
    assert dec_enc == [len(WORDS) + 5, len(WORDS) + 6]
    tokenizer.save_pretrained(tmp_path / "tok")
    rebuilt = build_blip_tokenizer(tmp_path / "tok")
    assert len(rebuilt) == len(tokenizer)
    assert rebuilt.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == dec_enc
    assert EsamBlipProcessor.build_blip_tokenizer is build_blip_tokenizer


def test_text_is_padded_to_the_longest_and_truncated(processor: EsamBlipProcessor) -> None:
    tokenizer = processor.tokenizer
    encoded = processor(text=["A dog.", "the red bus runs on the grass"])
    assert encoded["input_ids"].dtype == torch.int64
    assert encoded["input_ids"].shape == (2, 9)
    assert encoded["input_ids"][:, 0].tolist() == [tokenizer.cls_token_id] * 2
    assert encoded["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0], [1] * 9]
    assert "token_type_ids" not in encoded
    short = EsamBlipProcessor(processor.image_processor, tokenizer, max_txt_len=5)
    truncated = short(text="the red bus runs on the grass")["input_ids"]
    assert truncated.shape == (1, 5) and truncated[0, -1].item() == tokenizer.sep_token_id


def test_images_prompts_and_text_together(processor: EsamBlipProcessor) -> None:
    images = [random_image(12, 10), random_image(8, 16)]
    points = [[[[5, 6]]], [[[1, 2], [3, 4]]]]
    out = processor(images=images, text=["a dog", "a cat"], input_points=points)
    expected = processor.image_processor(images, input_points=points)
    assert set(out) == set(expected) | {"input_ids", "attention_mask"}
    for key in expected:
        assert torch.equal(out[key], expected[key])
    assert out["input_ids"].shape[0] == 2
    several = processor(images=images[0], text=["a dog", "a cat", "the bus"])
    assert several["input_ids"].shape[0] == 3 and several["pixel_values"].shape[0] == 1


def test_return_numpy(processor: EsamBlipProcessor) -> None:
    out = processor(images=random_image(), text="a dog", return_tensors="np")
    assert isinstance(out["input_ids"], np.ndarray) and isinstance(out["pixel_values"], np.ndarray)


def test_model_input_names_and_post_process(processor: EsamBlipProcessor) -> None:
    image_names = EsamBlipImageProcessor.model_input_names
    assert processor.model_input_names == [*image_names, "input_ids", "attention_mask"]
    out = processor(
        images=random_image(),
        text="a dog",
        input_points=[[[[1, 2]]]],
        input_boxes=[[[1, 1, 4, 4]]],
        input_masks=[[np.ones((12, 10), dtype=np.uint8)]],
    )
    assert set(out) == set(processor.model_input_names)
    assert tuple(out["input_masks"].shape) == (1, 1, 256, 256) and (out["input_masks"] > 0).all()
    logits = torch.randn(1, 2, 3, 8, 8)
    masks = processor.post_process_masks(logits, [(10, 12)])
    assert torch.equal(masks[0], processor.image_processor.post_process_masks(logits, [(10, 12)])[0])
    scores = torch.rand(1, 2, 3)
    best = processor.post_process_masks(logits, [(10, 12)], iou_scores=scores, best=True)
    assert torch.equal(best[0], masks[0][torch.arange(2), scores[0].argmax(-1)])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "Give `images`, `text`, or both"),
        ({"text": ""}, ValueError, r"`text\[0\]` \(''\) is empty"),
        ({"text": ["a dog", "   "]}, ValueError, r"`text\[1\]` .* is empty"),
        ({"text": "...!!"}, ValueError, r"is empty after caption cleaning"),
        ({"text": 3}, TypeError, r"`text` must be a string or a non-empty list"),
        ({"text": []}, TypeError, r"`text` must be a string or a non-empty list"),
        ({"text": [["a dog"]]}, TypeError, r"`text\[0\]` must be a string, got list"),
        ({"text": ["a dog", None]}, TypeError, r"`text\[1\]` must be a string"),
        ({"input_points": [[[[1, 1]]]]}, ValueError, r"prompts need `images`"),
        ({"text": "a dog", "input_data_format": "channels_last"}, ValueError, r"only apply to images"),
        ({"images": [random_image()] * 2, "text": ["a", "b", "c"]}, ValueError, r"3 texts for 2 images"),
        ({"images": random_image(), "unknown": 1}, TypeError, r"unknown"),
    ],
)
def test_call_errors(processor: EsamBlipProcessor, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        processor(**kwargs)


# ----------------------------------------------------------------------------------- keyword arguments


def test_tokenizer_kwargs_override_the_lavis_defaults(processor: EsamBlipProcessor) -> None:
    texts = ["a dog", "the red bus runs on the grass"]
    tokenizer = processor.tokenizer
    default = processor(text=texts)
    expected = tokenizer(
        texts, padding="longest", truncation=True, max_length=35, return_token_type_ids=False, return_tensors="pt"
    )
    assert set(default) == set(expected)
    for key in expected:
        assert torch.equal(default[key], expected[key])
    padded = processor(text=texts, padding="max_length", max_length=12)
    assert padded["input_ids"].shape == (2, 12)
    assert torch.equal(
        padded["input_ids"], processor(text=texts, text_kwargs={"padding": "max_length", "max_length": 12})["input_ids"]
    )
    assert processor(text=texts, max_length=4)["input_ids"].shape == (2, 4)
    assert "attention_mask" not in processor(text=texts, return_attention_mask=False)
    assert "token_type_ids" in processor(text=texts, return_token_type_ids=True)
    # Tokenizer arguments with images reach the tokenizer only; the image outputs stay as they were.
    image = random_image()
    joint = processor(images=image, text=texts, padding="max_length", max_length=12, truncation=True)
    assert joint["input_ids"].shape == (2, 12)
    assert torch.equal(joint["pixel_values"], processor(images=image)["pixel_values"])


def test_image_kwargs_reach_the_image_processor_only(processor: EsamBlipProcessor, monkeypatch) -> None:
    image = random_image()
    seen = {}
    original = processor.image_processor.preprocess

    def spy(images, **kwargs):
        seen.update(kwargs)
        return original(images, **kwargs)

    monkeypatch.setattr(processor.image_processor, "preprocess", spy)
    out = processor(images=image, text="a dog", do_normalize=False, padding="max_length", max_length=8)
    assert seen["do_normalize"] is False
    assert not {"padding", "max_length", "truncation", "return_token_type_ids"} & set(seen)
    assert out["input_ids"].shape == (1, 8)
    grouped = processor(images=image, images_kwargs={"do_normalize": False})
    assert torch.equal(grouped["pixel_values"], out["pixel_values"])
    expected = processor.image_processor(image, do_normalize=False)["pixel_values"]
    assert torch.equal(out["pixel_values"], expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"images": "image", "paddin": "longest"}, TypeError, r"unexpected keyword arguments \['paddin'\]"),
        ({"text": "a dog", "images_kwargs": {"size": 3}}, TypeError, r"images_kwargs\['size'\]"),
        ({"text": "a dog", "text_kwargs": {"do_resize": False}}, TypeError, r"text_kwargs\['do_resize'\]"),
        ({"text": "a dog", "text_kwargs": "padding"}, TypeError, r"`text_kwargs` must be a dict"),
        ({"images": "image", "max_txt_len": 3}, TypeError, r"\['max_txt_len'\]"),
        ({"images": "image", "padding": "longest"}, ValueError, r"\['padding'\] only apply to text"),
        ({"text": "a dog", "do_normalize": False}, ValueError, r"\['do_normalize'\] only apply to images"),
        ({"images": "image", "do_resize": 1}, TypeError, "do_resize"),
        ({"images": "image", "rescale_factor": "0.5"}, TypeError, "rescale_factor"),
        ({"images": "image", "do_rescale": False, "images_kwargs": {"do_rescale": True}}, ValueError, "two times"),
    ],
)
def test_keyword_argument_errors(processor: EsamBlipProcessor, kwargs: dict, error: type, match: str) -> None:
    if kwargs.get("images") == "image":
        kwargs["images"] = random_image()
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_enc_token_id_errors(vocab_file: Path) -> None:
    image_processor = EsamBlipImageProcessor(sam_image_size=32)
    plain = EsamBlipProcessor(image_processor, BertTokenizer(vocab=str(vocab_file)))
    with pytest.raises(ValueError, match=r"no \[ENC\] token"):
        _ = plain.enc_token_id
    without = EsamBlipProcessor(image_processor)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        _ = without.enc_token_id
    with pytest.raises(ValueError, match="`text` needs a tokenizer"):
        without(text="a dog")
    with pytest.raises(ValueError, match="max_txt_len"):
        EsamBlipProcessor(image_processor, max_txt_len=1)
    with pytest.raises(TypeError, match="tokenizer"):
        EsamBlipProcessor(image_processor, tokenizer="bert-base-uncased")


# ------------------------------------------------------------------------------------ saving and loading


def test_save_and_load_with_tokenizer(processor: EsamBlipProcessor, tmp_path: Path) -> None:
    custom = EsamBlipProcessor(processor.image_processor, processor.tokenizer, max_txt_len=20, max_words=30)
    custom.save_pretrained(tmp_path)
    AutoProcessor.register(EsamBlipConfig, EsamBlipProcessor, exist_ok=True)
    for loaded in (EsamBlipProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, EsamBlipProcessor)
        assert (loaded.max_txt_len, loaded.max_words) == (20, 30)
        assert loaded.image_processor.to_dict() == custom.image_processor.to_dict()
        assert loaded.enc_token_id == custom.enc_token_id
        text = ["a red dog", "the cat runs"]
        assert torch.equal(loaded(text=text)["input_ids"], custom(text=text)["input_ids"])


def test_segmentation_only_processor_saves_and_loads_without_tokenizer(tmp_path: Path) -> None:
    processor = EsamBlipProcessor(EsamBlipImageProcessor())
    assert processor.tokenizer is None
    files = processor.save_pretrained(tmp_path)
    assert [Path(f).name for f in files] == ["processor_config.json"]
    assert not any((tmp_path / name).exists() for name in ("tokenizer_config.json", "tokenizer.json", "vocab.txt"))
    AutoProcessor.register(EsamBlipConfig, EsamBlipProcessor, exist_ok=True)
    for loaded in (EsamBlipProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, EsamBlipProcessor) and loaded.tokenizer is None
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        out = loaded(images=PIL.Image.fromarray(random_image()), input_points=[[[[2, 3]]]])
        assert out["pixel_values"].shape == (1, 3, 1024, 1024) and out["input_points"].shape == (1, 1, 1, 2)
        assert loaded.model_input_names == EsamBlipImageProcessor.model_input_names


@pytest.mark.slow
def test_saved_processors_load_as_remote_code_without_the_package(processor: EsamBlipProcessor, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path / "full")
    EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=32)).save_pretrained(tmp_path / "segmentation")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from transformers import AutoProcessor

        assert "transformers_esam_blip" not in sys.modules
        full = AutoProcessor.from_pretrained("full", trust_remote_code=True)
        print(type(full).__name__, full(text="a red dog")["input_ids"].tolist(), full.enc_token_id)
        segmentation = AutoProcessor.from_pretrained("segmentation", trust_remote_code=True)
        out = segmentation(images=np.zeros((10, 20, 3), np.uint8), input_points=[[[[10, 5]]]])
        print(segmentation.tokenizer, out["input_points"].tolist())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected_ids = processor(text="a red dog")["input_ids"].tolist()
    assert result.stdout.splitlines() == [
        f"EsamBlipProcessor {expected_ids} {processor.enc_token_id}",
        "None [[[[16.0, 16.0]]]]",
    ]
