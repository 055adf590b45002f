"""Opening images robustly: any common mode to RGB (or L), bad files and decompression bombs to one-line errors.

ImageNet holds about 20 CMYK JPEGs and one PNG named .JPEG; other data sets bring grayscale, palette,
RGBA and 16-bit PNGs. All of them load as 8-bit RGB here. A file that cannot be decoded raises
`BadImageError` naming the file (never a grey substitute).
"""
import os
import warnings

import numpy as np
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
