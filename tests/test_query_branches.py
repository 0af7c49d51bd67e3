"""Training-only query branches that never change the main queries: H-DETR hybrid matching (a second branch
trained one-to-many) and DN-DETR / DINO denoising queries (noised copies of the true boxes)."""
from __future__ import annotations

import pytest
import torch

from conftest import build_small_detector, perturb_head_
from dino_detector.config import LossConfig
from dino_detector.losses.criterion import build_criterion
from dino_detector.models.denoising import DenoisingQueries
from dino_detector.models.heads import inverse_sigmoid

MAIN, HYBRID = 5, 7


TARGETS = [{"labels": torch.tensor([1, 0, 2]),
            "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2], [0.7, 0.3, 0.1, 0.2]])},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])}]


def twin_models(two_stage: bool, **branch):
    """The same detector with and without training branches: equal weights wherever both have them."""
    plain = build_small_detector(num_queries=MAIN, two_stage=two_stage)
    perturb_head_(plain)
    with_branch = build_small_detector(num_queries=MAIN, two_stage=two_stage, **(branch or {"hybrid_queries": HYBRID}))
    missing, unexpected = with_branch.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("hybrid_", "denoising.")) for k in missing)
    return plain, with_branch


@pytest.mark.parametrize("two_stage", [True, False])
def test_hybrid_branch_trains_beside_the_main_queries_without_changing_them(two_stage):
    """The branches cannot see each other, so the main queries' outputs are those of the model without a
    branch, in training too; at inference the branch is gone."""
    plain, hybrid = twin_models(two_stage)
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    plain.train(), hybrid.train()
    ref, out = plain(images), hybrid(images)
    assert out["pred_logits"].shape == (2, MAIN, 3)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    for a, b in zip(out["aux_outputs"], ref["aux_outputs"]):
        torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=1e-5, rtol=1e-5)
    branch = out["hybrid_outputs"]
    assert branch["pred_logits"].shape == (2, HYBRID, 3) and branch["pred_boxes"].shape == (2, HYBRID, 4)
    assert len(branch["aux_outputs"]) == len(out["aux_outputs"])
    if two_stage:  # the main queries take the best proposals, the branch the next ones
        assert out["enc_outputs"]["pred_boxes"].shape == (2, MAIN + HYBRID, 4)
        torch.testing.assert_close(out["enc_outputs"]["pred_boxes"][:, :MAIN], ref["enc_outputs"]["pred_boxes"])

    hybrid.eval()
    with torch.no_grad():
        evaluated = hybrid(images)
    assert "hybrid_outputs" not in evaluated and evaluated["pred_logits"].shape == (2, MAIN, 3)


def test_hybrid_branch_is_trained_by_its_one_to_many_loss():
    plain, hybrid = twin_models(two_stage=True)
    hybrid.train()
    out = hybrid([torch.rand(3, 64, 64)])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    criterion = build_criterion(3, LossConfig(one_to_many=3))
    losses = criterion(out, targets)
    assert set(losses) == set(criterion.weight_dict(len(out["aux_outputs"]), True, True))
    criterion.total(losses, out).backward()
    assert hybrid.hybrid_content.weight.grad.abs().sum() > 0


def test_with_a_hybrid_branch_the_main_queries_stay_one_to_one_in_every_layer():
    """One object; query 0 predicts it exactly, queries 1 and 2 are 0.1 off in cx (as in the one-to-many
    loss test). With a branch holding the same three boxes, k=3 matches all three there (L1 0.2 / 3 in
    every layer of the branch and in the proposals) and only the exact query in the main layers."""
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.4, 0.5, 0.2, 0.2]]])
    layer = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": boxes}
    stack = {**layer, "aux_outputs": [dict(layer) for _ in range(5)]}
    outputs = {**stack, "enc_outputs": dict(layer), "hybrid_outputs": stack}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]

    losses = build_criterion(2, LossConfig(one_to_many=3))(outputs, targets)
    for key in ["loss_bbox", "loss_bbox_0", "loss_bbox_4"]:
        assert losses[key].item() == pytest.approx(0.0, abs=1e-7)
    for key in ["loss_bbox_hybrid", "loss_bbox_0_hybrid", "loss_bbox_4_hybrid", "loss_bbox_enc"]:
        assert losses[key].item() == pytest.approx(0.2 / 3, abs=1e-6)


def test_negative_hybrid_queries_are_rejected():
    with pytest.raises(ValueError, match="hybrid_queries"):
        build_small_detector(hybrid_queries=-1)


