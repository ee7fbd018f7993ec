"""Annotate an image collection with masks (text prompts, COCO boxes or everything), sharded over processes by accelerate.

    python -m transformers_esam_blip.annotate IMAGES --text "the red circle" --text "a blue square" --output_dir out
    accelerate launch -m transformers_esam_blip.annotate IMAGES --text "a dog" --output_dir out   # N processes
    esam-blip annotate my_data --text_column caption --format parquet --output_dir out          # datasets folder / Hub
    esam-blip annotate instances_val2017.json --image_root val2017 --boxes --output_dir out     # masks for COCO boxes
    esam-blip annotate IMAGES --everything --points_per_side 16 --output_dir out

The input (a folder of images, a `datasets` dataset, or a COCO file) is cut into shards of `--shard_size` consecutive
images; shard `k` goes to process `k mod N`. Each process writes its shards to `OUTPUT_DIR/shards/` (each file
atomically: a temporary file, then a rename), and the main process merges them, once every process is done, into
`OUTPUT_DIR/annotations.json` (COCO) or `OUTPUT_DIR/annotations.parquet`. Run it again with the same settings and the
shards already written are skipped (a killed run resumes); `OUTPUT_DIR/manifest.json` records the settings, and a
folder holding another run's shards is refused. Image ids follow the input order (a COCO input keeps its own), and
shards do not depend on the number of processes, so the merged output is the same for 1 or N processes.
"""

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .annotation_files import (
    EVERYTHING_CATEGORY,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    OUTPUT_FILES,
    OUTPUT_FORMATS,
    SHARDS_DIR,
    check_manifest,
    encode_masks,
    merge_shards,
    shard_path,
    write_json,
    written_shards,
)
from .annotation_sources import AnnotationItem, AnnotationSource, open_annotation_source
from .best_mask import select_best_masks
from .builtin import DEFAULT_BUILTIN_MODEL, MODELS_DIR, resolve_pretrained_name
from .commands import (
    CliError,
    CommandParser,
    load_checkpoint_config,
    parse_device,
    resolve_model_argument,
    run_command,
)
from .mask_generator import EsamBlipMaskGenerator
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor
from .text_prompt_strategies import text_prompt_mode_choices

SUMMARY = __doc__.split("\n", 1)[0]
EXAMPLES = __doc__.split("\n\n")[1]


@dataclass
class AnnotationResult:
    """
    What [`annotate`] did.

    Attributes:
        output_file (`Path`, *optional*): the merged annotations, `None` while shards are missing (a run stopped by
            `max_shards`, or one process of it).
        complete (`bool`): every shard is written and merged.
        num_images (`int`, *optional*): images in the input (`None` for a stream that was not read to its end).
        num_annotations (`int`, *optional*): annotations in the merged output (main process, complete runs).
        images_annotated (`int`): images this run annotated, over all processes.
        images_skipped (`int`): images of shards written by earlier runs, over all processes.
        seconds (`float`): wall time of the annotation (after loading the model, until every process is done).
        images_per_second (`float`): `images_annotated / seconds`.
        num_processes (`int`): processes that shared the work.
        process_index (`int`): this process (0 is the main one).
    """

    output_file: Path | None
    complete: bool
    num_images: int | None
    num_annotations: int | None
    images_annotated: int
    images_skipped: int
    seconds: float
    images_per_second: float
    num_processes: int
    process_index: int


# ----------------------------------------------------------------------------------------------------------- model


