"""Evaluate one checkpoint, or an ensemble of several, on a labelled image folder or a prepared store:
top-1 / top-5 accuracy and error, with the paper's ten views (the default) or the centre crop.

    python evaluate.py --checkpoint runs/demo/best.pt --data data/demo [--crops 10|1] [--json out.json]
    python evaluate.py --checkpoint a/best.pt b/best.pt c/best.pt --data /imagenet     # ensemble (Sec. 6)
    torchrun --nproc_per_node=8 evaluate.py --checkpoint best.pt --data /imagenet
    python evaluate.py --torchvision-weights alexnet-owt-7be5be79.pth --data /imagenet --crops 1

--crops 10 is the paper's protocol (Sec. 4.1): the four corner and the centre patches of the R x R image
and their reflections, softmax outputs averaged. --crops 1 is the centre patch alone, the protocol of
torchvision's published numbers (56.522 / 79.066). Several checkpoints are an ensemble: their softmax
outputs are averaged too (Sec. 6: five CNNs took top-5 error from 18.2% to 16.4%). Preprocessing (resize,
crop, dataset statistics, normalisation, pixel scale) is read from the checkpoint, so it matches training
without flags; the members of an ensemble must share it. The evaluation itself is
`alexnet.engine.evaluate`, the same function train.py validates with. Under torchrun each rank evaluates a
shard (every image exactly once) and the counts are summed over ranks.
"""
import argparse
import dataclasses
import json
import os
import time

import torch

from alexnet.checkpoint import Inference, load_for_inference
from alexnet.model import from_torchvision
from alexnet.config import CHOICES, Config, DataConfig
from alexnet.distributed import cleanup, init_distributed
from alexnet.engine import Amp, SoftmaxEnsemble, evaluate
from alexnet.errors import UserError, run_main
from alexnet.files import atomic_write
from dataloader.folder import build_eval_loader
from dataloader.images import find_classes
from dataloader.stats import imagenet_stats
from dataloader.store import build_store_eval_loader

# torchvision's preprocessing for its ImageNet weights: shorter side 256, centre 224, channel mean / std
# (pixels in [0, 1]). Used only with --torchvision-weights.
TORCHVISION_DATA = dict(resize=256, crop=224, normalize="channel", pixel_scale=1.0)
PREPROCESSING = ("resize", "crop", "normalize", "pixel_scale")   # what ensemble members must share


def is_store(path):
    """A prepared store (python -m dataloader.prepare) rather than an image folder."""
    return os.path.isfile(os.path.join(path, "index.json"))


def check_classes(expected, found, split):
    """The data's class set must equal the checkpoint's: otherwise output index i means another class."""
    if found == list(expected):
        return
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if not missing and not extra:
        raise UserError(f"class folders in {split} are ordered differently from the checkpoint's class list")

    def show(names):
        return ", ".join(names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "") or "none"

    raise UserError(f"classes differ between the checkpoint ({len(expected)}) and {split} ({len(found)}): "
                    f"missing from the data: {show(missing)}; not in the checkpoint: {show(extra)}")


def build_loader(data, inf, args, info, device):
    """(loader, class names) for an image folder (ROOT or a split folder) or a prepared store's val split."""
    if not os.path.isdir(data):
        raise UserError(f"data folder {data} does not exist; pass --data ROOT (with val/<class>/*), a split "
                        "folder or a prepared store")
    d, channels = inf.cfg.data, inf.cfg.model.in_channels
    kwargs = dict(crops=args.crops, rank=info.rank, world_size=info.world_size, device=device)
    if is_store(data):
        if channels != 3:
            raise UserError("a prepared store holds RGB images; evaluate a 1-channel model on an image folder")
        loader, found = build_store_eval_loader(data, inf.stats, d, args.batch_size, **kwargs)
        check_classes(inf.class_names or found, found, data)
        return loader, found
    split = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
    if inf.class_names:
        check_classes(inf.class_names, find_classes(split), split)
    return build_eval_loader(split, inf.class_names or None, inf.stats, d, args.batch_size, **kwargs)


def torchvision_model(path, device):
    """--torchvision-weights: torchvision's AlexNet weights with torchvision's preprocessing."""
    if not os.path.isfile(path):
        raise UserError(f"torchvision weights {path} do not exist; download alexnet-owt-7be5be79.pth and pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load torchvision weights {path} ({type(e).__name__})") from None
    cfg = Config(data=dataclasses.replace(DataConfig(), **TORCHVISION_DATA))
    # Class order = sorted folder names, which is ImageNet's wnid order (the order of torchvision's outputs).
    return Inference(from_torchvision(state).to(device).eval(), cfg, [], imagenet_stats(256))


