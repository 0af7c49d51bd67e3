"""One ``Schedule`` class for every scheduled scalar: the detection lr factor and pretraining's lr, teacher
momentum, teacher temperature and weight decay, by steps, epochs or the time budget."""
from __future__ import annotations

import math

import pytest

from dino_detector.config import PretrainConfig
from dino_detector.runtime.schedule import Clock, Schedule
from dino_detector.ssl.pretrainer import schedules


def test_pretraining_scalars_follow_their_schedules():
    cfg = PretrainConfig().update({"epochs": 10, "warmup_epochs": 2, "lr": 1e-3, "min_lr": 0.0,
                                   "weight_decay": 0.04, "weight_decay_end": 0.4, "momentum_teacher": 0.99,
                                   "teacher_temp": 0.07, "warmup_teacher_temp": 0.03,
                                   "warmup_teacher_temp_epochs": 4})
    s = schedules(cfg, total_steps=100, budget_s=0.0)
    # lr: linear warm-up over 2 of 10 epochs' share of the run, multiplied into the cosine to min_lr
    assert s["lr"](Clock(step=0)) == 0.0
    cosine = 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.1))
    assert s["lr"](Clock(step=10)) == pytest.approx(0.5 * cosine)
    assert s["lr"](Clock(step=100)) == pytest.approx(0.0)
    # teacher temperature: from 0.03 to 0.07 over 4 epochs, then constant
    assert [s["teacher_temp"](Clock(epoch=e)) for e in (0, 2, 4, 9)] == pytest.approx([0.03, 0.05, 0.07, 0.07])
    # momentum: cosine from 0.99 to 1; weight decay: cosine from 0.04 to 0.4
    assert s["momentum"](Clock(step=50)) == pytest.approx(0.995)
    assert s["weight_decay"](Clock(step=0)) == pytest.approx(0.04)
    assert s["weight_decay"](Clock(step=100)) == pytest.approx(0.4)
    constant = schedules(PretrainConfig(), total_steps=100, budget_s=0.0)["weight_decay"]
    assert {constant(Clock(step=k)) for k in (0, 50, 100)} == {0.04}  # no weight_decay_end: constant


def test_a_time_budget_ends_the_schedule_when_it_is_spent():
    s = Schedule(base=1.0, kind="cosine", final=0.0, total_steps=1000, budget_s=60.0)
    assert s.progress(Clock(step=10, elapsed_s=30.0)) == 0.5  # time is further along than steps
    assert s(Clock(step=10, elapsed_s=60.0)) == pytest.approx(0.0)
    step = Schedule(base=1.0, kind="step", drop_epoch=8, budget_s=100.0, drop_budget_fraction=0.5, drop_factor=0.1)
    assert [step(Clock(epoch=1, elapsed_s=t)) for t in (49.0, 50.0)] == [1.0, 0.1]
    assert step(Clock(epoch=8, elapsed_s=0.0)) == 0.1
    with pytest.raises(ValueError, match="schedule kind"):
        Schedule(base=1.0, kind="linear")
