"""Load user referring-segmentation data (a folder, a file, or a Hub dataset) into the canonical columns."""

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from datasets.exceptions import DatasetsError

from .coco import load_coco_dataset
from .features import REFERRING_FEATURES
from .masks import bool_to_mask_image, decode_rle, mask_to_bool, polygons_to_mask
from .referring import INSTANCES_FILE, REFS_PICKLE_SUFFIXES, load_refcoco_dataset, sentence_texts

MASK_FORMATS = ("auto", "png", "rle", "polygon")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# `datasets` builders of the table files a folder (or a single file) may hold, by suffix.
TABLE_BUILDERS = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
# Column names tried, in order, for a column the caller does not name: the package's own names, then those of
# RefCOCO-style data (several sentences per region, COCO segmentations).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "text": ("text", "sentences", "sentence", "captions", "caption", "expressions", "expression"),
    "mask": ("mask", "segmentation"),
}
# JSON files of a `save_to_disk` folder or of `datasets`' own metadata, never a COCO file.
_DATASETS_JSON = ("state.json", "dataset_dict.json", "dataset_info.json")


@dataclass(frozen=True)
class ReferringSource:
    """
    What a local path holds, as [`find_referring_source`] reads it.

    Attributes:
        kind (`str`): `"saved"` (a `save_to_disk` folder), `"table"` (metadata, parquet, arrow, JSON lines or CSV
            files), `"coco"` (a COCO instances file) or `"refcoco"` (a `refer` refs file and its `instances.json`).
        files (`tuple[Path, ...]`): the files that describe the data (the folder itself for `"saved"`).
        root (`Path`): the folder that relative file names in the data are resolved against.
    """

    kind: str
    files: tuple[Path, ...]
    root: Path


def image_file_value(value: Any, root: Path | None, name: str) -> dict[str, Any]:
    """An image reference as a `datasets.Image(decode=False)` value; a file name is relative to `root`."""
    if isinstance(value, str):
        path = Path(value) if root is None else root / value
        if not path.is_file():
            raise ValueError(f"The {name} names the file {value!r}, which does not exist (looked at {path}).")
        return {"path": str(path), "bytes": None}
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        return value
    if isinstance(value, PIL.Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"path": None, "bytes": buffer.getvalue()}
    raise ValueError(f"The {name} is missing or not an image (got {value!r:.80}).")


def open_image_value(value: dict[str, Any]) -> PIL.Image.Image:
    """A lazily opened (header only) PIL image from an [`image_file_value`]."""
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
            with open_image_value(image_file_value(value, root, name)) as image:
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
    batch: dict[str, list[Any]],
    indices: list[int],
    columns: dict[str, str],
    mask_format: str,
    match_label_column: str | None,
    root: Path | None,
) -> dict[str, list[Any]]:
    """Rows of the source → canonical rows; a row with several texts (RefCOCO-style) gives one row per text."""
    out: dict[str, list[Any]] = {"image": [], "text": [], "mask": [], "match_label": []}
    for position, row in enumerate(indices):
        image = image_file_value(batch[columns["image"]][position], root, f"image of row {row}")
        with open_image_value(image) as opened:
            width, height = opened.size
        texts = sentence_texts(batch[columns["text"]][position], f"text of row {row}")
        mask = _decode_mask(batch[columns["mask"]][position], mask_format, (height, width), root, row)
        if match_label_column is None:
            match_label = int(mask.any())
        else:
            match_label = batch[match_label_column][position]
            if match_label not in (0, 1):
                raise ValueError(f"The match label of row {row} must be 0 or 1, got {match_label!r}.")
        stored = bool_to_mask_image(mask)
        for text in texts:
            out["image"].append(image)
            out["text"].append(text)
            out["mask"].append(stored)
            out["match_label"].append(int(match_label))
    return out


def _files_with_suffix(folder: Path, suffix: str) -> list[Path]:
    return sorted(path for path in folder.rglob(f"*{suffix}") if path.is_file() and not path.name.startswith("."))


def _layouts_hint(folder: Path) -> str:
    return (
        f"The folder {folder} has no {' / '.join(METADATA_FILES)}, no COCO instances file, no RefCOCO refs file and "
        "no parquet or arrow files. Expected layout: images anywhere under the folder and a metadata.jsonl with one "
        'line per example, e.g. {"file_name": "images/1.png", "text": "the red circle", "mask_file_name": '
        '"masks/1.png"} (or a "mask" field holding a COCO RLE or polygons); see `load_referring_dataset`.'
    )


