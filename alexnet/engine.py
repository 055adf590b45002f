"""train_one_epoch() and evaluate(): the loop shared by train.py and evaluate.py.

One code path for CPU and CUDA: autocast and GradScaler are always used and simply disabled where they do
nothing (CPU without amp), so there is no separate "fast" branch to drift apart.
"""
import math
import signal
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.distributed import all_reduce_max
from alexnet.errors import UserError
from alexnet.metrics import EpochTotals, topk_correct
from alexnet.schedule import set_lr

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


def amp_setup(amp, device):
    """train.amp -> (autocast dtype or None, GradScaler). "auto": bf16 on CUDA, off on CPU.

    fp16 needs loss scaling (its range is too small for small gradients); bf16 has float32's range.
    """
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs CUDA; use train.amp=none or bf16 on CPU")
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return dtype, scaler


def autocast(device, amp_dtype):
    """The one autocast context; a no-op when amp_dtype is None."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)


def build_optimizer(model, optim_cfg):
    """SGD with momentum and weight decay (Sec. 5). PyTorch keeps lr outside the velocity
    (v <- m v + g + wd w; w <- w - lr v); the paper's rule agrees with it while lr is constant.
    Option no_bias_decay: biases (1-D tensors) get no weight decay (not the paper)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg.no_bias_decay:
        groups = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params}]
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked after each step (stop at a step boundary, then save).

    A second Ctrl-C while stopping raises KeyboardInterrupt as usual.
    """

    def __init__(self):
        self.signum, self.previous = None, {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self):
        """Put back the handlers that were there before install() (train.main() called in-process)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        """128 + signal number: 130 for SIGINT, 143 for SIGTERM (what shells and schedulers expect)."""
        return 128 + int(self.signum) if self.signum is not None else 0


def to_device(batch, device, batch_transform=None, channels_last=False):
    """(images, targets) -> on `device`; then `batch_transform(images)` (e.g. uint8 -> normalised float).

    Batches already on the device are left where they are. images: (B, C, H, W) or (B, V, C, H, W).
    """
    images, targets = batch
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if batch_transform is not None:
        images = batch_transform(images)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def train_one_epoch(model, loader, optimizer, device, *, epoch, steps_per_epoch, lr_fn=None, scaler=None,
                    amp_dtype=None, batch_transform=None, channels_last=False, start_batch=0, totals=None,
                    on_start=None, on_step=None, stop=None, show_progress=False, world_size=1):
    """Train `model` over `loader` (already positioned at `start_batch` by its sampler) for one epoch.

    lr_fn(fractional_epoch) -> lr, set before every step. on_start() runs once the loader iterator exists
    (resume restores RNG states there). on_step(batches_done, totals, images) runs after every step.
    stop: a StopRequest; the epoch ends early after the current step when it is set (on any rank).
    Raises NonFiniteLoss (with the global step) when the loss is NaN or inf.
    Returns dict(loss, top1, n, time, images_per_s, batches, stopped); totals are this rank's only.
    """
    model.train()
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    totals = totals if totals is not None else EpochTotals()
    bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}", disable=not show_progress,
               dynamic_ncols=True, leave=True)
    start, seen, batches, stopped = time.perf_counter(), 0, start_batch, False
    iterator = iter(loader)
    if on_start is not None:
        on_start()
    for batch in iterator:
        images, targets = to_device(batch, device, batch_transform, channels_last)
        if lr_fn is not None:
            set_lr(optimizer, lr_fn(epoch + batches / steps_per_epoch))
        with autocast(device, amp_dtype):
            logits = model(images)                                   # (B, num_classes)
        loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        n = targets.numel()
        c1, c5 = topk_correct(logits.detach().float(), targets)      # one host sync per step, shared
        loss_value = loss.item()
        batches += 1
        # Every rank must agree on stopping, or the others would wait in the next all-reduce.
        bad, want_stop = all_reduce_max([0.0 if math.isfinite(loss_value) else 1.0,
                                         1.0 if stop is not None and stop.requested else 0.0], device)
        if bad:
            bar.close()
            step = epoch * steps_per_epoch + batches
            raise NonFiniteLoss(f"loss is {loss_value} at step {step} (epoch {epoch + 1}, batch {batches}); "
                                "stopped without saving: lower optim.lr or check the data, then --resume auto")
        totals.add(loss_value * n, c1, c5, n)
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{totals.loss:.3f}", top1=f"{totals.top1:.1f}",
                        img_s=f"{seen * world_size / max(elapsed, 1e-9):.0f}", refresh=False)
        bar.update(1)
        if on_step is not None:
            on_step(batches, totals, images)
        if want_stop:
            stopped = True
            break
    bar.close()
    elapsed = time.perf_counter() - start
    return {"loss": totals.loss, "top1": totals.top1, "n": totals.n, "time": elapsed,
            "images_per_s": seen * world_size / max(elapsed, 1e-9), "batches": batches, "stopped": stopped,
            "totals": totals}


@torch.inference_mode()
def evaluate(model, loader, device, amp_dtype=None, batch_transform=None, channels_last=False,
             show_progress=False):
    """Loss and top-1 / top-5 accuracy (percent) of `model` on `loader`; sums all-reduced over ranks.

    images (B, C, H, W): one view per image, loss = cross-entropy of the logits.
    images (B, 10, C, H, W): the paper's 10-crop test (Sec. 4.1): softmax averaged over the 10 views,
    loss = NLL of the averaged probabilities.
    Returns dict(loss, top1, top5, n) with n the number of images over all ranks.
    """
    model.eval()
    totals = EpochTotals()
    for batch in tqdm(loader, desc="eval", disable=not show_progress, leave=False, dynamic_ncols=True):
        images, targets = to_device(batch, device, batch_transform, channels_last=False)
        if images.dim() == 5:
            b, v = images.shape[:2]
            views = images.flatten(0, 1)                              # (B, V, C, H, W) -> (B*V, C, H, W)
            if channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(views)                                 # (B*V, K)
            probs = logits.float().softmax(1).view(b, v, -1).mean(1)  # (B, K)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum")
            scores = probs
        else:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                scores = model(images).float()                        # (B, K)
            loss = F.cross_entropy(scores, targets, reduction="sum")
        c1, c5 = topk_correct(scores, targets)
        totals.add(loss.item(), c1, c5, targets.numel())
    totals = totals.all_reduce(device)
    return {"loss": totals.loss, "top1": totals.top1, "top5": totals.top5, "n": totals.n}
