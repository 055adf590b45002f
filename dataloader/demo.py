"""The bundled demo dataset: ten classes of drawn shapes and textures, written as real JPEG files.

Each image is a shape or texture (circle, ring, square, triangle, cross, star, horizontal stripes,
vertical stripes, checker, dots) at a random position, scale and tilt, in a random colour on a
random two-colour gradient background, with pixel noise, a couple of stray lines and a random JPEG
quality. It is easy enough that a small AlexNet learns it on a CPU in minutes, and hard enough that
it does not reach 100% in one epoch. Every image is a pure function of (seed, split, class, index),
so the same seed writes the same bytes.

    python -m dataloader.demo ROOT [--seed 0] [--train-per-class 300] [--val-per-class 50] [--size 72]

Defaults: 10 classes x (300 train + 50 val) images of 72x72 pixels, about 7 MB, 7-20 s on 2 CPU cores.
The demo config trains on them with resize 72 and random 64x64 crops.
"""
import argparse
import functools
import os

import numpy as np
from PIL import Image, ImageDraw

from alexnet.errors import UserError, run_main

CLASSES = ("circle", "ring", "square", "triangle", "cross", "star",
           "stripes_h", "stripes_v", "checker", "dots")

_SUPERSAMPLE = 2  # draw masks at 2x and average down: anti-aliased edges


def _mask(name, u, v, rng):
    """Coverage mask (bool array) of class `name` in local shape coordinates u, v (radius 1)."""
    r = np.hypot(u, v)
    inside_square = np.maximum(np.abs(u), np.abs(v)) < 0.85
    if name == "circle":
        return r < 1.0
    if name == "ring":
        return (r < 1.0) & (r > rng.uniform(0.45, 0.65))
    if name == "square":
        return inside_square
    if name == "triangle":  # equilateral, circumradius 1
        return (v > -0.5) & (np.sqrt(3) * u - v < 1.0) & (-np.sqrt(3) * u - v < 1.0)
    if name == "cross":
        w = rng.uniform(0.22, 0.35)
        return ((np.abs(u) < w) & (np.abs(v) < 1.0)) | ((np.abs(v) < w) & (np.abs(u) < 1.0))
    if name == "star":  # five points: radius swings between 0.45 and 1 around the circle
        theta = np.arctan2(v, u)
        return r < 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 2
    period = rng.uniform(0.35, 0.6)  # textures: a square patch with a pattern of this period
    if name == "stripes_h":
        return inside_square & (np.sin(np.pi * v / period * 2) > 0)
    if name == "stripes_v":
        return inside_square & (np.sin(np.pi * u / period * 2) > 0)
    if name == "checker":
        return inside_square & (np.sin(np.pi * u / period * 2) * np.sin(np.pi * v / period * 2) > 0)
    if name == "dots":
        fu, fv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return inside_square & (np.hypot(fu, fv) < 0.28)
    raise ValueError(name)


@functools.lru_cache(maxsize=4)
def _grid(s):
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    return y, x


def make_image(name, rng, size):
    """One demo image of class `name` as a PIL RGB image of size x size, drawn with numpy Generator `rng`."""
    s = size * _SUPERSAMPLE
    y, x = _grid(s)  # supersampled pixel centres
    # Background: a linear gradient between two random colours along a random direction.
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    ys, xs = y[::_SUPERSAMPLE, ::_SUPERSAMPLE], x[::_SUPERSAMPLE, ::_SUPERSAMPLE]
    t = np.clip(((xs - s / 2) * np.cos(phi) + (ys - s / 2) * np.sin(phi)) / s + 0.5, 0, 1)
    bg = c0 + t[..., None] * (c1 - c0)  # (size, size, 3)
    # Foreground colour far enough from the background's mean colour to stay visible.
    bg_mean = (c0 + c1) / 2
    for _ in range(100):
        fg = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(fg - bg_mean) > 110:
            break
    # Shape pose: radius 20-42% of the image, centre keeps most of the shape inside.
    radius = rng.uniform(0.20, 0.42) * s
    cx, cy = rng.uniform(radius * 0.8, s - radius * 0.8, 2)
    # Upright within +-20 degrees: horizontal and vertical stripes stay distinct, and 3000 images need
    # not teach full rotation invariance (shapes at any angle: 67.4% val top-1 after 12 demo epochs,
    # against 83.0% upright).
    angle = rng.uniform(-0.35, 0.35)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((x - cx) * cos + (y - cy) * sin) / radius
    v = (-(x - cx) * sin + (y - cy) * cos) / radius
    m = _mask(name, u, v, rng).astype(np.float32)
    # (s, s) -> (size, size): box-average the supersampled mask, i.e. anti-aliased edges.
    m = m.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    img = bg * (1 - m) + fg * m
    img = img + rng.normal(0, rng.uniform(0, 14), img.shape).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(0, 3)):  # stray lines: clutter that carries no class information
        pts = [float(p) for p in rng.uniform(0, size, 4)]
        draw.line(pts, fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=1)
    return pil


def make_demo(root, seed=0, num_classes=10, train_per_class=300, val_per_class=50, size=72):
    """Write the demo dataset as ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg.

    Args:
        root: output folder (created; existing files with the same names are overwritten).
        seed: the same seed writes byte-identical files.
        num_classes: 1..10, the first classes of `CLASSES`.
        train_per_class, val_per_class: images per class in each split.
        size: image side in pixels.
    Returns:
        the list of class names.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise UserError(f"demo: num_classes must be 1..{len(CLASSES)}, got {num_classes}")
    if size < 16:
        raise UserError(f"demo: size must be at least 16 pixels, got {size}")
    names = list(CLASSES[:num_classes])
    for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for class_id, name in enumerate(names):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                img = make_image(name, rng, size)
                quality = int(rng.integers(70, 96))
                img.save(os.path.join(folder, f"{name}_{i:04d}.jpg"), quality=quality)
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the bundled demo dataset (ROOT/train, ROOT/val).")
    p.add_argument("root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--size", type=int, default=72)
    a = p.parse_args(argv)
    names = make_demo(a.root, a.seed, a.num_classes, a.train_per_class, a.val_per_class, a.size)
    print(f"wrote {len(names)} classes x ({a.train_per_class} train + {a.val_per_class} val) "
          f"images of {a.size}x{a.size} to {a.root}")


if __name__ == "__main__":
    run_main(main)
