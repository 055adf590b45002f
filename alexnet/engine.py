"""The optimizer, mixed precision, and the two loops shared by train.py and evaluate.py:
`train_one_epoch()` and `evaluate()`.

One code path for CPU and CUDA: autocast and GradScaler are always used and simply disabled where they do
nothing (CPU without amp), so there is no separate "fast" branch to drift apart. Loaders deliver ready
batches on the device (`dataloader.folder`, `dataloader.store`), so the loops only train and count.
"""
import signal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.distributed import all_reduce_max, is_initialized
from alexnet.errors import UserError
from alexnet.metrics import EpochTotals
from alexnet.schedule import set_lr

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


class Amp:
    """Mixed precision on one device: the autocast dtype (None: off) and the GradScaler (on for fp16 only).

    mode: train.amp: "auto" (bf16 on CUDA, off on CPU) | "none" | "bf16" | "fp16" (CUDA only: its range
    needs loss scaling; bf16 has float32's range and needs none).
    """

    def __init__(self, mode, device):
        self.device = torch.device(device)
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "none"
        if mode == "fp16" and self.device.type != "cuda":
            raise UserError("train.amp=fp16 needs CUDA; use train.amp=none or bf16 on CPU")
        self.mode, self.dtype = mode, AMP_DTYPES[mode]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        """The one autocast context; a no-op when amp is off."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def step(self, loss, optimizer):
        """Backward and optimizer step, through the GradScaler (a pass-through unless fp16)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


