"""data.pixel_scale (255: the paper's raw 0-255 pixel values minus the mean image) on every path: both
training loaders, evaluate.py (one checkpoint and an ensemble), predict.py, visualize.py, export metadata and
torch.hub; and the PCA eigenvalue convention shared by `stats: auto` and the `imagenet` preset."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import evaluate as evaluate_script
import export
import hubconf
import predict
import visualize
from alexnet.checkpoint import load_for_inference, save_checkpoint
from alexnet.engine import Amp, evaluate
from alexnet.errors import UserError
from conftest import tiny_data_cfg
from dataloader.folder import build_loaders
from dataloader.prepare import prepare
from dataloader.stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_STD, compute_stats
from dataloader.store import build_store_loaders
from test_evaluate import REPO


@pytest.fixture(scope="module")
def run255(demo_root, tmp_path_factory):
    """A 1-epoch tiny run at pixel_scale 255 (the paper's scale) with Caffe's init."""
    out = tmp_path_factory.mktemp("run255")
    cmd = [sys.executable, "train.py", "--data", demo_root, "--epochs", "1", "--out", str(out), "--batch-size", "40",
           "--num_classes", "10", "--device", "cpu", "data.resize=64", "data.crop=64", "data.workers=0",
           "data.pixel_scale=255", "model.init=caffe", "train.log_images=false"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, demo_root


def _batches(loaders, n=1):
    loaders.train_sampler.set_epoch(0)
    it = iter(loaders.train)
    return [next(it) for _ in range(n)], next(iter(loaders.val))


def test_both_loaders_scale_mean_image_output_by_255(demo_root, tmp_path):
    store = str(tmp_path / "store")
    prepare(demo_root, store, workers=0, size=48, chunk_size=64, progress=False)
    for build, extra in ((build_loaders, {}), (build_store_loaders, {"store": store})):
        one = build(tiny_data_cfg(demo_root, **extra), batch_size=8, seed=3)
        raw = build(tiny_data_cfg(demo_root, pixel_scale=255.0, **extra), batch_size=8, seed=3)
        (t1,), v1 = _batches(one)
        (t255,), v255 = _batches(raw)
        torch.testing.assert_close(t255[0], t1[0] * 255, rtol=1e-6, atol=1e-4)   # same crops, flips, shifts
        torch.testing.assert_close(v255[0], v1[0] * 255, rtol=1e-6, atol=1e-4)
        assert t255[0].abs().max() > 20                                            # 0-255 units, not [0, 1]
        chan = build(tiny_data_cfg(demo_root, normalize="channel", pixel_scale=255.0, **extra), batch_size=8, seed=3)
        ref = build(tiny_data_cfg(demo_root, normalize="channel", **extra), batch_size=8, seed=3)
        torch.testing.assert_close(_batches(chan)[0][0][0], _batches(ref)[0][0][0])   # (x - m) / s: scale-free


def test_every_inference_path_reads_the_scale_from_the_checkpoint(run255, tmp_path, capsys):
    run, root = run255
    best = str(run / "best.pt")
    inf = load_for_inference(best)
    assert inf.cfg.data.pixel_scale == 255.0
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    out = tmp_path / "eval.json"
    assert evaluate_script.main(["--checkpoint", best, "--data", root, "--crops", "1", "--batch-size", "40",
                                 "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == logged["val_top1"]      # same preprocessing as training

    # predict.py: the probabilities of the model fed the 255-scaled centre view
    path = f"{root}/val/star/star_0001.jpg"
    loaders = build_loaders(dataclasses.replace(inf.cfg.data, root=root, workers=0), batch_size=40, seed=0)
    squares = torch.stack([loaders.val.dataset[i][0] for i in range(len(loaders.val.dataset))])
    index = [p for p, _ in loaders.val.dataset.samples].index(path)
    views = loaders.val.augment(squares[index:index + 1])
    assert views.abs().max() > 20
    with torch.no_grad():
        want = inf.model(views).softmax(1)[0]
    torch.testing.assert_close(predict.class_probabilities(inf, path), want, rtol=1e-5, atol=1e-6)

    # visualize.py: the same probabilities for the same image
    ctx = visualize.Context(visualize.build_parser().parse_args(
        ["predictions", "--checkpoint", best, "--data", root, "--device", "cpu"]))
    probs, _, _ = visualize.run(ctx, loaders.val.dataset, [index])
    torch.testing.assert_close(probs[0], want, rtol=1e-5, atol=1e-6)

    # export metadata and torch.hub name the scale
    assert export.checkpoint_meta(inf)["pixel_scale"] == 255.0
    assert hubconf.alexnet(checkpoint=best).preprocessing["pixel_scale"] == 255.0


def test_ensemble_cli_averages_probabilities_and_refuses_other_preprocessing(run255, tmp_path):
    run, root = run255
    best = str(run / "best.pt")
    ckpt = torch.load(best, weights_only=True)
    torch.manual_seed(1)
    other = {**ckpt, "model": {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                               for k, v in ckpt["model"].items()}}
    second = str(tmp_path / "second.pt")
    save_checkpoint(other, second)
    out = tmp_path / "ens.json"
    assert evaluate_script.main(["--checkpoint", best, second, "--data", root, "--crops", "10", "--batch-size", "16",
                                 "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    a, b = load_for_inference(best), load_for_inference(second)
    loader, _ = evaluate_script.build_loader(root, a, evaluate_script.build_parser().parse_args(
        ["--checkpoint", best, "--crops", "10", "--batch-size", "16"]), type("I", (), {"rank": 0, "world_size": 1})(),
        torch.device("cpu"))
    correct, n, nll = 0, 0, 0.0
    with torch.no_grad():
        for views, y in loader:
            flat = views.flatten(0, 1)
            p = ((a.model(flat).softmax(1) + b.model(flat).softmax(1)) / 2).view(*views.shape[:2], -1).mean(1)
            correct += int((p.argmax(1) == y).sum())
            nll += float(-p[torch.arange(len(y)), y].log().sum())
            n += len(y)
    assert result["images"] == n == 40 and result["checkpoints"] == [best, second]
    assert result["top1"] == pytest.approx(100.0 * correct / n)
    assert result["loss"] == pytest.approx(nll / n, rel=1e-5)

    mixed = {**ckpt, "config": {**ckpt["config"], "data": {**ckpt["config"]["data"], "pixel_scale": 1.0}}}
    third = str(tmp_path / "third.pt")
    save_checkpoint(mixed, third)
    with pytest.raises(UserError, match="data.pixel_scale=1.0 .* must share their preprocessing"):
        evaluate_script.main(["--checkpoint", best, third, "--data", root, "--device", "cpu"])


def test_pca_eigenvalues_are_covariance_eigenvalues_in_both_conventions(demo_root):
    """`auto` and the ImageNet preset are the same kind of number: eigenvalues of the covariance of [0, 1]
    pixels. For `auto` they sum to the total pixel variance (the trace); the preset's rebuild a covariance
    whose channel std matches ImageNet's global pixel std (about 0.28), above the 0.229 / 0.224 / 0.225
    averages of per-image std that torchvision's mean / std hold."""
    stats = compute_stats(f"{demo_root}/train", 48, workers=0, progress=False)
    assert stats["eigval"].sum().item() == pytest.approx((stats["std"] ** 2).sum().item(), rel=1e-4)
    v, lam = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64), torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64)
    cov = v @ torch.diag(lam) @ v.T
    torch.testing.assert_close(cov.diagonal().sqrt(), torch.tensor([0.2837, 0.2763, 0.2897], dtype=torch.float64),
                               rtol=0, atol=5e-4)
    assert (cov.diagonal().sqrt() > torch.tensor(IMAGENET_STD, dtype=torch.float64)).all()
