"""Seeded synthetic referring-segmentation data: coloured shapes on noisy gray, "the red circle" → its mask."""

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
from tqdm.auto import tqdm

from .masks import bool_to_mask_image
from .user_data import REFERRING_FEATURES

# Base RGB of each colour name; a scene jitters each channel by up to `colour_jitter`. Every channel sits at least 20
# from 0 and 255, so the default jitter never clips and the colours stay far from the gray background (R = G = B).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
EXPRESSION_TEMPLATES: tuple[str, ...] = ("the {colour} {shape}", "{colour} {shape}", "a {colour} {shape}")
# Empty pixels kept between two objects' boxes, so shapes never touch and each mask is its own component.
_OBJECT_GAP = 2

SYNTHETIC_FEATURES = datasets.Features(
    {
        **REFERRING_FEATURES,
        "scene_id": datasets.Value("int64"),
        "colour": datasets.Value("string"),
        "shape": datasets.Value("string"),
        "bbox": datasets.List(datasets.Value("int32"), length=4),
    }
)


@dataclass(frozen=True)
class SyntheticSceneSpec:
    """
    How scenes are drawn.

    Args:
        image_size (`int`, defaults to 256): side of the square RGB image.
        min_side, max_side (`int`, default 32 and 96): range (inclusive) of an object's square bounding-box side.
        max_objects (`int`, defaults to 4): a scene holds 1 to `max_objects` objects (fewer when no free place is
            found after `max_attempts` tries; at most 12, the number of (colour, shape) pairs).
        colour_jitter (`int`, defaults to 20): each RGB channel of an object's fill is its base colour ± this.
        noise_std (`float`, defaults to 10.0): std of the Gaussian noise on the background (same for R, G and B, so
            the background stays gray; objects are flat fills, so their pixels are exactly their jittered colour).
        background_range (`tuple[int, int]`, defaults to (60, 200)): range (inclusive) of the background gray level.
        max_attempts (`int`, defaults to 100): placement tries per object before the scene stops growing.
        shared_attribute_fraction (`float`, defaults to 0.0): fraction of scenes whose objects all share one
            attribute (a training curriculum; 0 draws exactly the scenes of the task's spec). Such a scene picks,
            with equal odds, one colour (then its objects differ in shape) or one shape (then they differ in
            colour), and holds 2 to `max_objects` objects, at most the 3 or 4 pairs that share it, each pair still
            at most once. An expression of such a scene can only be told apart from its neighbours by the attribute
            they do not share: same-colour scenes teach shape, same-shape scenes teach colour.
    """

    image_size: int = 256
    min_side: int = 32
    max_side: int = 96
    max_objects: int = 4
    colour_jitter: int = 20
    noise_std: float = 10.0
    background_range: tuple[int, int] = (60, 200)
    max_attempts: int = 100
    shared_attribute_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_side <= self.max_side <= self.image_size:
            raise ValueError(
                f"Need 1 <= min_side <= max_side <= image_size, got min_side={self.min_side}, "
                f"max_side={self.max_side}, image_size={self.image_size}."
            )
        if not 1 <= self.max_objects <= len(COLOURS) * len(SHAPES):
            raise ValueError(
                f"`max_objects` must lie in [1, {len(COLOURS) * len(SHAPES)}] (each (colour, shape) at most once), "
                f"got {self.max_objects}."
            )
        low, high = self.background_range
        if not 0 <= low <= high <= 255:
            raise ValueError(f"`background_range` must satisfy 0 <= low <= high <= 255, got {self.background_range}.")
        if not 0.0 <= self.shared_attribute_fraction <= 1.0:
            raise ValueError(f"`shared_attribute_fraction` must lie in [0, 1], got {self.shared_attribute_fraction}.")
        if self.colour_jitter < 0 or self.noise_std < 0 or self.max_attempts < 1:
            raise ValueError(
                f"`colour_jitter` and `noise_std` must be >= 0 and `max_attempts` >= 1, got {self.colour_jitter}, "
                f"{self.noise_std} and {self.max_attempts}."
            )


def scene_rng(seed: int, scene_id: int) -> np.random.Generator:
    """The generator of scene `scene_id`: each scene depends only on `(seed, scene_id)`, so shards agree."""
    return np.random.default_rng([seed, scene_id])


def _draw_shape(shape: str, x0: int, y0: int, side: int, image_size: int) -> np.ndarray:
    canvas = PIL.Image.new("1", (image_size, image_size), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    # PIL's corners are inclusive pixels: this fills exactly the side x side box (checked by the tests).
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=1)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=1)
    else:
        draw.polygon([(x0, y1), (x1, y1), (x0 + (side - 1) / 2, y0)], fill=1)
    return np.asarray(canvas).copy()