class _Annotator:
    """Runs the model on batches of items: every image is encoded once, all its prompts decoded from that."""

    def __init__(
        self,
        model: EsamBlipForPromptableSegmentation,
        processor: EsamBlipProcessor,
        prompts: str,
        text_prompt_mode: str | None,
        mask_threshold: float,
        min_match_probability: float | None,
        generator_settings: dict[str, Any],
    ) -> None:
        self.model = model
        self.processor = processor
        self.prompts = prompts
        self.text_prompt_mode = text_prompt_mode
        self.mask_threshold = mask_threshold
        self.min_match_probability = min_match_probability
        fusion = model.model.fusion
        self.encoder_fusion = fusion is not None and fusion.location == "encoder"
        self.needs_blip = prompts == "text" or fusion is not None
        self.generator = None
        if prompts == "everything":
            self.generator = EsamBlipMaskGenerator(
                model, processor.image_processor, progress=False, **generator_settings
            )

    def _encode(self, images: list[PIL.Image.Image]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """Per-image tensors for `forward` (EfficientSAM embeddings, or pixels with an encoder-side fusion; the BLIP
        tokens when texts or a fusion read them) and the images' `(H, W)`."""
        device, dtype = self.model.device, self.model.dtype
        inputs = self.processor.image_processor(images, return_tensors="pt")
        sizes = [(int(h), int(w)) for h, w in inputs["original_sizes"].tolist()]
        pixel_values = inputs["pixel_values"].to(device=device, dtype=dtype)
        encoded = {}
        if self.needs_blip:
            blip = inputs["blip_pixel_values"].to(device=device, dtype=dtype)
            encoded["blip_image_embeds"] = self.model.model.require_blip().get_image_features(blip)
        if self.encoder_fusion:
            encoded["pixel_values"] = pixel_values
        else:
            encoded["image_embeddings"] = self.model.get_image_embeddings(pixel_values)
        return encoded, sizes

    def _masks(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.processor.post_process_masks([logits.float().cpu()], [size], mask_threshold=self.mask_threshold)[0]

    @torch.inference_mode()
    def __call__(self, items: list[AnnotationItem]) -> list[dict[str, Any]]:
        """The image records (with their annotations) of `items`, in order."""
        images = [item.load() for item in items]
        if self.prompts == "everything":
            return [self._everything(item, image) for item, image in zip(items, images, strict=True)]
        encoded, sizes = self._encode(images)
        if self.prompts == "text":
            annotations = self._texts(items, encoded, sizes)
        else:
            annotations = [self._boxes(item, encoded, i, size) for i, (item, size) in enumerate(zip(items, sizes))]
        return [
            {"index": item.index, "id": item.image_id, "file_name": item.file_name, "height": h, "width": w,
             "annotations": found}
            for item, (h, w), found in zip(items, sizes, annotations, strict=True)
        ]  # fmt: skip

    def _texts(
        self, items: list[AnnotationItem], encoded: dict[str, torch.Tensor], sizes: list[tuple[int, int]]
    ) -> list[list[dict[str, Any]]]:
        counts = [len(item.texts) for item in items]
        texts = [text for item in items for text in item.texts]
        tokens = self.processor(text=texts, return_tensors="pt").to(self.model.device)
        if self.encoder_fusion:  # the encoder needs pixels: one call per image, its texts sharing it
            outputs, start = [], 0
            for i, count in enumerate(counts):
                rows = {name: value[i : i + 1] for name, value in encoded.items()}
                texts_of = {name: value[start : start + count] for name, value in tokens.items()}
                outputs.append(self.model(**rows, **texts_of, text_prompt_mode=self.text_prompt_mode))
                start += count
            pred_masks = torch.cat([out.pred_masks for out in outputs])
            iou_scores = torch.cat([out.iou_scores for out in outputs])
            probabilities = torch.cat([out.itm_probability for out in outputs])
        else:  # every text with its image's embeddings: one decoder call for the whole batch
            rows = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)).to(self.model.device)
            out = self.model(
                **{name: value[rows] for name, value in encoded.items()},
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                text_prompt_mode=self.text_prompt_mode,
            )
            pred_masks, iou_scores, probabilities = out.pred_masks, out.iou_scores, out.itm_probability
        logits, scores = select_best_masks(pred_masks[:, 0], iou_scores[:, 0])
        results, start = [], 0
        for count, size in zip(counts, sizes, strict=True):
            part = slice(start, start + count)
            annotations = []
            masks = encode_masks(self._masks(logits[part], size))
            for text, mask, score, probability in zip(
                texts[part], masks, scores[part].tolist(), probabilities[part].tolist(), strict=True
            ):
                if self.min_match_probability is not None and probability < self.min_match_probability:
                    continue
                annotations.append({"text": text, "score": score, "match_probability": probability, **mask})
            results.append(annotations)
            start += count
        return results

    def _boxes(
        self, item: AnnotationItem, encoded: dict[str, torch.Tensor], i: int, size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        if not item.boxes:
            return []
        prompts = self.processor.image_processor.preprocess_prompts(
            [size], input_boxes=[[b["box"] for b in item.boxes]]
        )
        out = self.model(
            **{name: value[i : i + 1] for name, value in encoded.items()},
            input_boxes=prompts["input_boxes"].to(device=self.model.device, dtype=self.model.dtype),
        )
        logits, scores = select_best_masks(out.pred_masks[0], out.iou_scores[0])
        masks = encode_masks(self._masks(logits, size))
        return [
            {"text": box["text"], "category_id": box["category_id"], "source_annotation_id": box["source_annotation_id"],
             "score": score, "match_probability": None, **mask}
            for box, mask, score in zip(item.boxes, masks, scores.tolist(), strict=True)
        ]  # fmt: skip

    def _everything(self, item: AnnotationItem, image: PIL.Image.Image) -> dict[str, Any]:
        out = self.generator(image)
        masks = (
            torch.stack(out["masks"]) if out["masks"] else torch.zeros(0, image.height, image.width, dtype=torch.bool)
        )
        annotations = [
            {"text": None, "score": score, "match_probability": None, **mask}
            for mask, score in zip(encode_masks(masks.bool()), torch.as_tensor(out["scores"]).tolist(), strict=True)
        ]
        return {
            "index": item.index,
            "id": item.image_id,
            "file_name": item.file_name,
            "height": image.height,
            "width": image.width,
            "annotations": annotations,
        }


# ------------------------------------------------------------------------------------------------------- annotate


def _check_texts(texts: Any) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"`texts` must be a non-empty list of strings, got {texts!r:.80}.")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`texts[{i}]` must be a non-empty string, got {text!r}.")
    repeated = sorted({text for text in texts if texts.count(text) > 1})
    if repeated:
        raise ValueError(f"`texts` repeats {repeated}; each text prompt is one category of the output.")
    return list(texts)


