"""Faults during a run: a non-finite loss or gradient is skipped and counted (and too many in a row stop the
run with its last checkpoint intact); SIGTERM finishes the step, saves and exits, and resuming ends bit for
bit like a run never interrupted; a failed checkpoint write (disk full) leaves the previous file loadable and
no temporary file. The same for pretraining.

The faults are real where it is cheap (the process sends itself the signal; a write fails with ENOSPC) and
injected at a chosen step where it cannot be (a NaN in one loss term, a NaN gradient)."""
from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from dino_detector.data.synthetic import generate_shapes
from dino_detector.losses.criterion import SetCriterion
from dino_detector.pretrain import main as pretrain_main
from dino_detector.runtime import checkpoint as checkpoint_module
from dino_detector.runtime.checkpoint import load_checkpoint
from dino_detector.ssl.dino_loss import DINOLoss
from dino_detector.train import main as train_main

RUN = ["--dino_model", "tiny", "--no_pretrained", "--image_size", "64", "--num_queries", "8", "--decoder_layers",
       "1", "--hidden_dim", "32", "--dim_feedforward", "64", "--num_heads", "2", "--batch_size", "4", "--device",
       "cpu", "--num_workers", "0", "--eval_every", "0", "--checkpoint_every", "0", "--val_fraction", "0"]
STEPS_PER_EPOCH = 4  # 16 images, batch 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_shapes")
    images, ann = generate_shapes(root, "train", 16, seed=0, size_range=(64, 80))
    return ["--train_images", str(images), "--train_annotations", str(ann)]


class NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward: a finite loss whose step must still be skipped."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def message(stderr: str) -> str:
    """The command's message: its last line on stderr (the progress bars write there too), one line."""
    last = stderr.strip().splitlines()[-1].split("\r")[-1]
    assert "Traceback" not in stderr and last.strip()
    return last


def inject(monkeypatch, cls, at: dict, term: str):
    """``cls.forward`` returns its usual losses except at the calls in ``at`` (0-based call number ->
    "nan" | "nan_grad" | "sigterm"): ``term`` becomes NaN, gets a NaN gradient, or the process sends itself
    SIGTERM (the step still completes)."""
    original, calls = cls.forward, []

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        kind = at.get(len(calls))
        calls.append(kind)
        if kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif isinstance(out, dict) and kind == "nan":
            out = {**out, term: out[term] * float("nan")}
        elif isinstance(out, dict) and kind == "nan_grad":
            out = {**out, term: NanGradient.apply(out[term])}
        elif kind == "nan":
            out = out * float("nan")
        return out
    monkeypatch.setattr(cls, forward.__name__, forward)
    return calls