def load_models(args, device):
    """One Inference for --torchvision-weights or --checkpoint A [B ...]; several checkpoints become a
    SoftmaxEnsemble that shares the first one's preprocessing (checked)."""
    if args.torchvision_weights:
        return torchvision_model(args.torchvision_weights, device)
    if not args.checkpoint:
        raise UserError("pass --checkpoint FILE [FILE ...] (train.py checkpoints) or --torchvision-weights FILE")
    members = [load_for_inference(path, device) for path in args.checkpoint]
    first = members[0]
    for path, m in zip(args.checkpoint[1:], members[1:]):
        if m.class_names != first.class_names:
            raise UserError(f"{path} was trained on other classes than {args.checkpoint[0]}; an ensemble needs one "
                            "class list")
        for key in PREPROCESSING:
            a, b = getattr(first.cfg.data, key), getattr(m.cfg.data, key)
            if a != b:
                raise UserError(f"{path} has data.{key}={b!r} but {args.checkpoint[0]} has {a!r}; ensemble "
                                "members must share their preprocessing")
        if any(not torch.equal(torch.as_tensor(first.stats[k]), torch.as_tensor(m.stats[k]))
               for k in ("mean_image", "mean", "std")):
            raise UserError(f"{path} was normalised with other dataset statistics than {args.checkpoint[0]}; "
                            "ensemble members must share them (the same data and data.stats)")
    if len(members) == 1:
        return first
    return dataclasses.replace(first, model=SoftmaxEnsemble([m.model for m in members]).eval())


def build_parser():
    """The command-line options."""
    p = argparse.ArgumentParser(description="Top-1 / top-5 accuracy of a checkpoint (or an ensemble), 10 views or "
                                            "the centre crop.")
    p.add_argument("--checkpoint", nargs="+", default=[], help="checkpoint(s) written by train.py (e.g. RUN/best.pt); "
                                                               "several: their softmax outputs are averaged")
    p.add_argument("--torchvision-weights", default="", help="a torchvision AlexNet state dict instead")
    p.add_argument("--data", default="", help="dataset root (val/ is used), a split folder or a prepared store "
                                               "(default: the checkpoint's data.root)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=10,
                   help="10: the paper's ten views (default); 1: the centre crop (torchvision's protocol)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch per process (10 views: x10)")
    p.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    p.add_argument("--amp", default="auto", choices=CHOICES["train.amp"],
                   help="autocast dtype; auto: bf16 on CUDA (as train.py), none on CPU")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the checkpoint's)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")

    info, device = init_distributed(args.device)
    try:
        inf = load_models(args, device)
        if args.workers is not None:
            inf.cfg.data.workers = args.workers
        data = args.data or inf.cfg.data.root
        if not data:
            raise UserError("no data folder: pass --data ROOT (holding val/<class>/*), a split folder or a store")
        loader, class_names = build_loader(data, inf, args, info, device)
        start = time.perf_counter()
        result = evaluate(inf.model, loader, Amp(args.amp, device))  # train.amp's rule: matches the training logs
        seconds = time.perf_counter() - start
    finally:
        cleanup()
    if info.is_main:
        report(args, data, inf.cfg.data, result, seconds, len(class_names), info.world_size)
    return 0


def report(args, data, d, result, seconds, num_classes, world_size):
    """Print the result and write --json."""
    sources = [args.torchvision_weights] if args.torchvision_weights else args.checkpoint
    protocol = "10 views" if args.crops == 10 else "centre crop"
    ensemble = f", ensemble of {len(sources)}" if len(sources) > 1 else ""
    print(f"{', '.join(sources)} on {data}: {result['n']} images, {num_classes} classes, {protocol}{ensemble}, "
          f"{d.crop}x{d.crop} of {d.resize}x{d.resize}")
    print(f"top-1 accuracy {result['top1']:.3f} %  (error {100 - result['top1']:.3f} %)")
    print(f"top-5 accuracy {result['top5']:.3f} %  (error {100 - result['top5']:.3f} %)")
    print(f"loss {result['loss']:.4f}   time {seconds:.1f} s ({result['n'] / seconds:.1f} images/s, "
          f"{world_size} process{'es' if world_size > 1 else ''})")
    if args.json:
        out = {"source": ", ".join(sources), "checkpoints": sources, "data": data, "crops": args.crops,
               "images": result["n"], "top1": result["top1"], "top5": result["top5"],
               "top1_error": 100 - result["top1"], "top5_error": 100 - result["top5"], "loss": result["loss"],
               "seconds": seconds, "world_size": world_size}
        atomic_write(args.json, json.dumps(out, indent=2))


if __name__ == "__main__":
    run_main(main)
