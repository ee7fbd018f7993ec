"""What every command shares: the one-line error convention, `--debug`, and the checks of `--model` and `--device`.

A user error (a bad argument, a missing or unreadable file) is reported as exactly one line, `error: ...`, naming the
argument or the file, on stderr, with exit status 2 and no traceback; `--debug` re-raises it instead. The `esam-blip`
command, `python -m transformers_esam_blip.training` / `.evaluation` / `.demo` and `conversion/convert_esam_blip.py`
all parse and run through [`run_command`].

Which exceptions are user errors ([`is_user_error`]): [`CliError`], `ValueError` and `TypeError` (the library's own
argument checks, which name the argument), `OSError` (missing, unreadable or unwritable files, a full disk, the Hub
unreachable), `MemoryError` and torch's out-of-memory errors (an oversize request), and the file-format errors of the
libraries that read user files: `pickle.UnpicklingError` (a checkpoint holding objects that are not tensors, refused
rather than run), `safetensors.SafetensorError` and the `datasets` errors. Anything else (`RuntimeError`,
`AttributeError`, `KeyError`, ...) is a bug and keeps its traceback. A message from a library (anything but a
[`CliError`]) ends with a hint to re-run with `--debug`.
"""

import argparse
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .builtin import BUILTIN_MODELS, close_builtin_names, resolve_pretrained_name
from .configuration_esam_blip import EsamBlipConfig

EXIT_ERROR = 2
DEBUG_FLAG = "--debug"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# Seconds one request to the Hub may take when checking that a `--model` repository exists.
_HUB_PROBE_TIMEOUT = 10
# Errors that report a user's mistake: library errors name the argument and the fix already.
USER_ERRORS = (ValueError, TypeError, OSError, MemoryError, torch.OutOfMemoryError, pickle.UnpicklingError)
# Error classes of libraries that are imported lazily: matched by (module, class name) along the error's MRO, so that
# this module need not import `datasets` or `safetensors` (an error of a module never imported cannot be raised).
_LIBRARY_USER_ERRORS = (
    ("datasets.exceptions", "DatasetsError"),
    ("safetensors._safetensors_rust", "SafetensorError"),
    ("safetensors", "SafetensorError"),
)
# torch reports a failed CPU allocation as a plain RuntimeError.
_CPU_OUT_OF_MEMORY = "can't allocate memory"
DEBUG_HINT = "re-run with --debug for the traceback"


class CliError(Exception):
    """A problem with the command line or its inputs, reported as one `error: ...` line."""


class CommandParser(argparse.ArgumentParser):
    """
    An `ArgumentParser` whose errors raise [`CliError`] (one line, a status) instead of exiting the interpreter, so
    that `main()` can be called in-process; every parser (and sub-command parser) takes `--debug`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-command's parser must not reset a `--debug` given before the sub-command.
        self.add_argument(
            DEBUG_FLAG,
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error",
        )

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


def run_command(
    parser: argparse.ArgumentParser,
    action: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None,
) -> int:
    """
    Parse `argv` (default: `sys.argv[1:]`) and run `action(args)`; returns the exit status.

    User errors (see [`is_user_error`]) become one `error: ...` line on stderr and `EXIT_ERROR`, unless `argv` holds
    `--debug`, which re-raises them. Other exceptions (bugs) propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        action(args)
    except Exception as error:
        if DEBUG_FLAG in argv or not is_user_error(error):
            raise
        print(f"error: {error_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        type(error) is RuntimeError and _CPU_OUT_OF_MEMORY in str(error)
    )


def is_user_error(error: BaseException) -> bool:
    """
    Whether `error` reports a user's mistake (bad argument, unreadable/unwritable/hostile file, oversize request,
    unreachable Hub) rather than a bug: see the module docstring for the list.
    """
    if isinstance(error, (CliError, *USER_ERRORS)) or _is_out_of_memory(error):
        return True
    return any((cls.__module__, cls.__name__) in _LIBRARY_USER_ERRORS for cls in type(error).__mro__)


def error_line(error: BaseException) -> str:
    """
    The one line reporting `error`: its message on one line; for an error that is not a [`CliError`], also its type
    when that is not a `ValueError`/`TypeError`/`OSError` (a `datasets` or `safetensors` error), the cause it wraps
    (for errors other than `ValueError`/`TypeError`), and the hint to re-run with `--debug`.
    """
    if isinstance(error, CliError):
        return " ".join(str(error).split())
    if _is_out_of_memory(error):
        message = f"out of memory ({' '.join(str(error).split())[:200]}); ask for less (a smaller image, batch or grid)"
    else:
        message = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (ValueError, TypeError, OSError)) and not message.startswith(type(error).__name__):
            message = f"{type(error).__name__}: {message}"
        cause = error.__cause__ or error.__context__
        if cause is not None and not isinstance(error, (ValueError, TypeError, CliError)):
            cause_text = " ".join(str(cause).split())
            if cause_text and cause_text not in message:
                message = f"{message} (caused by {type(cause).__name__}: {cause_text})"
    return f"{message.rstrip('.')}; {DEBUG_HINT}"


