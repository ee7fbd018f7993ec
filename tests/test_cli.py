"""The `esam-blip` command: text, point/box, everything and ITM modes in-process, one real process, one-line errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sam_config
from PIL import Image
from test_mask_prompts_processing import randomize
from test_pipelines_text import save_tiny_joint_checkpoint
from transformers import pipeline

from transformers_esam_blip import (
    EsamBlipConfig,
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
    EsamBlipImageProcessor,
    EsamBlipProcessor,
    demo,
    evaluation,
)
from transformers_esam_blip import annotate as annotate_command
from transformers_esam_blip.builtin_presets import tiny_config, tiny_processor, tiny_sam_config_kwargs
from transformers_esam_blip.cli import build_parser, load_mask, main, parse_box, parse_point, run_export
from transformers_esam_blip.commands import CliError
from transformers_esam_blip.conversion import checkpoint as conversion
from transformers_esam_blip.pipelines import PROMPTABLE_TASK, TASK
from transformers_esam_blip.training import command as training
from transformers_esam_blip.visualization import draw_masks

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def checkpoints(joint_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints: joint (random 64 px EfficientSAM + the BLIP fixture), segmentation-only, matching-only."""
    root = tmp_path_factory.mktemp("cli")
    joint = save_tiny_joint_checkpoint(joint_checkpoint, root / "joint")
    segmentation = root / "segmentation-only"
    EsamBlipForPromptableSegmentation(tiny_sam_config()).save_pretrained(segmentation)
    EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64)).save_pretrained(segmentation)
    config_dict, _ = EsamBlipConfig.get_config_dict(joint_checkpoint)
    for name in ("sam_vision_config", "prompt_encoder_config", "mask_decoder_config"):
        config_dict[name] = None
    matching = root / "matching-only"
    EsamBlipForImageTextMatching(EsamBlipConfig.from_dict({**config_dict, "segmentation": False})).save_pretrained(
        matching
    )
    matching_processor = EsamBlipProcessor.from_pretrained(joint_checkpoint)
    matching_processor.image_processor.sam_image_size = None
    matching_processor.save_pretrained(matching)
    no_config = root / "no-config"
    no_config.mkdir()
    return {"joint": joint, "segmentation": segmentation, "matching": matching, "no_config": no_config}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    """A dark left half with a red square and a white right half: the tiny model's masks cover part of it."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:, WIDTH // 2 :] = 255
    pixels[10:30, 5:20] = (200, 30, 30)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def _far_from_points(points: list[list[float]], radius: float) -> np.ndarray:
    """`[H, W]` True where no point marker (drawn with `radius`) can have changed the pixel."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    far = np.ones((HEIGHT, WIDTH), dtype=bool)
    for x, y in points:
        far &= (cols - x) ** 2 + (rows - y) ** 2 > (radius + 2) ** 2
    return far


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help(capsys):
    status, out, _ = _run(capsys, "--help")
    assert status == 0 and all(name in out for name in ("segment", "everything", "itm", "train", "export"))
    status, out, _ = _run(capsys, "segment", "--help")
    assert status == 0 and all(option in out for option in ("--text", "--points", "--box", "--mask", "--json"))


def test_point_and_box_syntax():
    assert parse_point("10,20") == (10.0, 20.0, 1)
    assert parse_point("10.5,20,0") == (10.5, 20.0, 0)
    assert parse_box("1,2,30,40") == [1.0, 2.0, 30.0, 40.0]


