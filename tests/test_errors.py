"""Issue 13: every bad input gets a clear error naming the argument or file; every command fails in one line.

In-process tests check the exception type and that the message names the argument; the `slow` tests run each command
in a real process on broken inputs and check one `error:` line on stderr, exit status 2 and no traceback.
"""

import json
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EFFICIENTSAM_FIXTURE, LAVIS_FIXTURE
from safetensors import SafetensorError
from transformers import BlipConfig, BlipForImageTextRetrieval

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipImageProcessor
from transformers_esam_blip.commands import (
    DEBUG_HINT,
    CliError,
    CommandParser,
    is_user_error,
    resolve_model_argument,
    run_command,
)
from transformers_esam_blip.conversion import checkpoint as conversion
from transformers_esam_blip.conversion.checkpoint import convert_checkpoint
from transformers_esam_blip.data.user_data import load_referring_dataset
from transformers_esam_blip.text_prompting import mask_enhanced_heatmap, sample_patch_indices, select_salient_cells
from transformers_esam_blip.training import command as training

REPO = Path(__file__).resolve().parents[1]
ESAM = EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt"
LAVIS = LAVIS_FIXTURE / "checkpoint.pth"
TOKENIZER = LAVIS_FIXTURE / "tokenizer"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------- shared convention


def test_user_errors_are_told_from_bugs():
    from datasets.exceptions import DatasetGenerationError

    assert is_user_error(CliError("x")) and is_user_error(ValueError("x")) and is_user_error(TypeError("x"))
    assert is_user_error(PermissionError(13, "Permission denied", "/ro")) and is_user_error(OSError(28, "full"))
    assert is_user_error(SafetensorError("bad header")) and is_user_error(DatasetGenerationError("bad"))
    assert is_user_error(pickle.UnpicklingError("refused")) and is_user_error(MemoryError())
    assert is_user_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8e10 bytes"))
    # Programming errors keep their traceback.
    assert not is_user_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_user_error(KeyError("x")) and not is_user_error(AttributeError("x"))


def _failing_command(error: BaseException):
    parser = CommandParser(prog="probe")

    def action(args):
        raise error

    return parser, action


