"""Train / val loaders for ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (ImageFolder layout).

    loaders = build_loaders(cfg.data, batch_size=per_rank, seed=cfg.train.seed, rank=r, world_size=w,
                            device=device, in_channels=cfg.model.in_channels)
    for epoch in ...:
        loaders.train_sampler.set_epoch(epoch, skip_batches=k)   # k > 0: resume in the middle of an epoch
        for images, targets in loaders.train: ...                # (B, C, crop, crop) float on `device`

DataLoader workers decode and resize (shorter side R, central R x R square) to uint8; a whole batch is then
augmented by `dataloader.augment` (the same code as the prepared store's): on the GPU when training on
one, else in the workers' collate step, so on the CPU the training process only trains (OpenMP threads
of a process that augments while waiting for workers spin and took half the workers' CPU: 163 against
358 images/s for the loader alone on 2 cores).
"""
import multiprocessing
import os

import torch
import torch.distributed as dist

from alexnet.config import as_data_config
from alexnet.errors import UserError
from dataloader.demo import make_demo
from dataloader.augment import EvalAugment, TrainAugment
from dataloader.images import BadImageError, class_labels, load_square, scan_root, scan_split
from dataloader.samplers import Loaders, ResumableSampler, ShardSampler
from dataloader.stats import load_or_compute_stats


class ImageDataset(torch.utils.data.Dataset):
    """Items: `index` or `(index, sample_seed)` -> (uint8 square (C, R, R), class index, sample_seed).

    bad_images="skip": an unreadable file is replaced by the next readable sample (deterministic)
    and counted once; past `max_bad` distinct bad files a UserError stops the run. The count is
    shared between worker processes (`bad_count`).
    """

    def __init__(self, samples, resize, mode="RGB", bad_images="error", max_bad=100):
        if bad_images not in ("error", "skip"):
            raise UserError(f"data.bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.samples, self.resize, self.mode = samples, resize, mode
        self.skip, self.max_bad = bad_images == "skip", max_bad
        self._bad = multiprocessing.Array("b", len(samples)) if self.skip else None  # one flag per file
        self._bad_count = multiprocessing.Value("i", 0) if self.skip else None

    def __len__(self):
        return len(self.samples)

    @property
    def bad_count(self):
        """Distinct unreadable files met so far (all workers)."""
        return self._bad_count.value if self.skip else 0

    def _mark_bad(self, i, err):
        with self._bad_count.get_lock():
            if not self._bad[i]:
                self._bad[i] = 1
                self._bad_count.value += 1
            if self._bad_count.value > self.max_bad:
                raise BadImageError(f"more than data.max_bad_images={self.max_bad} unreadable images; "
                                    f"last: {err}")

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            path, target = self.samples[i]
            if self.skip and self._bad[i]:
                continue
            try:
                image = load_square(path, self.resize, self.mode)
            except BadImageError as e:
                if not self.skip:
                    raise
                self._mark_bad(i, e)
                continue
            return image, target, seed
        raise UserError("no readable images left in the data set")


class AugmentCollate:
    """collate_fn that augments in the worker: items -> (augment(uint8 batch, seed of the first image), targets)."""

    def __init__(self, augment):
        self.augment = augment

    def __call__(self, items):
        images, targets, seeds = torch.utils.data.default_collate(items)
        return self.augment(images, int(seeds[0])), targets


class DeviceLoader:
    """Ready batches on `device` from a DataLoader of host batches. On the CPU the DataLoader's collate step
    has augmented them (`AugmentCollate`); elsewhere batches come as (uint8 (B, C, R, R), targets, sample
    seeds) and are augmented here, on the device. `augment`, `dataset` and `len()` are kept for callers."""

    def __init__(self, loader, augment, device):
        self.loader, self.augment, self.device = loader, augment, torch.device(device)
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.device.type == "cpu":
                yield batch                                             # augmented in the collate step
                continue
            images, targets, seeds = batch
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            yield self.augment(images, int(seeds[0])), targets


def _loader(ds, sampler, batch_size, workers, device, drop_last, seed, augment):
    """A DeviceLoader over `ds`; on the CPU the workers augment (see the module docstring)."""
    cpu = torch.device(device).type == "cpu"
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed), collate_fn=AugmentCollate(augment) if cpu else None)
    return DeviceLoader(loader, augment, device)


