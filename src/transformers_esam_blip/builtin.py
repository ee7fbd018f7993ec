"""Models shipped inside the package, loadable offline by name.

    from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
    model = EsamBlipForPromptableSegmentation.from_pretrained("esam-blip-shapes")
    processor = EsamBlipProcessor.from_pretrained("esam-blip-shapes")

The package's own classes (config, models, image processor, processor) and the `esam-blip` / demo / training /
evaluation commands resolve a built-in name to its folder before anything else; a local folder of the same name takes
precedence. The `Auto*` classes of `transformers` do not know the names: give them the folder,
`AutoModel.from_pretrained(builtin_model_path("esam-blip-shapes"))`.
"""

import os
from pathlib import Path

_MODELS_DIR = Path(__file__).resolve().parent / "assets" / "models"

BUILTIN_MODELS: dict[str, str] = {
    "esam-blip-shapes": (
        "EsamBlip trained here on the synthetic referring-segmentation task (coloured circles, squares and triangles "
        "on noisy gray; 'the red circle' -> its mask and a match probability); 128² input, 1.3M parameters"
    ),
}
DEFAULT_BUILTIN_MODEL = "esam-blip-shapes"


def builtin_model_path(name: str = DEFAULT_BUILTIN_MODEL) -> Path:
    """
    The folder of a built-in model (config, `model.safetensors`, processor files).

    Raises:
        `ValueError`: `name` is not a built-in model.
        `FileNotFoundError`: the package was installed without the model's files.
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"Unknown built-in model {name!r}; the built-in models are {sorted(BUILTIN_MODELS)}.")
    folder = _MODELS_DIR / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"The built-in model {name!r} is missing from this installation (expected it in {folder}); reinstall the "
            "package (`pip install -e .` from a clone keeps the files in place)."
        )
    return folder


def resolve_pretrained_name(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """`name_or_path` itself, unless it is a built-in model's name and no local path of that name exists."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS and not os.path.exists(name_or_path):
        return str(builtin_model_path(name_or_path))
    return name_or_path


class BuiltinNamesMixin:
    """Lets `from_pretrained` of a config, model or processor class also take a built-in model's name."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        return super().from_pretrained(resolve_pretrained_name(pretrained_model_name_or_path), *args, **kwargs)


__all__ = [
    "BUILTIN_MODELS",
    "BuiltinNamesMixin",
    "DEFAULT_BUILTIN_MODEL",
    "builtin_model_path",
    "resolve_pretrained_name",
]
