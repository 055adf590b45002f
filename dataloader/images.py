"""Finding and opening images: the ImageFolder layout, robust decoding, and the paper's R x R square (Sec. 2).

Layout: ROOT/train/<class>/<image>, ROOT/val/<class>/<image> (`scan_root`); hidden entries and non-image
files are ignored. Decoding: any common mode to RGB (or L), bad files and decompression bombs to one-line
errors. `load_square` gives the uint8 (C, R, R) image every loader starts from.

ImageNet holds about 20 CMYK JPEGs and one PNG named .JPEG; other data sets bring grayscale, palette,
RGBA and 16-bit PNGs. All of them load as 8-bit RGB here. A file that cannot be decoded raises
`BadImageError` naming the file (never a grey substitute).
"""
import os
import warnings
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from alexnet.errors import UserError

# Suffixes (lower case) that are read as images; every other file in a class folder is ignored.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Refuse images above this many pixels before decoding them (a decompression bomb would otherwise
# allocate gigabytes). ImageNet's largest images are far below this (about 20 megapixels).
MAX_IMAGE_PIXELS = 100_000_000


class BadImageError(UserError):
    """A file that cannot be read as an image.

    When raised inside a DataLoader worker, PyTorch re-raises it in the main process as
    ``BadImageError("Caught BadImageError in DataLoader worker ... Original Traceback ...")``;
    the constructor keeps only the original one-line message so the error stays one line.
    """

    def __init__(self, msg=""):
        if "Original Traceback" in msg:
            last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
            msg = last.split("BadImageError: ", 1)[-1]
        super().__init__(msg)


def is_image_file(name):
    """True for a non-hidden file name with an image suffix (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _to_8bit(im):
    """Integer/float modes ("I;16", "I", "F") -> mode "L", scaled from the 16-bit range where needed."""
    a = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
        a = a.astype(np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_mode(im, mode="RGB"):
    """Convert a decoded PIL image of any mode to `mode` ("RGB" or "L").

    Transparent images (RGBA, LA, palette with transparency) are composited onto white, so
    transparent regions do not take whatever colour happens to be stored under them.
    """
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode != mode:
        im = im.convert(mode)  # CMYK, YCbCr, L, 1, RGB(A) -> RGB; anything -> L
    return im


def open_image(path, mode="RGB", max_pixels=MAX_IMAGE_PIXELS):
    """Decode the image at `path` fully and return it as a PIL image in `mode` ("RGB" or "L").

    Raises:
        BadImageError: the file is missing, empty, truncated, not an image, or larger than
            `max_pixels` (a decompression bomb); the message names the file.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(f"image file {path} is empty (0 bytes); delete it or set data.bad_images=skip")
        with warnings.catch_warnings():
            # PIL warns above its own limit (89 M pixels) and raises above twice that; the explicit
            # check below, made on the header before decoding, is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImageError(
                        f"image {path} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                        "(a decompression bomb?); shrink or remove it")
                im.load()
                return to_mode(im, mode)
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image {path} refused as a decompression bomb ({e}); shrink or remove it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImageError(
            f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace it, "
            "or set data.bad_images=skip") from None


def decode_jpeg(data):
    """JPEG bytes -> uint8 array (H, W, 3)."""
    with Image.open(BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


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


def to_uint8_tensor(im):
    """PIL image (RGB or L) -> uint8 tensor (C, H, W)."""
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def load_square(path, size, mode="RGB"):
    """The image at `path` as the paper's input square: uint8 (C, size, size), C = 3 (RGB) or 1 (L)."""
    return to_uint8_tensor(ResizeCenterSquare(size)(open_image(path, mode)))


# ---------------------------------------------------------------- the ImageFolder layout

LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"


def find_classes(split_dir):
    """Sorted non-hidden sub-folder names of `split_dir` (a hidden folder is never a class)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_images(split_dir, class_names):
    """[(path, class_index)] of the image files under split_dir/<class>/ (recursively; hidden entries skipped)."""
    samples = []
    for idx, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            samples += [(os.path.join(dirpath, f), idx) for f in sorted(filenames) if is_image_file(f)]
    return samples


def scan_split(split_dir):
    """(class_names, [(path, class_index)]) of one split; no class folder or an empty one is an error."""
    classes = find_classes(split_dir)
    if not classes:
        raise UserError(f"{split_dir} holds no class folders; {LAYOUT}")
    samples = list_images(split_dir, classes)
    counts = [0] * len(classes)
    for _, i in samples:
        counts[i] += 1
    empty = [c for c, k in zip(classes, counts) if k == 0]
    if empty:
        raise UserError(f"class folders without images in {split_dir}: {', '.join(empty)}; "
                        "add images or remove them (an empty class would shift every later class index)")
    return classes, samples


def scan_root(root):
    """Check ROOT's layout; return (class_names, train_samples, val_samples). Errors name the path."""
    if not root:
        raise UserError(f"no data root given; set data.root (or --data); {LAYOUT}")
    if not os.path.isdir(root):
        raise UserError(f"data root {root} does not exist; {LAYOUT} (or set data.demo=true for the demo set)")
    missing = [s for s in ("train", "val") if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise UserError(f"data root {root} has no {' or '.join(s + '/' for s in missing)} folder; {LAYOUT}")
    train_classes, train = scan_split(os.path.join(root, "train"))
    val_classes, val = scan_split(os.path.join(root, "val"))
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise UserError(f"train and val classes differ in {root}: only in train: {only_t or 'none'}; "
                        f"only in val: {only_v or 'none'}")
    return train_classes, train, val


def read_synsets(path):
    """ImageNet's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca" per line) -> {wnid: name}."""
    if not os.path.isfile(path):
        raise UserError(f"synset mapping file {path} does not exist")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return out


def class_labels(class_names, synset_mapping=""):
    """Readable labels in class order: the synset mapping's names where it has them, else the folder names."""
    if not synset_mapping:
        return list(class_names)
    names = read_synsets(synset_mapping)
    return [names.get(c, c) for c in class_names]
