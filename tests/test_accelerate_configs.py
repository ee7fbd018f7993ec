"""The accelerate configs of `accelerate_configs/`: each parses as `accelerate launch` reads it and fits this model; two
CPU processes train with the loss curve of one process at the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from transformers_esam_blip import EsamBlipForPromptableSegmentation
from transformers_esam_blip.training import shapes_config, shapes_processor

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
# File → (distributed type, processes, machines, the launcher `accelerate launch` picks for it).
EXPECTED = {
    "multi_process_cpu.yaml": (DistributedType.MULTI_GPU, 2, 1, "multi_gpu"),
    "multi_node_deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 16, 2, "use_deepspeed"),
    "multi_gpu_fsdp.yaml": (DistributedType.FSDP, 8, 1, "use_fsdp"),
}


def test_every_config_is_listed_and_documented():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    docs = (ROOT / "docs" / "multi_process.md").read_text(encoding="utf-8")
    assert all(f"accelerate_configs/{name}" in docs for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_as_accelerate_launch_reads_it(name):
    distributed_type, processes, machines, launcher = EXPECTED[name]
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.num_machines) == (
        distributed_type,
        processes,
        machines,
    )
    assert config.use_cpu is False  # `use_cpu: true` would make accelerate 1.x start one process
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    launchers = ("multi_gpu", "use_deepspeed", "use_fsdp", "cpu")
    assert [flag for flag in launchers if getattr(args, flag)] == [launcher]
    assert args.num_processes == processes and args.num_machines == machines


def test_deepspeed_zero2_and_fsdp_settings_fit_this_model():
    deepspeed = load_config_from_file(str(CONFIGS / "multi_node_deepspeed_zero2.yaml"))
    assert deepspeed.deepspeed_config["zero_stage"] == 2 and deepspeed.mixed_precision == "bf16"
    assert deepspeed.main_process_ip and deepspeed.main_process_port
    fsdp = load_config_from_file(str(CONFIGS / "multi_gpu_fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # Every block class the FSDP config wraps is a block of the model (a misspelt one would wrap nothing).
    model = EsamBlipForPromptableSegmentation(shapes_config(shapes_processor()))
    classes = {type(module).__name__ for module in model.modules()}
    wrapped = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert set(wrapped) <= classes, set(wrapped) - classes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_with_the_loss_curve_of_one(tmp_path):
    """
    The same global batch (1 process x 4 rows, 2 processes x 2 rows) gives the same losses step by step: accelerate
    hands process `i` the rows `i*2 .. i*2+1` of each 4-row batch and DDP averages the gradients. No absent expressions,
    whose loss weight would depend on how a batch is split.
    """
    common = [
        "-m",
        "transformers_esam_blip.training",
        "--config",
        "tiny",
        "--dataset",
        "synthetic",
        "--num_scenes",
        "8",
    ]
    common += ["--scene_size", "64", "--absent_fraction", "0", "--cache_dir", str(tmp_path / "data"), "--use_cpu"]
    common += ["--max_steps", "4", "--logging_steps", "1", "--save_steps", "4", "--learning_rate", "5e-3"]
    common += ["--lr_scheduler_type", "constant"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    one = [sys.executable, *common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "4"]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "multi_process_cpu.yaml")]
    two += ["--main_process_port", str(_free_port()), *common, "--output_dir", str(tmp_path / "two")]
    two += ["--per_device_train_batch_size", "2"]
    curves = []
    for command, processes in ((one, 1), (two, 2)):
        done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{processes} process(es) on cpu" in done.stderr
        state = json.loads((Path(command[command.index("--output_dir") + 1]) / "trainer_state.json").read_text())
        curves.append([entry["loss"] for entry in state["log_history"] if "loss" in entry])
    assert len(curves[0]) == 4 and curves[1] == pytest.approx(curves[0], rel=1e-5)
