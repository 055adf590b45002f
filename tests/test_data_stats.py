"""Dataset statistics against numpy, the cache file, the presets, and the stats command."""

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.errors import UserError
from conftest import tiny_data_cfg
from dataloader import stats as S


def _random_set(root, sizes):
    """Random RGB images of the given (w, h) sizes in root/train/<a|b>/; returns them as arrays (after 24 resize)."""
    rng = np.random.default_rng(0)
    arrays = []
    for k, (w, h) in enumerate(sizes):
        folder = root / "train" / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a[..., 2] = a[..., 0] // 2 + 60  # correlated channels: a non-trivial covariance
        Image.fromarray(a).save(folder / f"{k}.png")
    return root / "train"


def test_stats_match_numpy(tmp_path):
    train = _random_set(tmp_path, [(24, 24), (30, 24), (24, 40), (24, 24), (50, 24)])
    st = S.compute_stats(str(train), resize=24, workers=0, progress=False)
    # numpy reference on the same R x R images (the resize is tested elsewhere)
    from dataloader.images import ResizeCenterSquare, find_classes, list_images
    paths = [p for p, _ in list_images(str(train), find_classes(str(train)))]
    imgs = np.stack([np.asarray(ResizeCenterSquare(24)(Image.open(p).convert("RGB")), np.float64) / 255
                     for p in paths])  # (N, R, R, 3)
    pix = imgs.reshape(-1, 3)
    cov = np.cov(pix, rowvar=False, bias=True)
    val, vec = np.linalg.eigh(cov)
    val, vec = val[::-1], vec[:, ::-1]
    assert st["num_images"] == 5
    assert np.allclose(st["mean_image"].numpy(), imgs.mean(0).transpose(2, 0, 1), atol=1e-6)
    assert np.allclose(st["mean"].numpy(), pix.mean(0), atol=1e-6)
    assert np.allclose(st["std"].numpy(), pix.std(0), atol=1e-6)
    assert np.allclose(st["eigval"].numpy(), val, atol=1e-6)
    for i in range(3):  # eigenvectors up to sign, each paired with its own eigenvalue
        assert abs(abs(float(np.dot(st["eigvec"][:, i].numpy(), vec[:, i]))) - 1) < 1e-5
    c = st["eigvec"].double() @ torch.diag(st["eigval"].double()) @ st["eigvec"].double().T
    assert np.allclose(c.numpy(), cov, atol=1e-6)


def test_stats_workers_agree_and_command_writes_loadable_file(tmp_path, capsys):
    train = _random_set(tmp_path, [(24, 24)] * 6)
    a = S.compute_stats(str(train), resize=24, workers=0, progress=False)
    b = S.compute_stats(str(train), resize=24, workers=2, batch_size=2, progress=False)
    assert torch.equal(a["mean_image"], b["mean_image"]) and torch.allclose(a["eigval"], b["eigval"])
    with pytest.raises(SystemExit) as e:
        S.run_main(S.main, [str(tmp_path), "--resize", "24", "--workers", "0"])
    assert e.value.code == 0
    st = torch.load(tmp_path / "stats_24.pt", weights_only=True)
    assert set(st) == set(S.STATS_KEYS) and torch.equal(st["mean_image"], a["mean_image"])
    with pytest.raises(SystemExit) as e:
        S.run_main(S.main, [str(tmp_path / "missing")])
    assert e.value.code == 2 and "expected ROOT/train/<class>/<image>" in capsys.readouterr().err


def test_presets_and_stats_files(tmp_path, demo_root):
    im = S.imagenet_stats(48)
    assert im["mean_image"].shape == (3, 48, 48) and torch.allclose(im["mean_image"][:, 7, 3], im["mean"])
    assert torch.allclose(im["eigvec"][:, 0], torch.tensor([-0.5675, -0.5808, -0.5836]))  # column = p_1
    assert torch.equal(S.load_or_compute_stats(tiny_data_cfg(demo_root, stats="imagenet"), demo_root)["std"],
                       torch.tensor([0.229, 0.224, 0.225]))
    path = tmp_path / "s.pt"
    S.save_stats(im, str(path))
    assert S.load_or_compute_stats(tiny_data_cfg(demo_root, stats=str(path)), demo_root)["num_images"] == 0
    with pytest.raises(UserError, match="expected \\(3, 40, 40\\)"):
        S.load_or_compute_stats(tiny_data_cfg(demo_root, stats=str(path), resize=40, crop=32), demo_root)
    (tmp_path / "bad.pt").write_bytes(b"")
    with pytest.raises(UserError, match="bad.pt"):
        S.load_or_compute_stats(tiny_data_cfg(demo_root, stats=str(tmp_path / "bad.pt")), demo_root)
    with pytest.raises(UserError, match="does not exist"):
        S.load_or_compute_stats(tiny_data_cfg(demo_root, stats=str(tmp_path / "none.pt")), demo_root)


def test_auto_stats_cached_and_recomputed_when_train_changes(tmp_path):
    _random_set(tmp_path, [(24, 24)] * 4)
    cfg = tiny_data_cfg(tmp_path, resize=24, crop=16)
    a = S.load_or_compute_stats(cfg, str(tmp_path), progress=False, num_train=4)
    assert a["num_images"] == 4 and (tmp_path / "stats_24.pt").is_file()
    assert torch.equal(S.load_or_compute_stats(cfg, str(tmp_path), num_train=4)["mean_image"], a["mean_image"])
    _random_set(tmp_path, [(24, 24)] * 6)  # two more images: the cache is stale
    assert S.load_or_compute_stats(cfg, str(tmp_path), progress=False, num_train=6)["num_images"] == 6
    assert torch.load(tmp_path / "stats_24.pt", weights_only=True)["num_images"] == 6
