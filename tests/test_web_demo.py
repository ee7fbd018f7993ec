"""The interactive session and the web demo: the session on tiny random models, the app's handlers without a browser,
and the real app in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium).

The browser test fails (does not skip) when Gradio, Selenium, Chromium or its driver is missing: CI installs them
(`apt-get install -y chromium chromium-driver`, `pip install -e ".[tests,demo]"`). Its screenshot is kept under the
test's temporary folder and, when `ESAM_BLIP_ARTIFACTS` names a folder, copied there.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_esam_blip import EsamBlipForPromptableSegmentation, web_demo
from transformers_esam_blip.best_mask import select_best_masks
from transformers_esam_blip.builtin_presets import tiny_config, tiny_processor
from transformers_esam_blip.data import generate_scene, scene_rng
from transformers_esam_blip.interactive import EsamBlipInteractiveSession, load_image
from transformers_esam_blip.mask_generator import EsamBlipMaskGenerator
from transformers_esam_blip.web_demo import BACKGROUND, BOX_CORNER, FOREGROUND, ClickPrompts, EsamBlipWebDemo

SEED = 3
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The scene of the browser test and the object clicked and named in it: the blue triangle (43 px), not the largest
# object, so a model that ignores its prompts and returns the largest object fails.
BROWSER_SCENE = (7, 0)
BROWSER_OBJECT = 0
# Seconds the browser waits for the page, the upload's encoding and each segmentation (CPU, a loaded machine).
BROWSER_WAIT = 120


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def scene():
    return generate_scene(scene_rng(SEED, 0))


def _model(processor, **overrides) -> EsamBlipForPromptableSegmentation:
    torch.manual_seed(0)
    return EsamBlipForPromptableSegmentation(tiny_config(processor, **overrides)).eval()


@pytest.fixture(scope="module")
def learned_model(processor):
    return _model(processor, prompter_source="text")


@pytest.fixture
def session(learned_model, processor, scene):
    session = EsamBlipInteractiveSession(learned_model, processor)
    session.set_image(scene[0])
    return session


def _centre(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.mean()), float(rows.mean())]


# The session.


def test_one_encoding_serves_every_prompt(learned_model, processor, scene, monkeypatch):
    calls = []
    original = learned_model.get_image_embeddings
    monkeypatch.setattr(learned_model, "get_image_embeddings", lambda *a: calls.append(1) or original(*a))
    session = EsamBlipInteractiveSession(learned_model, processor)
    image, objects = scene
    session.set_image(image)
    session.segment(points=[_centre(objects[0]["mask"])])
    session.segment(box=objects[0]["bbox"], texts=["the red circle", "the blue square"])
    session.segment_everything(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    assert len(calls) == 1 and session.num_encodings == 1
    session.set_image(np.flipud(image).copy())  # a new image is encoded once more
    assert len(calls) == 2 and session.num_encodings == 2


def test_point_query_matches_a_full_forward(session, learned_model, processor, scene):
    image, objects = scene
    points, labels = [_centre(objects[0]["mask"]), [5.0, 5.0]], [1, 0]
    [result] = session.segment(points=points, point_labels=labels)
    inputs = processor(images=image, input_points=[[points]], input_labels=[[labels]], return_tensors="pt")
    with torch.no_grad():
        out = learned_model(**inputs)
    logits, score = select_best_masks(out.pred_masks[0], out.iou_scores[0])
    expected = processor.post_process_masks([logits], inputs["original_sizes"])[0][0].numpy()
    assert result.mask.dtype == bool and result.mask.shape == image.shape[:2]
    np.testing.assert_array_equal(result.mask, expected)
    assert result.score == pytest.approx(score.item(), abs=1e-5)
    assert result.text is None and result.match_probability is None and result.heatmap is None
    assert result.points == points and result.point_labels == labels


def test_texts_are_queries_with_the_points_and_box(session, learned_model, processor, scene):
    image, objects = scene
    box = objects[0]["bbox"]
    flipped = [box[2], box[3], box[0], box[1]]  # opposite corners, the other way round
    results = session.segment(points=[[10, 12]], box=flipped, texts=["the red circle", "the zzqx square"])
    assert [result.text for result in results] == ["the red circle", "the zzqx square"]
    texts = ["the red circle", "the zzqx square"]
    inputs = processor(images=image, text=texts, return_tensors="pt")
    prompts = processor.image_processor.preprocess_prompts(
        inputs["original_sizes"].expand(2, 2), input_points=[[[[10, 12]]]] * 2, input_boxes=[[box]] * 2
    )
    with torch.no_grad():
        out = learned_model(**inputs, **prompts)  # the image encoded with the texts, in one call
    for index, result in enumerate(results):
        assert result.match_probability == pytest.approx(out.itm_probability[index].item(), abs=1e-5)
        assert result.score == pytest.approx(out.iou_scores[index, 0].max().item(), abs=1e-5)
        grid = learned_model.config.vision_config.image_size // learned_model.config.vision_config.patch_size
        assert result.heatmap.shape == (grid, grid) and np.isfinite(result.heatmap).all()
        assert result.points == [[10.0, 12.0]] and result.point_labels == [1]
    assert results[0].unknown_words == [] and results[1].unknown_words == ["zzqx"]
    assert results[1].is_match is False  # an unknown word is never a match


def test_gradcam_text_prompts_report_their_points(processor, scene):
    session = EsamBlipInteractiveSession(_model(processor), processor)  # no prompter: Grad-CAM points
    session.set_image(scene[0])
    [result] = session.segment(texts="the red circle", text_prompt_mode="gradcam")
    height, width = scene[0].shape[:2]
    assert result.points and len(result.points) == len(result.point_labels)
    assert all(0 <= x <= width and 0 <= y <= height for x, y in result.points)
    assert set(result.point_labels) <= {0, 1} and result.heatmap is not None


def test_everything_reuses_the_encoding_and_sorts_by_area(session, learned_model, processor, scene):
    found = session.segment_everything(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    direct = EsamBlipMaskGenerator(
        learned_model,
        processor.image_processor,
        points_per_side=4,
        grid="coarse_to_fine",
        pred_iou_thresh=0,
        stability_score_thresh=0,
        progress=False,
    )(Image.fromarray(scene[0]))
    assert len(found.masks) == len(direct["masks"]) > 0
    areas = found.masks.sum(axis=(1, 2))
    assert (np.diff(areas) <= 0).all()
    assert sorted(map(int, areas)) == sorted(int(mask.sum()) for mask in direct["masks"])
    assert found.boxes.shape == (len(found.masks), 4) and found.scores.shape == (len(found.masks),)


def test_everything_with_no_mask_is_empty(session):
    found = session.segment_everything(points_per_side=4, pred_iou_thresh=1.0)
    assert found.masks.shape == (0, *session.image.shape[:2]) and found.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "Nothing to segment"),
        ({"points": [[1, 2]], "point_labels": [2]}, "`point_labels` must be 1"),
        ({"points": [[1, 2]], "point_labels": [1, 0]}, "one label per point"),
        ({"points": [[1, 2]] * 7}, "at most 6 points"),
        ({"points": [[1, 2]] * 5, "box": [0, 0, 9, 9]}, "two of them taken by a box"),
        ({"box": [0, 0, 9]}, "`box` must be 4 finite numbers"),
        ({"texts": ["  "]}, "`texts[0]` must be a non-empty string"),
        ({"points": [[1, 2]], "text_prompt_mode": "gradcam"}, "pass it with `texts`"),
        ({"points": [[1000, 2]]}, "input_points"),
    ],
)
def test_bad_prompts_are_clear_errors(session, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        session.segment(**kwargs)


def test_no_image_yet_and_a_wrong_model(processor):
    session = EsamBlipInteractiveSession(_model(processor), processor)
    with pytest.raises(ValueError, match="No image yet"):
        session.segment(points=[[1, 1]])
    with pytest.raises(ValueError, match="No image yet"):
        session.segment_everything()
    with pytest.raises(TypeError, match="EsamBlipForPromptableSegmentation"):
        EsamBlipInteractiveSession(object(), processor)


def test_load_image_accepts_pictures_and_names_a_bad_file(tmp_path, scene):
    image = scene[0]
    Image.fromarray(image).save(tmp_path / "scene.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "scene.png")), image)
    np.testing.assert_array_equal(np.asarray(load_image(image[..., 0])), np.repeat(image[..., :1], 3, axis=-1))
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match=r"notes.txt is not an image") as error:
        load_image(str(tmp_path / "notes.txt"))
    assert str(tmp_path) not in str(error.value)  # no server paths in what the page shows
    with pytest.raises(ValueError, match="is not a file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="uint8"):
        load_image(image.astype(np.float32))
    with pytest.raises(TypeError, match="a path, a PIL.Image or a numpy array"):
        load_image(3)


# The app's handlers, without Gradio.


def test_clicks_make_points_and_two_corners_make_a_box():
    prompts, box = ClickPrompts().click(5, 6, FOREGROUND)
    prompts, box = prompts.click(7, 8, BACKGROUND)
    assert prompts.points == ((5, 6), (7, 8)) and prompts.labels == (1, 0) and box is None
    prompts, box = prompts.click(40, 10, BOX_CORNER)
    assert prompts.corner == (40, 10) and box is None
    prompts, box = prompts.click(20, 30, BOX_CORNER)
    assert prompts.corner is None and box == [20, 10, 40, 30]
    assert prompts.describe() == "1 foreground and 1 background point(s)"
    with pytest.raises(ValueError, match="click mode"):
        prompts.click(1, 1, "lasso")


def test_box_and_texts_fields():
    assert web_demo.parse_box(" 1, 2 3,4 ") == [1, 2, 3, 4] and web_demo.parse_box("") is None
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,nan"):
        with pytest.raises(ValueError, match="four numbers"):
            web_demo.parse_box(bad)
    assert web_demo.parse_texts("the red circle\n\n  the blue square \n") == ["the red circle", "the blue square"]


@pytest.fixture
def app_demo(learned_model, processor):
    return EsamBlipWebDemo(learned_model, processor, "tiny")


def test_non_image_upload_is_an_error_message(app_demo, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    view = app_demo.upload(str(tmp_path / "notes.txt"), None)
    assert view.failed and "notes.txt is not an image" in view.status and view.status.startswith("**Error:**")
    assert {"session", "canvas", "result"} <= set(view.cleared)
    view = app_demo.upload(None, None)  # the file removed: back to the start
    assert view.prompts == ClickPrompts() and view.box == "" and {"session", "canvas"} <= set(view.cleared)


def test_upload_click_and_segment(app_demo, tmp_path, scene):
    image, objects = scene
    Image.fromarray(image).save(tmp_path / "scene.png")
    view = app_demo.upload(str(tmp_path / "scene.png"), None)
    session = view.session
    assert not view.failed and "encoded once" in view.status and view.canvas.size == image.shape[1::-1]

    point = _centre(objects[0]["mask"])
    view = app_demo.click(session, ClickPrompts(), point, FOREGROUND, "", "", None)
    assert view.prompts.points == (tuple(point),) and view.result.size == image.shape[1::-1]
    assert view.table[0][0] == "points / box" and "1 query segmented" in view.status

    prompts = view.prompts
    view = app_demo.click(session, prompts, (2, 3), BOX_CORNER, "", "", None)
    assert view.prompts.corner == (2, 3) and "opposite corner" in view.status
    view = app_demo.click(session, view.prompts, (60, 70), BOX_CORNER, "", "the red circle\nthe zzqx", "learned")
    assert view.box == "2,3,60,70" and view.prompts.corner is None
    assert [row[0] for row in view.table] == ["the red circle", "the zzqx"]
    assert view.table[1][3] == "unknown words: zzqx" and "does not know the word(s) zzqx" in view.status
    assert len(view.heatmaps) == 2 and view.heatmaps[0][0].size == (2 * image.shape[1], view.heatmaps[0][0].height)
    assert session.num_encodings == 1


def test_refused_clicks_are_not_kept(app_demo, tmp_path, scene):
    Image.fromarray(scene[0]).save(tmp_path / "scene.png")
    session = app_demo.upload(str(tmp_path / "scene.png"), None).session
    prompts = ClickPrompts(points=((1.0, 1.0),) * 6, labels=(1,) * 6)
    view = app_demo.click(session, prompts, (9, 9), FOREGROUND, "", "", None)
    assert view.failed and "at most 6 points" in view.status and view.prompts is None  # the state stays as it was
    view = app_demo.segment(session, ClickPrompts(), "1,2,x,4", "", None)
    assert view.failed and "four numbers" in view.status
    assert (
        app_demo.segment(None, ClickPrompts(), "", "the red circle", None).status == "**Error:** upload an image first."
    )


def test_everything_and_clear(app_demo, tmp_path, scene):
    Image.fromarray(scene[0]).save(tmp_path / "scene.png")
    session = app_demo.upload(str(tmp_path / "scene.png"), None).session
    view = app_demo.everything(session, 4, 0.0, 0.0)
    assert view.table and all(row[0].startswith("mask ") for row in view.table) and view.heatmaps == []
    assert view.result.size == scene[0].shape[1::-1]
    assert "No mask passed" in app_demo.everything(session, 4, 1.0, 0.0).status
    view = app_demo.clear(session)
    assert view.prompts == ClickPrompts() and view.box == "" and {"result", "table"} <= set(view.cleared)


def test_command_line_errors(capsys, tmp_path):
    assert web_demo.main(["--port", "0"]) == 2
    assert "--port must be in [1, 65535]" in capsys.readouterr().err
    assert web_demo.main(["--model", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "missing" in error


@pytest.mark.slow
def test_importing_the_package_does_not_import_gradio():
    code = (
        "import sys, transformers_esam_blip, transformers_esam_blip.web_demo, transformers_esam_blip.interactive; "
        "assert 'gradio' not in sys.modules, 'gradio was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


# The real app in a real browser.


def _require_browser_tools():
    """Gradio, Selenium, Chromium and its driver, or a failure naming what to install."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.fail(
            f"The web demo's browser test needs Debian's Chromium and its driver; missing {missing}. Install them as "
            "root: apt-get install -y chromium chromium-driver"
        )
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            pytest.fail(f"The web demo's browser test needs {module}: pip install -e '.[demo]'")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((web_demo.HOST, 0))
        return probe.getsockname()[1]