def find_referring_source(path: str | os.PathLike) -> ReferringSource:
    """
    What a local file or folder holds, without reading the data:

    - a folder written by `Dataset.save_to_disk` (`state.json` or `dataset_dict.json`) → `"saved"`;
    - a folder with `metadata.jsonl` / `metadata.csv` / `metadata.parquet` → `"table"` (that file);
    - a folder with a `refer` refs file (`refs(unc).p`, `refs(google).p`, or a `refs*.json`) and `instances.json`
      → `"refcoco"`;
    - a folder with exactly one other `*.json` at its top → `"coco"` (a COCO instances file);
    - a folder with `*.parquet` files (any names, any depth), else `*.arrow` files → `"table"` (all of them);
    - a `.json` file: a JSON object → `"coco"`, a list → `"refcoco"` (refs as JSON, `instances.json` beside it);
      a `.p` / `.pkl` file → `"refcoco"`; a `.jsonl`, `.csv`, `.parquet` or `.arrow` file → `"table"`.

    Raises:
        `ValueError`: nothing of the above, or several candidates (e.g. two COCO files, two refs files).
    """
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            with path.open("rb") as handle:
                start = handle.read(4096).lstrip()[:1]
            if start == b"[":
                return ReferringSource("refcoco", (path, path.parent / INSTANCES_FILE), path.parent)
            return ReferringSource("coco", (path,), path.parent)
        if suffix in REFS_PICKLE_SUFFIXES:
            return ReferringSource("refcoco", (path, path.parent / INSTANCES_FILE), path.parent)
        if suffix in TABLE_BUILDERS:
            return ReferringSource("table", (path,), path.parent)
        raise ValueError(
            f"`path_or_repo` {path} is a {suffix or 'suffix-less'} file; give a COCO .json, a RefCOCO refs file, a "
            f".jsonl / .csv / .parquet / .arrow table, or the folder that holds the data."
        )
    if not path.is_dir():
        raise ValueError(f"`path_or_repo` {path} is neither a file nor a folder.")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return ReferringSource("saved", (path,), path)
    metadata = next((path / name for name in METADATA_FILES if (path / name).is_file()), None)
    if metadata is not None:
        return ReferringSource("table", (metadata,), path)
    top_json = sorted(file for file in path.glob("*.json") if file.is_file() and file.name not in _DATASETS_JSON)
    refs = sorted(
        file
        for file in path.glob("refs*")
        if file.is_file() and (file.suffix in REFS_PICKLE_SUFFIXES or file.suffix == ".json")
    )
    if refs and (path / INSTANCES_FILE).is_file():
        if len(refs) > 1:
            raise ValueError(
                f"The folder {path} holds several refs files {[file.name for file in refs]}; give the one to load "
                "as `path_or_repo`."
            )
        return ReferringSource("refcoco", (refs[0], path / INSTANCES_FILE), path)
    if top_json:
        if len(top_json) > 1:
            raise ValueError(
                f"The folder {path} holds several JSON files {[file.name for file in top_json]}; give the COCO "
                "instances file to load as `path_or_repo`."
            )
        return ReferringSource("coco", (top_json[0],), path)
    for suffix in (".parquet", ".arrow"):
        files = _files_with_suffix(path, suffix)
        if files:
            return ReferringSource("table", tuple(files), path)
    raise ValueError(_layouts_hint(path))


def check_metadata_file(folder: str | os.PathLike) -> Path:
    """
    The file that describes a referring-data folder (see [`find_referring_source`]), checked before `datasets`
    reads it: a metadata file must be present and not empty, and a `metadata.jsonl` must hold one JSON object per
    line. Returns its path (the folder itself for a `save_to_disk` folder); raises a `ValueError` naming the file and
    the line otherwise (instead of a bare `StopIteration` or a `DatasetGenerationError` from `datasets`).
    """
    source = find_referring_source(folder)
    metadata = source.files[0]
    if source.kind != "table" or metadata.name not in METADATA_FILES:
        return metadata
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


