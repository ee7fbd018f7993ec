"""
ONNX export of the EfficientSAM half, and a runner that reproduces `model(...)` for point/box prompts with
onnxruntime.

    from transformers_esam_blip.export import EsamBlipOnnxRunner, export_onnx
    export_onnx(model_or_path, "esam-onnx")
    runner = EsamBlipOnnxRunner.from_pretrained("esam-onnx")
    inputs = runner.processor(images=image, input_points=[[[[x, y]]]], return_tensors="np")
    outputs = runner(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])

**The two graphs.**
- `image_encoder.onnx`: `pixel_values [B, 3, S, S]` → `image_embeddings [B, C, g, g]` (dynamic `B`).
- `prompt_decoder.onnx`: `image_embeddings [B, C, g, g]`, `points [B, Q, P, 2]` (float, encoder frame, assembled by
  [`assemble_prompts`]) and `labels [B, Q, P]` (int64) → `pred_masks [B, Q, T, 4g, 4g]` logits and
  `iou_scores [B, Q, T]` for *every* mask token `T` (`num_mask_tokens`, 4 for EfficientSAM), with dynamic `B`, `Q`
  and `P`. `multimask_output` is not a graph input: the runner keeps tokens `1..T-1` (multimask) or token `0`, exactly
  as the torch decoder selects them (`onnx_config.json` records both ranges).

**What it covers.** Point and box prompts of checkpoints with `fusion_type="none"`: the graphs hold only the
EfficientSAM half. Text prompts (Grad-CAM, learned prompter) and the encoder fusions, which read BLIP features, are not
exported; `export_onnx` refuses such checkpoints.

**Output folder.** The two graphs, `config.json`, the processor files when the source checkpoint has a processor, and
`onnx_config.json` (input/output names, opset, sizes, mask-token ranges). It is written to a temporary folder next to
`output_dir` and renamed into place at the end, so a failed export never leaves a half-written folder.

onnx and onnxruntime are optional dependencies (the `tests` extra): they are imported when used.
"""

import copy
import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .builtin import resolve_pretrained_name
from .modeling_efficient_sam import EfficientSamModule
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .prompts import assemble_prompts, validate_point_and_box_prompts

IMAGE_ENCODER_FILE = "image_encoder.onnx"
PROMPT_DECODER_FILE = "prompt_decoder.onnx"
ONNX_CONFIG_FILE = "onnx_config.json"
CONFIG_FILE = "config.json"
ONNX_FORMAT_VERSION = 1
# LayerNormalization (the vision neck and the decoder norms) is an ONNX op from opset 17; the TorchScript exporter
# stops at 20.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 20, 17

ENCODER_INPUTS = ("pixel_values",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "points", "labels")
DECODER_OUTPUTS = ("pred_masks", "iou_scores")


