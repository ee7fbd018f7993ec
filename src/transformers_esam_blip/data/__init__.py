"""Referring-segmentation data: a synthetic generator, a loader for user data, mask codecs and the Trainer collator."""

from .coco import load_coco_dataset, read_coco_instances
from .collator import DEFAULT_MASK_SIZE, EsamBlipDataCollator
from .masks import (
    bool_to_mask_image,
    check_segmentation,
    decode_rle,
    encode_rle,
    mask_to_bool,
    polygons_to_mask,
    segmentation_to_mask,
)
from .referring import load_refcoco_dataset, read_refs
from .synthetic import (
    COLOURS,
    EXPRESSION_TEMPLATES,
    SHAPES,
    SYNTHETIC_FEATURES,
    SyntheticSceneSpec,
    generate_referring_examples,
    generate_scene,
    scene_rng,
    synthetic_referring_dataset,
)
from .user_data import (
    COLUMN_ALIASES,
    MASK_FORMATS,
    REFERRING_FEATURES,
    find_referring_source,
    load_raw_dataset,
    load_referring_dataset,
)

__all__ = [
    "COLOURS",
    "COLUMN_ALIASES",
    "DEFAULT_MASK_SIZE",
    "EXPRESSION_TEMPLATES",
    "MASK_FORMATS",
    "REFERRING_FEATURES",
    "SHAPES",
    "SYNTHETIC_FEATURES",
    "EsamBlipDataCollator",
    "SyntheticSceneSpec",
    "bool_to_mask_image",
    "check_segmentation",
    "find_referring_source",
    "load_coco_dataset",
    "load_raw_dataset",
    "load_refcoco_dataset",
    "read_coco_instances",
    "read_refs",
    "segmentation_to_mask",
    "decode_rle",
    "encode_rle",
    "generate_referring_examples",
    "generate_scene",
    "load_referring_dataset",
    "mask_to_bool",
    "polygons_to_mask",
    "scene_rng",
    "synthetic_referring_dataset",
]
