"""Build one EsamBlip checkpoint (safetensors, config, processor, model card) from original EfficientSAM/BLIP weights."""

import argparse
import json
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors import SafetensorError

from ..commands import CommandParser, check_hub_repo, looks_like_hub_id, run_command
from ..configuration_esam_blip import EsamBlipConfig
from ..image_processing_esam_blip import EsamBlipImageProcessor
from ..model_card import (
    card_metadata,
    file_sha256,
    library_versions,
    markdown_table,
    model_parts,
    parts_description,
    source_license,
    usage_snippet,
    utc_timestamp,
)
from ..modeling_esam_blip import EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation
from ..processing_esam_blip import EsamBlipProcessor, build_blip_tokenizer
from .blip import blip_configs_from_state_dict, convert_blip_state_dict, load_blip_source, load_blip_source_config
from .efficient_sam import (
    convert_efficient_sam_state_dict,
    efficient_sam_configs_from_state_dict,
    load_efficient_sam_state_dict,
)
from .parity import (
    PROBE_DESCRIPTION,
    ParityMeasurement,
    checkpoint_outputs,
    compare_outputs,
    probe_inputs,
    source_outputs,
)

SUMMARY = "Convert original EfficientSAM and/or BLIP (LAVIS or transformers) weights to one EsamBlip checkpoint."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The repository's MODEL_CARD.md links here, so the template also ships with a non-editable install.
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "MODEL_CARD.md"
CONVERSION_SCRIPT = "python conversion/convert_esam_blip.py"
# Files of a transformers BLIP folder whose bytes the conversion reads (weights, shards, their index, the config).
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth")


def _check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise ValueError("The converted weights do not match the model: " + "; ".join(problems))


def render_model_card(template: str, values: dict[str, str]) -> str:
    """Replace every `{{name}}` of the template; a placeholder left unfilled is an error."""
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    if "{{" in template:
        start = template.index("{{")
        raise ValueError(f"Model card placeholder left unfilled: {template[start : template.index('}}', start) + 2]}")
    return template


def conversion_command(**arguments: object) -> str:
    """The conversion command line that `convert_checkpoint(**arguments)` runs (`None`/`False` options left out)."""
    words = [CONVERSION_SCRIPT]
    for name, value in arguments.items():
        if value is True:
            words.append(f"--{name}")
        elif value is not None and value is not False:
            words += [f"--{name}", str(value)]
    return " ".join([words[0], shlex.join(words[1:])])


def source_files(efficientsam: str | Path | None, blip: str | Path | None) -> list[dict[str, str]]:
    """`{"argument", "file", "sha256"}` of every source file the conversion reads (a BLIP folder's weights and config)."""
    files = []
    for argument, source in (("--efficientsam", efficientsam), ("--blip", blip)):
        if source is None:
            continue
        source = Path(source)
        paths = (
            sorted(path for path in source.iterdir() if path.is_file() and path.suffix in _HASHED_SUFFIXES)
            if source.is_dir()
            else [source]
        )
        files += [{"argument": argument, "file": str(path), "sha256": file_sha256(path)} for path in paths]
    return files


def parity_section(measurements: list[ParityMeasurement], dtype: str) -> str:
    """The model card's parity section: a table of the measured errors and what was compared."""
    rows = [
        (
            m.part,
            m.output,
            "x".join(map(str, m.shape)),
            m.reference,
            f"{m.max_abs_error:.2e}" if m.max_abs_error else "0",
            f"{m.reference_max_abs:.3g}",
        )
        for m in measurements
    ]
    table = markdown_table(
        ("part", "output", "shape", "compared with", "max abs error", "max abs value"), rows, align="llllrr"
    )
    return (
        f"The written checkpoint ({dtype} weights, reloaded with `from_pretrained` and run in float32) against the "
        f"source, on one probe input: {PROBE_DESCRIPTION}.\n\n{table}\n\nThe EfficientSAM reference is this package's "
        "code (the original code does not run here; the package's tests check that code against outputs of the "
        "original, `tests/fixtures`). The BLIP reference is `transformers`' own BLIP retrieval model, fed `[ENC]` "
        "first for ITM as LAVIS does."
    )


