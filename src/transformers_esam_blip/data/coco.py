"""COCO instances files: read and check one, decode its masks with pycocotools, turn its objects into referring rows."""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image

from .features import REFERRING_FEATURES
from .masks import bool_to_mask_image, check_segmentation, segmentation_to_mask


@dataclass(frozen=True)
class CocoInstances:
    """
    A checked COCO instances file.

    Attributes:
        path (`Path`): the annotation file.
        image_root (`Path`): the folder the images' `file_name`s are relative to.
        images (`list[dict]`): the file's images in file order, each with `id`, `file_name`, `height` and `width`.
        categories (`dict[int, str]`): category id → name, in file order.
        annotations (`dict[int, list[dict]]`): image id → its annotations, in file order (every image has a list).
        annotations_by_id (`dict[int, dict]`): annotation id → annotation, for annotations that have an `id`.
        images_by_id (`dict[int, dict]`): image id → entry of `images`.
    """

    path: Path
    image_root: Path
    images: list[dict[str, Any]]
    categories: dict[int, str]
    annotations: dict[int, list[dict[str, Any]]]
    annotations_by_id: dict[int, dict[str, Any]]
    images_by_id: dict[int, dict[str, Any]]

    def image_path(self, image: dict[str, Any]) -> Path:
        """The file of an entry of `images`."""
        return self.image_root / image["file_name"]

    def mask(self, annotation: dict[str, Any]) -> np.ndarray:
        """An annotation's `segmentation` as an `(H, W)` bool mask of its image (pycocotools)."""
        image = self.images_by_id[annotation["image_id"]]
        name = f"segmentation of annotation {annotation.get('id', '?')} in {self.path.name}"
        return segmentation_to_mask(annotation["segmentation"], image["height"], image["width"], name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco_instances(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None, check_files: bool = True
) -> CocoInstances:
    """
    Read a COCO instances file (`{"images": [...], "annotations": [...], "categories": [...]}`) and check it before any
    mask is decoded, so that a broken file fails at once with the annotation or image that is wrong.

    Args:
        annotation_file (`str` or `os.PathLike`): the JSON file.
        image_root (`str` or `os.PathLike`, *optional*): the folder that the images' `file_name`s are relative to;
            defaults to the annotation file's folder.
        check_files (`bool`, defaults to `True`): check that every image file exists. An image without `height` /
            `width` gets them from its file's header either way.

    Returns:
        [`CocoInstances`].

    Raises:
        `ValueError`: the file is missing, not JSON, or not a COCO instances file; an image lacks an int `id` or a
            `file_name`, or its file is missing; two images share an id; an annotation points at an image or a
            category the file does not have, or has no `segmentation`; a polygon has an odd number of coordinates or
            fewer than 3 points; an RLE's `size` is not its image's `[height, width]`.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise ValueError(f"`annotation_file` {path} does not exist or is not a file.")
    root = path.parent if image_root is None else Path(image_root)
    if not root.is_dir():
        raise ValueError(f"`image_root` {root} is not a folder.")
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a JSON file ({error}).") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} is not a COCO instances file: expected a JSON object with 'images' and 'annotations' lists "
            f"(and 'categories'), got {found}."
        )
    categories: dict[int, str] = {}
    for i, category in enumerate(data.get("categories") or []):
        if (
            not isinstance(category, dict)
            or not _is_int(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            raise ValueError(
                f"{path}: categories[{i}] must be an object with an int 'id' and a 'name', got {category!r:.80}."
            )
        categories[category["id"]] = category["name"]

    images: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise ValueError(
                f"{path}: images[{i}] must be an object with an int 'id' and a 'file_name', got {image!r:.80}."
            )
        if image["id"] in seen:
            raise ValueError(f"{path}: images[{i}] repeats the image id {image['id']}; image ids must be unique.")
        seen.add(image["id"])
        file = root / image["file_name"]
        if (check_files or not _is_int(image.get("height")) or not _is_int(image.get("width"))) and not file.is_file():
            raise ValueError(
                f"{path}: image {image['id']} names the file {image['file_name']!r}, which does not exist under "
                f"`image_root` {root}."
            )
        entry = {
            "id": image["id"],
            "file_name": image["file_name"],
            "height": image.get("height"),
            "width": image.get("width"),
        }
        if not _is_int(entry["height"]) or not _is_int(entry["width"]):
            with PIL.Image.open(file) as opened:
                entry["width"], entry["height"] = opened.size
        images.append(entry)

    by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in images}
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    by_id: dict[int, dict[str, Any]] = {}
    for i, annotation in enumerate(data["annotations"]):
        label = f"annotation {annotation.get('id', f'#{i}')}" if isinstance(annotation, dict) else f"annotations[{i}]"
        if not isinstance(annotation, dict):
            raise ValueError(f"{path}: {label} must be an object, got {annotation!r:.80}.")
        image_id = annotation.get("image_id")
        if image_id not in by_image:
            raise ValueError(
                f"{path}: {label} points at image_id {image_id!r}, which is not among the file's {len(images)} images."
            )
        if categories and annotation.get("category_id") not in categories:
            raise ValueError(
                f"{path}: {label} has category_id {annotation.get('category_id')!r}, which is not among the file's "
                f"categories {sorted(categories)}."
            )
        if "segmentation" not in annotation:
            raise ValueError(f"{path}: {label} has no 'segmentation' (polygons or an RLE).")
        check_segmentation(annotation["segmentation"], *sizes[image_id], name=f"segmentation of {label} in {path.name}")
        by_image[image_id].append(annotation)
        if _is_int(annotation.get("id")):
            by_id[annotation["id"]] = annotation
    return CocoInstances(path, root, images, categories, by_image, by_id, {image["id"]: image for image in images})


def coco_referring_examples(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    merge_instances: bool = True,
    include_crowd: bool = True,
) -> Iterator[dict[str, Any]]:
    """
    Yield the referring rows of a COCO instances file (see [`load_coco_dataset`]), image by image in file order.
    """
    coco = read_coco_instances(annotation_file, image_root)
    for image in coco.images:
        picture = {"path": str(coco.image_path(image)), "bytes": None}
        groups: dict[Any, list[dict[str, Any]]] = {}
        for annotation in coco.annotations[image["id"]]:
            if not include_crowd and annotation.get("iscrowd"):
                continue
            key = annotation.get("category_id") if merge_instances else id(annotation)
            groups.setdefault(key, []).append(annotation)
        for annotations in groups.values():
            mask = np.zeros((image["height"], image["width"]), dtype=bool)
            for annotation in annotations:
                mask |= coco.mask(annotation)
            category = annotations[0].get("category_id")
            yield {
                "image": picture,
                "text": coco.categories.get(category, str(category)),
                "mask": bool_to_mask_image(mask),
                "match_label": int(mask.any()),
            }


def file_signature(path: Path) -> tuple[str, int, int]:
    """What the `datasets` cache of a generated dataset keys on besides the settings: the file and its version."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def load_coco_dataset(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    merge_instances: bool = True,
    include_crowd: bool = True,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    A COCO instances file as referring-segmentation data: the category name is the text, the object's mask the mask.

    The file is checked first ([`read_coco_instances`]): annotations that point at missing images or categories,
    polygons with an odd number of coordinates and RLEs whose size is not their image's are refused with the
    annotation's id. Masks are decoded by `pycocotools` (polygons, compressed RLE, and the uncompressed RLE of crowd
    annotations).

    Args:
        annotation_file (`str` or `os.PathLike`): e.g. `annotations/instances_val2017.json`.
        image_root (`str` or `os.PathLike`, *optional*): the folder of the images (e.g. `val2017/`); defaults to the
            annotation file's folder.
        merge_instances (`bool`, defaults to `True`): one row per (image, category) whose mask is the union of the
            category's instances ("person" → every person); `False` gives one row per annotation.
        include_crowd (`bool`, defaults to `True`): keep `iscrowd` annotations.
        streaming (`bool`, defaults to `False`): return an `IterableDataset` that decodes masks as it is read.
        cache_dir (`str`, *optional*): where `datasets` writes the Arrow files (not streaming).

    Returns:
        `datasets.Dataset` (or `IterableDataset`) with the columns of `REFERRING_FEATURES`: `image` (the file, not
        re-encoded), `text`, `mask` (mode "L", 0 / 255) and `match_label` (1 unless the mask is empty).
    """
    path = Path(annotation_file)
    read_coco_instances(path, image_root)  # errors now, not wrapped in a `datasets` generation error
    gen_kwargs = {
        "annotation_file": str(path),
        "image_root": None if image_root is None else str(image_root),
        "merge_instances": merge_instances,
        "include_crowd": include_crowd,
    }
    if streaming:
        return datasets.IterableDataset.from_generator(
            coco_referring_examples, features=REFERRING_FEATURES, gen_kwargs=gen_kwargs
        )
    return datasets.Dataset.from_generator(
        _examples_of_version,
        features=REFERRING_FEATURES,
        gen_kwargs={**gen_kwargs, "signature": file_signature(path)},
        cache_dir=cache_dir,
    )


def _examples_of_version(signature: tuple[str, int, int], **kwargs: Any) -> Iterator[dict[str, Any]]:
    """[`coco_referring_examples`] with the file's signature among the arguments, so an edited file is read again."""
    del signature
    yield from coco_referring_examples(**kwargs)


__all__ = ["CocoInstances", "coco_referring_examples", "load_coco_dataset", "read_coco_instances"]