def check_writable(path: Path, argument: str, folder: bool = False) -> None:
    """
    Before any work: `path` (a file, or a folder with `folder=True`) can be created or replaced: the nearest existing
    folder above it is a folder this process may write in. Raises a [`CliError`] naming `argument` otherwise.
    """
    import os

    path = Path(path)
    if path.exists() and folder != path.is_dir():
        raise CliError(f"{argument} {path} is {'a file; give a folder' if folder else 'a folder; give a file name'}")
    existing = path if folder and path.is_dir() else path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{argument} {path} cannot be written: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{argument} {path} cannot be written: no permission to write in {existing}")


def looks_like_hub_id(model: str) -> bool:
    """`name` or `owner/name`, as the Hub spells repositories; anything else can only be a local path."""
    return _HUB_ID.fullmatch(model) is not None


def resolve_model_argument(model: str, argument: str = "--model") -> str:
    """
    The folder or Hub id that `argument`'s value `model` names: a local folder, a built-in model's folder, or a Hub id.

    Raises:
        [`CliError`]: `model` is a file, a path that does not exist, or close to a built-in name without being one
            (the error suggests it and lists the built-in models).
    """
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise CliError(f"{argument} {model} is a file; give the checkpoint folder")
        return model
    if model in BUILTIN_MODELS:
        return str(resolve_pretrained_name(model))
    close = close_builtin_names(model)
    if close:
        raise CliError(
            f"{argument} {model} is neither a folder nor a built-in model; did you mean {close[0]!r}? "
            f"The built-in models are: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    if not looks_like_hub_id(model):
        raise CliError(f"{argument} {model} does not exist")
    check_hub_repo(model, argument, what="a folder, nor a built-in model", hint=_builtin_list())
    return model


def _builtin_list() -> str:
    return f"the built-in models are: {', '.join(sorted(BUILTIN_MODELS))}"


def check_hub_repo(repo: str, argument: str, what: str = "a folder", hint: str = "") -> None:
    """
    `repo`, which is not `what` (a local folder, ...), as a Hub id: fine when its config is in the local Hub cache;
    otherwise, offline (`HF_HUB_OFFLINE=1`) is an immediate [`CliError`], and online one request without retries says
    whether the repository exists, so a typo does not wait through the Hub client's retries.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    tail = f"; {hint}" if hint else ""
    try:
        if any(
            isinstance(huggingface_hub.try_to_load_from_cache(repo, name), str)
            for name in ("config.json", "tokenizer_config.json")
        ):
            return
    except HFValidationError as error:
        raise CliError(f"{argument} {repo} is not {what}, nor a valid Hub id ({error}){tail}") from None
    if huggingface_hub.is_offline_mode():
        raise CliError(
            f"{argument} {repo} is not {what}, nor in the local Hub cache, and the Hub is offline (HF_HUB_OFFLINE=1)"
            f"{tail}"
        )
    try:
        huggingface_hub.model_info(repo, timeout=_HUB_PROBE_TIMEOUT)
    except GatedRepoError:
        return  # exists; from_pretrained reports the access problem
    except RepositoryNotFoundError:
        raise CliError(
            f"{argument} {repo} is not {what}, nor a Hub model (private ones need `hf auth login`){tail}"
        ) from None
    except HfHubHTTPError:
        return  # the Hub answered; from_pretrained reports what it says
    except Exception as error:  # no connection (httpx errors are not OSErrors)
        raise CliError(
            f"{argument} {repo} is not {what}, and the Hub cannot be reached to look for it "
            f"({type(error).__name__}: {error}){tail}"
        ) from error


def load_checkpoint_config(model: str, argument: str = "--model") -> EsamBlipConfig:
    """The `EsamBlipConfig` of `model` (built-in name, folder or Hub id), or a [`CliError`] saying what is wrong."""
    model = resolve_model_argument(model, argument)
    try:
        config_dict, _ = EsamBlipConfig.get_config_dict(model)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load {argument} {model}: {error}") from error
    # A folder without config.json gives an empty dict rather than an error.
    if config_dict.get("model_type") != EsamBlipConfig.model_type:
        found = f"model_type {config_dict['model_type']!r}" if "model_type" in config_dict else "no config.json"
        raise CliError(
            f"{argument} {model} is not an EsamBlip checkpoint ({found}); convert one with "
            "conversion/convert_esam_blip.py"
        )
    return EsamBlipConfig.from_dict(config_dict)


def parse_device(text: str) -> torch.device:
    """An argparse `type`: a torch device string (`cpu`, `cuda`, `cuda:1`, `mps`, ...) that exists on this machine."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (expected cpu, cuda, cuda:N, mps, ...)") from None
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != device.type:
        available = "only the CPU" if accelerator is None else f"cpu and {accelerator.type}"
        raise argparse.ArgumentTypeError(f"device {text!r} is not available here ({available})")
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise argparse.ArgumentTypeError(
            f"device {text!r} is not available here ({torch.accelerator.device_count()} {device.type} device(s))"
        )
    return device


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator if accelerator is not None else torch.device("cpu")


__all__ = [
    "DEBUG_FLAG",
    "DEBUG_HINT",
    "EXIT_ERROR",
    "USER_ERRORS",
    "CliError",
    "CommandParser",
    "check_hub_repo",
    "check_writable",
    "default_device",
    "error_line",
    "is_user_error",
    "load_checkpoint_config",
    "looks_like_hub_id",
    "parse_device",
    "resolve_model_argument",
    "run_command",
]
