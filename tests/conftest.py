"""Shared fixtures: a tiny demo dataset generated once per test session, and a matching data config."""
import dataclasses

import pytest

from alexnet.config import DataConfig
from dataloader.demo import make_demo

# The tiny set: 10 classes x (12 train + 4 val) JPEGs of 48x48 pixels (about 0.5 s to write).
DEMO_CLASSES = 10
DEMO_TRAIN_PER_CLASS = 12
DEMO_VAL_PER_CLASS = 4
DEMO_SIZE = 48


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """Path (str) of a tiny demo dataset: ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg.

    Shared by the whole session: treat it as read-only, except for the stats cache that
    `dataloader.stats` writes next to it (ROOT/stats_<resize>.pt).
    """
    root = tmp_path_factory.mktemp("demo")
    make_demo(str(root), seed=0, num_classes=DEMO_CLASSES, train_per_class=DEMO_TRAIN_PER_CLASS,
              val_per_class=DEMO_VAL_PER_CLASS, size=DEMO_SIZE)
    return str(root)


def tiny_data_cfg(root, **overrides):
    """A DataConfig for the tiny demo set: 48 px images, 40 px crops, no workers.

    Keyword overrides replace fields, e.g. ``tiny_data_cfg(root, workers=2, pca_sigma=0)``.
    """
    base = dict(root=str(root), resize=DEMO_SIZE, crop=40, workers=0, stats="auto")
    base.update(overrides)
    return dataclasses.replace(DataConfig(), **base)


@pytest.fixture
def data_cfg(demo_root):
    """`tiny_data_cfg(demo_root)` as a fixture; call `dataclasses.replace(data_cfg, ...)` to change fields."""
    return tiny_data_cfg(demo_root)
