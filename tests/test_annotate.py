"""`annotate`: COCO / parquet output, resume, determinism over processes, every input and prompt source, clear errors."""

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
from pycocotools.coco import COCO

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor, builtin_model_path
from transformers_esam_blip.annotate import MANIFEST_FILE, annotate, main
from transformers_esam_blip.cli import main as cli_main
from transformers_esam_blip.data import encode_rle, generate_scene, scene_rng
from transformers_esam_blip.data.synthetic import SyntheticSceneSpec
from transformers_esam_blip.evaluation import predict_referring

# pycocotools' compiled decoder (`annToMask`) builds its arrays the numpy 1 way; numpy 2 warns on each call.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "accelerate_configs" / "multi_process_cpu.yaml"
TEXTS = ["the red circle", "a blue square", "green triangle"]
NUM_SCENES = 12
# Small shards and batches so that 12 images make 6 shards, 3 per process with 2 processes.
RUN = {"shard_size": 2, "batch_size": 2, "progress": False}


def write_scenes(folder: Path, count: int = NUM_SCENES) -> list[list[dict]]:
    """`count` synthetic scenes as `folder/NN.png` (128², the built-in model's input size); returns their objects."""
    folder.mkdir(parents=True)
    spec = SyntheticSceneSpec(image_size=128, min_side=16, max_side=48)
    scenes = []
    for i in range(count):
        image, objects = generate_scene(scene_rng(0, i), spec)
        PIL.Image.fromarray(image).save(folder / f"{i:02d}.png")
        scenes.append(objects)
    return scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, list[list[dict]]]:
    folder = tmp_path_factory.mktemp("annotate") / "scenes"
    return folder, write_scenes(folder)


