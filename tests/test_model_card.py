"""Model cards: conversions record the parity they measured, training runs and built-in models their facts, and
`push_to_hub` uploads this package's card instead of transformers' template. No network: the Hub calls are patched."""

import hashlib
import importlib.util
import json
import shlex
import shutil
import types
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from conftest import LAVIS_FIXTURE
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import BlipConfig, BlipForImageTextRetrieval

from transformers_esam_blip import EsamBlipConfig, EsamBlipForImageTextMatching, EsamBlipForPromptableSegmentation
from transformers_esam_blip.builtin import builtin_model_path
from transformers_esam_blip.builtin_presets import tiny_config, tiny_processor
from transformers_esam_blip.conversion import checkpoint as conversion
from transformers_esam_blip.conversion.blip import convert_blip_state_dict, load_blip_source
from transformers_esam_blip.conversion.parity import ParityMeasurement, compare_outputs, probe_inputs
from transformers_esam_blip.model_card import (
    CARD_TAG,
    TrainingRecord,
    is_esam_blip_card,
    model_card_for,
    training_model_card,
)
from transformers_esam_blip.processing_esam_blip import EsamBlipProcessor
from transformers_esam_blip.training import main as train_main

ROOT = Path(__file__).resolve().parents[1]
LAVIS_SOURCE = LAVIS_FIXTURE / "checkpoint.pth"
TOKENIZER = LAVIS_FIXTURE / "tokenizer"


def _load_card(path: Path) -> ModelCard:
    """The card at `path`, parsed, with the metadata every card of the package has."""
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert card.data.license
    assert CARD_TAG in card.data.tags
    assert "[More Information Needed]" not in card.text
    return card


def _parity_rows(card: ModelCard) -> dict[str, list[str]]:
    """`{output: row cells}` of the card's parity table."""
    section = card.text.split("## Parity with the source, measured at conversion", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[1].strip(): [cell.strip() for cell in cells] for cells in rows[1:]}


@pytest.fixture(scope="module")
def blip_float16(tmp_path_factory) -> Path:
    """The LAVIS fixture converted to float16: rounding the weights gives non-zero parity errors."""
    output = tmp_path_factory.mktemp("blip") / "blip-fp16"
    conversion.convert_checkpoint(
        output, blip=LAVIS_SOURCE, tokenizer=TOKENIZER, blip_vision_heads=4, blip_text_heads=4, dtype="float16"
    )
    return output