def test_denoising_queries_hold_noised_copies_of_each_object_in_groups():
    """Two images with 3 and 1 objects, room for 13 queries: 2 groups of (3 positives, 3 negatives). A
    positive knows its object, negatives and the padding of the second image have none (-1)."""
    torch.manual_seed(0)
    dn = DenoisingQueries(num_classes=3, dim=8, num_queries=13, box_noise=0.4, label_noise=0.0)(TARGETS)
    assert dn.groups == 2 and dn.content.shape == (2, 12, 8) and dn.ref_logits.shape == (2, 12, 4)
    assert dn.branch.tolist() == [0] * 6 + [1] * 6
    assert dn.target.tolist() == [[0, 1, 2, -1, -1, -1] * 2, [0, -1, -1, -1, -1, -1] * 2]
    query, obj = dn.indices()[0]
    assert query.tolist() == [0, 1, 2, 6, 7, 8] and obj.tolist() == [0, 1, 2, 0, 1, 2]
    # no label noise: the content is the embedding of the true class
    module = DenoisingQueries(3, 8, 13, 0.4, 0.0)
    torch.manual_seed(0)
    dn = module(TARGETS)
    torch.testing.assert_close(dn.content[0, :3], module.label_embed(TARGETS[0]["labels"]))
    # corners move by < 0.4 x half the size (positives) and between 0.4 and 0.8 x (negatives)
    from torchvision.ops import box_convert
    truth = box_convert(TARGETS[0]["boxes"], "cxcywh", "xyxy")
    half = TARGETS[0]["boxes"][:, 2:].repeat(1, 2) / 2
    moved = (box_convert(dn.ref_logits[0].sigmoid(), "cxcywh", "xyxy").reshape(2, 2, 3, 4) - truth).abs() / half
    assert (moved[:, 0] <= 0.4 + 1e-4).all() and (moved[:, 1] >= 0.4 - 1e-4).all() and (moved[:, 1] <= 0.8 + 1e-4).all()
    assert DenoisingQueries(3, 8, 5)(TARGETS) is None  # not even one group fits
    assert DenoisingQueries(3, 8, 13)([{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]) is None
    with pytest.raises(ValueError, match="dn_label_noise"):
        DenoisingQueries(3, 8, 13, label_noise=2.0)


def test_without_noise_a_denoising_query_starts_on_its_object():
    dn = DenoisingQueries(3, 8, 8, box_noise=0.0, label_noise=0.0)(TARGETS)
    torch.testing.assert_close(dn.ref_logits[0, :3], inverse_sigmoid(TARGETS[0]["boxes"]))


@pytest.mark.parametrize("two_stage", [True, False])
def test_denoising_queries_train_beside_the_main_queries_without_changing_them(two_stage):
    plain, dn_model = twin_models(two_stage, dn_queries=13, hybrid_queries=HYBRID)
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    plain.train(), dn_model.train()
    ref, out = plain(images), dn_model(images, TARGETS)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-5)
    assert out["dn_outputs"]["pred_boxes"].shape == (2, 12, 4) and out["dn_outputs"]["groups"] == 2
    assert out["hybrid_outputs"]["pred_boxes"].shape == (2, HYBRID, 4)
    criterion = build_criterion(3, LossConfig(one_to_many=2))
    losses = criterion(out, TARGETS)
    assert set(losses) == set(criterion.weight_dict(len(out["aux_outputs"]), two_stage, True, True))
    criterion.total(losses, out).backward()
    assert dn_model.denoising.label_embed.weight.grad.abs().sum() > 0
    assert "dn_outputs" not in dn_model(images)  # no targets, no denoising
    dn_model.eval()
    with torch.no_grad():
        assert "dn_outputs" not in dn_model(images, TARGETS)


def test_denoising_loss_uses_each_positive_query_s_own_object():
    """Positive queries predicting their objects exactly have zero box loss, whatever a matcher would pick;
    normalised by groups x boxes."""
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.5, 0.2, 0.2]]])
    layer = {"pred_logits": torch.zeros(1, 4, 2), "pred_boxes": boxes}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    dn = {**layer, "indices": [(torch.tensor([0, 2]), torch.tensor([0, 0]))], "groups": 2}
    outputs = {**layer, "dn_outputs": dn}
    losses = build_criterion(2, LossConfig())(outputs, targets)
    assert losses["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-7)
    dn["indices"] = [(torch.tensor([0, 3]), torch.tensor([0, 0]))]  # query 3 is 0.3 off in cx
    losses = build_criterion(2, LossConfig())(outputs, targets)
    assert losses["loss_bbox_dn"].item() == pytest.approx(0.3 / 2, abs=1e-6)
