"""What every benchmark script shares: the `--repeats`/`--threads` arguments and wall-clock timing."""

import argparse
import time
from collections.abc import Callable

import torch


def benchmark_arguments(description: str) -> argparse.Namespace:
    """Parse `--repeats` and `--threads`, apply the thread count and seed torch, so runs are comparable."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def wall_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of `fn()` over `repeats` runs (no warm-up: callers warm up or interleave as they need)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
