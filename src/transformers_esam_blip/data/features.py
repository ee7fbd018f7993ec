"""The canonical columns of referring-segmentation data: what every loader returns and the collator reads."""

import datasets

REFERRING_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "mask": datasets.Image(mode="L"),
        "match_label": datasets.Value("int64"),
    }
)

__all__ = ["REFERRING_FEATURES"]