def _positive(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")


def _model_name(model: str | os.PathLike | EsamBlipForPromptableSegmentation) -> str:
    """How the manifest names the model: a built-in model by its name (the command line and Python agree on it), a
    folder by its absolute path, a Hub id as given, a model object by its origin and a digest of its config."""
    if isinstance(model, EsamBlipForPromptableSegmentation):
        digest = hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]
        return f"{model.name_or_path or type(model).__name__} (config {digest})"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"`model` must be a name, a folder, a Hub id or an EsamBlipForPromptableSegmentation, got "
            f"{type(model).__name__}."
        )
    location = Path(resolve_pretrained_name(str(model)))
    if not location.exists():
        return str(model)
    folder = location.resolve()
    return folder.name if folder.parent == MODELS_DIR else str(folder)


def _load_model(
    model: str | os.PathLike | EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor | None
) -> tuple[EsamBlipForPromptableSegmentation, EsamBlipProcessor]:
    if isinstance(model, EsamBlipForPromptableSegmentation):
        if processor is None:
            raise ValueError("Pass the model's `processor` with a model object (or give `model` as a name or folder).")
        return model, processor
    location = resolve_pretrained_name(str(model))
    loaded = EsamBlipForPromptableSegmentation.from_pretrained(location)
    return loaded, processor if processor is not None else EsamBlipProcessor.from_pretrained(location)