def conversion_model_card(
    model_id: str,
    config: EsamBlipConfig,
    model_class: str,
    num_parameters: int,
    dtype: str,
    sources: list[str],
    files: list[dict[str, str]],
    tokenizer: str | Path | None,
    parity: list[ParityMeasurement],
    command: str,
    date: str,
    versions: str,
    notes: list[str],
) -> ModelCard:
    """
    The card of a converted checkpoint, from `MODEL_CARD_TEMPLATE`: the measured parity with the source, the source
    files with their SHA-256, the command, the date and the versions, and the conversion notes.
    """
    provenance = markdown_table(
        ("argument", "file", "sha256"),
        [(f["argument"], f"`{Path(f['file']).name}`", f"`{f['sha256']}`") for f in files],
        align="lll",
    )
    if tokenizer is not None:
        provenance += f"\n\nTokenizer: `{tokenizer}` (`--tokenizer`; `[DEC]` and `[ENC]` added as LAVIS does)."
    metadata = card_metadata(
        source_license(*model_parts(config)),
        tags=[
            *(["efficientsam", "image-segmentation", "promptable-segmentation"] if config.has_segmentation else []),
            *(["blip", "image-text-matching", "grad-cam"] if config.has_blip else []),
        ],
        pipeline_tag="mask-generation" if config.has_segmentation else None,
    )
    text = render_model_card(
        MODEL_CARD_TEMPLATE.read_text(encoding="utf-8"),
        {
            "metadata": metadata.to_yaml(),
            "model_id": model_id,
            "sources": ", ".join(sources),
            "parts": parts_description(config),
            "num_parameters": f"{num_parameters:,}",
            "dtype": dtype,
            "model_class": model_class,
            "usage": usage_snippet(model_id, config),
            "parity": parity_section(parity, dtype),
            "provenance": provenance,
            "command": command,
            "date": date,
            "versions": versions,
            "notes": "\n".join(f"- {note}" for note in notes) or "- None.",
        },
    )
    return ModelCard(text)


def _check_flag(name: str, value: object, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"--{name} must be an int >= {minimum}, got {value!r}.")


def _check_tokenizer(tokenizer: str | Path | None, blip: str | Path | None) -> None:
    """Before any work: `--tokenizer` is given with `--blip`, and is an existing folder/vocab file or a Hub id."""
    if blip is None:
        if tokenizer is not None:
            raise ValueError("--tokenizer is only used with --blip (the BLIP vocabulary); drop it or add --blip.")
        return
    if tokenizer is None:
        raise ValueError("--tokenizer is required with --blip (the BLIP vocabulary with [DEC] and [ENC]).")
    path = Path(tokenizer)
    if path.is_dir():
        if not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json")):
            raise ValueError(
                f"--tokenizer {path} holds no tokenizer (no vocab.txt, tokenizer.json or tokenizer_config.json)."
            )
    elif not path.exists():
        if not looks_like_hub_id(str(tokenizer)):
            raise FileNotFoundError(
                f"--tokenizer {path} does not exist (give a tokenizer folder, a vocab.txt or a Hub id)."
            )
        check_hub_repo(str(tokenizer), "--tokenizer", what="a tokenizer folder")


