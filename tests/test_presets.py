"""Every preset builds offline and trains one step; the preset-specific heads, losses and staged schedule."""
from __future__ import annotations

import math

import pytest
import torch

from dino_detector.config import PRESETS, LossConfig, build_config
from dino_detector.losses.criterion import build_criterion
from dino_detector.models.detector import DINOv2ObjectDetector
from dino_detector.models.heads import class_probabilities
from dino_detector.models.postprocess import postprocess

NUM_CLASSES = 3


def two_images_and_targets():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 70, 90, generator=g), torch.rand(3, 50, 40, generator=g)]
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.5]])}]
    return images, targets


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_offline_and_runs_forward_and_backward(preset):
    cfg = build_config(preset, pretrained=False)  # the preset's own architecture, random weights, no network
    model = DINOv2ObjectDetector(num_classes=NUM_CLASSES, config=cfg.model)
    images, targets = two_images_and_targets()
    out = model(images)
    logits_per_query = NUM_CLASSES + (1 if cfg.model.classifier == "softmax" else 0)
    # two-stage selection keeps at most as many queries as these tiny images have pyramid tokens
    queries = out["pred_logits"].shape[1]
    assert queries == cfg.model.num_queries or (cfg.model.two_stage and 0 < queries < cfg.model.num_queries)
    assert out["pred_logits"].shape == (2, queries, logits_per_query)
    assert out["pred_boxes"].shape == (2, queries, 4)
    assert len(out["aux_outputs"]) == cfg.model.decoder_layers - 1

    criterion = build_criterion(NUM_CLASSES, cfg.loss, model.softmax)
    losses = criterion(out, targets)
    weights = criterion.weight_dict(len(out["aux_outputs"]), "enc_outputs" in out)
    loss = sum(losses[k] * weights[k] for k in losses)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, preset
    # the final class head and the first decoder layer's attention learn from this batch
    grads = {n: p.grad for n, p in trainable.items()}
    head = [n for n in grads if n.startswith(f"decoder.class_heads.{cfg.model.decoder_layers - 1}.")]
    assert head and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in head)
    frozen = cfg.model.backbone_mode == "frozen"
    assert all(not p.requires_grad for p in model.backbone.vit.parameters()) == frozen


def test_preset_contents_follow_the_design():
    simple, improved, dinov3 = (build_config(p) for p in ("simple", "improved", "detr-dinov3"))
    assert (simple.model.classifier, simple.model.class_mlp_layers, simple.model.box_mlp_layers) == ("softmax", 1, 1)
    assert simple.loss.no_object_weight == 0.1
    assert improved.model.head_dropout > 0 and improved.model.class_mlp_layers > 1
    assert (improved.loss.box_loss, improved.loss.bbox_loss_coef) == ("smooth_l1", 2.0)
    assert (improved.train.lr, improved.train.unfreeze_at_epoch, improved.train.epochs) == (1e-3, 10, 15)
    assert (improved.train.unfreeze_lr, improved.train.lr_backbone) == (1e-5, 1e-5)
    assert (dinov3.train.unfreeze_at_epoch, dinov3.train.epochs, dinov3.train.checkpoint_every) == (100, 300, 50)
    assert dinov3.model.backbone_mode == "frozen"


def test_softmax_cross_entropy_weights_no_object_class():
    """With every query unmatched except one, the loss is DETR's weighted mean cross-entropy."""
    crit = build_criterion(2, LossConfig(no_object_weight=0.25), softmax=True)
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 3.0]]])  # [1, 3 queries, 2 + 1]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, targets)
    nll = -logits[0].log_softmax(-1)
    expected = (nll[0, 0] + 0.25 * nll[1, 2] + 0.25 * nll[2, 2]) / (1 + 0.25 + 0.25)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)  # query 0 matched on its exact box


def test_smooth_l1_box_loss_value():
    crit = build_criterion(1, LossConfig(box_loss="smooth_l1", smooth_l1_beta=0.1))
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.55, 0.3, 0.2, 0.2]])}]
    losses = crit({"pred_logits": torch.zeros(1, 1, 1), "pred_boxes": boxes}, targets)
    # |d| = 0.05 < beta: 0.5 d^2 / beta; |d| = 0.2 >= beta: |d| - beta / 2
    expected = 0.5 * 0.05 ** 2 / 0.1 + (0.2 - 0.05)
    assert losses["loss_bbox"].item() == pytest.approx(expected, rel=1e-5)


