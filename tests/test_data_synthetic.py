"""Synthetic referring data: determinism per seed, the scene spec, expressions, absent objects, the dataset."""

import io

import numpy as np
import PIL.Image
import pytest

from transformers_esam_blip.data import (
    COLOURS,
    EXPRESSION_TEMPLATES,
    SHAPES,
    SyntheticSceneSpec,
    generate_referring_examples,
    generate_scene,
    scene_rng,
    synthetic_referring_dataset,
)

SMALL = SyntheticSceneSpec(image_size=48, min_side=8, max_side=16)


def scenes(count: int, seed: int = 0, spec: SyntheticSceneSpec | None = None) -> list:
    return [generate_scene(scene_rng(seed, i), spec) for i in range(count)]


def rows(count: int, **kwargs) -> list[dict]:
    return list(generate_referring_examples(count, spec=SMALL, progress=False, **kwargs))


def decoded(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """A generator row's image and mask (PNG bytes) as arrays."""
    return tuple(np.asarray(PIL.Image.open(io.BytesIO(row[key]["bytes"]))) for key in ("image", "mask"))


def test_scenes_are_deterministic_per_seed_and_scene():
    (image_a, objects_a), (image_b, objects_b) = generate_scene(scene_rng(7, 3)), generate_scene(scene_rng(7, 3))
    assert np.array_equal(image_a, image_b)
    assert [(o["colour"], o["shape"], o["bbox"]) for o in objects_a] == [
        (o["colour"], o["shape"], o["bbox"]) for o in objects_b
    ]
    assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(objects_a, objects_b, strict=True))
    assert not np.array_equal(image_a, generate_scene(scene_rng(8, 3))[0])
    assert not np.array_equal(image_a, generate_scene(scene_rng(7, 4))[0])


