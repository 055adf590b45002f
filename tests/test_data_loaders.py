"""build_loaders / build_eval_loader: layout errors, determinism, mid-epoch resume, rank sharding."""
import os
import shutil

import pytest
import torch

from alexnet.errors import UserError
from conftest import DEMO_CLASSES, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, tiny_data_cfg
from dataloader.folder import ImageDataset, build_eval_loader, build_loaders
from dataloader.images import read_synsets, scan_root
from dataloader.samplers import ResumableSampler, ShardSampler, sample_seed
from dataloader.demo import make_demo
from dataloader.stats import load_stats


def _batches(loader, n=None):
    out = []
    for i, (x, y) in enumerate(loader):
        if n is not None and i == n:
            break
        out.append((x, y))
    return out


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def _small_root(tmp_path, demo_root, classes=("circle", "square", "star"), per_class=2):
    """A copy of a few demo images: ROOT/{train,val}/<class>/ with `per_class` files each."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for c in classes:
            src = os.path.join(demo_root, split, c)
            os.makedirs(root / split / c)
            for f in sorted(os.listdir(src))[:per_class]:
                shutil.copy(os.path.join(src, f), root / split / c / f)
    return root


def test_shapes_classes_and_stats_cache(demo_root):
    L = build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=0)
    assert len(L.class_names) == DEMO_CLASSES and L.class_names == sorted(L.class_names)
    x, y = next(iter(L.train))
    assert x.shape == (8, 3, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(L.train) == DEMO_CLASSES * DEMO_TRAIN_PER_CLASS // 8
    assert sum(len(y) for _, y in L.val) == DEMO_CLASSES * DEMO_VAL_PER_CLASS
    stats = load_stats(os.path.join(demo_root, "stats_48.pt"))  # cached next to the data, weights_only
    assert stats["mean_image"].shape == (3, 48, 48) and stats["num_images"] == DEMO_CLASSES * DEMO_TRAIN_PER_CLASS
    L10 = build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=0, eval_crops=10)
    xv, yv = next(iter(L10.val))
    xc, _ = next(iter(L.val))
    assert xv.shape == (8, 10, 3, 40, 40)
    assert torch.allclose(xv[:, 4], xc)  # view 4 of the ten is the centre view
    Lg = build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=0, in_channels=1)
    assert next(iter(Lg.train))[0].shape == (8, 1, 40, 40) and Lg.stats["eigvec"].shape == (1, 1)


def test_same_seed_same_batches_different_seed_different(demo_root):
    cfg = tiny_data_cfg(demo_root)
    a = _batches(build_loaders(cfg, batch_size=8, seed=1).train, 3)
    b = _batches(build_loaders(cfg, batch_size=8, seed=1).train, 3)
    c = _batches(build_loaders(cfg, batch_size=8, seed=2).train, 3)
    assert _same(a, b) and not _same(a, c)
    L = build_loaders(cfg, batch_size=8, seed=1)
    L.train_sampler.set_epoch(1)
    assert not _same(_batches(L.train, 3), a)  # a new epoch is a new order and new augmentations


def test_workers_do_not_change_batches(demo_root):
    a = _batches(build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=3).train, 4)
    b = _batches(build_loaders(tiny_data_cfg(demo_root, workers=2), batch_size=8, seed=3).train, 4)
    assert _same(a, b)


def test_resume_mid_epoch_gives_the_tail(demo_root):
    L = build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=0)
    L.train_sampler.set_epoch(2)
    full = _batches(L.train)
    assert len(full) == len(L.train) == 15
    L2 = build_loaders(tiny_data_cfg(demo_root), batch_size=8, seed=0)  # a fresh process's loaders
    L2.train_sampler.set_epoch(2, skip_batches=11)
    tail = _batches(L2.train)
    assert len(L2.train) == 4 and _same(tail, full[11:])


def test_rank_sharding_train_and_val():
    n, bs, world = 103, 4, 3
    order = []
    for r in range(world):
        s = ResumableSampler(n, bs, seed=5, rank=r, world_size=world)
        s.set_epoch(1)
        idx = [i for i, _ in s]
        assert len(idx) == len(s) == n // world
        order.append(idx)
    flat = sum(order, [])
    assert len(set(flat)) == len(flat) == 102  # disjoint, remainder dropped
    one = ResumableSampler(n, bs, seed=5)
    one.set_epoch(1)
    perm = [i for i, _ in one]
    assert [perm[k] for k in range(0, 102, 3)] == order[0]  # DistributedSampler's interleaving
    seeds = {seed for i, seed in one}
    assert len(seeds) == n and next(iter(one))[1] == sample_seed(5, 1, perm[0])
    val = [list(ShardSampler(10, r, 4)) for r in range(4)]
    assert sorted(sum(val, [])) == list(range(10))  # every val image exactly once, no padding


def test_val_sharded_loaders_cover_val_once(demo_root):
    cfg = tiny_data_cfg(demo_root)
    ys = [torch.cat([y for _, y in build_loaders(cfg, batch_size=4, seed=0, rank=r, world_size=3).val])
          for r in range(3)]
    assert sum(len(y) for y in ys) == DEMO_CLASSES * DEMO_VAL_PER_CLASS
    assert torch.equal(torch.cat(ys).sort().values.bincount(), torch.full((DEMO_CLASSES,), DEMO_VAL_PER_CLASS))


def test_layout_errors(tmp_path, demo_root):
    cfg = tiny_data_cfg(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist.*ROOT/train/<class>"):
        build_loaders(cfg, batch_size=2, seed=0)
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserError, match=r"has no train/ or val/ folder.*expected ROOT/train"):
        scan_root(str(tmp_path / "flat"))
    with pytest.raises(UserError, match="no data root"):
        scan_root("")
    root = _small_root(tmp_path, demo_root)
    os.makedirs(root / "train" / "zebra")
    (root / "train" / "zebra" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="without images.*: zebra;"):
        scan_root(str(root))
    os.makedirs(root / "train" / "zebra2")
    shutil.copy(root / "train" / "star" / os.listdir(root / "train" / "star")[0], root / "train" / "zebra2" / "a.jpg")
    shutil.rmtree(root / "train" / "zebra")
    with pytest.raises(UserError, match=r"only in train: \['zebra2'\]; only in val: none"):
        scan_root(str(root))


def test_hidden_and_non_image_entries_ignored(tmp_path, demo_root):
    root = _small_root(tmp_path, demo_root)
    for split in ("train", "val"):
        os.makedirs(root / split / ".ipynb_checkpoints")
        shutil.copy(root / split / "star" / os.listdir(root / split / "star")[0],
                    root / split / ".ipynb_checkpoints" / "x.jpg")
        (root / split / ".DS_Store").write_bytes(b"\0\1")
        (root / split / "star" / ".DS_Store").write_bytes(b"\0\1")
        (root / split / "star" / "._hidden.jpg").write_bytes(b"junk")
        (root / split / "star" / "README.txt").write_text("x")
        os.makedirs(root / split / "star" / ".hidden_dir")
        (root / split / "star" / ".hidden_dir" / "y.jpg").write_bytes(b"junk")
    classes, train, val = scan_root(str(root))
    assert classes == ["circle", "square", "star"] and len(train) == len(val) == 6


def test_demo_generated_when_root_missing(tmp_path, monkeypatch):
    import dataloader.demo
    import dataloader.folder
    calls = []

    def small_demo(root, seed=0):
        calls.append(root)
        return make_demo(root, seed, num_classes=3, train_per_class=4, val_per_class=2, size=40)
    monkeypatch.setattr(dataloader.demo, "make_demo", small_demo)
    monkeypatch.setattr(dataloader.folder, "make_demo", small_demo, raising=False)   # where folder.py imports it
    cfg = tiny_data_cfg(tmp_path / "demo", demo=True, resize=40, crop=32)
    L = build_loaders(cfg, batch_size=4, seed=0)
    assert calls == [str(tmp_path / "demo")] and L.class_names == ["circle", "ring", "square"]
    build_loaders(cfg, batch_size=4, seed=0)
    assert len(calls) == 1  # not regenerated once present


def test_eval_loader_maps_checkpoint_classes(tmp_path, demo_root):
    cfg = tiny_data_cfg(demo_root)
    stats = build_loaders(cfg, batch_size=4, seed=0).stats
    loader, names = build_eval_loader(demo_root, None, stats, cfg, batch_size=4, crops=10)
    x, y = next(iter(loader))
    assert x.shape == (4, 10, 3, 40, 40) and names == sorted(os.listdir(os.path.join(demo_root, "val")))
    assert isinstance(loader.dataset, ImageDataset) and len(loader.dataset) == len(loader.dataset.samples) == 40
    square, target, _ = loader.dataset[0]                   # the workers' part: the uint8 R x R square
    assert square.shape == (3, 48, 48) and square.dtype == torch.uint8 and target == y[0]
    ckpt_names = list(reversed(names)) + ["extra"]
    loader2, names2 = build_eval_loader(os.path.join(demo_root, "val"), ckpt_names, stats, cfg, batch_size=4)
    y2 = torch.cat([t for _, t in loader2])
    y1 = torch.cat([t for _, t in build_eval_loader(demo_root, None, stats, cfg, batch_size=4)[0]])
    assert names2 == ckpt_names and torch.equal(y2, len(names) - 1 - y1)
    with pytest.raises(UserError, match="does not know"):
        build_eval_loader(demo_root, names[:-1], stats, cfg, batch_size=4)


def test_synset_labels(tmp_path, demo_root):
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("circle round thing, disc\nstar a star\n")
    assert read_synsets(str(path)) == {"circle": "round thing, disc", "star": "a star"}
    L = build_loaders(tiny_data_cfg(demo_root, synset_mapping=str(path)), batch_size=4, seed=0)
    assert L.class_labels[L.class_names.index("circle")] == "round thing, disc"
    assert L.class_labels[L.class_names.index("dots")] == "dots"
