"""User referring data: PNG / RLE / polygon masks from a folder, configurable columns, codecs and clear errors."""

import csv
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import IterableDataset

from transformers_esam_blip.data import (
    decode_rle,
    encode_rle,
    load_referring_dataset,
    mask_to_bool,
    polygons_to_mask,
)
from transformers_esam_blip.data.user_data import find_referring_source

# Masks and their compressed COCO RLE strings as pycocotools 2.0 `mask.encode` writes them.
_SMALL = np.zeros((7, 9), dtype=bool)
_SMALL[1:5, 2:7] = True
_SMALL[6, 8] = _SMALL[0, 0] = True
_LARGE = np.zeros((100, 120), dtype=bool)
_LARGE[10:90, 5:100] = True
_LARGE[0:3, 0] = True
PYCOCOTOOLS_STRINGS = [
    (_SMALL, "01>3E0000000<M"),
    (_LARGE, "03k?]2i@" + "0" * 187 + "Vn1"),
]


def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + height // 3, left : left + width // 3] = True
    return mask


def write_folder(root: Path, rows: list[dict], images: list[np.ndarray], metadata: str = "jsonl") -> Path:
    """
    `images/i.png` for each image and a metadata file with `rows`, each row's `file_name` added last (after any
    `mask_file_name`: the order in which `imagefolder` in `datasets` 5.2 swaps the two files).
    """
    (root / "images").mkdir(parents=True)
    for i, (row, image) in enumerate(zip(rows, images, strict=True)):
        PIL.Image.fromarray(image).save(root / "images" / f"{i}.png")
        row["file_name"] = f"images/{i}.png"
    if metadata == "jsonl":
        with open(root / "metadata.jsonl", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(
                {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows
            )
    return root


@pytest.fixture
def scenes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three images of different sizes with one mask each, the last one empty (an absent object)."""
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (24, 16), (18, 18)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [random_mask(rng, h, w) for h, w in sizes[:2]] + [np.zeros(sizes[2], dtype=bool)]
    return images, masks


def load(root: Path, **kwargs):
    return load_referring_dataset(root, cache_dir=str(root.parent / "cache"), **kwargs)


def mask_arrays(dataset) -> list[np.ndarray]:
    return [np.asarray(mask) for mask in dataset["mask"]]


def check_canonical(dataset, images, masks) -> None:
    assert dataset.column_names == ["image", "text", "mask", "match_label"]
    for stored, expected in zip(dataset["image"], images, strict=True):
        assert np.array_equal(np.asarray(stored), expected)
    for stored, expected in zip(mask_arrays(dataset), masks, strict=True):
        assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}
        assert np.array_equal(stored > 0, expected)
    assert dataset["match_label"] == [int(mask.any()) for mask in masks]


def test_png_masks_from_mask_file_name(tmp_path, scenes):
    images, masks = scenes
    (tmp_path / "data" / "masks").mkdir(parents=True)
    rows = []
    for i, mask in enumerate(masks):
        PIL.Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "data" / "masks" / f"{i}.png")  # 0/1 values
        rows.append({"text": f"object {i}", "mask_file_name": f"masks/{i}.png"})
    root = write_folder(tmp_path / "data", rows, images)
    dataset = load(root)
    check_canonical(dataset, images, masks)
    assert dataset["text"] == ["object 0", "object 1", "object 2"]
    assert load(root, mask_format="png")["match_label"] == [1, 1, 0]


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_rle_masks_round_trip(tmp_path, scenes, compressed, metadata):
    images, masks = scenes
    rows = [{"text": "x", "mask": encode_rle(mask, compressed=compressed)} for mask in masks]
    root = write_folder(tmp_path / "data", rows, images, metadata)
    check_canonical(load(root), images, masks)
    check_canonical(load(root, mask_format="rle"), images, masks)


def test_polygon_masks_and_custom_columns(tmp_path):
    image = np.full((20, 30, 3), 128, dtype=np.uint8)
    square = [[5, 4, 14, 4, 14, 13, 5, 13]]
    two = [[0, 0, 4, 0, 4, 4, 0, 4], [20, 10, 29, 10, 29, 19]]
    rows = [
        {"caption": "a square", "seg": square, "present": 1},
        {"caption": "two parts", "seg": two, "present": 1},
        {"caption": "nothing", "seg": [], "present": 0},
    ]
    root = write_folder(tmp_path / "data", rows, [image] * 3)
    dataset = load(root, text_column="caption", mask_column="seg", mask_format="polygon", match_label_column="present")
    expected_square = np.zeros((20, 30), dtype=bool)
    expected_square[4:13, 5:14] = True  # COCO's rasteriser: x from 5 to 14 covers the pixels 5..13
    stored = [mask > 0 for mask in mask_arrays(dataset)]
    assert np.array_equal(stored[0], expected_square)
    assert np.array_equal(stored[1], polygons_to_mask(two, 20, 30))
    assert stored[1][:4, :4].all() and not stored[1][4, :5].any() and stored[1][10, 21] and not stored[1][18, 20]
    assert not stored[2].any()
    assert dataset["text"] == ["a square", "two parts", "nothing"] and dataset["match_label"] == [1, 1, 0]


def test_saved_dataset_folder_loads(tmp_path, scenes):
    images, masks = scenes
    rows = [{"text": "x", "mask": encode_rle(mask)} for mask in masks]
    dataset = load(write_folder(tmp_path / "data", rows, images))
    dataset.save_to_disk(str(tmp_path / "saved"))
    check_canonical(load_referring_dataset(tmp_path / "saved"), images, masks)


@pytest.mark.parametrize(("mask", "string"), PYCOCOTOOLS_STRINGS)
def test_compressed_rle_matches_pycocotools(mask, string):
    assert encode_rle(mask, compressed=True) == {"size": list(mask.shape), "counts": string}
    assert np.array_equal(decode_rle({"size": list(mask.shape), "counts": string.encode()}), mask)


def test_rle_codecs_round_trip():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (5, 7), (33, 64)]:
        for density in (0.0, 0.5, 1.0):
            mask = rng.random(shape) < density
            for compressed in (False, True):
                assert np.array_equal(decode_rle(encode_rle(mask, compressed=compressed)), mask)
    # Column-major: 0, then 1 1, then 0 0 0 fill columns (0, 1), (1, 0), (0, 0).
    column_major = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    assert column_major.tolist() == [[False, True, False], [True, False, False]]


def test_mask_to_bool_accepts_common_forms():
    mask = np.array([[0, 1], [1, 0]], dtype=bool)
    forms = [
        PIL.Image.fromarray(mask.astype(np.uint8) * 255),
        PIL.Image.fromarray(mask).convert("1"),
        PIL.Image.fromarray(mask.astype(np.uint8) * 255).convert("RGBA"),
        mask.astype(np.float32),
        mask[None],
        mask[..., None].astype(np.uint8),
    ]
    for form in forms:
        assert np.array_equal(mask_to_bool(form), mask)
    with pytest.raises(ValueError, match=r"2-D \(H, W\)"):
        mask_to_bool(np.zeros((2, 3, 3)))
    with pytest.raises(TypeError, match="PIL image"):
        mask_to_bool([[0, 1]])


def test_missing_column_names_it_and_lists_the_available_ones(tmp_path, scenes):
    images, masks = scenes
    rows = [{"text": "x", "seg": encode_rle(mask)} for mask in masks]
    root = write_folder(tmp_path / "data", rows, images)
    with pytest.raises(
        ValueError,
        match=r"`mask_column` is not given and the dataset has none of the columns \('mask', 'segmentation'\); "
        r"available columns: \['text', 'seg', 'image'\]",
    ):
        load(root)
    with pytest.raises(ValueError, match=r"`mask_column`='mask' is not a column.*\['text', 'seg', 'image'\]"):
        load(root, mask_column="mask")
    with pytest.raises(ValueError, match="`text_column`='caption'"):
        load(root, text_column="caption", mask_column="seg")
    with pytest.raises(ValueError, match="`match_label_column`='label'"):
        load(root, mask_column="seg", match_label_column="label")


def test_refcoco_style_rows_explode_and_columns_fall_back_to_aliases(tmp_path, scenes):
    """One region with several sentences (strings or `refer` sentence objects) → one example per sentence."""
    images, masks = scenes
    rows = [
        {"sentences": ["left thing", "the first one"], "segmentation": encode_rle(masks[0], compressed=True)},
        {"sentences": [{"sent": "middle thing", "raw": "Middle thing!", "tokens": ["middle", "thing"]}],
         "segmentation": encode_rle(masks[1])},
        {"sentences": "nothing here", "segmentation": encode_rle(masks[2])},
    ]  # fmt: skip
    dataset = load(write_folder(tmp_path / "data", rows, images))
    assert dataset["text"] == ["left thing", "the first one", "middle thing", "nothing here"]
    expected = [masks[0], masks[0], masks[1], masks[2]]
    check_canonical(dataset, [images[0], images[0], images[1], images[2]], expected)
    with pytest.raises(ValueError, match=r"text of row 1\[0\] must be a non-empty string or a sentence object"):
        load(write_folder(tmp_path / "bad", [rows[0], {**rows[1], "sentences": [{"tokens": []}]}, rows[2]], images))
    with pytest.raises(ValueError, match=r"text of row 0 must be a non-empty string or a non-empty list"):
        load(write_folder(tmp_path / "empty", [{**rows[0], "sentences": []}, rows[1], rows[2]], images))


@pytest.mark.parametrize("suffix", ["parquet", "arrow"])
def test_parquet_and_arrow_files_under_any_name(tmp_path, scenes, suffix):
    images, masks = scenes
    rows = [{"text": f"object {i}", "mask": encode_rle(mask)} for i, mask in enumerate(masks)]
    source = load(write_folder(tmp_path / "data", rows, images))
    folder = tmp_path / "tables"
    (folder / "nested").mkdir(parents=True)
    first, second = source.select(range(2)), source.select(range(2, 3))
    if suffix == "parquet":
        first.to_parquet(str(folder / "part-b.parquet"))
        second.to_parquet(str(folder / "nested" / "z.parquet"))
        files = [folder / "nested" / "z.parquet", folder / "part-b.parquet"]  # sorted paths: nested/ first
        order = [2, 0, 1]
    else:
        first.save_to_disk(str(tmp_path / "saved"))
        arrow = next((tmp_path / "saved").glob("*.arrow"))
        (folder / "anything.arrow").write_bytes(arrow.read_bytes())
        files, order = [folder / "anything.arrow"], [0, 1]
    loaded = load_referring_dataset(folder, cache_dir=str(tmp_path / "cache2"))
    check_canonical(loaded, [images[i] for i in order], [masks[i] for i in order])
    assert find_referring_source(folder).files == tuple(files)
    single = load_referring_dataset(files[-1], cache_dir=str(tmp_path / "cache3"))
    assert single["text"] == [source["text"][i] for i in order[-len(single) :]]


def test_streaming_gives_the_same_rows(tmp_path, scenes):
    images, masks = scenes
    rows = [{"sentences": [f"object {i}", f"thing {i}"], "mask": encode_rle(mask)} for i, mask in enumerate(masks)]
    root = write_folder(tmp_path / "data", rows, images)
    streamed = load(root, streaming=True)
    assert isinstance(streamed, IterableDataset)
    stored = load(root)
    streamed_rows = list(streamed)
    assert [row["text"] for row in streamed_rows] == stored["text"]
    for row, mask in zip(streamed_rows, mask_arrays(stored), strict=True):
        assert np.array_equal(np.asarray(row["mask"]), mask)
    with pytest.raises(ValueError, match="`num_proc` .* does not apply with `streaming=True`"):
        load(root, streaming=True, num_proc=2)


def test_mask_errors(tmp_path, scenes):
    images, masks = scenes
    with pytest.raises(ValueError, match="`mask_format` must be one of"):
        load_referring_dataset(tmp_path, mask_format="bitmap")
    wrong_size = [{"text": "x", "mask": encode_rle(np.zeros((5, 5), dtype=bool))} for _ in masks]
    root = write_folder(tmp_path / "wrong_size", wrong_size, images)
    with pytest.raises(ValueError, match=r"mask of row 0 is 5x5 \(HxW\) but its image is 20x30"):
        load(root)
    with pytest.raises(ValueError, match="`mask_format` is 'polygon' but the mask of row 0 is a rle"):
        load(root, mask_format="polygon")
    bad_rle = [{"text": "x", "mask": {"size": [20, 30], "counts": [5, 5]}} for _ in masks]
    with pytest.raises(ValueError, match="not a valid RLE"):
        load(write_folder(tmp_path / "bad_rle", bad_rle, images))
    bad_polygon = [{"text": "x", "mask": [[1, 2, 3, 4]]} for _ in masks]
    with pytest.raises(ValueError, match=r"at least 3 \(x, y\) points"):
        load(write_folder(tmp_path / "bad_polygon", bad_polygon, images))


def test_row_and_source_errors(tmp_path, scenes):
    images, masks = scenes
    rows = [{"text": "", "mask": encode_rle(mask), "label": 1} for mask in masks]
    root = write_folder(tmp_path / "data", rows, images)
    with pytest.raises(ValueError, match="text of row 0 must be a non-empty string"):
        load(root)
    rows = [{"text": "x", "mask": encode_rle(mask), "label": 2} for mask in masks]
    root = write_folder(tmp_path / "labels", rows, images)
    with pytest.raises(ValueError, match="match label of row 0 must be 0 or 1, got 2"):
        load(root, match_label_column="label")
    with pytest.raises(ValueError, match="match label of row 0 must be 0 or 1, got 2"):
        load_referring_dataset(root / "metadata.jsonl", match_label_column="label")  # one table file loads too
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt is a \.txt file; give a COCO \.json"):
        load_referring_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no metadata.jsonl"):
        load_referring_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"`split`='test' is not in the dataset; available splits: \['train'\]"):
        dataset = load(write_folder(tmp_path / "ok", [{"text": "x", "mask": encode_rle(m)} for m in masks], images))
        dataset.save_to_disk(str(tmp_path / "saved"))
        from datasets import DatasetDict

        DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
        load_referring_dataset(tmp_path / "dict", split="test")