def test_library_errors_become_one_line_with_the_debug_hint(capsys):
    from datasets.exceptions import DatasetGenerationError

    try:
        try:
            raise ValueError("JSON parse error: Invalid value. in row 0")
        except ValueError as cause:
            raise DatasetGenerationError("An error occurred while generating the dataset") from cause
    except DatasetGenerationError as error:
        wrapped = error
    assert run_command(*_failing_command(wrapped), []) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "DatasetGenerationError" in line and "JSON parse error" in line and line.endswith(DEBUG_HINT)
    assert run_command(*_failing_command(OSError(28, "No space left on device", "/out/model.safetensors")), []) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "/out/model.safetensors" in line
    assert (
        run_command(*_failing_command(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")), [])
        == 2
    )
    assert "out of memory" in _one_error_line(capsys.readouterr().err)
    # A bug is not hidden behind one line.
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_command(*_failing_command(RuntimeError("shapes cannot be multiplied")), [])
    with pytest.raises(OSError):
        run_command(*_failing_command(OSError(28, "No space left on device")), ["--debug"])


def test_model_typo_fails_fast_offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    start = time.monotonic()
    with pytest.raises(
        CliError, match=r"--model someone/unknown-model .*offline.*built-in models are: esam-blip-shapes"
    ):
        resolve_model_argument("someone/unknown-model")
    assert time.monotonic() - start < 5
    with pytest.raises(CliError, match=r"--model a--b .*nor a valid Hub id"):
        resolve_model_argument("a--b")


def test_model_typo_asks_the_hub_once(monkeypatch):
    """Online, one request without retries: a missing repository or no connection is an immediate error."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    calls = []

    def missing(repo, timeout):
        calls.append((repo, timeout))
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(error, "404 Repository Not Found")
        raise error

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "model_info", missing)
    with pytest.raises(CliError, match=r"--model me/nothing-here is not .*nor a Hub model.*esam-blip-shapes"):
        resolve_model_argument("me/nothing-here")
    assert len(calls) == 1 and calls[0][1] <= 10

    def unreachable(repo, timeout):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(CliError, match=r"--model me/nothing-here .*Hub cannot be reached.*Name or service"):
        resolve_model_argument("me/nothing-here")


# ------------------------------------------------------------------------------------------------------ conversion


class _Payload:
    """Unpickling this would create a file: a checkpoint must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def bad_checkpoints(tmp_path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pt" for name in ("text", "truncated", "pickle", "empty", "not_tensors")}
    files["text"].write_text("hello, I am not a checkpoint\n")
    files["truncated"].write_bytes(ESAM.read_bytes()[:20000])
    torch.save({"model": {"weight": torch.zeros(1), "payload": _Payload(tmp_path / "pwned")}}, files["pickle"])
    files["empty"].write_bytes(b"")
    torch.save({"model": {"weight": torch.zeros(1), "step": 3}}, files["not_tensors"])
    return files


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text", r"--efficientsam: .*text\.pt is not a PyTorch checkpoint \(it starts with b'hello"),
        ("truncated", r"--efficientsam: .*truncated\.pt is not a readable PyTorch checkpoint \(truncated or corrupt"),
        ("pickle", r"--efficientsam: .*pickle\.pt holds objects other than tensors .*refused without running them"),
        ("empty", r"--efficientsam: .*empty\.pt is empty"),
        ("not_tensors", r"--efficientsam: .*not_tensors\.pt is not a state dict: the entry 'step' is a int"),
    ],
)
def test_unreadable_or_hostile_checkpoints(bad_checkpoints, tmp_path, capsys, name, message):
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(tmp_path / "out", efficientsam=bad_checkpoints[name])
    assert not (tmp_path / "pwned").exists()  # the pickled payload never ran
    assert conversion.main(["--efficientsam", str(bad_checkpoints[name]), "--output_dir", str(tmp_path / "out")]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # no staging folder left


def test_unreadable_blip_sources(bad_checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"--blip: .*text\.pt is not a PyTorch checkpoint"):
        convert_checkpoint(tmp_path / "out", blip=bad_checkpoints["text"], tokenizer=TOKENIZER)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"--blip: .*model\.safetensors is not a readable safetensors file"):
        convert_checkpoint(tmp_path / "out", blip=folder, tokenizer=TOKENIZER)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(ValueError, match=r"--blip: .*index\.json names the shard '\.\./\.\./etc/passwd', outside"):
        convert_checkpoint(tmp_path / "out", blip=folder, tokenizer=TOKENIZER)
    (folder / "model.safetensors.index.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"--blip: .*index\.json is not valid JSON"):
        convert_checkpoint(tmp_path / "out", blip=folder, tokenizer=TOKENIZER)


def test_output_location_is_checked_before_converting(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the sources must not be read before the output is known to be writable")

    monkeypatch.setattr(conversion, "load_efficient_sam_state_dict", never)
    monkeypatch.setattr(conversion, "load_blip_source", never)
    # A read-only place (root ignores permission bits, so the refusal of the file system is simulated).
    real_mkdtemp = conversion.tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(conversion.tempfile, "mkdtemp", read_only)
    (tmp_path / "ro").mkdir()
    with pytest.raises(PermissionError, match=r"--output_dir .*ro/out: cannot write in .*ro \(Permission denied\)"):
        convert_checkpoint(tmp_path / "ro" / "out", efficientsam=ESAM)
    with pytest.raises(PermissionError, match=r"--output_dir .*ro/new/deeper/out: cannot write in .*ro"):
        convert_checkpoint(tmp_path / "ro" / "new" / "deeper" / "out", efficientsam=ESAM)
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == []  # the parents it tried to create are gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--output_dir .*file/out: .*file is a file, not a folder"):
        convert_checkpoint(tmp_path / "file" / "out", efficientsam=ESAM)
    with pytest.raises(FileExistsError, match=r"--output_dir .*file is a file; give a folder"):
        convert_checkpoint(tmp_path / "file", efficientsam=ESAM, overwrite=True)
    # --tokenizer is checked before the BLIP source is read, and a missing folder is not sent to the Hub.
    with pytest.raises(FileNotFoundError, match=r"--tokenizer .*no-such-tokenizer does not exist"):
        convert_checkpoint(tmp_path / "out", blip=LAVIS, tokenizer=tmp_path / "no-such-tokenizer")
    (tmp_path / "empty-tokenizer").mkdir()
    with pytest.raises(ValueError, match=r"--tokenizer .*empty-tokenizer holds no tokenizer"):
        convert_checkpoint(tmp_path / "out", blip=LAVIS, tokenizer=tmp_path / "empty-tokenizer")
    with pytest.raises(ValueError, match="--tokenizer is required with --blip"):
        convert_checkpoint(tmp_path / "out", blip=LAVIS)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    def full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(EsamBlipForPromptableSegmentation, "save_pretrained", full)
    with pytest.raises(OSError, match=r"--output_dir .*out: writing the checkpoint failed \(.*StorageFull"):
        convert_checkpoint(tmp_path / "out", efficientsam=ESAM)
    assert list(tmp_path.iterdir()) == []
    assert conversion.main(["--efficientsam", str(ESAM), "--output_dir", str(tmp_path / "out")]) == 2
    assert "StorageFull" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sam_num_heads": 0}, ValueError, "--sam_num_heads must be an int >= 1, got 0"),
        ({"sam_num_heads": True}, ValueError, "--sam_num_heads must be an int >= 1, got True"),
        ({"dtype": "float64"}, ValueError, "--dtype must be one of"),
        (
            {"blip_vision_heads": 4},
            ValueError,
            "--blip_vision_heads, --blip_text_heads and --gradcam_block_num are only",
        ),
        ({"gradcam_block_num": -1}, ValueError, "--gradcam_block_num must be an int >= 0, got -1"),
    ],
)
def test_flag_types_and_ranges(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        convert_checkpoint(tmp_path / "out", efficientsam=ESAM, **kwargs)


def _transformers_blip(folder: Path, text_heads: int = 4) -> Path:
    """A transformers BlipForImageTextRetrieval whose widths (24, 32) are not multiples of 64, as the fixture vocab."""
    vocab_size = len((TOKENIZER / "vocab.txt").read_text(encoding="utf-8").splitlines()) + 2
    config = BlipConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
                     "num_attention_heads": text_heads},
        vision_config={"hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 3,
                       "image_size": 32, "patch_size": 8},
        image_text_hidden_size=16,
    )  # fmt: skip
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    return folder


def test_transformers_blip_hyper_parameters_come_from_its_config(tmp_path):
    source = _transformers_blip(tmp_path / "blip-hf")
    output = convert_checkpoint(tmp_path / "out", blip=source, tokenizer=TOKENIZER, gradcam_block_num=2)
    config = json.loads((output / "config.json").read_text())
    assert config["vision_config"]["num_attention_heads"] == 3 and config["text_config"]["num_attention_heads"] == 4
    assert config["gradcam_block_num"] == 2
    assert json.loads((output / "conversion.json").read_text())["gradcam_block_num"] == 2
    card = (output / "README.md").read_text()
    assert "text layer 2 of 3 (`gradcam_block_num`, --gradcam_block_num)" in card
    assert "ViT 3, text encoder 4 (from the source's config.json)" in card
    # A flag that agrees is fine; one that contradicts the config is an error, whichever half it names.
    with pytest.raises(ValueError, match=r"`vision_heads`=4 \(--blip_vision_heads\) contradicts .*=3 for the ViT"):
        convert_checkpoint(tmp_path / "bad", blip=source, tokenizer=TOKENIZER, blip_vision_heads=4)
    with pytest.raises(ValueError, match=r"`text_heads`=2 \(--blip_text_heads\) contradicts .*=4 for the text"):
        convert_checkpoint(tmp_path / "bad", blip=source, tokenizer=TOKENIZER, blip_vision_heads=3, blip_text_heads=2)
    with pytest.raises(ValueError, match=r"--gradcam_block_num must be in \[0, 2\] \(the text encoder has 3 layers\)"):
        convert_checkpoint(tmp_path / "bad", blip=source, tokenizer=TOKENIZER, gradcam_block_num=3)
    assert not (tmp_path / "bad").exists()


def test_lavis_heads_are_never_half_guessed(tmp_path):
    """A LAVIS file records no head counts: with only one flag, the other half is not guessed (1 head instead of 4)."""
    with pytest.raises(
        ValueError, match=r"--blip_vision_heads\) is given but `text_heads` \(--blip_text_heads\) is not"
    ):
        convert_checkpoint(tmp_path / "out", blip=LAVIS, tokenizer=TOKENIZER, blip_vision_heads=4)
    output = convert_checkpoint(
        tmp_path / "out", blip=LAVIS, tokenizer=TOKENIZER, blip_vision_heads=4, blip_text_heads=4
    )
    card = (output / "README.md").read_text()
    assert "text layer 1 of 3 (`gradcam_block_num`, the default)" in card


# -------------------------------------------------------------------------------------------------------- training


def _metadata_folder(root: Path, content: str, name: str = "metadata.jsonl") -> Path:
    root.mkdir()
    (root / name).write_text(content)
    return root


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "metadata.jsonl", r"metadata\.jsonl is empty: the dataset holds no examples"),
        ("\n\n", "metadata.jsonl", r"metadata\.jsonl holds only blank lines"),
        ("this is not json {\n", "metadata.jsonl", r"metadata\.jsonl line 1 is not JSON"),
        ('{"file_name": "a.png", "text": "x"}\n[1, 2]\n', "metadata.jsonl", r"line 2 must be a JSON object"),
        ("file_name,text,mask_file_name\n", "metadata.csv", r"metadata\.csv holds a header at most"),
    ],
)
def test_broken_metadata_files(tmp_path, capsys, content, name, message):
    folder = _metadata_folder(tmp_path / "data", content, name)
    with pytest.raises(ValueError, match=message):
        load_referring_dataset(folder)
    argv = ["--config", "tiny", "--dataset", str(folder), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    assert training.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --dataset {folder}") and re.search(message, line)


def test_training_output_dir_must_be_writable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["--config", "tiny", "--dataset", "synthetic", "--output_dir", str(tmp_path / "file" / "out")]
    assert training.main(argv) == 2
    assert re.search(
        r"--output_dir .*file/out cannot be written: .*file is a file", _one_error_line(capsys.readouterr().err)
    )


# ------------------------------------------------------------------------------------------------ image processing


def test_post_process_masks_checks_original_sizes_and_threshold():
    processor = EsamBlipImageProcessor(sam_image_size=64)
    logits = torch.zeros(1, 1, 1, 16, 16)
    for sizes in ([[-4, 8]], [[0, 8]], [[4.5, 8]], [[float("nan"), 8]]):
        with pytest.raises(ValueError, match="`original_sizes` must hold positive integer"):
            processor.post_process_masks(logits, sizes)
    with pytest.raises(TypeError, match="`original_sizes` must hold integer sides, got '4'"):
        processor.post_process_masks(logits, [["4", 8]])
    with pytest.raises(TypeError, match="`original_sizes` must be"):
        processor.post_process_masks(logits, 48)
    with pytest.raises(TypeError, match="`mask_threshold` must be a number, got str 'high'"):
        processor.post_process_masks(logits, [[48, 64]], mask_threshold="high")
    with pytest.raises(ValueError, match="`mask_threshold` must be a finite number, got nan"):
        processor.post_process_masks(logits, [[48, 64]], mask_threshold=float("nan"))
    with pytest.raises(TypeError, match="`binarize` must be a bool"):
        processor.post_process_masks(logits, [[48, 64]], binarize="no")
    assert processor.post_process_masks(logits, torch.tensor([[48, 64]]), mask_threshold=torch.tensor(0.5))[0].shape == (
        1, 1, 48, 64,
    )  # fmt: skip
    with pytest.raises(ValueError, match="`original_sizes` must hold positive integer"):
        processor.post_process_points([torch.zeros(1, 2)], [[0, 64]])
    with pytest.raises(ValueError, match="`original_sizes` must hold positive integer"):
        processor.preprocess_prompts([[48, -64]], input_points=[[[[1, 2]]]])


@pytest.mark.parametrize(
    "image",
    [
        np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (20000, 20000, 3)),  # 1.1 GB if copied
        np.broadcast_to(np.zeros((1, 1, 3), dtype=np.float64), (20000, 20000, 3)),  # 9.6 GB if copied
        np.broadcast_to(np.zeros((1, 1, 3), dtype=np.int16), (20000, 20000, 3)),  # int64 upcast: 9.6 GB
        torch.zeros(3, 1, 1).expand(3, 20000, 20000),
    ],
    ids=["uint8-view", "float64-view", "int16-view", "torch-expand"],
)
def test_size_check_runs_before_any_copy(image):
    processor = EsamBlipImageProcessor(sam_image_size=64, blip_image_size=32)
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError, match=r"`images(\[0\])?` has 400000000 pixels \(20000x20000\), over `max_image_pixels`"
        ):
            processor(images=[image])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda h: select_salient_cells(h, num_points="3"), TypeError, "`num_points` (k) must be an int >= 1, got str"),
        (lambda h: select_salient_cells(h, 2, min_distance=1.5), TypeError, "`min_distance` (cells) must be an int"),
        (lambda h: select_salient_cells(h, 2, threshold=float("nan")), ValueError, "`threshold` must be in [0, 1]"),
        (lambda h: select_salient_cells(h, 2, threshold="high"), TypeError, "`threshold` must be a number in [0, 1]"),
        (lambda h: mask_enhanced_heatmap(h, torch.zeros(1, 4, 4), float("nan")), ValueError, "`alpha` must be in"),
        (lambda h: mask_enhanced_heatmap(h, torch.zeros(1, 4, 4), "0.5"), TypeError, "`alpha` must be a number"),
        (lambda h: sample_patch_indices(h.flatten(1), 2.0), TypeError, "`num_patches` must be an int >= 1"),
    ],
)
def test_text_prompting_helpers_type_their_arguments(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(torch.rand(1, 3, 3))


# -------------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def segmenter(joint_checkpoint, tmp_path_factory):
    from test_pipelines_text import save_tiny_joint_checkpoint
    from transformers import pipeline

    from transformers_esam_blip.pipelines import TASK

    folder = save_tiny_joint_checkpoint(joint_checkpoint, tmp_path_factory.mktemp("errors") / "joint")
    return pipeline(TASK, model=str(folder), device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mask_threshold": "high"}, TypeError, "`mask_threshold` must be a number, got str 'high'"),
        ({"mask_threshold": float("nan")}, ValueError, "`mask_threshold` must be a finite number, got nan"),
        ({"mask_threshold": None, "mask_treshold": 0.5}, TypeError, "unexpected keyword arguments ['mask_treshold']"),
        ({"timeout": -1}, ValueError, "`timeout` must be > 0 seconds, got -1"),
        ({"timeout": "soon"}, TypeError, "`timeout` must be a number"),
        ({"text_prompt_mode": 1}, TypeError, "`text_prompt_mode` must be a string, got int 1"),
    ],
)
def test_pipeline_call_parameters_are_typed(segmenter, kwargs, error, message):
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    with pytest.raises(error, match=re.escape(message)):
        segmenter(image, "a red square", **kwargs)