def _prepare_output(output_dir: Path, overwrite: bool) -> tuple[Path, list[Path]]:
    """
    Check `--output_dir` can be written, before anything is converted, by creating the staging folder the checkpoint is
    written to (a temporary sibling of `output_dir`). Returns it and the parent folders this created.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} is a file; give a folder.")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"--output_dir {output_dir} exists; pass --overwrite to replace it.")
    created: list[Path] = []
    parent = output_dir.absolute().parent
    missing = parent
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    if not missing.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir}: {missing} is a file, not a folder.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=parent))
        (staging / ".write-test").write_bytes(b"")
        (staging / ".write-test").unlink()
    except OSError as error:
        _remove_created(created)
        raise PermissionError(
            error.errno,
            f"--output_dir {output_dir}: cannot write in {missing if created else parent} ({error.strerror or error})",
        ) from None
    return staging, created


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            break


def convert_checkpoint(
    output_dir: str | Path,
    efficientsam: str | Path | None = None,
    blip: str | Path | None = None,
    sam_num_heads: int | None = None,
    blip_vision_heads: int | None = None,
    blip_text_heads: int | None = None,
    tokenizer: str | Path | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    gradcam_block_num: int | None = None,
) -> Path:
    """
    Convert original checkpoints into one EsamBlip folder; see `python conversion/convert_esam_blip.py --help`.

    Every argument is checked, and `output_dir` is checked to be writable (its staging folder is created), before
    anything is loaded. The folder is written to that temporary sibling and renamed into place only when complete,
    so a failed run (a bad source, a full disk) leaves nothing half-written; an existing `output_dir` is replaced
    only with `overwrite=True`. Before the rename, the written checkpoint is reloaded and compared with the source on a
    probe input (see `conversion/parity.py`); the measured errors, the source files' SHA-256, the command line, the
    date and the versions go into the model card (`README.md`) and `conversion.json`.

    Hyper-parameters come from the source's own config when it has one (a transformers BLIP folder's
    `config.json`), else from the tensor shapes and the flags; a flag that contradicts the config is an error.
    `gradcam_block_num` picks the text layer whose cross-attention Grad-CAM reads (default: see
    [`blip_configs_from_state_dict`]); the choice is recorded in the model card and `conversion.json`.

    Returns:
        The output folder.
    """
    if efficientsam is None and blip is None:
        raise ValueError("Give --efficientsam and/or --blip: there is nothing to convert.")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    for name, value in (("sam_num_heads", sam_num_heads), ("blip_vision_heads", blip_vision_heads)):
        _check_flag(name, value, 1)
    _check_flag("blip_text_heads", blip_text_heads, 1)
    _check_flag("gradcam_block_num", gradcam_block_num, 0)
    if efficientsam is None and sam_num_heads is not None:
        raise ValueError("--sam_num_heads is only used with --efficientsam.")
    if blip is None and (blip_vision_heads, blip_text_heads, gradcam_block_num) != (None, None, None):
        raise ValueError("--blip_vision_heads, --blip_text_heads and --gradcam_block_num are only used with --blip.")
    for name, source in (("--efficientsam", efficientsam), ("--blip", blip)):
        if source is not None and not Path(source).exists():
            raise FileNotFoundError(f"{name}: no such file{' or folder' if name == '--blip' else ''}: {source}")
    _check_tokenizer(tokenizer, blip)
    output_dir = Path(output_dir)
    command = conversion_command(
        efficientsam=efficientsam, blip=blip, tokenizer=tokenizer, output_dir=output_dir, sam_num_heads=sam_num_heads,
        blip_vision_heads=blip_vision_heads, blip_text_heads=blip_text_heads, gradcam_block_num=gradcam_block_num,
        dtype=None if dtype == "float32" else dtype, overwrite=overwrite, push_to_hub=push_to_hub,
    )  # fmt: skip
    staging, created = _prepare_output(output_dir, overwrite)
    try:
        _convert_into(
            staging, output_dir, efficientsam, blip, sam_num_heads, blip_vision_heads, blip_text_heads, tokenizer,
            dtype, push_to_hub, gradcam_block_num, command,
        )  # fmt: skip
        if output_dir.exists():
            backup = output_dir.with_name(f".{output_dir.name}.old")
            output_dir.rename(backup)
            staging.rename(output_dir)
            shutil.rmtree(backup)
        else:
            staging.rename(output_dir)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=str(output_dir), repo_id=push_to_hub)
    return output_dir


def _convert_into(
    staging: Path,
    output_dir: Path,
    efficientsam: str | Path | None,
    blip: str | Path | None,
    sam_num_heads: int | None,
    blip_vision_heads: int | None,
    blip_text_heads: int | None,
    tokenizer: str | Path | None,
    dtype: str,
    push_to_hub: str | None,
    gradcam_block_num: int | None,
    command: str,
) -> None:
    """Load, convert, check, save into `staging`, measure the saved checkpoint against the source, write the card."""
    config_kwargs: dict = {"segmentation": efficientsam is not None}
    weights: dict[str, torch.Tensor] = {}
    sources, notes = [], []
    if efficientsam is not None:
        sam_state = load_efficient_sam_state_dict(efficientsam)
        config_kwargs.update(efficient_sam_configs_from_state_dict(sam_state, num_heads=sam_num_heads))
        weights.update({f"model.sam.{k}": v for k, v in convert_efficient_sam_state_dict(sam_state).items()})
        sources.append(f"EfficientSAM `{Path(efficientsam).name}`")
    blip_tokenizer = None
    blip_weights = None
    record: dict = {}
    if blip is not None:
        blip_state, kind, ignored = load_blip_source(blip)
        source_config = load_blip_source_config(blip) if kind == "transformers" and Path(blip).is_dir() else None
        blip_kwargs = blip_configs_from_state_dict(
            blip_state, kind, vision_heads=blip_vision_heads, text_heads=blip_text_heads, source_config=source_config
        )
        num_text_layers = blip_kwargs["text_config"]["num_hidden_layers"]
        if gradcam_block_num is not None:
            if gradcam_block_num >= num_text_layers:
                raise ValueError(
                    f"--gradcam_block_num must be in [0, {num_text_layers - 1}] (the text encoder has "
                    f"{num_text_layers} layers), got {gradcam_block_num}."
                )
            blip_kwargs["gradcam_block_num"] = gradcam_block_num
        config_kwargs.update(blip_kwargs)
        blip_weights = convert_blip_state_dict(blip_state, kind)
        weights.update({f"model.blip.{k}": v for k, v in blip_weights.items()})
        sources.append(f"BLIP ({kind}) `{Path(blip).name}`")
        heads = (blip_kwargs["vision_config"]["num_attention_heads"], blip_kwargs["text_config"]["num_attention_heads"])
        origin = "the source's config.json" if source_config is not None else "the flags or width / 64"
        notes.append(f"BLIP attention heads: ViT {heads[0]}, text encoder {heads[1]} (from {origin}).")
        chosen = "--gradcam_block_num" if gradcam_block_num is not None else "the default"
        notes.append(
            f"Grad-CAM reads the cross-attention of text layer {blip_kwargs['gradcam_block_num']} of "
            f"{num_text_layers} (`gradcam_block_num`, {chosen})."
        )
        record["gradcam_block_num"] = blip_kwargs["gradcam_block_num"]
        if ignored:
            notes.append(f"Ignored {len(ignored)} keys of the BLIP source (momentum encoders, queues): {ignored}")
        try:
            blip_tokenizer = build_blip_tokenizer(tokenizer)
        except (OSError, ValueError) as error:
            raise ValueError(f"--tokenizer {tokenizer} does not load as a BERT tokenizer: {error}") from None
        config_kwargs["enc_token_id"] = blip_tokenizer.convert_tokens_to_ids("[ENC]")
        config_kwargs["unk_token_id"] = blip_tokenizer.unk_token_id

    config = EsamBlipConfig(**config_kwargs)
    model_class = EsamBlipForPromptableSegmentation if config.has_segmentation else EsamBlipForImageTextMatching
    model = model_class(config)
    _check_keys(model, weights)
    model.load_state_dict(weights, strict=True)
    model.eval()
    num_parameters = sum(p.numel() for p in model.parameters())

    image_processor = EsamBlipImageProcessor(
        sam_image_size=config.sam_vision_config.image_size if config.has_segmentation else None,
        blip_image_size=config.vision_config.image_size if config.has_blip else None,
        max_num_points=config.prompt_encoder_config.max_num_points if config.has_segmentation else 6,
        mask_input_size=config.prompt_encoder_config.mask_input_size if config.has_segmentation else 256,
    )
    processor = EsamBlipProcessor(
        image_processor=image_processor, tokenizer=blip_tokenizer, max_txt_len=config.max_txt_len
    )
    probe = probe_inputs(processor, config)
    reference = source_outputs(model, blip_weights, probe)
    files = source_files(efficientsam, blip)

    try:
        model.to(DTYPES[dtype]).save_pretrained(staging)
        del model
        processor.save_pretrained(staging)
        parity = compare_outputs(
            reference, checkpoint_outputs(model_class.from_pretrained(staging, dtype=torch.float32).eval(), probe)
        )
        date, versions = utc_timestamp(), library_versions()
        conversion_model_card(
            push_to_hub or output_dir.name, config, model_class.__name__, num_parameters, dtype, sources, files,
            tokenizer, parity, command, date, versions, notes,
        ).save(staging / "README.md")  # fmt: skip
        (staging / "conversion.json").write_text(
            json.dumps(
                {
                    "sources": sources,
                    "source_files": files,
                    "tokenizer": None if tokenizer is None else str(tokenizer),
                    "dtype": dtype,
                    **record,
                    "parity": [asdict(measurement) for measurement in parity],
                    "command": command,
                    "date": date,
                    "versions": versions,
                    "notes": notes,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    except (OSError, SafetensorError) as error:  # a full disk, a quota, a folder removed under us
        detail = " ".join(str(error).split())
        raise OSError(
            f"--output_dir {output_dir}: writing the checkpoint failed ({detail}); nothing was written"
        ) from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the conversion command's arguments to `parser` (the script's, or `esam-blip convert`'s)."""
    parser.add_argument(
        "--efficientsam", type=Path, help="original EfficientSAM .pt ({'model': state_dict} or a state dict)"
    )
    parser.add_argument(
        "--blip", type=Path, help="LAVIS BLIP ITM .pth, or a folder with a transformers BlipForImageTextRetrieval"
    )
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--sam_num_heads", type=int, help="EfficientSAM ViT heads (default: width / 64)")
    parser.add_argument(
        "--blip_vision_heads", type=int, help="BLIP ViT heads for LAVIS checkpoints (default: width / 64)"
    )
    parser.add_argument(
        "--blip_text_heads", type=int, help="BLIP text heads for LAVIS checkpoints (default: width / 64)"
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="BLIP BERT tokenizer folder or vocab.txt (with --blip; [DEC]/[ENC] are added)"
    )
    parser.add_argument(
        "--gradcam_block_num",
        type=int,
        help="text layer (0-based) whose cross-attention Grad-CAM reads (default: 7 as LAVIS/PnP-VQA, or the "
        "second-to-last layer of shallower encoders); recorded in the model card",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub repository")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `conversion/convert_esam_blip.py`."""
    parser = CommandParser(prog="convert_esam_blip.py", description=SUMMARY)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    """Convert as the parsed command line says (`conversion/convert_esam_blip.py` / `esam-blip convert`)."""
    names = ("efficientsam", "blip", "output_dir", "sam_num_heads", "blip_vision_heads", "blip_text_heads")
    names += ("tokenizer", "dtype", "overwrite", "push_to_hub", "gradcam_block_num")
    print(f"Wrote {convert_checkpoint(**{name: getattr(args, name) for name in names})}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "SUMMARY",
    "add_arguments",
    "build_parser",
    "conversion_command",
    "conversion_model_card",
    "convert_checkpoint",
    "main",
    "parity_section",
    "render_model_card",
    "run",
    "source_files",
]
