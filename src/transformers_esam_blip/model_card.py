"""Model cards written with `huggingface_hub.ModelCard`: training runs, built-in models, and what `push_to_hub` uploads.

Every card of this package carries the tag `transformers-esam-blip` in its metadata, with `library_name`, `license`
and `tags`. The conversion command writes its card from `assets/MODEL_CARD.md` with the helpers here
(`conversion/checkpoint.py`), the training command writes [`training_model_card`] at the end of a run, and
`scripts/package_builtin_model.py` writes [`builtin_model_card`].

This module imports only `builtin.py` of the package: the model files import it, and `save_pretrained` copies both
(flat, as `transformers` remote code wants) next to them.
"""

import datetime
import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .builtin import resolve_pretrained_name

PACKAGE_NAME = "transformers-esam-blip"
# The tag that marks a card as this package's: `push_to_hub` keeps such a card and replaces any other.
CARD_TAG = PACKAGE_NAME
BASE_TAGS = (CARD_TAG, "esam_blip")
# Weights trained from random initialisation by this package carry the package's license.
PACKAGE_LICENSE = "apache-2.0"
EFFICIENTSAM_LICENSE = "apache-2.0"  # yformer/EfficientSAM
BLIP_LICENSE = "bsd-3-clause"  # salesforce/BLIP, salesforce/LAVIS, Salesforce/blip-itm-* on the Hub
TRAINING_RECORD_FILE = "training.json"