def _rank0_first(fn):
    """Run fn on rank 0 first and on the other ranks after it (demo generation, stats cache)."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and dist.get_rank() != 0:
        dist.barrier()
    out = fn()
    if distributed and dist.get_rank() == 0:
        dist.barrier()
    return out


def _ensure_demo(root):
    if not os.path.isdir(root) or not os.listdir(root):
        print(f"generating the demo dataset in {root}")
        make_demo(root)


def _mode(in_channels):
    if in_channels not in (1, 3):
        raise UserError(f"model.in_channels must be 1 or 3 for image folders, got {in_channels}")
    return "L" if in_channels == 1 else "RGB"


def build_loaders(data_cfg, *, batch_size, seed, rank=0, world_size=1, device="cpu", eval_crops=1, in_channels=3,
                  channels_last=False):
    """Build the train and val loaders of data_cfg.root.

    Args:
        data_cfg: DataConfig (or dict). With data_cfg.demo and a missing or empty root, the demo set
            is generated there first.
        batch_size: PER RANK.
        seed: order and augmentation seed (same seed, same batches).
        rank, world_size: sharding; train drops the remainder, val shards without padding.
        device: where batches are augmented and delivered (pinned host memory when it is CUDA).
        eval_crops: 1 (centre view, val batches (B, C, crop, crop)) or 10 (val batches (B, 10, C, crop, crop)).
        in_channels: 3 (RGB) or 1 (images converted to grayscale "L").
        channels_last: deliver 4-D batches in channels_last memory.
    Returns:
        Loaders(train, val, class_names, stats, train_sampler, class_labels).
    """
    cfg = as_data_config(data_cfg)
    mode = _mode(in_channels)
    if cfg.demo:
        if not cfg.root:
            raise UserError("data.demo=true needs data.root, the folder to write the demo set to")
        _rank0_first(lambda: _ensure_demo(cfg.root))
    class_names, train_samples, val_samples = scan_root(cfg.root)
    stats = _rank0_first(lambda: load_or_compute_stats(cfg, cfg.root, in_channels, progress=rank == 0,
                                                     num_train=len(train_samples)))
    train_ds = ImageDataset(train_samples, cfg.resize, mode, cfg.bad_images, cfg.max_bad_images)
    val_ds = ImageDataset(val_samples, cfg.resize, mode, cfg.bad_images, cfg.max_bad_images)
    if len(train_ds) // world_size < batch_size:
        raise UserError(f"{len(train_ds)} training images give fewer than one batch of {batch_size} per rank "
                        f"over {world_size} ranks; lower the batch size")
    sampler = ResumableSampler(len(train_ds), batch_size, seed, rank, world_size)
    train = _loader(train_ds, sampler, batch_size, cfg.workers, device, True, seed,
                    TrainAugment(stats, cfg, device, channels_last))
    val = _loader(val_ds, ShardSampler(len(val_ds), rank, world_size), batch_size, cfg.workers, device, False, seed,
                  EvalAugment(stats, cfg, device, channels_last, eval_crops))
    return Loaders(train, val, class_names, stats, sampler, class_labels(class_names, cfg.synset_mapping))


def build_eval_loader(split_dir, class_names, stats, data_cfg, batch_size, crops=1, rank=0, world_size=1,
                      device="cpu", channels_last=False):
    """Loader of ready batches over one split for evaluation. Returns (loader, class_names).

    split_dir: a data root (its val/ is used) or a folder of class folders. class_names: the
    checkpoint's list (folder classes are mapped to its indices by name; a folder class it does not
    know is an error) or None (the folder's sorted classes). The images are read with the channel count
    of `stats` (3: RGB, 1: grayscale).
    """
    cfg = as_data_config(data_cfg)
    if not os.path.isdir(split_dir):
        raise UserError(f"data folder {split_dir} does not exist; expected ROOT (with val/) or a folder "
                        "of class folders <class>/<image>")
    if os.path.isdir(os.path.join(split_dir, "val")):
        split_dir = os.path.join(split_dir, "val")
    folder_classes, samples = scan_split(split_dir)
    if class_names is None:
        class_names = folder_classes
    else:
        class_names = list(class_names)
        unknown = sorted(set(folder_classes) - set(class_names))
        if unknown:
            raise UserError(f"classes in {split_dir} that the checkpoint does not know: {unknown[:20]}"
                            f"{' ...' if len(unknown) > 20 else ''}")
        to_ckpt = [class_names.index(c) for c in folder_classes]
        samples = [(p, to_ckpt[i]) for p, i in samples]
    ds = ImageDataset(samples, cfg.resize, _mode(len(stats["mean"])), cfg.bad_images, cfg.max_bad_images)
    loader = _loader(ds, ShardSampler(len(ds), rank, world_size), batch_size, cfg.workers, device, False, 0,
                     EvalAugment(stats, cfg, device, channels_last, crops))
    return loader, class_names
