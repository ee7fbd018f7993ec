"""The inputs `annotate` reads, as [`AnnotationItem`]s in input order: a folder of images, a COCO file, a dataset."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import PIL.Image

from .commands import looks_like_hub_id
from .data.coco import read_coco_instances
from .data.referring import sentence_texts
from .data.user_data import find_referring_source, image_file_value, load_raw_dataset, open_image_value

IMAGE_SUFFIXES = frozenset(suffix.lower() for suffix in PIL.Image.registered_extensions())


@dataclass
class AnnotationItem:
    """
    One input image and its prompts.

    Attributes:
        index (`int`): position in the input (what shards are cut by).
        image_id (`int`): the output's image id: `index + 1`, or the COCO file's id.
        file_name (`str`): the image's path relative to the input folder (COCO: its `file_name`); `""` for an
            in-memory image.
        load (`Callable[[], PIL.Image.Image]`): reads the image.
        texts (`list[str]`, *optional*): the text prompts of this image.
        boxes (`list[dict]`, *optional*): the box prompts, each `{"box": [x1, y1, x2, y2], "category_id", "text",
            "source_annotation_id"}`.
    """

    index: int
    image_id: int
    file_name: str
    load: Callable[[], PIL.Image.Image]
    texts: list[str] | None = None
    boxes: list[dict[str, Any]] | None = None


class AnnotationSource:
    """The input as [`AnnotationItem`]s in input order: by index ranges when its length is known, else as a stream."""

    def __init__(
        self,
        description: str,
        length: int | None,
        get: Callable[[range], list[AnnotationItem]] | None = None,
        stream: Callable[[], Iterator[AnnotationItem]] | None = None,
        categories: list[dict[str, Any]] | None = None,
    ) -> None:
        self.description = description
        self.length = length
        self.get = get
        self.stream = stream
        self.categories = categories


def _rgb_file(path: Path, name: str) -> Callable[[], PIL.Image.Image]:
    def load() -> PIL.Image.Image:
        try:
            with PIL.Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(f"The image {name} ({path}) cannot be read: {error}") from None

    return load


def _image_folder_source(folder: Path, texts: list[str] | None) -> AnnotationSource:
    files = sorted(
        (path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    if not files:
        raise ValueError(
            f"`source` {folder} holds no images (files ending in {', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...), no "
            "metadata file and no parquet or arrow files."
        )

    def get(indices: range) -> list[AnnotationItem]:
        items = []
        for index in indices:
            name = files[index].relative_to(folder).as_posix()
            items.append(AnnotationItem(index, index + 1, name, _rgb_file(files[index], name), texts))
        return items

    return AnnotationSource(str(folder.resolve()), len(files), get=get)


def _coco_source(path: Path, image_root: Path | None, texts: list[str] | None, boxes: bool) -> AnnotationSource:
    coco = read_coco_instances(path, image_root)
    categories = [{"id": key, "name": name} for key, name in coco.categories.items()]
    if texts is None and not boxes:  # prompted by the category names, which keep the file's category ids
        if not categories:
            raise ValueError(f"{path} has no categories: give the text prompts with `texts`.")
        prompt_texts = list(dict.fromkeys(coco.categories.values()))
    else:
        prompt_texts = texts

    def box_prompts(image: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = []
        for annotation in coco.annotations[image["id"]]:
            bbox = annotation.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"{path}: annotation {annotation.get('id', '?')} has no 'bbox' [x, y, w, h].")
            x, y, w, h = (float(v) for v in bbox)
            # COCO boxes are float and may reach a hair past the border; the processor wants them inside the image.
            box = [max(0.0, x), max(0.0, y), min(float(image["width"]), x + w), min(float(image["height"]), y + h)]
            category = annotation.get("category_id")
            prompts.append(
                {
                    "box": box,
                    "category_id": category,
                    "text": coco.categories.get(category),
                    "source_annotation_id": annotation.get("id"),
                }
            )
        return prompts

    def get(indices: range) -> list[AnnotationItem]:
        items = []
        for index in indices:
            image = coco.images[index]
            load = _rgb_file(coco.image_path(image), image["file_name"])
            item = AnnotationItem(index, image["id"], image["file_name"], load, None if boxes else prompt_texts)
            if boxes:
                item.boxes = box_prompts(image)
            items.append(item)
        return items

    if texts is not None and not boxes:
        categories = [{"id": i + 1, "name": text} for i, text in enumerate(texts)]
    return AnnotationSource(str(path.resolve()), len(coco.images), get=get, categories=categories)


def _dataset_source(
    dataset: datasets.Dataset | datasets.IterableDataset,
    description: str,
    root: Path | None,
    image_column: str,
    text_column: str | None,
    texts: list[str] | None,
) -> AnnotationSource:
    names = dataset.column_names
    if names is None:
        first = next(iter(dataset.take(1)), None)
        names = [] if first is None else list(first)
    for argument, column in (("image_column", image_column), ("text_column", text_column)):
        if column is not None and column not in names:
            raise ValueError(f"`{argument}`={column!r} is not a column of the dataset; available columns: {names}.")
    if dataset.features is not None and isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    def item(index: int, row: dict[str, Any]) -> AnnotationItem:
        value = image_file_value(row[image_column], root, f"image of row {index}")
        path = value.get("path") or ""
        if path and root is not None and Path(path).is_relative_to(root):
            path = Path(path).relative_to(root).as_posix()
        row_texts = texts if text_column is None else sentence_texts(row[text_column], f"text of row {index}")
        return AnnotationItem(index, index + 1, path, lambda: open_image_value(value).convert("RGB"), row_texts)

    if isinstance(dataset, datasets.IterableDataset):
        return AnnotationSource(description, None, stream=lambda: (item(i, row) for i, row in enumerate(dataset)))

    def get(indices: range) -> list[AnnotationItem]:
        batch = dataset[indices.start : indices.stop]
        return [item(index, {key: batch[key][i] for key in batch}) for i, index in enumerate(indices)]

    return AnnotationSource(description, len(dataset), get=get)


def open_annotation_source(
    source: str | os.PathLike | datasets.Dataset | datasets.IterableDataset,
    texts: list[str] | None,
    text_column: str | None,
    boxes: bool,
    image_column: str,
    image_root: str | os.PathLike | None,
    split: str | None,
    streaming: bool,
) -> tuple[AnnotationSource, str]:
    """The input and its kind (`"images"`, `"coco"`, `"dataset"`)."""
    root = None if image_root is None else Path(image_root)
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        fingerprint = getattr(source, "_fingerprint", None) or f"in-memory {type(source).__name__}"
        return _dataset_source(source, fingerprint, root, image_column, text_column, texts), "dataset"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"`source` must be a path, a Hub dataset id or a `datasets` dataset, got {type(source).__name__}."
        )
    path = Path(source)
    kind = None
    if path.is_file():
        kind = find_referring_source(path).kind
        if kind == "refcoco":
            raise ValueError(f"`source` {path} is a RefCOCO refs file; annotate its instances.json (a COCO file).")
    elif path.is_dir():
        try:
            kind = find_referring_source(path).kind
        except ValueError:
            kind = "images"
        kind = kind if kind in ("saved", "table") else "images"
    if kind == "coco":
        if text_column is not None:
            raise ValueError("`text_column` reads a dataset column; a COCO file has none (give `texts`).")
        return _coco_source(path, root, texts, boxes), "coco"
    if boxes:
        raise ValueError(f"`boxes` prompts with the boxes of a COCO file; `source` {source} is not one.")
    if kind == "images":
        if text_column is not None:
            raise ValueError(f"`text_column` reads a dataset column; `source` {path} is a folder of images.")
        if split is not None:
            raise ValueError(f"`split` selects a dataset split; `source` {path} is a folder of images.")
        return _image_folder_source(path, texts), "images"
    if kind is None and not looks_like_hub_id(str(source)):
        raise ValueError(f"`source` {source} does not exist (give a folder, a file, or a Hub dataset id).")
    dataset, folder = load_raw_dataset(source, split, streaming=streaming)
    description = str(path.resolve()) if path.exists() else str(source)
    return _dataset_source(dataset, description, root or folder, image_column, text_column, texts), "dataset"


__all__ = ["IMAGE_SUFFIXES", "AnnotationItem", "AnnotationSource", "open_annotation_source"]
