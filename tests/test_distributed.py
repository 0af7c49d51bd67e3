"""DDP through torchrun (2 CPU processes, gloo) and gradient accumulation both equal one large batch.

Real tiny-coco images of different sizes, so every split pads its batches differently; dropout off and
no random augmentation, so the runs are deterministic; all 16 images train (no validation share split off:
DistributedSampler would pad an odd count with a repeated image). Losses are read back per step from TensorBoard.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dino_detector.train import main as train_main

TOLERANCE = 1e-5
# Adam divides each gradient by its own running scale: a rounding-level difference in a near-zero gradient
# (the all-reduce sums in another order) can move that weight by a fraction of lr (1e-4) per step. Seen:
# 5.5e-5 after 8 steps with the fused AdamW kernel, against 8e-4 for a weight whose update flipped sign.
WEIGHT_TOLERANCE = 1e-4


def run_args(tiny_coco, out: Path, batch: int, *extra: str) -> list[str]:
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    return ["--train_images", images, "--train_annotations", ann, "--dino_model", "tiny", "--no_pretrained",
            "--image_size", "96", "--num_queries", "10", "--decoder_layers", "1", "--device", "cpu",
            "--num_workers", "0", "--epochs", "1", "--no_flip", "--color_jitter", "0", "--log_frequency", "1",
            "--eval_every", "0", "--val_fraction", "0", "--batch_size", str(batch), "--output_dir", str(out), *extra]


def step_losses(out: Path) -> list[float]:
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "dino_detector_final.pth", weights_only=True)["model"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def in_process(args: list[str]) -> None:
    assert train_main(args) == 0


@pytest.fixture(scope="module")
def batch4(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch4")
    in_process(run_args(tiny_coco, out, 4, "--epochs", "2"))
    return out


def test_torchrun_two_processes_equal_one_process_with_the_whole_batch(tiny_coco, batch4, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dino_detector.train", *run_args(tiny_coco, out, 2, "--epochs", "2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = step_losses(batch4), step_losses(out)
    assert len(single) == len(ddp) == 8  # 16 images, 4 per step, 2 epochs
    assert ddp == pytest.approx(single, abs=TOLERANCE)
    assert max_difference(final_weights(out), final_weights(batch4)) < WEIGHT_TOLERANCE
    ckpt = torch.load(out / "dino_detector_final.pth", weights_only=True)
    assert len(ckpt["rng"]) == 2  # each process's random state is kept for an exact resume
    assert ckpt["step"] == 8


def test_gradient_accumulation_4x2_equals_batch_8(tiny_coco, tmp_path):
    in_process(run_args(tiny_coco, tmp_path / "b8", 8))
    in_process(run_args(tiny_coco, tmp_path / "acc", 2, "--grad_accum_steps", "4"))
    one, acc = step_losses(tmp_path / "b8"), step_losses(tmp_path / "acc")
    assert len(one) == len(acc) == 2  # optimizer steps, not batches
    assert acc == pytest.approx(one, abs=TOLERANCE)
    assert max_difference(final_weights(tmp_path / "acc"), final_weights(tmp_path / "b8")) < WEIGHT_TOLERANCE
    # control: accumulation without the window-wide normalisation would be a different update
    in_process(run_args(tiny_coco, tmp_path / "b2", 2))
    assert max_difference(final_weights(tmp_path / "b2"), final_weights(tmp_path / "b8")) > 1e-4
