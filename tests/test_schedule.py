"""Learning-rate schedules: the paper's plateau rule (at most three /10), step, warm-up, exact state restore."""
import pytest

from alexnet.config import ScheduleConfig
from alexnet.schedule import LRSchedule


def test_plateau_divides_by_ten_at_most_three_times():
    s = LRSchedule(ScheduleConfig(name="plateau", patience=1, max_reductions=3), base_lr=0.01)
    lrs = []
    for err in [50, 40, 40, 40, 30, 30, 30, 30, 30, 30, 30, 30, 30]:
        s.epoch_end(err)
        lrs.append(s.lr_at(0))
    # improvements at 50, 40, 30; a reduction after 2 epochs without one; never more than 3
    assert lrs[:4] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    assert s.reductions == 3 and lrs[-1] == pytest.approx(1e-5)
    s.epoch_end(float("nan"))                                  # a NaN error changes nothing
    assert s.reductions == 3


def test_step_and_warmup():
    s = LRSchedule(ScheduleConfig(name="step", step_size=30, warmup_epochs=2), base_lr=0.01)
    assert s.lr_at(0.5) == pytest.approx(0.0025) and s.lr_at(1.0) == pytest.approx(0.005)
    assert s.lr_at(29.9) == pytest.approx(0.01) and s.lr_at(30) == pytest.approx(0.001)
    assert s.lr_at(60.5) == pytest.approx(1e-4)
    assert LRSchedule(ScheduleConfig(name="constant"), 0.1).lr_at(100) == 0.1


def test_state_restores_exactly():
    cfg = ScheduleConfig(name="plateau", patience=0)
    a = LRSchedule(cfg, 0.01)
    for err in [10, 12, 9, 9]:
        a.epoch_end(err)
    b = LRSchedule(cfg, 0.01)
    b.load_state_dict(a.state_dict())
    for err in [8, 8, 8]:
        assert a.epoch_end(err) == b.epoch_end(err)
        assert a.lr_at(5) == b.lr_at(5)
    assert a.state_dict() == b.state_dict()
