"""Speed of the paper's LRN and of a paper-model training step, as ratios against baselines run here.

    python benchmarks/bench_model.py [--threads 2] [--repeats 9] [--batch 32] [--size 224] [--no-tune-allocator]

1. LRN forward + backward at conv1's output (batch 32, 96x55x55): alexnet.LocalResponseNorm against
   torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2) (the same function). Target: >= 3x faster.
2. One SGD step (forward, cross-entropy, backward, update) of AlexNet(variant="paper") against
   torchvision.models.alexnet, batch 32, 224x224, fp32. Target: >= 0.8x torchvision's images/s.
   Also printed: the paper model with torch's LRN, for comparison.
Timings are medians of interleaved repeats after warm-up runs, so a busy machine slows both sides alike.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alexnet import AlexNet, LocalResponseNorm  # noqa: E402
from alexnet.cpu import tune_allocator  # noqa: E402
from alexnet.errors import UserError, run_main  # noqa: E402


def interleaved_medians(fns, warmup, repeats):
    """Median wall time and median process CPU time (s) of each callable; repeats alternate.

    CPU time (all threads) is the steadier figure on a shared machine: waiting for a core costs wall
    time but no CPU time. Returns {name: (wall, cpu)}.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.perf_counter() - w0)
            times[name][1].append(time.process_time() - c0)
    return {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}


def lrn_step(module, x, grad):
    x = x.detach().requires_grad_()
    module(x).backward(grad)
    return x.grad


def bench_lrn(args):
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(args.batch, 96, 55, 55, generator=gen) * 2)  # post-ReLU, like conv1's
    grad = torch.randn(x.shape, generator=gen)
    ours, ref = LocalResponseNorm(5, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    t = interleaved_medians({"torch": lambda: lrn_step(ref, x, grad),
                             "ours": lambda: lrn_step(ours, x, grad)}, args.warmup, args.repeats)
    for i, kind in enumerate(("wall", "cpu")):
        print(f"LRN fwd+bwd {tuple(x.shape)} ({kind} time): torch.nn.LocalResponseNorm "
              f"{t['torch'][i] * 1e3:.1f} ms, alexnet.LocalResponseNorm {t['ours'][i] * 1e3:.1f} ms "
              f"-> {t['torch'][i] / t['ours'][i]:.2f}x faster")


def train_step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def bench_train_step(args):
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,))
    # init="default" for all: the paper's bias 1 makes no speed difference, but keeps outputs finite.
    models = {"torchvision": torchvision.models.alexnet(), "paper": AlexNet(init="default")}
    if args.stock_lrn:
        stock = AlexNet(init="default")
        for name in ("lrn1", "lrn2"):
            setattr(stock.features, name, torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0))
        models["paper, torch LRN"] = stock
    steps = {name: train_step_fn(m.to(memory_format=fmt).train(), x, y) for name, m in models.items()}
    t = interleaved_medians(steps, max(1, args.warmup // 2), args.train_repeats)
    for i, kind in enumerate(("wall", "cpu")):
        for name in models:
            ips = args.batch / t[name][i]
            print(f"train step batch {args.batch} at {args.size} ({kind} time), {name}: "
                  f"{t[name][i] * 1e3:.0f} ms, {ips:.1f} img/s "
                  f"-> {t['torchvision'][i] / t[name][i]:.2f}x torchvision")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="image side of the training step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=11, help="LRN repeats")
    p.add_argument("--train-repeats", type=int, default=5, help="training-step repeats")
    p.add_argument("--channels-last", action="store_true", help="train step in channels_last")
    p.add_argument("--stock-lrn", action="store_true", help="also time the paper model with torch's LRN")
    p.add_argument("--only", choices=("lrn", "train"), help="run one of the two benchmarks")
    p.add_argument("--no-tune-allocator", action="store_true",
                   help="keep glibc's allocator defaults (train.py tunes them on CPU: alexnet/cpu.py)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.repeats < 1 or args.train_repeats < 1:
        raise UserError("--threads, --batch, --repeats and --train-repeats must be positive")
    if args.size < 63:
        raise UserError(f"--size {args.size} is too small: AlexNet needs at least 63 px")
    torch.set_num_threads(args.threads)
    tuned = not args.no_tune_allocator and tune_allocator()   # as train.py runs on CPU; both sides alike
    print(f"torch {torch.__version__}, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"allocator {'tuned as in train.py' if tuned else 'glibc defaults'}")
    if args.only in (None, "lrn"):
        bench_lrn(args)
    if args.only in (None, "train"):
        bench_train_step(args)


if __name__ == "__main__":
    run_main(main)
