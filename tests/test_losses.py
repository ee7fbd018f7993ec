"""SAM-recipe losses: focal and dice formulas, lowest-loss candidate, IoU-head target, label resizing, ITM, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformers_esam_blip.losses import (
    dice_loss,
    itm_loss,
    mask_iou,
    prepare_mask_labels,
    segmentation_loss,
    sigmoid_focal_loss,
)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_focal_loss_formula():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = _sigmoid(x)
        p_t = p if t else 1 - p
        alpha_t = 0.25 if t else 0.75
        expected += alpha_t * (1 - p_t) ** 2 * -math.log(p_t)
    result = sigmoid_focal_loss(logits, targets)
    assert result.shape == (1,)
    assert result.item() == pytest.approx(expected / 4, rel=1e-6)
    no_alpha = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0)
    torch.testing.assert_close(no_alpha, F.binary_cross_entropy_with_logits(logits, targets).reshape(1))


def test_dice_loss_formula():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = [_sigmoid(x) for x in logits.flatten().tolist()]
    t = targets.flatten().tolist()
    expected = 1 - (2 * sum(a * b for a, b in zip(p, t)) + 1) / (sum(p) + sum(t) + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(torch.full((1, 3, 3), -50.0), torch.zeros(1, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_iou_of_binarised_logits():
    logits = torch.tensor([[[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]]])  # 4 pixels on
    targets = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # 3 pixels on, 2 shared
    assert mask_iou(logits, targets).item() == pytest.approx(2 / 5)
    assert mask_iou(-torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0  # two empty masks agree


def _candidates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One query, three candidates on a 4x4 grid: candidate 1 is right, 0 is empty, 2 covers everything."""
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1.0
    logits = torch.full((1, 1, 3, 4, 4), -4.0)
    logits[:, :, 1] = torch.where(target[0, 0] > 0, 4.0, -4.0)
    logits[:, :, 2] = 4.0
    iou_scores = torch.tensor([[[0.1, 0.5, 0.9]]])
    return logits, iou_scores, target


def test_lowest_loss_candidate_is_trained_and_gets_all_the_gradient():
    logits, iou_scores, target = _candidates()
    logits.requires_grad_(True)
    iou_scores.requires_grad_(True)
    loss, parts = segmentation_loss(logits, iou_scores, target)
    assert parts["chosen_candidate"].tolist() == [[1]]
    focal = sigmoid_focal_loss(logits[:, :, 1], target).item()
    dice = dice_loss(logits[:, :, 1], target).item()
    iou_error = (0.5 - 1.0) ** 2  # candidate 1 binarises to the target: actual IoU 1
    assert loss.item() == pytest.approx(20 * focal + dice + iou_error, rel=1e-5)
    assert parts["focal_loss"].item() == pytest.approx(focal, rel=1e-6)
    assert parts["iou_loss"].item() == pytest.approx(iou_error)
    loss.backward()
    assert logits.grad[:, :, 1].abs().sum() > 0
    assert logits.grad[:, :, [0, 2]].abs().sum() == 0
    assert iou_scores.grad.tolist() == [[[0.0, pytest.approx(2 * (0.5 - 1.0)), 0.0]]]


def test_iou_target_is_the_chosen_candidates_actual_iou():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, :] = 1.0  # 4 pixels
    logits = torch.full((1, 1, 1, 4, 4), -3.0)
    logits[..., 0, :2] = 3.0
    logits[..., 1, :2] = 3.0  # 2 of the 4 target pixels plus 2 others: IoU 2 / 6
    _, parts = segmentation_loss(logits, torch.tensor([[[0.8]]]), target)
    assert parts["iou_loss"].item() == pytest.approx((0.8 - 1 / 3) ** 2, rel=1e-6)


def test_weights_scale_the_parts():
    logits, iou_scores, target = _candidates()
    logits = logits + 0.3 * torch.randn_like(logits)
    _, parts = segmentation_loss(logits, iou_scores, target)
    loss, _ = segmentation_loss(logits, iou_scores, target, focal_weight=2.0, dice_weight=3.0, iou_weight=0.5)
    # With other weights the chosen candidate may differ; this one is clearly best either way.
    expected = 2.0 * parts["focal_loss"] + 3.0 * parts["dice_loss"] + 0.5 * parts["iou_loss"]
    torch.testing.assert_close(loss, expected)


