"""RELIABILITY.md's bad-input rows for image files: odd modes load as RGB, bad files give one-line errors."""
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from alexnet.errors import UserError
from dataloader.folder import ImageDataset
from dataloader.images import BadImageError, ResizeCenterSquare, load_square, open_image, to_uint8_tensor


def _rgb_array(h=16, w=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "gray_jpeg", "palette_png", "palette_transparent_png",
                                  "rgba_png", "la_png", "gray16_png", "bilevel_png", "png_named_jpeg"])
def test_odd_modes_load_as_rgb(tmp_path, kind):
    base = Image.fromarray(_rgb_array())
    path = str(tmp_path / "img.jpg")
    if kind == "cmyk_jpeg":
        base.convert("CMYK").save(path, "JPEG")
    elif kind == "gray_jpeg":
        base.convert("L").save(path, "JPEG")
    elif kind == "palette_png":
        path = path[:-4] + ".png"
        base.convert("P").save(path)
    elif kind == "palette_transparent_png":
        path = path[:-4] + ".png"
        base.convert("P").save(path, transparency=0)
    elif kind == "rgba_png":
        path = path[:-4] + ".png"
        rgba = base.convert("RGBA")
        rgba.putalpha(0)  # fully transparent: composited onto white
        rgba.save(path)
    elif kind == "la_png":
        path = path[:-4] + ".png"
        base.convert("LA").save(path)
    elif kind == "gray16_png":
        path = path[:-4] + ".png"
        Image.fromarray(np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)).save(path)
    elif kind == "bilevel_png":
        path = path[:-4] + ".png"
        base.convert("1").save(path)
    elif kind == "png_named_jpeg":
        path = path[:-4] + ".JPEG"
        base.save(path, "PNG")
    im = open_image(path)
    assert im.mode == "RGB"
    x = to_uint8_tensor(im)
    assert x.shape == (3, im.height, im.width) and x.dtype == torch.uint8
    assert np.array_equal(x.permute(1, 2, 0).numpy(), np.asarray(im))
    sq = load_square(path, 12)                      # the R x R square every loader starts from
    assert sq.shape == (3, 12, 12) and sq.dtype == torch.uint8
    assert load_square(path, 12, "L").shape == (1, 12, 12)
    if kind == "png_named_jpeg":
        assert np.array_equal(np.asarray(im), _rgb_array())  # lossless: decoded as the PNG it is
    if kind == "rgba_png":
        assert np.all(np.asarray(im) == 255)
    if kind == "gray16_png":
        assert np.asarray(im)[:, :, 0].tolist() == [[0, 255], [100, 200]]  # 16 -> 8 bit by /257, not clipped
    assert open_image(path, mode="L").mode == "L"


def _bad_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_rgb_array(64, 64)).save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    return [str(tmp_path / n) for n in ("truncated.jpg", "empty.jpg", "text.jpg")]


def test_bad_files_give_one_line_error_naming_the_file(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(BadImageError) as e:
            open_image(path)
        msg = str(e.value)
        assert path in msg and "\n" not in msg
        assert isinstance(e.value, UserError)


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (a decompression bomb needs no more to be refused)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return str(path)


@pytest.mark.parametrize("w,h", [(12_000, 10_000), (60_000, 60_000)])
def test_decompression_bomb_refused(tmp_path, w, h):
    path = _png_header_only(tmp_path / "bomb.png", w, h)
    with pytest.raises(BadImageError) as e:
        open_image(path)
    assert path in str(e.value) and "decompression bomb" in str(e.value)
    with pytest.raises(BadImageError):
        open_image(_png_header_only(tmp_path / "small.png", 100, 100), max_pixels=5000)


def test_skip_bad_images_substitutes_counts_and_stops_past_limit(tmp_path):
    bad = _bad_files(tmp_path)
    good = str(tmp_path / "good.jpg")
    samples = [(good, 0), (bad[0], 1), (bad[1], 2), (good, 3), (bad[2], 4)]
    with pytest.raises(BadImageError):
        ImageDataset(samples, 16)[1]  # default: error
    ds = ImageDataset(samples, 16, bad_images="skip", max_bad=3)
    x, y, seed = ds[1]
    assert y == 3 and ds.bad_count == 2  # the next readable sample, deterministic; 2 bad files met
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and torch.equal(x, load_square(good, 16))
    assert ds[(1, 7)][1:] == (3, 7) and ds.bad_count == 2  # counted once per file; the sample seed passes through
    assert ds[4][1] == 0 and ds.bad_count == 3  # wraps around
    ds = ImageDataset(samples, 16, bad_images="skip", max_bad=1)
    with pytest.raises(UserError, match="max_bad_images=1"):
        ds[1]


def test_worker_error_stays_one_line(tmp_path):
    bad = _bad_files(tmp_path)
    ds = ImageDataset([(bad[0], 0)], 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(BadImageError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"cannot read image {bad[0]}") and "\n" not in str(e.value)


def test_resize_center_square_sizes_and_centre(tmp_path):
    """Sec. 2's R x R square equals torchvision's Resize + CenterCrop, pixel for pixel (moved from
    test_data_transforms.py: ResizeCenterSquare now lives in dataloader/images.py)."""
    im = Image.new("RGB", (100, 50))
    im.paste((255, 0, 0), (0, 0, 25, 50))  # red left quarter: cut off by the centre square
    im.paste((0, 90, 200), (60, 10, 80, 30))
    out = ResizeCenterSquare(40)(im)
    assert out.size == (40, 40)
    assert out.getpixel((3, 20)) == (0, 0, 0)
    ref = TF.center_crop(TF.resize(im, 40, interpolation=TF.InterpolationMode.BILINEAR), 40)
    assert out.tobytes() == ref.tobytes()  # same as torchvision's Resize + CenterCrop
    assert ResizeCenterSquare(40)(Image.new("RGB", (30, 90))).size == (40, 40)
    # load_square: the same square from a file, as uint8 (C, R, R)
    Image.fromarray(_rgb_array(37, 61)).save(tmp_path / "odd.png")
    ref = TF.center_crop(TF.resize(Image.open(tmp_path / "odd.png"), 24), 24)
    sq = load_square(str(tmp_path / "odd.png"), 24)
    assert sq.shape == (3, 24, 24) and np.array_equal(sq.permute(1, 2, 0).numpy(), np.asarray(ref))
