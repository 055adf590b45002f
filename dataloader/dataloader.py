"""Train / val loaders for ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (ImageFolder layout).

    loaders = build_loaders(cfg.data, batch_size=per_rank, seed=cfg.train.seed, rank=r, world_size=w,
                            device=device, eval_crops=1, in_channels=cfg.model.in_channels)
    for epoch in ...:
        loaders.train_sampler.set_epoch(epoch, skip_batches=k)   # k > 0: resume in the middle of an epoch
        for images, targets in loaders.train: ...                # (B, C, crop, crop) float, (B,) long

Reproducibility: the sampler yields (index, sample_seed) pairs with sample_seed a pure function of
(seed, epoch, index); the dataset seeds a torch.Generator with it for the crop, the flip and the PCA
colour shift. Order and augmentation therefore depend only on (seed, epoch), never on the number of
workers or on where a run was resumed.
"""
import multiprocessing
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from alexnet.config import DataConfig
from alexnet.errors import UserError
from dataloader.images import BadImageError, is_image_file, open_image
from dataloader.stats import load_or_compute_stats
from dataloader.transforms import EvalTransform, TrainTransform

LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"


# ---------------------------------------------------------------- folders and class names

def find_classes(split_dir):
    """Sorted non-hidden sub-folder names of `split_dir` (a hidden folder is never a class)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_images(split_dir, class_names):
    """[(path, class_index)] of the image files under split_dir/<class>/ (recursively; hidden entries skipped)."""
    samples = []
    for idx, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            samples += [(os.path.join(dirpath, f), idx) for f in sorted(filenames) if is_image_file(f)]
    return samples


def _scan_split(split_dir):
    classes = find_classes(split_dir)
    if not classes:
        raise UserError(f"{split_dir} holds no class folders; {LAYOUT}")
    samples = list_images(split_dir, classes)
    counts = [0] * len(classes)
    for _, i in samples:
        counts[i] += 1
    empty = [c for c, k in zip(classes, counts) if k == 0]
    if empty:
        raise UserError(f"class folders without images in {split_dir}: {', '.join(empty)}; "
                        "add images or remove them (an empty class would shift every later class index)")
    return classes, samples


def scan_root(root):
    """Check ROOT's layout; return (class_names, train_samples, val_samples). Errors name the path."""
    if not root:
        raise UserError(f"no data root given; set data.root (or --data); {LAYOUT}")
    if not os.path.isdir(root):
        raise UserError(f"data root {root} does not exist; {LAYOUT} (or set data.demo=true for the demo set)")
    missing = [s for s in ("train", "val") if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise UserError(f"data root {root} has no {' or '.join(s + '/' for s in missing)} folder; {LAYOUT}")
    train_classes, train = _scan_split(os.path.join(root, "train"))
    val_classes, val = _scan_split(os.path.join(root, "val"))
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise UserError(f"train and val classes differ in {root}: only in train: {only_t or 'none'}; "
                        f"only in val: {only_v or 'none'}")
    return train_classes, train, val


def read_synsets(path):
    """ImageNet's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca" per line) -> {wnid: name}."""
    if not os.path.isfile(path):
        raise UserError(f"synset mapping file {path} does not exist")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return out


# ---------------------------------------------------------------- dataset and samplers

def sample_seed(seed, epoch, index):
    """A 63-bit seed that is a pure function of (seed, epoch, index) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


class ImageDataset(torch.utils.data.Dataset):
    """Items: `index` or `(index, sample_seed)` -> (transformed image tensor, class index).

    bad_images="skip": an unreadable file is replaced by the next readable sample (deterministic)
    and counted once; past `max_bad` distinct bad files a UserError stops the run. The count is
    shared between worker processes (`bad_count`).
    """

    def __init__(self, samples, transform, mode="RGB", bad_images="error", max_bad=100):
        if bad_images not in ("error", "skip"):
            raise UserError(f"data.bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.samples, self.transform, self.mode = samples, transform, mode
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
        g = torch.Generator().manual_seed(seed)
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            path, target = self.samples[i]
            if self.skip and self._bad[i]:
                continue
            try:
                im = open_image(path, self.mode)
            except BadImageError as e:
                if not self.skip:
                    raise
                self._mark_bad(i, e)
                continue
            return self.transform(im, g), target
        raise UserError("no readable images left in the data set")


class ResumableSampler(torch.utils.data.Sampler):
    """Training order: a permutation of (seed, epoch), sharded by rank, resumable mid-epoch.

    DistributedSampler semantics with drop_last: the permutation is cut to a multiple of world_size
    and rank r takes positions r, r + world, ...; the DataLoader then drops the last partial batch.
    set_epoch(epoch, skip_batches=k) skips this rank's first k batches (mid-epoch resume), so the
    batches that follow are exactly the tail of the full epoch. Yields (index, sample_seed).
    """

    def __init__(self, n, batch_size, seed=0, rank=0, world_size=1, shuffle=True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.skip_batches = 0, 0
        self.per_rank = n // world_size  # samples per rank per epoch (drop_last)

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def batches_per_epoch(self):
        return self.per_rank // self.batch_size

    def __len__(self):
        return max(0, self.per_rank - self.skip_batches * self.batch_size)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[:self.per_rank * self.world_size][self.rank::self.world_size]
        for i in mine[self.skip_batches * self.batch_size:]:
            yield i, sample_seed(self.seed, self.epoch, i)


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation order: indices rank, rank + world, ... with no padding (every image once over all ranks)."""

    def __init__(self, n, rank=0, world_size=1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))


