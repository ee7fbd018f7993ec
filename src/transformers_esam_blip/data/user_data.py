"""Load user referring-segmentation data (a local folder or a Hub dataset) into the canonical columns."""

import io
import json
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from datasets.exceptions import DatasetsError

from .masks import bool_to_mask_image, decode_rle, mask_to_bool, polygons_to_mask

MASK_FORMATS = ("auto", "png", "rle", "polygon")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# What every referring-segmentation dataset of this package looks like; the collator reads these columns.
REFERRING_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "mask": datasets.Image(mode="L"),
        "match_label": datasets.Value("int64"),
    }
)


def _file_value(value: Any, root: Path | None, name: str) -> dict[str, Any]:
    """An image reference as a `datasets.Image(decode=False)` value; a file name is relative to the folder."""
    if isinstance(value, str):
        path = Path(value) if root is None else root / value
        if not path.is_file():
            raise ValueError(f"The {name} names the file {value!r}, which does not exist (looked at {path}).")
        return {"path": str(path), "bytes": None}
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        return value
    raise ValueError(f"The {name} is missing or not an image (got {value!r:.80}).")


def _open_image(value: dict[str, Any]) -> PIL.Image.Image:
    """A lazily opened (header only) PIL image from a [`_file_value`]."""
    return PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"])


def _mask_kind(value: Any) -> str:
    """The mask format a single value is in: "png", "rle", "polygon" or "json" (a JSON string to parse first)."""
    if isinstance(value, PIL.Image.Image) or (isinstance(value, dict) and {"bytes", "path"} >= value.keys()):
        return "png"
    if isinstance(value, dict):
        return "rle"
    if isinstance(value, (list, tuple)):
        return "polygon"
    if isinstance(value, str):
        return "json" if value.lstrip()[:1] in ("{", "[") else "png"
    return type(value).__name__


def _decode_mask(value: Any, mask_format: str, size: tuple[int, int], root: Path | None, row: int) -> np.ndarray:
    """One row's mask as an `(H, W)` bool array, `size` = the image's `(H, W)`."""
    name = f"mask of row {row}"
    kind = _mask_kind(value)
    if kind == "json":
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"The {name} looks like JSON but does not parse ({error}): {value[:80]!r}.") from None
        kind = _mask_kind(value)
    if mask_format != "auto" and kind != mask_format:
        raise ValueError(f"`mask_format` is {mask_format!r} but the {name} is a {kind} value ({type(value).__name__}).")
    if kind == "png":
        if isinstance(value, PIL.Image.Image):
            mask = mask_to_bool(value, name)
        else:
            with _open_image(_file_value(value, root, name)) as image:
                mask = mask_to_bool(image, name)
    elif kind == "rle":
        mask = decode_rle(value, name)
    elif kind == "polygon":
        mask = polygons_to_mask(value, *size, name=name)
    else:
        raise ValueError(
            f"The {name} is a {kind}; expected a PNG (image, or a file name), a COCO RLE dict or a polygon list."
        )
    if mask.shape != size:
        raise ValueError(
            f"The {name} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is {size[0]}x{size[1]}; masks must "
            "have the size of their image."
        )
    return mask


def _to_canonical(
    example: dict[str, Any],
    row: int,
    columns: dict[str, str],
    mask_format: str,
    match_label_column: str | None,
    root: Path | None,
) -> dict[str, Any]:
    image = _file_value(example[columns["image"]], root, f"image of row {row}")
    with _open_image(image) as opened:
        width, height = opened.size
    text = example[columns["text"]]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"The text of row {row} must be a non-empty string, got {text!r}.")
    mask = _decode_mask(example[columns["mask"]], mask_format, (height, width), root, row)
    if match_label_column is None:
        match_label = int(mask.any())
    else:
        match_label = example[match_label_column]
        if match_label not in (0, 1):
            raise ValueError(f"The match label of row {row} must be 0 or 1, got {match_label!r}.")
    return {"image": image, "text": text, "mask": bool_to_mask_image(mask), "match_label": int(match_label)}