def test_text_mode_writes_the_picture_and_json(checkpoints, image_path, tmp_path, capsys):
    output, report = tmp_path / "out" / "text.png", tmp_path / "text.json"
    texts = ["a red square", "the sky"]
    status, out, _ = _run(
        capsys, "segment", image_path, "--text", texts[0], "--text", texts[1], "--model", checkpoints["joint"],
        "--output", output, "--json", report,
    )  # fmt: skip
    assert status == 0
    assert all(repr(text) in out for text in texts)
    image = Image.open(image_path).convert("RGB")
    expected = pipeline(TASK, model=str(checkpoints["joint"]), device="cpu")(image, texts)
    data = json.loads(report.read_text())
    assert data["mode"] == "text" and data["image_size"] == {"width": WIDTH, "height": HEIGHT}
    picture = Image.open(output).convert("RGB")
    row_height = picture.height // len(texts)
    assert picture.width == 2 * WIDTH and picture.height == len(texts) * row_height and row_height > HEIGHT
    band = row_height - HEIGHT
    original = np.asarray(image).astype(int)
    for t, (result, summary) in enumerate(zip(expected, data["results"])):
        mask = result["mask"].numpy()
        assert summary["text"] == texts[t] and summary["mask_area"] == int(mask.sum())
        assert summary["score"] == pytest.approx(result["score"])
        assert summary["match_probability"] == pytest.approx(result["match_probability"])
        assert summary["is_match"] == result["is_match"]
        assert np.allclose(summary["points"], result["points"]) and summary["point_labels"] == result["point_labels"]
        top = t * row_height + band
        left = np.asarray(picture.crop((0, top, WIDTH, top + HEIGHT))).astype(int)
        absent = not result["is_match"]
        drawn = np.asarray(draw_masks(image, mask, result["points"], result["point_labels"], absent=absent)).astype(int)
        assert np.array_equal(left, drawn)
        far = _far_from_points(result["points"], radius=3)
        assert 0 < mask.sum() < mask.size, "the check needs a partial mask"
        if not absent:  # an absent text's mask is outlined and labelled instead (tests/test_visualization.py)
            # The fill changes the mask's pixels (a pixel of the outline's own colour may stay as it was).
            assert (np.abs(left - original).sum(-1) > 0)[mask & far].mean() > 0.95
            assert np.array_equal(left[~mask & far], original[~mask & far])


def test_point_and_box_mode(checkpoints, image_path, tmp_path, capsys):
    output, report = tmp_path / "points.png", tmp_path / "points.json"
    status, out, _ = _run(
        capsys, "segment", image_path, "--points", "12,20", "50,40,0", "--box", "2,5,30,35",
        "--model", checkpoints["joint"], "--output", output, "--json", report,
    )  # fmt: skip
    assert status == 0 and "predicted IoU" in out
    image = Image.open(image_path).convert("RGB")
    processor = EsamBlipProcessor.from_pretrained(checkpoints["joint"])
    model = EsamBlipForPromptableSegmentation.from_pretrained(checkpoints["joint"]).eval()
    inputs = processor(
        images=image, input_points=[[[[12, 20], [50, 40]]]], input_labels=[[[1, 0]]], input_boxes=[[[2, 5, 30, 35]]]
    )
    with torch.no_grad():
        out = model(**inputs)
    best = int(out.iou_scores[0, 0].argmax())
    mask = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0, best]
    data = json.loads(report.read_text())
    assert data["mode"] == "prompts" and data["best_candidate"] == best
    assert data["points"] == [[12.0, 20.0], [50.0, 40.0]] and data["point_labels"] == [1, 0]
    assert data["box"] == [2.0, 5.0, 30.0, 35.0] and data["mask_area"] == int(mask.sum())
    assert data["scores"] == pytest.approx(out.iou_scores[0, 0].tolist())
    picture = Image.open(output)
    assert picture.size == (WIDTH, HEIGHT)
    expected = draw_masks(image, mask, [[12, 20], [50, 40]], [1, 0], boxes=[[2, 5, 30, 35]])
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))


def test_everything_mode(checkpoints, image_path, tmp_path, capsys):
    output, report = tmp_path / "all.png", tmp_path / "all.json"
    status, out, _ = _run(
        capsys, "everything", image_path, "--model", checkpoints["joint"], "--output", output, "--json", report,
        "--points-per-side", 4, "--points-per-batch", 5, "--pred-iou-thresh", 0, "--stability-score-thresh", 0,
    )  # fmt: skip
    assert status == 0
    data = json.loads(report.read_text())
    assert data["mode"] == "everything" and len(data["masks"]) >= 1 and f"{len(data['masks'])} masks" in out
    areas = [entry["area"] for entry in data["masks"]]
    assert areas == sorted(areas, reverse=True)
    assert all(len(entry["box"]) == 4 for entry in data["masks"])
    assert Image.open(output).size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("extra", [["--grid", "coarse-to-fine", "--no-progress"], ["--crops-n-layers", "1"]])