def test_scenes_follow_the_spec():
    sides = set()
    for image, objects in scenes(60):
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= 4
        pairs = [(o["colour"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs)
        coverage = np.zeros((256, 256), dtype=np.int64)
        for obj in objects:
            assert obj["colour"] in COLOURS and obj["shape"] in SHAPES
            x1, y1, x2, y2 = obj["bbox"]
            side = x2 - x1
            assert y2 - y1 == side and 32 <= side <= 96 and 0 <= x1 and 0 <= y1 and x2 <= 256 and y2 <= 256
            sides.add(side)
            mask = obj["mask"]
            assert mask.dtype == bool and mask.shape == (256, 256)
            ys, xs = np.nonzero(mask)
            # The drawn shape fills its box exactly: antialiasing off, corners inclusive.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
            area = mask.sum() / side**2
            expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[obj["shape"]]
            assert area == pytest.approx(expected, rel=0.08)
            # A flat fill: every pixel of the object is one colour, within the jitter of its base colour.
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1
            assert np.abs(colours[0].astype(int) - np.array(COLOURS[obj["colour"]])).max() <= 20
            coverage += mask
        assert coverage.max() <= 1, "object masks overlap"
        background = image[coverage == 0].astype(int)
        assert (background[:, 0] == background[:, 1]).all() and (background[:, 1] == background[:, 2]).all()
        assert 57 <= np.median(background[:, 0]) <= 203
        assert 5 < background[:, 0].std() < 15
    assert min(sides) < 45 and max(sides) > 85, "sides should span the range"


def test_every_pair_can_appear_and_counts_vary():
    counts, pairs = set(), set()
    for _, objects in scenes(80, spec=SMALL):
        counts.add(len(objects))
        pairs.update((o["colour"], o["shape"]) for o in objects)
    assert counts == {1, 2, 3, 4}
    assert len(pairs) == len(COLOURS) * len(SHAPES)


def test_rows_are_expressions_of_present_and_absent_objects():
    examples = rows(40, seed=1, absent_fraction=0.4)
    by_scene: dict[int, list[dict]] = {}
    for row in examples:
        by_scene.setdefault(row["scene_id"], []).append(row)
    assert sorted(by_scene) == list(range(40))
    forms = set()
    for scene_id, scene_rows in by_scene.items():
        image, objects = generate_scene(scene_rng(1, scene_id), SMALL)
        present = {(o["colour"], o["shape"]): o for o in objects}
        texts = [row["text"] for row in scene_rows]
        assert len({(r["colour"], r["shape"]) for r in scene_rows}) == len(scene_rows), "a pair twice in a scene"
        for row in scene_rows:
            row_image, row_mask = decoded(row)
            assert np.array_equal(row_image, image)
            templates = [t.format(colour=row["colour"], shape=row["shape"]) for t in EXPRESSION_TEMPLATES]
            assert row["text"] in templates
            forms.add(templates.index(row["text"]))
            pair = (row["colour"], row["shape"])
            assert set(np.unique(row_mask)) <= {0, 255}
            if row["match_label"] == 1:
                assert np.array_equal(row_mask > 0, present[pair]["mask"])
                assert row["bbox"] == present[pair]["bbox"]
            else:
                assert row["match_label"] == 0 and pair not in present
                assert not row_mask.any() and row["bbox"] is None
        assert sum(row["match_label"] for row in scene_rows) == len(objects), texts
    assert forms == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_absent_fraction(fraction):
    labels = np.array([row["match_label"] for row in rows(150, absent_fraction=fraction)])
    assert (1 - labels.mean()) == pytest.approx(fraction, abs=0.06)


def test_scenes_do_not_depend_on_which_others_are_generated():
    all_rows = rows(6, seed=2)
    subset = list(generate_referring_examples([4, 5], seed=2, spec=SMALL, progress=False))
    assert [(r["scene_id"], r["text"]) for r in all_rows if r["scene_id"] >= 4] == [
        (r["scene_id"], r["text"]) for r in subset
    ]


def test_dataset_columns_and_determinism(tmp_path):
    first = synthetic_referring_dataset(
        4, seed=5, cache_dir=str(tmp_path / "a"), progress=False, image_size=48, min_side=8, max_side=16
    )
    again = synthetic_referring_dataset(
        4, seed=5, cache_dir=str(tmp_path / "b"), progress=False, image_size=48, min_side=8, max_side=16
    )
    other = synthetic_referring_dataset(
        4, seed=6, cache_dir=str(tmp_path / "c"), progress=False, image_size=48, min_side=8, max_side=16
    )
    assert first.column_names == ["image", "text", "mask", "match_label", "scene_id", "colour", "shape", "bbox"]
    row = first[0]
    assert row["image"].mode == "RGB" and row["image"].size == (48, 48)
    assert row["mask"].mode == "L" and row["mask"].size == (48, 48)
    assert first["text"] == again["text"] and first["match_label"] == again["match_label"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first["image"], again["image"]))
    assert first["text"] != other["text"] or not np.array_equal(
        np.asarray(first[0]["image"]), np.asarray(other[0]["image"])
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_side": 50, "max_side": 40}, "min_side <= max_side"),
        ({"image_size": 64, "max_side": 96}, "max_side <= image_size"),
        ({"max_objects": 13}, "max_objects"),
        ({"background_range": (100, 300)}, "background_range"),
        ({"noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_specs_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticSceneSpec(**kwargs)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="absent_fraction"):
        next(generate_referring_examples(1, absent_fraction=1.0, progress=False))
    with pytest.raises(ValueError, match=r"`absent_fraction` must lie in \[0, 1\), got -0.1"):
        synthetic_referring_dataset(1, absent_fraction=-0.1, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_scenes"):
        synthetic_referring_dataset(0, cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match="unexpected keyword"):
        synthetic_referring_dataset(1, cache_dir=str(tmp_path), image_sise=64)


def _shared(objects: list[dict]) -> tuple[bool, bool]:
    """Whether a scene's objects (two or more) all share their colour / their shape."""
    many = len(objects) > 1
    return many and len({o["colour"] for o in objects}) == 1, many and len({o["shape"] for o in objects}) == 1


def test_shared_attribute_curriculum():
    spec = SyntheticSceneSpec(image_size=48, min_side=8, max_side=16, shared_attribute_fraction=1.0)
    drawn = scenes(60, spec=spec)
    kinds = [_shared(objects) for _, objects in drawn]
    assert all(by_colour or by_shape for by_colour, by_shape in kinds)
    assert any(by_colour for by_colour, _ in kinds) and any(by_shape for _, by_shape in kinds)
    for _, objects in drawn:
        pairs = [(o["colour"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs)  # each pair still at most once
        masks = np.stack([o["mask"] for o in objects])
        assert masks.sum(axis=0).max() == 1  # still disjoint
    # Half the scenes share an attribute; the others follow the task (where two objects share one only by chance).
    half = [_shared(objects) for _, objects in scenes(200, spec=SyntheticSceneSpec(shared_attribute_fraction=0.5))]
    assert 0.45 < np.mean([by_colour or by_shape for by_colour, by_shape in half]) < 0.8
    # Only a positive fraction draws the extra random number, so the default (0) keeps the task's scenes as they were.
    tiny = SyntheticSceneSpec(shared_attribute_fraction=1e-12)
    assert SyntheticSceneSpec().shared_attribute_fraction == 0.0
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(scenes(5), scenes(5, spec=tiny)))
    with pytest.raises(ValueError, match=r"`shared_attribute_fraction` must lie in \[0, 1\], got 1.5"):
        SyntheticSceneSpec(shared_attribute_fraction=1.5)