def _my_shards(
    source: AnnotationSource, shard_size: int, rank: int, world: int, written: set[int]
) -> Iterator[tuple[int, list[AnnotationItem]]]:
    """This process's shards not yet written, with their items; a stream is read to its end to learn its length."""
    if source.length is not None:
        for shard in range(rank, math.ceil(source.length / shard_size), world):
            if shard not in written:
                start = shard * shard_size
                yield shard, source.get(range(start, min(source.length, start + shard_size)))
        return
    current, items, count = None, [], 0
    for item in source.stream():
        count = item.index + 1
        shard = item.index // shard_size
        if shard % world != rank or shard in written:
            continue
        if shard != current and items:
            yield current, items
            items = []
        current = shard
        items.append(item)
    if items:
        yield current, items
    source.length = count


def annotate(
    source: str | os.PathLike | datasets.Dataset | datasets.IterableDataset,
    output_dir: str | os.PathLike,
    texts: Sequence[str] | None = None,
    text_column: str | None = None,
    boxes: bool = False,
    everything: bool = False,
    model: str | os.PathLike | EsamBlipForPromptableSegmentation = DEFAULT_BUILTIN_MODEL,
    processor: EsamBlipProcessor | None = None,
    output_format: str = "coco",
    image_column: str = "image",
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    streaming: bool = False,
    batch_size: int = 8,
    shard_size: int = 256,
    text_prompt_mode: str | None = None,
    mask_threshold: float = 0.0,
    min_match_probability: float | None = None,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_shards: int | None = None,
) -> AnnotationResult:
    """
    Masks for every image of a collection, written as COCO results or a parquet table; runs as one of the processes
    of `accelerate launch` (or alone), see the module docstring for sharding, resuming and determinism.

    Give exactly one prompt source: `texts` (the same text prompts for every image), `text_column` (each row's own
    texts: a string or a list of them), `boxes` (the boxes of a COCO `source`, one mask per annotation) or
    `everything` (automatic mask generation, [`EsamBlipMaskGenerator`]). A COCO `source` with none of them is
    prompted by its category names.

    Args:
        source: a folder of images (any depth, in path order), a COCO instances `.json`, a `datasets` folder
            (metadata, parquet, arrow or `save_to_disk`; see `data.user_data.find_referring_source`) or Hub id, or a
            `datasets.Dataset` / `IterableDataset`.
        output_dir: where `manifest.json`, `shards/` and the merged output go.
        texts (`Sequence[str]`, *optional*): text prompts, one output category each.
        text_column (`str`, *optional*): a dataset column holding each row's text prompts.
        boxes (`bool`): prompt with the COCO file's boxes; `text` and `category_id` come from the source annotation.
        everything (`bool`): segment everything (the settings below).
        model: a built-in model name, folder or Hub id (`EsamBlipForPromptableSegmentation`), or a model object
            (then pass `processor`); defaults to the built-in `esam-blip-shapes`.
        processor ([`EsamBlipProcessor`], *optional*): the model's processor; loaded with a named model.
        output_format (`str`, defaults to `"coco"`): `"coco"` (`annotations.json`: `images`, `annotations` with
            compressed-RLE `segmentation`, `area`, `bbox`, `score` (predicted IoU), `text`, `match_probability`, and
            `categories`; loads with `pycocotools.coco.COCO`) or `"parquet"` (`annotations.parquet`: one row per
            annotation with the same fields and its image's `file_name`, `height`, `width`).
        image_column (`str`, defaults to `"image"`): the dataset column of the images (an `Image` feature or file
            names relative to the dataset's folder or `image_root`).
        image_root: the folder image file names are relative to (COCO: defaults to the file's folder).
        split (`str`, *optional*): the dataset split (needed when it has several).
        streaming (`bool`): read a Hub or local dataset with `datasets` streaming; every process reads the stream
            and keeps its shards.
        batch_size (`int`, defaults to 8): images encoded per model call; all prompts of a batch decode together.
        shard_size (`int`, defaults to 256): images per shard file (the unit of work of a process and of resuming).
        text_prompt_mode (`str`, *optional*): `"learned"`, `"gradcam"` or `"auto"`; defaults to the model's config.
        mask_threshold (`float`, defaults to 0.0): logit above which a pixel is in a mask.
        min_match_probability (`float`, *optional*): text prompts only: drop annotations whose ITM match
            probability is below it (by default every text gets its mask and its probability).
        points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh: everything mode, see
            [`EsamBlipMaskGenerator`].
        device (`str` or `torch.device`, *optional*): defaults to this process's accelerator (`cuda:<local rank>`),
            else the CPU.
        progress (`bool`, defaults to `True`): a tqdm bar (main process) and a throughput line on stderr.
        max_shards (`int`, *optional*): each process stops after writing this many shards (a run in parts, e.g.
            under a job time limit; the next run resumes).

    Returns:
        [`AnnotationResult`].

    Raises:
        `ValueError`: no or several prompt sources, a prompt source that does not fit the input, an unknown column,
            a model without the parts the prompts need, an `output_dir` holding another run's shards, and the input
            errors of `read_coco_instances` (missing images, odd polygons, RLE sizes).
    """
    chosen = [name for name, given in (("texts", texts is not None), ("text_column", text_column is not None),
                                      ("boxes", boxes), ("everything", everything)) if given]  # fmt: skip
    if len(chosen) > 1:
        raise ValueError(f"Give one prompt source, got {chosen}.")
    texts = _check_texts(texts)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"`output_format` must be one of {OUTPUT_FORMATS}, got {output_format!r}.")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        _positive(name, value)
    _positive("max_shards", max_shards, optional=True)
    if min_match_probability is not None:
        if chosen and chosen[0] in ("boxes", "everything"):
            raise ValueError("`min_match_probability` filters text prompts; boxes and everything have no match score.")
        if not 0.0 <= min_match_probability <= 1.0:
            raise ValueError(f"`min_match_probability` must lie in [0, 1], got {min_match_probability!r}.")
    if text_prompt_mode is not None and text_prompt_mode not in text_prompt_mode_choices():
        raise ValueError(f"`text_prompt_mode` must be one of {text_prompt_mode_choices()}, got {text_prompt_mode!r}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {output_dir} is a file; give a folder.")

    input_source, kind = open_annotation_source(
        source, texts, text_column, boxes, image_column, image_root, split, streaming
    )
    if not chosen and kind != "coco":
        raise ValueError("Give a prompt source: `texts`, `text_column`, `boxes` (COCO input) or `everything`.")
    prompts = "boxes" if boxes else "everything" if everything else "text"
    if prompts == "everything":
        categories = [{"id": 1, "name": EVERYTHING_CATEGORY}]
    elif kind == "coco":
        categories = input_source.categories
    elif text_column is not None:
        categories = None  # the texts met, in order of first appearance
    else:
        categories = [{"id": i + 1, "name": text} for i, text in enumerate(texts)]

    model_name = _model_name(model)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": input_source.description,
        "split": split,
        "image_column": image_column if kind == "dataset" else None,
        "image_root": None if image_root is None else str(Path(image_root).resolve()),
        "prompts": prompts,
        "texts": texts,
        "text_column": text_column,
        "model": model_name,
        "output_format": output_format,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "text_prompt_mode": text_prompt_mode,
        "mask_threshold": mask_threshold,
        "min_match_probability": min_match_probability,
        "everything": (
            {"points_per_side": points_per_side, "points_per_batch": points_per_batch,
             "pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh}
            if prompts == "everything" else None
        ),
    }  # fmt: skip

    check_manifest(output_dir, manifest)  # before the model loads: a wrong folder fails at once
    model, processor = _load_model(model, processor)
    config = model.config
    if not config.has_segmentation or (prompts == "text" and not config.has_blip):
        needed = "both halves (EfficientSAM and BLIP)" if prompts == "text" else "the EfficientSAM half"
        raise ValueError(f"{prompts} prompts need a model with {needed}; {model_name} lacks one.")
    if prompts == "text" and processor.tokenizer is None:
        raise ValueError(f"Text prompts need the model's tokenizer; the processor of {model_name} has none.")

    cpu = (device is not None and torch.device(device).type == "cpu") or not torch.accelerator.is_available()
    state = PartialState(cpu=cpu)
    rank, world = state.process_index, state.num_processes
    written_before = written_shards(output_dir) if output_dir.is_dir() else {}
    if state.is_main_process:
        (output_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        for leftover in (output_dir / SHARDS_DIR).glob(".shard-*.tmp-*"):  # files of a killed run's unfinished writes
            leftover.unlink(missing_ok=True)
        if not (output_dir / MANIFEST_FILE).is_file():
            write_json(output_dir / MANIFEST_FILE, manifest)
    model = model.to(torch.device(device) if device is not None else state.device).eval()
    annotator = _Annotator(
        model,
        processor,
        prompts,
        text_prompt_mode,
        mask_threshold,
        min_match_probability,
        {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
        },
    )
    state.wait_for_everyone()  # the manifest and the shard folder exist before any shard is written

    start = time.perf_counter()
    mine = None
    if input_source.length is not None:
        mine = sum(
            min(shard_size, input_source.length - shard * shard_size)
            for shard in range(rank, math.ceil(input_source.length / shard_size), world)
            if shard not in written_before
        )
    annotated = shards_done = 0
    bar = tqdm(total=mine, desc="Annotating", unit="image", disable=not (progress and state.is_local_main_process))
    with bar:
        for shard, items in _my_shards(input_source, shard_size, rank, world, set(written_before)):
            records = []
            for first in range(0, len(items), batch_size):
                batch = items[first : first + batch_size]
                records.extend(annotator(batch))
                bar.update(len(batch))
            write_json(shard_path(output_dir, shard), {"shard": shard, "images": records})
            annotated += len(items)
            shards_done += 1
            if max_shards is not None and shards_done >= max_shards:
                break
    # Also a barrier: every shard of this run is written when it returns. A stream cut short has no known length.
    totals = gather_object([(annotated, input_source.length)])
    seconds = time.perf_counter() - start
    lengths = {length for _, length in totals if length is not None}
    num_images = lengths.pop() if lengths else None
    output_file, num_annotations, complete, skipped = None, None, False, 0
    if num_images is not None:
        num_shards = math.ceil(num_images / shard_size)
        complete = all(shard_path(output_dir, shard).is_file() for shard in range(num_shards))
        skipped = sum(
            min(shard_size, num_images - shard * shard_size) for shard in written_before if shard < num_shards
        )
        if complete:
            output_file = output_dir / OUTPUT_FILES[output_format]
            if state.is_main_process:
                output_file, num_annotations = merge_shards(output_dir, num_shards, output_format, categories)
    state.wait_for_everyone()  # the merged file exists when any process returns
    result = AnnotationResult(
        output_file=output_file,
        complete=complete,
        num_images=num_images,
        num_annotations=num_annotations,
        images_annotated=sum(count for count, _ in totals),
        images_skipped=skipped,
        seconds=seconds,
        images_per_second=sum(count for count, _ in totals) / seconds if seconds > 0 else 0.0,
        num_processes=world,
        process_index=rank,
    )
    if progress and state.is_main_process:
        print(_summary(result), file=sys.stderr, flush=True)
    return result


def _summary(result: AnnotationResult) -> str:
    line = (
        f"Annotated {result.images_annotated} images in {result.seconds:.1f} s ({result.images_per_second:.2f} "
        f"images/s) with {result.num_processes} process(es); {result.images_skipped} images were done by earlier runs"
    )
    if result.complete:
        return f"{line}; wrote {result.output_file} ({result.num_annotations} annotations)"
    return f"{line}; shards are missing: run the same command again to finish"


# -------------------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `esam-blip annotate` / `python -m transformers_esam_blip.annotate`."""
    parser.add_argument(
        "source", help="folder of images, COCO instances .json, datasets folder (metadata/parquet/arrow) or Hub id"
    )
    parser.add_argument("--output_dir", type=Path, required=True, help="folder for manifest.json, shards/ and output")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument(
        "--text", action="append", dest="texts", metavar="TEXT", help="a text prompt (repeat for several)"
    )
    prompts.add_argument("--text_column", help="dataset column holding each row's text prompt(s)")
    prompts.add_argument("--boxes", action="store_true", help="prompt with the boxes of the COCO input")
    prompts.add_argument("--everything", action="store_true", help="segment everything (automatic mask generation)")
    parser.add_argument("--model", default=DEFAULT_BUILTIN_MODEL, help="checkpoint folder, built-in name or Hub id")
    parser.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default="coco")
    parser.add_argument("--image_column", default="image", help="dataset column of the images")
    parser.add_argument("--image_root", type=Path, help="folder that image file names are relative to")
    parser.add_argument("--split", help="dataset split (needed when it has several)")
    parser.add_argument("--streaming", action="store_true", help="read the dataset with datasets streaming")
    parser.add_argument("--batch_size", type=int, default=8, help="images per model call")
    parser.add_argument("--shard_size", type=int, default=256, help="images per shard file")
    parser.add_argument("--text_prompt_mode", choices=text_prompt_mode_choices())
    parser.add_argument("--mask_threshold", type=float, default=0.0)
    parser.add_argument("--min_match_probability", type=float, help="drop text annotations below this ITM probability")
    parser.add_argument("--points_per_side", type=int, default=32, help="everything: grid points per side")
    parser.add_argument("--points_per_batch", type=int, default=64, help="everything: point prompts per decoder call")
    parser.add_argument("--pred_iou_thresh", type=float, default=0.88, help="everything: minimum predicted IoU")
    parser.add_argument("--stability_score_thresh", type=float, default=0.95, help="everything: minimum stability")
    parser.add_argument("--max_shards", type=int, help="each process stops after writing this many shards")
    parser.add_argument("--device", type=parse_device, help="torch device (default: this process's accelerator)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (the summary line stays)")


