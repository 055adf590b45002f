"""The paper's augmentation (Sec. 4.1) as batched tensor operations on whatever device trains.

The per-image transforms of `dataloader.transforms` run in DataLoader workers, one PIL image at a time.
Here the same steps run on a whole uint8 batch at once, on the GPU in use (on the CPU in tests), with no
Python loop over images:

    uint8 (B, 3, S, S)  -> random crop (per-image offset) + horizontal flip   [gather, still uint8]
                        -> float in [0, 1] (ToTensor scale)
                        -> + PCA colour shift, one per image                 (Sec. 4.1)
                        -> - mean image (or (x - mean) / std)                  (Sec. 2)
                        -> (B, 3, crop, crop), channels_last, in `dtype`

Evaluation: the centre crop, or the ten views (four corners, centre, and their reflections; Sec. 4.1)
as (B, 10, 3, crop, crop). The result equals the per-image transforms pixel for pixel (tests/test_gpu_augment.py).

Randomness comes from a `torch.Generator` the caller seeds (the store loader seeds it from
(seed, epoch, rank, step)), so a resumed run draws the same crops, flips and colour shifts.
"""
import torch



def center_offset(size, crop):
    """Offset of a centred crop (torchvision's rounding: int(round((size - crop) / 2)))."""
    return int(round((size - crop) / 2.0))


