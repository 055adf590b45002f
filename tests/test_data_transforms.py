"""The paper's crop, flip, PCA lighting (Sec. 4.1), normalisation (Sec. 2) and ten views, one by one."""
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dataloader.stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, imagenet_stats
from dataloader.transforms import (Normalize, PCALighting, RandomCropFlip, ResizeCenterSquare, TenCrop,
                                   center_crop)


def _coords(r=32):
    """(2, r, r) image whose pixels hold their own (row, col): a crop reveals where it came from."""
    rows, cols = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    return torch.stack([rows, cols]).float()


def test_random_crop_inside_and_flip_about_half():
    x = _coords(32)
    t = RandomCropFlip(24)
    g = torch.Generator().manual_seed(0)
    flips, tops, lefts = 0, set(), set()
    n = 2000
    for _ in range(n):
        y = t(x, g)
        assert y.shape == (2, 24, 24)
        top, left = int(y[0, 0, 0]), int(y[1, 0, :].min())
        assert 0 <= top <= 8 and 0 <= left <= 8  # the patch lies inside the 32x32 image
        assert torch.equal(y[0], torch.arange(top, top + 24).float()[:, None].expand(24, 24))
        mirrored = bool(y[1, 0, 0] > y[1, 0, -1])
        cols = torch.arange(left, left + 24).float()
        assert torch.equal(y[1, 0], cols.flip(0) if mirrored else cols)
        flips += mirrored
        tops.add(top)
        lefts.add(left)
    assert abs(flips / n - 0.5) < 0.05  # 5 sigma is ~0.056
    assert tops == set(range(9)) and lefts == set(range(9))  # every position reachable


def test_centre_crop_when_not_random_and_no_flip():
    x = _coords(32)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert torch.equal(RandomCropFlip(24, flip=False, random=False)(x, g), x[:, 4:28, 4:28])


def test_ten_views_pixel_exact():
    torch.manual_seed(0)
    x = torch.rand(3, 40, 40)
    v = TenCrop(32)(x)
    assert v.shape == (10, 3, 32, 32)
    manual = [x[:, :32, :32], x[:, :32, 8:], x[:, 8:, :32], x[:, 8:, 8:], x[:, 4:36, 4:36]]
    for i in range(5):
        assert torch.equal(v[i], manual[i])
    # views 5..9 are the mirrored image's five crops: mirrors of tr, tl, br, bl, centre
    for i, j in zip(range(5, 10), (1, 0, 3, 2, 4)):
        assert torch.equal(v[i], manual[j].flip(-1))
    for i, ref in enumerate(TF.ten_crop(x, 32)):
        assert torch.equal(v[i], ref)


def test_pca_shift_in_eigvec_span_with_right_scale():
    eigval, eigvec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    t = PCALighting(eigval, eigvec, sigma=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.full((3, 4, 4), 0.5)
    shifts = []
    for _ in range(4000):
        y = t(x, g)
        d = y - x
        assert torch.allclose(d, d[:, :1, :1].expand_as(d))  # one colour added to every pixel
        shifts.append(d[:, 0, 0])
    s = torch.stack(shifts).double()  # (n, 3)
    a_scaled = s @ eigvec.double()  # coordinates in the eigenbasis = a_i * lambda_i (eigvec orthonormal)
    recon = a_scaled @ eigvec.double().T
    assert torch.allclose(recon, s, atol=1e-5)  # in the span of the eigenvectors
    a = a_scaled / eigval.double()
    assert torch.allclose(a.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.01)
    assert torch.allclose(a.std(0), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.05)  # a_i ~ N(0, 0.1)
    assert abs(torch.corrcoef(a.T)[0, 1]) < 0.06  # independent per component
    # eigenvalues paired with their own eigenvectors: the shift's std along p_i is 0.1 * lambda_i
    assert torch.allclose(a_scaled.std(0), 0.1 * eigval.double(), rtol=0.05)


def test_pca_differs_between_uses_and_off_at_zero():
    t = PCALighting(IMAGENET_EIGVAL, IMAGENET_EIGVEC, sigma=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 8)
    assert not torch.equal(t(x, g), t(x, g))
    assert torch.equal(PCALighting(IMAGENET_EIGVAL, IMAGENET_EIGVEC, sigma=0)(x, g), x)


def test_normalize_modes():
    stats = imagenet_stats(8)
    stats["mean_image"] = torch.rand(3, 8, 8)
    x = torch.rand(3, 8, 8)
    assert torch.allclose(Normalize(stats, "mean_image")(x), x - stats["mean_image"])
    assert torch.allclose(Normalize(stats, "mean_image")(x[:, 1:7, 1:7]), x[:, 1:7, 1:7] - stats["mean_image"][:, 1:7, 1:7])
    m, s = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(Normalize(stats, "channel")(x), (x - m[:, None, None]) / s[:, None, None])


def test_resize_center_square_sizes_and_centre():
    im = Image.new("RGB", (100, 50))
    im.paste((255, 0, 0), (0, 0, 25, 50))  # red left quarter: cut off by the centre square
    out = ResizeCenterSquare(40)(im)
    assert out.size == (40, 40)
    assert out.getpixel((3, 20)) == (0, 0, 0)
    ref = TF.center_crop(TF.resize(im, 40, interpolation=TF.InterpolationMode.BILINEAR), 40)
    assert out.tobytes() == ref.tobytes()  # same as torchvision's Resize + CenterCrop
    assert ResizeCenterSquare(40)(Image.new("RGB", (30, 90))).size == (40, 40)
    assert center_crop(torch.zeros(3, 9, 9), 5).shape == (3, 5, 5)
