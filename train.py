"""Train AlexNet (Krizhevsky et al. 2012, Sec. 5) on CPU, one GPU, or many GPUs and machines via torchrun.

    python train.py --config configs/demo.yaml                       # the bundled demo, a few CPU minutes
    python train.py --config configs/alexnet_paper.yaml --data /data/imagenet
    python train.py --epochs 90 --in_channels 3 --num_classes 1000 --data ROOT   # the original repo's flags
    torchrun --nproc_per_node=8 train.py --config configs/alexnet_paper.yaml --data ROOT
    python train.py ... --resume auto                                # continue from OUT/last.pt if present

Generic overrides: `section.key=value`, e.g. `optim.lr=0.02 model.lrn=false`.
"""
import argparse
import math
import os
import signal
import sys
import time

import torch

from alexnet.checkpoint import TrainState, load_checkpoint
from alexnet.config import load_config
from alexnet.distributed import all_reduce_max, barrier, cleanup, init_distributed, per_rank_batch, wrap_ddp
from alexnet.engine import Amp, StopRequest, build_optimizer, evaluate, train_one_epoch
from alexnet.errors import UserError, run_main
from alexnet.model import build_model
from alexnet.schedule import LRSchedule
from alexnet.tracking import RunLock, RunLog
from dataloader.folder import build_loaders
from dataloader.store import build_store_loaders

# Flags of the original repo and common shortcuts -> config keys.
FLAGS = {"data": "data.root", "epochs": "train.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
         "num_classes": "model.num_classes", "in_channels": "model.in_channels", "out": "train.out",
         "resume": "train.resume", "device": "train.device", "seed": "train.seed"}


def parse_config(argv=None):
    """Command line -> validated Config: defaults <- --config YAML <- flags <- key=value overrides."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file holding only the keys that differ from alexnet/config.py")
    p.add_argument("--data", help="dataset ROOT with train/<class>/* and val/<class>/*")
    p.add_argument("--epochs", help="number of epochs (paper: 90)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", help="global batch over all ranks (128)")
    p.add_argument("--lr", help="initial learning rate (0.01)")
    p.add_argument("--num_classes", "--num-classes", dest="num_classes", help="classes in the data (1000)")
    p.add_argument("--in_channels", "--in-channels", dest="in_channels", help="image channels (3)")
    p.add_argument("--out", help="run directory (runs/alexnet)")
    p.add_argument("--resume", help="checkpoint path, or 'auto' to continue from OUT/last.pt when it exists")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", help="random seed (0)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. optim.lr=0.02 model.lrn=false")
    args = p.parse_intermixed_args(argv)   # key=value overrides may come before and after flags
    flags = [f"{key}={getattr(args, name)}" for name, key in FLAGS.items() if getattr(args, name) is not None]
    return load_config(args.config, flags + args.overrides)


def memory_format(cfg, device):
    """channels_last on CUDA (train.channels_last), the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" and cfg.train.channels_last else torch.contiguous_format


def build_data(cfg, info, device):
    """Loaders of ready batches for this rank (the per-rank batch), from the prepared store or image folders."""
    d = cfg.data
    if not d.root and not d.store:
        raise UserError("no dataset given: pass --data ROOT (ROOT/train/<class>/*, ROOT/val/<class>/*), "
                        "or try --config configs/demo.yaml")
    build = build_store_loaders if d.store else build_loaders   # build_loaders writes the demo set if asked
    loaders = build(d, batch_size=per_rank_batch(cfg.optim.batch_size, info.world_size), seed=cfg.train.seed,
                    rank=info.rank, world_size=info.world_size, device=device, in_channels=cfg.model.in_channels,
                    channels_last=memory_format(cfg, device) == torch.channels_last)
    if len(loaders.class_names) != cfg.model.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the data has {len(loaders.class_names)} "
                        f"classes; pass --num_classes {len(loaders.class_names)}")
    return loaders


