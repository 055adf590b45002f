"""Which images a rank sees, in which order, with which random seed; and the `Loaders` both data paths return.

Order and augmentation depend only on (seed, epoch): the training sampler yields (index, sample_seed)
pairs with sample_seed a pure function of (seed, epoch, index), and a batch's augmentation draws from
the sample seed of its first image (`dataloader.augment`). Neither the number of workers nor the step a
run was resumed at changes a batch.
"""
from dataclasses import dataclass, field

import torch


def sample_seed(seed, epoch, index):
    """A 63-bit seed that is a pure function of (seed, epoch, index) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


class ResumableSampler(torch.utils.data.Sampler):
    """Training order: a permutation of (seed, epoch), sharded by rank, resumable mid-epoch.

    DistributedSampler semantics with drop_last: the permutation is cut to a multiple of world_size
    and rank r takes positions r, r + world, ...; the loader then drops the last partial batch.
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


@dataclass
class Loaders:
    """What `build_loaders` (image folders) and `build_store_loaders` (prepared store) return.

    train / val yield ready batches on the training device: train (B, C, crop, crop) float, augmented;
    val (B, C, crop, crop) or, with ten views, (B, 10, C, crop, crop); targets (B,) long.
    """
    train: object
    val: object
    class_names: list
    stats: dict
    train_sampler: ResumableSampler
    class_labels: list = field(default_factory=list)  # human-readable names (synset mapping) or folder names
