"""Top-k counting (ties count against the prediction), epoch totals, and the 10-crop evaluate()."""
import math

import torch

from alexnet.engine import Amp, evaluate
from alexnet.metrics import EpochTotals, topk_counts


def test_topk_counts():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],     # true 1: top-1
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],     # true 4: 5th -> top-5 only
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])    # true 5: 6th -> neither
    assert topk_counts(scores, torch.tensor([1, 4, 5])).tolist() == [1, 2]
    assert topk_counts(scores, torch.tensor([1, 4, 5]), ks=(1, 2, 6)).tolist() == [1, 1, 3]


def test_ties_count_against_the_prediction():
    flat = torch.zeros(4, 10)                                   # a constant output is never correct
    assert topk_counts(flat, torch.tensor([0, 1, 2, 3])).tolist() == [0, 0]
    tie = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])         # true class tied with another for first
    assert topk_counts(tie, torch.tensor([0])).tolist() == [0, 1]


def test_epoch_totals():
    t = EpochTotals()
    assert math.isnan(t.loss)
    t.add(6.0, 2, 3, 4)
    t.add(2.0, 1, 1, 4)
    assert (t.loss, t.top1, t.top5, t.n, t.batches) == (1.0, 37.5, 50.0, 8, 2)   # batches: one per add()
    assert t.state_dict()["batches"] == 2
    assert EpochTotals(**t.state_dict()).state_dict() == t.state_dict()


class _Fixed(torch.nn.Module):
    """Returns precomputed logits for each input row (its first pixel is the row index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_evaluate_ten_crop_averages_softmax():
    # 2 images x 10 views, 3 classes: image 0 is right on 4 views with high confidence and wrong on 6 with
    # low confidence: averaged softmax is right although the majority of views is wrong.
    logits = torch.zeros(20, 3)
    logits[:4, 0] = 10.0
    logits[4:10, 1] = 0.5
    logits[10:, 2] = 3.0
    images = torch.arange(20.0).view(2, 10, 1, 1, 1).expand(2, 10, 1, 2, 2).clone()
    targets = torch.tensor([0, 1])
    out = evaluate(_Fixed(logits), [(images, targets)], Amp("none", "cpu"))
    probs = logits.softmax(1).view(2, 10, 3).mean(1)
    expected_loss = -(probs[0, 0].log() + probs[1, 1].log()).item() / 2
    assert out["n"] == 2 and out["top1"] == 50.0 and out["top5"] == 100.0
    assert abs(out["loss"] - expected_loss) < 1e-5
    single = evaluate(_Fixed(logits), [(images[:, 0], targets)], Amp("none", "cpu"))   # (B, C, H, W) path
    assert single["top1"] == 50.0
    assert abs(single["loss"] - torch.nn.functional.cross_entropy(logits[[0, 10]], targets).item()) < 1e-5
