"""Training on `transformers.Trainer`, apart from the library: arguments, collators, trainer builders, freezing.

    python -m transformers_esam_blip.training --config tiny --dataset synthetic --output_dir out --max_steps 50
    esam-blip train ...   # the same command

- `arguments.py`: the command line (`build_parser`) and its checks;
- `collators.py`: referring-segmentation batches at the model's mask size, image-text matching batches;
- `trainer_builders.py`: `training_arguments`, `build_trainer` and `build_itm_trainer`;
- `freezing.py`: `apply_freezing` and its presets;
- `embedding_cache.py`: `cache_image_embeddings`, image embeddings computed once for decoder-only training;
- `reinitialize.py`: `reinitialize_prompt_decoder`, a fresh prompt encoder and mask decoder;
- `metrics.py`: the image-text matching `compute_metrics`;
- `command.py`: the command itself (`main`), run by `__main__.py`.

The built-in presets (`tiny`, `shapes`) live in `transformers_esam_blip.builtin`; their builders are re-exported here.
"""

from ..builtin_presets import (
    shapes_config,
    shapes_processor,
    synthetic_processor,
    tiny_config,
    tiny_processor,
    tiny_sam_config_kwargs,
)
from .arguments import BUILTIN_CONFIGS, build_parser
from .collators import EsamBlipItmCollator, EsamBlipTrainingCollator, low_res_mask_size
from .command import main
from .embedding_cache import CACHED_EMBEDDING_COLUMNS, cache_image_embeddings, check_cacheable
from .freezing import FREEZE_PRESETS, apply_freezing
from .reinitialize import reinitialize_prompt_decoder
from .trainer_builders import (
    ITM_LABEL_NAMES,
    LABEL_NAMES,
    TASKS,
    build_itm_trainer,
    build_trainer,
    training_arguments,
)

__all__ = [
    "BUILTIN_CONFIGS",
    "CACHED_EMBEDDING_COLUMNS",
    "FREEZE_PRESETS",
    "ITM_LABEL_NAMES",
    "LABEL_NAMES",
    "TASKS",
    "EsamBlipItmCollator",
    "EsamBlipTrainingCollator",
    "apply_freezing",
    "build_itm_trainer",
    "build_parser",
    "build_trainer",
    "cache_image_embeddings",
    "check_cacheable",
    "low_res_mask_size",
    "main",
    "reinitialize_prompt_decoder",
    "shapes_config",
    "shapes_processor",
    "synthetic_processor",
    "tiny_config",
    "tiny_processor",
    "tiny_sam_config_kwargs",
    "training_arguments",
]
