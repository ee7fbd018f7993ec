"""Train the built-in PnP-VQA captioner and reader (`esam-blip-shapes-vqa`) on the synthetic scenes, on the CPU.

    python scripts/train_builtin_vqa.py --output_dir src/transformers_esam_blip/assets/models/esam-blip-shapes-vqa \
        --overwrite                                          # replaces the shipped folder
    python scripts/train_builtin_vqa.py --output_dir out --captioner_steps 200 --reader_steps 200   # a smoke run

Two tiny `transformers` models, trained as `EsamBlipForPnpVqa` uses them; the matcher is the built-in
`esam-blip-shapes`, unchanged.

- **Captioner** (`BlipForConditionalGeneration`, 128² input, patch 16: an 8x8 grid, as the matcher's). Its text
  decoder reads only `K` patch tokens of its ViT (as `EsamBlipForPnpVqa.captions` passes them, as encoder states) and
  writes, after the prompt `a picture of`, the objects those patches show: `a red square and a blue circle` (the
  objects a sampled patch covers by >= 15 %, most-sampled first, at most 3; `a gray background` for none). The
  patches are drawn as PnP-VQA draws them (multinomial without replacement) from a simulated heatmap: focused on one
  object, spread over several, or flat.
- **Reader** (`T5ForConditionalGeneration`). Reads the `concat` form of `pnp_vqa_reader` (`question \\n caption.
  caption. ...`) and answers the three question templates of `evaluation_vqa`: `what colour is the {shape}?`,
  `what shape is the {colour} object?`, `is there a {colour} {shape}?`. Its captions are those the captioner learns
  to write, for patches drawn from heatmaps simulated around the object the question names, with 10 % of them
  corrupted (one word swapped), so that it learns to weigh them.

The two folders are `captioner/` and `reader/` of the output folder, with the `pnp_vqa_config.json` settings that
`EsamBlipForPnpVqa.from_pretrained("esam-blip-shapes-vqa")` loads, and a `training.json` record (command, seeds,
losses, CPU time).
"""

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from transformers_esam_blip.builtin import MODELS_DIR
from transformers_esam_blip.configuration_pnp_vqa import EsamBlipPnpVqaConfig
from transformers_esam_blip.data.synthetic import COLOURS, SHAPES, generate_scene, scene_rng
from transformers_esam_blip.pnp_vqa import CAPTIONER_FOLDER, READER_FOLDER
from transformers_esam_blip.pnp_vqa_reader import reader_passages
from transformers_esam_blip.processing_esam_blip import build_blip_tokenizer

NAME = "esam-blip-shapes-vqa"
IMAGE_SIZE = 128
PATCH_SIZE = 16
GRID = IMAGE_SIZE // PATCH_SIZE
PROMPT = "a picture of "
# A sampled patch shows an object when the object covers at least this share of it.
COVERAGE_THRESHOLD = 0.15
MAX_OBJECTS_PER_CAPTION = 3
BACKGROUND_CAPTION = "a gray background"
CAPTION_WORDS = ["a", "picture", "of", "and", "gray", "background", *COLOURS, *SHAPES]
QUESTION_WORDS = ["what", "colour", "shape", "is", "the", "object", "there", "yes", "no"]
# The settings the built-in folder ships: captions of 6 patches (of 64) each, no deduplication (the captioner's
# language is small, so LAVIS's filter would keep a handful of distinct captions and drop how often each was written).
PNP_VQA_SETTINGS = {
    "num_captions": 10,
    "num_patches": 6,
    "caption_max_length": 16,
    "caption_min_length": 0,
    "deduplicate_captions": False,
    "answer_max_length": 4,
}


