"""`pipeline("promptable-segmentation")`: the best mask per query from points, boxes, masks and texts; errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sam_config
from PIL import Image
from test_mask_prompts_processing import mask_prompt_sam_config, randomize
from transformers import pipeline

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipImageProcessor, EsamBlipProcessor
from transformers_esam_blip.best_mask import select_best_masks
from transformers_esam_blip.builtin import builtin_model_path
from transformers_esam_blip.data import generate_scene, scene_rng
from transformers_esam_blip.pipelines import PROMPTABLE_TASK, TASK, PromptableSegmentationPipeline

HEIGHT, WIDTH = 40, 56
POINTS = [[[10, 12]], [[40, 30], [20, 8]]]
LABELS = [[1], [1, 0]]
BOXES = [[2, 3, 30, 25], [20, 10, 50, 38]]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A segmentation-only tiny random checkpoint with a mask encoder (32x32 mask prompts), no tokenizer."""
    folder = tmp_path_factory.mktemp("promptable") / "tiny-masks"
    randomize(EsamBlipForPromptableSegmentation(mask_prompt_sam_config())).save_pretrained(folder)
    EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64, mask_input_size=32)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(tiny_folder) -> PromptableSegmentationPipeline:
    return pipeline(PROMPTABLE_TASK, model=str(tiny_folder), device="cpu")


@pytest.fixture(scope="module")
def builtin_segmenter() -> PromptableSegmentationPipeline:
    return pipeline(PROMPTABLE_TASK, model=str(builtin_model_path("esam-blip-shapes")), device="cpu")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))


@pytest.fixture
def count_calls(segmenter):
    calls = []
    handle = segmenter.model.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def model_reference(segmenter, image, multimask_output: bool = True, **prompts) -> tuple:
    """The model called directly: per query the best candidate at the original size, its score and low-res logits."""
    inputs = segmenter.processor(images=image, **prompts)
    with torch.no_grad():
        out = segmenter.model(**inputs, multimask_output=multimask_output)
    masks = segmenter.processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
    best = out.iou_scores[0].argmax(-1)
    low_res, scores = select_best_masks(out.pred_masks, out.iou_scores)
    return masks[torch.arange(len(best)), best], scores[0], low_res[0]


def test_task_is_registered_and_loads_a_segmentation_only_checkpoint(segmenter) -> None:
    assert isinstance(segmenter, PromptableSegmentationPipeline)
    assert isinstance(segmenter.processor, EsamBlipProcessor) and segmenter.processor.tokenizer is None


def test_points_and_boxes_give_the_best_mask_per_query(segmenter, image, count_calls) -> None:
    results = segmenter(image, input_points=POINTS, input_labels=LABELS, input_boxes=BOXES)
    assert len(results) == 2 and len(count_calls) == 1
    masks, scores, low_res = model_reference(
        segmenter, image, input_points=[POINTS], input_labels=[LABELS], input_boxes=[BOXES]
    )
    for q, result in enumerate(results):
        assert set(result) == {"mask", "score", "low_res_logits"}
        assert result["mask"].dtype == torch.bool and tuple(result["mask"].shape) == (HEIGHT, WIDTH)
        assert torch.equal(result["mask"], masks[q])
        assert result["score"] == pytest.approx(scores[q].item())
        assert torch.equal(result["low_res_logits"], low_res[q]) and tuple(low_res[q].shape) == (32, 32)


def test_single_mask_output_and_threshold(segmenter, image) -> None:
    single = segmenter(image, input_boxes=[BOXES[0]], multimask_output=False)[0]
    masks, scores, _ = model_reference(segmenter, image, multimask_output=False, input_boxes=[[BOXES[0]]])
    assert torch.equal(single["mask"], masks[0]) and single["score"] == pytest.approx(scores[0].item())
    assert segmenter(image, input_boxes=[BOXES[0]], mask_threshold=-1e9)[0]["mask"].all()
    assert not segmenter(image, input_boxes=[BOXES[0]], mask_threshold=1e9)[0]["mask"].any()


