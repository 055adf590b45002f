"""Faults around the run directory: kill -9 at any moment (during a step, during a checkpoint write) leaves a
last.pt that loads and a run that `--resume auto` finishes with one metrics row per epoch; one writer per
run directory (RunLock); a full disk during a save keeps the previous last.pt. Tiny demo set: 3 steps per
epoch; each checkpoint of the 57M-parameter model is about 450 MB, so a save takes a noticeable time."""
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train
from alexnet.errors import UserError, run_main
from alexnet.tracking import RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def tiny_args(data, out, *extra, epochs, batch=40):
    return ["--data", data, "--out", str(out), "--epochs", str(epochs), "--batch-size", str(batch), "--num_classes",
            "10", "--device", "cpu", "model.overlap_pool=false", "model.init=kaiming", "data.resize=48",
            "data.crop=40", "data.workers=0", "train.log_images=false", *extra]


def start(args):
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, condition, timeout=120):
    """Poll `condition()` every millisecond while `proc` runs; True once it holds, False if proc ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("timed out waiting")


def kill9(proc):
    proc.kill()                                   # SIGKILL
    proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode


def temp_checkpoint(out):
    """A checkpoint being written: atomic_write's temp file (.last.pt.tmp<pid>, .best.pt.tmp<pid>) or a link."""
    return any(re.match(r"\.(last|best)\.pt\.(tmp|link)\d+$", n) for n in os.listdir(out))


def metrics_epochs(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f if line.strip()]


def assert_loads(out):
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert "model" in ckpt and "optimizer" in ckpt
    return ckpt