# -------------------------------------------------------------------------------------------- real processes


_ESAM_BLIP_SCRIPT = shutil.which("esam-blip")
ESAM_BLIP = [_ESAM_BLIP_SCRIPT] if _ESAM_BLIP_SCRIPT else [sys.executable, "-m", "transformers_esam_blip.cli"]
CONVERT = [sys.executable, str(REPO / "conversion" / "convert_esam_blip.py")]
TRAIN = [sys.executable, "-m", "transformers_esam_blip.training"]


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    (root / "text.pt").write_text("hello\n")
    (root / "truncated.pt").write_bytes(ESAM.read_bytes()[:20000])
    torch.save({"model": {"payload": _Payload(root / "pwned")}}, root / "pickle.pt")
    (root / "file").write_text("a file where a folder should be")
    _metadata_folder(root / "empty-data", "")
    _metadata_folder(root / "not-json-data", "this is not json {\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([*CONVERT, "--efficientsam", "{root}/text.pt", "--output_dir", "{tmp}/o"], r"--efficientsam: .* is not a PyTorch checkpoint"),
        ([*CONVERT, "--efficientsam", "{root}/truncated.pt", "--output_dir", "{tmp}/o"], "not a readable PyTorch checkpoint"),
        ([*CONVERT, "--efficientsam", "{root}/pickle.pt", "--output_dir", "{tmp}/o"], "objects other than tensors"),
        ([*CONVERT, "--efficientsam", str(ESAM), "--output_dir", "{root}/file/out"], r"--output_dir .*is a file"),
        ([*CONVERT, "--blip", str(LAVIS), "--blip_vision_heads", "4", "--blip_text_heads", "4", "--tokenizer",
          "{tmp}/missing-tokenizer", "--output_dir", "{tmp}/o"], r"--tokenizer .*missing-tokenizer does not exist"),
        ([*CONVERT, "--blip", str(LAVIS), "--blip_vision_heads", "4", "--tokenizer", str(TOKENIZER), "--output_dir",
          "{tmp}/o"], r"--blip_text_heads\) is not"),
        ([*ESAM_BLIP, "convert", "--efficientsam", "{root}/pickle.pt", "--output_dir", "{tmp}/o"], "refused"),
        ([*ESAM_BLIP, "convert", "--efficientsam", str(ESAM), "--output_dir", "{tmp}/o", "--gradcam_block_num", "2"],
         "--blip_vision_heads, --blip_text_heads and --gradcam_block_num are only used with --blip"),
        ([*TRAIN, "--config", "tiny", "--dataset", "{root}/empty-data", "--output_dir", "{tmp}/out"], "holds no examples"),
        ([*TRAIN, "--config", "tiny", "--dataset", "{root}/not-json-data", "--output_dir", "{tmp}/out"], "is not JSON"),
        ([*ESAM_BLIP, "train", "--config", "tiny", "--dataset", "synthetic", "--output_dir", "{root}/file/out"],
         "--output_dir .* cannot be written"),
        ([*ESAM_BLIP, "segment", "{root}/file", "--text", "a", "--model", "esam-blip-shapes", "--output",
          "{root}/file/o.png"], r"--output .* cannot be written"),
        ([*ESAM_BLIP, "everything", "{root}/file", "--model", "esam-blip-shapes", "--output", "{tmp}/o.png"],
         "is not a readable image"),
        ([*ESAM_BLIP, "itm", "{root}/file", "--text", "a", "--model", "someone/unknown-model"],
         r"--model someone/unknown-model .*offline.*built-in models are: esam-blip-shapes"),
        ([*ESAM_BLIP, "evaluate", "--model", "someone/unknown-model"], r"--model someone/unknown-model .*offline"),
        ([*ESAM_BLIP, "demo", "--model", "{root}/text.pt"], r"--model .*text\.pt is a file"),
        ([*ESAM_BLIP, "export", "{root}/text.pt", "--output", "{tmp}/onnx"], r"MODEL .*text\.pt is a file"),
    ],
    ids=[
        "convert-text-file", "convert-truncated", "convert-pickle", "convert-output-under-file",
        "convert-missing-tokenizer", "convert-half-guessed-heads", "esam-blip-convert-pickle",
        "esam-blip-convert-gradcam-without-blip", "train-empty-dataset", "train-not-json", "esam-blip-train-output",
        "segment-output", "everything-not-an-image", "itm-hub-typo", "evaluate-offline-typo", "demo-model-file",
        "export-model-file",
    ],
)  # fmt: skip
def test_commands_fail_in_one_line(broken_inputs, tmp_path, command, message):
    argv = [arg.format(root=broken_inputs, tmp=tmp_path) for arg in command]
    environment = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert re.search(message, line), line
    assert not (broken_inputs / "pwned").exists()
    assert not (tmp_path / "o").exists()
