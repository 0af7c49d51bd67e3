"""SetCriterion: hand-computed L1 / GIoU / focal values, normalisation, aux losses, empty targets."""
from __future__ import annotations

import math

import pytest
import torch

from dino_detector.config import LossConfig
from dino_detector.losses.criterion import build_criterion


@pytest.fixture
def criterion():
    return build_criterion(num_classes=2, loss_cfg=LossConfig())


def single_pair(pred_box, target_box, label: int = 0, logits=(5.0, -5.0)):
    """One query, one target: the matching is forced."""
    outputs = {"pred_logits": torch.tensor([[list(logits)]]), "pred_boxes": torch.tensor([[pred_box]])}
    targets = [{"labels": torch.tensor([label]), "boxes": torch.tensor([target_box])}]
    return outputs, targets


def focal_term(logit: float, target: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Sigmoid focal loss of one logit (RetinaNet formula), computed from scratch."""
    p = 1.0 / (1.0 + math.exp(-logit))
    if target == 1:
        return alpha * (1 - p) ** gamma * -math.log(p)
    return (1 - alpha) * p ** gamma * -math.log(1 - p)


def test_l1_loss_of_one_matched_pair(criterion):
    outputs, targets = single_pair([0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2])
    losses = criterion(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.1, abs=1e-6)


def test_giou_loss_of_identical_boxes_is_zero(criterion):
    outputs, targets = single_pair([0.4, 0.6, 0.3, 0.2], [0.4, 0.6, 0.3, 0.2])
    losses = criterion(outputs, targets)
    # torchvision adds eps = 1e-7 to the union: 1 - 0.06 / (0.06 + 1e-7) ~ 1.7e-6
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)


def test_giou_loss_of_overlapping_boxes_by_hand(criterion):
    # xyxy [0.4,0.4,0.6,0.6] vs [0.5,0.4,0.7,0.6]: inter 0.02, union 0.06, hull 0.06 -> GIoU 1/3
    outputs, targets = single_pair([0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2])
    assert criterion(outputs, targets)["loss_giou"].item() == pytest.approx(1 - 1 / 3, abs=1e-6)


def test_giou_loss_of_disjoint_boxes_by_hand(criterion):
    # xyxy [0.1,0.1,0.3,0.3] vs [0.7,0.7,0.9,0.9]: inter 0, union 0.08, hull 0.8*0.8 = 0.64
    # GIoU = 0 - (0.64 - 0.08) / 0.64 = -0.875 -> loss 1.875; L1 = 0.6 + 0.6 = 1.2
    outputs, targets = single_pair([0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2])
    losses = criterion(outputs, targets)
    assert losses["loss_giou"].item() == pytest.approx(1.875, abs=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(1.2, abs=1e-6)


def test_focal_loss_matches_the_formula(criterion):
    # query 0 is matched to a target of class 1; query 1 is unmatched ("no object": all targets 0)
    logits = torch.tensor([[[0.3, -1.2], [-0.7, 0.5]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]

    loss = criterion.loss_labels(logits, targets, indices, num_boxes=1.0)

    expected = (focal_term(0.3, 0) + focal_term(-1.2, 1) + focal_term(-0.7, 0) + focal_term(0.5, 0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # and normalised by the number of boxes
    loss4 = criterion.loss_labels(logits, targets, indices, num_boxes=4.0)
    assert loss4.item() == pytest.approx(expected / 4, rel=1e-5)


def test_focal_loss_respects_alpha_and_gamma_from_config():
    crit = build_criterion(1, LossConfig(focal_alpha=0.5, focal_gamma=1.0))
    logits = torch.tensor([[[0.8]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    loss = crit.loss_labels(logits, targets, [(torch.tensor([0]), torch.tensor([0]))], 1.0)
    assert loss.item() == pytest.approx(focal_term(0.8, 1, alpha=0.5, gamma=1.0), rel=1e-5)


def test_box_losses_are_normalised_by_the_number_of_target_boxes(criterion):
    # two queries exactly on two targets, except for x offsets of 0.1 and 0.2: L1 sum 0.3 over 2 boxes
    outputs = {"pred_logits": torch.zeros(1, 2, 2),
               "pred_boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.8, 0.7, 0.2, 0.2]]])}
    targets = [{"labels": torch.tensor([0, 1]),
                "boxes": torch.tensor([[0.2, 0.3, 0.2, 0.2], [0.6, 0.7, 0.2, 0.2]])}]
    losses = criterion(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.3 / 2, abs=1e-6)


def test_duplicating_the_batch_leaves_losses_unchanged(criterion):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 5, 2, generator=g)
    boxes = torch.rand(1, 5, 4, generator=g) * 0.3 + 0.2
    target = {"labels": torch.tensor([0, 1, 1]), "boxes": torch.rand(3, 4, generator=g) * 0.3 + 0.2}

    one = criterion({"pred_logits": logits, "pred_boxes": boxes}, [target])
    two = criterion({"pred_logits": logits.repeat(2, 1, 1), "pred_boxes": boxes.repeat(2, 1, 1)},
                    [target, target])

    assert set(one) == set(two)
    for k in one:
        assert two[k].item() == pytest.approx(one[k].item(), rel=1e-5), k


def test_aux_losses_have_index_suffixes_and_weights_cover_every_key(criterion):
    g = torch.Generator().manual_seed(0)

    def out():
        return {"pred_logits": torch.randn(2, 4, 2, generator=g),
                "pred_boxes": torch.rand(2, 4, 4, generator=g) * 0.3 + 0.2}

    outputs = {**out(), "aux_outputs": [out(), out()]}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2],
                                                                       [0.6, 0.6, 0.2, 0.1]])}]
    losses = criterion(outputs, targets)

    base = {"loss_ce", "loss_bbox", "loss_giou"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in (0, 1)}
    weights = criterion.weight_dict(len(outputs["aux_outputs"]))
    assert set(weights) == set(losses)
    cfg = LossConfig()
    for suffix in ("", "_0", "_1"):
        assert weights["loss_ce" + suffix] == cfg.cls_loss_coef
        assert weights["loss_bbox" + suffix] == cfg.bbox_loss_coef
        assert weights["loss_giou" + suffix] == cfg.giou_loss_coef
    # the aux loss of an aux output equals the main loss computed on that output alone
    aux0 = criterion(outputs["aux_outputs"][0], targets)
    for k in base:
        assert losses[f"{k}_0"].item() == pytest.approx(aux0[k].item(), rel=1e-6)


def test_empty_targets_give_finite_losses_and_zero_box_losses(criterion):
    logits = torch.tensor([[[0.2, -1.0], [-2.0, 0.4]]], requires_grad=True)
    boxes = torch.full((1, 2, 4), 0.3, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]

    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)

    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0
    assert losses["loss_giou"].item() == 0.0
    # every query learns "no object"; num_boxes is clamped to 1
    expected = sum(focal_term(x, 0) for x in (0.2, -1.0, -2.0, 0.4))
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)
    sum(losses.values()).backward()
    assert torch.equal(boxes.grad, torch.zeros_like(boxes))
    assert logits.grad.abs().sum() > 0


def test_mixed_empty_and_nonempty_targets(criterion):
    outputs = {"pred_logits": torch.zeros(2, 1, 2),
               "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2]]])}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}]
    losses = criterion(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.1, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(2 / 3, abs=1e-6)


def test_iou_aware_class_target_is_the_box_iou():
    """Varifocal loss: a matched query's class score is pulled to the IoU of its box (here 0.5), not to 1;
    an unmatched query is pushed down with the focal weight alpha * p^gamma."""
    from dino_detector.config import LossConfig
    from dino_detector.losses.criterion import build_criterion

    criterion = build_criterion(2, LossConfig(iou_aware=True))
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    half = torch.tensor([[[0.5, 0.5, 0.2, 0.1], [0.1, 0.1, 0.05, 0.05]]])  # query 0: IoU 0.5 with the truth

    def grads(logit_value: float) -> torch.Tensor:
        logits = torch.full((1, 2, 2), -3.0)
        logits[0, 0, 1] = logit_value
        logits.requires_grad_(True)
        indices = [(torch.tensor([0]), torch.tensor([0]))]
        criterion.loss_labels(logits, [target], indices, 1.0, boxes=half).backward()
        return logits.grad[0]

    assert abs(float(grads(0.0)[0, 1])) < 1e-6  # sigmoid(0) = 0.5 = IoU: the optimum
    assert float(grads(1.0)[0, 1]) > 0 and float(grads(-1.0)[0, 1]) < 0  # pulled back towards 0.5 from both sides
    assert float(grads(0.0)[1, 0]) > 0  # unmatched query: its score goes down
    plain = build_criterion(2, LossConfig())
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    plain.loss_labels(logits, [target], [(torch.tensor([0]), torch.tensor([0]))], 1.0, boxes=half).backward()
    assert float(logits.grad[0, 0, 1]) < 0  # the focal loss pulls towards 1 instead


def test_matchability_aware_loss_values():
    """DEIM's MAL, by hand: matched query (IoU 0.5 with its object, logit x) has target q = 0.5^1.5 and weight 1:
    -(q log s(x) + (1 - q) log(1 - s(x))); an unmatched query (logit y) weighs s(y)^1.5: -s(y)^1.5 log(1 - s(y)).
    The optimum of the matched score is q (not varifocal's 0.5), and its weight does not shrink with the IoU."""
    import math

    from dino_detector.config import LossConfig
    from dino_detector.losses.criterion import build_criterion

    criterion = build_criterion(2, LossConfig(iou_aware=True, iou_aware_loss="mal", mal_gamma=1.5))
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.1], [0.1, 0.1, 0.05, 0.05]]])  # query 0: IoU 0.5 with the truth
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    x, y = 0.3, -1.2
    logits = torch.tensor([[[-30.0, x], [y, -30.0]]])  # the -30 entries contribute ~0
    loss = float(criterion.loss_labels(logits, [target], indices, 1.0, boxes=boxes))
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    q = 0.5 ** 1.5
    expected = -(q * math.log(s(x)) + (1 - q) * math.log(1 - s(x))) - s(y) ** 1.5 * math.log(1 - s(y))
    assert loss == pytest.approx(expected, rel=1e-4)
    optimum = torch.tensor([[[-30.0, math.log(q / (1 - q))], [-30.0, -30.0]]], requires_grad=True)
    criterion.loss_labels(optimum, [target], indices, 1.0, boxes=boxes).backward()
    assert abs(float(optimum.grad[0, 0, 1])) < 1e-5  # sigmoid(logit) = IoU^1.5: the optimum
    with pytest.raises(ValueError, match="iou_aware_loss"):
        build_criterion(2, LossConfig(iou_aware=True, iou_aware_loss="focal"))


