"""PnP-VQA end to end on tiny random models: stages, shapes, mask enhancement, reader forms, loading, pipeline, errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5Tokenizer,
    pipeline,
)

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.builtin_presets import tiny_config, tiny_processor
from transformers_esam_blip.configuration_pnp_vqa import EsamBlipPnpVqaConfig
from transformers_esam_blip.pipeline_pnp_vqa import TASK, EsamBlipPnpVqaPipeline
from transformers_esam_blip.pnp_vqa import EsamBlipForPnpVqa, load_captioner, load_reader
from transformers_esam_blip.pnp_vqa_reader import read_concatenated, read_fusion_in_decoder, reader_passages
from transformers_esam_blip.processing_esam_blip import build_blip_tokenizer
from transformers_esam_blip.text_prompting import mask_enhanced_heatmap
from transformers_esam_blip.visualization_pnp_vqa import draw_pnp_vqa, draw_pnp_vqa_result, patch_sample_counts

WORDS = "a picture of red green blue yellow circle square triangle the is there what colour shape".split()
QUESTIONS = ["what colour is the square?", "is there a red circle?"]
# Small settings for the tiny models: 4x4 patch grids on both sides, short captions.
SETTINGS = {
    "num_captions": 3,
    "num_patches": 4,
    "caption_max_length": 9,
    "caption_min_length": 6,
    "answer_max_length": 4,
}
ANSWER = "red"


def blip_tokenizer(folder: Path):
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    return build_blip_tokenizer(vocab_file)


def tiny_captioner(tokenizer, patch_size: int = 8) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A random BLIP captioner on 32² images: a 4x4 patch grid (patch 8) or 8x8 (patch 4)."""
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": patch_size,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    return BlipForConditionalGeneration(config).eval(), processor