# ---------------------------------------------------------------- loaders

@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    class_names: list
    stats: dict
    train_sampler: ResumableSampler
    class_labels: list = field(default_factory=list)  # human-readable names (synset mapping) or folder names
    train_transform: object = None  # device-side batch transforms (prepared store only)
    val_transform: object = None


def as_data_config(data_cfg):
    """Accept the DataConfig dataclass or a dict of its fields."""
    return DataConfig(**data_cfg) if isinstance(data_cfg, dict) else data_cfg


def _is_cuda(device):
    return torch.device(device).type == "cuda"


def _loader(ds, sampler, batch_size, workers, device, drop_last, seed):
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=_is_cuda(device), persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))


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
    from dataloader.demo import make_demo
    if not os.path.isdir(root) or not os.listdir(root):
        print(f"generating the demo dataset in {root}")
        make_demo(root)


def build_loaders(data_cfg, *, batch_size, seed, rank=0, world_size=1, device="cpu", eval_crops=1, in_channels=3):
    """Build the train and val loaders of data_cfg.root.

    Args:
        data_cfg: DataConfig (or dict). With data_cfg.demo and a missing or empty root, the demo set
            is generated there first.
        batch_size: PER RANK.
        seed: order and augmentation seed (same seed, same batches).
        rank, world_size: sharding; train drops the remainder, val shards without padding.
        device: pin_memory when it is CUDA.
        eval_crops: 1 (centre view, val batches (B, C, crop, crop)) or 10 (val batches (B, 10, C, crop, crop)).
        in_channels: 3 (RGB) or 1 (images converted to grayscale "L").
    Returns:
        Loaders(train, val, class_names, stats, train_sampler, class_labels).
    """
    cfg = as_data_config(data_cfg)
    if in_channels not in (1, 3):
        raise UserError(f"model.in_channels must be 1 or 3 for image folders, got {in_channels}")
    if cfg.crop > cfg.resize:
        raise UserError(f"data.crop={cfg.crop} is larger than data.resize={cfg.resize}")
    if cfg.demo:
        if not cfg.root:
            raise UserError("data.demo=true needs data.root, the folder to write the demo set to")
        _rank0_first(lambda: _ensure_demo(cfg.root))
    class_names, train_samples, val_samples = scan_root(cfg.root)
    stats = _rank0_first(lambda: load_or_compute_stats(cfg, cfg.root, in_channels, progress=rank == 0,
                                                     num_train=len(train_samples)))
    mode = "L" if in_channels == 1 else "RGB"
    train_ds = ImageDataset(train_samples, TrainTransform(cfg, stats), mode, cfg.bad_images, cfg.max_bad_images)
    val_ds = ImageDataset(val_samples, EvalTransform(cfg, stats, eval_crops), mode, cfg.bad_images,
                          cfg.max_bad_images)
    if len(train_ds) // world_size < batch_size:
        raise UserError(f"{len(train_ds)} training images give fewer than one batch of {batch_size} per rank "
                        f"over {world_size} ranks; lower the batch size")
    sampler = ResumableSampler(len(train_ds), batch_size, seed, rank, world_size)
    train = _loader(train_ds, sampler, batch_size, cfg.workers, device, True, seed)
    val = _loader(val_ds, ShardSampler(len(val_ds), rank, world_size), batch_size, cfg.workers, device, False, seed)
    labels = class_names
    if cfg.synset_mapping:
        names = read_synsets(cfg.synset_mapping)
        labels = [names.get(c, c) for c in class_names]
    return Loaders(train, val, class_names, stats, sampler, labels)


def build_eval_loader(split_dir, class_names, stats, data_cfg, batch_size, crops=1, rank=0, world_size=1,
                      in_channels=3, device="cpu"):
    """Loader over one split for evaluate.py. Returns (loader, class_names).

    split_dir: a data root (its val/ is used) or a folder of class folders. class_names: the
    checkpoint's list (folder classes are mapped to its indices by name; a folder class it does not
    know is an error) or None (the folder's sorted classes).
    """
    cfg = as_data_config(data_cfg)
    if not os.path.isdir(split_dir):
        raise UserError(f"data folder {split_dir} does not exist; expected ROOT (with val/) or a folder "
                        "of class folders <class>/<image>")
    if os.path.isdir(os.path.join(split_dir, "val")):
        split_dir = os.path.join(split_dir, "val")
    folder_classes, samples = _scan_split(split_dir)
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
    mode = "L" if in_channels == 1 else "RGB"
    ds = ImageDataset(samples, EvalTransform(cfg, stats, crops), mode, cfg.bad_images, cfg.max_bad_images)
    loader = _loader(ds, ShardSampler(len(ds), rank, world_size), batch_size, cfg.workers, device, False, 0)
    return loader, class_names
