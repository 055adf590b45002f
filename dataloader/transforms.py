"""The paper's preprocessing (Sec. 2) and augmentation (Sec. 4.1), as small named pieces.

Pixels are float tensors in [0, 1] (C, H, W) everywhere; statistics are in the same scale.
Order for one image (PCA lighting and normalisation act on the whole R x R image, cropping comes last):

    PIL -> ResizeCenterSquare(R) -> to_tensor -> PCALighting -> Normalize -> RandomCropFlip | centre crop | TenCrop

Normalising before cropping means every view subtracts the region of the mean image it was cut from
(the paper subtracts "the mean activity over the training set from each pixel"); a mirrored view
subtracts the mirrored region. PCA lighting adds one colour to every pixel, so cropping after it
changes nothing. Randomness comes from an explicit `torch.Generator`, seeded per sample from
(seed, epoch, index), so that a resumed run with any number of workers sees the same augmentations.
"""
import numpy as np
import torch
from PIL import Image


class ResizeCenterSquare:
    """Shorter side to `size` (bilinear, antialiased by PIL when shrinking), then the central size x size patch.

    Sec. 2: "rescaled the image such that the shorter side was of length 256, and then cropped out
    the central 256x256 patch". Output sizes round like torchvision's Resize / CenterCrop.
    """

    def __init__(self, size):
        self.size = size

    def __call__(self, im):
        w, h = im.size
        s = self.size
        if (w, h) != (s, s):
            if w <= h:
                ow, oh = s, max(s, int(s * h / w))
            else:
                ow, oh = max(s, int(s * w / h)), s
            if (ow, oh) != (w, h):
                im = im.resize((ow, oh), Image.BILINEAR)
            left, top = int(round((ow - s) / 2.0)), int(round((oh - s) / 2.0))
            im = im.crop((left, top, left + s, top + s))
        return im


def to_tensor(im):
    """PIL image (RGB or L) -> float32 tensor (C, H, W) in [0, 1]."""
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def center_crop(x, crop):
    """(..., H, W) -> (..., crop, crop), the centre patch (torchvision's rounding)."""
    h, w = x.shape[-2:]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[..., top:top + crop, left:left + crop]


class RandomCropFlip:
    """Sec. 4.1: a random crop x crop patch and, with probability 1/2, its horizontal reflection.

    `random=False` takes the centre patch instead (deterministic tests, ablations); `flip=False`
    never mirrors. Draws, in this order: top, left, flip (so a sample's draws do not depend on
    the options of other pieces).
    """

    def __init__(self, crop, flip=True, random=True):
        self.crop, self.flip, self.random = crop, flip, random

    def params(self, h, w, g):
        """(top, left, mirrored) for an h x w image from generator `g`."""
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
        mirrored = bool(torch.rand(1, generator=g) < 0.5)
        if not self.random:
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        return top, left, mirrored and self.flip

    def __call__(self, x, g):
        """(C, H, W) -> (C, crop, crop)."""
        top, left, mirrored = self.params(x.shape[-2], x.shape[-1], g)
        x = x[:, top:top + self.crop, left:left + self.crop]
        return x.flip(-1) if mirrored else x


class PCALighting:
    """Sec. 4.1's colour augmentation: add eigvec @ (a * eigval) to every pixel, a_i ~ N(0, sigma).

    Args:
        eigval: (C,) eigenvalues of the RGB covariance of training pixels ([0, 1] scale).
        eigvec: (C, C) with eigvec[:, i] the eigenvector of eigval[i].
        sigma: std of a_i (the paper: 0.1); 0 turns the augmentation off.
    A fresh `a` is drawn for every call, i.e. every time an image is used. No clipping (the paper has none).
    """

    def __init__(self, eigval, eigvec, sigma=0.1):
        self.eigval = torch.as_tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.as_tensor(eigvec, dtype=torch.float32)
        self.sigma = float(sigma)

    def shift(self, g):
        """The (C,) colour shift for one use of one image."""
        a = torch.randn(self.eigval.shape[0], generator=g) * self.sigma
        return self.eigvec @ (a * self.eigval)

    def __call__(self, x, g):
        """(C, H, W) -> (C, H, W) with the same shift added to every pixel."""
        if self.sigma == 0:
            return x
        return x + self.shift(g)[:, None, None]


class Normalize:
    """Input normalisation.

    mode "mean_image" (Sec. 2, the paper): subtract the training mean image; given an input smaller
    than the mean image, the mean image's centre patch of that size is subtracted.
    mode "channel": (x - mean) / std per channel (the common choice).
    """

    def __init__(self, stats, mode="mean_image"):
        if mode not in ("mean_image", "channel"):
            raise ValueError(f"normalize mode must be 'mean_image' or 'channel', got {mode!r}")
        self.mode = mode
        self.mean_image = torch.as_tensor(stats["mean_image"], dtype=torch.float32)
        self.mean = torch.as_tensor(stats["mean"], dtype=torch.float32)[:, None, None]
        self.std = torch.as_tensor(stats["std"], dtype=torch.float32)[:, None, None]

    def __call__(self, x):
        """(..., C, H, W) -> same shape."""
        if self.mode == "channel":
            return (x - self.mean) / self.std
        m = self.mean_image
        if m.shape[-2:] != x.shape[-2:]:
            m = center_crop(m, x.shape[-1])
        return x - m


class TenCrop:
    """Sec. 4.1's test views: (C, R, R) -> (10, C, crop, crop).

    Order as torchvision's ten_crop: top-left, top-right, bottom-left, bottom-right, centre, then
    the same five cut from the mirrored image (so view 5 is the mirror of view 1, the top-right corner).
    """

    def __init__(self, crop):
        self.crop = crop

    def five(self, x):
        c = self.crop
        h, w = x.shape[-2:]
        return [x[:, :c, :c], x[:, :c, w - c:], x[:, h - c:, :c], x[:, h - c:, w - c:], center_crop(x, c)]

    def __call__(self, x):
        return torch.stack(self.five(x) + self.five(x.flip(-1)))


class TrainTransform:
    """PIL image -> (C, crop, crop): resize/centre square, PCA lighting, normalise, random crop + flip."""

    def __init__(self, data_cfg, stats):
        self.resize = ResizeCenterSquare(data_cfg.resize)
        self.lighting = PCALighting(stats["eigval"], stats["eigvec"], data_cfg.pca_sigma)
        self.normalize = Normalize(stats, data_cfg.normalize)
        self.crop = RandomCropFlip(data_cfg.crop, flip=data_cfg.flip, random=data_cfg.random_crop)

    def __call__(self, im, g):
        x = to_tensor(self.resize(im))
        return self.crop(self.normalize(self.lighting(x, g)), g)


class EvalTransform:
    """PIL image -> (C, crop, crop) centre view, or (10, C, crop, crop) with crops=10. Deterministic."""

    def __init__(self, data_cfg, stats, crops=1):
        if crops not in (1, 10):
            raise ValueError(f"crops must be 1 or 10, got {crops}")
        self.resize = ResizeCenterSquare(data_cfg.resize)
        self.normalize = Normalize(stats, data_cfg.normalize)
        self.crop, self.crops = data_cfg.crop, crops
        self.ten = TenCrop(data_cfg.crop)

    def __call__(self, im, g=None):
        x = self.normalize(to_tensor(self.resize(im)))
        return self.ten(x) if self.crops == 10 else center_crop(x, self.crop)