def tiny_reader_tokenizer() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in [*WORDS, "\\n"]] + [(".", -3.0), ("?", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_reader(tokenizer: T5Tokenizer, answer: str | None = None) -> T5ForConditionalGeneration:
    """A random 1-layer T5; with `answer`, fitted in a few steps to give that answer to any passage."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    reader = T5ForConditionalGeneration(config)
    if answer is not None:
        passages = [f"{question} \\n a {colour} square." for question in QUESTIONS for colour in ("red", "blue")]
        inputs = tokenizer(passages, padding=True, return_tensors="pt")
        labels = tokenizer([answer] * len(passages), return_tensors="pt")["input_ids"]
        optimiser = torch.optim.Adam(reader.parameters(), lr=3e-2)
        for _ in range(20):
            loss = reader(**inputs, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return reader.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random matcher, captioner and reader saved to their own folders (the real `from_pretrained` paths)."""
    root = tmp_path_factory.mktemp("pnp-vqa")
    torch.manual_seed(0)
    processor = tiny_processor()
    matcher = EsamBlipForPromptableSegmentation(tiny_config(processor))
    matcher.save_pretrained(root / "matcher")
    processor.save_pretrained(root / "matcher")
    captioner, captioner_processor = tiny_captioner(blip_tokenizer(root))
    captioner.save_pretrained(root / "captioner")
    captioner_processor.save_pretrained(root / "captioner")
    reader_tokenizer = tiny_reader_tokenizer()
    tiny_reader(reader_tokenizer, ANSWER).save_pretrained(root / "reader")
    reader_tokenizer.save_pretrained(root / "reader")
    return {name: root / name for name in ("matcher", "captioner", "reader")}


@pytest.fixture(scope="module")
def vqa(checkpoints) -> EsamBlipForPnpVqa:
    return EsamBlipForPnpVqa.from_components(
        checkpoints["matcher"], str(checkpoints["captioner"]), str(checkpoints["reader"]), **SETTINGS
    )


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_question_to_answer_stage_by_stage(vqa, image):
    num_questions, grid = len(QUESTIONS), 4
    assert (vqa.heatmap_grid_size, vqa.patch_grid_size) == (grid, grid)

    located = vqa.heatmap(image, QUESTIONS)
    assert located.heatmap.shape == (num_questions, grid, grid)
    assert located.enhanced_heatmap.shape == (num_questions, grid, grid)
    assert 0 <= located.enhanced_heatmap.min() and located.enhanced_heatmap.max() <= 1
    mask_side = vqa.matcher.config.prompt_encoder_config.image_embedding_size * 4
    assert located.mask.shape == (num_questions, mask_side, mask_side) and located.mask.dtype == torch.bool
    assert torch.equal(located.gradcams, located.enhanced_heatmap.flatten(1))
    assert located.itm_probability.shape == (num_questions,)

    patches = vqa.sample_patches(located.gradcams, generator=seeded())
    assert patches.shape == (num_questions, SETTINGS["num_captions"], SETTINGS["num_patches"])
    assert patches.dtype == torch.long and patches.min() >= 1 and patches.max() <= grid * grid
    assert torch.equal(patches, patches.sort(dim=-1).values)
    assert all(len(set(row.tolist())) == SETTINGS["num_patches"] for row in patches.flatten(0, 1))

    captions = vqa.captions(patches, images=image)
    assert [len(caps) for caps in captions] == [SETTINGS["num_captions"]] * num_questions
    assert all(isinstance(caption, str) and caption for caps in captions for caption in caps)
    assert not any(caption.startswith("a picture of") for caps in captions for caption in caps)

    assert vqa.answer(QUESTIONS, captions) == [ANSWER] * num_questions


def test_forward_runs_the_stages_with_the_same_patches(vqa, image):
    torch.manual_seed(0)
    output = vqa(image, QUESTIONS, generator=seeded(3), deduplicate_captions=False)
    assert output.answers == [ANSWER] * len(QUESTIONS)
    assert [len(caps) for caps in output.captions] == [SETTINGS["num_captions"]] * len(QUESTIONS)
    assert output.patch_grid_size == 4
    expected = vqa.sample_patches(vqa.heatmap(image, QUESTIONS).gradcams, generator=seeded(3))
    assert torch.equal(torch.stack(output.patch_indices), expected)


def test_caption_filter_keeps_distinct_captions(vqa, image):
    torch.manual_seed(0)
    output = vqa(image, QUESTIONS[0], num_captions=6, max_caption_rounds=3, generator=seeded())
    captions = output.captions[0]
    assert 1 <= len(captions) <= 6 and output.patch_indices[0].shape == (len(captions), SETTINGS["num_patches"])
    for index, caption in enumerate(captions):
        assert not any(caption in earlier for earlier in captions[:index])


def test_mask_enhancement_changes_the_sampled_patches(vqa, image):
    plain = vqa.heatmap(image, QUESTIONS, use_mask_enhancement=False)
    enhanced = vqa.heatmap(image, QUESTIONS, heatmap_mask_alpha=0.25)
    assert plain.enhanced_heatmap is None and plain.mask is None
    torch.testing.assert_close(plain.heatmap, enhanced.heatmap)
    expected = mask_enhanced_heatmap(enhanced.heatmap, enhanced.mask, 0.25)
    torch.testing.assert_close(enhanced.enhanced_heatmap, expected)
    patches_plain = vqa.sample_patches(plain.gradcams, num_captions=8, generator=seeded())
    patches_enhanced = vqa.sample_patches(enhanced.gradcams, num_captions=8, generator=seeded())
    assert not torch.equal(patches_plain, patches_enhanced)


def test_patches_come_from_the_hot_cells(vqa):
    hot = torch.zeros(1, 4, 4)
    hot[0, 1:3, 2:4] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # four cells, the rest weightless
    patches = vqa.sample_patches(hot, num_captions=20, num_patches=4, generator=seeded())
    cells = {1 + row * 4 + col for row in (1, 2) for col in (2, 3)}
    assert all(set(row.tolist()) == cells for row in patches[0])
    # More patches than hot cells: the weightless cells fill in instead of failing as LAVIS's multinomial does.
    patches = vqa.sample_patches(hot, num_captions=5, num_patches=6, generator=seeded())
    assert all(cells < set(row.tolist()) for row in patches[0])


def test_heatmap_is_resized_to_a_finer_captioner_grid(checkpoints, tmp_path):
    captioner, captioner_processor = tiny_captioner(blip_tokenizer(tmp_path), patch_size=4)
    vqa = EsamBlipForPnpVqa.from_components(
        checkpoints["matcher"],
        captioner,
        str(checkpoints["reader"]),
        captioner_processor=captioner_processor,
        **{**SETTINGS, "num_patches": 30},
    )
    assert (vqa.heatmap_grid_size, vqa.patch_grid_size) == (4, 8)
    hot = torch.zeros(1, 16)
    hot[0, 0] = 1.0  # the top-left cell of the 4x4 heatmap
    weights = vqa.patch_weights(hot).view(8, 8)
    assert weights.argmax() == 0 and weights[:3, :3].sum() > 0.99 * weights.sum()  # bilinear support only
    patches = vqa.sample_patches(hot, generator=seeded())
    assert patches.shape == (1, SETTINGS["num_captions"], 30) and patches.max() <= 64


def test_reader_passages_follow_pnp_vqa():
    captions = [" A dog ", "a Cat", "grass"]
    assert reader_passages("What is it?", captions, 3) == ["what is it? \\n a dog. a cat. grass."]
    assert reader_passages("What is it?", captions, 2) == ["what is it? \\n a dog. a cat.", "what is it? \\n grass."]
    with pytest.raises(ValueError, match="at least one caption"):
        reader_passages("what?", [], 1)


def test_fusion_in_decoder_reads_each_question_alone():
    torch.manual_seed(0)
    tokenizer = tiny_reader_tokenizer()
    reader = tiny_reader(tokenizer)
    questions = ["what colour is the square?", "what shape is there?"]
    captions = [["a red square", "a blue circle", "the green triangle"], ["a yellow square"]]
    kwargs = {"max_length": 5, "min_length": 3, "num_beams": 1}
    # One passage holding every caption is the concatenated form.
    whole = read_fusion_in_decoder(reader, tokenizer, questions, captions, captions_per_passage=3, **kwargs)
    torch.testing.assert_close(whole, read_concatenated(reader, tokenizer, questions, captions, 1, **kwargs))
    # Passage padding and a question with fewer passages change nothing.
    batched = read_fusion_in_decoder(reader, tokenizer, questions, captions, captions_per_passage=1, **kwargs)
    for index in range(2):
        alone = read_fusion_in_decoder(
            reader, tokenizer, questions[index : index + 1], captions[index : index + 1], 1, **kwargs
        )
        torch.testing.assert_close(batched[index : index + 1, : alone.shape[1]], alone)


def test_answer_with_fusion_in_decoder(vqa):
    captions = [["a red square", "a blue circle"], ["a red circle"]]
    assert vqa.answer(QUESTIONS, captions, reader_form="fid") == [ANSWER, ANSWER]


def test_save_and_reload_as_one_folder_and_as_a_pipeline(vqa, image, tmp_path):
    folder = vqa.save_pretrained(tmp_path / "pnp-vqa")
    assert (folder / "pnp_vqa_config.json").is_file() and (folder / "captioner" / "config.json").is_file()
    reloaded = EsamBlipForPnpVqa.from_pretrained(folder)
    assert reloaded.config == vqa.config
    torch.testing.assert_close(reloaded.heatmap(image, QUESTIONS).gradcams, vqa.heatmap(image, QUESTIONS).gradcams)

    answerer = pipeline(TASK, model=str(folder), device="cpu")
    assert isinstance(answerer, EsamBlipPnpVqaPipeline) and answerer.pnp_vqa.config == vqa.config
    result = answerer(image, QUESTIONS[0], generator=seeded())
    assert result["answer"] == ANSWER and result["question"] == QUESTIONS[0]
    assert result["heatmap"].shape == (4, 4) and result["enhanced_heatmap"].shape == (4, 4)
    assert result["patch_indices"].shape == (len(result["captions"]), SETTINGS["num_patches"])


def test_pipeline_from_separate_checkpoints(checkpoints, image):
    answerer = pipeline(
        TASK,
        model=str(checkpoints["matcher"]),
        captioner=str(checkpoints["captioner"]),
        reader=str(checkpoints["reader"]),
        device="cpu",
        **SETTINGS,
    )
    results = answerer(image, QUESTIONS, use_mask_enhancement=False, num_captions=2, deduplicate_captions=False)
    assert [result["question"] for result in results] == QUESTIONS
    assert all(result["answer"] == ANSWER and result["enhanced_heatmap"] is None for result in results)
    assert all(len(result["captions"]) == 2 for result in results)
    [per_input] = answerer([{"image": image, "question": QUESTIONS[1]}], num_captions=2)
    assert per_input["question"] == QUESTIONS[1]
    # The stock visual-question-answering pipeline's keyword works too.
    torch.manual_seed(0)
    by_keyword = answerer(image, question=QUESTIONS[0], num_captions=2)
    assert by_keyword["question"] == QUESTIONS[0] and by_keyword["answer"] == ANSWER
    with pytest.raises(TypeError, match="`questions=` or `question=`, not both"):
        answerer(image, QUESTIONS[0], question=QUESTIONS[1])
    with pytest.raises(TypeError, match="num_captionz"):
        answerer(image, QUESTIONS[0], num_captionz=2)
    with pytest.raises(ValueError, match="needs `captioner=`"):
        pipeline(TASK, model=str(checkpoints["matcher"]), device="cpu")


def test_picture_of_one_answer(vqa, image, tmp_path):
    torch.manual_seed(0)
    output = vqa(image, QUESTIONS[0], generator=seeded())
    counts = patch_sample_counts(output.patch_indices[0], output.patch_grid_size)
    assert counts.shape == (4, 4) and counts.sum() == output.patch_indices[0].numel()
    picture = draw_pnp_vqa(
        image,
        heatmap=output.heatmap[0],
        enhanced_heatmap=output.enhanced_heatmap[0],
        patch_indices=output.patch_indices[0],
        patch_grid_size=output.patch_grid_size,
        captions=output.captions[0],
        question=QUESTIONS[0],
        answer=output.answers[0],
        panel_size=128,
    )
    assert picture.mode == "RGB" and picture.width == 3 * 128 and picture.height > 96
    result = {
        "heatmap": output.heatmap[0],
        "enhanced_heatmap": None,
        "patch_indices": output.patch_indices[0],
        "patch_grid_size": output.patch_grid_size,
        "captions": output.captions[0],
        "question": QUESTIONS[0],
        "answer": output.answers[0],
    }
    assert draw_pnp_vqa_result(image, result, panel_size=128).width == 3 * 128
    with pytest.raises(ValueError, match="one per caption"):
        draw_pnp_vqa(image, output.heatmap[0], output.patch_indices[0], 4, captions=[])


@pytest.mark.parametrize("question", ["", "   ", "?", " ?? "])
def test_empty_question_is_an_error(vqa, image, question):
    with pytest.raises(ValueError, match=r"questions\[0\]"):
        vqa(image, question)
    with pytest.raises(ValueError, match=r"questions\[0\]"):
        vqa.heatmap(image, [question, "what?"])
    with pytest.raises(ValueError, match="non-empty list"):
        vqa.answer([], [])


def test_too_many_patches_or_too_few_captions_is_an_error(vqa, image):
    with pytest.raises(ValueError, match=r"`num_patches` \(17\) exceeds the captioner's 4x4 = 16 patches"):
        vqa(image, QUESTIONS[0], num_patches=17)
    with pytest.raises(ValueError, match=r"`num_patches` \(17\)"):
        vqa.sample_patches(torch.rand(1, 16), num_patches=17)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="`num_captions` must be >= 1"):
            vqa(image, QUESTIONS[0], num_captions=bad)
    with pytest.raises(TypeError, match="`num_captions` must be an int"):
        EsamBlipPnpVqaConfig(num_captions=2.0)
    with pytest.raises(ValueError, match="`top_p` must be in"):
        vqa.captions(torch.ones(1, 1, 1, dtype=torch.long), images=image, top_p=0.0)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        vqa.captions(torch.full((1, 1, 1), 17), images=image)
    with pytest.raises(TypeError, match="Unknown PnP-VQA settings"):
        vqa(image, QUESTIONS[0], num_caption=3)
    with pytest.raises(ValueError, match="one list of captions per question"):
        vqa.answer(QUESTIONS, [["a red square"]])
    with pytest.raises(ValueError, match="must exceed the prompt"):
        vqa.captions(torch.ones(1, 1, 1, dtype=torch.long), images=image, caption_max_length=4, caption_min_length=0)


def test_wrong_checkpoint_types_are_errors(checkpoints, tmp_path):
    matcher, captioner, reader = (str(checkpoints[name]) for name in ("matcher", "captioner", "reader"))
    with pytest.raises(TypeError, match=r"`captioner` must be a BlipForConditionalGeneration checkpoint.*'t5'"):
        EsamBlipForPnpVqa.from_components(matcher, reader, reader, **SETTINGS)
    with pytest.raises(TypeError, match=r"`reader` must be a T5ForConditionalGeneration checkpoint.*'blip'"):
        EsamBlipForPnpVqa.from_components(matcher, captioner, captioner, **SETTINGS)
    with pytest.raises(TypeError, match="`matcher` must be a EsamBlipForPromptableSegmentation checkpoint"):
        EsamBlipForPnpVqa.from_components(captioner, captioner, reader, **SETTINGS)
    # Same config class, another head: BLIP's VQA model is no captioner.
    question_answering = BlipForQuestionAnswering(BlipForConditionalGeneration.from_pretrained(captioner).config)
    question_answering.save_pretrained(tmp_path / "blip-vqa")
    with pytest.raises(TypeError, match=r"\['BlipForQuestionAnswering'\]"):
        load_captioner(tmp_path / "blip-vqa")

    encoder_only = T5EncoderModel(T5ForConditionalGeneration.from_pretrained(reader).config)
    encoder_only.save_pretrained(tmp_path / "t5-encoder")
    with pytest.raises(TypeError, match=r"\['T5EncoderModel'\]"):
        load_reader(tmp_path / "t5-encoder")
    # The legacy name of the same head, as early T5 checkpoints save it, is a reader.
    legacy = Path(shutil.copytree(reader, tmp_path / "t5-legacy"))
    config = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**config, "architectures": ["T5WithLMHeadModel"]}))
    assert isinstance(load_reader(legacy)[0], T5ForConditionalGeneration)

    loaded_captioner, captioner_processor = load_captioner(captioner)
    loaded_reader, reader_tokenizer = load_reader(reader)
    parts = {
        "matcher": EsamBlipForPromptableSegmentation.from_pretrained(matcher),
        "matcher_processor": EsamBlipProcessor.from_pretrained(matcher),
        "captioner": loaded_captioner,
        "captioner_processor": captioner_processor,
        "reader": loaded_reader,
        "reader_tokenizer": reader_tokenizer,
    }
    config = EsamBlipPnpVqaConfig(**SETTINGS)
    for role, wrong in (("captioner", loaded_reader), ("reader", loaded_captioner), ("matcher", loaded_captioner)):
        with pytest.raises(TypeError, match=f"`{role}` must be"):
            EsamBlipForPnpVqa(**{**parts, role: wrong}, config=config)
    with pytest.raises(ValueError, match="pass its `captioner_processor` too"):
        EsamBlipForPnpVqa.from_components(matcher, loaded_captioner, reader, **SETTINGS)