def _click_image_pixel(driver, image, x: float, y: float) -> None:
    """Click the displayed `<img>` where its pixel `(x, y)` is drawn (the picture is scaled and centred in the box)."""
    from selenium.webdriver.common.action_chains import ActionChains

    left, top = driver.execute_script(
        """
        const img = arguments[0], x = arguments[1], y = arguments[2];
        const box = img.getBoundingClientRect();
        const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight, 1);
        const dx = (box.width - img.naturalWidth * scale) / 2, dy = (box.height - img.naturalHeight * scale) / 2;
        return [dx + (x + 0.5) * scale - box.width / 2, dy + (y + 0.5) * scale - box.height / 2];
        """,
        image,
        x,
        y,
    )
    ActionChains(driver).move_to_element_with_offset(image, int(round(left)), int(round(top))).click().perform()


def _image_at(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(BytesIO(response.read())).convert("RGB"))


@pytest.mark.slow
def test_the_app_in_a_browser(tmp_path):
    _require_browser_tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.perf_counter()
    image, objects = generate_scene(scene_rng(*BROWSER_SCENE))
    target = objects[BROWSER_OBJECT]
    text = f"the {target['colour']} {target['shape']}"
    Image.fromarray(image).save(tmp_path / "scene.png")
    (tmp_path / "notes.txt").write_text("not a picture")

    app = web_demo.build_app(EsamBlipWebDemo.from_pretrained("esam-blip-shapes"))
    url = web_demo.launch(app, _free_port(), block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    screenshot = tmp_path / "web_demo.png"
    try:
        wait = WebDriverWait(driver, BROWSER_WAIT)
        driver.get(url)

        def status_has(words: str):
            return lambda _: words in driver.find_element(By.ID, "status").text

        upload = wait.until(expected.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        upload.send_keys(str(tmp_path / "notes.txt"))
        wait.until(status_has("notes.txt is not an image"))
        assert "Error" in driver.find_element(By.ID, "status").text

        # The server survived the bad file: remove it and upload the scene.
        driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
        upload = wait.until(expected.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        upload.send_keys(str(tmp_path / "scene.png"))
        wait.until(status_has("encoded once"))
        canvas = wait.until(expected.visibility_of_element_located((By.CSS_SELECTOR, "#canvas img")))
        wait.until(lambda _: driver.execute_script("return arguments[0].naturalWidth", canvas) == image.shape[1])

        x, y = _centre(target["mask"])
        _click_image_pixel(driver, canvas, x, y)
        wait.until(status_has("1 query segmented"))
        assert "1 foreground" in driver.find_element(By.ID, "status").text

        driver.find_element(By.CSS_SELECTOR, "#texts textarea").send_keys(text)
        driver.find_element(By.ID, "segment").click()
        wait.until(status_has("1 text(s)"))
        result = wait.until(expected.visibility_of_element_located((By.CSS_SELECTOR, "#result img")))
        wait.until(lambda _: text in driver.find_element(By.ID, "scores").text)
        scores = driver.find_element(By.ID, "scores").text
        wait.until(expected.visibility_of_element_located((By.CSS_SELECTOR, "#heatmaps img")))
        driver.save_screenshot(str(screenshot))

        drawn = _image_at(result.get_attribute("src"))
        assert drawn.shape == image.shape
        changed = (drawn != image).any(axis=-1)  # the mask's outline and stripes, and the clicked point
        x1, y1, x2, y2 = target["bbox"]
        margin = 4
        inside = np.zeros_like(changed)
        inside[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = True
        assert changed.sum() > 0.1 * target["mask"].sum(), "the result image shows no mask"
        assert changed[inside].sum() / changed.sum() > 0.95, (
            f"the mask drawn for {text!r} is not where the object is: {changed[~inside].sum()} changed pixels lie "
            f"outside its box {target['bbox']}"
        )
        assert "match" in scores

        driver.find_element(By.ID, "everything").click()  # the automatic masks, from the same embeddings
        wait.until(status_has("Everything:"))
    finally:
        if not screenshot.exists():
            driver.save_screenshot(str(screenshot))
        driver.quit()
        app.close()
        artifacts = os.environ.get("ESAM_BLIP_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    print(f"browser test: {time.perf_counter() - started:.1f} s, screenshot {screenshot}")