def resume_checkpoint(cfg):
    """train.resume -> (path, checkpoint dict) or (None, None); "auto": OUT/last.pt if it exists."""
    path = cfg.train.resume or None
    if path == "auto":
        path = os.path.join(cfg.train.out, "last.pt")
        path = path if os.path.exists(path) else None
    return path, (load_checkpoint(path) if path else None)


def read_back_every(log_every, save_every, most=50):
    """Steps between train_one_epoch's read-backs of the totals (between them the host does not wait for the
    GPU): a divisor of gcd(log_every, save_every), since after_step needs the totals at their multiples, and
    at most `most`, since under torchrun a stop request waits for the next read-back."""
    g = math.gcd(log_every, save_every)
    return max(d for d in range(1, min(g, most) + 1) if g % d == 0)


class Session:
    """What the steps of one training run share, and the two things done between steps: `after_step`
    (TensorBoard scalars, mid-epoch checkpoints, input images; called every `sync_every` steps and at the
    epoch's end) and `end_epoch` (validate, schedule, log, save, print)."""

    def __init__(self, cfg, info, state, loaders, amp, stop):
        self.cfg, self.info, self.state, self.loaders, self.amp, self.stop = cfg, info, state, loaders, amp, stop
        self.steps_per_epoch, self.epoch = len(loaders.train), state.epoch
        self.sync_every = read_back_every(cfg.train.log_every_steps, cfg.train.save_every_steps)
        out = cfg.train.out
        self.last, self.best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pt")
        step = state.epoch * self.steps_per_epoch + state.batch
        self.log = RunLog(out, cfg, enabled=info.is_main, start_epoch=state.epoch,
                          purge_step=step if step else None, world_size=info.world_size)

    def step(self, batches):
        return self.epoch * self.steps_per_epoch + batches

    def after_step(self, totals, images):
        t, step = self.cfg.train, self.step(totals.batches)
        if step % t.log_every_steps == 0:
            self.log.scalars({"train/loss": totals.loss, "train/top1": totals.top1,
                              "train/lr": self.state.optimizer.param_groups[0]["lr"]}, step)
        if t.save_every_steps and step % t.save_every_steps == 0 and totals.batches < self.steps_per_epoch:
            self.state.save(self.last, self.epoch, step, totals, self.info.is_main)
        if totals.batches == self.steps_per_epoch and t.log_images:
            self.log.images(images, self.state.model.conv1.weight, self.epoch + 1)

    def end_epoch(self, totals, seconds):
        """Validate, step the plateau schedule, log, save (best.pt, last.pt), print."""
        state, info, epoch = self.state, self.info, self.epoch
        train_totals = totals.all_reduce(self.amp.device)
        val = evaluate(state.model, self.loaders.val, self.amp)
        lr = state.optimizer.param_groups[0]["lr"]
        if state.schedule.epoch_end(100.0 - val["top1"]) and info.is_main:
            s = self.cfg.schedule
            print(f"validation error stopped improving: learning rate / {1 / s.factor:g} "
                  f"(reduction {state.schedule.reductions} of {s.max_reductions})", flush=True)
        is_best = math.isfinite(val["top1"]) and val["top1"] > state.best
        state.best = val["top1"] if is_best else state.best
        images_per_s = train_totals.n / max(seconds, 1e-9)
        record = {"epoch": epoch + 1, "train_loss": train_totals.loss, "train_top1": train_totals.top1,
                  "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"], "lr": lr,
                  "epoch_time": seconds, "images_per_s": images_per_s}
        step = self.step(totals.batches)
        self.log.epoch(record, step)
        # best.pt first, then last.pt as a hard link to it: written once, and a kill between the two
        # leaves last.pt one epoch behind (redone on resume), never a best.pt older than best_metric.
        state.save(self.best_path if is_best else self.last, epoch + 1, step, None, info.is_main,
                   link=self.last if is_best else None)
        if info.is_main:
            print(f"epoch {epoch + 1}/{self.cfg.train.epochs}: train loss {record['train_loss']:.3f} top-1 "
                  f"{record['train_top1']:.1f}% | val loss {val['loss']:.3f} top-1 {val['top1']:.1f}% "
                  f"top-5 {val['top5']:.1f}% | lr {lr:g} | {seconds:.0f}s {images_per_s:.0f} img/s"
                  f"{' | best' if is_best else ''}", flush=True)

    def stopped(self, where):
        """SIGINT / SIGTERM: last.pt is saved; say where the run stopped and how to resume. Returns the exit code."""
        name = signal.Signals(self.stop.signum).name if self.stop.requested else "a signal to another rank"
        if self.info.is_main:
            print(f"{name}: stopped {where}; saved {self.last}; resume with: "
                  f"python train.py ... --out {self.cfg.train.out} --resume auto", file=sys.stderr, flush=True)
        self.log.close()
        return self.stop.exit_code or 128 + signal.SIGTERM