def ten_crop_offsets(size, crop):
    """The paper's ten views (Sec. 4.1) as (top, left, mirrored), in dataloader.transforms.TenCrop's order.

    Views 0-4: top-left, top-right, bottom-left, bottom-right, centre of the image; views 5-9: the
    same five cut from the mirrored image, i.e. mirrored patches whose left edge in the original is
    size - crop - (left in the mirror).
    """
    c, e = center_offset(size, crop), size - crop
    five = [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
    return [(t, l, False) for t, l in five] + [(t, e - l, True) for t, l in five]


def crop_flip(images, top, left, crop, flip=None, source=None):
    """Cut crop x crop patches at per-patch offsets, mirrored where `flip` is True; no loop over images.

    images: (B, 3, S, S) any dtype; channels_last memory is read in place, other layouts cost one copy.
    top, left: (M,) long; flip: (M,) bool or None; source: (M,) long, the image each patch comes from
    (default: patch i from image i, M = B).
    Returns (M, crop, crop, 3), contiguous NHWC (permute(0, 3, 1, 2) gives channels_last NCHW).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    nhwc = images.permute(0, 2, 3, 1).contiguous()                  # (B, S, S, 3); free for channels_last
    b, h, w, c = nhwc.shape
    flat = nhwc.view(-1)
    # Every run of `crop` consecutive pixels, as one row of crop * 3 values (overlapping windows of the
    # flat buffer): a patch is `crop` such rows, so one index_select of whole rows cuts all patches.
    # Measured on 2 CPU cores: 4x faster than advanced indexing of the pixels.
    windows = flat.as_strided((b * h * w - crop + 1, crop * c), (c, 1))
    src = torch.arange(b, device=images.device) if source is None else source
    ar = torch.arange(crop, device=images.device)
    first = ((src * h)[:, None] + top[:, None] + ar) * w + left[:, None]   # (M, crop): first pixel of each row
    out = windows.index_select(0, first.reshape(-1)).view(-1, crop, crop, c)
    if flip is not None:
        out = _flip_where(out, flip)
    return out


def _flip_where(patches, flip):
    """patches (M, crop, crop, 3) with those where `flip` (M,) is True mirrored left-right.

    GPU: torch.where (no host sync). CPU: torch.where over uint8 took 6.0 ms for 32 patches of 224;
    mirroring only the flipped patches and restoring the order with index_select takes 1.6 ms.
    """
    if patches.device.type != "cpu":
        return torch.where(flip[:, None, None, None], patches.flip(2), patches)
    flipped, kept = flip.nonzero().squeeze(1), (~flip).nonzero().squeeze(1)
    parts = torch.cat([patches.index_select(0, kept), patches.index_select(0, flipped).flip(2)])
    return parts.index_select(0, torch.cat([kept, flipped]).argsort())   # back to the original order


def pca_shift(alpha, eigval, eigvec):
    """Per-image RGB shift [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T (Sec. 4.1).

    alpha: (B, 3) draws a_i ~ N(0, sigma); eigval: (3,); eigvec: (3, 3), column i = eigenvector i.
    Returns (B, 3), in the [0, 1] pixel scale of the stats.
    """
    return (alpha * eigval) @ eigvec.T


class _Normalize:
    """The data issue's `Normalize` on NHWC float patches, with the stats held on the device.

    dataloader.transforms normalises the whole R x R image before cropping, so each patch subtracts
    the region of the mean image it was cut from (mirrored for a mirrored patch). Here the same region
    is gathered from the mean image with the patch's own offsets: the same numbers, pixel for pixel.
    """

    def __init__(self, stats, mode, device):
        if mode not in ("mean_image", "channel"):
            raise ValueError(f"normalize must be 'mean_image' or 'channel', got {mode!r}")
        self.mode, self.div = mode, None
        if mode == "mean_image":
            # (3, R, R) -> (2, 3, R, R) channels_last: the mean image and its mirror image, so a mirrored
            # patch's mean is an unmirrored patch of the mirror image (one gather, no flip)
            m = torch.as_tensor(stats["mean_image"], dtype=torch.float32)
            self.mean_image = torch.stack([m, m.flip(-1)]).to(device).contiguous(memory_format=torch.channels_last)
        else:
            self.sub = torch.as_tensor(stats["mean"], dtype=torch.float32).to(device)  # (3,) broadcasts on C
            self.div = torch.as_tensor(stats["std"], dtype=torch.float32).to(device)

    def __call__(self, patches, top, left, flip, shift=None):
        """patches: (M, crop, crop, 3) uint8 cut at (top, left, flip); shift: (M, 3) or None.

        Returns (M, crop, crop, 3) float32: (patch / 255 + shift - mean) [/ std].
        """
        m, crop = patches.shape[:2]
        # Work on (M, crop, crop * 3) rows: per-pixel RGB constants become long rows that vectorise
        # (a broadcast over a last dimension of 3 was 10x slower on the CPU).
        x = torch.div(patches.reshape(m, crop, crop * 3), 255)          # ToTensor's float / 255, in one pass
        if shift is not None:
            x.add_(shift.repeat(1, crop)[:, None, :])                   # PCA shift before normalising
        if self.mode == "channel":
            return x.sub_(self.sub.repeat(crop)).div_(self.div.repeat(crop)).view(m, crop, crop, 3)
        r = self.mean_image.shape[-1]
        if flip is None:
            mean = crop_flip(self.mean_image, top, left, crop, None, torch.zeros_like(top))
        else:
            mirrored_left = torch.where(flip, r - crop - left, left)   # the patch's place in the mirror image
            mean = crop_flip(self.mean_image, top, mirrored_left, crop, None, flip.long())
        return x.sub_(mean.view(m, crop, crop * 3)).view(m, crop, crop, 3)


def _to_nchw(x, channels_last, dtype):
    """(M, crop, crop, 3) -> (M, 3, crop, crop): channels_last is a free view, else one copy."""
    x = x.permute(0, 3, 1, 2).to(dtype)
    return x if channels_last else x.contiguous()


class TrainAugment:
    """Batched training augmentation: random crop, flip, PCA colour shift, normalisation.

    Args:
        stats: the data stats dict (`dataloader.stats`): mean_image, mean, std, eigval, eigvec.
        crop: patch size (224 in the paper).
        random_crop / flip / pca_sigma / normalize: as the `data` config fields of the same names.
        channels_last: return channels_last memory (free: the gather already writes that layout).
        dtype: output dtype (e.g. torch.bfloat16 under autocast); float32 by default.
        device: where the stats live (the device of the images).
    Call: ``aug(images_u8 (B, 3, S, S), generator) -> (B, 3, crop, crop)``.
    """

    def __init__(self, stats, crop, *, random_crop=True, flip=True, pca_sigma=0.1, normalize="mean_image",
                 channels_last=True, dtype=torch.float32, device="cpu"):
        self.crop, self.random_crop, self.flip, self.pca_sigma = crop, random_crop, flip, pca_sigma
        self.channels_last, self.dtype = channels_last, dtype
        self.norm = _Normalize(stats, normalize, device)
        self.eigval = torch.as_tensor(stats["eigval"], dtype=torch.float32).to(device)
        self.eigvec = torch.as_tensor(stats["eigvec"], dtype=torch.float32).to(device)

    def draw(self, n, size, generator, device):
        """The random numbers for n images of size x size: top, left (n,) long, flip (n,) bool, alpha (n, 3)."""
        if self.random_crop:
            # Uniform over every valid offset 0..size-crop, as the per-image RandomCropFlip.
            top = torch.randint(0, size - self.crop + 1, (n,), generator=generator, device=device)
            left = torch.randint(0, size - self.crop + 1, (n,), generator=generator, device=device)
        else:
            top = left = torch.full((n,), center_offset(size, self.crop), dtype=torch.long, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5 if self.flip else None
        alpha = None
        if self.pca_sigma > 0:
            alpha = torch.randn(n, 3, generator=generator, device=device) * self.pca_sigma
        return top, left, flip, alpha

    def __call__(self, images, generator=None):
        size = images.shape[-1]
        if images.shape[-2] != size or size < self.crop:
            raise ValueError(f"expected square images of at least {self.crop} px, got {tuple(images.shape)}")
        top, left, flip, alpha = self.draw(images.shape[0], size, generator, images.device)
        shift = pca_shift(alpha, self.eigval, self.eigvec) if alpha is not None else None
        x = self.norm(crop_flip(images, top, left, self.crop, flip), top, left, flip, shift)
        return _to_nchw(x, self.channels_last, self.dtype)


class EvalAugment:
    """Batched test-time views: the centre crop (crops=1) or the paper's ten views (crops=10).

    Call: ``aug(images_u8 (B, 3, S, S)) -> (B, 3, crop, crop)`` or ``(B, 10, 3, crop, crop)``.
    View order as `dataloader.transforms.TenCrop`.
    """

    def __init__(self, stats, crop, *, crops=1, normalize="mean_image", channels_last=True,
                 dtype=torch.float32, device="cpu"):
        if crops not in (1, 10):
            raise ValueError(f"crops must be 1 or 10, got {crops}")
        self.crop, self.crops, self.channels_last, self.dtype = crop, crops, channels_last, dtype
        self.norm = _Normalize(stats, normalize, device)

    def __call__(self, images, generator=None):
        b, size, dev = images.shape[0], images.shape[-1], images.device
        if self.crops == 1:
            c = center_offset(size, self.crop)
            views = [(c, c, False)]
        else:
            views = ten_crop_offsets(size, self.crop)
        top, left, flip = (torch.tensor([v[i] for v in views], device=dev).repeat(b) for i in range(3))
        source = torch.arange(b, device=dev).repeat_interleave(len(views))   # (B*V,): image of each view
        flip = flip if self.crops == 10 else None
        x = self.norm(crop_flip(images, top, left, self.crop, flip, source), top, left, flip)
        x = _to_nchw(x, self.channels_last, self.dtype)                   # (B*V, 3, crop, crop)
        if self.crops == 1:
            return x
        # (B*10, 3, crop, crop) -> (B, 10, 3, crop, crop); a 5-D tensor has no channels_last format.
        return x.contiguous().view(b, 10, 3, self.crop, self.crop)
