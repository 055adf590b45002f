"""The prepared store: prepare (resume, verification, bad files), the batch loader, and equality with the
ImageFolder path (same order, same val inputs and metrics, same ten views)."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from alexnet.engine import Amp, evaluate
from alexnet.errors import UserError
from conftest import DEMO_CLASSES, DEMO_SIZE, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, tiny_data_cfg
from dataloader.folder import build_loaders
from dataloader.images import scan_root
from dataloader.demo import make_demo
from dataloader.prepare import load_resized, prepare, verify_store
from dataloader.stats import compute_stats
from dataloader.store import StoreSplit, build_store_loaders

N_TRAIN = DEMO_CLASSES * DEMO_TRAIN_PER_CLASS
N_VAL = DEMO_CLASSES * DEMO_VAL_PER_CLASS


@pytest.fixture(scope="module")
def store(demo_root, tmp_path_factory):
    """A raw store of the tiny demo set, prepared with 2 worker processes and 32-image chunks."""
    out = str(tmp_path_factory.mktemp("store") / "raw")
    prepare(demo_root, out, workers=2, fmt="raw", size=DEMO_SIZE, chunk_size=32, progress=False)
    return out


def _files(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def test_prepare_writes_every_image_exactly(store, demo_root):
    with open(os.path.join(store, "index.json")) as f:
        index = json.load(f)
    classes, train, val = scan_root(demo_root)
    assert index["num_images"] == {"train": N_TRAIN, "val": N_VAL} and index["class_names"] == classes
    for split, samples in (("train", train), ("val", val)):
        s = StoreSplit(store, split)
        assert (len(s), s.size, s.format) == (len(samples), DEMO_SIZE, "raw")
        assert s.labels.tolist() == [label for _, label in samples]
        want = np.stack([load_resized(p, DEMO_SIZE) for p, _ in samples])
        assert np.array_equal(s.read(np.arange(len(s))), want)          # the ImageFolder path's pixels
    assert os.path.getsize(os.path.join(store, "train.u8")) == N_TRAIN * DEMO_SIZE * DEMO_SIZE * 3
    assert not os.path.exists(os.path.join(store, ".work"))


def test_prepare_stats_equal_compute_stats(store, demo_root):
    ours = torch.load(os.path.join(store, "stats.pt"), weights_only=True)
    ref = compute_stats(os.path.join(demo_root, "train"), DEMO_SIZE, workers=0, progress=False)
    assert torch.equal(ours["mean_image"], ref["mean_image"]) and ours["num_images"] == ref["num_images"] == N_TRAIN
    for k in ("mean", "std", "eigval"):
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["eigvec"].abs(), ref["eigvec"].abs(), rtol=0, atol=1e-5)  # up to sign


def test_interrupted_prepare_resumes_to_the_same_bytes(store, demo_root, tmp_path):
    out = str(tmp_path / "resumed")
    assert prepare(demo_root, out, workers=0, size=DEMO_SIZE, chunk_size=32, progress=False, max_chunks=2) is None
    assert not os.path.exists(os.path.join(out, "index.json"))
    with pytest.raises(UserError, match="unfinished"):
        build_store_loaders(tiny_data_cfg(demo_root, store=out), batch_size=8, seed=0)
    with pytest.raises(UserError, match="other images or settings"):    # a resume with other settings
        prepare(demo_root, out, workers=0, size=40, chunk_size=32, progress=False)
    index = prepare(demo_root, out, workers=2, size=DEMO_SIZE, chunk_size=32, progress=False)
    assert index["num_images"]["train"] == N_TRAIN
    assert _files(out) == _files(store)                                 # identical to the uninterrupted run
    assert prepare(demo_root, out, size=DEMO_SIZE, progress=False)["key"] == index["key"]   # nothing to do


def test_verify_catches_a_changed_byte(store, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(store, out)
    assert verify_store(out) == -(-N_TRAIN // 32) + -(-N_VAL // 32)   # chunks of 32 images
    with open(os.path.join(out, "train.u8"), "r+b") as f:
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(UserError, match="chunk 0 does not match"):
        verify_store(out)


def test_jpeg_store_is_smaller_and_close(demo_root, store, tmp_path):
    out = str(tmp_path / "jpeg")
    prepare(demo_root, out, workers=0, fmt="jpeg", size=DEMO_SIZE, quality=90, progress=False)
    raw, jpg = StoreSplit(store, "val"), StoreSplit(out, "val")
    assert jpg.format == "jpeg" and len(jpg) == len(raw) and np.array_equal(jpg.labels, raw.labels)
    assert os.path.getsize(os.path.join(out, "val.jpg")) < os.path.getsize(os.path.join(store, "val.u8")) / 2
    idx = np.arange(len(raw))
    err = np.abs(jpg.read(idx).astype(np.int16) - raw.read(idx)).mean()
    assert 0 < err < 8              # noisy 48 px images: the worst case for JPEG


def test_unreadable_source_file_error_or_skip(tmp_path):
    root = str(tmp_path / "data")
    make_demo(root, seed=1, num_classes=2, train_per_class=4, val_per_class=2, size=32)
    bad = os.path.join(root, "train", "ring", sorted(os.listdir(os.path.join(root, "train", "ring")))[1])
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(UserError, match=os.path.basename(bad)):
        prepare(root, str(tmp_path / "err"), workers=0, size=32, progress=False)
    index = prepare(root, str(tmp_path / "skip"), workers=0, size=32, skip_bad=100, progress=False)
    assert index["num_images"]["train"] == 7 and index["skipped"]["train"] == 1
    labels = np.load(str(tmp_path / "skip" / "train_labels.npy"))
    assert labels.tolist() == [0, 0, 0, 0, 1, -1, 1, 1]
    loaders = build_store_loaders(tiny_data_cfg(root, store=str(tmp_path / "skip"), resize=32, crop=28),
                                  batch_size=7, seed=0)
    loaders.train_sampler.set_epoch(0)
    (x, y), = list(loaders.train)
    assert x.shape == (7, 3, 28, 28) and sorted(y.tolist()) == [0, 0, 0, 0, 1, 1, 1]


def test_same_order_as_the_image_folder_path_and_exact_mid_epoch_resume(store, demo_root):
    cfg = tiny_data_cfg(demo_root, store=store)
    ours = build_store_loaders(cfg, batch_size=16, seed=3)
    ref = build_loaders(dataclasses.replace(cfg, store=""), batch_size=16, seed=3)
    for loaders in (ours, ref):
        loaders.train_sampler.set_epoch(1)
    full = list(ours.train)
    assert len(full) == len(ours.train) == len(ref.train) == N_TRAIN // 16
    assert [y.tolist() for _, y in full] == [y.tolist() for _, y in ref.train]   # same permutation
    ours.train_sampler.set_epoch(1, skip_batches=3)
    tail = list(ours.train)
    assert len(tail) == len(ours.train) == len(full) - 3
    for (a, ya), (b, yb) in zip(tail, full[3:]):
        assert torch.equal(a, b) and torch.equal(ya, yb)                # same images, same augmentation
    ours.train_sampler.set_epoch(2)
    assert not torch.equal(next(iter(ours.train))[0], full[0][0])


def test_rank_sharding_covers_each_image_once(store, demo_root):
    cfg = tiny_data_cfg(demo_root, store=store)
    train, val = [], []
    for rank in range(3):
        loaders = build_store_loaders(cfg, batch_size=8, seed=0, rank=rank, world_size=3)
        loaders.train_sampler.set_epoch(0)
        train.append(np.concatenate([i for i, _ in loaders.train.batch_plan()]))
        val.append(np.concatenate([i for i, _ in loaders.val.batch_plan()]))
    flat = np.concatenate(train)
    assert len(flat) == 3 * ((N_TRAIN // 3) // 8 * 8) and len(set(flat.tolist())) == len(flat)
    assert sorted(np.concatenate(val).tolist()) == list(range(N_VAL))   # val: every image once, no padding


@pytest.mark.parametrize("crops", [1, 10])
def test_val_inputs_and_metrics_equal_the_image_folder_path(store, demo_root, crops):
    cfg = tiny_data_cfg(demo_root, store=store)
    ours = build_store_loaders(cfg, batch_size=16, seed=0, eval_crops=crops)
    ref = build_loaders(dataclasses.replace(cfg, store=""), batch_size=16, seed=0, eval_crops=crops)
    assert torch.equal(ours.stats["mean_image"], ref.stats["mean_image"])
    batches = list(ours.val)
    assert sum(len(y) for _, y in batches) == N_VAL
    for (a, ya), (b, yb) in zip(batches, ref.val):
        assert torch.equal(a, b) and torch.equal(ya, yb)                # ten views pixel for pixel too
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, DEMO_CLASSES))
    amp = Amp("none", "cpu")
    got, want = evaluate(model, ours.val, amp), evaluate(model, ref.val, amp)
    # Same pixels (above); the store's centre crops are channels_last, whose convolution sums in another
    # order: counts are exact, the loss equal to float rounding.
    assert (got["n"], got["top1"], got["top5"]) == (want["n"], want["top1"], want["top5"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_store_config_errors(store, demo_root, tmp_path):
    with pytest.raises(UserError, match="not a prepared store"):
        build_store_loaders(tiny_data_cfg(demo_root, store=str(tmp_path)), batch_size=8, seed=0)
    with pytest.raises(UserError, match="data.resize=40"):
        build_store_loaders(tiny_data_cfg(demo_root, store=store, resize=40, crop=32), batch_size=8, seed=0)
    with pytest.raises(UserError, match="fewer than one batch"):
        build_store_loaders(tiny_data_cfg(demo_root, store=store), batch_size=1000, seed=0)
