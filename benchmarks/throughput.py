"""Images per second: the prepared store + batched device augmentation against the standard pipeline.

    python benchmarks/throughput.py [--data ROOT] [--device cpu|cuda] [--json FILE] [--workers N]
                                    [--batch-size B] [--steps N] [--images N] [--compile]

Measured in one run, on the same machine and the same images:
  model      the paper's AlexNet (1000 classes) training steps on synthetic batches already on the device
  loader     batches per second of the loader alone, with its augmentation
               store: dataloader.store (raw memmap and JPEG-in-one-file) + dataloader.augment:
                      random 224 crop, flip, PCA colour shift, mean-image subtraction (the paper's, Sec. 4.1)
               folder: dataloader.folder: DataLoader workers decode + resize to 256x256 uint8, then the
                      same batched augmentation on the device
               reference: torchvision ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor
                      + Normalize through a DataLoader with the same number of workers
  end-to-end training steps fed by each loader
and the ratios store / reference loader and end-to-end / model.

Without --data the benchmark writes ImageNet-sized JPEGs (about 500x375) cut from the sample photos that
ship with scikit-learn, randomly cropped, scaled and recoloured (pip install -r requirements-bench.txt).
The model runs channels_last on both devices, in bf16 autocast on CUDA (and torch.compile with --compile).
"""
import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet.config import DataConfig  # noqa: E402
from alexnet.cpu import tune_allocator  # noqa: E402
from alexnet.distributed import resolve_device  # noqa: E402
from alexnet.engine import Amp  # noqa: E402
from alexnet.errors import UserError, run_main  # noqa: E402
from alexnet.model import AlexNet  # noqa: E402
from dataloader.folder import build_loaders  # noqa: E402
from dataloader.prepare import prepare  # noqa: E402
from dataloader.stats import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dataloader.store import build_store_loaders  # noqa: E402


def sample_photos():
    """Paths of scikit-learn's sample photos (china.jpg, flower.jpg, 640x427)."""
    try:
        import sklearn.datasets
    except ImportError:
        raise UserError("the benchmark's source photos come with scikit-learn: "
                        "pip install -r requirements-bench.txt (or pass --data ROOT)") from None
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))