def _load_table(
    source: ReferringSource, streaming: bool, **load_kwargs: Any
) -> datasets.Dataset | datasets.IterableDataset:
    """
    The table files of `source` as one dataset, `file_name` renamed `image` and `<name>_file_name` renamed `<name>`
    (file names stay strings, resolved against the folder later). Read directly rather than with `imagefolder`, which
    scans every file of the folder and, in `datasets` 5.2, gives a `mask_file_name` listed before `file_name` the
    image's file.
    """
    if source.files[0].name in METADATA_FILES:
        check_metadata_file(source.root)
    builder = TABLE_BUILDERS[source.files[0].suffix.lower()]
    files = [str(file) for file in source.files]
    try:
        dataset = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **load_kwargs)
    except (DatasetsError, StopIteration) as error:  # `datasets` wraps the parser's error, or finds no rows
        cause = error.__cause__ or error.__context__
        detail = " ".join(str(cause if cause is not None else error).split()) or type(error).__name__
        raise ValueError(f"{source.files[0]} could not be read as a {builder} table: {detail}.") from error
    names = _column_names(dataset)
    renames = {
        column: "image" if column == "file_name" else column.removesuffix("_file_name")
        for column in names
        if column == "file_name" or column.endswith("_file_name")
    }
    clashes = sorted(set(renames.values()) & (set(names) - set(renames)))
    if clashes:
        raise ValueError(
            f"{source.files[0]} has both file-name columns and the columns {clashes} they would be renamed to; rename "
            "one."
        )
    return dataset.rename_columns(renames) if renames else dataset


