"""Evaluate a checkpoint on a labelled image folder: top-1 / top-5 accuracy and error, centre crop or 10-crop.

    python evaluate.py --checkpoint runs/demo/best.pt --data data/demo [--crops 1|10] [--json out.json]
    torchrun --nproc_per_node=8 evaluate.py --checkpoint best.pt --data /imagenet --crops 10
    python evaluate.py --torchvision-weights alexnet-owt-7be5be79.pth --data /imagenet

--crops 10 is the paper's protocol (Sec. 4.1): the four corner and the centre 224 patches of the 256x256
image and their reflections, softmax outputs averaged. --crops 1 is the centre patch alone, the protocol of
torchvision's published numbers (56.522 / 79.066). Preprocessing (resize, crop, dataset statistics,
normalisation) is read from the checkpoint, so it matches training without flags. The evaluation itself
is `alexnet.engine.evaluate`, the same function train.py validates with. Under torchrun each rank
evaluates a shard (every image exactly once) and the counts are summed over ranks.
"""
import argparse
import dataclasses
import json
import os
import time

import torch

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.config import DataConfig, config_from_dict
from alexnet.cpu import tune_allocator
from alexnet.distributed import cleanup, init_distributed
from alexnet.engine import amp_setup, evaluate
from alexnet.errors import UserError, run_main
from dataloader.dataloader import build_eval_loader, find_classes

# torchvision's preprocessing for its ImageNet weights: shorter side 256, centre 224, channel mean / std
# (pixels in [0, 1]). Used only with --torchvision-weights.
TORCHVISION_DATA = dict(resize=256, crop=224, normalize="channel")
_MEAN, _STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
TORCHVISION_STATS = {"mean": _MEAN, "std": _STD, "mean_image": _MEAN[:, None, None].expand(3, 256, 256).clone()}


def split_dir(data):
    """--data may be the dataset root (its val/ is used), a split folder of class folders, or a prepared store."""
    if not data:
        raise UserError("no data folder: pass --data ROOT (holding val/<class>/*) or --data SPLIT_DIR")
    if not os.path.isdir(data):
        raise UserError(f"data folder {data} does not exist; pass --data ROOT (with val/<class>/*) or a split folder")
    val = os.path.join(data, "val")
    return val if os.path.isdir(val) and not is_store(data) else data


def build_loader(split, class_names, stats, data_cfg, args, info, in_channels, device):
    """(loader, class names) for an image folder or a prepared store's val split; classes checked first."""
    if is_store(split):
        if in_channels != 3:
            raise UserError("a prepared store holds RGB images; evaluate a 1-channel model on an image folder")
        from dataloader.store import build_store_eval_loader  # lazy: the prepared-store path is optional

        loader, found = build_store_eval_loader(split, stats, data_cfg, args.batch_size, crops=args.crops,
                                                rank=info.rank, world_size=info.world_size, device=device)
        check_classes(class_names if class_names is not None else found, found, split)
        return loader, found
    if class_names is not None:
        check_classes(class_names, find_classes(split), split)
    return build_eval_loader(split, class_names, stats, data_cfg, args.batch_size, crops=args.crops,
                             rank=info.rank, world_size=info.world_size, in_channels=in_channels, device=device)


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


def load_model(args):
    """(model, class_names or None, stats, DataConfig) from --checkpoint or --torchvision-weights."""
    if args.torchvision_weights:
        from alexnet import from_torchvision

        if not os.path.isfile(args.torchvision_weights):
            raise UserError(f"torchvision weights {args.torchvision_weights} do not exist; "
                            "download alexnet-owt-7be5be79.pth and pass its path")
        try:
            state = torch.load(args.torchvision_weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot load torchvision weights {args.torchvision_weights} ({type(e).__name__})") from None
        # Class order = sorted folder names, which is ImageNet's wnid order (the order of torchvision's outputs).
        return from_torchvision(state), None, TORCHVISION_STATS, dataclasses.replace(DataConfig(), **TORCHVISION_DATA)
    if not args.checkpoint:
        raise UserError("pass --checkpoint FILE (a train.py checkpoint) or --torchvision-weights FILE")
    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt["config"])
    return model_from_checkpoint(ckpt), list(ckpt["class_names"]), ckpt["stats"], cfg.data


def main(argv=None):
    p = argparse.ArgumentParser(description="Top-1 / top-5 accuracy of a checkpoint, centre crop or 10-crop.")
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (e.g. RUN/best.pt)")
    p.add_argument("--torchvision-weights", default="", help="a torchvision AlexNet state dict instead")
    p.add_argument("--data", default="", help="dataset root (val/ is used), a split folder or a prepared store "
                                               "(default: the checkpoint's data.root)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: the paper's 10 views")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch per process (10-crop: x10 views)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
                   help="autocast dtype; auto: bf16 on CUDA (as train.py), none on CPU")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the checkpoint's)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")

    info, device = init_distributed(args.device)
    if device.type == "cpu":
        tune_allocator()
    try:
        model, class_names, stats, data_cfg = load_model(args)
        if args.workers is not None:
            data_cfg = dataclasses.replace(data_cfg, workers=args.workers)
        split = split_dir(args.data or data_cfg.root)
        loader, class_names = build_loader(split, class_names, stats, data_cfg, args, info,
                                           model.conv1.in_channels, device)
        model.to(device).eval()
        start = time.perf_counter()
        amp_dtype = amp_setup(args.amp, device)[0]  # train.amp's rule, so results match the training logs
        result = evaluate(model, loader, device, amp_dtype=amp_dtype, channels_last=device.type == "cuda")
        seconds = time.perf_counter() - start
    finally:
        cleanup()
    if not info.is_main:
        return 0

    source = args.torchvision_weights or args.checkpoint
    protocol = "10-crop" if args.crops == 10 else "centre crop"
    print(f"{source} on {split}: {result['n']} images, {len(class_names)} classes, {protocol}, "
          f"{data_cfg.crop}x{data_cfg.crop} of {data_cfg.resize}x{data_cfg.resize}")
    print(f"top-1 accuracy {result['top1']:.3f} %  (error {100 - result['top1']:.3f} %)")
    print(f"top-5 accuracy {result['top5']:.3f} %  (error {100 - result['top5']:.3f} %)")
    print(f"loss {result['loss']:.4f}   time {seconds:.1f} s ({result['n'] / seconds:.1f} images/s, "
          f"{info.world_size} process{'es' if info.world_size > 1 else ''})")
    if args.json:
        out = {"source": source, "data": split, "crops": args.crops, "images": result["n"],
               "top1": result["top1"], "top5": result["top5"], "top1_error": 100 - result["top1"],
               "top5_error": 100 - result["top5"], "loss": result["loss"], "seconds": seconds,
               "world_size": info.world_size}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