def test_mask_prompts_and_iterative_refinement(segmenter, image) -> None:
    drawn = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    drawn[5:25, 3:30] = 255
    with_mask = segmenter(image, input_points=[POINTS[0]], input_masks=[drawn])[0]
    masks, scores, _ = model_reference(segmenter, image, input_points=[[POINTS[0]]], input_masks=[[drawn]])
    assert torch.equal(with_mask["mask"], masks[0]) and with_mask["score"] == pytest.approx(scores[0].item())
    plain = segmenter(image, input_points=[POINTS[0]])[0]
    assert with_mask["score"] != pytest.approx(plain["score"], abs=1e-7)
    # SAM's loop: the previous best low-resolution logits prompt the next call, with one more point.
    refined = segmenter(
        image, input_points=[POINTS[1]], input_labels=[LABELS[1]], input_masks=[plain["low_res_logits"]]
    )
    masks, scores, _ = model_reference(
        segmenter,
        image,
        input_points=[[POINTS[1]]],
        input_labels=[[LABELS[1]]],
        input_masks=[[plain["low_res_logits"]]],
    )
    assert torch.equal(refined[0]["mask"], masks[0]) and refined[0]["score"] == pytest.approx(scores[0].item())


def test_call_forms(segmenter, image, tmp_path, count_calls) -> None:
    path = tmp_path / "image.png"
    image.save(path)
    from_path = segmenter(str(path), input_points=[POINTS[0]])
    from_dict = segmenter({"image": image, "input_points": [POINTS[0]]})
    assert torch.equal(from_path[0]["mask"], from_dict[0]["mask"])
    small = image.resize((30, 20))
    listed = segmenter([{"image": image, "input_boxes": BOXES}, {"image": small, "input_points": [[[5, 5]]]}])
    assert [len(per_image) for per_image in listed] == [2, 1]
    assert tuple(listed[1][0]["mask"].shape) == (20, 30)
    assert len(count_calls) == 4  # one call per image, whatever the number of queries


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("image",), {}, ValueError, "needs a prompt: `text`, `input_points`"),
        (("image",), {"input_labels": [[1]]}, ValueError, "needs a prompt"),
        (({"image": "image", "points": [[[1, 1]]]},), {}, ValueError, r"Unknown input keys \['points'\]"),
        (({"input_points": [[[1, 1]]]},), {}, ValueError, r'a dict \{"image": \.\.\.'),
        (({"image": "image"},), {"input_points": [[[1, 1]]]}, TypeError, "in the input dict or as keywords"),
        ((["image", "image"],), {"input_points": [[[1, 1]]]}, TypeError, "go with one image; for several images"),
        (([],), {}, ValueError, "empty list"),
        (("image",), {"input_points": [[[1, 1]]], "batch_size": 2}, ValueError, "`batch_size` must be 1"),
        (("image",), {"input_points": [[[1, 1]]], "multimask_output": 1}, TypeError, "`multimask_output` must be a"),
        (("image",), {"input_points": [[[1, 1]]], "mask_treshold": 0.5}, TypeError, r"\['mask_treshold'\]"),
        (("image",), {"text": "a red circle"}, ValueError, "texts need a checkpoint with the BLIP half"),
        (("image",), {"input_points": [[[100, 1]]]}, ValueError, r"`input_points\[0\]\[0\]\[0\]` .* lies outside"),
        (("image",), {"input_points": [[[1, 1]]], "input_masks": [np.ones((3, 3))]}, ValueError, r"has size \(3, 3\)"),
    ],
)
def test_bad_calls(segmenter, image, count_calls, args, kwargs, error, match) -> None:
    def resolve(value):
        if value == "image":
            return image
        if isinstance(value, dict):
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list) and value and all(item == "image" for item in value):
            return [image] * len(value)
        return value

    with pytest.raises(error, match=match):
        segmenter(*[resolve(arg) for arg in args], **kwargs)
    assert not count_calls


def test_a_model_without_mask_encoder_names_input_masks(image) -> None:
    model = EsamBlipForPromptableSegmentation(tiny_sam_config())
    processor = EsamBlipProcessor(EsamBlipImageProcessor(sam_image_size=64, mask_input_size=32))
    plain = pipeline(PROMPTABLE_TASK, model=model.eval(), processor=processor, device="cpu")
    with pytest.raises(ValueError, match="`input_masks` needs a model with a mask encoder"):
        plain(image, input_points=[POINTS[0]], input_masks=[np.ones((HEIGHT, WIDTH), dtype=bool)])


def test_save_and_reload(segmenter, image, tmp_path) -> None:
    segmenter.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "processor_config.json").is_file()
    reloaded = pipeline(
        PROMPTABLE_TASK, model=str(tmp_path / "saved"), pipeline_class=PromptableSegmentationPipeline, device="cpu"
    )
    expected = segmenter(image, input_boxes=BOXES)
    for got, want in zip(reloaded(image, input_boxes=BOXES), expected, strict=True):
        assert torch.equal(got["mask"], want["mask"]) and got["score"] == pytest.approx(want["score"])


