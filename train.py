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

import torch

from alexnet.checkpoint import (VERSION, link_checkpoint, load_checkpoint, load_state_checked, rng_state,
                                save_checkpoint, set_rng_state)
from alexnet.config import load_config, to_dict
from alexnet.cpu import tune_allocator
from alexnet.distributed import (all_gather_object, all_reduce_max, barrier, cleanup, init_distributed, per_rank_batch,
                                 wrap_ddp)
from alexnet.engine import StopRequest, amp_setup, build_optimizer, evaluate, train_one_epoch
from alexnet.errors import UserError, run_main
from alexnet.metrics import EpochTotals
from alexnet.model import build_model
from alexnet.schedule import LRSchedule
from alexnet.tracking import RunLog

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


def build_data(cfg, info, device):
    """Loaders for this rank (the per-rank batch), from the prepared store or the image folders."""
    d = cfg.data
    if not d.root and not d.store:
        raise UserError("no dataset given: pass --data ROOT (ROOT/train/<class>/*, ROOT/val/<class>/*), "
                        "or try --config configs/demo.yaml")
    kwargs = dict(batch_size=per_rank_batch(cfg.optim.batch_size, info.world_size), seed=cfg.train.seed,
                  rank=info.rank, world_size=info.world_size, device=device, eval_crops=1,
                  in_channels=cfg.model.in_channels)
    if d.store:
        from dataloader.store import build_store_loaders  # lazy: the prepared-store path is optional

        loaders = build_store_loaders(d, **kwargs)
        return loaders, loaders.train_transform, loaders.val_transform
    from dataloader.dataloader import build_loaders  # writes the demo set first when data.demo is set

    return build_loaders(d, **kwargs), None, None


def this_rank(per_rank, rank):
    """This rank's entry of a checkpoint's per-rank list (RNG states, running totals); the last entry
    when the run that saved it had fewer ranks."""
    return per_rank[min(rank, len(per_rank) - 1)]


def resume_path(cfg):
    """train.resume -> a checkpoint path or None ("auto": OUT/last.pt if it exists)."""
    if cfg.train.resume == "auto":
        path = os.path.join(cfg.train.out, "last.pt")
        return path if os.path.exists(path) else None
    return cfg.train.resume or None


def main(argv=None):
    cfg = parse_config(argv)
    info, device = init_distributed(cfg.train.device)
    if device.type == "cpu":
        tune_allocator()
    stop = StopRequest().install()
    try:
        return train(cfg, info, device, stop)
    finally:
        stop.restore()
        cleanup()