def make_images(root, n_train, n_val, classes=10, seed=0, threads=1):
    """ROOT/{train,val}/<class>/*.JPEG: about 500x375 JPEGs, each a random crop of a sample photo,
    scaled, mirrored and recoloured (gain per channel, brightness, contrast), quality 85-95. Image i of a
    split draws from its own random stream, so `threads` (PIL releases the GIL) changes nothing but the time."""
    photos = [Image.open(p).convert("RGB") for p in sample_photos()]
    for im in photos:
        im.load()

    def one(split, i):
        rng = random.Random(f"{seed}/{split}/{i}")
        im = photos[rng.randrange(len(photos))]
        w, h = im.size
        cw = rng.randint(w // 3, w)
        ch = min(h, max(h // 3, int(cw * rng.uniform(0.6, 1.0))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out_w = rng.randint(450, 500)
        out_h = min(500, max(300, int(out_w * ch / cw)))
        crop = im.crop((x, y, x + cw, y + ch)).resize((out_w, out_h), Image.BILINEAR)
        if rng.random() < 0.25:                     # some portrait images, as in ImageNet
            crop = crop.transpose(Image.Transpose.ROTATE_90)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = [rng.uniform(0.75, 1.25) for _ in range(3)]
        crop = Image.merge("RGB", [c.point(lambda v, g=g: min(255, int(v * g))) for c, g in zip(crop.split(), gains)])
        crop = ImageEnhance.Contrast(ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))).enhance(
            rng.uniform(0.7, 1.3))
        d = os.path.join(root, split, f"class{i % classes:02d}")
        os.makedirs(d, exist_ok=True)
        crop.save(os.path.join(d, f"{i:06d}.JPEG"), quality=rng.randint(85, 95))

    jobs = [(split, i) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(lambda job: one(*job), jobs))


def dir_stats(split_dir):
    """(number of files, mean bytes per file, mean width, mean height) of the JPEGs under split_dir."""
    sizes, dims = [], []
    for dirpath, _, files in os.walk(split_dir):
        for f in files:
            sizes.append(os.path.getsize(os.path.join(dirpath, f)))
            if len(dims) < 200:
                with Image.open(os.path.join(dirpath, f)) as im:
                    dims.append(im.size)
    return len(sizes), float(np.mean(sizes)), float(np.mean([d[0] for d in dims])), float(np.mean([d[1] for d in dims]))


ARCHS = ("paper", "torchvision")


def build_arch(arch, num_classes=1000):
    """"paper": this project's AlexNet (Sec. 3: two-group convolutions, LRN); "torchvision": torchvision's
    alexnet (the one-GPU layout, no LRN), for comparison."""
    if arch == "paper":
        return AlexNet(num_classes=num_classes)
    if arch == "torchvision":
        import torchvision
        return torchvision.models.alexnet(num_classes=num_classes)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


class Stepper:
    """One SGD training step (Sec. 5 settings) of AlexNet (`build_arch`), with the project's autocast."""

    def __init__(self, device, amp_mode, channels_last, compile_model, arch="paper"):
        torch.manual_seed(0)
        self.model = build_arch(arch).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if compile_model else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.device, self.amp, self.channels_last = device, Amp(amp_mode, device), channels_last

    def __call__(self, x, y):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.amp.autocast():
            loss = F.cross_entropy(self.net(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_forever(make_loader, set_epoch=None):
    """Cycle over epochs of a loader; yields (images, targets)."""
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from make_loader()
        epoch += 1


def rate(batches, n, batch_size, device, step=None, warmup=2):
    """Images/s over n batches, after `warmup` batches (workers started, buffers allocated)."""
    for _ in range(warmup):
        x, y = next(batches)
        if step is not None:
            step(x, y)
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        x, y = next(batches)
        if step is not None:
            step(x, y)
        elif device.type == "cuda":
            x.sum()                                              # make sure the batch exists on the device
    sync(device)
    return n * batch_size / (time.perf_counter() - t)


def reference_loader(root, batch_size, workers, device):
    """torchvision ImageFolder + RandomResizedCrop + flip + ToTensor + Normalize, the usual DataLoader."""
    import torchvision
    from torchvision import transforms as T
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = torchvision.datasets.ImageFolder(os.path.join(root, "train"), tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0)


def synthetic_batches(batch_size, device, classes=1000):
    """One fixed random batch (x (B, 3, 224, 224), y (B,)) on `device`, yielded forever: the model alone."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch_size, 3, 224, 224, device=device, generator=gen)
    y = torch.randint(0, classes, (batch_size,), device=device, generator=gen)
    return iter(lambda: (x, y), None)


def source_images(data, work, n_images, threads=1):
    """The ImageFolder ROOT to measure on: `data`, or `n_images` generated training JPEGs under `work`."""
    if data:
        return data
    root = os.path.join(work, "images")
    if not os.path.isdir(os.path.join(root, "train")):
        t = time.perf_counter()
        make_images(root, n_images, max(20, n_images // 20), threads=threads)
        print(f"wrote {n_images} training JPEGs to {root} in {time.perf_counter() - t:.0f} s")
    return root


def prepare_stores(root, work, workers, n_train, formats=("raw", "jpeg"), size=256):
    """Prepare one store per format from `root`. Returns ({fmt: store path}, {f"prepare_{fmt}": info})."""
    stores, info = {}, {}
    for fmt in formats:
        out = os.path.join(work, f"store_{fmt}")
        t = time.perf_counter()
        prepare(root, out, workers=workers, fmt=fmt, size=size, progress=False)
        dt = time.perf_counter() - t
        per_image = os.path.getsize(os.path.join(out, "train.u8" if fmt == "raw" else "train.jpg")) / n_train
        stores[fmt] = out
        info[f"prepare_{fmt}"] = {"bytes_per_image": per_image, "seconds": dt}
        print(f"store {fmt}: {per_image / 1e3:.1f} KB per image (prepared in {dt:.0f} s, {workers} workers)")
    return stores, info


def store_batches(store, batch_size, device, workers, **loader_kw):
    """Training batches of a prepared store (the paper's augmentation on `device`), epoch after epoch.
    Returns (batches, loaders)."""
    cfg = DataConfig(store=store, resize=256, crop=224, workers=workers)
    loaders = build_store_loaders(cfg, batch_size=batch_size, seed=0, device=device, **loader_kw)
    return batches_forever(lambda: loaders.train, loaders.train_sampler.set_epoch), loaders


def folder_batches(root, batch_size, device, workers):
    """Training batches of the image-folder path (dataloader.folder), epoch after epoch. Returns (batches, loaders)."""
    cfg = DataConfig(root=root, resize=256, crop=224, workers=workers)
    loaders = build_loaders(cfg, batch_size=batch_size, seed=0, device=device, channels_last=True)
    return batches_forever(lambda: loaders.train, loaders.train_sampler.set_epoch), loaders


def reference_batches(root, batch_size, workers, device):
    """Training batches of `reference_loader`, epoch after epoch."""
    ref = reference_loader(root, batch_size, workers, device)
    return batches_forever(lambda: ref)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="", help="an ImageFolder ROOT (default: generate JPEGs from sample photos)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--workers", type=int, default=2, help="loader workers (processes / threads) for both")
    p.add_argument("--batch-size", type=int, default=0, help="default: 32 on CPU, 256 on CUDA")
    p.add_argument("--steps", type=int, default=0, help="timed training steps (default: 6 on CPU, 100 on CUDA)")
    p.add_argument("--loader-batches", type=int, default=0, help="timed loader batches (default 20 / 200)")
    p.add_argument("--images", type=int, default=800, help="generated training images (without --data)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--work", default="", help="folder for generated images and stores (default: a temp dir)")
    p.add_argument("--no-tune-allocator", action="store_true",
                   help="keep glibc's allocator defaults (train.py tunes them on CPU: alexnet/cpu.py)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    if device.type == "cuda":
        device = resolve_device("cuda")                           # as train.py: cuDNN picks its fastest kernels
    cuda = device.type == "cuda"
    # As train.py does on CPU; forked DataLoader workers inherit it, so both pipelines run with it.
    tuned = not cuda and not a.no_tune_allocator and tune_allocator()
    bs = a.batch_size or (256 if cuda else 32)
    steps = a.steps or (100 if cuda else 6)
    loader_batches = a.loader_batches or (200 if cuda else 20)
    amp_mode = "bf16" if cuda else "none"
    work = a.work or tempfile.mkdtemp(prefix="alexnet_bench_")
    res = {"device": torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)",
           "torch": torch.__version__, "python": platform.python_version(), "batch_size": bs, "steps": steps,
           "workers": a.workers, "amp": "bf16" if cuda else "none", "channels_last": True, "compile": a.compile,
           "allocator_tuned": tuned}
    try:
        root = source_images(a.data, work, a.images, threads=a.workers)
        n, jpeg_bytes, w, h = dir_stats(os.path.join(root, "train"))
        res["source"] = {"images": n, "bytes_per_image": jpeg_bytes, "mean_size": [w, h]}
        print(f"source: {n} train JPEGs, mean {w:.0f}x{h:.0f}, {jpeg_bytes / 1e3:.0f} KB each")
        stores, info = prepare_stores(root, work, a.workers, n)
        res.update(info)

        # channels_last on both paths: the store's batches come in it; the reference's NCHW batches are
        # converted in the step (a cheap copy), so both feed the model the same layout.
        stepper = Stepper(device, amp_mode, True, a.compile)
        synthetic = synthetic_batches(bs, device)
        # The model alone is measured before and after each end-to-end run (A-B-A): on a shared machine the
        # load drifts, and each end-to-end figure is compared with the mean of its two neighbours.
        def model_alone():
            r = rate(synthetic, steps, bs, device, stepper, warmup=1)
            res.setdefault("model_runs", []).append(r)
            print(f"model alone:                 {r:8.1f} img/s")
            return r

        model_alone()

        for fmt, out in stores.items():
            feed, loaders = store_batches(out, bs, device, a.workers)
            res[f"store_{fmt}_loader"] = rate(feed, loader_batches, bs, device)
            print(f"store {fmt:4s} loader alone:      {res[f'store_{fmt}_loader']:8.1f} img/s")
            if fmt == "raw":
                feed, loaders = store_batches(out, bs, device, a.workers)
                res["store_raw_end_to_end"] = rate(feed, steps, bs, device, stepper, warmup=1)
                print(f"store raw  end-to-end:       {res['store_raw_end_to_end']:8.1f} img/s")
                model_alone()
            del feed, loaders

        feed, loaders = folder_batches(root, bs, device, a.workers)
        res["folder_loader"] = rate(feed, loader_batches, bs, device)
        print(f"folder loader alone:         {res['folder_loader']:8.1f} img/s")
        del feed, loaders

        feed = reference_batches(root, bs, a.workers, device)
        res["reference_loader"] = rate(feed, loader_batches, bs, device)
        print(f"reference loader alone:      {res['reference_loader']:8.1f} img/s")
        res["reference_end_to_end"] = rate(feed, steps, bs, device, stepper, warmup=1)
        print(f"reference end-to-end:        {res['reference_end_to_end']:8.1f} img/s")
        del feed
        model_alone()
        runs = res["model_runs"]
        res["model"] = sum(runs) / len(runs)

        res["ratios"] = {
            "store_raw_loader / reference_loader": res["store_raw_loader"] / res["reference_loader"],
            "store_jpeg_loader / reference_loader": res["store_jpeg_loader"] / res["reference_loader"],
            "folder_loader / reference_loader": res["folder_loader"] / res["reference_loader"],
            "store_raw_end_to_end / model": res["store_raw_end_to_end"] / ((runs[0] + runs[1]) / 2),
            "reference_end_to_end / model": res["reference_end_to_end"] / ((runs[1] + runs[2]) / 2),
        }
        for k, v in res["ratios"].items():
            print(f"ratio {k}: {v:.2f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
            print(f"wrote {a.json}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
