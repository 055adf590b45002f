"""The paper's augmentation (Sec. 4.1) and input normalisation (Sec. 2): dataloader/augment.py, the one
batched implementation, pinned against independent references: torchvision's ten_crop / center_crop,
hand-made crops of coordinate images, per-image references built from the draws, and the distributions
the paper asks for (uniform offsets, flips at rate 1/2, PCA colour shifts of covariance V diag((s l)^2) V^T)."""
import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from alexnet.config import DataConfig
from dataloader.augment import (EvalAugment, Normalize, TrainAugment, center_offset, crop_flip, pca_shift,
                                stream_generators, ten_crop_offsets)
from dataloader.stats import imagenet_stats

R = 48


def _cfg(crop=40, resize=R, **kw):
    """A DataConfig for the augmentations: they read crop, random_crop, flip, pca_sigma, normalize, pixel_scale."""
    return dataclasses.replace(DataConfig(), resize=resize, crop=crop, **kw)


def _stats(seed=0, r=R):
    """Random statistics: a random mean image and a random orthonormal PCA basis with distinct eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    return {"mean_image": torch.rand(3, r, r, generator=g), "mean": torch.rand(3, generator=g),
            "std": torch.rand(3, generator=g) + 0.5, "eigval": torch.tensor([0.2175, 0.0188, 0.0045]),
            "eigvec": q, "num_images": 1}


def _zero_stats(c, r):
    """C-channel statistics that change nothing: zero mean image, mean 0, std 1, identity PCA basis."""
    return {"mean_image": torch.zeros(c, r, r), "mean": torch.zeros(c), "std": torch.ones(c),
            "eigval": torch.ones(c), "eigvec": torch.eye(c), "num_images": 1}


def _images(n, r=R, seed=0):
    """n random uint8 images as numpy (n, r, r, 3) and as a channels_last (n, 3, r, r) tensor view."""
    a = np.random.default_rng(seed).integers(0, 256, (n, r, r, 3), dtype=np.uint8)
    return a, torch.from_numpy(a).permute(0, 3, 1, 2)


def _coords(n, r=32):
    """n copies of a (2, r, r) uint8 image whose pixels hold their own (row, col): a crop shows where it came from."""
    rows, cols = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    return torch.stack([rows, cols]).to(torch.uint8).expand(n, 2, r, r).contiguous()


def _normalized(u8, stats, mode, pixel_scale=1.0, shift=None):
    """Per-image reference of Sec. 2 on the WHOLE R x R image, (B, C, R, R) float: crops are cut afterwards,
    so every patch subtracts the region of the mean image it was cut from (mirrored with the patch)."""
    x = u8.float() / 255
    if shift is not None:
        x = x + shift[:, :, None, None]
    if mode == "channel":
        return (x - stats["mean"][:, None, None]) / stats["std"][:, None, None]
    return (x - stats["mean_image"]) * pixel_scale


# ---------------------------------------------------------------------------------------------------
# Crops and flips: hand-made coordinate images
# ---------------------------------------------------------------------------------------------------

def test_random_crop_inside_and_flip_about_half():
    n, crop = 2000, 24
    x = _coords(n)
    aug = TrainAugment(_zero_stats(2, 32), _cfg(crop, 32, pca_sigma=0, pixel_scale=255))   # 2 channels
    y = aug(x, 0).round().long()                         # x / 255 * 255: the coordinates back
    assert y.shape == (n, 2, crop, crop)
    top, left = y[:, 0, 0, 0], y[:, 1, 0, :].min(1).values
    assert int(top.min()) >= 0 and int(top.max()) <= 8 and int(left.min()) >= 0 and int(left.max()) <= 8
    ar = torch.arange(crop)
    assert torch.equal(y[:, 0], (top[:, None] + ar)[:, :, None].expand(n, crop, crop))   # rows in order
    mirrored = y[:, 1, 0, 0] > y[:, 1, 0, -1]
    cols = left[:, None] + ar
    cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    assert torch.equal(y[:, 1], cols[:, None, :].expand(n, crop, crop))                   # whole columns, mirrored or not
    assert abs(mirrored.float().mean().item() - 0.5) < 0.05      # 5 sigma is ~0.056
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))   # every position reachable
    # the patches are the ones aug.draw() describes
    d_top, d_left, d_flip, d_alpha = aug.draw(n, 32, 0, "cpu")
    assert torch.equal(d_top, top) and torch.equal(d_left, left) and torch.equal(d_flip, mirrored)
    assert d_alpha is None


def test_centre_crop_when_not_random_and_no_flip():
    x = _coords(4)
    aug = TrainAugment(_zero_stats(2, 32), _cfg(24, 32, random_crop=False, flip=False, pca_sigma=0, pixel_scale=255))
    for seed in range(5):
        assert torch.equal(aug(x, seed).round().to(torch.uint8), x[:, :, 4:28, 4:28])


def test_crop_offsets_uniform_flip_rate_half():
    """Offsets uniform over every valid offset 0..R-crop, flips at rate 1/2, top and left independent."""
    crop, n = 40, 20000
    top, left, flip, _ = TrainAugment(_stats(), _cfg(crop)).draw(n, R, 0, "cpu")
    for ours in (top, left):
        assert int(ours.min()) == 0 and int(ours.max()) == R - crop
        freq = torch.bincount(ours, minlength=R - crop + 1).float() / n
        assert len(freq) == R - crop + 1
        assert torch.allclose(freq, torch.full_like(freq, 1 / (R - crop + 1)), atol=0.015)
    assert abs(flip.float().mean().item() - 0.5) < 0.015
    assert abs(np.corrcoef(top.numpy(), left.numpy())[0, 1]) < 0.03        # independent draws


def test_crop_flip_gathers_the_right_pixels_for_any_channel_count():
    top, left, flip = torch.tensor([1, 3]), torch.tensor([2, 0]), torch.tensor([False, True])
    for c in (1, 2, 3, 4):
        u8 = torch.randint(0, 256, (2, c, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(c))
        for images in (u8, u8.contiguous(memory_format=torch.channels_last)):
            out = crop_flip(images, top, left, 5, flip)                      # (2, 5, 5, C) NHWC
            assert out.shape == (2, 5, 5, c)
            assert torch.equal(out[0], u8[0, :, 1:6, 2:7].permute(1, 2, 0))
            assert torch.equal(out[1], u8[1, :, 3:8, 0:5].flip(-1).permute(1, 2, 0))
        # `source`: patches from chosen images, several per image
        out = crop_flip(u8, torch.tensor([0, 2, 1]), torch.tensor([0, 1, 3]), 4, None, torch.tensor([1, 1, 0]))
        assert torch.equal(out[0], u8[1, :, 0:4, 0:4].permute(1, 2, 0))
        assert torch.equal(out[1], u8[1, :, 2:6, 1:5].permute(1, 2, 0))
        assert torch.equal(out[2], u8[0, :, 1:5, 3:7].permute(1, 2, 0))
    views = ten_crop_offsets(48, 37)
    assert views[4] == (6, 6, False) and views[9] == (6, 5, True)             # centre of the mirror: 11 - 6
    assert center_offset(9, 5) == 2 and center_offset(48, 37) == 6


# ---------------------------------------------------------------------------------------------------
# Test-time views: torchvision's TenCrop / CenterCrop
# ---------------------------------------------------------------------------------------------------

def test_ten_views_pixel_exact():
    u8 = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = u8[0].float() / 255
    v = EvalAugment(_zero_stats(3, 40), _cfg(32, 40), crops=10)(u8)[0]
    assert v.shape == (10, 3, 32, 32)
    manual = [x[:, :32, :32], x[:, :32, 8:], x[:, 8:, :32], x[:, 8:, 8:], x[:, 4:36, 4:36]]
    for i in range(5):
        assert torch.equal(v[i], manual[i])
    # views 5..9 are the mirrored image's five crops: mirrors of tr, tl, br, bl, centre
    for i, j in zip(range(5, 10), (1, 0, 3, 2, 4)):
        assert torch.equal(v[i], manual[j].flip(-1))
    for i, ref in enumerate(TF.ten_crop(x, 32)):
        assert torch.equal(v[i], ref)


@pytest.mark.parametrize("crop", [40, 37])          # 37: odd margin, where centre rounding matters
@pytest.mark.parametrize("mode", ["mean_image", "channel"])
@pytest.mark.parametrize("crops", [1, 10])
@pytest.mark.parametrize("pixel_scale", [1.0, 255.0])
def test_eval_views_equal_torchvision_crops_of_the_normalised_image(crop, mode, crops, pixel_scale):
    """Each view subtracts the mean image's region it was cut from (mirrored for mirrored views)."""
    stats = _stats()
    _, u8 = _images(3)
    full = _normalized(u8, stats, mode, pixel_scale)                           # (3, 3, R, R)
    if crops == 10:
        ref = torch.stack([torch.stack(TF.ten_crop(f, crop)) for f in full])
    else:
        ref = torch.stack([TF.center_crop(f, crop) for f in full])
    out = EvalAugment(stats, _cfg(crop, normalize=mode, pixel_scale=pixel_scale), crops=crops)(u8)
    assert out.shape == ref.shape == ((3, 10, 3, crop, crop) if crops == 10 else (3, 3, crop, crop))
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)                     # pixel for pixel, bit for bit


