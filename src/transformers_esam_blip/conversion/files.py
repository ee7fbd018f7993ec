"""Reading user-supplied checkpoint files safely: every failure is a one-line error naming the argument and the file.

- PyTorch files load with `torch.load(weights_only=True)`: a pickle that holds other objects than tensors and plain
  containers is refused without running anything, and the error says so.
- A text file, a truncated or corrupt archive or a file of another format gets a `ValueError` naming it, never the
  unpickler's `KeyError`, the zip reader's `RuntimeError` or an `EINVAL`.
- safetensors and JSON files get the same treatment; an index whose shards lie outside its folder is refused.
"""

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# The first bytes of the formats `torch.load` reads: a zip archive (torch >= 1.6) or a bare pickle (protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand \d+|Trying to [^.]+")


def _head(path: Path, argument: str, count: int = 8) -> bytes:
    """The first bytes of `path` (an `OSError` naming the file when it cannot be read)."""
    if not path.exists():
        raise FileNotFoundError(f"{argument}: no such file: {path}")
    if not path.is_file():
        raise ValueError(f"{argument}: {path} is not a file")
    with path.open("rb") as handle:
        return handle.read(count)


def load_torch_file(path: str | Path, argument: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with errors that name `argument` and the file."""
    path = Path(path)
    head = _head(path, argument)
    if not head:
        raise ValueError(f"{argument}: {path} is empty (0 bytes), not a PyTorch checkpoint")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise ValueError(
            f"{argument}: {path} is not a PyTorch checkpoint (it starts with {head!r}, neither a zip archive nor a "
            "pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _REFUSED_GLOBAL.search(str(error))
        what = f" ({found.group(0)})" if found else ""
        raise ValueError(
            f"{argument}: {path} holds objects other than tensors{what}; it was refused without running them, for "
            "safety. Re-save the bare state dict: torch.save(model.state_dict(), path)"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # the unpickler and the zip reader raise KeyError, RuntimeError, EOFError, OSError...
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        raise ValueError(
            f"{argument}: {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(error).__name__}: "
            f"{detail}"
        ) from None


def load_safetensors_file(path: str | Path, argument: str) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file(path)` with errors that name `argument` and the file."""
    path = Path(path)
    _head(path, argument)
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as error:
        detail = " ".join(str(error).split())[:160]
        raise ValueError(
            f"{argument}: {path} is not a readable safetensors file (truncated or corrupt?): {detail}"
        ) from None


def read_json_file(path: str | Path, argument: str) -> Any:
    """A JSON file's content, with errors that name `argument` and the file."""
    path = Path(path)
    _head(path, argument)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{argument}: {path} is not valid JSON ({error})") from None


def check_state_dict(value: Any, path: Path, argument: str) -> dict[str, torch.Tensor]:
    """`value` (a loaded checkpoint) as a state dict: `{"model": state_dict}` or a bare one, every value a tensor."""
    if isinstance(value, dict) and isinstance(value.get("model"), dict):
        value = value["model"]
    if not isinstance(value, dict) or not value:
        found = type(value).__name__ if not isinstance(value, dict) else "an empty dict"
        raise ValueError(
            f"{argument}: {path} holds no state dict (expected {{'model': state_dict}} or a state dict, got {found})"
        )
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{argument}: {path} is not a state dict: the entry {key!r} is a {type(tensor).__name__}, not a tensor"
            )
    return value


def shard_path(folder: Path, shard: Any, index: Path, argument: str) -> Path:
    """A shard named by a `*.index.json`: a file name inside `folder` (an index pointing elsewhere is refused)."""
    if not isinstance(shard, str) or not shard:
        raise ValueError(f"{argument}: {index} names a shard that is not a file name: {shard!r}")
    path = (folder / shard).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{argument}: {index} names the shard {shard!r}, outside its folder; refused")
    return path


__all__ = ["check_state_dict", "load_safetensors_file", "load_torch_file", "read_json_file", "shard_path"]