def test_softmax_postprocess_ignores_no_object_column():
    logits = torch.tensor([[[0.0, 0.0, 5.0], [4.0, 0.0, 0.0]]])  # query 0 is background, query 1 class 0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]]])
    det = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [(100, 200)], [7, 9], top_k=1,
                      softmax=True)[0]
    assert det["category_ids"].tolist() == [7]
    assert det["boxes"][0].tolist() == pytest.approx([40.0, 20.0, 60.0, 30.0])
    probs = class_probabilities(logits, softmax=True)
    assert probs.shape == (1, 2, 2) and det["scores"][0].item() == pytest.approx(probs[0, 1, 0].item())


def test_two_stage_preset_is_the_benchmarked_cpu_recipe(tmp_path):
    """The benchmark's `flexible` variant (benchmarks/peers/ours.py; BCCD AP 0.362 after 12 CPU minutes) runs
    the `two-stage` preset itself, adding only the recipe's training setup, and the command line it runs
    resolves to the model and learning rates of that preset with the same flags, typed without
    --no_pretrained (the README's "best CPU recipe")."""
    from benchmarks.peers import BccdData, ours
    from dino_detector.cli import parse_config
    from dino_detector.spec import resolve_run

    variant = ours.VARIANTS["flexible"]
    assert variant["preset"] == "two-stage"
    assert not set(variant["overrides"]) & set(PRESETS["two-stage"])  # the architecture is the preset's
    bench_argv = ours.train_argv("flexible", BccdData(), 12.0, tmp_path)
    recipe_argv = ["--preset", "two-stage", *(f"--{k}={v}" for k, v in variant["overrides"].items())]
    bench, recipe = (resolve_run(parse_config(argv, "test")[0], classes=ours.BCCD_CATEGORIES)
                     for argv in (bench_argv, recipe_argv))
    assert bench.model == recipe.model
    # the preset's CPU batch and lr (batch 4 at 3.5e-4: BCCD AP 0.565 in 12 CPU minutes against 0.540 at
    # batch 8, lr 5e-4); the random backbone trains at the head's lr
    assert [(s.train.lr, s.train.lr_backbone, s.train.batch_size, s.data.image_size) for s in (bench, recipe)] == [
        (3.5e-4, 3.5e-4, 4, variant["overrides"]["image_size"])] * 2
    assert bench.model.two_stage and bench.model.dn_queries == 100 and bench.model.dino_model == "flexible-tiny"
    assert bench.model.backbone_weights == "random" and not bench.model.pretrained


def test_two_stage_lite_is_two_stage_on_the_lite_encoder_at_a_quarter_of_the_flops():
    """`two-stage-lite` changes only the encoder and the two settings it needs (its stem's stride-8 map as
    the finest level, one feature layer), and its 512² forward costs under 30 % of `two-stage`'s FLOPs."""
    import dataclasses

    from benchmarks.flops import count_flops
    from dino_detector.models.detector import ObjectDetector

    lite, full = (build_config(p, pretrained=False) for p in ("two-stage-lite", "two-stage"))
    changed = {f.name for f in dataclasses.fields(full.model)
               if getattr(lite.model, f.name) != getattr(full.model, f.name)}
    assert changed == {"dino_model", "fine_level", "backbone_feature_layers"}
    assert (lite.model.dino_model, lite.model.fine_level, lite.model.backbone_feature_layers) == ("flexible-lite", "stem", 1)
    assert lite.train == full.train and lite.loss == full.loss and lite.data == full.data
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    flops = {}
    for name, cfg in (("lite", lite), ("full", full)):
        torch.manual_seed(0)
        model = ObjectDetector(num_classes=3, config=cfg.model).eval()
        with torch.no_grad():
            flops[name] = count_flops(lambda: model(image))
    assert flops["lite"] < 0.3 * flops["full"]
