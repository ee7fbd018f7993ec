"""COCO instances and RefCOCO (`refer` layout) files: masks as pycocotools decodes them, clear errors, training on them."""

import json
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import IterableDataset
from pycocotools.coco import COCO

from transformers_esam_blip.data import encode_rle
from transformers_esam_blip.data.coco import load_coco_dataset, read_coco_instances
from transformers_esam_blip.data.referring import load_refcoco_dataset, read_refs
from transformers_esam_blip.data.user_data import find_referring_source, load_referring_dataset
from transformers_esam_blip.training import main as train

# pycocotools' compiled decoder (`annToMask`) builds its arrays the numpy 1 way; numpy 2 warns on each call.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZES = [(40, 48), (32, 32)]  # (height, width) of the two images


def _box_mask(height: int, width: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def write_coco(root: Path, annotations: list[dict] | None = None, images: list[dict] | None = None) -> Path:
    """
    `root/images/{0,1}.png` and `root/annotations.json`: a polygon "circle" and a compressed-RLE "circle" on image 1,
    a crowd "square" (uncompressed RLE) on image 1, and a polygon "square" on image 2.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(SIZES):
        PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    if images is None:
        images = [
            {"id": 10 + i, "file_name": f"images/{i}.png", "height": h, "width": w} for i, (h, w) in enumerate(SIZES)
        ]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 14, 2, 14, 12, 2, 12]]},
            {
                "id": 2,
                "image_id": 10,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": encode_rle(_box_mask(40, 48, 20, 30, 8), compressed=True),
            },
            {
                "id": 3,
                "image_id": 10,
                "category_id": 2,
                "iscrowd": 1,
                "segmentation": encode_rle(_box_mask(40, 48, 28, 4, 9)),
            },
            {"id": 4, "image_id": 11, "category_id": 2, "iscrowd": 0, "segmentation": [[5, 5, 25, 5, 15, 25.5]]},
        ]
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def masks_of(dataset) -> list[np.ndarray]:
    return [np.asarray(row["mask"]) > 0 for row in dataset]


def test_coco_masks_are_what_pycocotools_decodes(tmp_path):
    path = write_coco(tmp_path / "coco")
    coco = COCO(str(path))
    merged = load_referring_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert merged.column_names == ["image", "text", "mask", "match_label"]
    assert merged["text"] == ["circle", "square", "square"] and merged["match_label"] == [1, 1, 1]
    expected = [
        coco.annToMask(coco.anns[1]).astype(bool) | coco.annToMask(coco.anns[2]).astype(bool),
        coco.annToMask(coco.anns[3]).astype(bool),
        coco.annToMask(coco.anns[4]).astype(bool),
    ]
    for got, want in zip(masks_of(merged), expected, strict=True):
        assert np.array_equal(got, want) and want.any()
    assert [np.asarray(image).shape[:2] for image in merged["image"]] == [SIZES[0], SIZES[0], SIZES[1]]

    per_instance = load_coco_dataset(path, merge_instances=False, cache_dir=str(tmp_path / "cache"))
    assert per_instance["text"] == ["circle", "circle", "square", "square"]
    for got, annotation in zip(masks_of(per_instance), (1, 2, 3, 4), strict=True):
        assert np.array_equal(got, coco.annToMask(coco.anns[annotation]).astype(bool))
    no_crowd = load_coco_dataset(path, include_crowd=False, cache_dir=str(tmp_path / "cache"))
    assert no_crowd["text"] == ["circle", "square"]

    # The folder holding the file, and streaming, give the same rows.
    assert find_referring_source(tmp_path / "coco").kind == "coco"
    streamed = load_referring_dataset(tmp_path / "coco", streaming=True)
    assert isinstance(streamed, IterableDataset)
    assert all(np.array_equal(got, want) for got, want in zip(masks_of(streamed), expected, strict=True))


def test_editing_the_file_is_not_hidden_by_the_cache(tmp_path):
    path = write_coco(tmp_path / "coco")
    cache = str(tmp_path / "cache")
    assert load_coco_dataset(path, cache_dir=cache)["text"] == ["circle", "square", "square"]
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "ring"
    path.write_text(json.dumps(data, indent=1))
    assert load_coco_dataset(path, cache_dir=cache)["text"] == ["ring", "square", "square"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a, i: a.append({"id": 9, "image_id": 99, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]}),
            r"annotation 9 points at image_id 99, which is not among the file's 2 images",
        ),
        (
            lambda a, i: a[0].update(segmentation=[[2, 2, 14, 2, 14, 12, 2]]),
            r"segmentation of annotation 1 in annotations\.json\[0\]` has an odd number of coordinates \(7\)",
        ),
        (
            lambda a, i: a[1].update(segmentation=encode_rle(np.zeros((48, 40), dtype=bool), compressed=True)),
            r"segmentation of annotation 2 in annotations\.json` is an RLE of size 48x40 \(HxW\) but its image is 40x48",
        ),
        (
            lambda a, i: a[2].update(category_id=7),
            r"annotation 3 has category_id 7, which is not among the file's categories \[1, 2\]",
        ),
        (
            lambda a, i: i[1].update(file_name="images/missing.png"),
            r"image 11 names the file 'images/missing\.png', which does not exist under `image_root`",
        ),
        (lambda a, i: i.append(dict(i[0])), r"images\[2\] repeats the image id 10"),
        (lambda a, i: a[3].pop("segmentation"), r"annotation 4 has no 'segmentation'"),
    ],
    ids=["missing-image", "odd-polygon", "rle-size", "unknown-category", "missing-file", "duplicate-id", "no-segm"],
)
def test_coco_errors_name_the_annotation(tmp_path, change, message):
    path = write_coco(tmp_path / "good")
    data = json.loads(path.read_text())
    change(data["annotations"], data["images"])
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_referring_dataset(path, cache_dir=str(tmp_path / "cache"))


def test_coco_file_errors(tmp_path):
    with pytest.raises(ValueError, match="`annotation_file` .* does not exist"):
        read_coco_instances(tmp_path / "none.json")
    (tmp_path / "list.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is not a COCO instances file: expected a JSON object with 'images'"):
        read_coco_instances(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not a JSON file"):
        read_coco_instances(tmp_path / "broken.json")
    path = write_coco(tmp_path / "coco")
    with pytest.raises(ValueError, match=r"`split`='val' does not apply to a COCO file"):
        load_referring_dataset(path, split="val")
    with pytest.raises(ValueError, match=r"\['text_column'\] apply to tables of rows; .* is a coco source"):
        load_referring_dataset(path, text_column="caption")
    (tmp_path / "coco" / "other.json").write_text("{}")
    with pytest.raises(ValueError, match=r"several JSON files \['annotations\.json', 'other\.json'\]"):
        load_referring_dataset(tmp_path / "coco")


def write_refcoco(root: Path, pickled: bool = True, refs: list[dict] | None = None) -> Path:
    """The `refer` layout: `instances.json` (the COCO file of `write_coco`) and `refs(unc).p` (or `refs.json`)."""
    write_coco(root)
    (root / "annotations.json").rename(root / "instances.json")
    if refs is None:
        refs = [
            {
                "ref_id": 0,
                "ann_id": 1,
                "image_id": 10,
                "split": "train",
                "category_id": 1,
                "sentences": [
                    {"sent": "the shape on the left", "raw": "The shape on the left", "tokens": ["the", "shape"]},
                    {"sent": "top left", "raw": "top left", "tokens": ["top", "left"]},
                ],
            },
            {"ref_id": 1, "ann_id": 4, "image_id": 11, "split": "train", "sentences": [{"sent": "the triangle"}]},
            {"ref_id": 2, "ann_id": 3, "image_id": 10, "split": "val", "sentences": [{"raw": "bottom square"}]},
        ]
    if pickled:
        path = root / "refs(unc).p"
        path.write_bytes(pickle.dumps(refs, protocol=2))
    else:
        path = root / "refs.json"
        path.write_text(json.dumps(refs))
    return path


@pytest.mark.parametrize("pickled", [True, False], ids=["pickle", "json"])
def test_refcoco_one_row_per_sentence(tmp_path, pickled):
    refs = write_refcoco(tmp_path / "refcoco", pickled)
    coco = COCO(str(tmp_path / "refcoco" / "instances.json"))
    train = load_referring_dataset(tmp_path / "refcoco", split="train", cache_dir=str(tmp_path / "cache"))
    assert train["text"] == ["the shape on the left", "top left", "the triangle"]
    expected = [coco.annToMask(coco.anns[ann]).astype(bool) for ann in (1, 1, 4)]
    for got, want in zip(masks_of(train), expected, strict=True):
        assert np.array_equal(got, want)
    val = load_refcoco_dataset(refs, split="val", streaming=True)
    assert [row["text"] for row in val] == ["bottom square"]
    with pytest.raises(ValueError, match=r"holds the splits \['train', 'val'\]; choose one with `split`"):
        load_referring_dataset(refs)
    with pytest.raises(ValueError, match=r"`split`='testA' is not in .*; available splits: \['train', 'val'\]"):
        load_refcoco_dataset(refs, split="testA")


def test_refcoco_errors(tmp_path):
    bad = [{"ref_id": 5, "ann_id": 42, "image_id": 10, "split": "train", "sentences": ["x"]}]
    refs = write_refcoco(tmp_path / "bad", refs=bad)
    with pytest.raises(ValueError, match=r"ref 5 of refs\(unc\)\.p points at ann_id 42 of image 10"):
        list(load_refcoco_dataset(refs, streaming=True))
    (tmp_path / "bad" / "refs(unc).p").write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(ValueError, match=r"not a readable refs pickle file \(the refs file holds a pathlib"):
        read_refs(tmp_path / "bad" / "refs(unc).p")
    (tmp_path / "bad" / "refs(unc).p").write_bytes(pickle.dumps([{"ann_id": 1}]))
    with pytest.raises(ValueError, match=r"ref #0 lacks \['image_id', 'sentences'\]"):
        read_refs(tmp_path / "bad" / "refs(unc).p")
    with pytest.raises(ValueError, match="`instances_file` .*missing.json does not exist"):
        load_refcoco_dataset(refs, instances_file=tmp_path / "missing.json")


def _train_args(dataset: Path, output: Path, cache: Path) -> list[str]:
    return [
        "--config", "tiny", "--dataset", str(dataset), "--eval_dataset", str(dataset), "--output_dir", str(output),
        "--cache_dir", str(cache), "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
        "--save_steps", "2",
    ]  # fmt: skip


@pytest.mark.slow
def test_tiny_coco_and_refcoco_folders_train_and_evaluate(tmp_path, capsys):
    """`python -m transformers_esam_blip.training --dataset FOLDER` with a COCO file and a RefCOCO-style table."""
    write_coco(tmp_path / "coco")
    refcoco = tmp_path / "refcoco"
    refcoco.mkdir()
    rows = [
        {"file_name": "images/0.png", "sentences": ["a circle", "the left shape"], "segmentation": [[2, 2, 14, 2, 8, 12]]},
        {"file_name": "images/1.png", "sentences": ["the square"], "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]},
    ]  # fmt: skip
    write_coco(refcoco)  # for its images
    (refcoco / "annotations.json").unlink()
    (refcoco / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for folder, examples in ((tmp_path / "coco", 3), (refcoco, 3)):
        output = tmp_path / f"out-{folder.name}"
        assert train(_train_args(folder, output, tmp_path / "cache")) == 0
        err = capsys.readouterr().err
        assert f"{examples} training examples" in err and "Trained to step 2" in err
        assert "eval_mean_iou=" in err
        assert (output / "model.safetensors").is_file()