def _place_boxes(rng: np.random.Generator, count: int, spec: SyntheticSceneSpec) -> list[tuple[int, int, int]]:
    """Up to `count` `(x0, y0, side)` squares, pairwise separated by `_OBJECT_GAP` pixels (rejection sampling)."""
    boxes: list[tuple[int, int, int]] = []
    for _ in range(count):
        for _ in range(spec.max_attempts):
            side = int(rng.integers(spec.min_side, spec.max_side + 1))
            x0, y0 = (int(v) for v in rng.integers(0, spec.image_size - side + 1, size=2))
            if all(
                x0 >= bx + bside + _OBJECT_GAP
                or bx >= x0 + side + _OBJECT_GAP
                or y0 >= by + bside + _OBJECT_GAP
                or by >= y0 + side + _OBJECT_GAP
                for bx, by, bside in boxes
            ):
                boxes.append((x0, y0, side))
                break
        else:
            break
    return boxes


def generate_scene(
    rng: np.random.Generator, spec: SyntheticSceneSpec | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """
    Draw one scene: a gray background with gray Gaussian noise and 1 to `spec.max_objects` non-overlapping flat
    shapes, each (colour, shape) pair at most once. Deterministic given the state of `rng`.

    Returns:
        `(image, objects)`: `image` `(S, S, 3)` uint8; `objects` a list of
        `{"colour": str, "shape": str, "bbox": [x1, y1, x2, y2], "mask": (S, S) bool}`, with `bbox` the drawn box
        in pixel edges (`x2 - x1` = the side, exclusive end, usable as a box prompt) and disjoint masks.
    """
    spec = spec or SyntheticSceneSpec()
    size = spec.image_size
    level = rng.integers(spec.background_range[0], spec.background_range[1] + 1)
    gray = np.clip(np.rint(level + rng.normal(0.0, spec.noise_std, size=(size, size))), 0, 255).astype(np.uint8)
    image = np.repeat(gray[..., None], 3, axis=2)

    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    # With the default fraction 0 no extra number is drawn, so the task's scenes stay exactly as they were.
    if spec.shared_attribute_fraction > 0 and rng.random() < spec.shared_attribute_fraction:
        by_colour = rng.random() < 0.5
        values = list(COLOURS) if by_colour else list(SHAPES)
        value = values[rng.integers(len(values))]
        pairs = [pair for pair in pairs if pair[0 if by_colour else 1] == value]
        num_objects = int(rng.integers(min(2, spec.max_objects), min(spec.max_objects, len(pairs)) + 1))
    else:
        num_objects = int(rng.integers(1, spec.max_objects + 1))
    chosen = rng.choice(len(pairs), size=num_objects, replace=False)
    objects = []
    for pair_index, (x0, y0, side) in zip(chosen, _place_boxes(rng, num_objects, spec)):
        colour, shape = pairs[pair_index]
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, size=3)
        fill = np.clip(np.array(COLOURS[colour]) + jitter, 0, 255).astype(np.uint8)
        mask = _draw_shape(shape, x0, y0, side, size)
        image[mask] = fill
        objects.append({"colour": colour, "shape": shape, "bbox": [x0, y0, x0 + side, y0 + side], "mask": mask})
    return image, objects


def _row(
    rng: np.random.Generator,
    picture: dict[str, Any],
    colour: str,
    shape: str,
    mask: dict[str, Any],
    match_label: int,
    bbox: list[int] | None,
) -> dict[str, Any]:
    """One row without `scene_id`, its expression in a random form."""
    text = EXPRESSION_TEMPLATES[rng.integers(len(EXPRESSION_TEMPLATES))].format(colour=colour, shape=shape)
    return {
        "image": picture,
        "text": text,
        "mask": mask,
        "match_label": match_label,
        "colour": colour,
        "shape": shape,
        "bbox": bbox,
    }


