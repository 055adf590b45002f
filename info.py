"""Layer-by-layer table of AlexNet: kernel / stride / groups, output shape, parameters, MACs, neurons.

    python info.py                                   # the paper's model at 224, 1000 classes
    python info.py --variant owt --json              # torchvision's layout, machine-readable

Multiply-accumulates come from torch.utils.flop_counter (MACs = FLOPs / 2; it counts convolutions and
matrix products, which is all the arithmetic the paper's "0.72 G" refers to). Neurons are counted as
the paper counts them (Sec. 1, "650,000 neurons"): the outputs of conv1..conv5 and fc6..fc8.
"""
import argparse
import json

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.errors import UserError, run_main
from alexnet.model import VARIANTS, AlexNet


def _describe(module):
    """(type, kernel/stride/groups text) of one layer."""
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
        return "conv+ReLU", f"{k}x{k}/{s} pad {p} groups {module.groups}"
    if isinstance(module, nn.Linear):
        return "fc", f"{module.in_features}->{module.out_features}"
    if isinstance(module, nn.MaxPool2d):
        return "max-pool", f"{module.kernel_size}x{module.kernel_size}/{module.stride}"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "adaptive avg-pool", "to 6x6"
    if isinstance(module, nn.Dropout):
        return "dropout", f"p={module.p}"
    if hasattr(module, "size") and hasattr(module, "beta"):
        return "LRN", f"n={module.size} a={module.alpha:g} b={module.beta:g} k={module.k:g}"
    return type(module).__name__, ""


def layer_table(model, image_size):
    """Rows (dicts) for every layer of ``model`` but the ReLUs, and the totals, for one image.

    Args:
        model: an AlexNet. image_size: square input side in pixels.
    Returns: (rows, totals); each row has name, type, kernel, output (list), params, macs, neurons.
    """
    layers = [(f"features.{n}", n, m) for n, m in model.features.named_children()]
    layers.append(("avgpool", "avgpool", model.avgpool))
    layers += [(f"classifier.{n}", n, m) for n, m in model.classifier.named_children()]
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, out.shape))
             for _, name, m in layers]
    x = torch.zeros(1, model.features.conv1.in_channels, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    for h in hooks:
        h.remove()
    flops = counter.get_flop_counts()

    rows = []
    for path, name, module in layers:
        if isinstance(module, nn.ReLU):
            continue                               # shown as "+ReLU" on the conv / fc before it
        kind, kernel = _describe(module)
        if isinstance(module, nn.Linear):
            kind = "fc+ReLU" if name != "fc8" else "fc"
        weighted = isinstance(module, (nn.Conv2d, nn.Linear))
        rows.append({
            "name": name, "type": kind, "kernel": kernel,
            "output": list(shapes[name][1:]),
            "params": sum(p.numel() for p in module.parameters()),
            "macs": sum(flops.get(f"AlexNet.{path}", {}).values()) // 2,
            "neurons": shapes[name][1:].numel() if weighted else 0,
        })
    totals = {k: sum(r[k] for r in rows) for k in ("params", "macs", "neurons")}
    return rows, totals


def format_table(rows, totals):
    """The rows as an aligned text table with a totals line."""
    head = ("layer", "type", "kernel/stride/groups", "output", "params", "MACs", "neurons")
    body = [(r["name"], r["type"], r["kernel"], "x".join(map(str, r["output"])), f"{r['params']:,}",
             f"{r['macs']:,}", f"{r['neurons']:,}" if r["neurons"] else "-") for r in rows]
    total = ("total", "", "", "", f"{totals['params']:,}", f"{totals['macs']:,}", f"{totals['neurons']:,}")
    widths = [max(len(line[i]) for line in [head, total] + body) for i in range(len(head))]
    right = {4, 5, 6}

    def fmt(line):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule] + [fmt(b) for b in body] + [rule, fmt(total)])


def main(argv=None):
    p = argparse.ArgumentParser(description="Print AlexNet's layers, parameters, MACs and neurons.")
    p.add_argument("--variant", default="paper", help=f"one of {', '.join(VARIANTS)} (default paper)")
    p.add_argument("--num_classes", "--num-classes", type=int, default=1000)
    p.add_argument("--in_channels", "--in-channels", type=int, default=3)
    p.add_argument("--image-size", "--image_size", type=int, default=224, help="input side in pixels")
    p.add_argument("--no-lrn", action="store_true", help="ablation: no local response normalization")
    p.add_argument("--no-overlap", action="store_true", help="ablation: 2x2/2 instead of 3x3/2 pooling")
    p.add_argument("--no-groups", action="store_true", help="ablation: conv2/4/5 see all input maps")
    p.add_argument("--json", action="store_true", help="print the same figures as JSON")
    args = p.parse_args(argv)

    model = AlexNet(num_classes=args.num_classes, in_channels=args.in_channels, variant=args.variant,
                    init="default", lrn=not args.no_lrn, overlap_pool=not args.no_overlap,
                    groups=not args.no_groups)
    if not model.min_size <= args.image_size <= 4096:
        raise UserError(f"--image-size {args.image_size} is out of range; use {model.min_size} to 4096 "
                        f"(224 in the paper)")
    rows, totals = layer_table(model, args.image_size)
    setup = {"variant": args.variant, "num_classes": args.num_classes, "in_channels": args.in_channels,
             "image_size": args.image_size, "lrn": not args.no_lrn, "overlap_pool": not args.no_overlap,
             "groups": not args.no_groups}
    if args.json:
        print(json.dumps({**setup, "layers": rows, "totals": totals}, indent=1))
        return 0
    print(f"AlexNet variant={args.variant}, input {args.in_channels}x{args.image_size}x{args.image_size}, "
          f"{args.num_classes} classes")
    print(format_table(rows, totals))
    print(f"{totals['params']:,} parameters, {totals['neurons']:,} neurons, "
          f"{totals['macs'] / 1e9:.3f} G multiply-accumulates per image (forward)")
    return 0


if __name__ == "__main__":
    run_main(main)