def _step(model, loss, optimizer, schedule, losses: list, bar) -> None:
    """One optimiser step (gradients clipped at norm 1), the loss logged and its running mean on the bar."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")


def captioner_tokenizer(folder: Path):
    """The BLIP WordPiece tokenizer over the captions' words (with BLIP's `[DEC]` and `[ENC]`)."""
    vocab_file = folder / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file.write_text("\n".join([*specials, *CAPTION_WORDS]) + "\n", encoding="utf-8")
    return build_blip_tokenizer(vocab_file)


def reader_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer whose pieces are the questions' and captions' words, `\\n`, `.` and `?`."""
    words = dict.fromkeys([*QUESTION_WORDS, *CAPTION_WORDS, "\\n"])
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in words] + [(".", -3.0), ("?", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_captioner(tokenizer) -> BlipForConditionalGeneration:
    config = BlipConfig(
        vision_config={
            "hidden_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "intermediate_size": 192,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            # BlipVisionConfig's default (1e-10) suits only weights loaded over it: a near-zero ViT trains badly.
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 96,
            "encoder_hidden_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 192,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )
    return BlipForConditionalGeneration(config)


def build_reader(tokenizer) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5ForConditionalGeneration(config)


def cell_coverage(mask: np.ndarray) -> np.ndarray:
    """Share of each of the captioner's `GRID x GRID` cells an object's `(S, S)` mask covers, flattened `[GRID²]`."""
    side = mask.shape[0] // GRID
    return mask.reshape(GRID, side, GRID, side).mean(axis=(1, 3)).reshape(-1)


def make_scenes(seed: int, count: int, progress: bool, desc: str) -> list[tuple[np.ndarray, list[dict]]]:
    scenes = []
    for index in tqdm(range(count), desc=desc, disable=not progress):
        image, objects = generate_scene(scene_rng(seed, index))
        scenes.append((image, [{**obj, "coverage": cell_coverage(obj["mask"])} for obj in objects]))
        for obj in scenes[-1][1]:
            del obj["mask"]
    return scenes


def simulated_heatmap(objects: list[dict], target: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sampling weights `[GRID²]` like a question's heatmap: around `target` (sharp or loose), over all objects, or flat."""
    noise = rng.random(GRID * GRID)
    everything = np.sum([obj["coverage"] for obj in objects], axis=0)
    mode = rng.random()
    if target is None or mode < 0.15:
        weights = noise
    elif mode < 0.35:
        weights = everything + rng.uniform(0.05, 0.5) * noise
    else:
        focus = objects[target]["coverage"] > 0
        weights = focus + rng.uniform(0.0, 0.6) * everything + rng.uniform(0.01, 0.3) * noise
    return weights + 1e-6


def sample_cells(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct cells drawn with probability proportional to `weights` (multinomial without replacement)."""
    return rng.choice(weights.size, size=count, replace=False, p=weights / weights.sum())


def caption_for(objects: list[dict], cells: np.ndarray) -> str:
    """What the sampled cells show: the objects they cover (most cells first, at most 3), or the background."""
    counts = []
    for obj in objects:
        cover = obj["coverage"][cells]
        seen = int((cover >= COVERAGE_THRESHOLD).sum())
        if seen:
            counts.append((seen, float(cover.sum()), f"a {obj['colour']} {obj['shape']}"))
    if not counts:
        return BACKGROUND_CAPTION
    counts.sort(key=lambda item: (-item[0], -item[1]))
    return " and ".join(text for _, _, text in counts[:MAX_OBJECTS_PER_CAPTION])


def pixel_values(processor: BlipProcessor, images: list[np.ndarray]) -> torch.Tensor:
    chunks = [
        processor.image_processor(images=images[start : start + 256], return_tensors="pt")["pixel_values"]
        for start in range(0, len(images), 256)
    ]
    return torch.cat(chunks).to(torch.float16)


def train_captioner(args, folder: Path, record: dict) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    with tempfile.TemporaryDirectory() as vocab_folder:
        tokenizer = captioner_tokenizer(Path(vocab_folder))
    processor = BlipProcessor(BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer)
    model = build_captioner(tokenizer)
    scenes = make_scenes(args.seed, args.captioner_scenes, args.progress, "Captioner scenes")
    pixels = pixel_values(processor, [image for image, _ in scenes])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.captioner_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(args.captioner_steps))
    prompt_length = len(tokenizer(PROMPT)["input_ids"]) - 1  # [DEC] and the prompt's words, without [SEP]
    model.train()
    losses = []
    bar = tqdm(range(args.captioner_steps), desc="Captioner", disable=not args.progress)
    for _ in bar:
        batch = rng.choice(len(scenes), size=args.batch_size, replace=False)
        count = int(rng.integers(1, 13))
        cells, texts = [], []
        for index in batch:
            objects = scenes[index][1]
            target = int(rng.integers(len(objects))) if objects else None
            chosen = np.sort(sample_cells(simulated_heatmap(objects, target, rng), count, rng))
            cells.append(chosen)
            texts.append(PROMPT + caption_for(objects, chosen))
        tokens = tokenizer(texts, padding="longest", return_tensors="pt")
        input_ids = tokens["input_ids"].clone()
        input_ids[:, 0] = model.config.text_config.bos_token_id
        image_embeds = model.vision_model(pixel_values=pixels[torch.as_tensor(batch)].float()).last_hidden_state
        index = torch.as_tensor(np.stack(cells) + 1)  # token 0 is the ViT's [CLS]
        patches = image_embeds.gather(1, index[..., None].expand(-1, -1, image_embeds.shape[-1]))
        logits = model.text_decoder(
            input_ids=input_ids,
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
            return_dict=True,
        ).logits
        targets = input_ids[:, prompt_length:].masked_fill(tokens["attention_mask"][:, prompt_length:] == 0, -100)
        loss = F.cross_entropy(logits[:, prompt_length - 1 : -1].flatten(0, 1), targets.flatten())
        _step(model, loss, optimizer, schedule, losses, bar)
    model.eval()
    record["captioner"] = {
        "scenes": args.captioner_scenes,
        "steps": args.captioner_steps,
        "final_loss": float(np.mean(losses[-100:])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "exact_caption_accuracy": caption_accuracy(model, processor, args, prompt_length),
    }
    model.save_pretrained(folder / CAPTIONER_FOLDER)
    processor.save_pretrained(folder / CAPTIONER_FOLDER)


@torch.no_grad()
def caption_accuracy(model, processor, args, prompt_length: int, count: int = 200) -> float:
    """Greedy captions of fresh scenes (validation seed) against the caption rule, for patches around one object."""
    rng = np.random.default_rng([args.validation_seed, 1])
    scenes = make_scenes(args.validation_seed, count, False, "")
    pixels = pixel_values(processor, [image for image, _ in scenes]).float()
    tokenizer = processor.tokenizer
    cells, expected = [], []
    for _, objects in scenes:
        chosen = np.sort(sample_cells(simulated_heatmap(objects, int(rng.integers(len(objects))), rng), 6, rng))
        cells.append(chosen)
        expected.append(caption_for(objects, chosen))
    embeds = model.vision_model(pixel_values=pixels).last_hidden_state
    index = torch.as_tensor(np.stack(cells) + 1)
    patches = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"][:, :-1]
    prompt[:, 0] = model.config.text_config.bos_token_id
    out = model.text_decoder.generate(
        input_ids=prompt.expand(count, -1),
        encoder_hidden_states=patches,
        encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
        do_sample=False,
        max_length=16,
        eos_token_id=model.config.text_config.sep_token_id,
        pad_token_id=model.config.text_config.pad_token_id,
    )
    texts = [text.strip() for text in tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True)]
    return float(np.mean([text == want for text, want in zip(texts, expected)]))


def _corrupt(caption: str, rng: np.random.Generator) -> str:
    """One colour or shape word of `caption` swapped for another (a captioner's mistake)."""
    words = caption.split()
    spots = [i for i, word in enumerate(words) if word in COLOURS or word in SHAPES]
    if not spots:
        return caption
    spot = spots[rng.integers(len(spots))]
    pool = [w for w in (COLOURS if words[spot] in COLOURS else SHAPES) if w != words[spot]]
    words[spot] = pool[rng.integers(len(pool))]
    return " ".join(words)


def reader_example(objects: list[dict], rng: np.random.Generator) -> tuple[str, str]:
    """One `(passage, answer)` of a random template about a scene, with simulated captions."""
    pairs = {(obj["colour"], obj["shape"]) for obj in objects}
    unique_shape = [i for i, obj in enumerate(objects) if sum(o["shape"] == obj["shape"] for o in objects) == 1]
    unique_colour = [i for i, obj in enumerate(objects) if sum(o["colour"] == obj["colour"] for o in objects) == 1]
    kind = rng.integers(3)
    target: int | None
    if kind == 0 and unique_shape:
        target = unique_shape[rng.integers(len(unique_shape))]
        question, answer = f"what colour is the {objects[target]['shape']}?", objects[target]["colour"]
    elif kind == 1 and unique_colour:
        target = unique_colour[rng.integers(len(unique_colour))]
        question, answer = f"what shape is the {objects[target]['colour']} object?", objects[target]["shape"]
    elif rng.random() < 0.5:
        target = int(rng.integers(len(objects)))
        question, answer = f"is there a {objects[target]['colour']} {objects[target]['shape']}?", "yes"
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in pairs]
        colour, shape = absent[rng.integers(len(absent))]
        question, answer = f"is there a {colour} {shape}?", "no"
        # The matcher looks at what shares a word with the question, if anything does.
        near = [i for i, obj in enumerate(objects) if obj["colour"] == colour or obj["shape"] == shape]
        target = near[rng.integers(len(near))] if near and rng.random() < 0.8 else None
    weights = simulated_heatmap(objects, target, rng)
    num_captions, num_patches = int(rng.integers(3, 13)), int(rng.integers(2, 11))
    captions = []
    for _ in range(num_captions):
        caption = caption_for(objects, sample_cells(weights, num_patches, rng))
        captions.append(_corrupt(caption, rng) if rng.random() < 0.1 else caption)
    return reader_passages(question, captions, len(captions))[0], answer


def train_reader(args, folder: Path, record: dict) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 2])
    tokenizer = reader_tokenizer()
    model = build_reader(tokenizer)
    scenes = make_scenes(args.seed + 1, args.reader_scenes, args.progress, "Reader scenes")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.reader_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(args.reader_steps))
    model.train()
    losses = []
    bar = tqdm(range(args.reader_steps), desc="Reader", disable=not args.progress)
    for _ in bar:
        batch = [reader_example(scenes[i][1], rng) for i in rng.choice(len(scenes), size=args.reader_batch_size)]
        inputs = tokenizer([passage for passage, _ in batch], padding="longest", return_tensors="pt")
        labels = tokenizer([answer for _, answer in batch], padding="longest", return_tensors="pt")["input_ids"]
        labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
        loss = model(**inputs, labels=labels).loss
        _step(model, loss, optimizer, schedule, losses, bar)
    model.eval()
    record["reader"] = {
        "scenes": args.reader_scenes,
        "steps": args.reader_steps,
        "final_loss": float(np.mean(losses[-100:])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "simulated_caption_accuracy": reader_accuracy(model, tokenizer, args),
    }
    model.save_pretrained(folder / READER_FOLDER)
    tokenizer.save_pretrained(folder / READER_FOLDER)


@torch.no_grad()
def reader_accuracy(model, tokenizer, args, count: int = 300) -> float:
    """Greedy answers on simulated captions of fresh scenes (validation seed)."""
    rng = np.random.default_rng([args.validation_seed, 2])
    scenes = make_scenes(args.validation_seed, count, False, "")
    batch = [reader_example(objects, rng) for _, objects in scenes]
    inputs = tokenizer([passage for passage, _ in batch], padding="longest", return_tensors="pt")
    out = model.generate(**inputs, max_length=4)
    answers = [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return float(np.mean([got == want for got, (_, want) in zip(answers, batch)]))


def _warmup_cosine(steps: int, warmup: int = 100):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--output_dir", type=Path, required=True, help=f"where to write (the package's {NAME}: {MODELS_DIR / NAME})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a captioner/reader already in --output_dir")
    parser.add_argument("--seed", type=int, default=0, help="training scenes: seed (captioner) and seed + 1 (reader)")
    parser.add_argument("--validation_seed", type=int, default=3, help="scenes of the accuracies in training.json")
    parser.add_argument("--captioner_scenes", type=int, default=3000)
    parser.add_argument("--captioner_steps", type=int, default=2500)
    parser.add_argument("--captioner_lr", type=float, default=1e-3)
    parser.add_argument("--reader_scenes", type=int, default=3000)
    parser.add_argument("--reader_steps", type=int, default=3000)
    parser.add_argument("--reader_lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=64, help="captioner batch (64)")
    parser.add_argument("--reader_batch_size", type=int, default=32, help="reader batch (32)")
    parser.add_argument("--only", choices=["captioner", "reader"], help="train one of the two (the other is kept)")
    parser.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("captioner_scenes", "captioner_steps", "reader_scenes", "reader_steps"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.batch_size < 1 or args.batch_size > args.captioner_scenes:
        print(f"error: --batch_size must lie in [1, --captioner_scenes], got {args.batch_size}", file=sys.stderr)
        return 2
    folder = args.output_dir
    # `--only captioner` writes the captioner, `--only reader` the reader, neither flag both.
    parts = (
        [CAPTIONER_FOLDER, READER_FOLDER]
        if args.only is None
        else [CAPTIONER_FOLDER if args.only == "captioner" else READER_FOLDER]
    )
    existing = [part for part in parts if (folder / part).exists()]
    if existing and not args.overwrite:
        print(f"error: --output_dir {folder} already holds {existing}; pass --overwrite to replace it", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    record_file = folder / "training.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if args.only and record_file.is_file() else {}
    start, clock = time.process_time(), time.perf_counter()
    command = "python " + " ".join(shlex.quote(arg) for arg in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    if args.only != "reader":
        began = time.process_time()
        train_captioner(args, folder, record)
        record["captioner"]["cpu_seconds"] = round(time.process_time() - began, 1)
        record["captioner"]["command"] = command
    if args.only != "captioner":
        began = time.process_time()
        train_reader(args, folder, record)
        record["reader"]["cpu_seconds"] = round(time.process_time() - began, 1)
        record["reader"]["command"] = command
    EsamBlipPnpVqaConfig(**PNP_VQA_SETTINGS).save_pretrained(folder)
    record.update(
        command=command,
        torch_threads=torch.get_num_threads(),
        cpu_seconds=round(sum(record.get(part, {}).get("cpu_seconds", 0.0) for part in ("captioner", "reader")), 1),
        last_run_cpu_seconds=round(time.process_time() - start, 1),
        last_run_wall_seconds=round(time.perf_counter() - clock, 1),
        seeds={"captioner": args.seed, "reader": args.seed + 1, "validation": args.validation_seed},
        pnp_vqa_settings=PNP_VQA_SETTINGS,
    )
    record_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
