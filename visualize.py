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
Preprocessing is the checkpoint's (the centre crop, as evaluate.py --crops 1).
"""
import argparse
import os

import torch
from torch.utils.data import DataLoader, Subset

from alexnet import figures
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.config import config_from_dict
from alexnet.distributed import resolve_device
from alexnet.errors import UserError, run_main
from dataloader.dataloader import build_eval_loader, read_synsets

FILES = {"kernels": "fig3_conv1_kernels.png", "predictions": "fig4_predictions.png",
         "neighbours": "fig4_neighbours.png", "confusion": "confusion.png"}
MAX_CONFUSION_CLASSES = 60


def spread_indices(n, count):
    """`count` indices spread evenly over range(n): folders are sorted by class, so this mixes classes."""
    return torch.linspace(0, n - 1, min(count, n)).round().long().unique().tolist()


@torch.inference_mode()
def run(model, dataset, indices, device, batch_size, features=False):
    """Outputs of `model` on dataset[indices]: (softmax probs (N, K) or fc7 features (N, 4096), targets (N,),
    images (N, C, crop, crop) still normalised; for 10-view items, probs are averaged and the centre view kept."""
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size)
    outs, targets, images = [], [], []
    for x, y in loader:
        views = x.flatten(0, 1) if x.dim() == 5 else x               # (B*V, C, H, W)
        out = model.forward_features(views.to(device)) if features else model(views.to(device)).softmax(1)
        if x.dim() == 5:
            out = out.view(x.shape[0], x.shape[1], -1).mean(1)         # average over the ten views (Sec. 4.1)
            x = x[:, 4]                                                # the centre view, for display
        outs.append(out.float().cpu())
        targets.append(y)
        images.append(x)
    return torch.cat(outs), torch.cat(targets), torch.cat(images)


class Context:
    """What the figure functions share: model, class labels, preprocessing, and the val / train sets."""

    def __init__(self, args):
        ckpt = load_checkpoint(args.checkpoint)
        self.cfg = config_from_dict(ckpt["config"])
        self.stats = ckpt["stats"]
        self.class_names = list(ckpt["class_names"])
        self.labels = self.class_names
        mapping = self.cfg.data.synset_mapping
        if mapping and os.path.isfile(mapping):  # ImageNet: wnids -> readable names
            synsets = read_synsets(mapping)
            self.labels = [synsets.get(c, c).split(",")[0] for c in self.class_names]
        self.device = resolve_device(args.device)
        self.model = model_from_checkpoint(ckpt).to(self.device).eval()
        self.args = args

    def dataset(self, split):
        """The ImageDataset of ROOT/<split> (or of --data itself for val, when it is a split folder)."""
        root = self.args.data or self.cfg.data.root
        if not root:
            raise UserError("this figure needs images: pass --data ROOT (with train/ and val/)")
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            if split == "train":
                raise UserError(f"{path} does not exist; the neighbours figure needs ROOT/train/<class>/*")
            path = root
        loader, _ = build_eval_loader(path, self.class_names, self.stats, self.cfg.data, self.args.batch_size,
                                      crops=self.args.crops if split == "val" else 1,
                                      in_channels=self.model.conv1.in_channels)
        return loader.dataset

    def show(self, images):
        """Normalised crops -> pixels in [0, 1] for display."""
        return figures.denormalize(images, self.stats, self.cfg.data.normalize)


def fig_kernels(ctx):
    groups = 2 if ctx.cfg.model.variant == "paper" and ctx.cfg.model.groups else 1
    return figures.kernel_grid(ctx.model.conv1.weight, groups=groups)


def fig_predictions(ctx):
    ds = ctx.dataset("val")
    probs, targets, images = run(ctx.model, ds, spread_indices(len(ds), ctx.args.num), ctx.device,
                                 ctx.args.batch_size)
    return figures.prediction_panel(ctx.show(images), probs, targets, ctx.labels, topk=5)


def fig_neighbours(ctx):
    a = ctx.args
    val, train = ctx.dataset("val"), ctx.dataset("train")
    q_feat, q_targets, q_images = run(ctx.model, val, spread_indices(len(val), a.queries), ctx.device,
                                      a.batch_size, features=True)
    bank_idx = spread_indices(len(train), a.max_train)
    bank_feat, bank_targets, bank_images = run(ctx.model, train, bank_idx, ctx.device, a.batch_size, features=True)
    nearest = figures.nearest_neighbours(q_feat, bank_feat, a.neighbours)        # (Q, k) into the bank
    return figures.neighbour_panel(
        ctx.show(q_images), ctx.show(bank_images[nearest]),
        [ctx.labels[t] for t in q_targets.tolist()],
        [[ctx.labels[bank_targets[j]] for j in row] for row in nearest.tolist()])


def fig_confusion(ctx):
    if len(ctx.class_names) > MAX_CONFUSION_CLASSES:
        raise UserError(f"the confusion matrix is drawn for up to {MAX_CONFUSION_CLASSES} classes; "
                        f"this checkpoint has {len(ctx.class_names)}")
    ds = ctx.dataset("val")
    probs, targets, _ = run(ctx.model, ds, list(range(len(ds))), ctx.device, ctx.args.batch_size)
    matrix = figures.confusion_matrix(probs.argmax(1), targets, len(ctx.class_names))
    return figures.confusion_image(matrix, ctx.labels)


MAKERS = {"kernels": fig_kernels, "predictions": fig_predictions, "neighbours": fig_neighbours,
          "confusion": fig_confusion}


def main(argv=None):
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
    args = p.parse_args(argv)
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
