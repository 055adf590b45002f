"""Augmentation seeds (Sec. 4.1: a new random patch, reflection and colour shift every time an image is
used): on both loaders (image folders and the prepared store) the same image is augmented differently in
every batch and every epoch; and the colour shift draws from its own stream, so configs/no_pca.yaml sees
exactly the baseline's crops and flips."""
import os
import shutil

import pytest
import torch

from alexnet.config import load_config, to_dict
from conftest import tiny_data_cfg
from dataloader.folder import build_loaders
from dataloader.prepare import prepare
from dataloader.store import build_store_loaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN = 6                          # 2 classes x 3 copies, batch 1: 6 batches per epoch


@pytest.fixture(scope="module")
def same_image_root(demo_root, tmp_path_factory):
    """ROOT/{train,val}/{a,b}/: copies of ONE demo image, so two batches differ only by their augmentation."""
    root = tmp_path_factory.mktemp("same_image")
    src_dir = os.path.join(demo_root, "train", sorted(os.listdir(os.path.join(demo_root, "train")))[0])
    src = os.path.join(src_dir, sorted(os.listdir(src_dir))[0])
    for split, copies in (("train", N_TRAIN // 2), ("val", 1)):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for k in range(copies):
                shutil.copy(src, root / split / c / f"{k}.jpg")
    return str(root)


def two_epochs(loaders):
    batches = []
    for epoch in (0, 1):
        loaders.train_sampler.set_epoch(epoch)
        batches += [x for x, _ in loaders.train]
    return batches


def assert_all_different(batches):
    assert len(batches) == 2 * N_TRAIN and all(b.shape == (1, 3, 40, 40) for b in batches)
    for i in range(len(batches)):
        for j in range(i):
            assert not torch.equal(batches[i], batches[j]), f"batches {j} and {i} (epoch {j // N_TRAIN} and " \
                                                            f"{i // N_TRAIN}) were augmented the same"


def test_folder_loader_new_augmentation_every_batch_and_epoch(same_image_root):
    loaders = build_loaders(tiny_data_cfg(same_image_root), batch_size=1, seed=0)
    assert_all_different(two_epochs(loaders))


def test_store_loader_new_augmentation_every_batch_and_epoch(same_image_root, tmp_path):
    store = str(tmp_path / "store")
    prepare(same_image_root, store, workers=1, size=48, progress=False)
    loaders = build_store_loaders(tiny_data_cfg(same_image_root, store=store), batch_size=1, seed=0)
    assert_all_different(two_epochs(loaders))


def test_no_pca_config_sees_the_baseline_crops_and_flips(demo_root):
    """configs/no_pca.yaml against its baseline configs/alexnet_paper.yaml: batch for batch, the baseline's
    input minus the ablation's is one colour per image (the PCA shift, x pixel_scale), so both runs see the
    same images, crops and flips."""
    common = [f"data.root={demo_root}", "data.resize=48", "data.crop=40", "data.workers=0"]
    base, ablation = (load_config(os.path.join(ROOT, "configs", name), common)
                      for name in ("alexnet_paper.yaml", "no_pca.yaml"))
    differ = {(section, key) for section, values in to_dict(base).items() for key, value in values.items()
              if to_dict(ablation)[section][key] != value}
    assert differ == {("data", "pca_sigma"), ("train", "out")} and ablation.data.pca_sigma == 0
    a, b = (build_loaders(c.data, batch_size=8, seed=c.train.seed) for c in (base, ablation))
    for epoch in (0, 1):
        a.train_sampler.set_epoch(epoch)
        b.train_sampler.set_epoch(epoch)
        for k, ((xa, ya), (xb, yb)) in enumerate(zip(a.train, b.train)):
            if k == 2:
                break
            assert torch.equal(ya, yb)
            d = xa - xb                                                   # (8, 3, 40, 40)
            torch.testing.assert_close(d, d[:, :, :1, :1].expand_as(d), rtol=0, atol=1e-3)
            assert (d[:, :, 0, 0].abs().amax(1) > 1e-2).all()             # and the baseline does shift colours
