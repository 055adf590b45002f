"""Loading batches, not images, from a store made by `python -m dataloader.prepare ROOT OUT`.

    loaders = build_store_loaders(cfg.data, batch_size=per_rank, seed=cfg.train.seed, device=device)
    for images, targets in loaders.train: ...   # (B, 3, crop, crop) float on `device`, augmented; (B,) long

Per batch: background threads (`data.workers` batches in flight) read whole batches (one gather from the
memory map, or the JPEG decodes of the batch) into pinned memory while the current batch trains; a batch
goes to the device as uint8 (4x less than float; on CUDA on a side stream, one batch ahead) and is
augmented there, batched (`dataloader.augment`: crop, flip, PCA colour shift, mean subtraction,
channels_last), by the same code as the image-folder path. On the CPU the reading threads augment too,
so the training thread only trains.

Order and sharding: `dataloader.samplers` (the same permutation for the same (seed, epoch),
`set_epoch(epoch, skip_batches)` for a mid-epoch resume). A batch's augmentation is seeded by the sample
seed of its first image, a pure function of (seed, epoch, index): a resumed run draws the same crops,
flips and colour shifts.

JPEG stores on CUDA: the reading threads only slice each image's bytes out of the store; the whole batch
is decoded on the GPU by nvjpeg (`JpegDecoder`, one batch ahead on the side stream). Without CUDA, or
after the first nvjpeg error (one warning), the reading threads decode on the CPU as before.
"""
import collections
import json
import math
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alexnet.config import as_data_config
from alexnet.errors import UserError
from dataloader.augment import EvalAugment, TrainAugment
from dataloader.images import class_labels, decode_jpeg
from dataloader.samplers import Loaders, ResumableSampler, ShardSampler
from dataloader.stats import check_stats, imagenet_stats, load_stats

PREPARE = "make it with: python -m dataloader.prepare ROOT STORE"