@contextmanager
def one_thread():
    """What the launched processes run with (OMP_NUM_THREADS=1): the same kernels, so the same floats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process(scenes, tmp_path_factory) -> Path:
    """The 1-process run every other run is compared with."""
    output = tmp_path_factory.mktemp("annotate") / "one"
    with one_thread():
        result = annotate(scenes[0], output, texts=TEXTS, **RUN)
    assert result.complete and result.num_images == NUM_SCENES and result.images_annotated == NUM_SCENES
    assert result.num_annotations == NUM_SCENES * len(TEXTS) and result.output_file == output / "annotations.json"
    return output


def load_coco(path: Path) -> COCO:
    coco = COCO(str(path))
    assert sorted(coco.anns) == list(range(1, len(coco.anns) + 1)), "annotation ids must be 1..N"
    return coco


def check_complete(coco: COCO, num_images: int, texts: list[str]) -> None:
    """No gaps and no duplicates: every image once, every (image, text) once, in image then prompt order."""
    assert sorted(coco.imgs) == list(range(1, num_images + 1))
    order = [(ann["image_id"], texts.index(ann["text"])) for ann in coco.dataset["annotations"]]
    assert order == [(image, t) for image in range(1, num_images + 1) for t in range(len(texts))]


def test_coco_output_holds_every_mask_as_the_model_predicts_it(scenes, one_process):
    folder, objects = scenes
    coco = load_coco(one_process / "annotations.json")
    check_complete(coco, NUM_SCENES, TEXTS)
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == TEXTS
    assert [coco.imgs[i + 1]["file_name"] for i in range(NUM_SCENES)] == [f"{i:02d}.png" for i in range(NUM_SCENES)]
    model = EsamBlipForPromptableSegmentation.from_pretrained(builtin_model_path()).eval()
    processor = EsamBlipProcessor.from_pretrained(builtin_model_path())
    for image_id in (1, 7):
        image = PIL.Image.open(folder / coco.imgs[image_id]["file_name"]).convert("RGB")
        with one_thread():
            masks, probabilities = predict_referring(model, processor, image, TEXTS, model.config.text_prompt_mode)
        for t, annotation in enumerate(coco.imgToAnns[image_id]):
            assert annotation["text"] == TEXTS[t] and annotation["category_id"] == t + 1
            mask = coco.annToMask(annotation).astype(bool)
            assert np.array_equal(mask, masks[t].numpy())
            assert annotation["area"] == int(mask.sum()) and annotation["iscrowd"] == 0
            assert annotation["match_probability"] == pytest.approx(float(probabilities[t]), abs=1e-5)
            assert 0.0 <= annotation["score"] <= 1.5
    # The masks sit on the right images: the built-in model outlines the objects its texts name.
    ious, agreements = [], []
    for image_id, scene in enumerate(objects, start=1):
        for annotation in coco.imgToAnns[image_id]:
            colour, shape = annotation["text"].split()[-2:]
            present = [obj["mask"] for obj in scene if (obj["colour"], obj["shape"]) == (colour, shape)]
            agreements.append((annotation["match_probability"] > 0.5) == bool(present))
            if present:
                mask = coco.annToMask(annotation).astype(bool)
                ious.append((mask & present[0]).sum() / (mask | present[0]).sum())
    assert len(ious) >= 5 and np.mean(ious) > 0.8 and np.mean(agreements) > 0.6, (ious, agreements)


def test_parquet_output_has_the_same_fields(scenes, one_process, tmp_path):
    with one_thread():
        result = annotate(scenes[0], tmp_path / "parquet", texts=TEXTS, output_format="parquet", **RUN)
    assert result.output_file == tmp_path / "parquet" / "annotations.parquet"
    rows = pq.read_table(result.output_file).to_pylist()
    coco = json.loads((one_process / "annotations.json").read_text())
    assert len(rows) == len(coco["annotations"])
    images = {image["id"]: image for image in coco["images"]}
    for row, annotation in zip(rows, coco["annotations"], strict=True):
        for field in ("id", "image_id", "category_id", "text", "score", "match_probability", "area", "bbox"):
            assert row[field] == annotation[field], field
        assert row["segmentation"] == annotation["segmentation"]
        assert (row["file_name"], row["height"], row["width"]) == tuple(
            images[row["image_id"]][key] for key in ("file_name", "height", "width")
        )
    # `datasets` reads the folder as a dataset too.
    loaded = datasets.load_dataset("parquet", data_files=str(result.output_file), split="train")
    assert loaded.num_rows == len(rows) and "segmentation" in loaded.column_names


def test_resume_after_a_stopped_run_has_no_gaps_and_no_duplicates(scenes, one_process, tmp_path):
    output = tmp_path / "resumed"
    with one_thread():
        stopped = annotate(scenes[0], output, texts=TEXTS, max_shards=2, **RUN)
    assert not stopped.complete and stopped.output_file is None and stopped.images_annotated == 4
    assert sorted(path.name for path in (output / "shards").iterdir()) == ["shard-000000.json", "shard-000001.json"]
    assert not (output / "annotations.json").exists()
    # A write that a kill interrupted leaves a temporary file; it is not a shard and is cleaned up.
    (output / "shards" / ".shard-000002.json.tmp-999").write_text('{"shard": 2, "ima')
    written = (output / "shards" / "shard-000000.json").stat().st_mtime_ns
    with one_thread():
        resumed = annotate(scenes[0], output, texts=TEXTS, **RUN)
    assert resumed.complete and resumed.images_skipped == 4 and resumed.images_annotated == NUM_SCENES - 4
    assert (output / "shards" / "shard-000000.json").stat().st_mtime_ns == written  # not redone
    assert not list((output / "shards").glob(".*"))
    check_complete(load_coco(output / "annotations.json"), NUM_SCENES, TEXTS)
    assert (output / "annotations.json").read_bytes() == (one_process / "annotations.json").read_bytes()
    with one_thread():  # a finished folder: nothing to do, the same output
        again = annotate(scenes[0], output, texts=TEXTS, **RUN)
    assert again.images_annotated == 0 and again.images_skipped == NUM_SCENES and again.complete


def test_an_output_folder_of_another_run_is_refused(scenes, one_process, tmp_path):
    with pytest.raises(ValueError, match=r"holds the shards of a different run: its manifest.json has texts="):
        annotate(scenes[0], one_process, texts=TEXTS[:2], **RUN)
    with pytest.raises(ValueError, match=r"differing settings: \['shard_size'\]"):
        annotate(scenes[0], one_process, texts=TEXTS, shard_size=3, batch_size=2, progress=False)
    orphan = tmp_path / "orphan"
    (orphan / "shards").mkdir(parents=True)
    (orphan / "shards" / "shard-000000.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds shards but no manifest.json"):
        annotate(scenes[0], orphan, texts=TEXTS, **RUN)
    assert json.loads((one_process / MANIFEST_FILE).read_text())["model"] == "esam-blip-shapes"


def test_datasets_sources_with_a_text_column(scenes, tmp_path):
    folder, _ = scenes
    files = sorted(folder.glob("*.png"))[:4]
    captions = [["the red circle", "a blue square"], ["a green square"], ["a red circle"], ["the red circle"]]
    dataset = datasets.Dataset.from_dict({"picture": [str(path) for path in files], "caption": captions})
    dataset = dataset.cast_column("picture", datasets.Image())
    with one_thread():
        result = annotate(dataset, tmp_path / "memory", text_column="caption", image_column="picture", **RUN)
    coco = load_coco(result.output_file)
    assert [ann["text"] for ann in coco.dataset["annotations"]] == [text for row in captions for text in row]
    # Categories are the texts met, in order.
    assert [cat["name"] for cat in coco.dataset["categories"]] == ["the red circle", "a blue square", "a green square",
                                                                   "a red circle"]  # fmt: skip
    assert [ann["category_id"] for ann in coco.dataset["annotations"]] == [1, 2, 3, 4, 1]
    # The same rows from a parquet file, streamed (length unknown until read): the same annotations.
    table = tmp_path / "table"
    table.mkdir()
    dataset.to_parquet(str(table / "rows.parquet"))
    with one_thread():
        streamed = annotate(table, tmp_path / "streamed", text_column="caption", image_column="picture",
                            streaming=True, **RUN)  # fmt: skip
    assert streamed.complete and streamed.num_images == 4
    first, second = (json.loads(path.read_text()) for path in (result.output_file, streamed.output_file))
    strip = [{key: value for key, value in ann.items() if key != "score"} for ann in first["annotations"]]
    assert strip == [{key: value for key, value in ann.items() if key != "score"} for ann in second["annotations"]]
    with pytest.raises(ValueError, match=r"`text_column`='text' is not a column of the dataset; available columns: "):
        annotate(dataset, tmp_path / "bad", text_column="text", image_column="picture", **RUN)
    with pytest.raises(ValueError, match=r"`image_column`='image' is not a column of the dataset"):
        annotate(dataset, tmp_path / "bad", text_column="caption", **RUN)


def _coco_of_scenes(folder: Path, objects: list[list[dict]], count: int) -> Path:
    names = sorted({f"{obj['colour']} {obj['shape']}" for scene in objects for obj in scene})
    annotations = []
    for i, scene in enumerate(objects[:count]):
        for obj in scene:
            x1, y1, x2, y2 = obj["bbox"]
            annotations.append(
                {"id": 100 + len(annotations), "image_id": 50 + i, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
                 "category_id": names.index(f"{obj['colour']} {obj['shape']}") + 1,
                 "segmentation": encode_rle(obj["mask"], compressed=True)}
            )  # fmt: skip
    data = {
        "images": [{"id": 50 + i, "file_name": f"{i:02d}.png", "height": 128, "width": 128} for i in range(count)],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
    }
    path = folder.parent / "scenes.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_category_prompts_and_everything(scenes, tmp_path):
    folder, objects = scenes
    path = _coco_of_scenes(folder, objects, 3)
    source = json.loads(path.read_text())
    with one_thread():
        boxes = annotate(path, tmp_path / "boxes", boxes=True, image_root=folder, **RUN)
    coco = load_coco(boxes.output_file)
    assert sorted(coco.imgs) == [50, 51, 52] and coco.dataset["categories"] == source["categories"]
    assert [ann["source_annotation_id"] for ann in coco.dataset["annotations"]] == [
        a["id"] for a in source["annotations"]
    ]
    for annotation, original in zip(coco.dataset["annotations"], source["annotations"], strict=True):
        assert annotation["category_id"] == original["category_id"] and annotation["match_probability"] is None
        assert annotation["image_id"] == original["image_id"]
    # No prompt source on a COCO file: its category names prompt every image, with the file's category ids.
    with one_thread():
        named = annotate(path, tmp_path / "names", image_root=folder, **RUN)
    coco = load_coco(named.output_file)
    assert len(coco.anns) == 3 * len(source["categories"]) and coco.dataset["categories"] == source["categories"]
    assert all(coco.cats[ann["category_id"]]["name"] == ann["text"] for ann in coco.anns.values())
    # Everything mode: the generator's masks, category "object".
    with one_thread():
        everything = annotate(folder, tmp_path / "everything", everything=True, points_per_side=4,
                              pred_iou_thresh=0.0, stability_score_thresh=0.0, **RUN)  # fmt: skip
    coco = load_coco(everything.output_file)
    assert coco.dataset["categories"] == [{"id": 1, "name": "object"}] and len(coco.anns) >= NUM_SCENES
    assert {ann["text"] for ann in coco.anns.values()} == {None}
    with pytest.raises(ValueError, match=r"`boxes` prompts with the boxes of a COCO file; `source` .* is not one"):
        annotate(folder, tmp_path / "x", boxes=True, **RUN)


def test_missing_images_in_a_coco_source_are_refused(scenes, tmp_path):
    folder, objects = scenes
    path = _coco_of_scenes(folder, objects, 2)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"annotation 100 points at image_id 7, which is not among the file's 2 images"
    ):
        annotate(path, tmp_path / "out", boxes=True, image_root=folder, **RUN)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"Give a prompt source: `texts`, `text_column`, `boxes` \(COCO input\) or `everything`"),
        ({"texts": TEXTS, "everything": True}, r"Give one prompt source, got \['texts', 'everything'\]"),
        ({"texts": ["a", "a"]}, r"`texts` repeats \['a'\]"),
        ({"texts": "a red circle"}, r"`texts` must be a non-empty list of strings"),
        ({"text_column": "caption"}, r"`text_column` reads a dataset column; `source` .* is a folder of images"),
        ({"texts": TEXTS, "output_format": "csv"}, r"`output_format` must be one of \('coco', 'parquet'\)"),
        ({"texts": TEXTS, "batch_size": 0}, r"`batch_size` must be an int >= 1, got 0"),
        ({"everything": True, "min_match_probability": 0.5}, r"`min_match_probability` filters text prompts"),
        ({"texts": TEXTS, "text_prompt_mode": "oracle"}, r"`text_prompt_mode` must be one of"),
    ],
)
def test_argument_errors(scenes, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        annotate(scenes[0], tmp_path / "out", **kwargs)


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"`source` .*missing does not exist \(give a folder, a file, or a Hub dataset id\)"
    ):
        annotate(tmp_path / "missing", tmp_path / "out", texts=TEXTS)


def test_commands_report_one_error_line(scenes, one_process, tmp_path, capsys):
    assert main([str(scenes[0]), "--text", "a red circle", "--output_dir", str(one_process), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --output_dir {one_process} holds the shards of a different")
    assert cli_main(["annotate", str(scenes[0]), "--output_dir", str(tmp_path / "o")]) == 2
    assert (
        "Give a prompt source: --text, --text_column, --boxes (COCO input) or --everything" in capsys.readouterr().err
    )
    argv = ["annotate", str(scenes[0]), "--text", TEXTS[0], "--output_dir", str(tmp_path / "cli"), "--shard_size", "4"]
    with one_thread():
        assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "Annotated 12 images in" in err and "images/s" in err and "(12 annotations)" in err
    assert len(load_coco(tmp_path / "cli" / "annotations.json").anns) == NUM_SCENES


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path: Path, folder: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate_configs/multi_process_cpu.yaml -m transformers_esam_blip.annotate`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
    command += [
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "transformers_esam_blip.annotate",
    ]
    command += [str(folder), *(arg for text in TEXTS for arg in ("--text", text)), "--output_dir", str(output)]
    command += ["--shard_size", str(RUN["shard_size"]), "--batch_size", str(RUN["batch_size"]), *extra]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate config file of this machine's user changes the launch
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_give_the_one_process_output_and_resume(scenes, one_process, tmp_path):
    """
    `accelerate launch --num_processes 2` (gloo on the CPU): each process writes its shards, the main one merges; the
    merged COCO file is byte-identical to the 1-process run. Then a 2-process run stopped after one shard per process
    (`--max_shards 1`, what a kill between shards leaves) resumes to the same file: no duplicates, no gaps.
    """
    done = launch(tmp_path, scenes[0], tmp_path / "two")
    assert "with 2 process(es)" in done.stderr and "(36 annotations)" in done.stderr, done.stderr[-2000:]
    coco = load_coco(tmp_path / "two" / "annotations.json")
    check_complete(coco, NUM_SCENES, TEXTS)
    reference = load_coco(one_process / "annotations.json")
    for annotation_id, annotation in coco.anns.items():
        assert np.array_equal(coco.annToMask(annotation), reference.annToMask(reference.anns[annotation_id]))
    assert (tmp_path / "two" / "annotations.json").read_bytes() == (one_process / "annotations.json").read_bytes()

    stopped = launch(tmp_path, scenes[0], tmp_path / "resumed", "--max_shards", "1")
    assert "shards are missing" in stopped.stderr
    assert sorted(path.name for path in (tmp_path / "resumed" / "shards").iterdir()) == [
        "shard-000000.json",
        "shard-000001.json",
    ]
    resumed = launch(tmp_path, scenes[0], tmp_path / "resumed")
    assert "Annotated 8 images" in resumed.stderr and "4 images were done by earlier runs" in resumed.stderr
    assert (tmp_path / "resumed" / "annotations.json").read_bytes() == (one_process / "annotations.json").read_bytes()