def test_kill_9_during_saves_and_steps_then_resume_auto(demo_root, tmp_path):
    """SIGKILL during a checkpoint write, during a step, and at a random moment; after each kill last.pt
    loads (weights_only) and the dead run's .lock and temp files are taken over; the last resume ends the
    run with exactly one metrics row per epoch."""
    epochs, rng = 2, random.Random(0)
    args = tiny_args(demo_root, tmp_path, "train.save_every_steps=1", "--resume", "auto", epochs=epochs, batch=60)
    last = tmp_path / "last.pt"
    # 1. during a save: wait for a first last.pt, then for the temp file of a later save to appear
    proc = start(args)
    assert wait_for(proc, last.exists), proc.communicate()[1][-2000:]
    assert wait_for(proc, lambda: temp_checkpoint(tmp_path)), proc.communicate()[1][-2000:]
    kill9(proc)
    assert temp_checkpoint(tmp_path)                                   # the kill did hit a save
    assert_loads(tmp_path)
    assert f"PID {proc.pid} on" in (tmp_path / ".lock").read_text()    # the dead run's lock file is left
    # 2. during a step: as soon as a resumed run has replaced last.pt, the next step starts
    inode = os.stat(last).st_ino
    proc = start(args)
    assert wait_for(proc, lambda: os.stat(last).st_ino != inode and not temp_checkpoint(tmp_path)), \
        proc.communicate()[1][-2000:]
    kill9(proc)
    assert_loads(tmp_path)
    # 3. at a random moment of a resumed run (a step, a save, validation, start-up)
    proc = start(args)
    line = proc.stdout.readline()
    assert line.startswith(("resuming from", f"{last} has finished all")), line + proc.communicate()[1][-2000:]
    time.sleep(rng.uniform(0.2, 1.5))
    kill9(proc)
    assert_loads(tmp_path)
    # 4. to the end
    proc = start(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert metrics_epochs(tmp_path) == list(range(1, epochs + 1))
    ckpt = assert_loads(tmp_path)
    assert (ckpt["epoch"], ckpt["progress"]) == (epochs, None)
    assert not temp_checkpoint(tmp_path)               # the killed saves' temp files were removed on takeover


def test_second_writer_stops_with_one_line_naming_the_holder(demo_root, tmp_path):
    """A second train.py with the same --out while the first runs: exit 2, one line naming the first's PID
    and host, and the first run's files untouched."""
    first = start(tiny_args(demo_root, tmp_path, epochs=50, batch=60))
    try:
        assert wait_for(first, lambda: (tmp_path / "last.pt").exists() and metrics_epochs(tmp_path)), \
            first.communicate()[1][-2000:]
        first.send_signal(signal.SIGSTOP)                       # hold still while the second one tries
        names = sorted(os.listdir(tmp_path))
        st = os.stat(tmp_path / "last.pt")
        metrics = (tmp_path / "metrics.jsonl").read_bytes()
        second = subprocess.run([sys.executable, "train.py", *tiny_args(demo_root, tmp_path, "--resume", "auto",
                                                                        epochs=50)],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert lines[0].startswith(f"error: run directory {tmp_path} is in use by PID {first.pid} on "
                                   f"{socket.gethostname()} (since "), lines[0]
        assert sorted(os.listdir(tmp_path)) == names
        after = os.stat(tmp_path / "last.pt")
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
        assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    finally:
        first.kill()
        first.communicate(timeout=60)


def test_lock_of_a_dead_process_is_taken_over(demo_root, tmp_path):
    """A lock held by a live process: RunLock and train.main refuse, naming its PID and host, and write
    nothing. Once it is SIGKILLed its .lock file is taken over, and its unfinished checkpoint writes removed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom alexnet.tracking import RunLock\n"
                               "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(300)", str(tmp_path)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = f"run directory {tmp_path} is in use by PID {holder.pid} on {socket.gethostname()}"
        with pytest.raises(UserError, match=re.escape(busy)):
            RunLock(str(tmp_path))
        with pytest.raises(UserError, match=re.escape(busy)):        # train.main takes it before anything else
            train.main(tiny_args(demo_root, tmp_path, epochs=1))
        assert os.listdir(tmp_path) == [".lock"]
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert f"PID {holder.pid} on" in (tmp_path / ".lock").read_text()   # left behind by the dead process
    stale = [".last.pt.tmp123", ".best.pt.tmp7", ".last.pt.link99"]     # a dead writer's unfinished saves
    for name in stale + ["notes.tmp1", ".x.pt.tmp2"]:
        (tmp_path / name).write_bytes(b"x")
    lock = RunLock(str(tmp_path))                                       # ... and taken over
    try:
        assert (tmp_path / ".lock").read_text().startswith(f"PID {os.getpid()} on {socket.gethostname()}")
        assert sorted(os.listdir(tmp_path)) == [".lock", ".x.pt.tmp2", "notes.tmp1"]   # only those removed
    finally:
        lock.release()


def test_full_disk_during_a_save_keeps_the_previous_last_pt(demo_root, tmp_path, monkeypatch, capsys):
    """OSError(ENOSPC) from the write of the 2nd checkpoint (step 2): the run stops with one line (exit code 2
    through the command line's run_main); last.pt is still the step-1 file, loadable, and no temp file is left."""
    real_save, seen = torch.save, {}

    def save(obj, f, *args, **kw):
        if not (isinstance(obj, dict) and "optimizer" in obj):            # not a checkpoint (e.g. the stats cache)
            return real_save(obj, f, *args, **kw)
        seen["n"] = seen.get("n", 0) + 1
        if seen["n"] < 2:
            seen["conv1"] = obj["model"]["features.conv1.weight"].clone()
            return real_save(obj, f, *args, **kw)
        seen["stat"] = os.stat(tmp_path / "last.pt")
        f.write(b"\0" * 4096)                                             # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as e:
        run_main(train.main, tiny_args(demo_root, tmp_path, "train.save_every_steps=1", epochs=1))
    assert e.value.code == 2 and seen["n"] == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: could not write checkpoint {tmp_path / 'last.pt'} (No space left on device); "
                          "the previous checkpoint is intact"), err
    monkeypatch.undo()
    after = os.stat(tmp_path / "last.pt")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
           (seen["stat"].st_ino, seen["stat"].st_size, seen["stat"].st_mtime_ns)
    ckpt = assert_loads(tmp_path)
    assert (ckpt["epoch"], ckpt["step"], ckpt["progress"]["batch"]) == (0, 1, 1)
    assert torch.equal(ckpt["model"]["features.conv1.weight"], seen["conv1"])
    assert not temp_checkpoint(tmp_path)
