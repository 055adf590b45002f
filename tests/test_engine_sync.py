"""train_one_epoch keeps its sums on the device and reads them back every `sync_every` steps: the totals are
bit-identical to adding on the host, on_step sees them at the read-backs only, a NaN is caught at the next
read-back (naming its batch, before on_step could save), and a stop request still acts at the next step.
(tests/test_cuda.py checks on a GPU that nothing else waits for the device.)"""
import random

import pytest
import torch

import train
from alexnet.engine import Amp, NonFiniteLoss, StopRequest, train_one_epoch
from alexnet.metrics import DeviceTotals, EpochTotals, topk_counts

CLASSES, BATCH, FEATURES = 6, 5, 8


def _batches(n, seed=0, nan_at=None):
    """n (images (B, F, 1, 1), targets (B,)) batches; batch `nan_at` (1-based) holds a NaN input."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(1, n + 1):
        x = torch.randn(BATCH, FEATURES, 1, 1, generator=g)
        if i == nan_at:
            x[0, 0] = float("nan")
        out.append((x, torch.randint(0, CLASSES, (BATCH,), generator=g)))
    return out


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(FEATURES, CLASSES))


def _run(batches, epoch=0, sync_every=1, stop=None, stop_at=None, totals=None):
    """train_one_epoch on a linear model; returns (totals, stopped, [totals.batches at each on_step])."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    seen = []

    def lr_at(_):
        if stop_at is not None and len(seen_steps) == stop_at:
            stop.signum = 15
        seen_steps.append(None)
        return 0.5

    seen_steps = []
    totals, stopped = train_one_epoch(model, batches, opt, Amp("none", "cpu"), epoch, lr_at=lr_at, totals=totals,
                                      on_step=lambda t, images: seen.append(t.batches), stop=stop,
                                      sync_every=sync_every)
    return totals, stopped, seen


def test_device_totals_are_bit_identical_to_host_totals_wherever_the_reads_fall():
    rng = random.Random(0)
    host = EpochTotals(loss_sum=1.25, correct1=3, correct5=7, n=10, batches=2)     # a resumed epoch's totals
    dev = EpochTotals(**host.state_dict()).on_device("cpu")
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        scores, target = torch.randn(7, CLASSES, generator=g), torch.randint(0, CLASSES, (7,), generator=g)
        loss = torch.nn.functional.cross_entropy(scores, target)
        host.add(loss.item() * 7, *topk_counts(scores, target).tolist(), 7)
        dev.add(loss.double() * 7, scores, target)
        if rng.random() < 0.3:
            assert dev.read().state_dict() == host.state_dict()
    assert dev.read().state_dict() == host.state_dict() and dev.first_bad_batch is None


def test_first_bad_batch_is_the_first_non_finite_one():
    dev = EpochTotals().on_device("cpu")
    scores, target = torch.zeros(2, CLASSES), torch.tensor([0, 1])
    for loss in (1.0, 2.0, float("inf"), 3.0, float("nan")):
        dev.add(torch.tensor(loss, dtype=torch.float64), scores, target)
    dev.read()
    assert dev.first_bad_batch == 3 and dev.totals.batches == 5


@pytest.mark.parametrize("epoch,expected", [(0, [3, 6, 7]), (1, [2, 5, 7])])
def test_on_step_sees_the_totals_at_multiples_of_sync_every_of_the_global_step(epoch, expected):
    batches = _batches(7)
    every, _, every_seen = _run(batches, epoch=epoch, sync_every=1)
    some, stopped, seen = _run(batches, epoch=epoch, sync_every=3)
    assert every_seen == list(range(1, 8))
    assert seen == expected and not stopped                   # epoch 1: global steps 8..14, multiples of 3: 9, 12
    assert some.state_dict() == every.state_dict() and some.batches == 7


def test_a_non_finite_loss_is_caught_at_the_next_read_back_before_on_step():
    with pytest.raises(NonFiniteLoss, match=r"at step 9 \(epoch 2, batch 2\)"):
        _run(_batches(7, nan_at=2), epoch=1, sync_every=4)      # steps 8..14: the first read-back is at step 12
    seen = []
    with pytest.raises(NonFiniteLoss, match=r"batch 5\)"):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_one_epoch(model, _batches(7, nan_at=5), opt, Amp("none", "cpu"), 0,
                        on_step=lambda t, images: seen.append(t.batches), sync_every=3)
    assert seen == [3]                                         # never called with the NaN in the totals


def test_a_stop_request_acts_at_the_next_step_without_distributed():
    stop = StopRequest()
    totals, stopped, seen = _run(_batches(7), sync_every=100, stop=stop, stop_at=2)   # set before the 3rd step
    assert stopped and totals.batches == 3 and seen == [3]
    ref, _, _ = _run(_batches(3), sync_every=1)
    assert totals.state_dict() == ref.state_dict()


def test_a_resumed_epoch_keeps_adding_to_its_totals():
    batches = _batches(7)
    whole, _, _ = _run(batches, sync_every=3)
    first, _, _ = _run(batches[:4], sync_every=1)
    # the same model state is not restored here; only the sums' arithmetic: resume from `first`'s totals
    part = EpochTotals(**first.state_dict())
    assert isinstance(part.on_device("cpu"), DeviceTotals)
    rest, _, seen = _run(batches[4:], sync_every=3, totals=part)
    assert rest.batches == 7 and rest.n == whole.n and seen == [6, 7]


class _Short:
    """A loader whose len() promises more batches than it yields."""

    def __init__(self, batches, promised):
        self.batches, self.promised = batches, promised

    def __len__(self):
        return self.promised

    def __iter__(self):
        return iter(self.batches)


def test_a_loader_shorter_than_its_len_still_reads_its_sums_back():
    batches = _batches(3)
    ref, _, _ = _run(batches, sync_every=1)
    short, stopped, seen = _run(_Short(batches, 5), sync_every=4)
    assert not stopped and seen == [] and short.state_dict() == ref.state_dict()


@pytest.mark.parametrize("log,save,expected", [(20, 0, 20), (20, 30, 10), (1000, 0, 50), (1000, 300, 50),
                                               (64, 0, 32), (97, 0, 1), (1, 500, 1)])
def test_train_reads_back_at_every_log_and_save_step_and_at_least_every_50(log, save, expected):
    every = train.read_back_every(log, save)
    assert every == expected and log % every == 0 and save % every == 0