def run(args: argparse.Namespace) -> AnnotationResult:
    """Annotate as the parsed command line says."""
    model = resolve_model_argument(args.model)
    load_checkpoint_config(model)
    try:
        result = annotate(
            args.source,
            args.output_dir,
            texts=args.texts,
            text_column=args.text_column,
            boxes=args.boxes,
            everything=args.everything,
            model=model,
            output_format=args.output_format,
            image_column=args.image_column,
            image_root=args.image_root,
            split=args.split,
            streaming=args.streaming,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            text_prompt_mode=args.text_prompt_mode,
            mask_threshold=args.mask_threshold,
            min_match_probability=args.min_match_probability,
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            device=args.device,
            progress=not args.no_progress,
            max_shards=args.max_shards,
        )
    except ValueError as error:
        raise CliError(_as_command_line(str(error))) from error
    if args.no_progress and result.process_index == 0:  # the bar is off; the outcome is still worth a line
        print(_summary(result), file=sys.stderr, flush=True)
    return result


_ARGUMENT_NAMES = {
    "`texts`": "--text",
    "`boxes`": "--boxes",
    "`everything`": "--everything",
    "`output_format`": "--format",
}


def _as_command_line(message: str) -> str:
    """The library's message with its argument names as the command line spells them."""
    for name, option in _ARGUMENT_NAMES.items():
        message = message.replace(name, option)
    for name in ("text_column", "image_column", "image_root", "output_dir", "batch_size", "shard_size", "max_shards",
                 "min_match_probability", "text_prompt_mode", "split"):  # fmt: skip
        message = message.replace(f"`{name}`", f"--{name}")
    return message.replace("`source`", "SOURCE")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m transformers_esam_blip.annotate",
        description=SUMMARY,
        epilog=f"examples:\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the annotate command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "EXAMPLES",
    "MANIFEST_FILE",
    "OUTPUT_FILES",
    "OUTPUT_FORMATS",
    "SUMMARY",
    "AnnotationItem",
    "AnnotationResult",
    "add_arguments",
    "annotate",
    "build_parser",
    "main",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