def check_metadata_file(folder: str | os.PathLike) -> Path:
    """
    The metadata file of a referring-data folder, checked before `datasets` reads it: present, not empty, and for
    `metadata.jsonl` one JSON object per line. Returns its path; raises a `ValueError` naming the file and the line
    otherwise (instead of a bare `StopIteration` or a `DatasetGenerationError` from `datasets`).
    """
    folder = Path(folder)
    metadata = next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)
    if metadata is None:
        raise ValueError(
            f"The folder {folder} has no {' / '.join(METADATA_FILES)}. Expected layout: images anywhere under "
            'the folder and a metadata.jsonl with one line per example, e.g. {"file_name": "images/1.png", '
            '"text": "the red circle", "mask_file_name": "masks/1.png"} (or a "mask" field holding a COCO RLE or '
            "polygons); see `load_referring_dataset`."
        )
    if metadata.stat().st_size == 0:
        raise ValueError(f"{metadata} is empty: the dataset holds no examples.")
    if metadata.suffix == ".jsonl":
        rows = 0
        with metadata.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise ValueError(f"{metadata} line {number} is not JSON ({error}): {line[:60]!r}.") from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{metadata} line {number} must be a JSON object (one example), got {type(row).__name__}."
                    )
                rows += 1
        if rows == 0:
            raise ValueError(f"{metadata} holds only blank lines: the dataset holds no examples.")
    elif metadata.suffix == ".csv":
        with metadata.open("rb") as handle:
            if sum(1 for line in handle if line.strip()) < 2:
                raise ValueError(f"{metadata} holds a header at most: the dataset holds no examples.")
    return metadata


def _load_metadata(folder: Path, **load_kwargs: Any) -> datasets.Dataset:
    """
    The folder's metadata file as a dataset, `file_name` renamed `image` and `<name>_file_name` renamed `<name>` (file
    names stay strings, resolved against the folder later). Read directly rather than with `imagefolder`, which
    scans every file of the folder and, in `datasets` 5.2, gives a `mask_file_name` listed before `file_name` the
    image's file.
    """
    metadata = check_metadata_file(folder)
    builder = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}[metadata.suffix]
    try:
        dataset = datasets.load_dataset(builder, data_files=str(metadata), split="train", **load_kwargs)
    except (DatasetsError, StopIteration) as error:  # `datasets` wraps the parser's error, or finds no rows
        cause = error.__cause__ or error.__context__
        detail = " ".join(str(cause if cause is not None else error).split()) or type(error).__name__
        raise ValueError(f"{metadata} could not be read as a {builder} table: {detail}.") from error
    renames = {
        column: "image" if column == "file_name" else column.removesuffix("_file_name")
        for column in dataset.column_names
        if column == "file_name" or column.endswith("_file_name")
    }
    clashes = sorted(set(renames.values()) & (set(dataset.column_names) - set(renames)))
    if clashes:
        raise ValueError(
            f"{metadata} has both file-name columns and the columns {clashes} they would be renamed to; rename one."
        )
    return dataset.rename_columns(renames)


