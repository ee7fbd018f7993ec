"""Referring-segmentation data: a synthetic generator, a loader for user data, mask codecs and the Trainer collator."""

from .collator import DEFAULT_MASK_SIZE, EsamBlipDataCollator
from .masks import bool_to_mask_image, decode_rle, encode_rle, mask_to_bool, polygons_to_mask
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
from .user_data import MASK_FORMATS, REFERRING_FEATURES, load_referring_dataset

__all__ = [
    "COLOURS",
    "DEFAULT_MASK_SIZE",
    "EXPRESSION_TEMPLATES",
    "MASK_FORMATS",
    "REFERRING_FEATURES",
    "SHAPES",
    "SYNTHETIC_FEATURES",
    "EsamBlipDataCollator",
    "SyntheticSceneSpec",
    "bool_to_mask_image",
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
