"""The demo generator: layout, real JPEGs, determinism by seed."""
import hashlib
import os

from PIL import Image

from dataloader.demo import CLASSES, make_demo
from conftest import DEMO_CLASSES, DEMO_SIZE, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS


def _digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(filenames):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_demo_layout_and_jpegs(demo_root):
    for split, count in (("train", DEMO_TRAIN_PER_CLASS), ("val", DEMO_VAL_PER_CLASS)):
        classes = sorted(os.listdir(os.path.join(demo_root, split)))
        assert classes == sorted(CLASSES[:DEMO_CLASSES])
        for c in classes:
            files = os.listdir(os.path.join(demo_root, split, c))
            assert len(files) == count
    path = os.path.join(demo_root, "train", "star", "star_0000.jpg")
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (DEMO_SIZE, DEMO_SIZE)


def test_demo_deterministic_by_seed(tmp_path):
    kw = dict(num_classes=3, train_per_class=2, val_per_class=1, size=32)
    make_demo(str(tmp_path / "a"), seed=1, **kw)
    make_demo(str(tmp_path / "b"), seed=1, **kw)
    make_demo(str(tmp_path / "c"), seed=2, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
