import math

import pytest

from scalescope.config import TrainConfig
from scalescope.schedule import eval_steps, lr_at


def test_pythia_eval_schedule():
    assert eval_steps(every=10, total_steps=35) == [0, 1, 2, 4, 8, 10, 20, 30, 35]
    assert eval_steps(every=100, total_steps=3) == [0, 1, 2, 3]


@pytest.mark.parametrize("schedule", ["cosine", "constant", "wsd"])
def test_warmup_is_linear_to_peak(schedule):
    cfg = TrainConfig(lr=1.0, warmup=10, schedule=schedule, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1)
    assert lr_at(9, cfg, 100) == pytest.approx(1.0)


def test_cosine_ends_at_floor_and_is_half_way_at_mid():
    cfg = TrainConfig(lr=1.0, warmup=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(99, cfg, 100) == pytest.approx(0.1)
    mid = lr_at(int(99 / 2), cfg, 100)
    assert mid == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 49 / 99)))


def test_wsd_is_flat_then_decays_linearly():
    cfg = TrainConfig(lr=2.0, warmup=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(79, cfg, 100) == 2.0
    assert lr_at(99, cfg, 100) == pytest.approx(0.0)
    assert lr_at(89, cfg, 100) == pytest.approx(1.0)


def test_warmup_fraction():
    cfg = TrainConfig(lr=1.0, warmup=0.1, schedule="constant")
    assert lr_at(4, cfg, 100) == pytest.approx(0.5)
