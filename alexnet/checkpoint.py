"""Checkpoints: atomic save, safe load (weights_only=True, no pickle fallback), shape-checked restore, the
resume state of a training run (`TrainState`) and the one loader for inference (`load_for_inference`).

A checkpoint is a dict: model (the unwrapped, uncompiled state_dict), optimizer, scheduler, scaler,
epoch, step, best_metric, rng (one entry per rank), class_names, config (dataclasses.asdict), stats
(data statistics), version; mid-epoch checkpoints also hold `progress` (batches done in the epoch and
every rank's running sums).
"""
import math
import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from alexnet.config import Config, config_from_dict, to_dict
from alexnet.distributed import all_gather_object
from alexnet.errors import UserError
from alexnet.files import atomic_write
from alexnet.metrics import EpochTotals
from alexnet.model import build_model

VERSION = 1


def save_checkpoint(obj, path):
    """torch.save `obj` to `path` atomically (`alexnet.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def link_checkpoint(src, dst):
    """Make `dst` the same file as `src` (last.pt = best.pt of the best epoch) without writing it twice:
    a hard link under a temp name, then os.replace, so `dst` is always whole. Falls back to a copy where
    the file system has no hard links."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.link{os.getpid()}")
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict with weights_only=True; missing / empty / truncated files -> UserError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; check the path (or use --resume auto)")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); it is corrupt, use another checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or a pickle that needs unsafe loading
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or truncated and cannot be loaded ({msg[:160]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(f"checkpoint {path} is not an AlexNet checkpoint (no 'model' state dict)")
    return ckpt


def load_state_checked(model, state_dict):
    """model.load_state_dict(state_dict), but any key or shape mismatch is a one-line UserError that names
    the layer and both shapes (a checkpoint for another class count or layout)."""
    own = model.state_dict()
    for name, tensor in state_dict.items():
        if name not in own:
            raise UserError(f"checkpoint layer {name} {tuple(tensor.shape)} does not exist in the model; "
                            "the checkpoint is for another layout (model.variant / lrn / groups)")
        if own[name].shape != tensor.shape:
            raise UserError(f"layer {name}: checkpoint has shape {tuple(tensor.shape)}, model has "
                            f"{tuple(own[name].shape)}; the checkpoint is for another class count or layout")
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise UserError(f"checkpoint lacks layer {missing[0]} {tuple(own[missing[0]].shape)} "
                        f"({len(missing)} missing); the checkpoint is for another layout")
    model.load_state_dict(state_dict)
    return model


def model_from_checkpoint(ckpt, **model_overrides):
    """Build AlexNet from ckpt["config"]["model"] (with `model_overrides` replacing fields) and load its
    weights (shape-checked)."""
    return load_state_checked(build_model({**ckpt["config"]["model"], **model_overrides}), ckpt["model"])


@dataclass
class Inference:
    """What evaluation, prediction, figures, export and torch.hub need from a checkpoint."""
    model: torch.nn.Module   # in eval mode, on the requested device
    cfg: Config              # the training run's config (preprocessing: cfg.data)
    class_names: list        # output index -> class folder name
    stats: dict              # data statistics (mean image, mean / std, PCA)


def load_for_inference(path, device="cpu", **model_overrides):
    """Checkpoint file -> Inference(model in eval mode on `device`, config, class names, statistics).

    model_overrides replace fields of the checkpoint's model config (a changed layer shape is then an
    error naming the layer). Any problem with the file is a one-line UserError.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    model = model_from_checkpoint(ckpt, **model_overrides).to(device).eval()
    return Inference(model, cfg, list(ckpt["class_names"]), ckpt["stats"])


# ---------------------------------------------------------------------------------------------------
# Resuming a training run

def rng_state():
    """torch, CUDA, numpy and python RNG states as tensors / lists / numbers (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2] if py_state[2] is not None else float("nan")},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Inverse of rng_state()."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    gauss = p["gauss_next"]
    random.setstate((p["version"], tuple(p["state"]), None if gauss != gauss else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def this_rank(per_rank, rank):
    """This rank's entry of a checkpoint's per-rank list; the last entry when the run that saved it had
    fewer ranks."""
    return per_rank[min(rank, len(per_rank) - 1)]


class TrainState:
    """Everything a run needs to continue exactly where it stopped, and its checkpoint I/O.

    Holds references to the model (unwrapped), optimizer, LR schedule and GradScaler; `epoch` (epochs
    done), `batch` (batches done in the current epoch, mid-epoch only), `best` (best val top-1) and
    `totals` (this rank's running sums of the current epoch, mid-epoch only).
    """

    def __init__(self, model, optimizer, schedule, scaler, cfg, class_names, stats):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self.cfg, self.class_names, self.stats = cfg, list(class_names), stats
        self.epoch, self.batch, self.best, self.totals = 0, 0, -math.inf, None

    def restore(self, ckpt, path, rank):
        """Load checkpoint `ckpt` (read from `path`) into the run; sets this rank's RNG states."""
        if list(ckpt.get("class_names", [])) != self.class_names:
            raise UserError(f"checkpoint {path} was trained on other classes than {self.cfg.data.root}; "
                            "resume with the same dataset")
        load_state_checked(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:      # a disabled scaler (CPU, bf16) saves {}: a new fp16 run keeps its fresh scale
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best = ckpt["epoch"], ckpt["best_metric"]
        progress = ckpt.get("progress")
        if progress:
            self.batch = progress["batch"]
            self.totals = EpochTotals(**{**this_rank(progress["totals"], rank), "batches": self.batch})
        set_rng_state(this_rank(ckpt["rng"], rank))

    def take_totals(self):
        """The running totals to continue the current epoch with (then forgotten: the next epoch starts at 0)."""
        totals, self.totals, self.batch = self.totals, None, 0
        return totals or EpochTotals()

    def state_dict(self, epoch, step, running=None):
        """The checkpoint dict. Collective under torchrun (every rank calls it): RNG states and, mid-epoch
        (`running`: this rank's EpochTotals), running totals are gathered from every rank."""
        progress = None
        if running is not None:
            progress = {"batch": running.batches, "totals": all_gather_object(running.state_dict())}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "step": step, "best_metric": self.best, "rng": all_gather_object(rng_state()),
                "class_names": self.class_names, "config": to_dict(self.cfg), "stats": self.stats,
                "version": VERSION, "progress": progress}

    def save(self, path, epoch, step, running=None, is_main=True, link=None):
        """Collective: build the checkpoint on every rank, write it on the main rank to `path` (and make
        `link` the same file)."""
        state = self.state_dict(epoch, step, running)
        if not is_main:
            return
        try:
            save_checkpoint(state, path)
            if link:
                link_checkpoint(path, link)
        except OSError as e:   # e.g. ENOSPC: atomic_write left the previous file as it was
            raise UserError(f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint "
                            "is intact: free disk space, then continue with --resume auto") from None
