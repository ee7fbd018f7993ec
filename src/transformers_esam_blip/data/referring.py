"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions: one region with several sentences → one example per sentence."""

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from .coco import file_signature, read_coco_instances
from .features import REFERRING_FEATURES
from .masks import bool_to_mask_image

# Keys of a sentence object in the `refer` layout, in order of preference: the cleaned text, then the raw one.
SENTENCE_KEYS = ("sent", "raw")
REFS_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
# What the `refer` toolkit names the COCO file beside its refs files.
INSTANCES_FILE = "instances.json"


def sentence_texts(value: Any, name: str) -> list[str]:
    """
    The texts of one region: a string is one text; a list holds strings or `refer` sentence objects
    (`{"sent": ..., "raw": ..., "tokens": [...]}`; `sent` is read, else `raw`).

    Raises:
        `ValueError`: an empty list, an empty text, or an item that is neither a string nor such an object.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"The {name} must be a non-empty string or a non-empty list of sentences, got {value!r:.80}.")
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = next((item[key] for key in SENTENCE_KEYS if isinstance(item.get(key), str)), item)
        if not isinstance(item, str) or not item.strip():
            where = name if isinstance(value, str) else f"{name}[{i}]"
            raise ValueError(
                f"The {where} must be a non-empty string or a sentence object with a {' or '.join(SENTENCE_KEYS)!r} "
                f"string, got {item!r:.80}."
            )
        texts.append(item)
    return texts


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads only lists, dicts, strings and numbers: a refs file never needs a class, so none is imported or run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"the refs file holds a {module}.{name} object; only plain lists, dicts, strings and numbers are read"
        )


def read_refs(refs_file: str | os.PathLike) -> list[dict[str, Any]]:
    """
    The referring expressions of a `refer` refs file: `refs(unc).p` / `refs(google).p` (a pickle of plain data,
    read without importing anything) or the same list as JSON. Each ref has `ref_id`, `ann_id` (the COCO annotation
    of the region), `image_id`, `split` and `sentences`.

    Raises:
        `ValueError`: the file is missing or unreadable, or not a list of refs with those fields.
    """
    path = Path(refs_file)
    if not path.is_file():
        raise ValueError(f"`refs_file` {path} does not exist or is not a file.")
    try:
        with path.open("rb") as handle:
            if path.suffix in REFS_PICKLE_SUFFIXES:
                refs = _PlainDataUnpickler(handle, encoding="utf-8").load()
            else:
                refs = json.load(handle)
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        kind = "pickle" if path.suffix in REFS_PICKLE_SUFFIXES else "JSON"
        raise ValueError(f"{path} is not a readable refs {kind} file ({error}).") from None
    if not isinstance(refs, list) or not refs:
        raise ValueError(f"{path} must hold a non-empty list of refs, got {type(refs).__name__}.")
    for i, ref in enumerate(refs):
        missing = [key for key in ("ann_id", "image_id", "sentences") if not isinstance(ref, dict) or key not in ref]
        if missing:
            raise ValueError(f"{path}: ref #{i} lacks {missing}; a ref has 'ann_id', 'image_id', 'split', 'sentences'.")
    return refs


def _select_split(refs: list[dict[str, Any]], split: str | None, path: Path) -> list[dict[str, Any]]:
    splits = sorted({str(ref.get("split")) for ref in refs})
    if split is None:
        if len(splits) > 1:
            raise ValueError(f"{path} holds the splits {splits}; choose one with `split`.")
        return refs
    if split not in splits:
        raise ValueError(f"`split`={split!r} is not in {path}; available splits: {splits}.")
    return [ref for ref in refs if str(ref.get("split")) == split]


def refcoco_examples(
    refs_file: str | os.PathLike,
    instances_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows of [`load_refcoco_dataset`]: ref by ref in file order, one row per sentence."""
    refs_path = Path(refs_file)
    coco = read_coco_instances(instances_file, image_root)
    for ref in _select_split(read_refs(refs_path), split, refs_path):
        annotation = coco.annotations_by_id.get(ref["ann_id"])
        name = f"ref {ref.get('ref_id', '?')} of {refs_path.name}"
        if annotation is None or annotation["image_id"] != ref["image_id"]:
            raise ValueError(
                f"{name} points at ann_id {ref['ann_id']!r} of image {ref['image_id']!r}, which {coco.path} does not "
                "have."
            )
        texts = sentence_texts(ref["sentences"], f"sentences of {name}")
        mask = coco.mask(annotation)
        image = coco.images_by_id[annotation["image_id"]]
        picture = {"path": str(coco.image_path(image)), "bytes": None}
        stored = bool_to_mask_image(mask)
        for text in texts:
            yield {"image": picture, "text": text, "mask": stored, "match_label": int(mask.any())}


def load_refcoco_dataset(
    refs_file: str | os.PathLike,
    instances_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    RefCOCO, RefCOCO+ or RefCOCOg in the `refer` layout (a refs file and the COCO `instances.json` of its regions) as
    referring-segmentation data: every sentence of a region is one row with the region's mask.

    Args:
        refs_file (`str` or `os.PathLike`): `refs(unc).p`, `refs(google).p`, ... or the same list as JSON.
        instances_file (`str` or `os.PathLike`, *optional*): the COCO file with the regions' annotations and the
            images; defaults to `instances.json` beside `refs_file`.
        image_root (`str` or `os.PathLike`, *optional*): the folder of the images (e.g. COCO's `train2014/`);
            defaults to the instances file's folder.
        split (`str`, *optional*): `train`, `val`, `testA`, ... (needed when the file holds several).
        streaming (`bool`, defaults to `False`): return an `IterableDataset`.
        cache_dir (`str`, *optional*): where `datasets` writes the Arrow files (not streaming).

    Returns:
        `datasets.Dataset` (or `IterableDataset`) with the columns of `REFERRING_FEATURES`.

    Raises:
        `ValueError`: see [`read_refs`] and [`read_coco_instances`]; a ref whose `ann_id` is not in the instances
            file; an unknown `split`; a region without sentences.
    """
    refs_path = Path(refs_file)
    instances = refs_path.parent / INSTANCES_FILE if instances_file is None else Path(instances_file)
    if not instances.is_file():
        raise ValueError(
            f"`instances_file` {instances} does not exist; the `refer` layout keeps {INSTANCES_FILE} beside the refs "
            "files, or pass `instances_file`."
        )
    # Checked now: inside the generator an error would reach the caller wrapped by `datasets`.
    _select_split(read_refs(refs_path), split, refs_path)
    read_coco_instances(instances, image_root)
    gen_kwargs = {
        "refs_file": str(refs_path),
        "instances_file": str(instances),
        "image_root": None if image_root is None else str(image_root),
        "split": split,
    }
    if streaming:
        return datasets.IterableDataset.from_generator(
            refcoco_examples, features=REFERRING_FEATURES, gen_kwargs=gen_kwargs
        )
    return datasets.Dataset.from_generator(
        _examples_of_version,
        features=REFERRING_FEATURES,
        gen_kwargs={**gen_kwargs, "signatures": (file_signature(refs_path), file_signature(instances))},
        cache_dir=cache_dir,
    )


def _examples_of_version(signatures: tuple, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """[`refcoco_examples`] with the files' signatures among the arguments, so edited files are read again."""
    del signatures
    yield from refcoco_examples(**kwargs)


__all__ = [
    "INSTANCES_FILE",
    "REFS_PICKLE_SUFFIXES",
    "SENTENCE_KEYS",
    "load_refcoco_dataset",
    "read_refs",
    "refcoco_examples",
    "sentence_texts",
]
