"""Dataset statistics: the mean image, channel mean / std, and the eigen-decomposition of the RGB covariance.

Sec. 2 subtracts the training set's mean image; Sec. 4.1's colour augmentation needs the eigenvalues
and eigenvectors of the 3x3 covariance of RGB pixel values over the training set. Both are computed
here in one streaming pass over ROOT/train (DataLoader workers, a progress bar) at the R x R size
the model sees (shorter side R, central square), in [0, 1] pixel scale.

    python -m dataloader.stats ROOT [--resize 256] [--workers 4] [--out FILE]

writes ROOT/stats_<R>.pt (a plain dict of tensors, loadable with torch.load(..., weights_only=True)).
"""
import argparse
import os

import numpy as np
import torch
from tqdm import tqdm

from alexnet.errors import UserError, run_main
from alexnet.files import atomic_write
from dataloader.images import BadImageError, ResizeCenterSquare, find_classes, list_images, open_image

# ImageNet's published values for [0, 1] pixels: mean / std from torchvision (averages of per-image std);
# PCA from fb.resnet.torch: eigenvalues of the pixel covariance, the convention of `auto` (docs/data.md).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_EIGVAL = [0.2175, 0.0188, 0.0045]
IMAGENET_EIGVEC = [[-0.5675, 0.7192, 0.4009],   # column i is the eigenvector of eigval[i]
                   [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]]

STATS_KEYS = ("mean_image", "mean", "std", "eigval", "eigvec", "num_images")


def imagenet_stats(resize=256):
    """The ImageNet preset; its mean image is the constant channel means (no published mean image)."""
    mean = torch.tensor(IMAGENET_MEAN)
    return {"mean_image": mean[:, None, None].expand(3, resize, resize).clone(), "mean": mean,
            "std": torch.tensor(IMAGENET_STD), "eigval": torch.tensor(IMAGENET_EIGVAL),
            "eigvec": torch.tensor(IMAGENET_EIGVEC), "num_images": 0}


class _StatsImages(torch.utils.data.Dataset):
    """Each item: (uint8 image (C, R, R), float64 Gram matrix (C, C) of its [0,1] pixels, ok flag)."""

    def __init__(self, paths, resize, mode, skip_bad):
        self.paths, self.resize, self.mode, self.skip_bad = paths, ResizeCenterSquare(resize), mode, skip_bad
        self.channels = 1 if mode == "L" else 3

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            im = self.resize(open_image(self.paths[i], self.mode))
        except BadImageError:
            if not self.skip_bad:
                raise
            r = self.resize.size
            return torch.zeros(self.channels, r, r, dtype=torch.uint8), torch.zeros(
                self.channels, self.channels, dtype=torch.float64), False
        a = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], -1)
        x = torch.from_numpy(a.copy()).permute(2, 0, 1)  # (R, R, C) -> (C, R, R)
        p = x.reshape(x.shape[0], -1).double() / 255.0  # (C, R*R)
        return x, p @ p.T, True


def stats_from_sums(pixel_sum, gram_sum, num_images):
    """Finish the statistics from exact integer pixel sums (C, R, R) and the Gram sum (C, C)."""
    c, r, _ = pixel_sum.shape
    n_pix = num_images * r * r
    mean_image = pixel_sum.double() / (255.0 * num_images)           # (C, R, R)
    mean = mean_image.mean(dim=(1, 2))                                # (C,)
    cov = gram_sum / n_pix - torch.outer(mean, mean)                  # E[x x^T] - mu mu^T over pixels
    eigval, eigvec = torch.linalg.eigh(cov)                           # ascending
    order = torch.argsort(eigval, descending=True)                    # the paper's lambda_1 is the largest
    return {"mean_image": mean_image.float(), "mean": mean.float(),
            "std": torch.sqrt(torch.diagonal(cov).clamp_min(0)).float(),
            "eigval": eigval[order].clamp_min(0).float(), "eigvec": eigvec[:, order].float(),
            "num_images": int(num_images)}


