"""train.py end to end on the tiny demo set: run directory, exact resume (epoch boundary and mid-epoch, with
0 and 1 workers), SIGTERM / SIGINT, NaN loss, bad --resume files. 120 training images of 40 px, batch 40:
3 steps per epoch."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import train
from alexnet.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(data, out, *extra, epochs=2, workers=0):
    return ["--data", data, "--out", str(out), "--epochs", str(epochs), "--batch-size", "40", "--num_classes",
            "10", "--device", "cpu", "model.overlap_pool=false", "model.init=kaiming", "data.resize=48",
            "data.crop=40", f"data.workers={workers}", "train.log_every_steps=1", *extra]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def written(out):
    """The files a run wrote to `out`, without the run directory's writer lock (OUT/.lock, alexnet.tracking)."""
    return sorted(n for n in os.listdir(out) if n != ".lock")


def stop_at(monkeypatch, epoch, batch, copy_to=None, signum=signal.SIGTERM):
    """Wrap train_one_epoch so that after (epoch, batch) the process signals itself (or copies last.pt)."""
    original = train.train_one_epoch

    def wrapped(model, loader, optimizer, amp, ep, *, on_step, **kw):
        def hook(totals, images):
            on_step(totals, images)
            if ep == epoch and totals.batches == batch:      # totals.batches: batches done in the epoch
                if copy_to:
                    shutil.copy(os.path.join(os.path.dirname(copy_to), "last.pt"), copy_to)
                else:
                    os.kill(os.getpid(), signum)
        return original(model, loader, optimizer, amp, ep, on_step=hook, **kw)

    monkeypatch.setattr(train, "train_one_epoch", wrapped)


@pytest.fixture(scope="module")
def straight(demo_root, tmp_path_factory):
    """2 epochs without interruption, 1 worker, saving last.pt every 4 steps; keeps the step-4 copy."""
    out = tmp_path_factory.mktemp("straight")
    mp = pytest.MonkeyPatch()
    stop_at(mp, epoch=1, batch=1, copy_to=str(out / "mid.pt"))       # step 4 = epoch 2, batch 1
    try:
        assert train.main(tiny_args(demo_root, out, "train.save_every_steps=4", workers=1)) == 0
    finally:
        mp.undo()
    return out


def test_run_directory(straight):
    names = set(os.listdir(straight))
    assert {"config.yaml", "run_info.json", "metrics.jsonl", "last.pt", "best.pt", "mid.pt"} <= names
    assert sum(n.startswith("events.out.tfevents") for n in names) == 1
    lines = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "epoch_time",
                "images_per_s"} <= set(r)
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100
    ckpt = torch.load(straight / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["class_names"])) == (2, 6, 10)
    assert ckpt["config"]["data"]["crop"] == 40 and ckpt["stats"]["mean_image"].shape == (3, 48, 48)
    assert ckpt["best_metric"] == max(r["val_top1"] for r in lines)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    mid = torch.load(straight / "mid.pt", weights_only=True)
    assert (mid["epoch"], mid["step"], mid["progress"]["batch"]) == (1, 4, 1)
    info = json.load(open(straight / "run_info.json"))
    assert info["git_commit"] and info["world_size"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(straight), size_guidance={"images": 0}).Reload()
    assert len(ev.Scalars("train/loss")) == 6 and len(ev.Scalars("epoch/val_top1")) == 2
    assert {"inputs/augmented", "conv1/kernels"} <= set(ev.Tags()["images"])


def test_resume_at_epoch_boundary_is_exact(straight, demo_root, tmp_path):
    assert train.main(tiny_args(demo_root, tmp_path, "--resume", "auto", epochs=1)) == 0   # no last.pt: fresh
    assert train.main(tiny_args(demo_root, tmp_path, "--resume", "auto", epochs=2)) == 0
    assert_same_weights(straight / "last.pt", tmp_path / "last.pt")
    a, b = (torch.load(p / "best.pt", weights_only=True) for p in (straight, tmp_path))
    assert a["best_metric"] == b["best_metric"] and a["epoch"] == b["epoch"]
    assert [json.loads(x)["val_loss"] for x in open(tmp_path / "metrics.jsonl")] == \
           [json.loads(x)["val_loss"] for x in open(straight / "metrics.jsonl")]


