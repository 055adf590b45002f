"""The run directory on rank 0: one writer (RunLock), resolved config.yaml, run_info.json (git commit),
metrics.jsonl, TensorBoard.

Other ranks get a RunLog whose methods do nothing, so train.py has no `if rank == 0` around each call.
"""
import errno
import fcntl
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time

import torch

from alexnet.config import to_yaml
from alexnet.errors import UserError

LOCK_NAME = ".lock"
# Temp files of checkpoint writes (alexnet.files.atomic_write, alexnet.checkpoint.link_checkpoint). Only the
# lock holder writes them, so one found when the lock is taken was left by a writer killed during a save.
STALE_TEMP = re.compile(r"\.(last|best)\.pt\.(tmp|link)\d+")


class RunLock:
    """One writer per run directory: an exclusive flock on OUT/.lock, held until release() or process exit.

    The file names the holder (host, PID, start time) for the error a second writer gets. The kernel drops
    the flock when its process dies (even by kill -9), so a lock left by a dead process is simply taken over;
    the temp file of a checkpoint write it was killed in (up to a checkpoint's size) is removed then.
    Keep a reference: the lock is released when the object is garbage collected.
    """

    def __init__(self, out):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, LOCK_NAME)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"run directory {out} is in use by {holder}; wait for that run to end, stop it, or "
                            "train with another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"PID {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        self.file.flush()
        for name in os.listdir(out):
            if STALE_TEMP.fullmatch(name):
                os.remove(os.path.join(out, name))

    def release(self):
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def git_commit(folder):
    """(commit hash or None, dirty flag or None) of the repository holding `folder`."""
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git installed
        return None, None


def image_grid(images, nrow=8):
    """(N, C, H, W) any range -> (3 or 1, H', W') in [0, 1], each image stretched to its own min..max
    (inputs are mean-subtracted, kernels are signed)."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    return make_grid(images, nrow=nrow, normalize=True, scale_each=True, padding=1)


class RunLog:
    """Writes the run directory `out` when `enabled` (rank 0).

    start_epoch: epochs already done (resume): metrics.jsonl keeps only those lines, and TensorBoard
    events after `purge_step` are discarded, so a resumed run's logs read like an uninterrupted one.
    """

    def __init__(self, out, cfg, enabled=True, start_epoch=0, purge_step=None, world_size=1):
        self.out, self.enabled, self.writer = out, enabled, None
        if not enabled:
            return
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(to_yaml(cfg))
        commit, dirty = git_commit(os.path.dirname(os.path.abspath(__file__)))
        info = {"git_commit": commit or "unknown (not a git repository)", "git_dirty": dirty,
                "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
                "world_size": world_size, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        with open(os.path.join(out, "run_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        kept = []
        if os.path.exists(self.metrics_path):
            with open(self.metrics_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= start_epoch]
        with open(self.metrics_path, "w") as f:
            f.writelines(kept)
        from torch.utils.tensorboard import SummaryWriter  # lazy: slow import, rank 0 only

        self.writer = SummaryWriter(out, purge_step=purge_step)

    def scalars(self, values, step):
        """values: {"train/loss": 2.3, ...} at global step `step`."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def epoch(self, record, step):
        """Append one line to metrics.jsonl and the epoch scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))},
                     step)

    def images(self, inputs, conv1_weight, step):
        """The augmented inputs (first 32) and conv1 kernels (Fig. 3: 96 kernels, the two groups of 48 are
        the top and bottom halves with 16 per row)."""
        if self.writer is None:
            return
        if inputs is not None and inputs.dim() == 4:
            self.writer.add_image("inputs/augmented", image_grid(inputs[:32]), step)
        if conv1_weight is not None:
            self.writer.add_image("conv1/kernels", image_grid(conv1_weight, nrow=16), step)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
