"""Drawing helpers for the paper's figures, with PIL and numpy only (no plotting library needed).

Every function returns a `PIL.Image` (RGB) whose size follows from fixed layout constants, so tests can
check it:

- `kernel_grid`: Figure 3, the conv1 kernels, one block per group (the paper's two GPUs, Sec. 6.1).
- `prediction_panel`: Figure 4 left, images with their top-k bars, the true class in red.
- `neighbour_panel`: Figure 4 right, query images and their nearest training images (fc7 distance).
- `confusion_image`: a confusion matrix heat map, for up to about 50 classes.
"""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
RED, BLUE = (235, 100, 100), (130, 165, 225)   # true class / other classes (the paper's Figure 4 colours)


def font(size=11):
    """Pillow's bundled sans font at `size` px (Pillow >= 10.1), or its bitmap font on older versions."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def fit_text(draw, text, max_width, fnt):
    """`text`, cut and ended with '...' so it is at most `max_width` px wide in font `fnt`."""
    if draw.textlength(text, font=fnt) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=fnt) > max_width:
        text = text[:-1]
    return text + "..."


def to_pil(x, size=None):
    """Float image (C,H,W) in [0, 1] (C = 1 or 3) -> PIL RGB image, optionally resized to size x size.

    Upscaling uses nearest neighbour so small demo images keep their real pixels.
    """
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != 3:
        x = x.mean(0, keepdim=True).expand(3, -1, -1)  # other channel counts: show the mean as grey
    arr = (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # (H, W, 3)
    img = Image.fromarray(arr, "RGB")
    if size is not None and img.size != (size, size):
        resample = Image.NEAREST if size >= max(img.size) else Image.BILINEAR
        img = img.resize((size, size), resample)
    return img


# ---------------------------------------------------------------------------------------------------
# Figure 3: conv1 kernels
# ---------------------------------------------------------------------------------------------------

def kernel_grid_size(num_kernels, kernel_size, groups=2, cols=16, scale=4, pad=2, gap=12):
    """(width, height) in px of `kernel_grid` for these arguments."""
    tile = kernel_size * scale
    rows = math.ceil(num_kernels // groups / cols)
    width = cols * (tile + pad) + pad
    height = groups * (rows * (tile + pad) + pad) + (groups - 1) * gap
    return width, height


def kernel_grid(weight, groups=2, cols=16, scale=4, pad=2, gap=12):
    """Figure 3: conv1 kernels as tiles, one block of rows per group with a white gap between blocks.

    Args:
        weight: conv1 weight (K, C, k, k); the groups are kernels [0:K/groups], [K/groups:2K/groups], ...
            (the paper variant: [0:48] and [48:96], the two GPUs of Sec. 3.2).
        groups: how many blocks to draw; 1 draws one block.
        cols: tiles per row; scale: pixels per kernel weight; pad: grey border between tiles.
    Returns:
        PIL image of size `kernel_grid_size(K, k, groups, cols, scale, pad, gap)`.

    Each kernel is scaled on its own by its largest |weight|, with zero at mid-grey, so both the
    colour-agnostic and the colour-specific kernels the paper describes are visible.
    """
    w = weight.detach().float().cpu()
    num, _, k, _ = w.shape
    if num % groups:
        raise ValueError(f"{num} kernels do not split into {groups} groups")
    w = w / w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * 0.5 + 0.5  # -> [0, 1]
    per_group = num // groups
    rows = math.ceil(per_group / cols)
    tile = k * scale
    canvas = Image.new("RGB", kernel_grid_size(num, k, groups, cols, scale, pad, gap), WHITE)
    block_h = rows * (tile + pad) + pad
    for g in range(groups):
        top = g * (block_h + gap)
        # grey background only behind the block: the white gap is what separates the groups
        canvas.paste(GREY, (0, top, canvas.width, top + block_h))
        for i in range(per_group):
            r, c = divmod(i, cols)
            canvas.paste(to_pil(w[g * per_group + i], tile), (pad + c * (tile + pad), top + pad + r * (tile + pad)))
    return canvas


# ---------------------------------------------------------------------------------------------------
# Figure 4 left: top-k predictions
# ---------------------------------------------------------------------------------------------------

PRED_THUMB, PRED_LINE, PRED_PAD = 128, 15, 8


def prediction_panel_size(num_images, topk=5, cols=4):
    """(width, height) in px of `prediction_panel`."""
    cell_w = PRED_THUMB + 2 * PRED_PAD
    cell_h = PRED_PAD + PRED_THUMB + (1 + topk) * PRED_LINE + PRED_PAD
    rows = math.ceil(num_images / cols)
    return min(cols, num_images) * cell_w, rows * cell_h


def prediction_panel(images, probs, targets, class_names, topk=5, cols=4):
    """Figure 4 left: each image, its true class underneath, and bars for its top-k classes.

    Args:
        images: (N, C, H, W) pixels in [0, 1].
        probs: (N, K) class probabilities (softmax, or the 10-crop average).
        targets: (N,) true class indices.
        class_names: K names.
    The bar of the true class is red when it is among the top k (as in the paper), the others blue;
    each bar's length is its probability, and the probability is printed on it.
    """
    fnt = font(11)
    topk = min(topk, probs.shape[1])
    canvas = Image.new("RGB", prediction_panel_size(len(images), topk, cols), WHITE)
    draw = ImageDraw.Draw(canvas)
    cell_w, cell_h = PRED_THUMB + 2 * PRED_PAD, PRED_PAD + PRED_THUMB + (1 + topk) * PRED_LINE + PRED_PAD
    p, idx = probs.detach().float().cpu().topk(topk, dim=1)
    for n in range(len(images)):
        r, c = divmod(n, cols)
        x0, y0 = c * cell_w + PRED_PAD, r * cell_h + PRED_PAD
        canvas.paste(to_pil(images[n], PRED_THUMB), (x0, y0))
        y = y0 + PRED_THUMB
        true = int(targets[n])
        draw.text((x0, y), fit_text(draw, class_names[true], PRED_THUMB, fnt), fill=BLACK, font=fnt)
        for j in range(topk):
            y += PRED_LINE
            cls, prob = int(idx[n, j]), float(p[n, j])
            draw.rectangle((x0, y + 1, x0 + PRED_THUMB, y + PRED_LINE - 2), fill=(235, 235, 235))
            bar_w = round(prob * PRED_THUMB)
            if bar_w:
                draw.rectangle((x0, y + 1, x0 + bar_w - 1, y + PRED_LINE - 2), fill=RED if cls == true else BLUE)
            label = fit_text(draw, f"{prob:.2f} {class_names[cls]}", PRED_THUMB - 4, fnt)
            draw.text((x0 + 2, y), label, fill=BLACK, font=fnt)
    return canvas


# ---------------------------------------------------------------------------------------------------
# Figure 4 right: nearest neighbours in fc7 space
# ---------------------------------------------------------------------------------------------------

NB_THUMB, NB_PAD, NB_GAP, NB_LABEL = 80, 4, 16, 14


def neighbour_panel_size(num_queries, k):
    """(width, height) in px of `neighbour_panel`."""
    width = NB_PAD + NB_GAP + (1 + k) * (NB_THUMB + NB_PAD)
    height = NB_PAD + num_queries * (NB_THUMB + NB_LABEL + NB_PAD)
    return width, height


def neighbour_panel(queries, neighbours, query_labels=None, neighbour_labels=None):
    """Figure 4 right: one row per query: the query, a gap, then its k nearest training images.

    Args:
        queries: (Q, C, H, W) pixels in [0, 1].
        neighbours: (Q, k, C, H, W) pixels in [0, 1], nearest first.
        query_labels, neighbour_labels: optional names, Q and (Q, k) strings, written under each image.
    """
    fnt = font(10)
    q, k = neighbours.shape[:2]
    canvas = Image.new("RGB", neighbour_panel_size(q, k), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i in range(q):
        y = NB_PAD + i * (NB_THUMB + NB_LABEL + NB_PAD)
        row = [(queries[i], query_labels[i] if query_labels else None)]
        row += [(neighbours[i, j], neighbour_labels[i][j] if neighbour_labels else None) for j in range(k)]
        for j, (img, label) in enumerate(row):
            x = NB_PAD + j * (NB_THUMB + NB_PAD) + (NB_GAP if j else 0)
            canvas.paste(to_pil(img, NB_THUMB), (x, y))
            if label:
                draw.text((x, y + NB_THUMB), fit_text(draw, label, NB_THUMB, fnt), fill=BLACK, font=fnt)
        # a vertical rule between the query and its neighbours
        rule_x = NB_PAD + NB_THUMB + NB_PAD // 2 + NB_GAP // 2
        draw.line((rule_x, y, rule_x, y + NB_THUMB), fill=GREY, width=2)
    return canvas


def nearest_neighbours(query_features, bank_features, k):
    """Indices (Q, k) of the `k` rows of `bank_features` (M, D) nearest to each query (Q, D), nearest first.

    Euclidean distance, as in Sec. 6.1 (the paper uses the 4096-d last hidden layer).
    """
    dist = torch.cdist(query_features.float(), bank_features.float())  # (Q, M)
    return dist.topk(min(k, bank_features.shape[0]), dim=1, largest=False).indices


# ---------------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------------

CM_LABEL_W, CM_TOP, CM_PAD = 130, 24, 8


def confusion_cell(num_classes):
    """Cell side in px: about 600 px for the whole matrix, between 8 and 40 px per cell."""
    return max(8, min(40, 600 // max(num_classes, 1)))


def confusion_image_size(num_classes):
    """(width, height) in px of `confusion_image`."""
    cell = confusion_cell(num_classes)
    return CM_LABEL_W + num_classes * cell + CM_PAD, CM_TOP + num_classes * cell + CM_PAD


def confusion_matrix(preds, targets, num_classes):
    """(K, K) int64 counts: row = true class, column = predicted class."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_image(matrix, class_names):
    """Heat map of a (K, K) confusion matrix (rows: true, columns: predicted), rows normalised to 1.

    Rows are labelled "index name", columns by index; counts are written in cells at least 18 px wide.
    """
    num = matrix.shape[0]
    cell = confusion_cell(num)
    fnt = font(11 if cell >= 14 else 9)
    canvas = Image.new("RGB", confusion_image_size(num), WHITE)
    draw = ImageDraw.Draw(canvas)
    m = matrix.detach().cpu().double()
    frac = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()  # per true class
    draw.text((2, 4), "true \\ predicted", fill=BLACK, font=fnt)
    for i in range(num):
        y = CM_TOP + i * cell
        draw.text((2, y + (cell - 11) // 2), fit_text(draw, f"{i} {class_names[i]}", CM_LABEL_W - 6, fnt),
                  fill=BLACK, font=fnt)
        if cell >= 14 or i % 5 == 0:
            draw.text((CM_LABEL_W + i * cell + 1, 4), str(i), fill=BLACK, font=fnt)
        for j in range(num):
            x = CM_LABEL_W + j * cell
            shade = int(255 * (1 - frac[i, j]))  # white (0) -> dark blue (1)
            fill = (shade, shade, 255 - int(90 * frac[i, j]))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fill, outline=GREY if cell >= 14 else None)
            if cell >= 18 and m[i, j] > 0:
                draw.text((x + 2, y + (cell - 11) // 2), str(int(m[i, j])),
                          fill=WHITE if frac[i, j] > 0.5 else BLACK, font=fnt)
    return canvas