def test_eval_output_format():
    stats = _stats()
    _, u8 = _images(2)
    one = EvalAugment(stats, _cfg(), channels_last=True)(u8)
    assert one.shape == (2, 3, 40, 40) and one.is_contiguous(memory_format=torch.channels_last)
    plain = EvalAugment(stats, _cfg())(u8)
    assert plain.is_contiguous() and torch.equal(plain, one)
    ten = EvalAugment(stats, _cfg(), channels_last=True, crops=10)(u8)
    assert ten.shape == (2, 10, 3, 40, 40) and ten.is_contiguous() and torch.equal(ten[:, 4], plain)
    with pytest.raises(ValueError, match="crops"):
        EvalAugment(stats, _cfg(), crops=5)


# ---------------------------------------------------------------------------------------------------
# Training patches: per-image references for the same draws
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mean_image", "channel"])
@pytest.mark.parametrize("pixel_scale", [1.0, 255.0])
def test_train_patches_equal_per_image_pipeline_for_the_same_draws(mode, pixel_scale):
    """Given the draws, each patch is normalise(x / 255 + shift) of the whole image -> crop -> flip: the
    mean image's region under the patch is subtracted, mirrored for a mirrored patch."""
    stats, crop, n = _stats(1), 40, 16
    _, u8 = _images(n, seed=1)
    aug = TrainAugment(stats, _cfg(crop, normalize=mode, pixel_scale=pixel_scale))
    top, left, flip, alpha = aug.draw(n, R, 5, "cpu")
    assert 0 < int(flip.sum()) < n and len(set(top.tolist())) > 1          # both branches, several offsets
    out = aug(u8, 5)
    shift = pca_shift(alpha, aug.eigval, aug.eigvec)
    full = _normalized(u8, stats, mode, pixel_scale, shift)
    for i in range(n):
        x = full[i, :, top[i]:top[i] + crop, left[i]:left[i] + crop]
        x = x.flip(-1) if flip[i] else x
        torch.testing.assert_close(out[i], x, rtol=0, atol=1e-6 * (pixel_scale if mode == "mean_image" else 1))


