"""The optimizer (Sec. 5) against hand computations: torch's SGD rule with momentum and weight decay, the
bias options of the original code, and the paper's own update rule (the velocity carries the lr)."""
import dataclasses

import pytest
import torch

from alexnet.config import OptimConfig
from alexnet.engine import PaperSGD, build_optimizer
from alexnet.schedule import set_lr


class Tiny(torch.nn.Module):
    """One weight matrix and one bias, with fixed values, so every update can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64))
            self.fc.bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))


def grads(model, seed):
    """Fixed pseudo-gradients (the same for every run), set on the parameters."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    return [p.grad.clone() for p in model.parameters()]


def make():
    """A float64 Tiny (hand computations in float64 are exact to 1e-12)."""
    torch.set_default_dtype(torch.float64)
    try:
        return Tiny()
    finally:
        torch.set_default_dtype(torch.float32)


def run(cfg, lrs):
    """Steps with learning rates `lrs` (set through set_lr, as train_one_epoch does). Returns the weights
    after every step, and the gradients used."""
    model = make()
    opt = build_optimizer(model, cfg)
    history, used = [], []
    for i, lr in enumerate(lrs):
        set_lr(opt, lr)
        used.append(grads(model, i))
        opt.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history, used


def start():
    return [p.detach().clone() for p in make().parameters()]


def test_torch_sgd_with_momentum_and_weight_decay_matches_hand_computation():
    cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01)
    lrs = [0.1, 0.1, 0.01]
    history, used = run(cfg, lrs)
    w = start()
    v = [torch.zeros_like(t) for t in w]
    for step, lr in enumerate(lrs):
        for i in range(2):
            d = used[step][i] + 0.01 * w[i]                    # weight decay on every parameter
            v[i] = d if step == 0 else 0.9 * v[i] + d          # torch: first step v = d
            w[i] = w[i] - lr * v[i]
            torch.testing.assert_close(history[step][i], w[i], rtol=0, atol=1e-12)


def test_no_bias_decay_and_bias_lr_factor():
    cfg = OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.5, no_bias_decay=True, bias_lr_factor=2.0)
    history, used = run(cfg, [0.1])
    w0, b0 = start()
    torch.testing.assert_close(history[0][0], w0 - 0.1 * (used[0][0] + 0.5 * w0), rtol=0, atol=1e-12)
    torch.testing.assert_close(history[0][1], b0 - 0.2 * used[0][1], rtol=0, atol=1e-12)   # 2x lr, no decay
    # the defaults: one group, the same rule for every parameter (the paper)
    opt = build_optimizer(Tiny(), OptimConfig())
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 5e-4
    assert opt.param_groups[0]["momentum"] == 0.9


def test_paper_update_rule_matches_sec5_and_differs_from_torch_after_a_drop():
    lrs = [0.1, 0.1, 0.01, 0.01]
    paper, used = run(OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01, update="paper"), lrs)
    w = start()
    v = [torch.zeros_like(t) for t in w]
    for step, lr in enumerate(lrs):
        for i in range(2):
            v[i] = 0.9 * v[i] - 0.01 * lr * w[i] - lr * used[step][i]    # Sec. 5
            w[i] = w[i] + v[i]
            torch.testing.assert_close(paper[step][i], w[i], rtol=0, atol=1e-12)
    torch_rule, _ = run(OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01), lrs)
    for step in (0, 1):   # constant lr from the start: the two rules agree
        for i in range(2):
            torch.testing.assert_close(paper[step][i], torch_rule[step][i], rtol=0, atol=1e-12)
    # after the drop the paper's velocity still carries the old rate: the weights differ
    assert (paper[2][0] - torch_rule[2][0]).abs().max() > 1e-4


def test_paper_sgd_is_an_optimizer_with_state():
    p = torch.nn.Parameter(torch.ones(2))
    opt = PaperSGD([p], lr=0.5, momentum=0.9, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.5, 2.0]))
    state = opt.state_dict()
    opt2 = PaperSGD([torch.nn.Parameter(p.detach().clone())], lr=0.5, momentum=0.9, weight_decay=0.0)
    opt2.load_state_dict(state)
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["velocity"], torch.tensor([-0.5, 1.0]))


@pytest.mark.parametrize("bad", [{"bias_lr_factor": 0.0}, {"update": "adam"}])
def test_bad_optim_values_name_the_key(bad):
    from alexnet.config import load_config
    from alexnet.errors import UserError

    key, value = next(iter(bad.items()))
    with pytest.raises(UserError, match=f"optim.{key}"):
        load_config(None, {f"optim.{key}": value})
    assert dataclasses.fields(OptimConfig)