def test_conversion_card_records_the_parity_measured_for_that_checkpoint(blip_float16):
    card = _load_card(blip_float16 / "README.md")
    assert card.data.license == "bsd-3-clause" and card.data.pipeline_tag is None
    record = json.loads((blip_float16 / "conversion.json").read_text())
    parity = {entry["output"]: entry for entry in record["parity"]}
    assert set(parity) == {"ITM logits", "ITC similarity"}
    rows = _parity_rows(card)
    for output, entry in parity.items():
        assert 0 < entry["max_abs_error"] < 1e-2  # float16 rounding of the weights, nothing worse
        assert rows[output][4] == f"{entry['max_abs_error']:.2e}"
        assert "BlipForImageTextRetrieval" in rows[output][3]

    # The recorded ITM error is what an independent recomputation finds: transformers' BLIP with the source weights
    # against the written checkpoint, on the same probe.
    config = EsamBlipConfig.from_pretrained(blip_float16)
    state, kind, _ = load_blip_source(LAVIS_SOURCE)
    reference = BlipForImageTextRetrieval(
        BlipConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            image_text_hidden_size=config.image_text_hidden_size,
        )
    ).eval()
    reference.load_state_dict({k: v.float() for k, v in convert_blip_state_dict(state, kind).items()})
    probe = probe_inputs(EsamBlipProcessor.from_pretrained(blip_float16), config)
    itm_ids = probe["input_ids"].clone()
    itm_ids[:, 0] = config.enc_token_id
    written = EsamBlipForImageTextMatching.from_pretrained(blip_float16, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(
            input_ids=itm_ids,
            attention_mask=probe["attention_mask"],
            pixel_values=probe["blip_pixel_values"].repeat(2, 1, 1, 1),
        ).itm_score
        actual = written(
            input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
            blip_pixel_values=probe["blip_pixel_values"].repeat(2, 1, 1, 1),
        ).itm_score  # fmt: skip
    assert (actual - expected).abs().max().item() == pytest.approx(parity["ITM logits"]["max_abs_error"], rel=1e-4)


def test_conversion_card_provenance(blip_float16):
    card = _load_card(blip_float16 / "README.md")
    record = json.loads((blip_float16 / "conversion.json").read_text())
    digest = hashlib.sha256(LAVIS_SOURCE.read_bytes()).hexdigest()
    assert record["source_files"] == [{"argument": "--blip", "file": str(LAVIS_SOURCE), "sha256": digest}]
    assert digest in card.text and record["date"] in card.text and record["versions"] in card.text
    assert "transformers-esam-blip 0.1.0" in record["versions"]
    # The recorded command is the conversion's own command line: it parses back to the same arguments.
    command = shlex.split(record["command"])
    assert command[:2] == ["python", "conversion/convert_esam_blip.py"] and record["command"] in card.text
    args = conversion.build_parser().parse_args(command[2:])
    assert (args.blip, args.tokenizer, args.output_dir) == (LAVIS_SOURCE, TOKENIZER, blip_float16)
    assert (args.dtype, args.blip_vision_heads, args.blip_text_heads) == ("float16", 4, 4)


def test_a_parity_error_found_at_conversion_lands_in_the_card(tmp_path, monkeypatch):
    """Whatever the written checkpoint's outputs are, the card shows their measured distance to the source."""
    measured = conversion.checkpoint_outputs

    def off_by_a_quarter(model, probe):
        outputs = measured(model, probe)
        outputs[("BLIP", "ITC similarity")] = outputs[("BLIP", "ITC similarity")] + 0.25
        return outputs

    monkeypatch.setattr(conversion, "checkpoint_outputs", off_by_a_quarter)
    output = conversion.convert_checkpoint(
        tmp_path / "blip", blip=LAVIS_SOURCE, tokenizer=TOKENIZER, blip_vision_heads=4, blip_text_heads=4
    )
    rows = _parity_rows(_load_card(output / "README.md"))
    assert rows["ITC similarity"][4] == "2.50e-01"
    assert rows["ITM logits"][4] == "0"  # float32 weights in the same transformers BLIP layers: exact


@pytest.mark.slow  # the session's joint conversion (1024² EfficientSAM) takes ~10 s when first built
def test_joint_conversion_card_has_both_halves(joint_checkpoint):
    card = _load_card(joint_checkpoint / "README.md")
    assert (card.data.license, card.data.license_name) == ("other", "apache-2.0-and-bsd-3-clause")
    assert card.data.pipeline_tag == "mask-generation"
    rows = _parity_rows(card)
    assert list(rows) == ["image embeddings", "low-res mask logits", "IoU predictions", "ITM logits", "ITC similarity"]
    assert rows["image embeddings"][2] == "1x256x64x64" and rows["low-res mask logits"][2] == "1x2x3x256x256"
    assert all(row[4] == "0" for row in rows.values())  # float32: the checkpoint is the source, bit for bit


def test_compare_outputs():
    reference = {("BLIP", "ITM logits"): torch.tensor([[1.0, -2.0]])}
    [measurement] = compare_outputs(reference, {("BLIP", "ITM logits"): torch.tensor([[1.5, -2.0]])})
    assert measurement == ParityMeasurement("BLIP", "ITM logits", (1, 2), measurement.reference, 0.5, 2.0)
    with pytest.raises(ValueError, match=r"BLIP ITM logits should have shape \(1, 2\), got shape \(2, 2\)"):
        compare_outputs(reference, {("BLIP", "ITM logits"): torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="got nothing"):
        compare_outputs(reference, {})


# ------------------------------------------------------------------------------------------------------ push_to_hub


@pytest.fixture
def hub(monkeypatch) -> dict:
    """Patched Hub: no repository has a card yet; every commit is recorded (README text and file names)."""
    commits: list[dict] = []

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: op.path_or_fileobj for op in operations}
        readme = Path(files["README.md"]).read_text(encoding="utf-8") if "README.md" in files else None
        commits.append({"repo_id": repo_id, "files": sorted(files), "readme": readme})

    load = ModelCard.load.__func__

    def load_card(cls, repo_id_or_path, *args, **kwargs):
        if Path(repo_id_or_path).exists():
            return load(cls, repo_id_or_path, *args, **kwargs)
        raise EntryNotFoundError(f"{repo_id_or_path} has no README.md")  # a new repository

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(ModelCard, "load", classmethod(load_card))
    return {"commits": commits}


@pytest.fixture
def tiny_model() -> EsamBlipForPromptableSegmentation:
    return EsamBlipForPromptableSegmentation(tiny_config(tiny_processor())).eval()


def test_push_to_hub_uploads_our_card(hub, tiny_model):
    tiny_model.push_to_hub("me/tiny-esam-blip")
    [commit] = hub["commits"]
    assert commit["repo_id"] == "me/tiny-esam-blip" and "model.safetensors" in commit["files"]
    card = ModelCard(commit["readme"])
    assert card.data.library_name == "transformers" and CARD_TAG in card.data.tags
    assert card.data.license == "other" and card.data.pipeline_tag == "mask-generation"
    assert "[More Information Needed]" not in card.text and "# me/tiny-esam-blip" in card.text
    assert f"Parameters: {tiny_model.num_parameters():,}" in card.text
    assert "| EfficientSAM ViT | width 32, 2 blocks, 2 heads, 64² input, patch 8 |" in card.text


def test_save_pretrained_push_keeps_the_folders_card(hub, tiny_model, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    ours = model_card_for(tiny_model, "me/run").content.replace("records no scores", "records mean IoU 0.5")
    (folder / "README.md").write_text(ours, encoding="utf-8")
    tiny_model.save_pretrained(folder, push_to_hub=True, repo_id="me/run")
    [commit] = hub["commits"]
    assert commit["readme"] == ours  # transformers' template replaced it before the upload; it is put back
    assert (folder / "README.md").read_text(encoding="utf-8") == ours


def test_save_pretrained_push_replaces_a_foreign_card(hub, tiny_model, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Someone else's card\n", encoding="utf-8")
    tiny_model.save_pretrained(folder, push_to_hub=True, repo_id="me/run")
    [commit] = hub["commits"]
    assert is_esam_blip_card(commit["readme"]) and "# me/run" in commit["readme"]


def test_is_esam_blip_card():
    assert not is_esam_blip_card("no front matter at all")
    assert not is_esam_blip_card("---\ntags: [other]\n---\ntext")
    assert is_esam_blip_card(f"---\ntags: [{CARD_TAG}]\n---\ntext")


# --------------------------------------------------------------------------------------------------------- training


def test_training_card_takes_the_license_of_its_base(tmp_path, tiny_model):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(f"---\nlicense: bsd-3-clause\ntags: [{CARD_TAG}]\n---\n# base\n", encoding="utf-8")
    record = TrainingRecord(
        command="python -m transformers_esam_blip.training --model base ...",
        base_model=str(base),
        preset=None,
        task="segmentation",
        freeze="prompter_fusion",
        train_data="`my_data`",
        num_train_examples=120,
        eval_data=None,
        num_eval_examples=None,
        global_step=30,
        num_parameters=tiny_model.num_parameters(),
        trainable_parameters=1000,
        wall_time_s=90.0,
    )
    card = training_model_card(record, tiny_model, "me/fine-tuned")
    assert card.data.license == "bsd-3-clause" and card.data.base_model is None  # a local folder is no Hub id
    assert f"Base model: `{base}`" in card.text and "reports no scores" in card.text
    assert "| training | `my_data` | 120 |" in card.text and "90 s (1.5 min) for the whole command" in card.text


@pytest.mark.slow
def test_training_command_writes_a_card(tmp_path):
    output = tmp_path / "out"
    argv = [
        "--config", "tiny", "--dataset", "synthetic", "--num_scenes", "4", "--scene_size", "64",
        "--eval_dataset", "synthetic", "--num_eval_scenes", "2", "--cache_dir", str(tmp_path / "data"),
        "--output_dir", str(output), "--max_steps", "2", "--logging_steps", "1",
    ]  # fmt: skip
    assert train_main(argv) == 0
    card = _load_card(output / "README.md")
    record = json.loads((output / "training.json").read_text())
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "mask-generation"
    # The command line recorded is this run's: it parses back to the same options.
    command = shlex.split(record["command"])
    assert command[:3] == ["python", "-m", "transformers_esam_blip.training"] and record["command"] in card.text
    assert sorted(command[3:]) == sorted(argv)
    assert record["global_step"] == 2 and record["preset"] == "tiny" and record["base_model"] is None
    assert record["num_train_examples"] > 0 and record["num_eval_examples"] > 0
    assert 0 < record["train_runtime_s"] <= record["wall_time_s"]
    assert f"{record['num_train_examples']} |" in card.text and "seed 1 at 64x64" in card.text
    assert set(record["final_metrics"]) >= {"eval_mean_iou", "eval_itm_roc_auc"}
    for name, value in record["final_metrics"].items():
        formatted = f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}" if value else "0"
        assert f"| {name} | {formatted} |" in card.text


@pytest.mark.slow
def test_training_push_to_hub_uploads_the_runs_card(tmp_path, monkeypatch):
    uploads: list[str | None] = []

    def upload_folder(self, *, repo_id, folder_path, run_as_future=False, **kwargs):
        readme = Path(folder_path) / "README.md"
        uploads.append(readme.read_text(encoding="utf-8") if readme.is_file() else None)
        if run_as_future:  # checkpoint pushes run in the background
            future = Future()
            future.set_result(None)
            return future
        return None

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    output = tmp_path / "out"
    argv = [
        "--config", "tiny", "--dataset", "synthetic", "--num_scenes", "4", "--scene_size", "64",
        "--cache_dir", str(tmp_path / "data"), "--output_dir", str(output), "--max_steps", "1",
        "--push_to_hub", "me/run",
    ]  # fmt: skip
    assert train_main(argv) == 0
    # The last upload is the run's card, and no upload carries Trainer's own draft card.
    assert uploads[-1] == (output / "README.md").read_text(encoding="utf-8")
    assert all(upload is None or is_esam_blip_card(upload) for upload in uploads), uploads
    assert is_esam_blip_card(uploads[-1]) and "# me/run" in uploads[-1]


# ---------------------------------------------------------------------------------------------------- built-in model


def _package_script():
    spec = importlib.util.spec_from_file_location(
        "package_builtin_model", ROOT / "scripts" / "package_builtin_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_builtin_model_card_from_the_package_script(tmp_path):
    script = _package_script()
    run_dir = tmp_path / "run"
    shutil.copytree(builtin_model_path("esam-blip-shapes"), run_dir)
    (run_dir / "training.json").write_text(
        json.dumps({"command": "python -m transformers_esam_blip.training --config shapes ...", "wall_time_s": 600.0})
    )
    argv = [str(run_dir), "--test_scenes", "2", "--slow_mode_scenes", "1", "--output_dir", str(tmp_path / "out")]
    args = script.build_parser().parse_args(argv)
    target, scores = script.package(args)
    card = _load_card(target / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "mask-generation"
    lines = [line for line in card.text.splitlines() if line.strip()]
    assert lines[:2] == [
        "# esam-blip-shapes",
        "**It knows 4 colours (red, green, blue, yellow) and 3 shapes (circle, square, triangle) on synthetic scenes; "
        "nothing else.**",
    ]
    assert f"| mean_iou | {scores['mean_iou']:.4f} |" in card.text
    assert f"| num_present | {scores['num_present']:,} |" in card.text
    assert "## Scores per prompt type" in card.text and "| score | value | goal | met |" in card.text
    assert "--config shapes ..." in card.text and "10 min for the training command" in card.text
    assert json.loads((target / "test_scores.json").read_text())["mean_iou"] == scores["mean_iou"]
    assert EsamBlipForPromptableSegmentation.from_pretrained(target).num_parameters() > 0