def test_same_seed_same_batch_and_output_format():
    stats = _stats()
    _, u8 = _images(8)
    aug = TrainAugment(stats, _cfg(), channels_last=True)
    a, b, c = aug(u8, 3), aug(u8, 3), aug(u8, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 40, 40) and a.dtype == torch.float32
    assert a.is_contiguous(memory_format=torch.channels_last)
    plain = TrainAugment(stats, _cfg(), channels_last=False)(u8, 3)
    assert plain.is_contiguous() and torch.equal(plain, a)


def test_no_augmentation_gives_the_centre_view():
    stats = _stats()
    _, u8 = _images(4)
    for mode in ("mean_image", "channel"):
        train = TrainAugment(stats, _cfg(random_crop=False, flip=False, pca_sigma=0, normalize=mode))(u8, 7)
        assert torch.equal(train, EvalAugment(stats, _cfg(normalize=mode))(u8))


def test_streams_are_independent():
    """Crop offsets, flips and colour shifts come from three generators: switching one augmentation off
    leaves the other draws unchanged (an ablation sees the baseline's crops and flips)."""
    stats, n = _stats(), 64
    top, left, flip, alpha = TrainAugment(stats, _cfg()).draw(n, R, 11, "cpu")
    t2, l2, f2, a2 = TrainAugment(stats, _cfg(pca_sigma=0)).draw(n, R, 11, "cpu")
    assert torch.equal(t2, top) and torch.equal(l2, left) and torch.equal(f2, flip) and a2 is None
    t3, l3, f3, a3 = TrainAugment(stats, _cfg(flip=False)).draw(n, R, 11, "cpu")
    assert torch.equal(t3, top) and torch.equal(l3, left) and f3 is None and torch.equal(a3, alpha)
    _, _, f4, a4 = TrainAugment(stats, _cfg(random_crop=False)).draw(n, R, 11, "cpu")
    assert torch.equal(f4, flip) and torch.equal(a4, alpha)
    g1, g2 = stream_generators(11, "cpu"), stream_generators(11, "cpu")
    assert set(g1) == {"crop", "flip", "color"}
    first = {k: torch.rand(4, generator=g).tolist() for k, g in g1.items()}
    assert first == {k: torch.rand(4, generator=g).tolist() for k, g in g2.items()}       # a function of the seed
    assert len({tuple(v) for v in first.values()}) == 3                                   # three different streams
    assert torch.rand(4, generator=stream_generators(12, "cpu")["crop"]).tolist() != first["crop"]