def _load_raw(path_or_repo: str | os.PathLike, split: str | None, **load_kwargs: Any) -> datasets.Dataset:
    path = Path(path_or_repo)
    if path.is_file():
        raise ValueError(
            f"`path_or_repo` ({path}) is a file; give the folder that holds it and {' or '.join(METADATA_FILES)}."
        )
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir():
        if split not in (None, "train"):
            raise ValueError(
                f"`split`={split!r} does not apply to a folder with a metadata file: one folder is one split "
                "('train'); load each split's folder on its own."
            )
        return _load_metadata(path, **load_kwargs)
    else:
        loaded = datasets.load_dataset(str(path_or_repo), split=split, **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split is not None:
        if split not in loaded:
            raise ValueError(f"`split`={split!r} is not in the dataset; available splits: {sorted(loaded)}.")
        return loaded[split]
    if len(loaded) != 1:
        raise ValueError(f"The dataset has the splits {sorted(loaded)}; choose one with `split`.")
    return next(iter(loaded.values()))


def load_referring_dataset(
    path_or_repo: str | os.PathLike,
    image_column: str = "image",
    text_column: str = "text",
    mask_column: str = "mask",
    mask_format: str = "auto",
    split: str | None = None,
    match_label_column: str | None = None,
    num_proc: int | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """
    Load referring-segmentation data (one image, one text, one mask per row) with the canonical columns.

    Sources:
    - **a local folder** in the metadata layout of `imagefolder`: images anywhere below it, and a `metadata.jsonl`
      (or `metadata.csv` / `metadata.parquet`) with one row per example. `file_name` (the image's path relative to
      the folder) gives the `image` column, every `<name>_file_name` gives a `<name>` column of file names, other
      fields keep their names; the folder is one split::

          my_data/images/0001.jpg
          my_data/masks/0001.png
          my_data/metadata.jsonl:
            {"file_name": "images/0001.jpg", "text": "the dog on the left", "mask_file_name": "masks/0001.png"}
            {"file_name": "images/0002.jpg", "text": "a red car", "mask": {"size": [480, 640], "counts": [...]}}
            {"file_name": "images/0003.jpg", "text": "the cup", "mask": [[10, 10, 50, 10, 30, 40]]}

      (in a CSV, an RLE or a polygon is a JSON string). A folder written by `Dataset.save_to_disk` also loads;
    - **anything else** goes to `datasets.load_dataset(path_or_repo, split=split, **load_kwargs)`, e.g. a Hub id.

    Masks (`mask_format`, `"auto"` detects it per row): `"png"`, an image (any mode; non-zero pixels are the
    object, see [`mask_to_bool`]) or a file name relative to the folder; `"rle"`, a COCO RLE
    `{"size": [H, W], "counts": [...]}` (column-major, uncompressed) or with compressed string counts, as
    pycocotools writes them; `"polygon"`, COCO polygons `[[x1, y1, x2, y2, ...], ...]` in image pixels, filled with
    PIL. An empty mask is allowed (a text whose object is absent).

    Args:
        path_or_repo (`str` or `os.PathLike`): the folder, or a Hub dataset id.
        image_column, text_column, mask_column (`str`): source column names (defaults `image`, `text`, `mask`).
        mask_format (`str`, defaults to `"auto"`): one of `"auto"`, `"png"`, `"rle"`, `"polygon"`.
        split (`str`, *optional*): the split to load; needed when the source has several.
        match_label_column (`str`, *optional*): a 0/1 column saying whether the text matches the image; without it,
            `match_label` is 1 for a non-empty mask and 0 for an empty one.
        num_proc (`int`, *optional*): processes for the conversion (`Dataset.map`).
        load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`, `revision`, `token`).

    Returns:
        `datasets.Dataset` with exactly the columns `image` (`Image`, the source bytes or file, not re-encoded),
        `text` (`str`), `mask` (`Image`, mode "L", 0 / 255) and `match_label` (`int64`).

    Raises:
        `ValueError`: a configured column is missing (the message lists the available ones), an unknown
        `mask_format`, a mask whose size is not its image's, an undecodable mask, an empty text, a bad match label.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"`mask_format` must be one of {MASK_FORMATS}, got {mask_format!r}.")
    dataset = _load_raw(path_or_repo, split, **load_kwargs)
    columns = {"image": image_column, "text": text_column, "mask": mask_column}
    arguments = {"image": "image_column", "text": "text_column", "mask": "mask_column"}
    if match_label_column is not None:
        columns["match_label"] = match_label_column
        arguments["match_label"] = "match_label_column"
    if len(dataset) == 0:
        raise ValueError(f"The dataset {path_or_repo} holds no examples (split {split or 'train'!r} is empty).")
    root = Path(path_or_repo).resolve() if Path(path_or_repo).is_dir() else None
    for role, column in columns.items():
        if column not in dataset.column_names:
            hint = "" if root is None else " (in a folder, `file_name` becomes `image`, `<name>_file_name` `<name>`)"
            raise ValueError(
                f"`{arguments[role]}`={column!r} is not a column of the dataset; available columns: "
                f"{dataset.column_names}{hint}."
            )
    if isinstance(dataset.features[image_column], datasets.Image):
        # Undecoded images keep their original bytes or file (no lossy JPEG re-encoding); only headers are read.
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset.map(
        _to_canonical,
        with_indices=True,
        fn_kwargs={
            "columns": columns,
            "mask_format": mask_format,
            "match_label_column": match_label_column,
            "root": root,
        },
        remove_columns=dataset.column_names,
        features=REFERRING_FEATURES,
        num_proc=num_proc,
        desc="Referring masks",
    )


__all__ = ["MASK_FORMATS", "METADATA_FILES", "REFERRING_FEATURES", "check_metadata_file", "load_referring_dataset"]
