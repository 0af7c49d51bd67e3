"""Never lose work: SIGKILL in the middle of epoch 3, resume from the last checkpoint, and end with the same
weights and metrics as a run that was never interrupted; a kill while a checkpoint is being written leaves
the previous one loadable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from dino_detector.runtime.checkpoint import load_checkpoint, remove_stale_temporaries, save_atomic

EPOCHS = 4


def train_args(tiny_coco, out: Path, *extra: str) -> list[str]:
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    # batch 1: 16 steps per epoch, long enough to be killed in the middle of one; flip and colour jitter on,
    # so the random state must be restored too
    return ["--train_images", images, "--train_annotations", ann,
            "--val_images", images, "--val_annotations", ann, "--dino_model", "tiny", "--no_pretrained",
            "--image_size", "96", "--num_queries", "10", "--decoder_layers", "1", "--device", "cpu",
            "--num_workers", "0", "--batch_size", "1", "--epochs", str(EPOCHS), "--checkpoint_every", "1",
            "--eval_every", "2", "--output_dir", str(out), *extra]


def train_cmd(tiny_coco, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dino_detector.train", *train_args(tiny_coco, out, *extra)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


STEPS_PER_EPOCH = 16
KILL_AFTER_STEP = 2 * STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2  # the middle of epoch 3


def run_and_kill_itself(args: list[str], after_step: int) -> subprocess.CompletedProcess:
    """Run training with these arguments in a process that SIGKILLs itself right after its ``after_step``-th optimiser
    step: a global optimiser hook counts steps, so the kill lands at the same place on a fast or a slow machine
    (a timer from outside once landed after epoch 3 had ended when other tests freed the cores)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from dino_detector.train import main
        steps = 0
        def die_after_{after_step}(optimizer, args, kwargs):
            global steps
            steps += 1
            if steps == {after_step}:
                os.kill(os.getpid(), signal.SIGKILL)
        register_optimizer_step_post_hook(die_after_{after_step})
        sys.exit(main({args!r}))
    """)
    return subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, timeout=600)


def test_sigkill_in_epoch_3_then_resume_matches_an_uninterrupted_run(tiny_coco, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(tiny_coco, straight), env=ENV, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = run_and_kill_itself(train_args(tiny_coco, killed), KILL_AFTER_STEP)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (killed / "dino_detector_epoch_3.pth").exists(), "the kill came too late to be mid-epoch 3"
    assert load_checkpoint(killed / "dino_detector_last.pth")["epoch"] == 1  # 0-based: epoch 2 finished

    subprocess.run(train_cmd(tiny_coco, killed, "--checkpoint", str(killed / "dino_detector_last.pth")), env=ENV,
                   check=True, capture_output=True, timeout=600)
    a = load_checkpoint(straight / "dino_detector_final.pth")
    b = load_checkpoint(killed / "dino_detector_final.pth")
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    metrics_a = json.loads((straight / "val_metrics_final.json").read_text())
    metrics_b = json.loads((killed / "val_metrics_final.json").read_text())
    assert metrics_a.pop("step") == metrics_b.pop("step") == EPOCHS * STEPS_PER_EPOCH
    metrics_a.pop("train_seconds"), metrics_b.pop("train_seconds")  # wall-clock: differs by nature
    assert metrics_a == metrics_b
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "dino_detector_last.pth"
    save_atomic({"model": {"w": torch.ones(3)}, "metadata": {}, "epoch": 1}, path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from dino_detector.runtime import checkpoint
        def half_then_die(obj, f, *a, **k):
            f.write(b"PK" + b"x" * 100000)  # part of a file, then the process is killed
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.torch.save = half_then_die
        checkpoint.save_atomic({{"model": {{"w": torch.zeros(3)}}, "metadata": {{}}, "epoch": 2}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    leftovers = list(tmp_path.glob("*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    assert remove_stale_temporaries(tmp_path) == 1 and not list(tmp_path.glob("*.tmp"))