def main(argv=None):
    cfg = parse_config(argv)
    info, device = init_distributed(cfg.train.device)
    stop, lock = StopRequest().install(), None
    try:
        lock = RunLock(cfg.train.out) if info.is_main else None   # before anything is read or written there
        return train(cfg, info, device, stop)
    finally:
        if lock is not None:
            lock.release()
        stop.restore()
        cleanup()


def train(cfg, info, device, stop):
    t = cfg.train
    path, ckpt = resume_checkpoint(cfg)            # before anything is written: a bad file is an error
    loaders = build_data(cfg, info, device)
    torch.manual_seed(t.seed)                      # the same initial weights on every rank, whatever ran before
    model = build_model(cfg.model).to(device, memory_format=memory_format(cfg, device))
    optimizer = build_optimizer(model, cfg.optim)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    amp = Amp(t.amp, device)
    state = TrainState(model, optimizer, schedule, amp.scaler, cfg, loaders.class_names, loaders.stats)
    torch.manual_seed(t.seed + info.rank)          # dropout differs between ranks, as on separate GPUs
    if ckpt is not None:
        state.restore(ckpt, path, info.rank)       # weights, optimizer, schedule, progress, this rank's RNG
        if state.epoch >= t.epochs:
            print(f"{path} has finished all {t.epochs} epochs; raise --epochs to train longer")
            return 0
    train_model = wrap_ddp(model, device)          # `model` stays the plain module: its state dict is saved
    if t.compile:
        train_model = torch.compile(train_model)
    run = Session(cfg, info, state, loaders, amp, stop)
    if info.is_main:
        where = f"resuming from {path} at epoch {state.epoch + 1}, batch {state.batch}" if ckpt else "starting"
        print(f"{where}: {len(loaders.class_names)} classes, {run.steps_per_epoch} steps/epoch, "
              f"global batch {cfg.optim.batch_size} on {info.world_size} x {device}, run dir {t.out}", flush=True)

    for epoch in range(state.epoch, t.epochs):
        run.epoch = epoch
        loaders.train_sampler.set_epoch(epoch, skip_batches=state.batch)
        start = time.perf_counter()
        totals, stopped = train_one_epoch(train_model, loaders.train, optimizer, amp, epoch, lr_at=schedule.lr_at,
                                          totals=state.take_totals(), on_step=run.after_step, stop=stop,
                                          sync_every=run.sync_every, progress=info.is_main and sys.stderr.isatty())
        if stopped:
            state.save(run.last, epoch, run.step(totals.batches), totals, info.is_main)
            return run.stopped(f"at step {run.step(totals.batches)} (epoch {epoch + 1}, batch {totals.batches})")
        run.end_epoch(totals, time.perf_counter() - start)
        barrier()
        # A signal during validation or saving: the epoch's checkpoint is written, stop here (all ranks agree).
        if all_reduce_max([1.0 if stop.requested else 0.0], device)[0]:
            return run.stopped(f"after epoch {epoch + 1}")
    run.log.close()
    if info.is_main:
        print(f"done: best val top-1 {state.best:.2f}%; checkpoints {run.last}, {run.best_path}; "
              f"tensorboard --logdir {t.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
