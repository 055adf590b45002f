"""The learning rate of EVERY training step of train.main (Sec. 5): warm-up and a step drop across a
mid-epoch resume, and a plateau drop whose state (reductions, best error, bad epochs) survives resumes.
Expected rates are computed by hand here, not with alexnet.schedule. Tiny demo set of 120 training images."""
import json
import os
import signal

import pytest
import torch

import train
from alexnet import engine
from alexnet.config import ScheduleConfig
from alexnet.schedule import LRSchedule

BASE_LR = 0.01


def tiny_args(data, out, *extra, epochs, batch=40):
    return ["--data", data, "--out", str(out), "--epochs", str(epochs), "--batch-size", str(batch), "--num_classes",
            "10", "--device", "cpu", "--lr", str(BASE_LR), "model.overlap_pool=false", "model.init=kaiming",
            "data.resize=48", "data.crop=40", "data.workers=0", "train.log_images=false",
            "train.log_every_steps=1", *extra]    # on_step (record_lrs' hook) after every step


def record_lrs(monkeypatch, lrs, sigterm_at=None):
    """Wrap train.train_one_epoch: append (epoch, batch, lr used by that step) for every step (both 0-based);
    with sigterm_at=(epoch, batch) the process sends itself SIGTERM after that step."""
    original = engine.train_one_epoch                  # not an earlier wrapper

    def wrapped(model, loader, optimizer, amp, epoch, *, on_step, **kw):
        def hook(totals, images):
            lrs.append((epoch, totals.batches - 1, optimizer.param_groups[0]["lr"]))
            on_step(totals, images)
            if sigterm_at == (epoch, totals.batches - 1):
                os.kill(os.getpid(), signal.SIGTERM)
        return original(model, loader, optimizer, amp, epoch, on_step=hook, **kw)

    monkeypatch.setattr(train, "train_one_epoch", wrapped)


def scripted_val_top1(monkeypatch, top1s):
    """Validation top-1 of the coming epochs replaced by `top1s` (the real evaluation still runs), so the
    plateau rule's decisions are known in advance."""
    original, script = engine.evaluate, iter(top1s)

    def evaluate(*args, **kw):
        return {**original(*args, **kw), "top1": next(script)}

    monkeypatch.setattr(train, "evaluate", evaluate)


def checkpoint(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=True)


def test_every_step_lr_with_warmup_and_step_drop_across_a_mid_epoch_resume(demo_root, tmp_path, monkeypatch):
    extra = ("schedule.name=step", "schedule.step_size=1", "schedule.warmup_epochs=1.5")
    steps, lrs = 3, []                                         # batch 40
    record_lrs(monkeypatch, lrs, sigterm_at=(1, 0))          # stops after epoch 2, batch 2 (0-based 1, 1)
    assert train.main(tiny_args(demo_root, tmp_path, *extra, epochs=2)) == 143
    assert checkpoint(tmp_path)["progress"]["batch"] == 2
    record_lrs(monkeypatch, lrs)
    assert train.main(tiny_args(demo_root, tmp_path, *extra, "--resume", "auto", epochs=2)) == 0
    assert [(e, b) for e, b, _ in lrs] == [(e, b) for e in range(2) for b in range(steps)]
    schedule = LRSchedule(ScheduleConfig(name="step", step_size=1, warmup_epochs=1.5), BASE_LR)
    for e, b, lr in lrs:
        t = e + b / steps                                     # fractional epoch at the start of the step
        by_hand = BASE_LR * min(1.0, t / 1.5) * 0.1 ** int(t)  # linear warm-up over 1.5 epochs, / 10 per epoch
        assert lr == pytest.approx(by_hand, rel=1e-9, abs=1e-12), (e, b)
        assert lr == schedule.lr_at(t), (e, b)
    assert lrs[3][2] == pytest.approx(BASE_LR * 0.1 / 1.5)     # warm-up and the drop both act in epoch 2


def test_plateau_drop_and_its_state_survive_resumes(demo_root, tmp_path, monkeypatch):
    """Plateau rule, patience 1: val top-1 50, 40, 40, 30 -> error 50 (best), 60 (1 bad epoch), 60 (2 bad:
    lr / 10, counter reset), 70 (1 bad). Three resumes at epoch ends: epoch 3's decision needs best_error
    and bad_epochs from the checkpoint, epoch 4's rate needs reductions."""
    extra = ("schedule.name=plateau", "schedule.patience=1", "schedule.warmup_epochs=0.5")
    steps, lrs, states = 2, [], []                             # batch 60
    for epochs, top1s in ((2, [50.0, 40.0]), (3, [40.0]), (4, [30.0])):
        record_lrs(monkeypatch, lrs)
        scripted_val_top1(monkeypatch, top1s)
        assert train.main(tiny_args(demo_root, tmp_path, *extra, "--resume", "auto", epochs=epochs, batch=60)) == 0
        ckpt = checkpoint(tmp_path)
        assert ckpt["epoch"] == epochs
        states.append(ckpt["scheduler"])
    assert states == [{"reductions": 0, "best_error": 50.0, "bad_epochs": 1},
                      {"reductions": 1, "best_error": 50.0, "bad_epochs": 0},
                      {"reductions": 1, "best_error": 50.0, "bad_epochs": 1}]
    assert [(e, b) for e, b, _ in lrs] == [(e, b) for e in range(4) for b in range(steps)]
    for e, b, lr in lrs:
        t = e + b / steps
        by_hand = BASE_LR * min(1.0, t / 0.5) * (0.1 if e == 3 else 1.0)
        assert lr == pytest.approx(by_hand, rel=1e-9, abs=1e-12), (e, b)
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4]
    assert [r["lr"] for r in logged] == pytest.approx([BASE_LR, BASE_LR, BASE_LR, BASE_LR * 0.1])