# ---------------------------------------------------------------------------------------------------
# PCA colour shift (Sec. 4.1)
# ---------------------------------------------------------------------------------------------------

def test_pca_shift_in_eigvec_span_with_right_scale():
    stats, n, sigma = imagenet_stats(8), 4000, 0.1
    eigval, eigvec = stats["eigval"].double(), stats["eigvec"].double()
    u8 = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    on = TrainAugment(stats, _cfg(6, 8, pca_sigma=sigma))
    d = on(u8, 5) - TrainAugment(stats, _cfg(6, 8, pca_sigma=0))(u8, 5)     # same crops and flips
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-6)        # one colour added to every pixel
    s = d[:, :, 0, 0].double()                                               # (n, 3)
    _, _, _, alpha = on.draw(n, 8, 5, "cpu")
    torch.testing.assert_close(s, pca_shift(alpha, on.eigval, on.eigvec).double(), rtol=0, atol=1e-6)
    a_scaled = s @ eigvec          # coordinates in the eigenbasis = a_i * lambda_i (eigvec orthonormal)
    recon = a_scaled @ eigvec.T
    assert torch.allclose(recon, s, atol=1e-5)                               # in the span of the eigenvectors
    a = a_scaled / eigval
    assert torch.allclose(a.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.01)
    assert torch.allclose(a.std(0), torch.full((3,), sigma, dtype=torch.float64), rtol=0.05)  # a_i ~ N(0, 0.1)
    assert abs(torch.corrcoef(a.T)[0, 1]) < 0.06                             # independent per component
    # eigenvalues paired with their own eigenvectors: the shift's std along p_i is 0.1 * lambda_i
    assert torch.allclose(a_scaled.std(0), sigma * eigval, rtol=0.05)


def test_pca_shift_covariance():
    """Shift covariance = V diag((sigma lambda)^2) V^T (Sec. 4.1), for a random basis V."""
    stats, n, sigma = _stats(2), 20000, 0.1
    aug = TrainAugment(stats, _cfg(pca_sigma=sigma))
    _, _, _, alpha = aug.draw(n, R, 1, "cpu")
    s = pca_shift(alpha, aug.eigval, aug.eigvec).double()                    # (n, 3)
    v, lam = stats["eigvec"].double(), stats["eigval"].double()
    want = v @ torch.diag((sigma * lam) ** 2) @ v.T
    scale = (sigma * lam[0]) ** 2
    assert s.mean(0).abs().max() < 3 * sigma * lam[0] / len(s) ** 0.5 * 3
    assert ((s.T.cov() - want).abs().max() / scale) < 0.05
    # pairing: the std along eigenvector i is sigma * lambda_i (a swapped pairing would fail here)
    assert torch.allclose((s @ v).std(0), sigma * lam, rtol=0.05)