def test_full_resolution_labels_give_the_same_loss():
    low = (torch.rand(2, 1, 8, 8) > 0.5).float()
    full = low.repeat_interleave(2, dim=-2).repeat_interleave(3, dim=-1)  # images of 16x24 (H x W)
    pred_masks = torch.randn(2, 1, 3, 8, 8)
    iou_scores = torch.rand(2, 1, 3)
    expected, _ = segmentation_loss(pred_masks, iou_scores, low)
    sizes = torch.tensor([[16, 24], [16, 24]])
    torch.testing.assert_close(segmentation_loss(pred_masks, iou_scores, full, sizes)[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(segmentation_loss(pred_masks, iou_scores, full, [(16, 24)])[0], expected)
    shared, _ = segmentation_loss(pred_masks, iou_scores, low[:, 0])  # [B, h, w]: one mask for every query
    torch.testing.assert_close(shared, expected)


def test_resizing_is_area_average_then_half():
    full = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    full[..., 0, 0:2] = True  # 2 of the 4 pixels of cell (0, 0): kept
    full[..., 2, 2] = True  # 1 of the 4 pixels of cell (1, 1): dropped
    labels = prepare_mask_labels(full, 1, 1, (2, 2), original_sizes=[(4, 4)])
    assert labels.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]
    queries = prepare_mask_labels(torch.ones(1, 2, 2), 1, 3, (2, 2))
    assert queries.shape == (1, 3, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"labels": torch.zeros(1, 1, 5, 5)}, ValueError, r"size \(5, 5\).*neither.*\(4, 4\).*pass `original_sizes`"),
        (
            {"labels": torch.zeros(1, 1, 5, 5), "original_sizes": [(6, 5)]},
            ValueError,
            r"neither the low-resolution masks \(4, 4\) nor the original image sizes \[\(6, 5\)\]",
        ),
        ({"labels": torch.zeros(1, 2, 4, 4)}, ValueError, r"2 masks per image but the prompts make 1 queries"),
        ({"labels": torch.full((1, 1, 4, 4), 0.5)}, ValueError, r"binary masks.*0.5"),
        ({"labels": [[0.0]]}, TypeError, r"`labels` must be a torch.Tensor.*list"),
        ({"labels": torch.zeros(4, 4)}, ValueError, r"\[batch, queries, height, width\].*\(4, 4\)"),
        ({"labels": torch.zeros(2, 4, 4)}, ValueError, r"batch 1, got shape \(2, 4, 4\)"),
        (
            {"labels": torch.zeros(1, 8, 8), "original_sizes": [(8, 8), (8, 8), (8, 8)]},
            ValueError,
            r"`original_sizes` must hold one \(height, width\) per image \(1\)",
        ),
        ({"iou_scores": torch.zeros(1, 1, 2)}, ValueError, r"`iou_scores` must have shape \(1, 1, 3\)"),
        ({"pred_masks": torch.zeros(1, 3, 4, 4)}, ValueError, r"`pred_masks`.*\[batch, queries, candidates"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, message):
    arguments = {
        "pred_masks": torch.zeros(1, 1, 3, 4, 4),
        "iou_scores": torch.zeros(1, 1, 3),
        "labels": torch.zeros(1, 1, 4, 4),
        **kwargs,
    }
    with pytest.raises(error, match=message):
        segmentation_loss(**arguments)


def test_itm_loss_is_cross_entropy_with_clear_errors():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.7]])
    targets = torch.tensor([0, 1])
    torch.testing.assert_close(itm_loss(logits, targets), F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match=r"`match_labels` must be 0/1 match targets of shape \(2,\).*\(3,\)"):
        itm_loss(logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"`labels` must be 0/1 match targets, got values \[0, 2\]"):
        itm_loss(logits, torch.tensor([0, 2]), name="labels")


def test_valid_restricts_the_mask_loss_to_the_flagged_entries():
    torch.manual_seed(0)
    pred_masks = torch.randn(3, 2, 3, 8, 8, requires_grad=True)
    iou_scores = torch.rand(3, 2, 3)
    labels = (torch.rand(3, 8, 8) > 0.5).float()
    valid = torch.tensor([True, False, True])
    loss, parts = segmentation_loss(pred_masks, iou_scores, labels, valid=valid)
    expected, _ = segmentation_loss(pred_masks[valid], iou_scores[valid], labels[valid])
    torch.testing.assert_close(loss, expected)
    assert parts["chosen_candidate"].shape == (2, 2)

    none, parts = segmentation_loss(pred_masks, iou_scores, labels, valid=torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and parts["chosen_candidate"].shape == (0, 2)
    none.backward()  # still part of the graph
    assert pred_masks.grad is not None and not pred_masks.grad.any()

    with pytest.raises(ValueError, match=r"`valid` must be a bool tensor of shape \(3,\).*got \(2,\)"):
        segmentation_loss(pred_masks, iou_scores, labels, valid=torch.ones(2, dtype=torch.bool))
