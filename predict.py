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

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.config import config_from_dict
from alexnet.errors import UserError, run_main
from dataloader.images import BadImageError, open_image
from dataloader.transforms import EvalTransform


@torch.inference_mode()
def class_probabilities(model, views):
    """Softmax class probabilities of one image. views: (C, H, W) or (V, C, H, W) -> (K,), averaged over V."""
    if views.dim() == 3:
        views = views[None]
    return model(views).float().softmax(1).mean(0)


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

    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt["config"])
    class_names = list(ckpt["class_names"])
    device = torch.device(args.device)
    model = model_from_checkpoint(ckpt).to(device).eval()
    transform = EvalTransform(cfg.data, ckpt["stats"], crops=args.crops)
    mode = "L" if cfg.model.in_channels == 1 else "RGB"
    k = min(args.topk, len(class_names))

    failed = 0
    for path in args.images:
        try:
            views = transform(open_image(path, mode))        # (C, crop, crop) or (10, C, crop, crop)
        except (BadImageError, OSError) as e:
            # BadImageError names the file; its advice about data.bad_images is for training, not here
            msg = str(e).split("; delete or replace it")[0] if isinstance(e, BadImageError) else f"cannot read {path} ({e})"
            print(f"error: {msg}", file=sys.stderr)
            failed += 1
            continue
        probs, idx = class_probabilities(model, views.to(device)).topk(k)
        print(path)
        for prob, i in zip(probs.tolist(), idx.tolist()):
            print(f"  {prob:7.2%}  {class_names[i]}")
    if failed:
        print(f"error: {failed} of {len(args.images)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