def _column_names(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    """The columns of a dataset; a streamed one without known features is asked for its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)
    return [] if first is None else list(first)


def _pick_split(
    loaded: datasets.DatasetDict | datasets.IterableDatasetDict | datasets.Dataset | datasets.IterableDataset,
    split: str | None,
) -> datasets.Dataset | datasets.IterableDataset:
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        return loaded
    if split is not None:
        if split not in loaded:
            raise ValueError(f"`split`={split!r} is not in the dataset; available splits: {sorted(loaded)}.")
        return loaded[split]
    if len(loaded) != 1:
        raise ValueError(f"The dataset has the splits {sorted(loaded)}; choose one with `split`.")
    return next(iter(loaded.values()))


def load_raw_dataset(
    path_or_repo: str | os.PathLike,
    split: str | None = None,
    streaming: bool = False,
    **load_kwargs: Any,
) -> tuple[datasets.Dataset | datasets.IterableDataset, Path | None]:
    """
    The rows of a table source as they are stored (no mask decoding): a `save_to_disk` folder, table files (see
    [`find_referring_source`]) or a Hub dataset (`datasets.load_dataset(path_or_repo, split=split, streaming=...,
    **load_kwargs)`).

    Returns:
        `(dataset, root)`: the dataset, and the folder that relative file names in it are resolved against (`None`
        for a Hub dataset).

    Raises:
        `ValueError`: the path is a COCO or RefCOCO source (load those with [`load_referring_dataset`]), an unknown
            split, or a table `datasets` cannot read.
    """
    path = Path(path_or_repo)
    if not path.exists():
        loaded = datasets.load_dataset(str(path_or_repo), split=split, streaming=streaming, **load_kwargs)
        return _pick_split(loaded, split), None
    source = find_referring_source(path)
    if source.kind == "saved":
        loaded = _pick_split(datasets.load_from_disk(str(path)), split)
        return (loaded.to_iterable_dataset() if streaming else loaded), source.root
    if source.kind != "table":
        raise ValueError(f"`path_or_repo` {path} is a {source.kind} source, not a table of rows.")
    if split not in (None, "train"):
        raise ValueError(
            f"`split`={split!r} does not apply to a local table: its files are one split ('train'); load each "
            "split's folder on its own."
        )
    return _load_table(source, streaming, **load_kwargs), source.root


def _resolve_columns(
    names: list[str], given: dict[str, str | None], match_label_column: str | None, in_folder: bool
) -> dict[str, str]:
    """The source column of each canonical role: the one named, else the first alias present."""
    columns = {}
    for role, column in given.items():
        if column is None:
            column = next((alias for alias in COLUMN_ALIASES[role] if alias in names), None)
            if column is None:
                raise ValueError(
                    f"`{role}_column` is not given and the dataset has none of the columns {COLUMN_ALIASES[role]}; "
                    f"available columns: {names}. Name it with `{role}_column`."
                )
        elif column not in names:
            hint = " (in a folder, `file_name` becomes `image`, `<name>_file_name` `<name>`)" if in_folder else ""
            raise ValueError(
                f"`{role}_column`={column!r} is not a column of the dataset; available columns: {names}{hint}."
            )
        columns[role] = column
    if match_label_column is not None and match_label_column not in names:
        raise ValueError(
            f"`match_label_column`={match_label_column!r} is not a column of the dataset; available columns: {names}."
        )
    return columns


def load_referring_dataset(
    path_or_repo: str | os.PathLike,
    image_column: str | None = None,
    text_column: str | None = None,
    mask_column: str | None = None,
    mask_format: str = "auto",
    split: str | None = None,
    match_label_column: str | None = None,
    num_proc: int | None = None,
    image_root: str | os.PathLike | None = None,
    streaming: bool = False,
    merge_instances: bool = True,
    **load_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load referring-segmentation data (one image, one text, one mask per row) with the canonical columns.

    Sources (see [`find_referring_source`] for how a path is read):
    - **a folder in the metadata layout** of `imagefolder`: images anywhere below it, and a `metadata.jsonl` (or
      `metadata.csv` / `metadata.parquet`) with one row per example. `file_name` (the image's path relative to the
      folder) gives the `image` column, every `<name>_file_name` gives a `<name>` column of file names, other fields
      keep their names; the folder is one split::

          my_data/images/0001.jpg
          my_data/masks/0001.png
          my_data/metadata.jsonl:
            {"file_name": "images/0001.jpg", "text": "the dog on the left", "mask_file_name": "masks/0001.png"}
            {"file_name": "images/0002.jpg", "text": "a red car", "mask": {"size": [480, 640], "counts": [...]}}
            {"file_name": "images/0003.jpg", "text": "the cup", "mask": [[10, 10, 50, 10, 30, 40]]}

      (in a CSV, an RLE or a polygon is a JSON string). Parquet or Arrow files under any name (a folder of them, or
      one file) and `.jsonl` / `.csv` files load the same way; so does a folder written by `Dataset.save_to_disk`;
    - **a COCO instances file** (or a folder holding one `.json`): one row per (image, category) with the union of
      the category's instances, the category name as the text (per instance with `merge_instances=False`), see
      [`load_coco_dataset`];
    - **RefCOCO / RefCOCO+ / RefCOCOg** in the `refer` layout (a `refs(unc).p`-style file and `instances.json`, or a
      folder holding them): one row per sentence, see [`load_refcoco_dataset`];
    - **anything else** goes to `datasets.load_dataset(path_or_repo, split=split, **load_kwargs)`, e.g. a Hub id.

    RefCOCO-style rows, one region with several sentences, are exploded: a text value that is a list (of strings, or
    of `refer` sentence objects `{"sent": ..., "raw": ...}`) gives one row per sentence, all with the region's mask.
    Unnamed columns are looked up by [`COLUMN_ALIASES`]: `text` falls back to `sentences`, `captions`, ...; `mask`
    to `segmentation`. A Hub dataset with other names maps them with `image_column`, `text_column`, `mask_column`.

    Masks (`mask_format`, `"auto"` detects it per row): `"png"`, an image (any mode; non-zero pixels are the object,
    see [`mask_to_bool`]) or a file name relative to the folder; `"rle"`, a COCO RLE `{"size": [H, W], "counts":
    [...]}` (column-major, uncompressed) or with compressed string counts, as pycocotools writes them; `"polygon"`,
    COCO polygons `[[x1, y1, x2, y2, ...], ...]` in image pixels. RLEs and polygons are decoded by `pycocotools`.
    An empty mask is allowed (a text whose object is absent).

    Args:
        path_or_repo (`str` or `os.PathLike`): a folder, a file, or a Hub dataset id.
        image_column, text_column, mask_column (`str`, *optional*): source column names; by default the first of
            [`COLUMN_ALIASES`] present (`image`; `text`, `sentences`, ...; `mask`, `segmentation`).
        mask_format (`str`, defaults to `"auto"`): one of `"auto"`, `"png"`, `"rle"`, `"polygon"`.
        split (`str`, *optional*): the split to load; needed when the source has several (RefCOCO: `train`, `val`,
            `testA`, ...).
        match_label_column (`str`, *optional*): a 0/1 column saying whether the text matches the image; without it,
            `match_label` is 1 for a non-empty mask and 0 for an empty one.
        num_proc (`int`, *optional*): processes for the conversion (`Dataset.map`; not with `streaming`).
        image_root (`str` or `os.PathLike`, *optional*): the folder relative image file names are resolved against;
            defaults to the folder of the data (COCO, RefCOCO: of the instances file).
        streaming (`bool`, defaults to `False`): return a `datasets.IterableDataset` that converts rows as they are
            read (Hub datasets then download nothing up front).
        merge_instances (`bool`, defaults to `True`): COCO instances only, see [`load_coco_dataset`].
        load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`, `revision`, `token`); COCO and RefCOCO
            sources take only `cache_dir`.

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset`) with exactly the columns `image` (`Image`, the source bytes
        or file, not re-encoded), `text` (`str`), `mask` (`Image`, mode "L", 0 / 255) and `match_label` (`int64`).

    Raises:
        `ValueError`: a configured column is missing (the message lists the available ones), an unknown
        `mask_format`, a mask whose size is not its image's, an undecodable mask, an empty text, a bad match label,
        and the COCO and RefCOCO errors of [`read_coco_instances`] and [`load_refcoco_dataset`].
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"`mask_format` must be one of {MASK_FORMATS}, got {mask_format!r}.")
    if streaming and num_proc is not None:
        raise ValueError("`num_proc` converts a whole dataset up front; it does not apply with `streaming=True`.")
    path = Path(path_or_repo)
    source = find_referring_source(path) if path.exists() else None
    if source is not None and source.kind in ("coco", "refcoco"):
        given = {"image_column": image_column, "text_column": text_column, "mask_column": mask_column}
        misplaced = [name for name, value in given.items() if value is not None]
        misplaced += ["match_label_column"] if match_label_column is not None else []
        misplaced += [f"load_kwargs[{key!r}]" for key in load_kwargs if key != "cache_dir"]
        if misplaced:
            raise ValueError(f"{misplaced} apply to tables of rows; {path} is a {source.kind} source.")
        cache_dir = load_kwargs.get("cache_dir")
        if source.kind == "coco":
            if split is not None:
                raise ValueError(f"`split`={split!r} does not apply to a COCO file: the file is one split.")
            return load_coco_dataset(
                source.files[0], image_root, merge_instances, streaming=streaming, cache_dir=cache_dir
            )
        return load_refcoco_dataset(*source.files, image_root, split, streaming=streaming, cache_dir=cache_dir)
    dataset, root = load_raw_dataset(path_or_repo, split, streaming=streaming, **load_kwargs)
    if image_root is not None:
        root = Path(image_root)
    names = _column_names(dataset)
    if not streaming and len(dataset) == 0:
        raise ValueError(f"The dataset {path_or_repo} holds no examples (split {split or 'train'!r} is empty).")
    columns = _resolve_columns(
        names, {"image": image_column, "text": text_column, "mask": mask_column}, match_label_column, root is not None
    )
    features = dataset.features
    if features is not None and isinstance(features.get(columns["image"]), datasets.Image):
        # Undecoded images keep their original bytes or file (no lossy JPEG re-encoding); only headers are read.
        dataset = dataset.cast_column(columns["image"], datasets.Image(decode=False))
    map_kwargs = {"num_proc": num_proc, "desc": "Referring masks"} if not streaming else {}
    return dataset.map(
        _to_canonical,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "columns": columns,
            "mask_format": mask_format,
            "match_label_column": match_label_column,
            "root": root,
        },
        remove_columns=names,
        features=REFERRING_FEATURES,
        **map_kwargs,
    )


__all__ = [
    "COLUMN_ALIASES",
    "MASK_FORMATS",
    "METADATA_FILES",
    "REFERRING_FEATURES",
    "TABLE_BUILDERS",
    "ReferringSource",
    "check_metadata_file",
    "find_referring_source",
    "image_file_value",
    "load_raw_dataset",
    "load_referring_dataset",
    "open_image_value",
]