def _first_tensor(output: Any) -> torch.Tensor:
    """The tensor itself, or the first field of a tuple/`ModelOutput` (should a public method grow extra outputs)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def num_mask_tokens(sam: EfficientSamModule) -> int:
    """Mask tokens of the decoder: `num_multimask_outputs + 1` (token 0 is the single-mask output), or 1."""
    outputs = sam.config.mask_decoder_config.num_multimask_outputs
    return outputs + 1 if outputs > 1 else 1


class ImageEncoderGraph(nn.Module):
    """What `image_encoder.onnx` computes: `EfficientSamModule.get_image_embeddings`."""

    def __init__(self, sam: EfficientSamModule) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _first_tensor(self.sam.get_image_embeddings(pixel_values))


class PromptDecoderGraph(nn.Module):
    """
    What `prompt_decoder.onnx` computes: embed assembled points/labels, decode, and return every mask token,
    `[token 0 (single output), tokens 1..T-1 (multimask output)]`.

    It calls the public `decode` twice (single, then multimask) instead of reaching into the decoder: both calls trace
    the same nodes on the same inputs, and onnxruntime's common-subexpression elimination (a basic, always-on graph
    optimisation) merges them when the session loads, so the decoder runs once.
    """

    def __init__(self, sam: EfficientSamModule) -> None:
        super().__init__()
        self.sam = sam
        self.num_mask_tokens = num_mask_tokens(sam)

    def forward(
        self, image_embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.sam.embed_prompts(points, labels).to(image_embeddings.dtype)
        single_masks, single_scores = self.sam.decode(image_embeddings, sparse, multimask_output=False)[:2]
        if self.num_mask_tokens == 1:
            return single_masks, single_scores
        multi_masks, multi_scores = self.sam.decode(image_embeddings, sparse, multimask_output=True)[:2]
        return torch.cat([single_masks, multi_masks], dim=2), torch.cat([single_scores, multi_scores], dim=2)


def _layer_norm_symbolic(g, input, normalized_shape, weight, bias, eps, cudnn_enable):
    """
    `aten::layer_norm` → ONNX `LayerNormalization`, also when `normalized_shape` was traced from a tensor's size.

    The TorchScript exporter's own symbolic needs `normalized_shape` as a constant, but the EfficientSAM neck's
    channel LayerNorm writes `F.layer_norm(x, (x.shape[-1],))`, which the tracer records as a `size` op. Only the
    number of normalised axes matters to ONNX, and that is the length of the traced list.
    """
    from torch.onnx import symbolic_helper

    node = normalized_shape.node()
    if node.kind() == "prim::ListConstruct":
        num_axes = node.inputsSize()
    else:
        num_axes = len(symbolic_helper._maybe_get_const(normalized_shape, "is"))
    axis = -num_axes
    if symbolic_helper._is_none(weight) or symbolic_helper._is_none(bias):
        shape = g.op("Shape", input, start_i=axis)
        if symbolic_helper._is_none(weight):
            weight = g.op("ConstantOfShape", shape, value_t=torch.ones(1, dtype=torch.float32))
        if symbolic_helper._is_none(bias):
            bias = g.op("ConstantOfShape", shape, value_t=torch.zeros(1, dtype=torch.float32))
    epsilon = symbolic_helper._maybe_get_const(eps, "f")
    return g.op("LayerNormalization", input, weight, bias, epsilon_f=float(epsilon), axis_i=axis)


@contextmanager
def _traced_layer_norm(opset_version: int):
    """[`_layer_norm_symbolic`] registered for the duration of one export only."""
    torch.onnx.register_custom_op_symbolic("aten::layer_norm", _layer_norm_symbolic, opset_version)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::layer_norm", opset_version)


def _export_graph(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    opset_version: int,
) -> None:
    # Exporter choice: the TorchScript-based exporter (`dynamo=False`, `dynamic_axes`). With torch 2.13 the
    # torch.export-based exporter (`dynamo=True`, `dynamic_shapes`) needs the extra `onnxscript` package, takes ~30 s
    # for the tiny test model against ~1 s here, and its graph of the decoder failed in onnxruntime ("invalid expand
    # shape") once batch and query count both differed from the traced ones. The traced graph keeps every shape
    # symbolic (the tracer records `size` ops), so batch, query and point counts stay dynamic; the one op its
    # symbolics cannot take (a LayerNorm whose shape is read from the input) is covered by `_traced_layer_norm`.
    # Its deprecation and tracer warnings (e.g. torch's own GroupNorm batch check) are silenced: they are expected.
    with warnings.catch_warnings(), _traced_layer_norm(opset_version), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset_version,
            do_constant_folding=True,
        )


def _load_model(model: "EsamBlipForPromptableSegmentation | str | os.PathLike") -> tuple[Any, Path | None]:
    """The model and the local folder it came from (for its processor), if any."""
    if isinstance(model, (str, os.PathLike)):
        source = resolve_pretrained_name(model)
        loaded = EsamBlipForPromptableSegmentation.from_pretrained(source)
        return loaded, Path(source) if Path(source).is_dir() else None
    if not isinstance(model, EsamBlipForPromptableSegmentation):
        raise TypeError(
            "`model` must be an EsamBlipForPromptableSegmentation, a checkpoint folder or a built-in model name, got "
            f"{type(model).__name__}."
        )
    name = getattr(model, "name_or_path", "") or ""
    return model, Path(name) if name and Path(name).is_dir() else None


def _check_exportable(model: EsamBlipForPromptableSegmentation) -> EfficientSamModule:
    config = model.config
    if model.model.sam is None or not config.has_segmentation:
        raise ValueError(
            "This checkpoint has no EfficientSAM half (config.sam_vision_config is None): there is nothing to export "
            "to ONNX. Export supports point/box prompting of checkpoints with an EfficientSAM half."
        )
    if config.fusion_type != "none":
        raise ValueError(
            f"This checkpoint uses fusion_type={config.fusion_type!r}, whose image embeddings need BLIP inputs. ONNX "
            'export supports point/box prompting of fusion_type="none" checkpoints only.'
        )
    return model.model.sam


def _check_output_dir(output_dir: Path, overwrite: bool, source: Path | None) -> None:
    if output_dir.exists():
        if not output_dir.is_dir():
            raise ValueError(f"`output_dir` {output_dir} exists and is not a folder.")
        if any(output_dir.iterdir()) and not overwrite:
            raise ValueError(
                f"`output_dir` {output_dir} is not empty; pass overwrite=True to replace its contents with the export."
            )
    if source is not None and output_dir.resolve() == source.resolve():
        raise ValueError(f"`output_dir` {output_dir} is the checkpoint's own folder; export to another folder.")


def _save_processor(source: Path | None, folder: Path) -> str | None:
    """Copy the source checkpoint's processor (joint, else image-only) into `folder`; its class name, or None."""
    if source is None:
        return None
    from .image_processing_esam_blip import EsamBlipImageProcessor
    from .processing_esam_blip import EsamBlipProcessor

    for cls in (EsamBlipProcessor, EsamBlipImageProcessor):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processor = cls.from_pretrained(source)
        except Exception:  # "if one is loadable": any failure means there is none to copy
            continue
        processor.save_pretrained(folder)
        return cls.__name__
    return None


