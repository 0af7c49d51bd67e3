"""Learning-rate schedules, layer-wise decay, EMA, AMP choices and checkpoint pruning."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dino_detector.config import TrainConfig
from dino_detector.runtime.checkpoint import load_checkpoint, prune_epoch_checkpoints
from dino_detector.engine.ema import ema_model
from dino_detector.engine.optim import backbone_groups, backbone_layer_id, head_group, lr_schedule
from dino_detector.runtime.device import resolve_amp
from dino_detector.runtime.schedule import Clock, Schedule
from dino_detector.train import main as train_main

from conftest import build_small_detector


def factors(schedule: Schedule, steps: int, per_epoch: int) -> list[float]:
    return [schedule(Clock(s, s // per_epoch, 0.0)) for s in range(steps)]


def test_warmup_then_step_drop():
    f = factors(lr_schedule(kind="step", epochs=4, steps_per_epoch=10, warmup_steps=5, drop_epoch=3), 40, 10)
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f[5:30] == [1.0] * 25 and f[30:] == [0.1] * 10


def test_cosine_falls_from_one_to_the_floor():
    s = lr_schedule(kind="cosine", epochs=2, steps_per_epoch=50, min_factor=0.01)
    f = factors(s, 100, 50)
    assert f[0] == 1.0 and all(a >= b for a, b in zip(f, f[1:]))
    assert f[50] == pytest.approx(0.01 + 0.99 * 0.5) and s(Clock(100, 2, 0.0)) == pytest.approx(0.01)
    # under a time budget, progress is the larger of steps and time
    timed = lr_schedule(kind="cosine", epochs=100, steps_per_epoch=50, budget_s=60.0, min_factor=0.0)
    assert timed(Clock(0, 0, 30.0)) == pytest.approx(0.5) and timed(Clock(0, 0, 60.0)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_schedule(kind="linear", epochs=1, steps_per_epoch=1)


def test_layer_wise_decay_gives_deeper_blocks_larger_rates():
    model = build_small_detector(num_classes=2, backbone_mode="full")
    layers = model.backbone.vit.config.num_hidden_layers
    assert backbone_layer_id("backbone.vit.embeddings.cls_token", layers) == 0
    assert backbone_layer_id("backbone.vit.encoder.layer.2.mlp.fc1.weight", layers) == 3
    assert backbone_layer_id("backbone.vit.model.layer.2.mlp.fc1.weight", layers) == 3  # DINOv3 naming
    assert backbone_layer_id("backbone.vit.layernorm.weight", layers) == layers + 1
    groups = backbone_groups(model, 1e-4, 0.5)
    rates = {g["name"]: g["base_lr"] for g in groups}
    assert rates[f"backbone.layer{layers + 1}"] == 1e-4 and rates["backbone.layer0"] == 1e-4 * 0.5 ** (layers + 1)
    assert all(rates[f"backbone.layer{i}"] < rates[f"backbone.layer{i + 1}"] for i in range(layers + 1))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups + head_group(model, 1e-3) for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter exactly once
    assert len(backbone_groups(model, 1e-4, 1.0)) == 1


def test_ema_follows_the_weights_with_a_warming_decay():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ema_model(model, decay=0.9)
    w0 = model.weight.detach().clone()
    ema.update_parameters(model)  # first update copies
    assert torch.equal(ema.module.weight, w0)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)  # n = 1: decay min(0.9, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, d * w0 + (1 - d) * (w0 + 1.0))
    with pytest.raises(ValueError):
        ema_model(model, decay=1.0)


def test_amp_choices():
    cpu, t = torch.device("cpu"), TrainConfig()

    def amp(train: TrainConfig):
        return resolve_amp(amp=train.amp, amp_dtype=train.amp_dtype, device=cpu)

    assert amp(t) is None
    t = dataclasses.replace(t, amp=True)
    assert amp(t) == torch.bfloat16
    t = dataclasses.replace(t, amp_dtype="fp16")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        amp(t)
    t = dataclasses.replace(t, amp_dtype="int8")
    with pytest.raises(ValueError, match="amp_dtype"):
        amp(t)


def test_bf16_autocast_trains_a_tiny_step_on_cpu_and_ema_is_saved(tiny_coco, tmp_path):
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    out = tmp_path / "amp"
    code = train_main(["--train_images", images, "--train_annotations", ann, "--dino_model", "tiny",
                       "--no_pretrained", "--image_size", "42", "--num_queries", "5", "--decoder_layers", "1",
                       "--hidden_dim", "32", "--num_heads", "2", "--dim_feedforward", "64", "--device", "cpu",
                       "--num_workers", "0", "--batch_size", "4", "--epochs", "1", "--debug", "--debug_samples",
                       "8", "--debug_epochs", "1", "--amp", "--ema", "--ema_decay", "0.99", "--output_dir", str(out)])
    assert code == 0
    ckpt = load_checkpoint(out / "dino_detector_final.pth")
    assert math.isfinite(ckpt["history"][0]["loss"])
    ema = ckpt["ema"]
    assert ema["n_averaged"].item() == 2  # two optimizer steps
    raw = ckpt["model"]
    assert raw.keys() == {k.removeprefix("module.") for k in ema if k != "n_averaged"}
    lagging = [k for k in raw if raw[k].is_floating_point() and not torch.equal(ema[f"module.{k}"], raw[k])]
    assert len(lagging) > len(raw) // 2  # the average lags the second step
    assert (out / "val_metrics_ema_final.json").exists()


def test_keep_last_k_epoch_checkpoints(tmp_path):
    for n in (1, 2, 3, 10):
        (tmp_path / f"dino_detector_epoch_{n}.pth").write_bytes(b"x")
    (tmp_path / "dino_detector_last.pth").write_bytes(b"x")
    removed = prune_epoch_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["dino_detector_epoch_1.pth", "dino_detector_epoch_2.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino_detector_epoch_10.pth", "dino_detector_epoch_3.pth",
                                                          "dino_detector_last.pth"]
    assert prune_epoch_checkpoints(tmp_path, keep=0) == []
