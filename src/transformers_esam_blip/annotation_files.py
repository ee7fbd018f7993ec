"""The files `annotate` writes: COCO RLE of masks, shard files written atomically, the manifest, the merged output."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pycocotools.mask as mask_utils
import torch

OUTPUT_FORMATS = ("coco", "parquet")
OUTPUT_FILES = {"coco": "annotations.json", "parquet": "annotations.parquet"}
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
# Bumped when the shard files change meaning, so that an old folder is not resumed with new code.
MANIFEST_VERSION = 1
EVERYTHING_CATEGORY = "object"
# One row per annotation in the parquet output: the COCO annotation's fields and its image's.
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("category_id", pa.int64()),
        ("text", pa.string()),
        ("score", pa.float64()),
        ("match_probability", pa.float64()),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.float64(), 4)),
        ("segmentation", pa.struct([("size", pa.list_(pa.int64(), 2)), ("counts", pa.string())])),
        ("source_annotation_id", pa.int64()),
    ]
)


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """`[N, H, W]` bool masks → COCO `segmentation` (compressed RLE, `str` counts), `area` and `bbox` (x, y, w, h)."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_utils.encode(array)
    areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
    return [
        {
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(area),
            "bbox": [float(v) for v in box],
        }
        for rle, area, box in zip(rles, areas, boxes, strict=True)
    ]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` then rename it to `path`: a reader sees the whole file or none (a killed run leaves none)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())

    write_atomic(path, write)


def shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / SHARDS_DIR / f"shard-{shard:06d}.json"


def written_shards(output_dir: Path) -> dict[int, Path]:
    found = {}
    for path in (output_dir / SHARDS_DIR).glob("shard-*.json"):
        try:
            found[int(path.stem.removeprefix("shard-"))] = path
        except ValueError:
            continue
    return found


def check_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse an output folder holding another run's shards (same check in every process, before any work)."""
    path = output_dir / MANIFEST_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"`output_dir` {output_dir} has an unreadable {MANIFEST_FILE} ({error}).") from None
        differing = [key for key in sorted(set(stored) | set(manifest)) if stored.get(key) != manifest.get(key)]
        if differing:
            key = differing[0]
            raise ValueError(
                f"`output_dir` {output_dir} holds the shards of a different run: its {MANIFEST_FILE} has "
                f"{key}={stored.get(key)!r}, this run {key}={manifest.get(key)!r} (differing settings: {differing}). "
                "Give another `output_dir`, or delete this one to start over."
            )
    elif written_shards(output_dir):
        raise ValueError(
            f"`output_dir` {output_dir} holds shards but no {MANIFEST_FILE}: they may be another run's. Give another "
            "`output_dir`, or delete this one to start over."
        )


def merge_shards(
    output_dir: Path, num_shards: int, output_format: str, categories: list[dict[str, Any]] | None
) -> tuple[Path, int]:
    """Merge the shard files into the output file; returns its path and its number of annotations."""
    images, annotations = [], []
    by_name = {} if categories is None else {category["name"]: category["id"] for category in reversed(categories)}
    dynamic = categories is None
    categories = [] if categories is None else list(categories)
    for shard in range(num_shards):
        with shard_path(output_dir, shard).open(encoding="utf-8") as handle:
            for image in json.load(handle)["images"]:
                images.append({key: image[key] for key in ("id", "file_name", "height", "width")})
                for found in image["annotations"]:
                    category = found.get("category_id")
                    if category is None:
                        name = EVERYTHING_CATEGORY if found["text"] is None else found["text"]
                        if dynamic and name not in by_name:
                            by_name[name] = len(by_name) + 1
                            categories.append({"id": by_name[name], "name": name})
                        category = by_name[name]
                    annotation = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": category}
                    annotation.update({key: value for key, value in found.items() if key != "category_id"})
                    annotation["iscrowd"] = 0
                    annotations.append(annotation)
    path = output_dir / OUTPUT_FILES[output_format]
    if output_format == "coco":
        write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    else:
        image_fields = {image["id"]: image for image in images}
        rows = [
            {
                **{field: annotation.get(field) for field in PARQUET_SCHEMA.names},
                **{field: image_fields[annotation["image_id"]][field] for field in ("file_name", "height", "width")},
            }
            for annotation in annotations
        ]
        table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
        write_atomic(path, lambda temporary: pq.write_table(table, temporary))
    return path, len(annotations)


__all__ = [
    "EVERYTHING_CATEGORY",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "OUTPUT_FILES",
    "OUTPUT_FORMATS",
    "PARQUET_SCHEMA",
    "SHARDS_DIR",
    "check_manifest",
    "encode_masks",
    "merge_shards",
    "shard_path",
    "write_atomic",
    "write_json",
    "written_shards",
]