def test_resume_mid_epoch_from_periodic_save_is_exact(straight, demo_root, tmp_path):
    args = tiny_args(demo_root, tmp_path, "--resume", str(straight / "mid.pt"))
    assert train.main(args) == 0
    assert_same_weights(straight / "last.pt", tmp_path / "last.pt")
    # the interrupted epoch's logged train metrics include the batch done before the save (running totals)
    resumed = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    full = [json.loads(x) for x in open(straight / "metrics.jsonl")]
    assert [r["epoch"] for r in resumed] == [2]
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
        assert resumed[0][key] == full[1][key], key


def test_sigterm_saves_and_resume_is_exact(straight, demo_root, tmp_path, monkeypatch, capsys):
    stop_at(monkeypatch, epoch=0, batch=1)               # the signal arrives during step 1: stop after step 2
    assert train.main(tiny_args(demo_root, tmp_path)) == 143
    assert "SIGTERM: stopped at step 2" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["progress"]["batch"]) == (0, 2, 2)
    assert [t["n"] for t in ckpt["progress"]["totals"]] == [80]   # one rank's running totals: 2 steps x 40
    monkeypatch.undo()
    assert train.main(tiny_args(demo_root, tmp_path, "--resume", "auto")) == 0
    assert_same_weights(straight / "last.pt", tmp_path / "last.pt")


def test_sigterm_during_validation_stops_after_the_epoch(straight, demo_root, tmp_path, monkeypatch, capsys):
    original = train.evaluate

    def evaluate_then_signal(*args, **kw):
        result = original(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)               # arrives after the last step of epoch 1
        return result

    monkeypatch.setattr(train, "evaluate", evaluate_then_signal)
    assert train.main(tiny_args(demo_root, tmp_path)) == 143
    assert "SIGTERM: stopped after epoch 1" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["progress"]) == (1, 3, None)   # the whole epoch, saved
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    assert train.main(tiny_args(demo_root, tmp_path, "--resume", "auto")) == 0
    assert_same_weights(straight / "last.pt", tmp_path / "last.pt")


def test_nan_loss_stops_with_step_and_never_best(demo_root, tmp_path):
    with pytest.raises(UserError, match=r"loss is not finite \(nan or inf\) at step \d+ \(epoch 1, batch \d+\)") as e:
        train.main(tiny_args(demo_root, tmp_path, "--lr", "1e8", "model.init=paper"))
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "best.pt") and not os.path.exists(tmp_path / "last.pt")


def test_bad_resume_is_one_line_error_and_overwrites_nothing(straight, demo_root, tmp_path):
    for content in (b"", (straight / "last.pt").read_bytes()[:5000]):
        (tmp_path / "last.pt").write_bytes(content)
        with pytest.raises(UserError, match="empty|truncated"):
            train.main(tiny_args(demo_root, tmp_path, "--resume", "auto"))
        assert (tmp_path / "last.pt").read_bytes() == content and written(tmp_path) == ["last.pt"]
    with pytest.raises(UserError, match="does not exist"):
        train.main(tiny_args(demo_root, tmp_path, "--resume", str(tmp_path / "nope.pt")))
    other = tmp_path / "other"                                   # another layout: names the layer and shapes
    with pytest.raises(UserError, match=r"features.conv1.weight: checkpoint has shape \(96, 3, 11, 11\), "
                                        r"model has \(64, 3, 11, 11\)"):
        train.main(tiny_args(demo_root, other, "--resume", str(straight / "last.pt"), "model.variant=owt"))
    assert not os.path.exists(other) or written(other) == []


def test_sigint_subprocess_exits_130_with_resume_hint(demo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "train.py", *tiny_args(demo_root, tmp_path, epochs=50)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line.startswith("starting"), line + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT: stopped at step" in err and "--resume auto" in err and "Traceback" not in err
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] >= 1 and ckpt["epoch"] < 50
