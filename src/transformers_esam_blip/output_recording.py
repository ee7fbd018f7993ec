"""Attentions and hidden states collected by forward hooks, declared as `transformers`' `_can_record_outputs`."""

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import fields
from functools import partial, wraps

from torch import nn
from transformers import PreTrainedModel
from transformers.utils.output_capturing import OutputRecorder

# The recorder of the forward running in this context: output field name → values in call order; None when idle.
_ACTIVE_RECORDER: ContextVar[dict[str, list] | None] = ContextVar("esam_blip_active_recorder", default=None)
_INSTALL_LOCK = threading.Lock()


def recording_attentions() -> bool:
    """
    Whether the running forward records attention probabilities. Attention modules then compute them explicitly (the
    eager path) instead of with SDPA, which does not return them. A Python flag, so traced graphs have no branch.
    """
    recorder = _ACTIVE_RECORDER.get()
    return recorder is not None and any(key.endswith("attentions") for key in recorder)


def _recorder_specs(model: PreTrainedModel) -> list[tuple[str, OutputRecorder]]:
    specs = []
    for key, entries in (type(model)._can_record_outputs or {}).items():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, OutputRecorder):
                entry = OutputRecorder(target_class=entry, index=0 if key.endswith("hidden_states") else 1)
            specs.append((key, entry))
    return specs


def _record(module: nn.Module, args: tuple, output, key: str, spec: OutputRecorder) -> None:
    recorder = _ACTIVE_RECORDER.get()
    if recorder is None or key not in recorder:
        return
    values = recorder[key]
    # As transformers does for `hidden_states`: the input of the first recorded layer is the embedding output.
    if key.endswith("hidden_states") and spec.capture_initial_hidden_state and not values:
        values.append(args[0])
    value = output[spec.index] if isinstance(output, tuple) else output
    if value is not None:
        values.append(value)


def _install_hooks(model: PreTrainedModel) -> None:
    # The model's own declarations reach into nested `PreTrainedModel`s too (BLIP's ViT and text encoder), so that one
    # forward's recorder sees every sub-model it runs, whatever those sub-models record for themselves.
    with _INSTALL_LOCK:
        if getattr(model, "_esam_blip_recording_hooks", False):
            return
        specs = _recorder_specs(model)
        for name, module in model.named_modules():
            for key, spec in specs:
                if not isinstance(module, spec.target_class):
                    continue
                if spec.layer_name is not None and f".{spec.layer_name.strip('.')}." not in f".{name}.":
                    continue
                module.register_forward_hook(partial(_record, key=key, spec=spec))
        model._esam_blip_recording_hooks = True


def record_outputs(forward: Callable) -> Callable:
    r"""
    Decorator of a model `forward` that fills the output fields its class declares in `_can_record_outputs` (the
    format of `transformers`: a field name mapped to a module class, or `OutputRecorder`s), from forward hooks.

    `transformers`' own `capture_outputs` switches a field `vision_attentions` on with `output_vision_attentions`;
    here every field whose name ends in `attentions` follows `output_attentions` and every field ending in
    `hidden_states` follows `output_hidden_states` (the forward's keywords, defaulting to the config's), so a joint
    model answers the two usual flags. A `*hidden_states` field starts with the input of its first recorded layer
    (the embeddings), as `transformers` does, and holds every pass of those layers in call order. The hooks also
    reach into nested `PreTrainedModel`s (BLIP), so the forward need not pass the flags on; it receives them resolved
    to `bool`. A field stays `None` when its modules did not run (no EfficientSAM ViT for cached `image_embeddings`).
    Hooks are installed once, on the first recording call.

    The forward must return its `ModelOutput` dataclass: put `can_return_tuple` outside this decorator.
    """

    @wraps(forward)
    def wrapper(self: PreTrainedModel, *args, **kwargs):
        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.get(flag) is None:
                kwargs[flag] = bool(getattr(self.config, flag, False))
        recorder = {
            key: []
            for key in (type(self)._can_record_outputs or {})
            if (key.endswith("attentions") and kwargs["output_attentions"])
            or (key.endswith("hidden_states") and kwargs["output_hidden_states"])
        }
        if recorder:
            _install_hooks(self)
        token = _ACTIVE_RECORDER.set(recorder or None)
        try:
            output = forward(self, *args, **kwargs)
        finally:
            _ACTIVE_RECORDER.reset(token)
        if not recorder:
            return output
        # Rebuilt rather than assigned, so that `to_tuple()` keeps the dataclass field order.
        values = {field.name: getattr(output, field.name) for field in fields(output)}
        return type(output)(**{**values, **{key: tuple(items) for key, items in recorder.items() if items}})

    return wrapper


__all__ = ["OutputRecorder", "record_outputs", "recording_attentions"]