# ---------------------------------------------------------------------------------------- the built-in model


@pytest.fixture(scope="module")
def scene() -> tuple[Image.Image, list[float], list[str]]:
    """A fresh scene, the box of its first object, and texts for that object and an absent one."""
    image, objects = generate_scene(scene_rng(99, 0))
    first = objects[0]
    present = f"the {first['colour']} {first['shape']}"
    absent = next(f"the {c} {s}" for c in ("green", "red") for s in ("circle", "square") if f"the {c} {s}" != present)
    return Image.fromarray(image), [float(v) for v in first["bbox"]], [present, absent]


def test_builtin_points_boxes_and_texts(builtin_segmenter, scene) -> None:
    picture, box, texts = scene
    by_box = builtin_segmenter(picture, input_boxes=[box])
    assert len(by_box) == 1 and tuple(by_box[0]["mask"].shape) == (picture.height, picture.width)
    masks, scores, _ = model_reference(builtin_segmenter, picture, input_boxes=[[box]])
    assert torch.equal(by_box[0]["mask"], masks[0]) and by_box[0]["score"] == pytest.approx(scores[0].item())

    by_text = builtin_segmenter(picture, text=texts)
    expected = pipeline(TASK, model=builtin_segmenter.model, processor=builtin_segmenter.processor, device="cpu")(
        picture, texts
    )
    assert [result["text"] for result in by_text] == texts
    for got, want in zip(by_text, expected, strict=True):
        assert set(got) == set(want) | {"low_res_logits"}
        assert torch.equal(got["mask"], want["mask"]) and got["score"] == pytest.approx(want["score"])
        assert got["match_probability"] == pytest.approx(want["match_probability"])
        assert got["is_match"] == want["is_match"] and got["unknown_words"] == want["unknown_words"]


def test_builtin_text_with_a_box_prompts_every_text(builtin_segmenter, scene) -> None:
    picture, box, texts = scene
    results = builtin_segmenter(picture, text=texts, input_boxes=[box])
    processor, model = builtin_segmenter.processor, builtin_segmenter.model
    inputs = processor(images=picture, text=texts, input_boxes=[[box]])
    inputs["input_boxes"] = inputs["input_boxes"].expand(len(texts), -1, -1)
    with torch.no_grad():
        out = model(**inputs)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], iou_scores=out.iou_scores, best=True)
    for t, result in enumerate(results):
        assert torch.equal(result["mask"], masks[t][0])
        assert result["score"] == pytest.approx(out.iou_scores[t, 0].max().item())
    with pytest.raises(ValueError, match="With `text`, `input_boxes` must hold one query"):
        builtin_segmenter(picture, text=texts, input_boxes=[box, box])


def test_builtin_mask_prompts_refine_points_and_texts(builtin_segmenter, scene) -> None:
    """The built-in model has a mask encoder: a box's best low-resolution mask goes back in, alone and with texts."""
    picture, box, texts = scene
    assert builtin_segmenter.model.config.prompt_encoder_config.mask_prompts
    first = builtin_segmenter(picture, input_boxes=[box])[0]
    assert tuple(first["low_res_logits"].shape) == (64, 64)
    refined = builtin_segmenter(picture, input_boxes=[box], input_masks=[first["low_res_logits"]])[0]
    masks, scores, _ = model_reference(
        builtin_segmenter, picture, input_boxes=[[box]], input_masks=[[first["low_res_logits"]]]
    )
    assert torch.equal(refined["mask"], masks[0]) and refined["score"] == pytest.approx(scores[0].item())

    drawn = first["mask"].numpy()  # a binary mask at the image's size, resized by area
    results = builtin_segmenter(picture, text=texts, input_masks=[drawn])
    processor, model = builtin_segmenter.processor, builtin_segmenter.model
    inputs = processor(images=picture, text=texts, input_masks=[[drawn]])
    inputs["input_masks"] = inputs["input_masks"].expand(len(texts), -1, -1, -1)
    with torch.no_grad():
        out = model(**inputs)
    expected = processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], iou_scores=out.iou_scores, best=True
    )
    for t, result in enumerate(results):
        assert torch.equal(result["mask"], expected[t][0]) and result["text"] == texts[t]
