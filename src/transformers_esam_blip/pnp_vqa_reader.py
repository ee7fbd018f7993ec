"""PnP-VQA's reader: UnifiedQA-style passages from a question and its captions, read concatenated or fused in decoder."""

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

# UnifiedQA separates the question from its context by a literal backslash-n, not a newline.
UNIFIEDQA_SEPARATOR = " \\n "


def reader_passages(question: str, captions: Sequence[str], captions_per_passage: int) -> list[str]:
    r"""
    The reader's passages for one question, as PnP-VQA writes them: each passage is the lowercased question, the
    UnifiedQA separator ` \n ` and `captions_per_passage` captions (the last passage takes the rest), each caption
    followed by `. `, lowercased.

    Args:
        question (`str`): the question as asked (its `?` kept).
        captions (`Sequence[str]`): at least one caption.
        captions_per_passage (`int`): captions per passage, >= 1; `len(captions)` gives one passage.

    Returns:
        `list[str]`: `ceil(len(captions) / captions_per_passage)` passages.
    """
    if not captions:
        raise ValueError("The reader needs at least one caption per question, got none.")
    if captions_per_passage < 1:
        raise ValueError(f"`captions_per_passage` must be >= 1, got {captions_per_passage}.")
    head = question.lower().strip() + UNIFIEDQA_SEPARATOR
    passages = []
    for start in range(0, len(captions), captions_per_passage):
        context = " ".join(f"{caption.strip()}." for caption in captions[start : start + captions_per_passage])
        passages.append(head + context.lower())
    return passages


def _generate_kwargs(max_length: int, min_length: int, num_beams: int) -> dict[str, int]:
    return {"max_length": max_length, "min_length": min_length, "num_beams": num_beams}


def read_concatenated(
    reader: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    captions: Sequence[Sequence[str]],
    captions_per_passage: int,
    max_length: int,
    min_length: int,
    num_beams: int,
) -> torch.Tensor:
    """
    The concatenated form: one passage per question holding all its captions, truncated at the tokenizer's
    `model_max_length`. `captions_per_passage` is unused. Returns the generated ids `[B, length]`.
    """
    passages = [reader_passages(question, caps, len(caps))[0] for question, caps in zip(questions, captions)]
    inputs = tokenizer(passages, padding="longest", truncation=True, return_tensors="pt").to(reader.device)
    return reader.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        **_generate_kwargs(max_length, min_length, num_beams),
    )


def read_fusion_in_decoder(
    reader: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    captions: Sequence[Sequence[str]],
    captions_per_passage: int,
    max_length: int,
    min_length: int,
    num_beams: int,
) -> torch.Tensor:
    """
    Fusion-in-decoder (Izacard & Grave 2021): every passage of `captions_per_passage` captions is encoded on its own,
    the encodings of a question's passages are concatenated, and the decoder attends to all of them at once. Padding
    tokens (within a passage, and of questions with fewer passages) are masked. Returns the generated ids
    `[B, length]`.
    """
    per_question = [reader_passages(q, caps, captions_per_passage) for q, caps in zip(questions, captions)]
    flat = [passage for passages in per_question for passage in passages]
    inputs = tokenizer(flat, padding="longest", truncation=True, return_tensors="pt").to(reader.device)
    encoded = reader.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    hidden, mask = encoded.last_hidden_state, inputs["attention_mask"]
    length, width = hidden.shape[1], hidden.shape[2]
    most = max(len(passages) for passages in per_question)
    fused = hidden.new_zeros(len(questions), most * length, width)
    fused_mask = mask.new_zeros(len(questions), most * length)
    start = 0
    for index, passages in enumerate(per_question):
        count = len(passages)
        fused[index, : count * length] = hidden[start : start + count].reshape(count * length, width)
        fused_mask[index, : count * length] = mask[start : start + count].reshape(count * length)
        start += count
    return reader.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=fused),
        attention_mask=fused_mask,
        **_generate_kwargs(max_length, min_length, num_beams),
    )


# `reader_form` → how the reader turns questions and captions into answer ids.
PNP_VQA_READER_FORMS: dict[str, Callable[..., torch.Tensor]] = {
    "concat": read_concatenated,
    "fid": read_fusion_in_decoder,
}


__all__ = [
    "PNP_VQA_READER_FORMS",
    "UNIFIEDQA_SEPARATOR",
    "read_concatenated",
    "read_fusion_in_decoder",
    "reader_passages",
]
