"""Training entry point: a short run lowers the loss and saves a loadable checkpoint, resume, freezing, CLI, 2 processes."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from test_fusion import tiny_joint_config
from transformers import AutoModel, AutoModelForMaskGeneration, AutoProcessor

from transformers_esam_blip import EsamBlipConfig, EsamBlipForPromptableSegmentation, EsamBlipModel, EsamBlipProcessor
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.training import (
    FREEZE_PRESETS,
    LABEL_NAMES,
    EsamBlipTrainingCollator,
    apply_freezing,
    build_parser,
    build_trainer,
    low_res_mask_size,
    main,
    tiny_processor,
    training_arguments,
)
from transformers_esam_blip.training.arguments import command_training_arguments
from transformers_esam_blip.training.command import load_model

SRC = Path(__file__).resolve().parents[1] / "src"
# Small scenes keep the data quick to make; the tiny model resizes them to 64² anyway.
SCENE_ARGS = ["--dataset", "synthetic", "--num_scenes", "4", "--scene_size", "64"]
PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json", "tokenizer.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> datasets.Dataset:
    """8 scenes at 64² (28 rows, a quarter of them absent objects)."""
    cache = tmp_path_factory.mktemp("data")
    return synthetic_referring_dataset(
        8, seed=0, cache_dir=str(cache), progress=False, image_size=64, min_side=16, max_side=32
    )


def _trainable(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _count(*modules: torch.nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def test_short_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path, dataset):
    processor = tiny_processor()
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="text"))
    assert apply_freezing(model, "all") == _count(model)
    trainer = build_trainer(
        model,
        processor,
        dataset,
        output_dir=tmp_path / "out",
        max_steps=40,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=20,
        disable_tqdm=True,
    )
    trainer.train()
    trainer.save_model()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss did not drop: first five {losses[:5]}, last five {losses[-5:]}"

    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-40"):
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert all((folder / name).is_file() for name in PROCESSOR_FILES), sorted(os.listdir(folder))
    assert (tmp_path / "out" / "checkpoint-20" / "processor_config.json").is_file()
    loaded = AutoModel.from_pretrained(tmp_path / "out")
    assert isinstance(loaded, EsamBlipModel) and loaded.prompter is not None
    trained = model.model.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in loaded.state_dict().items())
    assert isinstance(AutoModelForMaskGeneration.from_pretrained(tmp_path / "out"), EsamBlipForPromptableSegmentation)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(reloaded_processor, EsamBlipProcessor)
    assert reloaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_trainer_settings(tmp_path, dataset):
    processor = tiny_processor()
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="itm"))
    trainer = build_trainer(model, processor, dataset, eval_dataset=dataset, output_dir=tmp_path, save_steps=7)
    assert trainer.args.label_names == LABEL_NAMES and trainer.args.remove_unused_columns is False
    assert trainer.args.eval_strategy == "steps" and trainer.args.eval_steps == 7
    assert trainer.processing_class is processor  # Trainer saves it into every checkpoint
    assert not trainer.model_accepts_loss_kwargs  # the loss is a mean: no rescaling by the number of processes
    batch = trainer.data_collator([dataset[0], dataset[1]])
    # How texts become prompts is the model's config (saved with every checkpoint), not a batch entry.
    assert isinstance(trainer.data_collator, EsamBlipTrainingCollator) and "text_prompt_mode" not in batch
    assert low_res_mask_size(model.config) == 32 and batch["labels"].shape == (2, 1, 32, 32)
    metrics = trainer.evaluate()  # the `evaluate` metric through preprocess_logits_for_metrics
    assert {"eval_loss", "eval_mean_iou", "eval_precision@0.5", "eval_itm_accuracy", "eval_itm_roc_auc"} <= set(metrics)
    with pytest.raises(ValueError, match=r"`label_names` must be \['labels', 'match_labels'\]"):
        training_arguments(tmp_path, label_names=["labels"])
    no_prompter = EsamBlipForPromptableSegmentation(tiny_joint_config())
    with pytest.raises(ValueError, match=r"needs a learned text prompter"):
        build_trainer(no_prompter, processor, dataset, output_dir=tmp_path, text_prompt_mode="learned")
    with pytest.raises(ValueError, match=r"`text_prompt_mode` must be one of \('auto', "):
        build_trainer(no_prompter, processor, dataset, output_dir=tmp_path, text_prompt_mode="oracle")
    # Without a mode the model's config decides: "auto" is Grad-CAM prompting without a prompter.
    build_trainer(no_prompter, processor, dataset, output_dir=tmp_path)
    build_trainer(no_prompter, processor, dataset, output_dir=tmp_path, text_prompt_mode="gradcam")
    assert no_prompter.config.text_prompt_mode == "gradcam"
    with pytest.raises(ValueError, match=r"either `args` or `output_dir`"):
        build_trainer(model, processor, dataset, output_dir=tmp_path, args=trainer.args)


def test_cli_push_to_hub_arguments(tmp_path):
    argv = ["--config", "tiny", *SCENE_ARGS, "--output_dir", str(tmp_path), "--push_to_hub", "me/esam-blip-tiny"]
    args = command_training_arguments(build_parser().parse_args(argv))
    assert args.push_to_hub and args.hub_model_id == "me/esam-blip-tiny"
    assert not command_training_arguments(build_parser().parse_args(argv[:-2])).push_to_hub


def test_cli_absent_mask_loss_sets_the_config(tmp_path):
    base = ["--config", "tiny", *SCENE_ARGS, "--output_dir", str(tmp_path)]
    assert load_model(build_parser().parse_args(base))[0].config.absent_mask_loss is False
    assert load_model(build_parser().parse_args([*base, "--absent_mask_loss"]))[0].config.absent_mask_loss is True
    # From a checkpoint, the flag overrides the saved setting and its absence keeps it.
    model, processor = load_model(build_parser().parse_args([*base, "--absent_mask_loss"]))
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    from_checkpoint = ["--model", str(tmp_path / "ckpt"), *SCENE_ARGS, "--output_dir", str(tmp_path / "run")]
    assert load_model(build_parser().parse_args(from_checkpoint))[0].config.absent_mask_loss is True
    turned_off = [*from_checkpoint, "--no-absent_mask_loss"]
    assert load_model(build_parser().parse_args(turned_off))[0].config.absent_mask_loss is False


def test_resume_continues_the_global_step(tmp_path, capsys):
    output = tmp_path / "out"
    argv = [
        "--config",
        "tiny",
        *SCENE_ARGS,
        "--cache_dir",
        str(tmp_path / "data"),
        "--output_dir",
        str(output),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "5e-3",
        "--logging_steps",
        "2",
        "--save_steps",
        "2",
    ]
    assert main([*argv, "--max_steps", "4"]) == 0
    first_checkpoint = (output / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, "--max_steps", "8", "--resume_from_checkpoint"]) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2, 4, 6, 8]
    assert sorted(path.name for path in output.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (2, 4, 6, 8)]
    # Resumed, not restarted: the first run's checkpoints are not written again.
    assert (output / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns == first_checkpoint
    err = capsys.readouterr().err
    assert "Trained to step 4" in err and "Trained to step 8" in err
    assert isinstance(AutoModel.from_pretrained(output), EsamBlipModel)


@pytest.mark.parametrize("preset", FREEZE_PRESETS)
def test_freezing_presets_count_parameters(preset):
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="text", fusion_type="adapter"))
    base = model.model
    expected = {
        "decoder": [base.sam.mask_decoder],
        "prompt_decoder": [base.sam.prompt_encoder, base.sam.mask_decoder],
        "prompter_fusion": [base.prompter, base.fusion],
        "itm": [
            base.blip.vision_model,
            base.blip.itm_head,
            *(layer.crossattention for layer in base.blip.text_encoder.encoder.layer),
        ],
        "itm_heads": [base.blip.itm_head, *(layer.crossattention for layer in base.blip.text_encoder.encoder.layer)],
        "all": [model],
    }[preset]
    apply_freezing(model, "all" if preset != "all" else "decoder")  # a preset replaces the previous choice
    count = apply_freezing(model, preset)
    assert count == _count(*expected) == _trainable(model)
    assert 0 < count <= _count(model)
    if preset == "decoder":
        assert not any(p.requires_grad for p in base.sam.vision_encoder.parameters())
        assert not any(p.requires_grad for p in base.prompter.parameters())


def test_freezing_errors():
    model = EsamBlipForPromptableSegmentation(tiny_joint_config())
    with pytest.raises(
        ValueError,
        match=r"`preset` must be one of \('decoder', 'prompt_decoder', 'prompter_fusion', 'itm', 'itm_heads', 'all'\), "
        r"got 'head'",
    ):
        apply_freezing(model, "head")
    with pytest.raises(ValueError, match=r"trains the learned text prompter and the encoder fusion.*has neither"):
        apply_freezing(model, "prompter_fusion")
    # Only the fusion: the preset trains what exists.
    fused = EsamBlipForPromptableSegmentation(tiny_joint_config(fusion_type="concat"))
    assert apply_freezing(fused, "prompter_fusion") == _count(fused.model.fusion)


@pytest.fixture(scope="module")
def no_prompter_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    EsamBlipForPromptableSegmentation(tiny_joint_config()).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], r"one of the arguments --model --config is required"),
        (["--config", "tiny", "--freeze", "head"], r"argument --freeze: invalid choice: 'head'"),
        (["--config", "tiny", "--max_steps", "0"], r"--max_steps must be >= 1 \(or -1"),
        (["--config", "tiny", "--num_scenes", "0"], r"--num_scenes must be >= 1, got 0"),
        (["--config", "tiny", "--absent_fraction", "1"], r"--absent_fraction must lie in \[0, 1\), got 1.0"),
        (["--config", "tiny", "--lr_scheduler_type", "wobbly"], r"wobbly"),
        (["--model", "/no/such/model"], r"--model /no/such/model does not exist"),
        (
            ["--model", "esam-blip-shape"],
            r"--model esam-blip-shape is neither a folder nor a built-in model; did you mean 'esam-blip-shapes'\? "
            r"The built-in models are: esam-blip-shapes$",
        ),
        (["--config", "tiny", "--text_prompt_mode", "oracle"], r"argument --text_prompt_mode: invalid choice"),
        (["--config", "tiny", "--resume_from_checkpoint"], r"No valid checkpoint found in output directory"),
        (
            ["--config", "tiny", "--resume_from_checkpoint", "/no/such/ckpt"],
            r"/no/such/ckpt is not a checkpoint folder",
        ),
        (
            ["--config", "tiny", "--shared_attribute_fraction", "1.5"],
            r"--shared_attribute_fraction must lie in \[0, 1\], got 1.5",
        ),
        (["--config", "tiny", "--freeze", "prompter_fusion", "--prompter_source", "text"], None),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    argv = [*SCENE_ARGS, "--cache_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), *extra]
    if message is None:  # a valid command for contrast: it trains
        assert main([*argv, "--max_steps", "1"]) == 0
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert re.search(message, err[-1]), err[-1]


def test_cli_itm_fusion_and_curriculum(tmp_path):
    data = ["--cache_dir", str(tmp_path / "data")]
    argv = ["--config", "tiny", *SCENE_ARGS, *data, "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    assert main([*argv, "--itm_fusion", "--fusion_type", "concat", "--shared_attribute_fraction", "0.5"]) == 0
    config = AutoModel.from_pretrained(tmp_path / "out").config
    assert config.itm_fusion is True and config.fusion_type == "concat"
    # ITM alone on that checkpoint: the collator passes the EfficientSAM pixels its ITM reads.
    itm = ["--model", str(tmp_path / "out"), "--task", "itm", "--freeze", "itm", *SCENE_ARGS, *data]
    assert main([*itm, "--output_dir", str(tmp_path / "itm"), "--max_steps", "1"]) == 0
    assert AutoModel.from_pretrained(tmp_path / "itm").config.itm_fusion is True


def test_cli_model_without_prompter(tmp_path, capsys, no_prompter_checkpoint):
    argv = ["--model", str(no_prompter_checkpoint), *SCENE_ARGS, "--cache_dir", str(tmp_path / "data")]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    assert main([*argv, "--text_prompt_mode", "learned"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # after the weights' loading bar
    assert err[-1].startswith("error: --text_prompt_mode learned does not fit --model")
    assert "--prompter_source text|itm" in err[-1] and not any(line.startswith("Traceback") for line in err)
    # Adding a prompter and a fusion to the checkpoint and training only them; the mode is saved in the config.
    extra = ["--prompter_source", "itm", "--fusion_type", "adapter", "--freeze", "prompter_fusion"]
    assert main([*argv, *extra, "--text_prompt_mode", "learned"]) == 0
    assert "parameters train (--freeze prompter_fusion)" in capsys.readouterr().err
    config = AutoModel.from_pretrained(tmp_path / "out").config
    assert config.prompter_source == "itm" and config.fusion_type == "adapter" and config.text_prompt_mode == "learned"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "processes"),
    [(["--multi_gpu"], 2), (["--cpu"], 1)],
    ids=["multi-process-gloo", "accelerate-cpu-flag"],
)
def test_accelerate_launch_two_processes(tmp_path, launcher, processes):
    """
    `accelerate launch --num_processes 2`: with `--multi_gpu` (torchrun underneath; gloo on the CPU) two processes
    train; with `--cpu` accelerate 1.x starts one process without an MPI hostfile, and the command says so.
    """
    output = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(_free_port()), "-m", "transformers_esam_blip.training"]
    command += ["--config", "tiny", *SCENE_ARGS, "--cache_dir", str(tmp_path / "data"), "--output_dir", str(output)]
    command += ["--max_steps", "4", "--save_steps", "2", "--logging_steps", "2", "--per_device_train_batch_size", "2"]
    command += ["--use_cpu"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate config file of this machine's user changes the launch
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{processes} process(es) on cpu" in done.stderr, done.stderr[-3000:]
    assert ("starts one process whatever --num_processes says" in done.stderr) == (processes == 1)
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Each step takes 2 rows per process: the epoch count shows how many processes shared the data.
    rows = int(re.search(r"(\d+) training examples", done.stderr).group(1))
    assert state["epoch"] == pytest.approx(4 * 2 * processes / rows)
    for folder in (output, output / "checkpoint-4"):
        assert (folder / "model.safetensors").is_file() and (folder / "processor_config.json").is_file()
    assert isinstance(AutoModel.from_pretrained(output / "checkpoint-4"), EsamBlipModel)


def test_shapes_config_is_the_builtin_architecture():
    from transformers_esam_blip.builtin import BUILTIN_PRESETS
    from transformers_esam_blip.training import shapes_config, shapes_processor

    assert BUILTIN_PRESETS["shapes"].model_name == "esam-blip-shapes"

    processor = shapes_processor()
    config = shapes_config(processor)
    assert processor.image_processor.sam_image_size == 128 and processor.image_processor.blip_image_size == 128
    assert config.sam_vision_config.image_embedding_size == 16 and low_res_mask_size(config) == 64
    assert config.prompter_source == "text" and config.vision_config.initializer_range == 0.02
    assert config.text_config.vocab_size == len(processor.tokenizer)
    # The packaged model was trained from exactly this architecture.
    from transformers_esam_blip import builtin_model_path

    shipped = EsamBlipConfig.from_pretrained(builtin_model_path())
    # How its stages left it (docs/builtin_model_training.md): the default loss, a concat fusion and itm_fusion on top
    # of the config (stage 2), and a mask encoder (stage 3, `--mask_prompts`).
    assert shipped.absent_mask_loss is False and shipped.fusion_type == "concat" and shipped.itm_fusion is True
    assert shipped.prompt_encoder_config.mask_prompts is True
    config.prompt_encoder_config.mask_prompts = True
    for name in ("sam_vision_config", "prompt_encoder_config", "mask_decoder_config", "vision_config", "text_config"):
        expected, got = getattr(config, name).to_dict(), getattr(shipped, name).to_dict()
        differing = {
            key for key in expected if key not in ("transformers_version", "dtype") and expected[key] != got.get(key)
        }
        assert not differing, (name, differing)


def test_itm_task_trains_matching_and_leaves_learned_prompts_unchanged(tmp_path, dataset, capsys):
    """`--task itm --freeze itm`: the ITM loss falls, masks of learned text prompts stay bit-identical."""
    start = tmp_path / "start"
    model = EsamBlipForPromptableSegmentation(tiny_joint_config(prompter_source="text"))
    model.save_pretrained(start)
    tiny_processor().save_pretrained(start)
    argv = ["--model", str(start), "--task", "itm", "--freeze", "itm", *SCENE_ARGS, "--cache_dir", str(tmp_path / "d")]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "30", "--learning_rate", "3e-3"]
    argv += ["--logging_steps", "5", "--eval_dataset", "synthetic", "--num_eval_scenes", "4", "--save_steps", "30"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "parameters train (--freeze itm)" in err and "eval_itm_roc_auc=" in err
    losses = [
        entry["loss"]
        for entry in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
        if "loss" in entry
    ]
    assert losses[-1] < losses[0]
    trained = EsamBlipForPromptableSegmentation.from_pretrained(tmp_path / "out").eval()
    model.eval()
    processor = tiny_processor()
    inputs = processor(images=dataset[0]["image"], text=["the red circle", "a blue square"], return_tensors="pt")
    with torch.no_grad():
        before, after = model(**inputs, text_prompt_mode="learned"), trained(**inputs, text_prompt_mode="learned")
    assert torch.equal(before.pred_masks, after.pred_masks)
    assert not torch.equal(before.itm_probability, after.itm_probability)


def test_itm_collator():
    from transformers_esam_blip.training import EsamBlipItmCollator

    collator = EsamBlipItmCollator(tiny_processor())
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    batch = collator(
        [{"image": image, "text": "a red circle", "mask": mask}, {"image": image, "text": "x", "match_label": 1}]
    )
    assert sorted(batch) == ["attention_mask", "blip_pixel_values", "input_ids", "labels"]
    assert batch["labels"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="neither `match_label` nor `mask`"):
        collator([{"image": image, "text": "a red circle"}])