def train(cfg, info, device, stop):
    t = cfg.train
    ckpt_path = resume_path(cfg)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None    # before anything is written: bad file -> error

    # --- data, model, optimizer -------------------------------------------------------------------
    loaders, train_tf, val_tf = build_data(cfg, info, device)
    if len(loaders.class_names) != cfg.model.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the data has {len(loaders.class_names)} "
                        f"classes; pass --num_classes {len(loaders.class_names)}")
    torch.manual_seed(t.seed)                      # the same initial weights on every rank, whatever ran before
    model = build_model(cfg.model)
    if ckpt is not None:
        load_state_checked(model, ckpt["model"])
        if list(ckpt.get("class_names", [])) != list(loaders.class_names):
            raise UserError(f"checkpoint {ckpt_path} was trained on other classes than {cfg.data.root}; "
                            "resume with the same dataset")
    channels_last = device.type == "cuda" and t.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    amp_dtype, scaler = amp_setup(t.amp, device)
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise UserError(f"the training set has fewer images than one batch per rank "
                        f"({cfg.optim.batch_size // info.world_size}); lower --batch-size")

    start_epoch, start_batch, best, totals = 0, 0, -math.inf, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:      # a disabled scaler (CPU, bf16) saves {}: a new fp16 run keeps its fresh scale
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best = ckpt["epoch"], ckpt["best_metric"]
        progress = ckpt.get("progress")
        if progress:
            start_batch, totals = progress["batch"], EpochTotals(**this_rank(progress["totals"], info.rank))
        if start_epoch >= t.epochs:
            print(f"{ckpt_path} has finished all {t.epochs} epochs; raise --epochs to train longer")
            return 0
    torch.manual_seed(t.seed + info.rank)          # dropout differs between ranks, as on separate GPUs
    rng = this_rank(ckpt["rng"], info.rank) if ckpt is not None else None
    if rng is not None and not start_batch:
        set_rng_state(rng)

    train_model = wrap_ddp(model, device)          # `model` stays the plain module: its state dict is saved
    if t.compile:
        train_model = torch.compile(train_model)
    global_step = start_epoch * steps_per_epoch + start_batch
    run = RunLog(t.out, cfg, enabled=info.is_main, start_epoch=start_epoch,
                 purge_step=global_step if ckpt is not None else None, world_size=info.world_size)
    last, best_path = os.path.join(t.out, "last.pt"), os.path.join(t.out, "best.pt")

    def checkpoint(epoch, step, batch=None, running=None):
        """The resume state; RNG states and, mid-epoch, running totals of every rank (the rank-0 file
        restores them all)."""
        rngs = all_gather_object(rng_state())
        progress = None
        if batch is not None:
            progress = {"batch": batch, "totals": all_gather_object(running.state_dict())}
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "step": step, "best_metric": best, "rng": rngs, "class_names": list(loaders.class_names),
                "config": to_dict(cfg), "stats": loaders.stats, "version": VERSION, "progress": progress}

    if info.is_main:
        where = f"resuming from {ckpt_path} at epoch {start_epoch + 1}, batch {start_batch}" if ckpt else "starting"
        print(f"{where}: {len(loaders.class_names)} classes, {steps_per_epoch} steps/epoch, "
              f"global batch {cfg.optim.batch_size} on {info.world_size} x {device}, run dir {t.out}", flush=True)
    show = info.is_main and sys.stderr.isatty()

    def stopped(where):
        """SIGINT / SIGTERM: last.pt is saved; say where the run stopped and how to resume."""
        name = signal.Signals(stop.signum).name if stop.requested else "a signal to another rank"
        if info.is_main:
            print(f"{name}: stopped {where}; saved {last}; resume with: "
                  f"python train.py ... --out {t.out} --resume auto", file=sys.stderr, flush=True)
        run.close()
        return stop.exit_code or 128 + signal.SIGTERM

    for epoch in range(start_epoch, t.epochs):
        loaders.train_sampler.set_epoch(epoch, skip_batches=start_batch)

        def on_step(batches, running, images, epoch=epoch):
            step = epoch * steps_per_epoch + batches
            if step % t.log_every_steps == 0:
                run.scalars({"train/loss": running.loss, "train/top1": running.top1,
                             "train/lr": optimizer.param_groups[0]["lr"]}, step)
            if t.save_every_steps and step % t.save_every_steps == 0 and batches < steps_per_epoch:
                state = checkpoint(epoch, step, batches, running)
                if info.is_main:
                    save_checkpoint(state, last)
            if batches == steps_per_epoch and t.log_images:
                run.images(images, model.conv1.weight, epoch + 1)

        on_start = (lambda: set_rng_state(rng)) if (rng is not None and start_batch) else None
        result = train_one_epoch(train_model, loaders.train, optimizer, device, epoch=epoch,
                                 steps_per_epoch=steps_per_epoch, lr_fn=schedule.lr_at, scaler=scaler,
                                 amp_dtype=amp_dtype, batch_transform=train_tf, channels_last=channels_last,
                                 start_batch=start_batch, totals=totals, on_start=on_start, on_step=on_step,
                                 stop=stop, show_progress=show, world_size=info.world_size)
        step = epoch * steps_per_epoch + result["batches"]
        start_batch, totals = 0, None
        if result["stopped"]:
            state = checkpoint(epoch, step, result["batches"], result["totals"])
            if info.is_main:
                save_checkpoint(state, last)
            return stopped(f"at step {step} (epoch {epoch + 1}, batch {result['batches']})")

        train_totals = result["totals"].all_reduce(device)
        val = evaluate(model, loaders.val, device, amp_dtype, val_tf, channels_last)
        lr = optimizer.param_groups[0]["lr"]
        if schedule.epoch_end(100.0 - val["top1"]) and info.is_main:
            print(f"validation error stopped improving: learning rate / {1 / cfg.schedule.factor:g} "
                  f"(reduction {schedule.reductions} of {cfg.schedule.max_reductions})", flush=True)
        is_best = math.isfinite(val["top1"]) and val["top1"] > best
        best = val["top1"] if is_best else best
        record = {"epoch": epoch + 1, "train_loss": train_totals.loss, "train_top1": train_totals.top1,
                  "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"], "lr": lr,
                  "epoch_time": result["time"], "images_per_s": result["images_per_s"]}
        run.epoch(record, step)
        state = checkpoint(epoch + 1, step)
        if info.is_main:
            # best.pt first, then last.pt as a hard link to it: written once, and a kill between the two
            # leaves last.pt one epoch behind (redone on resume), never a best.pt older than best_metric.
            save_checkpoint(state, best_path if is_best else last)
            if is_best:
                link_checkpoint(best_path, last)
            print(f"epoch {epoch + 1}/{t.epochs}: train loss {record['train_loss']:.3f} top-1 "
                  f"{record['train_top1']:.1f}% | val loss {val['loss']:.3f} top-1 {val['top1']:.1f}% "
                  f"top-5 {val['top5']:.1f}% | lr {lr:g} | {result['time']:.0f}s "
                  f"{result['images_per_s']:.0f} img/s{' | best' if is_best else ''}", flush=True)
        barrier()
        # A signal during validation or saving: the epoch's checkpoint is written, stop here (all ranks agree).
        if all_reduce_max([1.0 if stop.requested else 0.0], device)[0]:
            return stopped(f"after epoch {epoch + 1}")
    run.close()
    if info.is_main:
        print(f"done: best val top-1 {best:.2f}%; checkpoints {last}, {best_path}; "
              f"tensorboard --logdir {t.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
