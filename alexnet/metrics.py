"""Top-k counts and running sums for one epoch (exact over ranks: counts, not averages of averages)."""
import math

import torch


def topk_correct(scores, target, ks=(1, 5)):
    """Count the samples whose true class is among the top k scores, for each k in `ks`.

    scores: (N, K) logits or probabilities; target: (N,) class indices. Returns a list of ints.
    Ties count against the prediction: the true class is in the top k only if fewer than k other
    classes score >= it (so a constant output is never "correct").
    """
    true_score = scores.gather(1, target[:, None])              # (N, 1)
    others_ge = (scores >= true_score).sum(1) - 1                # (N,) classes other than the truth at or above it
    return [int((others_ge < k).sum()) for k in ks]


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

    def all_reduce(self, device):
        """Sum the totals over all ranks (no-op when torch.distributed is not initialised)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        t = torch.tensor([self.loss_sum, self.correct1, self.correct5, self.n], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return EpochTotals(t[0].item(), round(t[1].item()), round(t[2].item()), round(t[3].item()), self.batches)
