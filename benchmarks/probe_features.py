"""What each encoder of a trained model knows about the synthetic objects: linear probes and prompt distances.

    python benchmarks/probe_features.py [--model esam-blip-shapes] [--num_scenes 300] [--seed 77]

For every object of `--num_scenes` fresh synthetic scenes, the EfficientSAM image embedding and the BLIP patch token
at the object's centre are read; a multinomial logistic regression (torch, L-BFGS, small L2) is fitted on the first
three quarters of the objects and scored on the rest, once for the colour and once for the shape. Then the learned
prompter's tokens for the 12 expressions "the {colour} {shape}" are compared: mean distance between expressions that
differ only in colour and between expressions that differ only in shape, relative to the largest distance. Prints
two tables (the README's "Where the shipped model fails").
"""

import argparse
import itertools

import numpy as np
import torch

from transformers_esam_blip import EsamBlipForPromptableSegmentation, EsamBlipProcessor
from transformers_esam_blip.data import COLOURS, SHAPES, generate_scene, scene_rng


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3) -> float:
    """Held-out accuracy of a logistic regression fitted on the first 3/4 of the rows (features standardised)."""
    split = features.shape[0] * 3 // 4
    mean, std = features[:split].mean(0), features[:split].std(0).clamp_min(1e-6)
    x = (features - mean) / std
    linear = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x[:split]), labels[:split]) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(x[split:]).argmax(-1) == labels[split:]).float().mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="esam-blip-shapes")
    parser.add_argument("--num_scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=77, help="scene seed (the training used 0 and 1)")
    args = parser.parse_args()
    model = EsamBlipForPromptableSegmentation.from_pretrained(args.model).eval()
    processor = EsamBlipProcessor.from_pretrained(args.model)
    colours, shapes = list(COLOURS), list(SHAPES)
    sam_rows, blip_rows, colour_ids, shape_ids = [], [], [], []
    for scene_id in range(args.num_scenes):
        image, objects = generate_scene(scene_rng(args.seed, scene_id))
        inputs = processor(images=image, return_tensors="pt")
        sam = model.get_image_embeddings(inputs["pixel_values"])[0]  # [C, g, g]
        blip = model.model.require_blip().get_image_features(inputs["blip_pixel_values"])[0, 1:]
        blip_side = int(round(blip.shape[0] ** 0.5))
        blip = blip.reshape(blip_side, blip_side, -1)
        for obj in objects:
            rows, cols = np.nonzero(obj["mask"])
            cy, cx = rows.mean() / image.shape[0], cols.mean() / image.shape[1]  # fractions of the image
            sam_rows.append(sam[:, int(cy * sam.shape[1]), int(cx * sam.shape[2])])
            blip_rows.append(blip[int(cy * blip_side), int(cx * blip_side)])
            colour_ids.append(colours.index(obj["colour"]))
            shape_ids.append(shapes.index(obj["shape"]))
    colour_ids, shape_ids = torch.tensor(colour_ids), torch.tensor(shape_ids)
    print(f"Linear probes, {len(colour_ids)} objects of {args.num_scenes} scenes (held-out quarter):")
    print("| features | colour accuracy | shape accuracy |\n|---|---:|---:|")
    with torch.enable_grad():
        for name, rows in (("EfficientSAM image embedding", sam_rows), ("BLIP patch token", blip_rows)):
            features = torch.stack(rows).float()
            colour = probe_accuracy(features, colour_ids, len(colours))
            shape = probe_accuracy(features, shape_ids, len(shapes))
            print(f"| {name} | {colour:.3f} | {shape:.3f} |")

    if model.model.prompter is None:
        return
    pairs = list(itertools.product(colours, shapes))
    texts = [f"the {colour} {shape}" for colour, shape in pairs]
    tokens = processor(text=texts, return_tensors="pt")
    blip = model.model.blip
    if model.config.prompter_source == "itm":
        print("(prompter_source='itm' reads the image too: prompt distances skipped)")
        return
    features = blip.get_text_features(tokens["input_ids"], tokens["attention_mask"])[:, 0]
    prompts = model.model.prompter(features).flatten(1)
    distances = torch.cdist(prompts, prompts)
    distances = distances / distances.max()
    same_shape = [distances[i, j] for i, j in itertools.combinations(range(12), 2) if pairs[i][1] == pairs[j][1]]
    same_colour = [distances[i, j] for i, j in itertools.combinations(range(12), 2) if pairs[i][0] == pairs[j][0]]
    print("\nLearned prompt tokens of 'the {colour} {shape}' (distance / largest distance):")
    print("| expressions that differ only in | mean distance |\n|---|---:|")
    print(f"| the colour | {float(torch.stack(same_shape).mean()):.3f} |")
    print(f"| the shape | {float(torch.stack(same_colour).mean()):.3f} |")


if __name__ == "__main__":
    main()