def package_version() -> str:
    """This package's installed version, or `"unknown"` where only its remote code runs (not installed)."""
    try:
        return importlib.metadata.version(PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> str:
    """`transformers-esam-blip X, transformers Y, torch Z` for a card's provenance line."""
    versions = [f"{PACKAGE_NAME} {package_version()}"]
    for name in ("transformers", "torch"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(versions)


def utc_timestamp() -> str:
    """The current time as `YYYY-MM-DD HH:MM UTC`."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks (a checkpoint of a few GB costs seconds)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def source_license(has_efficientsam: bool, has_blip: bool) -> dict[str, str]:
    """
    License metadata of weights converted from (or fine-tuned on) the original checkpoints: EfficientSAM's Apache-2.0,
    BLIP's BSD-3-Clause, both (`license: other`) for a joint checkpoint.
    """
    if has_efficientsam and has_blip:
        return {"license": "other", "license_name": f"{EFFICIENTSAM_LICENSE}-and-{BLIP_LICENSE}"}
    return {"license": BLIP_LICENSE if has_blip else EFFICIENTSAM_LICENSE}


def derived_license(origin: str | Path | None, config: Any) -> dict[str, str]:
    """
    License metadata of a model derived from `origin` (the folder it was loaded from or trained on): that folder's
    card's license when it is a card of this package, else the sources' ([`source_license`]).
    """
    card = read_esam_blip_card(Path(resolve_pretrained_name(str(origin))) / "README.md") if origin else None
    if card is None:
        return source_license(*model_parts(config))
    data = ModelCard(card, ignore_metadata_errors=True).data
    return {name: data.get(name) for name in ("license", "license_name") if data.get(name)}


def card_metadata(
    license: Mapping[str, str],
    tags: Iterable[str] = (),
    pipeline_tag: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
) -> ModelCardData:
    """
    The metadata block of a card of this package.

    Args:
        license: `{"license": ...}`, with `license_name` when the license is `other` (see [`source_license`]).
        tags: tags added after [`BASE_TAGS`] (duplicates dropped).
        pipeline_tag: the Hub's task, e.g. `mask-generation`.
        base_model: a Hub model id this model derives from; local paths are not valid Hub metadata (give them in the
            card's text instead).
        datasets: Hub dataset ids the model was trained on.

    Returns:
        [`~huggingface_hub.ModelCardData`] with `library_name: transformers`.
    """
    return ModelCardData(
        library_name="transformers",
        tags=list(dict.fromkeys([*BASE_TAGS, *tags])),
        pipeline_tag=pipeline_tag,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        **license,
    )


def build_model_card(metadata: ModelCardData, body: str) -> ModelCard:
    """A [`~huggingface_hub.ModelCard`] from its metadata and its Markdown body."""
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body.strip()}\n")


def is_esam_blip_card(text: str) -> bool:
    """Whether `text` is a model card of this package (its metadata carries [`CARD_TAG`])."""
    try:
        card = ModelCard(text, ignore_metadata_errors=True)
    except ValueError:
        return False
    return CARD_TAG in (card.data.tags or [])


def read_esam_blip_card(path: str | Path) -> str | None:
    """The text of the card at `path` if it is one of this package's, else `None` (also when there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return text if is_esam_blip_card(text) else None


def looks_like_hub_model_id(name: str) -> bool:
    """`owner/name` with no local folder of that name: what the Hub's `base_model` metadata accepts."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "~"))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """
    A Markdown table. `align` holds one character per column, `l` or `r` (default: the first column left, the others
    right).
    """
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}" if value else "0"
    return str(value).replace("|", "\\|")


def flatten_scores(scores: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """Numeric entries of a (possibly nested) score dict, nested names joined by `/` (`"point/1": 0.8`)."""
    flat: dict[str, float | int] = {}
    for name, value in scores.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_scores(value, prefix=f"{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def model_parts(config: Any) -> tuple[bool, bool]:
    """`(has EfficientSAM, has BLIP)` of an `EsamBlipConfig`."""
    return getattr(config, "sam_vision_config", None) is not None, getattr(config, "vision_config", None) is not None


def parts_description(config: Any) -> str:
    """`EfficientSAM + BLIP`, `EfficientSAM` or `BLIP`."""
    return " + ".join(name for name, present in zip(("EfficientSAM", "BLIP"), model_parts(config)) if present)


def usage_snippet(model_id: str, config: Any) -> str:
    """A runnable Markdown usage section for a checkpoint with the halves `config` has."""
    has_sam, has_blip = model_parts(config)
    lines = [
        "```python",
        "import transformers_esam_blip  # registers the classes with the Auto API (or pass trust_remote_code=True)",
        "import torch",
        "from PIL import Image",
    ]
    if has_sam:
        lines += [
            "from transformers import AutoModelForMaskGeneration, AutoProcessor",
            "",
            f'model = AutoModelForMaskGeneration.from_pretrained("{model_id}").eval()',
            f'processor = AutoProcessor.from_pretrained("{model_id}")',
            'image = Image.open("photo.jpg").convert("RGB")',
            "# points are (x, y) in image pixels, nested images -> queries -> points; label 1 = foreground",
            'inputs = processor(images=image, input_points=[[[[580, 350]]]], input_labels=[[[1]]], return_tensors="pt")',
            "with torch.no_grad():",
            '    out = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],',
            '                input_labels=inputs["input_labels"])',
            'masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]  # [Q, 3, H, W] bool',
            "best = masks[0, out.iou_scores[0, 0].argmax()]",
        ]
    else:
        lines += [
            "from transformers_esam_blip import EsamBlipForImageTextMatching, EsamBlipProcessor",
            "",
            f'model = EsamBlipForImageTextMatching.from_pretrained("{model_id}").eval()',
            f'processor = EsamBlipProcessor.from_pretrained("{model_id}")',
            'image = Image.open("photo.jpg").convert("RGB")',
            'inputs = processor(images=image, text=["a dog on the grass"], return_tensors="pt")',
            "with torch.no_grad():",
            '    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],',
            '                   blip_pixel_values=inputs["blip_pixel_values"]).itm_score',
            "match_probability = logits.softmax(-1)[:, 1]",
        ]
    lines.append("```")
    if has_sam and has_blip:
        lines += [
            "",
            'Text prompts: `pipeline("text-prompted-segmentation", model=model, processor=processor)` with the '
            "package's `EsamBlipForPromptableSegmentation` and `EsamBlipProcessor`.",
        ]
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def architecture_rows(config: Any) -> list[tuple[str, str]]:
    """`(component, sizes)` rows describing an `EsamBlipConfig`, for a card's architecture table."""
    rows = []
    vision = getattr(config, "sam_vision_config", None)
    if vision is not None:
        rows.append(
            (
                "EfficientSAM ViT",
                f"width {vision.hidden_size}, {_count(vision.num_hidden_layers, 'block')}, "
                f"{_count(vision.num_attention_heads, 'head')}, "
                f"{vision.image_size}² input, patch {vision.patch_size}",
            )
        )
        decoder = config.mask_decoder_config
        mask_prompts = getattr(config.prompt_encoder_config, "mask_prompts", False)
        rows.append(
            (
                "EfficientSAM decoder",
                f"width {decoder.hidden_size}, {_count(decoder.num_hidden_layers, 'two-way block')}, "
                f"{decoder.num_multimask_outputs} candidate masks; mask prompts: {'yes' if mask_prompts else 'no'}",
            )
        )
    blip_vision, text = getattr(config, "vision_config", None), getattr(config, "text_config", None)
    if blip_vision is not None:
        rows.append(
            (
                "BLIP ViT",
                f"width {blip_vision.hidden_size}, {_count(blip_vision.num_hidden_layers, 'block')}, "
                f"{blip_vision.image_size}² input, patch {blip_vision.patch_size}",
            )
        )
        rows.append(
            (
                "BLIP text encoder",
                f"width {text.hidden_size}, {_count(text.num_hidden_layers, 'layer')}, vocabulary {text.vocab_size:,}; "
                f"Grad-CAM at layer {getattr(config, 'gradcam_block_num', '?')}",
            )
        )
    extras = []
    if getattr(config, "prompter_source", None) is not None:
        extras.append(f"learned text prompter from {config.prompter_source} features")
    if getattr(config, "fusion_type", "none") not in (None, "none"):
        extras.append(f"`{config.fusion_type}` encoder fusion")
    if getattr(config, "itm_fusion", False):
        extras.append("`itm_fusion`")
    if extras:
        rows.append(("trained heads", ", ".join(extras)))
    return rows


def model_card_for(model: Any, repo_id: str) -> ModelCard:
    """
    The card `push_to_hub` uploads for `model` when its folder holds no card of this package: what the model is, its
    architecture and where it was loaded from. License: the one of the card of the folder it was loaded from when
    that is a card of this package, else the sources' (see [`source_license`]).
    """
    config = model.config
    origin = str(getattr(model, "name_or_path", "") or "")
    has_sam, _ = model_parts(config)
    metadata = card_metadata(
        derived_license(origin, config),
        tags=[*(getattr(model, "model_tags", None) or []), "image-segmentation" if has_sam else "image-text-matching"],
        pipeline_tag="mask-generation" if has_sam else None,
        base_model=origin if looks_like_hub_model_id(origin) and origin != repo_id else None,
    )
    dtype = str(getattr(model, "dtype", "")).removeprefix("torch.")
    origin_line = f"- Loaded from: `{origin}` before this upload\n" if origin else ""
    body = f"""# {repo_id}

A `{PACKAGE_NAME}` checkpoint ({parts_description(config)}), uploaded with `push_to_hub`. This card was generated from
the model itself; it records no scores. The processor is uploaded on its own (`processor.push_to_hub("{repo_id}")`);
the usage below needs it.

- Model class: `{type(model).__name__}`
- Parameters: {model.num_parameters():,}
- Stored dtype: {dtype}
{origin_line}- Written by: {library_versions()}, {utc_timestamp()}

## Architecture

{markdown_table(("component", "sizes"), architecture_rows(config), align="ll")}

## Usage

{usage_snippet(repo_id, config)}
"""
    return build_model_card(metadata, body)


@dataclass
class TrainingRecord:
    """
    What a run of the training command did, for its model card and `training.json`.

    Attributes:
        command: the command line, with every option that differs from its default.
        base_model: `--model` (a folder, a built-in name or a Hub id), or `None` when trained from a preset.
        preset: `--config` (the preset trained from random weights), or `None`.
        task: `--task`.
        freeze: `--freeze`.
        train_data: `--dataset` and how it was drawn or read.
        num_train_examples, num_eval_examples: rows of the training / evaluation data (`None`: no evaluation).
        eval_data: `--eval_dataset`, `None` without evaluation.
        global_step: optimiser steps taken.
        num_parameters, trainable_parameters: all parameters / those that trained.
        final_metrics: the last evaluation's `eval_*` scores (empty without evaluation).
        train_loss: `(first, last)` logged training loss, `None` when none was logged.
        train_runtime_s: seconds inside `Trainer.train`.
        wall_time_s: seconds of the whole command up to the card (loading, data, training, saving, evaluation).
        world_size, device: processes and device of the run.
        date, versions: when it finished and with what.
    """

    command: str
    base_model: str | None
    preset: str | None
    task: str
    freeze: str
    train_data: str
    num_train_examples: int
    eval_data: str | None
    num_eval_examples: int | None
    global_step: int
    num_parameters: int
    trainable_parameters: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    train_loss: tuple[float, float] | None = None
    train_runtime_s: float | None = None
    wall_time_s: float = 0.0
    world_size: int = 1
    device: str = "cpu"
    date: str = field(default_factory=utc_timestamp)
    versions: str = field(default_factory=library_versions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"


def training_model_card(record: TrainingRecord, model: Any, model_id: str) -> ModelCard:
    """
    The card of a training run's output: the command, the data, the final metrics, the time and the base model.

    Args:
        record: what the run did ([`TrainingRecord`]).
        model: the trained model (its config and class are described).
        model_id: the card's title: the Hub repository or the output folder's name.
    """
    config = model.config
    if record.base_model is None:
        license = {"license": PACKAGE_LICENSE}
        base = f"none: preset `{record.preset}` trained from random weights"
    else:
        license = derived_license(record.base_model, config)
        base = f"`{record.base_model}`"
    has_sam, _ = model_parts(config)
    tags = ["image-text-matching"] if record.task == "itm" else ["image-segmentation", "referring-segmentation"]
    metadata = card_metadata(
        license,
        tags=tags,
        pipeline_tag="mask-generation" if has_sam else None,
        base_model=record.base_model if record.base_model and looks_like_hub_model_id(record.base_model) else None,
    )
    if record.final_metrics:
        metrics = markdown_table(("metric", "value"), sorted(record.final_metrics.items()))
    else:
        metrics = "No evaluation data was given (`--eval_dataset`), so the run reports no scores."
    loss = (
        f"Logged training loss: {record.train_loss[0]:.4f} at the first log, {record.train_loss[1]:.4f} at the last."
        if record.train_loss
        else "No training loss was logged."
    )
    data_rows = [("training", record.train_data, record.num_train_examples)]
    if record.eval_data is not None:
        data_rows.append(("evaluation", record.eval_data, record.num_eval_examples))
    runtime = _duration(record.train_runtime_s) if record.train_runtime_s is not None else "not reported"
    body = f"""# {model_id}

A `{PACKAGE_NAME}` model ({parts_description(config)}) trained with `python -m transformers_esam_blip.training` (task `{record.task}`, `--freeze {record.freeze}`).

- Base model: {base}
- Model class: `{type(model).__name__}`; {record.num_parameters:,} parameters, {record.trainable_parameters:,} trained
- Steps: {record.global_step:,} on {record.world_size} process(es), device `{record.device}`
- Time: {_duration(record.wall_time_s)} for the whole command; {runtime} inside `Trainer.train`
- Finished: {record.date}, with {record.versions}

## Command

```bash
{record.command}
```

## Data

{markdown_table(("split", "source", "examples"), data_rows, align="llr")}

## Final metrics

{metrics}

{loss}

## Architecture

{markdown_table(("component", "sizes"), architecture_rows(config), align="ll")}

## Usage

{usage_snippet(model_id, config)}
"""
    return build_model_card(metadata, body)


def builtin_model_card(
    name: str,
    description: str,
    domain: str,
    model: Any,
    scores: Mapping[str, Any],
    test_set: str,
    evaluation_command: str,
    training_commands: str,
    training_time: str,
    prompt_type_table: str | None = None,
) -> ModelCard:
    """
    The card of a model shipped inside the package (`assets/models/<name>/README.md`).

    Args:
        name: the built-in name (`esam-blip-shapes`).
        description: one line on what it is.
        domain: one sentence on what it knows and nothing else; the card puts it first.
        model: the model (its size and architecture are described).
        scores: the test scores (nested dicts are flattened, see [`flatten_scores`]).
        test_set: what the scores were measured on.
        evaluation_command: the command that prints those scores.
        training_commands: the exact commands that trained it (one per line).
        training_time: how long training took, and on what.
        prompt_type_table: a Markdown section body with the scores per prompt type (points, box, text, ...), if
            measured.
    """
    rows = [(metric, value) for metric, value in flatten_scores(scores).items()]
    per_prompt_type = f"## Scores per prompt type\n\n{prompt_type_table.strip()}\n\n" if prompt_type_table else ""
    metadata = card_metadata(
        {"license": PACKAGE_LICENSE},
        tags=["image-segmentation", "referring-segmentation", "image-text-matching", "synthetic"],
        pipeline_tag="mask-generation",
    )
    body = f"""# {name}

**{domain}**

{description}. It ships inside `{PACKAGE_NAME}` and loads by name, offline:
`EsamBlipForPromptableSegmentation.from_pretrained("{name}")`. {model.num_parameters():,} parameters.

## Test scores

{test_set}. Reproduce with `{evaluation_command}`.

{markdown_table(("metric", "value"), rows)}

{per_prompt_type}## Training

```bash
{training_commands.strip()}
```

Time: {training_time or "not recorded"}.

## Architecture

{markdown_table(("component", "sizes"), architecture_rows(model.config), align="ll")}

## Limitations

It has seen synthetic scenes only: on photographs, or for words outside its vocabulary, its masks and match
probabilities mean nothing (unknown words are reported and never matched). Use converted EfficientSAM and BLIP
checkpoints for real images.
"""
    return build_model_card(metadata, body)


class EsamBlipModelCardMixin:
    """
    Makes `push_to_hub` and `save_pretrained(..., push_to_hub=True)` upload this package's model card instead of the
    template card `transformers` writes (`create_and_tag_model_card`, "[More Information Needed]").

    `transformers` writes that card into the folder it uploads and then calls `_upload_modified_files`, the step
    overridden here: a card of this package that the saved folder held before is put back (the card of a conversion
    or a training run, with its measured numbers); otherwise the card is generated from the model
    ([`model_card_for`]).
    """

    def save_pretrained(
        self, save_directory: str | Path, is_main_process: bool = True, state_dict=None, push_to_hub=False, **kwargs
    ):
        readme = Path(save_directory) / "README.md"
        self._esam_blip_kept_card = read_esam_blip_card(readme) if push_to_hub else None
        try:
            return super().save_pretrained(
                save_directory,
                is_main_process=is_main_process,
                state_dict=state_dict,
                push_to_hub=push_to_hub,
                **kwargs,
            )
        finally:
            self._esam_blip_kept_card = None

    def _upload_modified_files(self, working_dir: str | Path, repo_id: str, files_timestamps: dict, *args, **kwargs):
        readme = Path(working_dir) / "README.md"
        kept = getattr(self, "_esam_blip_kept_card", None)
        if kept is not None:
            readme.write_text(kept, encoding="utf-8")
        else:
            model_card_for(self, repo_id).save(readme)
        return super()._upload_modified_files(working_dir, repo_id, files_timestamps, *args, **kwargs)


__all__ = [
    "BASE_TAGS",
    "CARD_TAG",
    "EsamBlipModelCardMixin",
    "PACKAGE_LICENSE",
    "TRAINING_RECORD_FILE",
    "TrainingRecord",
    "architecture_rows",
    "build_model_card",
    "builtin_model_card",
    "card_metadata",
    "derived_license",
    "file_sha256",
    "flatten_scores",
    "is_esam_blip_card",
    "library_versions",
    "looks_like_hub_model_id",
    "markdown_table",
    "model_card_for",
    "model_parts",
    "package_version",
    "parts_description",
    "read_esam_blip_card",
    "source_license",
    "training_model_card",
    "usage_snippet",
    "utc_timestamp",
]
