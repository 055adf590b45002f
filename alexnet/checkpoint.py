"""Checkpoints: atomic save, safe load (weights_only=True, no pickle fallback), shape-checked restore,
and RNG states stored as tensors / lists so a resumed run draws the same random numbers.

A checkpoint is a dict: model (the unwrapped, uncompiled state_dict), optimizer, scheduler, scaler,
epoch, step, best_metric, rng, class_names, config (dataclasses.asdict), stats (data statistics),
version; mid-epoch checkpoints also hold `progress` (batches done in the epoch and their running sums).
"""
import os
import random

import numpy as np
import torch

from alexnet.errors import UserError

VERSION = 1


def save_checkpoint(obj, path):
    """Write `obj` to `path` atomically: temp file in the same folder, fsync, os.replace.

    A kill -9 at any moment leaves either the old file or the new one, never half of one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def link_checkpoint(src, dst):
    """Make `dst` the same file as `src` (best.pt = last.pt of the best epoch) without writing it twice:
    a hard link under a temp name, then os.replace, so `dst` is always whole. Falls back to a copy where
    the file system has no hard links."""
    import shutil

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


def model_from_checkpoint(ckpt):
    """Build AlexNet from ckpt["config"]["model"] and load its weights (shape-checked)."""
    from alexnet.model import build_model  # lazy: checkpoint I/O does not need the model code

    model = build_model(ckpt["config"]["model"])
    return load_state_checked(model, ckpt["model"])


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
