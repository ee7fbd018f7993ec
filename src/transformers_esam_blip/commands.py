"""What every command shares: the one-line error convention, `--debug`, and the checks of `--model` and `--device`.

A user error (a bad argument, a missing or unreadable file) is reported as exactly one line, `error: ...`, naming the
argument or the file, on stderr, with exit status 2 and no traceback; `--debug` re-raises it instead. The `esam-blip`
command, `python -m transformers_esam_blip.training` / `.evaluation` / `.demo` and `conversion/convert_esam_blip.py`
all parse and run through [`run_command`].
"""

import argparse
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
# Errors that report a user's mistake: library errors name the argument and the fix already.
USER_ERRORS = (ValueError, TypeError, OSError)


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

    User errors ([`CliError`], `ValueError`, `TypeError`, `OSError`) become one `error: ...` line on stderr and
    `EXIT_ERROR`, unless `argv` holds `--debug`, which re-raises them.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        action(args)
    except (CliError, *USER_ERRORS) as error:
        if DEBUG_FLAG in argv:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    return 0


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
    return model


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
    "EXIT_ERROR",
    "USER_ERRORS",
    "CliError",
    "CommandParser",
    "default_device",
    "load_checkpoint_config",
    "looks_like_hub_id",
    "parse_device",
    "resolve_model_argument",
    "run_command",
]
