"""predict.py on demo images: names demo classes with the model's probabilities; bad files are reported, not fatal."""
import os
import re

import torch
import torchvision.transforms.functional as TF

import predict
from alexnet.checkpoint import load_checkpoint, load_for_inference, model_from_checkpoint
from alexnet.config import config_from_dict
from dataloader.demo import CLASSES
from dataloader.images import load_square
from test_evaluate import trained_run  # noqa: F401  (the session's tiny train.py run)


def test_predict_names_demo_classes_and_reports_bad_files(trained_run, tmp_path, capsys):  # noqa: F811
    run, root = trained_run
    good = [os.path.join(root, "val", "star", "star_0001.jpg"), os.path.join(root, "val", "ring", "ring_0002.jpg")]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    code = predict.main(["--checkpoint", str(run / "best.pt"), good[0], str(bad), good[1], "--topk", "3"])
    assert code == 1  # one file failed; the others were still predicted
    out, err = capsys.readouterr()
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 2 and "broken.jpg" in err_lines[0] and err_lines[0].startswith("error: ")

    # stdout: per image its path, then 3 lines "  PP.PP%  class"
    lines = out.strip().splitlines()
    assert [lines[0], lines[4]] == good and len(lines) == 8
    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    d, stats = config_from_dict(ckpt["config"]).data, ckpt["stats"]

    def transform(path):
        """The checkpoint's evaluation input, written out: R x R square in [0, 1], normalised, centre crop."""
        x = load_square(path, d.resize).float() / 255
        if d.normalize == "channel":
            x = (x - stats["mean"][:, None, None]) / stats["std"][:, None, None]
        else:
            x = (x - stats["mean_image"]) * d.pixel_scale
        return TF.center_crop(x, d.crop)

    inf = load_for_inference(run / "best.pt")
    for i, path in enumerate(good):
        rows = [re.match(r"\s+([\d.]+)%\s+(\S+)$", line).groups() for line in lines[4 * i + 1:4 * i + 4]]
        names, percents = [r[1] for r in rows], [float(r[0]) for r in rows]
        assert all(n in CLASSES for n in names) and len(set(names)) == 3
        assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.0 + 1e-6
        with torch.no_grad():  # the same numbers computed directly
            probs = model(transform(path)[None]).softmax(1)[0]
        torch.testing.assert_close(predict.class_probabilities(inf, path), probs, rtol=0, atol=1e-6)
        top = probs.topk(3)
        assert names == [ckpt["class_names"][j] for j in top.indices.tolist()]
        assert percents == [round(100 * p, 2) for p in top.values.tolist()]