def _png(image: PIL.Image.Image) -> dict[str, Any]:
    """The storage form of a `datasets.Image` value, so a scene's image is PNG-encoded once for all its rows."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"path": None, "bytes": buffer.getvalue()}


def _scene_rows(
    rng: np.random.Generator, image: np.ndarray, objects: list[dict[str, Any]], absent_fraction: float
) -> list[dict[str, Any]]:
    """
    The referring expressions of one scene: one per object (its mask, `match_label` 1), then absent expressions,
    (colour, shape) pairs not in the scene (an empty mask, `match_label` 0, `bbox` None). The number of absent
    expressions is `n * a / (1 - a)` for `n` objects and `a = absent_fraction`, rounded up or down at random with
    the matching probability, so that a fraction `a` of all expressions is absent on average. `image` and `mask`
    are PNG bytes (RGB, and "L" with 0 / 255).
    """
    picture = _png(PIL.Image.fromarray(image))
    rows = [
        _row(rng, picture, obj["colour"], obj["shape"], _png(bool_to_mask_image(obj["mask"])), 1, obj["bbox"])
        for obj in objects
    ]
    present = {(obj["colour"], obj["shape"]) for obj in objects}
    absent_pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in present]
    expected = len(objects) * absent_fraction / (1 - absent_fraction)
    num_absent = min(int(expected) + int(rng.random() < expected - int(expected)), len(absent_pairs))
    empty = _png(bool_to_mask_image(np.zeros(image.shape[:2], dtype=bool)))
    for pair_index in rng.choice(len(absent_pairs), size=num_absent, replace=False):
        rows.append(_row(rng, picture, *absent_pairs[pair_index], empty, 0, None))
    return rows


def _check_absent_fraction(absent_fraction: float) -> None:
    if not 0 <= absent_fraction < 1:
        raise ValueError(f"`absent_fraction` must lie in [0, 1), got {absent_fraction}.")


def generate_referring_examples(
    scene_ids: int | Sequence[int],
    seed: int = 0,
    absent_fraction: float = 0.25,
    spec: SyntheticSceneSpec | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """
    Yield the rows of [`synthetic_referring_dataset`] scene by scene, for `datasets.Dataset.from_generator` (pass
    `features=SYNTHETIC_FEATURES`; with `num_proc`, give `scene_ids` as a list so `datasets` shards it) or
    `IterableDataset.from_generator` (scenes made on the fly).

    Args:
        scene_ids (`int` or `Sequence[int]`): the scenes, `range(scene_ids)` for an int.
        seed (`int`): the dataset seed; scene `i` depends only on `(seed, i)`.
        absent_fraction (`float`, defaults to 0.25): expected fraction of absent expressions, in [0, 1).
        spec ([`SyntheticSceneSpec`], *optional*): how scenes are drawn.
        progress (`bool`, defaults to `True`): show a tqdm bar over the scenes.
    """
    _check_absent_fraction(absent_fraction)
    scene_ids = range(scene_ids) if isinstance(scene_ids, int) else scene_ids
    for scene_id in tqdm(scene_ids, desc="Synthetic scenes", unit="scene", disable=not progress):
        rng = scene_rng(seed, int(scene_id))
        image, objects = generate_scene(rng, spec)
        for row in _scene_rows(rng, image, objects, absent_fraction):
            yield {**row, "scene_id": int(scene_id)}


def synthetic_referring_dataset(
    num_scenes: int,
    seed: int = 0,
    absent_fraction: float = 0.25,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    progress: bool = True,
    **scene_spec: Any,
) -> datasets.Dataset:
    """
    A synthetic referring-segmentation dataset, identical for identical arguments (cached by `datasets` under
    `cache_dir`).

    Each scene is a `image_size`² image (see [`generate_scene`]); each of its objects gives a row with a random
    expression form ("the {colour} {shape}", "{colour} {shape}", "a {colour} {shape}") and the object's mask, and
    absent expressions give rows with an empty mask and `match_label` 0: `n * a / (1 - a)` of them for `n` objects
    and `a = absent_fraction`, rounded up or down at random, so a fraction `a` of the rows is absent on average.

    Args:
        num_scenes (`int`): number of scenes (the dataset has about `2.5 / (1 - absent_fraction)` rows per scene).
        seed (`int`, defaults to 0): the dataset seed.
        absent_fraction (`float`, defaults to 0.25): expected fraction of absent expressions, in [0, 1).
        cache_dir (`str`, *optional*): where `datasets` writes the Arrow files (its default cache otherwise).
        num_proc (`int`, *optional*): generate the scenes in this many processes.
        progress (`bool`, defaults to `True`): show a tqdm bar over the scenes.
        scene_spec: fields of [`SyntheticSceneSpec`], e.g. `image_size=128, max_objects=2`.

    Returns:
        `datasets.Dataset` with the columns of [`REFERRING_FEATURES`], `image` (`Image`, RGB), `text` (`str`),
        `mask` (`Image`, mode "L", 0 / 255: a PNG of a few hundred bytes) and `match_label` (`int64`, 1 present /
        0 absent), then `scene_id` (`int64`), `colour`, `shape` (`str`) and `bbox` (`[x1, y1, x2, y2]` int32, None
        for absent rows). The rows of a scene are consecutive and each stores the scene's image again (about 70 KB
        at 256², as the noise does not compress); for large sets, consider
        `IterableDataset.from_generator(generate_referring_examples, ...)`, which makes scenes on the fly.
    """
    if not isinstance(num_scenes, int) or num_scenes < 1:
        raise ValueError(f"`num_scenes` must be a positive int, got {num_scenes!r}.")
    # Checked here too: inside `from_generator` the error would only surface as a DatasetGenerationError.
    _check_absent_fraction(absent_fraction)
    return datasets.Dataset.from_generator(
        generate_referring_examples,
        features=SYNTHETIC_FEATURES,
        gen_kwargs={
            # `datasets` makes one shard per element of a list: a range keeps one shard (and one meaningful scene
            # bar), a list lets `num_proc` workers share the scenes (then `datasets`' own bar shows the progress).
            "scene_ids": range(num_scenes) if num_proc is None else list(range(num_scenes)),
            "seed": seed,
            "absent_fraction": absent_fraction,
            "spec": SyntheticSceneSpec(**scene_spec),
            "progress": progress and num_proc is None,
        },
        cache_dir=cache_dir,
        num_proc=num_proc,
    )


__all__ = [
    "COLOURS",
    "EXPRESSION_TEMPLATES",
    "SHAPES",
    "SYNTHETIC_FEATURES",
    "SyntheticSceneSpec",
    "generate_referring_examples",
    "generate_scene",
    "scene_rng",
    "synthetic_referring_dataset",
]