class StoreSplit:
    """One split of a prepared store: `len()`, `labels` (N,) int64 (-1: skipped), `read(indices)`.

    Args:
        root: the store folder; split: "train" or "val".
    """

    def __init__(self, root, split):
        self.root, self.split = root, split
        self.labels = np.load(os.path.join(root, f"{split}_labels.npy"))
        n = len(self.labels)
        raw, jpg = os.path.join(root, f"{split}.u8"), os.path.join(root, f"{split}.jpg")
        if os.path.isfile(raw):
            self.format = "raw"
            per = os.path.getsize(raw) // max(n, 1)
            self.size = int(round(math.sqrt(per / 3)))
            if n * self.size * self.size * 3 != os.path.getsize(raw):
                raise UserError(f"store file {raw} has {os.path.getsize(raw)} bytes, not {n} square RGB images; "
                                f"delete the store and {PREPARE}")
            self.data = np.memmap(raw, np.uint8, "r", shape=(n, self.size, self.size, 3))
        elif os.path.isfile(jpg):
            self.format = "jpeg"
            self.offsets = np.load(os.path.join(root, f"{split}_offsets.npy"))
            self.data = np.memmap(jpg, np.uint8, "r") if self.offsets[-1] > 0 else np.zeros(0, np.uint8)
            first = int(np.argmax(np.diff(self.offsets) > 0))
            self.size = self._decode(first).shape[0]
        else:
            raise UserError(f"store {root} has no {split}.u8 or {split}.jpg; {PREPARE}")

    def __len__(self):
        return len(self.labels)

    def _decode(self, i):
        return decode_jpeg(self.data[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def blobs(self, indices):
        """The encoded bytes of images `indices` of a jpeg store: [1-D uint8 CPU tensor] (copies, not views)."""
        o = self.offsets
        return [torch.from_numpy(np.array(self.data[o[i]:o[i + 1]])) for i in np.asarray(indices, np.int64)]

    def read(self, indices, out=None, pool=None):
        """Images `indices` as uint8 (B, R, R, 3), written into `out` (a (B, R, R, 3) array) when given.

        pool: an optional ThreadPoolExecutor spreading the JPEG decodes of one batch over threads.
        """
        indices = np.asarray(indices, np.int64)
        if out is None:
            out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        if self.format == "raw":
            np.take(self.data, indices, axis=0, out=out)                 # one gather, no per-image Python
            return out

        def decode(k):
            out[k] = self._decode(indices[k])
        if pool is None:
            for k in range(len(indices)):
                decode(k)
        else:
            list(pool.map(decode, range(len(indices))))
        return out


class JpegDecoder:
    """Decodes whole batches of JPEG bytes into uint8 (B, 3, R, R) on `device`.

    On CUDA, one `torchvision.io.decode_jpeg(list, device=...)` call per batch (nvjpeg, on the current
    stream: the store loader's side stream). Elsewhere, or after the first failure (a warning, once; e.g. a torchvision
    built without nvjpeg), the CPU decode of `dataloader.images.decode_jpeg` (PIL), then a copy.
    gpu: force the torchvision path on or off (None: on exactly when `device` is CUDA and available).
    """

    def __init__(self, device, gpu=None):
        self.device = torch.device(device)
        self.gpu = (self.device.type == "cuda" and torch.cuda.is_available()) if gpu is None else bool(gpu)

    def __call__(self, blobs):
        if self.gpu:
            try:
                return torch.stack(self._decode_torchvision(blobs))
            except Exception as e:  # any nvjpeg or build problem: the CPU decode still works
                self.gpu = False
                warnings.warn(f"GPU JPEG decoding failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
                              "decoding JPEG stores on the CPU from now on", RuntimeWarning, stacklevel=2)
        return self.decode_cpu(blobs).to(self.device)

    def _decode_torchvision(self, blobs):
        from torchvision.io import ImageReadMode, decode_jpeg as tv_decode_jpeg
        return tv_decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device)

    @staticmethod
    def decode_cpu(blobs):
        """[1-D uint8 tensor] -> uint8 (B, 3, R, R) CPU, channels_last memory: the CPU path's pixels."""
        nhwc = np.stack([decode_jpeg(b.numpy().tobytes()) for b in blobs])
        return torch.from_numpy(nhwc).permute(0, 3, 1, 2)


class StoreLoader:
    """Iterable of augmented batches `(images (B, 3, crop, crop) float, targets (B,) long)` on `device`.

    Args:
        split: a StoreSplit; positions: (M,) store indices the sampler's 0..M-1 stand for (skips -1 labels).
        sampler: ResumableSampler (yields (position, sample_seed)) or ShardSampler (yields positions).
        batch_size, drop_last: as a DataLoader's.
        augment: TrainAugment or EvalAugment, called as augment(uint8 (B, 3, R, R) on device, batch seed).
        device: where batches go; on CUDA pinned memory, and the copy, decode and augmentation on a side
            stream driven by the reader thread.
        workers: decode threads (jpeg stores). prefetch: batches read ahead.
        gpu_decode: jpeg stores on CUDA: decode whole batches with nvjpeg (`JpegDecoder`); None: when available.
    """

    def __init__(self, split, positions, sampler, batch_size, augment, device="cpu", drop_last=False,
                 workers=2, prefetch=3, gpu_decode=None):
        self.dataset, self.positions, self.sampler = split, np.asarray(positions, np.int64), sampler
        self.batch_size, self.augment, self.drop_last = batch_size, augment, drop_last
        self.device = torch.device(device)
        self.workers, self.prefetch = max(1, workers), max(1, prefetch)
        cuda_jpeg = split.format == "jpeg" and self.device.type == "cuda" and gpu_decode is not False
        self.decoder = JpegDecoder(self.device) if cuda_jpeg else None

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_plan(self):
        """[(store indices (B,) int64, batch seed)] of this pass, in order (the sampler's epoch and skip)."""
        plan, items = [], list(self.sampler)
        for s in range(0, len(items), self.batch_size):
            part = items[s:s + self.batch_size]
            if len(part) < self.batch_size and self.drop_last:
                break
            if isinstance(part[0], tuple):
                pos, seed = [p for p, _ in part], part[0][1]      # the first image's sample seed
            else:
                pos, seed = part, 0
            plan.append((self.positions[pos], seed))
        return plan

    def __iter__(self):
        return _StoreIterator(self)


class _StoreIterator:
    """One pass: a reader thread fills a queue with finished batches; __next__ hands them over.

    CPU: pool threads read and augment. CUDA: pool threads read into pinned memory (or only fetch the JPEG
    bytes); the reader thread then copies (or nvjpeg-decodes) and augments each batch on a side stream and
    records an event, so the training thread neither waits for a copy or a decode nor launches the
    augmentation, and the GPU runs it beside the previous step; __next__ makes the training stream wait
    for the event.
    """

    def __init__(self, loader):
        self.loader = loader
        self.cuda = loader.device.type == "cuda"
        self.queue = queue.Queue(maxsize=loader.prefetch)
        self.stop = threading.Event()
        self.side_stream = torch.cuda.Stream(loader.device) if self.cuda else None
        if self.cuda:   # the augmentation's constants (mean image, ...) were made on the training stream
            self.side_stream.wait_stream(torch.cuda.current_stream(loader.device))
        self.thread = threading.Thread(target=self._read_all, args=(loader.batch_plan(),), daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _make(self, indices, seed):
        """One host batch: read (+ on the CPU, augment), or for nvjpeg only the JPEG bytes. Runs in a pool thread."""
        ld = self.loader
        targets = torch.from_numpy(ld.dataset.labels[indices])
        if ld.decoder is not None and ld.decoder.gpu:
            return ld.dataset.blobs(indices), targets, seed             # decoded on the GPU by _finish
        buf = torch.empty((len(indices), ld.dataset.size, ld.dataset.size, 3), dtype=torch.uint8,
                          pin_memory=self.cuda)
        ld.dataset.read(indices, buf.numpy())
        images = buf.permute(0, 3, 1, 2)                                  # (B, 3, R, R), channels_last memory
        if not self.cuda:  # on the CPU these threads are "the device": augment here, off the training thread
            images = ld.augment(images, seed)
        return images, targets, seed

    def _finish(self, item):
        """CUDA, in the reader thread: copy (or decode) and augment one host batch on the side stream.
        Returns (images, targets, event): the batch is ready on the device once `event` has passed."""
        images, targets, seed = item
        ld = self.loader
        with torch.cuda.stream(self.side_stream):
            if isinstance(images, list):
                images = ld.decoder(images)
            else:
                images = images.to(ld.device, non_blocking=True)
            images = ld.augment(images, seed)
            targets = targets.to(ld.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side_stream)
        return images, targets, event

    def _read_all(self, plan):
        """Reader thread: `workers` batches in flight in a thread pool (reads, JPEG decodes and torch ops
        release the GIL), handed over in order (on CUDA, finished on the device first)."""
        ld = self.loader
        pending = collections.deque()

        def hand_over(item):
            return self._put(self._finish(item) if self.cuda else item)
        try:
            if self.cuda and ld.device.index is not None:
                torch.cuda.set_device(ld.device.index)                   # a new thread starts on GPU 0
            with ThreadPoolExecutor(ld.workers) as pool:
                for indices, seed in plan:
                    pending.append(pool.submit(self._make, indices, seed))
                    if len(pending) >= ld.workers and not hand_over(pending.popleft().result()):
                        return
                    if self.stop.is_set():
                        return
                while pending:
                    if not hand_over(pending.popleft().result()):
                        return
            self._put(None)
        except BaseException as e:  # hand it to the training thread, which re-raises it
            self._put(e)
        finally:
            for f in pending:
                f.cancel()

    def _get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def __iter__(self):
        return self

    def __next__(self):
        item = self._get()
        if item is None:
            self.close()
            raise StopIteration
        if not self.cuda:
            return item[0], item[1]
        images, targets, event = item
        current = torch.cuda.current_stream(self.loader.device)
        current.wait_event(event)                                    # copied and augmented on the side stream
        images.record_stream(current)                                # their memory is in use on `current`
        targets.record_stream(current)
        return images, targets

    def close(self):
        self.stop.set()

    def __del__(self):
        self.close()




def _read_index(store):
    path = os.path.join(store, "index.json")
    if not os.path.isfile(path):
        if os.path.isdir(os.path.join(store, ".work")):
            raise UserError(f"store {store} is unfinished (an interrupted prepare); rerun the same "
                            "python -m dataloader.prepare ROOT STORE command to finish it")
        raise UserError(f"{store} is not a prepared store (no index.json); {PREPARE}")
    with open(path) as f:
        return json.load(f)


def store_stats(data_cfg, store, size):
    """data.stats for a store: "auto" -> the store's own stats.pt (made by prepare), "imagenet", or a file."""
    if data_cfg.stats == "imagenet":
        return imagenet_stats(size)
    path = os.path.join(store, "stats.pt") if data_cfg.stats == "auto" else data_cfg.stats
    return check_stats(load_stats(path), path, size, 3)


def build_store_loaders(data_cfg, *, batch_size, seed, rank=0, world_size=1, device="cpu", eval_crops=1,
                        in_channels=3, channels_last=False):
    """The train / val loaders of the prepared store at data_cfg.store.

    Args as `dataloader.folder.build_loaders`; batch_size is PER RANK.
    Returns Loaders whose batches arrive augmented on `device`.
    """
    cfg = as_data_config(data_cfg)
    store = cfg.store
    index = _read_index(store)
    size = index["size"]
    if in_channels != 3:
        raise UserError(f"a prepared store holds RGB images; model.in_channels={in_channels} needs the "
                        "ImageFolder path (data.store='')")
    if cfg.resize != size:
        raise UserError(f"data.resize={cfg.resize} but the store {store} holds {size}x{size} images; set "
                        f"data.resize={size} or prepare the store with --size {cfg.resize}")
    if cfg.crop > size:
        raise UserError(f"data.crop={cfg.crop} is larger than the store's {size}x{size} images")
    stats = store_stats(cfg, store, size)
    train, val = StoreSplit(store, "train"), StoreSplit(store, "val")
    train_pos, val_pos = np.flatnonzero(train.labels >= 0), np.flatnonzero(val.labels >= 0)
    if len(train_pos) // world_size < batch_size:
        raise UserError(f"{len(train_pos)} training images give fewer than one batch of {batch_size} per rank "
                        f"over {world_size} ranks; lower the batch size")
    sampler = ResumableSampler(len(train_pos), batch_size, seed, rank, world_size)
    train_loader = StoreLoader(train, train_pos, sampler, batch_size, TrainAugment(stats, cfg, device, channels_last),
                               device, True, cfg.workers)
    val_loader = _eval_loader(val, EvalAugment(stats, cfg, device, channels_last, eval_crops), batch_size, rank,
                              world_size, device, cfg.workers)
    class_names = index["class_names"]
    return Loaders(train_loader, val_loader, class_names, stats, sampler, class_labels(class_names, cfg.synset_mapping))


def _eval_loader(split, augment, batch_size, rank, world_size, device, workers):
    """Loader of a store split for evaluation (`augment`: an EvalAugment); each image once over all ranks."""
    pos = np.flatnonzero(split.labels >= 0)
    return StoreLoader(split, pos, ShardSampler(len(pos), rank, world_size), batch_size, augment, device, False,
                       workers)


def build_store_eval_loader(store, stats, data_cfg, batch_size, crops=1, rank=0, world_size=1, device="cpu",
                            channels_last=False):
    """The val split of a prepared store for evaluate.py, preprocessed with the checkpoint's stats and config.

    Returns (loader, class_names of the store). Batches as `build_store_loaders`' val loader.
    """
    cfg = as_data_config(data_cfg)
    index = _read_index(store)
    if cfg.resize != index["size"]:
        raise UserError(f"the checkpoint was trained at data.resize={cfg.resize} but the store {store} holds "
                        f"{index['size']}x{index['size']} images; prepare it with --size {cfg.resize}")
    loader = _eval_loader(StoreSplit(store, "val"), EvalAugment(stats, cfg, device, channels_last, crops), batch_size,
                          rank, world_size, device, cfg.workers)
    return loader, list(index["class_names"])
