"""Top-k counts and running sums for one epoch (exact over ranks: counts, not averages of averages)."""
import math

import torch


def topk_counts(scores, target, ks=(1, 5)):
    """Count the samples whose true class is among the top k scores, for each k in `ks`, on the device.

    scores: (N, K) logits or probabilities; target: (N,) class indices. Returns an int64 tensor (len(ks),).
    Ties count against the prediction: the true class is in the top k only if fewer than k other
    classes score >= it (so a constant output is never "correct").
    """
    true_score = scores.gather(1, target[:, None])              # (N, 1)
    others_ge = (scores >= true_score).sum(1) - 1                # (N,) classes other than the truth at or above it
    return torch.stack([(others_ge < k).sum() for k in ks])       # no host tensor: nothing waits for the device


class EpochTotals:
    """Running sums of one epoch: loss (sum over samples), top-1 / top-5 counts, sample and batch counts.

    Plain floats and ints, so the partial totals of a mid-epoch checkpoint load with weights_only=True.
    """

    def __init__(self, loss_sum=0.0, correct1=0, correct5=0, n=0, batches=0):
        self.loss_sum, self.correct1, self.correct5, self.n = float(loss_sum), int(correct1), int(correct5), int(n)
        self.batches = int(batches)

    def add(self, loss_sum, correct1, correct5, n):
        """One batch's sums."""
        self.loss_sum += float(loss_sum)
        self.correct1 += int(correct1)
        self.correct5 += int(correct5)
        self.n += int(n)
        self.batches += 1

    @property
    def loss(self):
        return self.loss_sum / self.n if self.n else math.nan

    @property
    def top1(self):
        return 100.0 * self.correct1 / self.n if self.n else math.nan

    @property
    def top5(self):
        return 100.0 * self.correct5 / self.n if self.n else math.nan

    def state_dict(self):
        return {"loss_sum": self.loss_sum, "correct1": self.correct1, "correct5": self.correct5, "n": self.n,
                "batches": self.batches}

    def on_device(self, device):
        """A DeviceTotals that goes on adding to these totals on `device`."""
        return DeviceTotals(self, device)

    def all_reduce(self, device):
        """Sum the totals over all ranks (no-op when torch.distributed is not initialised)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        t = torch.tensor([self.loss_sum, self.correct1, self.correct5, self.n], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return EpochTotals(t[0].item(), round(t[1].item()), round(t[2].item()), round(t[3].item()), self.batches)


class DeviceTotals:
    """EpochTotals whose sums stay on the device while a loop runs: `add` queues the batch's sums without
    waiting for the GPU, `read` brings them back (one host-device synchronisation) into the EpochTotals.

    The sums are added in the order EpochTotals.add adds them, in float64, so what `read` returns is
    bit-identical to adding batch by batch on the host, wherever the reads fall (exact resume).
    `first_bad_batch` is the 1-based batch (of the epoch) of the first non-finite loss since the start, else None.
    """

    def __init__(self, totals, device):
        self.totals = totals
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        for i, v in enumerate((totals.loss_sum, totals.correct1, totals.correct5)):
            if v:
                self.sums[i] = v     # a fill: a copy from host memory (torch.tensor) would wait for the GPU
        self.bad = torch.zeros((), dtype=torch.float64, device=device)    # first non-finite batch, 0: none
        self.first_bad_batch = None

    def add(self, loss_sum, scores, target):
        """One batch: loss_sum a 0-dim tensor (the loss summed over the batch), scores (N, K), target (N,)."""
        loss_sum = loss_sum.detach().double()
        self.sums += torch.cat([loss_sum[None], topk_counts(scores.detach(), target).double()])
        self.totals.n += target.numel()
        self.totals.batches += 1
        self.bad = torch.where((self.bad == 0) & ~loss_sum.isfinite(), self.totals.batches, self.bad)

    def read(self):
        """The EpochTotals, up to date (waits for the device)."""
        loss_sum, c1, c5, bad = torch.cat([self.sums, self.bad[None]]).tolist()
        t = self.totals
        t.loss_sum, t.correct1, t.correct5 = loss_sum, round(c1), round(c5)
        self.first_bad_batch = round(bad) or None
        return t
