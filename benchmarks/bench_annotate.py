"""Annotate throughput: images per second of `annotate` with 1 and N processes on the built-in model, text prompts.

Synthetic scenes (256², 3 text prompts each) in a temporary folder; each row is one fresh command: 1 process runs
`python -m transformers_esam_blip.annotate`, N processes run it under `accelerate launch` with
`accelerate_configs/multi_process_cpu.yaml` (gloo; on a GPU machine use a GPU config). `images/s` is the command's own
figure (from the first image to the last process done, model loading and process start excluded); `wall s` is the
whole command. Every process runs `--threads` torch threads, so N processes need N x threads cores to scale.

    python benchmarks/bench_annotate.py [--num_images 96] [--processes 1 2] [--threads 1] [--batch_size 8]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from transformers_esam_blip.data import generate_scene, scene_rng

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "accelerate_configs" / "multi_process_cpu.yaml"
TEXTS = ("the red circle", "a blue square", "green triangle")
SUMMARY = re.compile(r"Annotated (\d+) images in ([\d.]+) s \(([\d.]+) images/s\) with (\d+) process")


def run(folder: Path, output: Path, processes: int, args: argparse.Namespace, port: int) -> tuple[float, float]:
    """`(images/s, wall seconds)` of one annotate command."""
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
        command += ["--num_processes", str(processes), "--main_process_port", str(port)]
    command += ["-m", "transformers_esam_blip.annotate", str(folder), "--output_dir", str(output)]
    command += [arg for text in TEXTS for arg in ("--text", text)]
    command += ["--batch_size", str(args.batch_size), "--shard_size", str(args.shard_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    found = SUMMARY.search(done.stderr)
    if done.returncode != 0 or found is None:
        sys.exit(f"annotate with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    if int(found.group(1)) != args.num_images or int(found.group(4)) != processes:
        sys.exit(f"unexpected run: {found.group(0)}")
    return float(found.group(3)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--num_images", type=int, default=96)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--shard_size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scenes"
        folder.mkdir()
        for i in range(args.num_images):
            PIL.Image.fromarray(generate_scene(scene_rng(0, i))[0]).save(folder / f"{i:04d}.png")
        rows = []
        for count in args.processes:
            rate, wall = run(folder, Path(tmp) / f"out-{count}", count, args, 29500 + count)
            rows.append((count, rate, wall))
    base = next((rate for count, rate, _ in rows if count == 1), rows[0][1])
    print(f"annotate, esam-blip-shapes, {args.num_images} images of 256², {len(TEXTS)} texts each, "
          f"batch {args.batch_size}, {args.threads} thread(s) per process, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'processes':>9}  {'images/s':>9}  {'wall s':>7}  {'vs 1 process':>12}")
    for count, rate, wall in rows:
        print(f"{count:>9}  {rate:>9.2f}  {wall:>7.1f}  {rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