class PaperSGD(torch.optim.Optimizer):
    """Sec. 5's update rule: v <- momentum * v - weight_decay * lr * w - lr * grad;  w <- w + v.

    The velocity carries the learning rate, so after a learning-rate drop the old velocity still moves the
    weights at the old rate until it decays; torch's SGD (v <- momentum * v + grad + weight_decay * w;
    w <- w - lr * v) rescales the whole velocity at once. The two agree while lr is constant.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=5e-4):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(m).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)


def build_optimizer(model, optim_cfg):
    """SGD with momentum and weight decay (Sec. 5); `optim.update` picks torch's rule or the paper's.

    no_bias_decay / bias_lr_factor: cuda-convnet's and Caffe's reference AlexNet gave biases no weight
    decay and twice the learning rate (the paper does not say). A group's "lr_factor" multiplies the
    learning rate the schedule sets (`alexnet.schedule.set_lr`).
    """
    o = optim_cfg
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}]          # the paper: one rule for every parameter
    if o.no_bias_decay or o.bias_lr_factor != 1.0:
        bias_group = {"params": [p for p in params if p.ndim <= 1], "lr_factor": o.bias_lr_factor}
        if o.no_bias_decay:
            bias_group["weight_decay"] = 0.0
        groups = [{"params": [p for p in params if p.ndim > 1]}, bias_group]
    if o.update == "paper":
        return PaperSGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked after each step (stop at a step boundary, then save; under
    torch.distributed at the next step that reads the totals back, where the ranks agree on it).

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


def train_one_epoch(model, loader, optimizer, amp, epoch, *, lr_at=None, totals=None, on_step=None, stop=None,
                    sync_every=1, progress=False):
    """Train `model` for (the rest of) one epoch; `loader` is already positioned by its sampler.

    Args:
        amp: an Amp. epoch: 0-based.
        lr_at(fractional_epoch) -> lr, set before every step.
        totals: the EpochTotals of a partly done epoch (mid-epoch resume), else a fresh one.
        on_step(totals, images): after each step that reads the totals back (logging, mid-epoch checkpoints).
        stop: a StopRequest; the epoch ends at the next read-back when it is set (on any rank).
        sync_every: read the loss and accuracy sums back from the device (and check them, and agree on
            stopping across ranks) only when the global step epoch * steps + batch is a multiple of it, and
            after the epoch's last batch; in between the host never waits for the device. Without
            torch.distributed a stop request is acted on at the next step.
    Returns (totals, stopped): this rank's EpochTotals (totals.batches = batches done) and whether a
    stop request ended the epoch early. Raises NonFiniteLoss when the loss is NaN or inf, before on_step
    could save the weights.
    """
    model.train()
    totals = totals if totals is not None else EpochTotals()
    steps = totals.batches + len(loader)
    sums = totals.on_device(amp.device)
    bar = tqdm(total=steps, initial=totals.batches, desc=f"epoch {epoch + 1}", disable=not progress,
               dynamic_ncols=True, leave=True)
    distributed, read_at = is_initialized(), totals.batches

    def read_back(local_stop):
        """Bring the sums back and check them; all ranks agree on stopping. Returns whether to stop."""
        nonlocal read_at
        sums.read()                                                  # the one wait for the device
        read_at = totals.batches
        # Every rank must agree on stopping, or the others would wait in the next all-reduce.
        bad, want_stop = all_reduce_max([1.0 if sums.first_bad_batch else 0.0, 1.0 if local_stop else 0.0],
                                        amp.device)
        if bad:
            bar.close()
            where = sums.first_bad_batch or totals.batches
            raise NonFiniteLoss(f"the loss is not finite (nan or inf) at step {epoch * steps + where} (epoch "
                                f"{epoch + 1}, batch {where}); stopped without saving: lower optim.lr or check the "
                                "data, then --resume auto")
        bar.set_postfix(loss=f"{totals.loss:.3f}", top1=f"{totals.top1:.1f}", refresh=False)
        return bool(want_stop)

    for images, targets in loader:
        if lr_at is not None:
            set_lr(optimizer, lr_at(epoch + totals.batches / steps))
        with amp.autocast():
            logits = model(images)                                   # (B, num_classes)
        loss = F.cross_entropy(logits.float(), targets)
        amp.step(loss, optimizer)
        sums.add(loss.detach().double() * targets.numel(), logits.detach().float(), targets)
        bar.update(1)
        local_stop = stop is not None and stop.requested
        if not (totals.batches == steps or (epoch * steps + totals.batches) % sync_every == 0
                or (local_stop and not distributed)):
            continue
        want_stop = read_back(local_stop)
        if on_step is not None:
            on_step(totals, images)
        if want_stop:
            bar.close()
            return totals, True
    if read_at != totals.batches:                                    # a loader shorter than its len()
        read_back(False)
    bar.close()
    return totals, False


@torch.inference_mode()
def evaluate(model, loader, amp, progress=False):
    """Loss and top-1 / top-5 accuracy (percent) of `model` on `loader`; sums all-reduced over ranks.

    images (B, C, H, W): one view per image, loss = cross-entropy of the logits.
    images (B, V, C, H, W): the paper's 10-view test (Sec. 4.1): softmax averaged over the V views,
    loss = NLL of the averaged probabilities.
    Returns dict(loss, top1, top5, n) with n the number of images over all ranks.
    """
    model.eval()
    totals = EpochTotals()
    sums = totals.on_device(amp.device)                               # read back once, at the end
    for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        probs = predict_proba(model, images, amp) if images.dim() == 5 else None
        if probs is not None:
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum")
            scores = probs
        else:
            with amp.autocast():
                scores = model(images).float()                        # (B, K)
            loss = F.cross_entropy(scores, targets, reduction="sum")
        sums.add(loss, scores, targets)
    totals = sums.read().all_reduce(amp.device)
    return {"loss": totals.loss, "top1": totals.top1, "top5": totals.top5, "n": totals.n}


def predict_proba(model, images, amp):
    """Softmax class probabilities (B, K): images (B, C, H, W), or (B, V, C, H, W) with the softmax averaged
    over the V views (Sec. 4.1). `model` in eval mode; called under no_grad / inference_mode."""
    if images.dim() == 4:
        images = images[:, None]
    b, v = images.shape[:2]
    with amp.autocast():
        logits = model(images.flatten(0, 1))                          # (B*V, C, H, W) -> (B*V, K)
    return logits.float().softmax(1).view(b, v, -1).mean(1)           # (B, K)


class SoftmaxEnsemble(torch.nn.Module):
    """Several models as one (Sec. 6: "averaging the predictions of five similar CNNs").

    forward returns log(mean over models of softmax(logits)): a softmax of it gives the averaged
    probabilities and its cross-entropy is their NLL, so `evaluate` scores it like any model (ten views
    then average over models and views).
    """

    def __init__(self, models):
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, x):
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)   # (N, K)
        return probs.clamp_min(1e-30).log()
