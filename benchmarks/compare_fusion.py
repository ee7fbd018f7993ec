"""Compare the encoder-fusion types on one training budget: same config, data, seed, steps and learning rate.

    python benchmarks/compare_fusion.py [--max_steps 800] [--num_scenes 2000] [--test_scenes 200] [--work_dir DIR]

Each fusion type trains the built-in `shapes` config from scratch with the training command (one process, the CPU
unless a GPU is there), then is scored on fresh synthetic test scenes at full resolution
(`evaluate_referring_segmentation`). Prints one table: parameters, training time (and its ratio to `none`, run in the
same script), mIoU and precision@0.5 on present objects, ITM ROC-AUC.
"""

import argparse
import tempfile
import time
from pathlib import Path

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.configuration_esam_blip import FUSION_TYPES
from transformers_esam_blip.data import synthetic_referring_dataset
from transformers_esam_blip.evaluation import DEFAULT_TEST_SEED, evaluate_referring_segmentation
from transformers_esam_blip.training import main as train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fusion_types", nargs="+", default=list(FUSION_TYPES), choices=FUSION_TYPES)
    parser.add_argument("--max_steps", type=int, default=800)
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
        command = ["--config", "shapes", "--fusion_type", fusion_type, "--dataset", "synthetic"]
        command += ["--num_scenes", str(args.num_scenes), "--absent_fraction", "0.35", "--cache_dir", str(cache_dir)]
        command += ["--max_steps", str(args.max_steps), "--per_device_train_batch_size", "16"]
        command += ["--learning_rate", str(args.learning_rate), "--warmup_steps", str(args.max_steps // 20)]
        command += ["--lr_scheduler_type", "cosine", "--save_steps", str(args.max_steps), "--logging_steps", "50"]
        command += ["--output_dir", str(output_dir), "--seed", "0"]
        start = time.perf_counter()
        status = train(command)
        seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"training with fusion_type={fusion_type} failed (exit status {status})")
        model = EsamBlipForPromptableSegmentation.from_pretrained(output_dir)
        processor = EsamBlipProcessor.from_pretrained(output_dir)
        scores = evaluate_referring_segmentation(model, processor, test_set, progress=False)
        fusion_params = sum(p.numel() for p in model.model.fusion.parameters()) if model.model.fusion is not None else 0
        rows.append((fusion_type, model.num_parameters(), fusion_params, seconds, scores))
        print(f"{fusion_type}: {seconds:.0f} s, {scores}", flush=True)
    baseline = next((row[3] for row in rows if row[0] == "none"), rows[0][3])
    print(
        f"\nFusion types, {args.max_steps} steps x 16 from scratch ({args.num_scenes} training scenes), scored on "
        f"{args.test_scenes} fresh test scenes (seed {DEFAULT_TEST_SEED}):\n"
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
