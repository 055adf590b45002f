"""visualize.py writes each figure as a PNG of the expected size; the figure helpers compute what they claim."""
import os

import types

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import figures
import visualize
from test_evaluate import trained_run  # noqa: F401  (the session's tiny train.py run)


def _png(path):
    assert os.path.getsize(path) > 0
    return np.asarray(Image.open(path).convert("RGB"))


def test_visualize_all_writes_each_figure(trained_run, tmp_path):  # noqa: F811
    run, root = trained_run
    out = tmp_path / "figs"
    assert visualize.main(["all", "--checkpoint", str(run / "best.pt"), "--data", root, "--out", str(out),
                           "--device", "cpu", "--max-train", "40"]) == 0
    # Expected sizes from the layout constants in figures.py:
    # kernels: 96 kernels in 2 groups of 3 rows x 16 tiles of 11*4 px + 2 px borders, 12 px gap
    kernels = _png(out / "fig3_conv1_kernels.png")
    assert kernels.shape == (2 * (3 * 46 + 2) + 12, 16 * 46 + 2, 3)
    gap = kernels[140:152]
    assert (gap == 255).all()                          # the white band that separates the two groups
    assert kernels[:140].std() > 10 and kernels[152:].std() > 10
    # predictions: 8 images in 2 rows of 4 cells, 144 px wide, 8 + 128 + 6 * 15 + 8 px high
    assert _png(out / "fig4_predictions.png").shape == (2 * 234, 4 * 144, 3)
    # neighbours: 5 queries; 1 query + 6 neighbours of 80 px + 4 px, 16 px gap; rows 80 + 14 + 4 px
    assert _png(out / "fig4_neighbours.png").shape == (4 + 5 * 98, 4 + 16 + 7 * 84, 3)
    # confusion: 10 classes of 40 px cells, 130 px of row labels, 24 px of column labels, 8 px margin
    assert _png(out / "confusion.png").shape == (24 + 400 + 8, 130 + 400 + 8, 3)
    for name in visualize.FILES.values():
        assert _png(out / name).std() > 10             # not a blank canvas


def test_nearest_neighbours_and_confusion_matrix_by_hand():
    bank = torch.tensor([[0., 0], [10, 0], [0, 3], [1, 1]])
    queries = torch.tensor([[0.2, 0.1], [9, 1]])
    assert figures.nearest_neighbours(queries, bank, 3).tolist() == [[0, 3, 2], [1, 3, 0]]  # 9.06 < 9.22
    preds, targets = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    assert figures.confusion_matrix(preds, targets, 3).tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]


def test_displayed_images_are_the_centre_crops_in_0_1(trained_run):  # noqa: F811
    """visualize shows each image as its uint8 centre crop / 255 (it no longer undoes the normalisation):
    run() returns (probs, targets, images) with images the [0, 1] centre crops of the dataset's squares."""
    run, root = trained_run
    args = types.SimpleNamespace(checkpoint=str(run / "best.pt"), data=root, device="cpu", crops=1, batch_size=2)
    ctx = visualize.Context(args)
    ctx.cfg.data.resize = 72           # squares larger than the 64 px crop, so the centre crop is a real cut
    ds = ctx.dataset("val")
    indices = [0, 7, 21, 39]
    probs, targets, images = visualize.run(ctx, ds, indices)
    crop = ctx.cfg.data.crop
    assert images.shape == (4, 3, crop, crop) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    for k, i in enumerate(indices):
        square, target, _ = ds[i]
        assert square.shape == (3, 72, 72) and int(targets[k]) == target
        assert torch.equal(images[k], TF.center_crop(square, crop).float() / 255)
    assert not torch.equal(images[0], TF.resize(ds[0][0], crop).float() / 255)    # cut, not resized
    assert probs.shape == (4, len(ctx.class_names))
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