def test_one_to_many_applies_to_proposals_and_early_layers_but_not_the_last_two():
    """One object; query 0 predicts it exactly, queries 1 and 2 are 0.1 off in cx. One-to-one matching
    takes the exact query (box losses 0); one-to-many with k=3 also takes the two others, whose L1 is
    (0.1 + 0.1) / 3 when normalised by k boxes. Six decoder layers: aux 0-3 and the proposals are
    one-to-many, aux 4 and the final layer one-to-one."""
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.4, 0.5, 0.2, 0.2]]])
    layer = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": boxes}
    outputs = {**layer, "aux_outputs": [dict(layer) for _ in range(5)], "enc_outputs": dict(layer)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]

    hybrid = build_criterion(2, LossConfig(one_to_many=3))(outputs, targets)
    for key in ["loss_bbox_0", "loss_bbox_3", "loss_bbox_enc"]:
        assert hybrid[key].item() == pytest.approx(0.2 / 3, abs=1e-6)
    for key in ["loss_bbox", "loss_bbox_4"]:
        assert hybrid[key].item() == pytest.approx(0.0, abs=1e-7)
    plain = build_criterion(2, LossConfig())(outputs, targets)
    assert all(plain[k].item() == pytest.approx(0.0, abs=1e-7) for k in plain if k.startswith("loss_bbox"))
    with pytest.raises(ValueError, match="one_to_many"):
        build_criterion(2, LossConfig(one_to_many=0))