@contextmanager
def _float32_eval(sam: EfficientSamModule):
    """`sam` in eval mode and float32 (a copy when it is not float32); the caller's modes are restored afterwards."""
    if any(p.dtype != torch.float32 for p in sam.parameters()):
        yield copy.deepcopy(sam).float().eval()
        return
    modes = [(module, module.training) for module in sam.modules()]
    sam.eval()
    try:
        yield sam
    finally:
        for module, training in modes:
            module.training = training


def _write_export(sam: EfficientSamModule, model: Any, source: Path | None, folder: Path, opset: int) -> None:
    import onnx

    vision = model.config.sam_vision_config
    max_points = model.config.prompt_encoder_config.max_num_points
    size, grid, channels = vision.image_size, vision.image_embedding_size, vision.output_channels
    device = next(sam.parameters()).device
    generator = torch.Generator().manual_seed(0)
    # Example shapes differ from each other (batch 2, 3 queries) so nothing can be mistaken for another axis.
    pixel_values = torch.randn(2, 3, size, size, generator=generator).to(device)
    embeddings = torch.randn(2, channels, grid, grid, generator=generator).to(device)
    points = (torch.rand(2, 3, max_points, 2, generator=generator) * size).to(device)
    labels = (torch.arange(2 * 3 * max_points) % 5 - 1).reshape(2, 3, max_points).to(device)

    _export_graph(
        ImageEncoderGraph(sam),
        (pixel_values,),
        folder / IMAGE_ENCODER_FILE,
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        {"pixel_values": {0: "batch"}, "image_embeddings": {0: "batch"}},
        opset,
    )
    prompt_axes = {0: "batch", 1: "queries", 2: "points"}
    _export_graph(
        PromptDecoderGraph(sam),
        (embeddings, points, labels),
        folder / PROMPT_DECODER_FILE,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {
            "image_embeddings": {0: "batch"},
            "points": prompt_axes,
            "labels": prompt_axes,
            "pred_masks": {0: "batch", 1: "queries"},
            "iou_scores": {0: "batch", 1: "queries"},
        },
        opset,
    )
    for name in (IMAGE_ENCODER_FILE, PROMPT_DECODER_FILE):
        onnx.checker.check_model(str(folder / name))

    # The config alone (no `auto_map` source files): the runner reads sizes from it, and it documents the model.
    model.config.to_json_file(folder / CONFIG_FILE)
    processor_class = _save_processor(source, folder)
    tokens = num_mask_tokens(sam)
    onnx_config = {
        "format_version": ONNX_FORMAT_VERSION,
        "exporter": "torch.onnx.export (TorchScript, dynamic_axes)",
        "opset_version": opset,
        "image_encoder": {"file": IMAGE_ENCODER_FILE, "inputs": list(ENCODER_INPUTS), "outputs": list(ENCODER_OUTPUTS)},
        "prompt_decoder": {
            "file": PROMPT_DECODER_FILE,
            "inputs": list(DECODER_INPUTS),
            "outputs": list(DECODER_OUTPUTS),
            "dynamic_axes": ["batch", "queries", "points"],
        },
        "image_size": size,
        "image_embedding_size": grid,
        "image_embedding_channels": channels,
        "max_num_points": max_points,
        "mask_size": 4 * grid,
        "num_mask_tokens": tokens,
        # The decoder graph returns every mask token; `model(..., multimask_output=...)` keeps these [start, stop).
        "multimask_output": {"true": [1, tokens] if tokens > 1 else [0, 1], "false": [0, 1]},
        "processor_class": processor_class,
    }
    (folder / ONNX_CONFIG_FILE).write_text(json.dumps(onnx_config, indent=2) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename `staging` to `output_dir`, replacing an existing folder only once the new one is complete."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    previous = output_dir.with_name(f".{output_dir.name}.previous-{uuid.uuid4().hex[:8]}")
    output_dir.rename(previous)
    try:
        staging.rename(output_dir)
    except BaseException:
        previous.rename(output_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def export_onnx(
    model: "EsamBlipForPromptableSegmentation | str | os.PathLike",
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    opset_version: int | None = None,
) -> dict[str, Path]:
    """
    Export the EfficientSAM half of a segmentation checkpoint to `image_encoder.onnx` and `prompt_decoder.onnx`.

    Args:
        model: an [`EsamBlipForPromptableSegmentation`], or a checkpoint folder or built-in model name to load one
            from. Its processor is copied when its source folder has one.
        output_dir: the folder to create. Written next to itself first and renamed into place when complete.
        overwrite: replace a non-empty `output_dir` (otherwise a `ValueError`).
        opset_version: ONNX opset, 17 to 20 (default 17).

    Returns:
        The written paths: `"image_encoder"`, `"prompt_decoder"`, `"config"`, `"onnx_config"` and `"folder"`.

    Raises:
        `ValueError`: `output_dir` is not empty (without `overwrite`) or is a file; the checkpoint has no EfficientSAM
            half or uses an encoder fusion (`fusion_type != "none"`); an unsupported opset.
        `TypeError`: `model` is neither a segmentation model nor a name/path.
    """
    opset = DEFAULT_OPSET if opset_version is None else int(opset_version)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"`opset_version` must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset_version}.")
    output_dir = Path(output_dir).absolute()
    _check_output_dir(output_dir, overwrite, None)
    model, source = _load_model(model)
    sam = _check_exportable(model)
    _check_output_dir(output_dir, overwrite, source)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling (same filesystem, so the final rename is atomic), created with the usual permissions.
    staging = output_dir.with_name(f".{output_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()
    try:
        with _float32_eval(sam) as export_sam:
            _write_export(export_sam, model, source, staging, opset)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "folder": output_dir,
        "image_encoder": output_dir / IMAGE_ENCODER_FILE,
        "prompt_decoder": output_dir / PROMPT_DECODER_FILE,
        "config": output_dir / CONFIG_FILE,
        "onnx_config": output_dir / ONNX_CONFIG_FILE,
    }


def _as_torch(value: Any) -> Any:
    """numpy → torch (sharing memory), torch → detached CPU; anything else unchanged (validation names it)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def _as_numpy(value: Any, name: str, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array or a torch.Tensor, got {type(value).__name__}.")
    return np.ascontiguousarray(value, dtype=dtype)


class EsamBlipOnnxRunner:
    """
    Runs an [`export_onnx`] folder with onnxruntime, as `EsamBlipForPromptableSegmentation` runs point/box prompts:
    same inputs (numpy or torch, as the processor returns them), same checks, same `pred_masks`/`iou_scores`.

    Attributes:
        processor: the exported checkpoint's processor (`EsamBlipProcessor` or `EsamBlipImageProcessor`), or `None`.
        onnx_config: the contents of `onnx_config.json`.
    """

    def __init__(self, image_encoder: Any, prompt_decoder: Any, onnx_config: dict, processor: Any = None) -> None:
        self.image_encoder = image_encoder
        self.prompt_decoder = prompt_decoder
        self.onnx_config = onnx_config
        self.processor = processor
        self.image_size = int(onnx_config["image_size"])
        self.image_embedding_size = int(onnx_config["image_embedding_size"])
        self.image_embedding_channels = int(onnx_config["image_embedding_channels"])
        self.max_num_points = int(onnx_config["max_num_points"])
        self._mask_tokens = {key: slice(*bounds) for key, bounds in onnx_config["multimask_output"].items()}

    @classmethod
    def from_pretrained(cls, output_dir: str | os.PathLike, providers: list | None = None) -> "EsamBlipOnnxRunner":
        """
        Load an [`export_onnx`] folder.

        Args:
            output_dir: the folder.
            providers: onnxruntime execution providers (default `["CPUExecutionProvider"]`).
        """
        import onnxruntime

        folder = Path(output_dir)
        config_path = folder / ONNX_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: `output_dir` must be a folder written by export_onnx.")
        onnx_config = json.loads(config_path.read_text(encoding="utf-8"))
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        sessions = [
            onnxruntime.InferenceSession(str(folder / onnx_config[part]["file"]), providers=providers)
            for part in ("image_encoder", "prompt_decoder")
        ]
        return cls(*sessions, onnx_config=onnx_config, processor=cls._load_processor(folder, onnx_config))

    @staticmethod
    def _load_processor(folder: Path, onnx_config: dict) -> Any:
        from .image_processing_esam_blip import EsamBlipImageProcessor
        from .processing_esam_blip import EsamBlipProcessor

        classes = {cls.__name__: cls for cls in (EsamBlipProcessor, EsamBlipImageProcessor)}
        cls = classes.get(onnx_config.get("processor_class") or "")
        return None if cls is None else cls.from_pretrained(folder)

    def get_image_embeddings(self, pixel_values: Any) -> np.ndarray:
        """`pixel_values [B, 3, S, S]` (from the image processor) → `image_embeddings [B, C, g, g]` float32."""
        return self._encode(self._check_pixel_values(pixel_values))

    def _encode(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.image_encoder.run(None, {ENCODER_INPUTS[0]: pixel_values})[0]

    def _check_pixel_values(self, pixel_values: Any) -> np.ndarray:
        pixel_values = _as_numpy(pixel_values, "pixel_values", np.float32)
        size = self.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, size, size):
            raise ValueError(
                f"`pixel_values` must have shape [batch, 3, {size}, {size}] (use EsamBlipImageProcessor), got "
                f"{tuple(pixel_values.shape)}."
            )
        return pixel_values

    def _check_embeddings(self, image_embeddings: Any) -> np.ndarray:
        image_embeddings = _as_numpy(image_embeddings, "image_embeddings", np.float32)
        expected = (self.image_embedding_channels, self.image_embedding_size, self.image_embedding_size)
        if image_embeddings.ndim != 4 or image_embeddings.shape[1:] != expected:
            raise ValueError(
                f"`image_embeddings` must have shape [batch, {', '.join(map(str, expected))}], got "
                f"{tuple(image_embeddings.shape)}."
            )
        return image_embeddings

    def __call__(
        self,
        pixel_values: Any = None,
        image_embeddings: Any = None,
        input_points: Any = None,
        input_labels: Any = None,
        input_boxes: Any = None,
        multimask_output: bool = True,
    ) -> dict[str, np.ndarray]:
        """
        Masks for point/box prompts, as `EsamBlipForPromptableSegmentation.forward` computes them.

        Args:
            pixel_values: `[B, 3, S, S]`, XOR `image_embeddings [B, C, g, g]` (from `get_image_embeddings`).
            input_points: `[B, Q, P, 2]` (x, y) in the S x S encoder frame; padding `(-1, -1)`.
            input_labels: `[B, Q, P]`: 1 foreground, 0 background, 2/3 box corners, -1 padding; all 1 if omitted.
            input_boxes: `[B, Q, 4]` (x1, y1, x2, y2) in the encoder frame.
            multimask_output: three candidate masks per query if True, one otherwise.

        Returns:
            `{"pred_masks": [B, Q, M, 4g, 4g] logits, "iou_scores": [B, Q, M], "image_embeddings": [B, C, g, g]}`
            as float32 numpy arrays.
        """
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeddings`.")
        if image_embeddings is None:
            pixel_values = self._check_pixel_values(pixel_values)
        else:
            image_embeddings = self._check_embeddings(image_embeddings)
        batch_size = (pixel_values if image_embeddings is None else image_embeddings).shape[0]
        # The model's boundary checks, on torch tensors, before any graph runs.
        input_points, input_labels, input_boxes = map(_as_torch, (input_points, input_labels, input_boxes))
        validate_point_and_box_prompts(batch_size, self.image_size, input_points, input_labels, input_boxes)
        if image_embeddings is None:
            image_embeddings = self._encode(pixel_values)
        points, labels = assemble_prompts(input_points, input_labels, input_boxes, self.max_num_points)
        pred_masks, iou_scores = self.prompt_decoder.run(
            None,
            {
                DECODER_INPUTS[0]: image_embeddings,
                DECODER_INPUTS[1]: np.ascontiguousarray(points.numpy(), dtype=np.float32),
                DECODER_INPUTS[2]: np.ascontiguousarray(labels.numpy(), dtype=np.int64),
            },
        )
        tokens = self._mask_tokens["true" if multimask_output else "false"]
        return {
            "pred_masks": np.ascontiguousarray(pred_masks[:, :, tokens]),
            "iou_scores": np.ascontiguousarray(iou_scores[:, :, tokens]),
            "image_embeddings": image_embeddings,
        }


__all__ = [
    "EsamBlipOnnxRunner",
    "ImageEncoderGraph",
    "PromptDecoderGraph",
    "export_onnx",
    "num_mask_tokens",
]