def test_matching_only_matcher_needs_enhancement_off(checkpoints, image):
    processor = EsamBlipProcessor.from_pretrained(checkpoints["matcher"])
    no_sam = dict.fromkeys(("sam_vision_config", "prompt_encoder_config", "mask_decoder_config"))
    matcher = EsamBlipForPromptableSegmentation(tiny_config(processor, **no_sam))
    assert not matcher.config.has_segmentation
    parts = {"matcher_processor": processor, "captioner": str(checkpoints["captioner"])}
    with pytest.raises(ValueError, match="use_mask_enhancement=False"):
        EsamBlipForPnpVqa.from_components(matcher, reader=str(checkpoints["reader"]), **parts, **SETTINGS)
    vqa = EsamBlipForPnpVqa.from_components(
        matcher, reader=str(checkpoints["reader"]), **parts, **SETTINGS, use_mask_enhancement=False
    )
    assert vqa(image, QUESTIONS[0]).answers == [ANSWER]


def test_settings_round_trip_and_validation(tmp_path):
    config = EsamBlipPnpVqaConfig(num_captions=7, top_p=0.9, reader_form="fid", heatmap_mask_alpha=0.3)
    config.save_pretrained(tmp_path)
    assert EsamBlipPnpVqaConfig.from_pretrained(tmp_path) == config
    assert EsamBlipPnpVqaConfig.from_pretrained(tmp_path, num_captions=2).num_captions == 2
    assert config.replace(top_p=None) is config
    with pytest.raises(ValueError, match="`reader_form` must be one of"):
        EsamBlipPnpVqaConfig(reader_form="rag")
    with pytest.raises(ValueError, match="`caption_min_length` .* must not exceed"):
        EsamBlipPnpVqaConfig(caption_min_length=30)
    with pytest.raises(ValueError, match="`heatmap_mask_alpha` must be in"):
        EsamBlipPnpVqaConfig(heatmap_mask_alpha=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved PnP-VQA folder"):
        EsamBlipPnpVqaConfig.from_pretrained(tmp_path / "empty")
