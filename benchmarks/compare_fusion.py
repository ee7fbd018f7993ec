"""Compare the encoder-fusion types on one training budget: same config, data, seed, steps and learning rate.

    python benchmarks/compare_fusion.py [--model esam-blip-shapes] [--max_steps 800] [--test_scenes 200] [--work_dir DIR]

Each fusion type trains a built-in config (`shapes` by default, `--config tiny` for a quick run) from scratch, or
fine-tunes a checkpoint given with `--model` (the fusion added at identity), with the training command (one process,
the CPU unless a GPU is there), then is scored on fresh synthetic test scenes at full resolution
(`evaluate_referring_segmentation`). Prints one table: parameters, training time (and its ratio to `none`, run in the
same script), mIoU and precision@0.5 on present objects, ITM ROC-AUC.
"""

import argparse
import tempfile
import time
from pathlib import Path

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.evaluation import DEFAULT_TEST_SEED, evaluate_referring_segmentation
from transformers_esam_blip.fusion import fusion_type_choices
from transformers_esam_blip.training import main as train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fusion_types", nargs="+", default=list(fusion_type_choices()), choices=fusion_type_choices())
    parser.add_argument("--config", choices=("tiny", "shapes"), default="shapes", help="built-in config to train")
    parser.add_argument(
        "--model", help="start every run from this checkpoint (e.g. esam-blip-shapes) instead of a random --config"
    )
    parser.add_argument("--freeze", default="all", help="freezing preset of every run (default all)")
    parser.add_argument("--max_steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_scenes", type=int, default=2000)
    parser.add_argument("--test_scenes", type=int, default=200)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--work_dir", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="compare_fusion_"))
    cache_dir = work_dir / "cache"
    test_set = synthetic_referring_dataset(args.test_scenes, seed=DEFAULT_TEST_SEED, cache_dir=str(cache_dir))
    rows = []
    for fusion_type in args.fusion_types:
        output_dir = work_dir / fusion_type
        start = ["--model", args.model] if args.model else ["--config", args.config]
        command = [*start, "--fusion_type", fusion_type, "--freeze", args.freeze, "--dataset", "synthetic"]
        command += ["--num_scenes", str(args.num_scenes), "--absent_fraction", "0.35", "--cache_dir", str(cache_dir)]
        command += ["--max_steps", str(args.max_steps), "--per_device_train_batch_size", str(args.batch_size)]
        command += ["--learning_rate", str(args.learning_rate), "--warmup_steps", str(args.max_steps // 20)]
        command += ["--lr_scheduler_type", "cosine", "--save_steps", str(args.max_steps), "--logging_steps", "50"]
        command += ["--output_dir", str(output_dir), "--seed", "0"]
        began = time.perf_counter()
        status = train(command)
        seconds = time.perf_counter() - began
        if status != 0:
            raise SystemExit(f"training with fusion_type={fusion_type} failed (exit status {status})")
        model = EsamBlipForPromptableSegmentation.from_pretrained(output_dir)
        processor = EsamBlipProcessor.from_pretrained(output_dir)
        scores = evaluate_referring_segmentation(model, processor, test_set, progress=False)
        fusion_params = sum(p.numel() for p in model.model.fusion.parameters()) if model.model.fusion is not None else 0
        rows.append((fusion_type, model.num_parameters(), fusion_params, seconds, scores))
        print(f"{fusion_type}: {seconds:.0f} s, {scores}", flush=True)
    baseline = next((row[3] for row in rows if row[0] == "none"), rows[0][3])
    origin = f"from {args.model}" if args.model else f"`{args.config}` config from scratch"
    print(
        f"\nFusion types, {origin}, --freeze {args.freeze}, {args.max_steps} steps x {args.batch_size} "
        f"({args.num_scenes} training scenes), scored on {args.test_scenes} fresh test scenes (seed {DEFAULT_TEST_SEED}):\n"
    )
    print("| fusion_type | parameters | fusion params | train time | vs none | mIoU | P@0.5 | ITM ROC-AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for fusion_type, params, fusion_params, seconds, scores in rows:
        print(
            f"| {fusion_type} | {params:,} | {fusion_params:,} | {seconds:.0f} s | {seconds / baseline:.2f}x | "
            f"{scores['mean_iou']:.3f} | {scores['precision@0.5']:.3f} | {scores['itm_roc_auc']:.3f} |"
        )


if __name__ == "__main__":
    main()