def test_everything_grid_and_crops(checkpoints, image_path, tmp_path, capsys, extra):
    report = tmp_path / "all.json"
    status, _, _ = _run(
        capsys, "everything", image_path, "--model", checkpoints["joint"], "--output", tmp_path / "all.png",
        "--json", report, "--points-per-side", 4, "--pred-iou-thresh", 0, "--stability-score-thresh", 0, *extra,
    )  # fmt: skip
    assert status == 0 and len(json.loads(report.read_text())["masks"]) >= 1


def test_itm_mode(checkpoints, image_path, tmp_path, capsys):
    report = tmp_path / "itm.json"
    texts = ["a red square", "a dog"]
    status, out, _ = _run(
        capsys, "itm", image_path, "--text", texts[0], "--text", texts[1], "--model", checkpoints["matching"],
        "--json", report,
    )  # fmt: skip
    assert status == 0
    model = EsamBlipForImageTextMatching.from_pretrained(checkpoints["matching"]).eval()
    processor = EsamBlipProcessor.from_pretrained(checkpoints["matching"])
    inputs = processor(images=Image.open(image_path).convert("RGB"), text=texts)
    inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "blip_pixel_values")}
    with torch.no_grad():
        match = model(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1]
        similarity = model(**inputs, use_itm_head=False).itm_score[0]
    results = json.loads(report.read_text())["results"]
    assert [result["text"] for result in results] == texts
    for result, probability, cosine in zip(results, match.tolist(), similarity.tolist()):
        assert result["match_probability"] == pytest.approx(probability, abs=1e-6)
        assert result["itc_similarity"] == pytest.approx(cosine, abs=1e-6)
        assert f"{probability:.3f}" in out and result["text"] in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "{tmp}/missing.png", "--text", "a", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "does not exist"),
        (["segment", "{tmp}/notes.png", "--text", "a", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "is not a readable image"),
        (["segment", "{image}", "--points", "1,2,3,4", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "invalid point"),
        (["segment", "{image}", "--points", "1;2", "--model", "{joint}", "--output", "{tmp}/o.png"], "invalid point"),
        (["segment", "{image}", "--points", "1,2,2", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "label must be 1"),
        (["segment", "{image}", "--box", "1,2,3", "--model", "{joint}", "--output", "{tmp}/o.png"], "invalid box"),
        (["segment", "{image}", "--points", "500,2", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "lies outside image"),
        (["segment", "{image}", "--text", "a", "--model", "{tmp}/no-such-model", "--output", "{tmp}/o.png"],
         "--model .* does not exist"),
        (["segment", "{image}", "--text", "a", "--model", "{image}", "--output", "{tmp}/o.png"], "is a file"),
        (["segment", "{image}", "--text", "a", "--model", "{no_config}", "--output", "{tmp}/o.png"],
         "not an EsamBlip checkpoint"),
        (["segment", "{image}", "--text", "a", "--model", "{segmentation}", "--output", "{tmp}/o.png"],
         "needs the BLIP half"),
        (["itm", "{image}", "--text", "a", "--model", "{segmentation}"], "needs the BLIP half"),
        (["segment", "{image}", "--points", "1,2", "--model", "{matching}", "--output", "{tmp}/o.png"],
         "needs the EfficientSAM half"),
        (["segment", "{image}", "--text", "a", "--points", "1,2", "--model", "{joint}", "--output", "{tmp}/o.png"],
         "not both"),
        (["segment", "{image}", "--model", "{joint}", "--output", "{tmp}/o.png"], "give what to segment"),
        (["segment", "{image}", "--text", "a", "--model", "{joint}", "--output", "{tmp}/o.jpg"], "must end in .png"),
        (["segment", "{image}", "--text", "a", "--output", "{tmp}/o.png"], "required: --model"),
        (["everything", "{image}", "--model", "{joint}", "--output", "{tmp}/o.png", "--points-per-batch", "0"],
         "--points-per-batch must be >= 1"),
        (["draw", "{image}"], "invalid choice"),
        (["segment", "{image}", "--text", "a", "--model", "esam-blip-shape", "--output", "{tmp}/o.png"],
         r"--model esam-blip-shape is neither a folder nor a built-in model; did you mean 'esam-blip-shapes'\? "
         r"The built-in models are: esam-blip-shapes$"),
        (["itm", "{image}", "--text", "a", "--model", "{joint}", "--device", "quantum"],
         r"argument --device: invalid device 'quantum'"),
        (["export", "esam-blip-shape", "--output", "{tmp}/onnx"], "MODEL esam-blip-shape .* did you mean"),
        (["export", "{segmentation}", "--output", "{tmp}/o.png"], r"--output .*o\.png is not empty|is a file"),
        (["export", "{segmentation}", "--output", "{tmp}/onnx", "--opset", "5"], r"--opset must be in \[17, 20\]"),
    ],
)  # fmt: skip
def test_errors_are_one_line(checkpoints, image_path, tmp_path, capsys, argv, message):
    (tmp_path / "notes.png").write_text("not an image")
    if "export" in argv:
        (tmp_path / "o.png").write_text("a file where a folder should be")
    values = {"tmp": tmp_path, "image": image_path, **checkpoints}
    status, _, err = _run(capsys, *(arg.format(**values) for arg in argv))
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "o.png").exists() or "export" in argv


@pytest.fixture(scope="module")
def mask_checkpoint(tmp_path_factory) -> Path:
    """The tiny preset (both halves, random weights, synthetic vocabulary) with a mask encoder (32x32 mask prompts)."""
    folder = tmp_path_factory.mktemp("cli-masks") / "tiny-masks"
    processor = tiny_processor()
    prompt_encoder = {**tiny_sam_config_kwargs()["prompt_encoder_config"], "mask_prompts": True}
    model = EsamBlipForPromptableSegmentation(tiny_config(processor, prompt_encoder_config=prompt_encoder))
    randomize(model.model.sam)  # a new mask encoder's last layer is zero: the mask would change nothing
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mask_path(tmp_path_factory) -> Path:
    """A drawn mask of the scene's red square: 0 outside, 255 inside, mode L."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[10:30, 5:20] = 255
    path = tmp_path_factory.mktemp("masks") / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def test_mask_prompt_in_point_mode(mask_checkpoint, image_path, mask_path, tmp_path, capsys):
    report = tmp_path / "mask.json"
    status, _, _ = _run(
        capsys, "segment", image_path, "--points", "12,20", "--mask", mask_path, "--model", mask_checkpoint,
        "--output", tmp_path / "o.png", "--json", report,
    )  # fmt: skip
    assert status == 0
    image = Image.open(image_path).convert("RGB")
    processor = EsamBlipProcessor.from_pretrained(mask_checkpoint)
    model = EsamBlipForPromptableSegmentation.from_pretrained(mask_checkpoint).eval()
    inputs = processor(images=image, input_points=[[[[12, 20]]]], input_masks=[[np.asarray(Image.open(mask_path))]])
    with torch.no_grad():
        out = model(**inputs)
        plain = model(**processor(images=image, input_points=[[[[12, 20]]]]))
    best = int(out.iou_scores[0, 0].argmax())
    expected = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0, best]
    data = json.loads(report.read_text())
    assert data["mask_prompt"] == str(mask_path)
    assert data["best_candidate"] == best and data["mask_area"] == int(expected.sum())
    assert data["scores"] == pytest.approx(out.iou_scores[0, 0].tolist())
    assert data["scores"] != pytest.approx(plain.iou_scores[0, 0].tolist(), abs=1e-6)


def test_mask_prompt_in_text_mode_goes_with_each_text(mask_checkpoint, image_path, mask_path, tmp_path, capsys):
    report = tmp_path / "text.json"
    texts = ["the red square", "the blue circle"]
    status, _, _ = _run(
        capsys, "segment", image_path, "--text", texts[0], "--text", texts[1], "--mask", mask_path,
        "--model", mask_checkpoint, "--output", tmp_path / "o.png", "--json", report,
    )  # fmt: skip
    assert status == 0
    segmenter = pipeline(PROMPTABLE_TASK, model=str(mask_checkpoint), device="cpu")
    image = Image.open(image_path).convert("RGB")
    expected = segmenter(image, text=texts, input_masks=[np.asarray(Image.open(mask_path))])
    without = segmenter(image, text=texts)
    data = json.loads(report.read_text())
    assert data["mode"] == "text" and data["mask_prompt"] == str(mask_path)
    for summary, result, plain in zip(data["results"], expected, without, strict=True):
        assert summary["text"] == result["text"] and summary["mask_area"] == int(result["mask"].sum())
        assert summary["score"] == pytest.approx(result["score"])
        assert summary["score"] != pytest.approx(plain["score"], abs=1e-6)


def test_load_mask_accepts_binary_single_channel_pngs(image_path, mask_path, tmp_path):
    image = Image.open(image_path)
    drawn = np.asarray(Image.open(mask_path)) == 255
    Image.fromarray(drawn).save(tmp_path / "one-bit.png")
    Image.fromarray(drawn.astype(np.uint8)).save(tmp_path / "zero-one.png")
    processor = EsamBlipImageProcessor(sam_image_size=64, mask_input_size=32)
    expected = processor(image.convert("RGB"), input_masks=[[drawn]])["input_masks"]
    for path in (mask_path, tmp_path / "one-bit.png", tmp_path / "zero-one.png"):
        mask = load_mask(path, image)
        assert torch.equal(processor(image.convert("RGB"), input_masks=[[mask]])["input_masks"], expected), path


def _write_mask(path: Path, kind: str) -> None:
    binary = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    binary[10:30, 5:20] = 255
    if kind == "rgb":
        Image.fromarray(np.repeat(binary[..., None], 3, axis=2)).save(path)
    elif kind == "palette":
        Image.fromarray(binary).convert("P").save(path)
    elif kind == "gray-alpha":
        Image.fromarray(binary).convert("LA").save(path)
    elif kind == "soft":
        binary[0, :3] = (1, 128, 254)
        Image.fromarray(binary).save(path)
    elif kind == "small":
        Image.fromarray(binary[:20]).save(path)
    elif kind == "text":
        path.write_text("not an image")


@pytest.mark.parametrize(
    ("kind", "model", "message"),
    [
        ("rgb", "mask", r"--mask: .*m\.png has mode RGB \(R\+G\+B\); a mask must be single-channel"),
        ("palette", "mask", r"--mask: .* has mode P \(P\); a mask must be single-channel"),
        ("gray-alpha", "mask", r"--mask: .* has mode LA \(L\+A\)"),
        ("soft", "mask", r"--mask: .* is not binary: it holds the values \{0, 1, 128, 254, 255\}"),
        ("small", "mask", r"--mask: .* is 64x20 pixels but the image is 64x48"),
        ("text", "mask", r"--mask: .* is not a readable image"),
        ("missing", "mask", r"--mask: .*m\.png does not exist"),
        ("rgb", "joint", r"--mask: --model .* has no mask encoder"),
    ],
)
def test_bad_mask_prompts_are_one_line_errors(
    checkpoints, mask_checkpoint, image_path, tmp_path, capsys, kind, model, message
):
    path = tmp_path / "m.png"
    _write_mask(path, kind)
    folder = mask_checkpoint if model == "mask" else checkpoints["joint"]
    status, _, err = _run(
        capsys, "segment", image_path, "--points", "12,20", "--mask", path, "--model", folder,
        "--output", tmp_path / "o.png",
    )  # fmt: skip
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_real_process_on_the_converted_fixtures(joint_checkpoint, image_path, tmp_path):
    """The installed `esam-blip` script (or `python -m transformers_esam_blip.cli` from a source tree)."""
    script = shutil.which("esam-blip")
    command = [script] if script else [sys.executable, "-m", "transformers_esam_blip.cli"]
    output, report = tmp_path / "dog.png", tmp_path / "dog.json"
    argv = ["segment", image_path, "--text", "a red square", "--model", joint_checkpoint, "--output", output]
    completed = subprocess.run(
        [*command, *map(str, argv), "--json", str(report), "--device", "cpu"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    assert "'a red square'" in completed.stdout
    with Image.open(output) as picture:
        assert picture.format == "PNG" and picture.width == 2 * WIDTH and picture.height > HEIGHT
    result = json.loads(report.read_text())["results"][0]
    assert 0.0 <= result["match_probability"] <= 1.0 and result["points"]

    failed = subprocess.run(
        [*command, "itm", str(image_path)], check=False, capture_output=True, text=True, timeout=600
    )
    assert failed.returncode == 2 and failed.stderr.strip().startswith("error: ")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_demo_web_port_is_checked(capsys):
    status, _, err = _run(capsys, "demo", "--web", "--port", "0")
    assert status == 2 and "error: --port must be in [1, 65535], got 0" in err


def test_subcommands_delegate_to_the_module_commands(capsys):
    """`esam-blip train/evaluate/demo/convert` run the code of the `python -m` forms, with their arguments."""
    parser = build_parser()
    cases = {
        "train": (["--config", "tiny", "--dataset", "synthetic", "--output_dir", "out"], training.run, "--freeze"),
        "evaluate": ([], evaluation.run, "--breakdown"),
        "demo": ([], demo.run, "--num_scenes"),
        "convert": (["--output_dir", "out"], conversion.run, "--efficientsam"),
        "export": (["esam-blip-shapes", "--output", "out"], run_export, "--opset"),
        "annotate": (["images", "--output_dir", "out", "--everything"], annotate_command.run, "--text_column"),
    }
    for name, (argv, run, option) in cases.items():
        assert parser.parse_args([name, *argv]).run is run, name
        status, out, _ = _run(capsys, name, "--help")
        assert status == 0 and f"esam-blip {name}" in out and option in out and "--debug" in out, name


@pytest.mark.parametrize(
    ("command", "module_main", "argv"),
    [
        ("train", training.main, ["--config", "tiny", "--dataset", "synthetic", "--output_dir", "{tmp}", "--max_steps", "0"]),
        ("evaluate", evaluation.main, ["--num_scenes", "0"]),
        ("evaluate", evaluation.main, ["--model", "esam-blip-shape"]),
        ("demo", demo.main, ["--model", "{tmp}/missing"]),
        ("convert", conversion.main, ["--output_dir", "{tmp}/out"]),
    ],
)  # fmt: skip
def test_subcommand_and_module_form_report_the_same_error(tmp_path, capsys, command, module_main, argv):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert module_main(argv) == 2
    module_err = capsys.readouterr().err
    status, _, err = _run(capsys, command, *argv)
    assert status == 2 and err == module_err and err.startswith("error: ") and len(err.splitlines()) == 1


def test_debug_shows_the_traceback(image_path, tmp_path, capsys):
    output = str(tmp_path / "o.png")
    argv = ["segment", str(image_path), "--text", "a", "--model", "esam-blip-shape", "--output", output]
    assert main(argv) == 2
    with pytest.raises(CliError, match="did you mean 'esam-blip-shapes'"):
        main([*argv, "--debug"])
    with pytest.raises(CliError, match="--num_scenes must be >= 1"):
        main(["--debug", "evaluate", "--num_scenes", "0"])  # before the sub-command too
    with pytest.raises(CliError, match="--num_scenes must be >= 1"):
        evaluation.main(["--num_scenes", "0", "--debug"])


@pytest.mark.slow
def test_export_writes_the_onnx_files(checkpoints, tmp_path, capsys):
    output = tmp_path / "onnx"
    status, out, _ = _run(capsys, "export", checkpoints["segmentation"], "--output", output)
    assert status == 0
    written = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert {"image_encoder", "prompt_decoder", "config"} <= written.keys()
    assert all(Path(path).exists() for path in written.values())
    status, _, err = _run(capsys, "export", checkpoints["segmentation"], "--output", output)
    assert status == 2 and "--overwrite" in err
    assert _run(capsys, "export", checkpoints["segmentation"], "--output", output, "--overwrite")[0] == 0


REPO = Path(__file__).resolve().parents[1]
_SCRIPT = shutil.which("esam-blip")
ESAM_BLIP = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "transformers_esam_blip.cli"]
PYTHON_M = [sys.executable, "-m"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([*ESAM_BLIP, "segment", "{image}", "--text", "a", "--model", "esam-blip-shape", "--output", "{tmp}/o.png"],
         "did you mean 'esam-blip-shapes'"),
        ([*ESAM_BLIP, "itm", "{image}", "--text", "a", "--model", "esam-blip-shapes", "--device", "quantum"],
         "argument --device: invalid device 'quantum'"),
        ([*ESAM_BLIP, "everything", "{tmp}/missing.png", "--model", "esam-blip-shapes", "--output", "{tmp}/o.png"],
         "image .*missing.png does not exist"),
        ([*ESAM_BLIP, "train", "--config", "tiny", "--dataset", "synthetic", "--output_dir", "{tmp}/out",
          "--max_steps", "0"], "--max_steps must be >= 1"),
        ([*ESAM_BLIP, "train", "--model", "esam-blip-shape", "--dataset", "synthetic", "--output_dir", "{tmp}/out"],
         "did you mean 'esam-blip-shapes'"),
        ([*ESAM_BLIP, "evaluate", "--model", "esam-blip-shape"], "did you mean 'esam-blip-shapes'"),
        ([*ESAM_BLIP, "demo", "--num_scenes", "0"], "--num_scenes must be >= 1"),
        ([*ESAM_BLIP, "convert", "--efficientsam", "{tmp}/nope.pt", "--output_dir", "{tmp}/o"],
         "--efficientsam: no such file"),
        ([*ESAM_BLIP, "export", "esam-blip-shape", "--output", "{tmp}/onnx"], "did you mean 'esam-blip-shapes'"),
        ([*ESAM_BLIP, "frobnicate"], "invalid choice: 'frobnicate'"),
        ([*PYTHON_M, "transformers_esam_blip.training", "--config", "tiny", "--dataset", "synthetic",
          "--output_dir", "{tmp}/out", "--learning_rate", "0"], "--learning_rate must be > 0"),
        ([*PYTHON_M, "transformers_esam_blip.evaluation", "--num_scenes", "0"], "--num_scenes must be >= 1"),
        ([*PYTHON_M, "transformers_esam_blip.demo", "--model", "esam-blip-shape"], "did you mean 'esam-blip-shapes'"),
        ([sys.executable, str(REPO / "conversion" / "convert_esam_blip.py"), "--output_dir", "{tmp}/o"],
         "nothing to convert"),
    ],
    ids=[
        "segment-model-typo", "itm-device", "everything-missing-image", "train-max-steps", "train-model-typo",
        "evaluate-model-typo", "demo-num-scenes", "convert-missing-file", "export-model-typo", "unknown-command",
        "python-m-training", "python-m-evaluation", "python-m-demo", "convert-script",
    ],
)  # fmt: skip
def test_real_processes_report_one_error_line(image_path, tmp_path, command, message):
    """Each entry point, run as a real process on a broken input: one `error:` line, status 2, no traceback."""
    argv = [arg.format(image=image_path, tmp=tmp_path) for arg in command]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
