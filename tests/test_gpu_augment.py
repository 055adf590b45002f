"""Batched device augmentation (dataloader/gpu_augment.py) against the per-image transforms of the data issue."""
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dataloader.gpu_augment import EvalAugment, TrainAugment, crop_flip, pca_shift, ten_crop_offsets
from dataloader.transforms import EvalTransform, Normalize, PCALighting, RandomCropFlip, to_tensor

R = 48


def _stats(seed=0, r=R):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    return {"mean_image": torch.rand(3, r, r, generator=g), "mean": torch.rand(3, generator=g),
            "std": torch.rand(3, generator=g) + 0.5, "eigval": torch.tensor([0.2175, 0.0188, 0.0045]),
            "eigvec": q, "num_images": 1}


def _images(n, r=R, seed=0):
    """n random uint8 images as numpy (n, r, r, 3) and as a channels_last (n, 3, r, r) tensor view."""
    a = np.random.default_rng(seed).integers(0, 256, (n, r, r, 3), dtype=np.uint8)
    return a, torch.from_numpy(a).permute(0, 3, 1, 2)


@pytest.mark.parametrize("crop", [40, 37])          # 37: odd margin, where centre rounding matters
@pytest.mark.parametrize("mode", ["mean_image", "channel"])
@pytest.mark.parametrize("crops", [1, 10])
def test_eval_views_equal_per_image_transform(crop, mode, crops):
    stats = _stats()
    a, u8 = _images(3)
    cfg = types.SimpleNamespace(resize=R, crop=crop, normalize=mode)
    ref = torch.stack([EvalTransform(cfg, stats, crops)(Image.fromarray(x)) for x in a])
    out = EvalAugment(stats, crop, crops=crops, normalize=mode)(u8)
    assert out.shape == ref.shape == ((3, 10, 3, crop, crop) if crops == 10 else (3, 3, crop, crop))
    assert torch.equal(out, ref)                     # pixel for pixel, bit for bit


@pytest.mark.parametrize("mode", ["mean_image", "channel"])
def test_train_patches_equal_per_image_pipeline_for_the_same_draws(mode):
    """Given the same offsets, flips and colour shifts, the batch equals normalise(light(x)) -> crop -> flip."""
    stats, crop = _stats(1), 40
    a, u8 = _images(16, seed=1)
    aug = TrainAugment(stats, crop, normalize=mode)
    top, left, flip, alpha = aug.draw(16, R, torch.Generator().manual_seed(5), "cpu")
    assert 0 < int(flip.sum()) < 16                  # both branches exercised
    out = aug(u8, torch.Generator().manual_seed(5))
    shift = pca_shift(alpha, aug.eigval, aug.eigvec)
    norm = Normalize(stats, mode)
    for i in range(16):
        x = norm(to_tensor(Image.fromarray(a[i])) + shift[i][:, None, None])
        x = x[:, top[i]:top[i] + crop, left[i]:left[i] + crop]
        x = x.flip(-1) if flip[i] else x
        torch.testing.assert_close(out[i], x, rtol=0, atol=1e-6)


def test_crop_offsets_and_flip_rate_match_random_crop_flip():
    """Offsets uniform over 0..R-crop (the range of RandomCropFlip), flips at rate 1/2."""
    crop, n = 40, 20000
    aug = TrainAugment(_stats(), crop)
    top, left, flip, _ = aug.draw(n, R, torch.Generator().manual_seed(0), "cpu")
    g = torch.Generator().manual_seed(0)
    ref = np.array([RandomCropFlip(crop).params(R, R, g) for _ in range(2000)])
    for ours in (top, left):
        assert int(ours.min()) == ref[:, 0].min() == 0 and int(ours.max()) == ref[:, 0].max() == R - crop
        freq = torch.bincount(ours, minlength=R - crop + 1).float() / n
        assert torch.allclose(freq, torch.full_like(freq, 1 / (R - crop + 1)), atol=0.015)
    assert abs(flip.float().mean().item() - 0.5) < 0.015
    assert abs(ref[:, 2].mean() - 0.5) < 0.04
    assert abs(np.corrcoef(top.numpy(), left.numpy())[0, 1]) < 0.03        # independent draws


def test_pca_shift_statistics_match_pca_lighting():
    """Shift covariance = V diag((sigma lambda)^2) V^T for both implementations (Sec. 4.1)."""
    stats, n, sigma = _stats(2), 20000, 0.1
    aug = TrainAugment(stats, 40, pca_sigma=sigma)
    _, _, _, alpha = aug.draw(n, R, torch.Generator().manual_seed(1), "cpu")
    ours = pca_shift(alpha, aug.eigval, aug.eigvec).double()                # (n, 3)
    light = PCALighting(stats["eigval"], stats["eigvec"], sigma)
    g = torch.Generator().manual_seed(2)
    theirs = torch.stack([light.shift(g) for _ in range(4000)]).double()
    v, lam = stats["eigvec"].double(), stats["eigval"].double()
    want = v @ torch.diag((sigma * lam) ** 2) @ v.T
    scale = (sigma * lam[0]) ** 2
    for s, tol in ((ours, 0.05), (theirs, 0.1)):
        assert s.mean(0).abs().max() < 3 * sigma * lam[0] / len(s) ** 0.5 * 3
        assert ((s.T.cov() - want).abs().max() / scale) < tol


def test_same_generator_same_batch_and_output_format():
    stats = _stats()
    _, u8 = _images(8)
    aug = TrainAugment(stats, 40, dtype=torch.bfloat16)
    a = aug(u8, torch.Generator().manual_seed(3))
    b = aug(u8, torch.Generator().manual_seed(3))
    c = aug(u8, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 40, 40) and a.dtype == torch.bfloat16
    assert a.is_contiguous(memory_format=torch.channels_last)
    plain = TrainAugment(stats, 40, channels_last=False)(u8, torch.Generator().manual_seed(3))
    assert plain.is_contiguous()
    torch.testing.assert_close(plain, a.float(), rtol=0.01, atol=0.02)


def test_no_augmentation_gives_the_centre_view():
    stats = _stats()
    _, u8 = _images(4)
    train = TrainAugment(stats, 40, random_crop=False, flip=False, pca_sigma=0)(u8, torch.Generator())
    assert torch.equal(train, EvalAugment(stats, 40)(u8))


def test_crop_flip_gathers_the_right_pixels():
    _, u8 = _images(2, r=8)
    top, left, flip = torch.tensor([1, 3]), torch.tensor([2, 0]), torch.tensor([False, True])
    out = crop_flip(u8, top, left, 5, flip)                                  # (2, 5, 5, 3) NHWC
    assert torch.equal(out[0], u8[0, :, 1:6, 2:7].permute(1, 2, 0))
    assert torch.equal(out[1], u8[1, :, 3:8, 0:5].flip(-1).permute(1, 2, 0))
    views = ten_crop_offsets(48, 37)
    assert views[4] == (6, 6, False) and views[9] == (6, 5, True)             # centre of the mirror: 11 - 6