def test_pca_differs_between_uses_and_off_at_zero():
    stats = _stats()
    _, u8 = _images(1)
    twice = u8.expand(2, -1, -1, -1)                                         # the same image twice in a batch
    aug = TrainAugment(stats, _cfg(random_crop=False, flip=False, pca_sigma=0.1))
    out = aug(twice, 0)
    assert not torch.equal(out[0], out[1])                                   # a shift per image
    assert not torch.equal(aug(twice, 1), out)                               # and per batch seed
    off = TrainAugment(stats, _cfg(random_crop=False, flip=False, pca_sigma=0))(twice, 0)
    assert torch.equal(off[0], off[1]) and torch.equal(off, EvalAugment(stats, _cfg())(twice))


# ---------------------------------------------------------------------------------------------------
# Normalisation (Sec. 2) and pixel_scale
# ---------------------------------------------------------------------------------------------------

def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def test_normalize_modes_on_nhwc_patches():
    stats = _stats(0, r=8)
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x, m = u8.float() / 255, stats["mean_image"]
    zero = torch.zeros(2, dtype=torch.long)
    norm = Normalize(stats, "mean_image", "cpu")
    out = norm(crop_flip(u8, zero, zero, 8), zero, zero, None)
    assert out.shape == (2, 8, 8, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, _nhwc(x - m), rtol=0, atol=1e-7)       # the whole image: x - mean image
    one = torch.ones(2, dtype=torch.long)
    torch.testing.assert_close(norm(crop_flip(u8, one, one, 6), one, one, None),
                               _nhwc(x[..., 1:7, 1:7] - m[:, 1:7, 1:7]), rtol=0, atol=1e-7)   # the region under it
    top, left, flip = torch.tensor([1, 2]), torch.tensor([0, 2]), torch.tensor([True, False])
    got = norm(crop_flip(u8, top, left, 6, flip), top, left, flip)
    for i in range(2):
        want = (x[i] - m)[:, top[i]:top[i] + 6, left[i]:left[i] + 6]
        want = want.flip(-1) if flip[i] else want                             # mirrored patch, mirrored mean
        torch.testing.assert_close(got[i], want.permute(1, 2, 0), rtol=0, atol=1e-7)
    shift = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]])
    torch.testing.assert_close(norm(crop_flip(u8, zero, zero, 8), zero, zero, None, shift),
                               _nhwc(x + shift[:, :, None, None] - m), rtol=0, atol=1e-6)
    channel = Normalize(stats, "channel", "cpu")(crop_flip(u8, zero, zero, 8), zero, zero, None)
    mean, std = stats["mean"][:, None, None], stats["std"][:, None, None]
    torch.testing.assert_close(channel, _nhwc((x - mean) / std), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        Normalize(stats, "pixel", "cpu")


def test_pixel_scale_multiplies_mean_image_output_only():
    stats = _stats()
    _, u8 = _images(4)
    for crops in (1, 10):
        one = EvalAugment(stats, _cfg(), crops=crops)(u8)
        assert torch.equal(EvalAugment(stats, _cfg(pixel_scale=255), crops=crops)(u8), one * 255)   # exactly
        ch = EvalAugment(stats, _cfg(normalize="channel"), crops=crops)(u8)
        assert torch.equal(EvalAugment(stats, _cfg(normalize="channel", pixel_scale=255), crops=crops)(u8), ch)
    train = TrainAugment(stats, _cfg())(u8, 9)
    assert torch.equal(TrainAugment(stats, _cfg(pixel_scale=255))(u8, 9), train * 255)
    ch = TrainAugment(stats, _cfg(normalize="channel"))(u8, 9)
    assert torch.equal(TrainAugment(stats, _cfg(normalize="channel", pixel_scale=255))(u8, 9), ch)
    zero = torch.zeros(4, dtype=torch.long)
    patches = crop_flip(u8, zero, zero, 40)
    a = Normalize(stats, "mean_image", "cpu")(patches, zero, zero, None)
    assert torch.equal(Normalize(stats, "mean_image", "cpu", pixel_scale=255)(patches, zero, zero, None), a * 255)