def test_a_nan_loss_and_a_nan_gradient_are_skipped_counted_and_named(shapes, tmp_path, monkeypatch, caplog):
    # criterion calls during training: one per step (the evaluation after the last epoch comes later)
    inject(monkeypatch, SetCriterion, {1: "nan", 5: "nan_grad"}, "loss_bbox")
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert train_main([*RUN, *shapes, "--epochs", "2", "--output_dir", str(out)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("step 1 (epoch 1) skipped: loss terms not finite: loss=nan, loss_bbox=nan")
    assert warnings[1].startswith("step 5 (epoch 2) skipped: gradient norm is nan")
    final = load_checkpoint(out / "dino_detector_final.pth")
    assert final["bad_steps"] == {"total": 2, "in_a_row": 0} and final["step"] == 2 * STEPS_PER_EPOCH
    assert [h.get("skipped_steps") for h in final["history"]] == [1, 1]
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in final["history"])  # means of the good steps


def test_max_bad_steps_in_a_row_stop_the_run_with_the_last_checkpoint_intact(shapes, tmp_path, monkeypatch,
                                                                             capsys):
    inject(monkeypatch, SetCriterion, {i: "nan" for i in range(STEPS_PER_EPOCH, 99)}, "loss_ce")
    out = tmp_path / "run"
    assert train_main([*RUN, *shapes, "--epochs", "3", "--max_bad_steps", "3", "--output_dir", str(out)]) == 1
    err = message(capsys.readouterr().err)
    assert err.startswith("error: 3 steps in a row with a non-finite loss or gradient (--max_bad_steps 3), the "
                          "last at epoch 2, step 6: loss terms not finite: loss=nan, loss_ce=nan")
    assert f"its last checkpoint, {out / 'dino_detector_last.pth'}, is intact" in err
    last = load_checkpoint(out / "dino_detector_last.pth")
    assert last["epoch"] == 0 and last["step"] == STEPS_PER_EPOCH and last["progress"] is None
    assert not (out / "dino_detector_final.pth").exists()


def test_sigterm_mid_epoch_saves_and_the_resumed_run_ends_bit_identical(shapes, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    args = [*RUN, *shapes, "--epochs", "3", "--color_jitter", "0.3"]  # random augmentation: RNG state matters
    assert train_main([*args, "--output_dir", str(straight)]) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        inject(patch, SetCriterion, {STEPS_PER_EPOCH + 1: "sigterm"}, "loss_ce")  # epoch 2, its second step
        assert train_main([*args, "--output_dir", str(out)]) == 128 + signal.SIGTERM
    err = message(capsys.readouterr().err)
    last = out / "dino_detector_last.pth"
    assert err == (f"stopped by SIGTERM after finishing the current step; the run is saved in {last}: resume "
                   f"with --checkpoint {last}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed with the run
    saved = load_checkpoint(last)
    assert saved["epoch"] == 0 and saved["step"] == STEPS_PER_EPOCH + 2
    assert saved["progress"]["epoch"] == 1 and saved["progress"]["windows"] == 2
    assert train_main([*args, "--output_dir", str(out), "--checkpoint", str(last)]) == 0
    a, b = load_checkpoint(straight / "dino_detector_final.pth"), load_checkpoint(out / "dino_detector_final.pth")
    assert a["step"] == b["step"] == 3 * STEPS_PER_EPOCH
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"]  # the interrupted epoch's mean loss too
    metrics = [json.loads((d / "val_metrics_final.json").read_text()) if (d / "val_metrics_final.json").exists()
               else None for d in (straight, out)]
    assert metrics[0] == metrics[1]


def failing_save(fail_at: int, calls: list):
    """torch.save that writes part of the file and then fails as a full disk does, at call ``fail_at``."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            f.write(b"PK\x03\x04" + b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)
    return save


def test_a_full_disk_while_checkpointing_keeps_the_previous_file_and_no_temporary(shapes, tmp_path, monkeypatch,
                                                                                  capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save(2, []))  # epoch 2's dino_detector_last.pth
    assert train_main([*RUN, *shapes, "--epochs", "3", "--output_dir", str(out)]) == 1
    err = message(capsys.readouterr().err)
    last = out / "dino_detector_last.pth"
    assert err.startswith(f"error: could not write {last}: No space left on device (")
    assert f"GiB free in {out}); the previous dino_detector_last.pth is untouched" in err
    monkeypatch.undo()
    assert load_checkpoint(last)["epoch"] == 0  # epoch 1's, complete
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tmp" or ".tmp" in p.name) == []


# ---------------------------------------------------------------------------------------------- pretraining
def pretrain_args(images, out, *extra) -> list[str]:
    return ["--images", str(images), "--arch", "flexible-tiny", "--global_size", "32", "--local_size", "16",
            "--n_local", "2", "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
            "--batch_size", "4", "--epochs", "2", "--device", "cpu", "--num_workers", "0", "--output_dir", str(out),
            "--checkpoint_every", "1", *extra]


@pytest.fixture(scope="module")
def pretrain_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_ssl")
    return generate_shapes(root, "train", 12, seed=1, size_range=(48, 64))[0]  # 3 steps per epoch


def test_pretraining_skips_a_nan_step_and_stops_after_max_bad_steps(pretrain_images, tmp_path, monkeypatch,
                                                                    caplog, capsys):
    with monkeypatch.context() as patch:
        inject(patch, DINOLoss, {1: "nan"}, "")
        with caplog.at_level("WARNING"):
            assert pretrain_main(pretrain_args(pretrain_images, tmp_path / "one")) == 0
    assert any(r.getMessage().startswith("step 1 (epoch 1) skipped: loss terms not finite: dino=nan, loss=nan")
               for r in caplog.records)
    assert load_checkpoint(tmp_path / "one" / "pretrain_last.pth")["bad_steps"] == {"total": 1, "in_a_row": 0}
    capsys.readouterr()
    with monkeypatch.context() as patch:
        inject(patch, DINOLoss, {i: "nan" for i in range(3, 99)}, "")
        assert pretrain_main(pretrain_args(pretrain_images, tmp_path / "many", "--max_bad_steps", "2")) == 1
    err = message(capsys.readouterr().err)
    assert err.startswith("error: 2 steps in a row with a non-finite loss or gradient (--max_bad_steps 2)")
    assert load_checkpoint(tmp_path / "many" / "pretrain_last.pth")["epoch"] == 1  # the first epoch's, intact


def test_pretraining_sigterm_saves_and_resumes_and_a_failed_write_is_one_line(pretrain_images, tmp_path,
                                                                              monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert pretrain_main(pretrain_args(pretrain_images, straight)) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        inject(patch, DINOLoss, {4: "sigterm"}, "")  # epoch 2, its second step
        assert pretrain_main(pretrain_args(pretrain_images, out)) == 128 + signal.SIGTERM
    last = out / "pretrain_last.pth"
    assert message(capsys.readouterr().err).endswith(f"resume with --resume {last}")
    assert load_checkpoint(last)["progress"]["batches"] == 2
    assert pretrain_main(pretrain_args(pretrain_images, out, "--resume", str(last))) == 0
    a, b = load_checkpoint(straight / "pretrain_last.pth"), load_checkpoint(out / "pretrain_last.pth")
    assert a["step"] == b["step"] == 6
    for k in a["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save(1, []))
    full = tmp_path / "full"
    assert pretrain_main(pretrain_args(pretrain_images, full)) == 1
    err = message(capsys.readouterr().err)
    assert err.startswith(f"error: could not write {full / 'pretrain_last.pth'}: No space left on device")
    assert "no earlier pretrain_last.pth" in err and not list(full.glob("*.tmp"))
