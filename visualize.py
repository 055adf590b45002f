"""The paper's pictures from a checkpoint, as PNG files.

    python visualize.py all --checkpoint runs/demo/best.pt --data data/demo --out figures/
    python visualize.py kernels --checkpoint runs/demo/best.pt            # needs no data

Figures (written to --out):
  kernels      fig3_conv1_kernels.png: the conv1 kernels, the two groups (kernels 0-47 and 48-95 in the
               paper layout, its two GPUs) drawn as two blocks (Fig. 3, Sec. 6.1).
  predictions  fig4_predictions.png: validation images, their top-5 classes and probabilities, the true
               class named under each image and its bar in red (Fig. 4 left).
  neighbours   fig4_neighbours.png: query validation images (first column) and the training images whose
               fc7 features (4096-d, after ReLU) are nearest in Euclidean distance (Fig. 4 right).
  confusion    confusion.png: the validation confusion matrix (data sets of up to about 50 classes).
Preprocessing is the checkpoint's (the centre crop, or the ten views with --crops 10); images are shown as
their centre crops. The drawing itself is in figures.py.
"""
import argparse
import os

import torch
from torch.utils.data import DataLoader, Subset

import figures
from alexnet.checkpoint import load_for_inference
from alexnet.distributed import resolve_device
from alexnet.engine import Amp, predict_proba
from alexnet.errors import UserError, run_main
from dataloader.augment import EvalAugment, center_offset
from dataloader.folder import build_eval_loader
from dataloader.images import class_labels

FILES = {"kernels": "fig3_conv1_kernels.png", "predictions": "fig4_predictions.png",
         "neighbours": "fig4_neighbours.png", "confusion": "confusion.png"}
MAX_CONFUSION_CLASSES = 60


def spread_indices(n, count):
    """`count` indices spread evenly over range(n): folders are sorted by class, so this mixes classes."""
    return torch.linspace(0, n - 1, min(count, n)).round().long().unique().tolist()


@torch.inference_mode()
def run(ctx, dataset, indices, features=False):
    """The model on dataset[indices]: (softmax probs (N, K), averaged over the views with --crops 10, or fc7
    features (N, 4096) of the centre crop), targets (N,), centre crops as [0, 1] pixels (N, C, crop, crop)."""
    crop = ctx.cfg.data.crop
    augment = EvalAugment(ctx.stats, ctx.cfg.data, ctx.device, crops=1 if features else ctx.args.crops)
    amp = Amp("none", ctx.device)
    outs, targets, images = [], [], []
    for squares, y, _ in DataLoader(Subset(dataset, indices), batch_size=ctx.args.batch_size):
        views = augment(squares.to(ctx.device))                       # (B, C, h, w) or (B, 10, C, h, w)
        out = ctx.model.forward_features(views) if features else predict_proba(ctx.model, views, amp)
        o = center_offset(squares.shape[-1], crop)
        outs.append(out.float().cpu())
        targets.append(y)
        images.append(squares[..., o:o + crop, o:o + crop].float() / 255)
    return torch.cat(outs), torch.cat(targets), torch.cat(images)


class Context:
    """What the figure functions share: model, class labels, preprocessing, and the val / train sets."""

    def __init__(self, args):
        self.device = resolve_device(args.device)
        inf = load_for_inference(args.checkpoint, self.device)
        self.model, self.cfg, self.stats, self.class_names = inf.model, inf.cfg, inf.stats, inf.class_names
        mapping = self.cfg.data.synset_mapping
        mapping = mapping if mapping and os.path.isfile(mapping) else ""   # ImageNet: wnids -> readable names
        self.labels = [name.split(",")[0] for name in class_labels(self.class_names, mapping)]
        self.args = args

    def dataset(self, split):
        """The ImageDataset (uint8 squares) of ROOT/<split> (or of --data itself for val, when it is a split folder)."""
        root = self.args.data or self.cfg.data.root
        if not root:
            raise UserError("this figure needs images: pass --data ROOT (with train/ and val/)")
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            if split == "train":
                raise UserError(f"{path} does not exist; the neighbours figure needs ROOT/train/<class>/*")
            path = root
        loader, _ = build_eval_loader(path, self.class_names, self.stats, self.cfg.data, self.args.batch_size)
        return loader.dataset


def fig_kernels(ctx):
    groups = 2 if ctx.cfg.model.variant == "paper" and ctx.cfg.model.groups else 1
    return figures.kernel_grid(ctx.model.conv1.weight, groups=groups)


def fig_predictions(ctx):
    ds = ctx.dataset("val")
    probs, targets, images = run(ctx, ds, spread_indices(len(ds), ctx.args.num))
    return figures.prediction_panel(images, probs, targets, ctx.labels, topk=5)


def fig_neighbours(ctx):
    a = ctx.args
    val, train = ctx.dataset("val"), ctx.dataset("train")
    q_feat, q_targets, q_images = run(ctx, val, spread_indices(len(val), a.queries), features=True)
    bank_feat, bank_targets, bank_images = run(ctx, train, spread_indices(len(train), a.max_train), features=True)
    nearest = figures.nearest_neighbours(q_feat, bank_feat, a.neighbours)        # (Q, k) into the bank
    return figures.neighbour_panel(
        q_images, bank_images[nearest],
        [ctx.labels[t] for t in q_targets.tolist()],
        [[ctx.labels[bank_targets[j]] for j in row] for row in nearest.tolist()])


def fig_confusion(ctx):
    if len(ctx.class_names) > MAX_CONFUSION_CLASSES:
        raise UserError(f"the confusion matrix is drawn for up to {MAX_CONFUSION_CLASSES} classes; "
                        f"this checkpoint has {len(ctx.class_names)}")
    ds = ctx.dataset("val")
    probs, targets, _ = run(ctx, ds, list(range(len(ds))))
    matrix = figures.confusion_matrix(probs.argmax(1), targets, len(ctx.class_names))
    return figures.confusion_image(matrix, ctx.labels)


MAKERS = {"kernels": fig_kernels, "predictions": fig_predictions, "neighbours": fig_neighbours,
          "confusion": fig_confusion}


def build_parser():
    """The command-line options."""
    p = argparse.ArgumentParser(description="Write the paper's figures (Fig. 3, Fig. 4) from a checkpoint as PNG.")
    p.add_argument("figure", choices=[*MAKERS, "all"], help="which figure; all: every one the data allows")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--data", default="", help="dataset root with train/ and val/ (default: the checkpoint's)")
    p.add_argument("--out", default="figures", help="output folder")
    p.add_argument("--num", type=int, default=8, help="predictions: how many validation images")
    p.add_argument("--queries", type=int, default=5, help="neighbours: how many query images")
    p.add_argument("--neighbours", type=int, default=6, help="neighbours: training images per query")
    p.add_argument("--max-train", type=int, default=5000, help="neighbours: training images searched (spread)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="predictions / confusion: 1 or 10 views")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("num", "queries", "neighbours", "max_train", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")

    ctx = Context(args)
    names = list(MAKERS) if args.figure == "all" else [args.figure]
    if args.figure == "all" and len(ctx.class_names) > MAX_CONFUSION_CLASSES:
        print(f"skipping the confusion matrix: {len(ctx.class_names)} classes (more than {MAX_CONFUSION_CLASSES})")
        names.remove("confusion")
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        image = MAKERS[name](ctx)
        path = os.path.join(args.out, FILES[name])
        image.save(path)
        print(f"wrote {path} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    run_main(main)