def compute_stats(train_dir, resize, workers=2, mode="RGB", bad_images="error", max_bad_images=100,
                  batch_size=32, progress=True):
    """Stream the images under `train_dir` once and return the stats dict (see module docstring).

    Args:
        train_dir: ROOT/train, holding class folders.
        resize: R; images are measured after "shorter side R, central R x R".
        workers: DataLoader worker processes (0: in this process).
        mode: "RGB" (C = 3) or "L" (C = 1).
        bad_images, max_bad_images: as data.bad_images / data.max_bad_images.
    Returns:
        {"mean_image": (C,R,R), "mean": (C,), "std": (C,), "eigval": (C,), "eigvec": (C,C), "num_images": int}
    """
    classes = find_classes(train_dir)
    paths = [p for p, _ in list_images(train_dir, classes)]
    ds = _StatsImages(paths, resize, mode, skip_bad=bad_images == "skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    pixel_sum = torch.zeros(ds.channels, resize, resize, dtype=torch.int64)  # exact
    gram_sum = torch.zeros(ds.channels, ds.channels, dtype=torch.float64)
    n = bad = 0
    for x, gram, ok in tqdm(loader, desc=f"stats {train_dir}", unit="batch", disable=not progress):
        pixel_sum += x[ok].long().sum(0)
        gram_sum += gram[ok].sum(0)
        n += int(ok.sum())
        bad += int((~ok).sum())
        if bad > max_bad_images:
            raise UserError(f"more than data.max_bad_images={max_bad_images} unreadable images in {train_dir}")
    if n == 0:
        raise UserError(f"no readable training images in {train_dir}")
    if bad:
        print(f"stats: skipped {bad} unreadable images in {train_dir}")
    return stats_from_sums(pixel_sum, gram_sum, n)


def check_stats(stats, where, resize=None, channels=None):
    """Validate a stats dict's keys and shapes; UserError naming `where` otherwise."""
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise UserError(f"stats {where} lacks {missing}; recompute it with python -m dataloader.stats ROOT")
    c = stats["mean"].shape[0]
    if channels is not None and c != channels:
        raise UserError(f"stats {where} have {c} channels but the model takes {channels}")
    if resize is not None and tuple(stats["mean_image"].shape) != (c, resize, resize):
        raise UserError(f"stats {where} hold a mean image of shape {tuple(stats['mean_image'].shape)}, "
                        f"expected {(c, resize, resize)} for data.resize={resize}; recompute them")
    return stats


def save_stats(stats, path):
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(stats, f))


def load_stats(path):
    """Load a stats file with weights_only=True; missing or corrupt -> UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"stats file {path} does not exist; use data.stats=auto or imagenet, or make it "
                        "with python -m dataloader.stats ROOT")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, 0-byte, not a torch file, unsafe pickle
        raise UserError(f"cannot load stats file {path} ({type(e).__name__}); delete it to recompute") from None


def stats_path(root, resize, channels=3):
    """Where "auto" caches the stats: ROOT/stats_<R>.pt (ROOT/stats_<R>_gray.pt for 1 channel)."""
    return os.path.join(root, f"stats_{resize}{'_gray' if channels == 1 else ''}.pt")


def load_or_compute_stats(data_cfg, root, channels=3, progress=True, num_train=None):
    """The stats that data_cfg.stats asks for: "auto" (cached in ROOT, computed on first use), "imagenet", or a file.

    num_train: the number of training files now; a cache made from another count is recomputed
    (with data.bad_images=error, where every file counts).
    """
    mode = "L" if channels == 1 else "RGB"
    if data_cfg.stats == "imagenet":
        if channels != 3:
            raise UserError("data.stats=imagenet is for 3-channel input; use data.stats=auto with in_channels=1")
        return imagenet_stats(data_cfg.resize)
    if data_cfg.stats != "auto":
        return check_stats(load_stats(data_cfg.stats), data_cfg.stats, data_cfg.resize, channels)
    path = stats_path(root, data_cfg.resize, channels)
    if os.path.isfile(path):
        stats = check_stats(load_stats(path), path, data_cfg.resize, channels)
        if num_train is None or data_cfg.bad_images != "error" or stats["num_images"] == num_train:
            return stats
        print(f"{path} was computed from {stats['num_images']} images, train/ now has {num_train}: recomputing")
    stats = compute_stats(os.path.join(root, "train"), data_cfg.resize, data_cfg.workers, mode,
                          data_cfg.bad_images, data_cfg.max_bad_images, progress=progress)
    try:
        save_stats(stats, path)
    except OSError as e:  # read-only data folder: use the stats, recompute next time
        print(f"warning: could not cache stats at {path} ({e})")
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description="Compute mean image, channel mean/std and RGB PCA of ROOT/train.")
    p.add_argument("root", help="data root holding train/<class>/*")
    p.add_argument("--resize", type=int, default=256, help="shorter side, then central square (Sec. 2)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--gray", action="store_true", help="1-channel statistics (model.in_channels=1)")
    p.add_argument("--out", default="", help="output file (default ROOT/stats_<resize>.pt)")
    a = p.parse_args(argv)
    train = os.path.join(a.root, "train")
    if not os.path.isdir(train):
        raise UserError(f"{train} is not a folder; expected ROOT/train/<class>/<image>")
    stats = compute_stats(train, a.resize, a.workers, "L" if a.gray else "RGB")
    out = a.out or stats_path(a.root, a.resize, 1 if a.gray else 3)
    save_stats(stats, out)
    print(f"wrote {out}: {stats['num_images']} images, mean {stats['mean'].tolist()}, "
          f"std {stats['std'].tolist()}, eigval {stats['eigval'].tolist()}")


if __name__ == "__main__":
    run_main(main)
