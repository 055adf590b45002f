"""Classify image files with a trained checkpoint: the top-k classes and their probabilities per image.

    python predict.py --checkpoint runs/demo/best.pt cat.jpg dog.png [--crops 10] [--topk 5]

Preprocessing is the checkpoint's (resize to a central square, centre crop or the paper's ten views,
normalisation with the training set's statistics). With --crops 10 the softmax outputs of the ten views
are averaged (Sec. 4.1). A file that cannot be read gets a one-line error on stderr naming it; the other
files are still classified, and the exit code is 1 if any file failed.
"""
import argparse
import sys

import torch

from alexnet.checkpoint import load_for_inference
from alexnet.engine import Amp, predict_proba
from alexnet.errors import UserError, run_main
from dataloader.augment import EvalAugment
from dataloader.images import BadImageError, load_square


@torch.inference_mode()
def class_probabilities(inf, path, crops=1, device="cpu"):
    """Softmax class probabilities (K,) of the image file at `path`, preprocessed as the checkpoint's
    evaluation (`inf`: an alexnet.checkpoint.Inference); with crops=10 averaged over the ten views."""
    d = inf.cfg.data
    square = load_square(path, d.resize, "L" if inf.cfg.model.in_channels == 1 else "RGB")   # (C, R, R) uint8
    views = EvalAugment(inf.stats, d, device, crops=crops)(square[None].to(device))          # (1, [10,] C, h, w)
    return predict_proba(inf.model, views, Amp("none", device))[0]


def main(argv=None):
    p = argparse.ArgumentParser(description="Top-k classes of image files, from a train.py checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: the paper's 10 views")
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu")

    device = torch.device(args.device)
    inf = load_for_inference(args.checkpoint, device)
    class_names = inf.class_names
    k = min(args.topk, len(class_names))

    failed = 0
    for path in args.images:
        try:
            probs, idx = class_probabilities(inf, path, args.crops, device).topk(k)
        except (BadImageError, OSError) as e:
            # BadImageError names the file; its advice about data.bad_images is for training, not here
            msg = str(e).split("; delete or replace it")[0] if isinstance(e, BadImageError) else f"cannot read {path} ({e})"
            print(f"error: {msg}", file=sys.stderr)
            failed += 1
            continue
        print(path)
        for prob, i in zip(probs.tolist(), idx.tolist()):
            print(f"  {prob:7.2%}  {class_names[i]}")
    if failed:
        print(f"error: {failed} of {len(args.images)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
