"""Evaluation: top-k counting on hand-made logits, the 10-crop protocol against torchvision's TenCrop, and
evaluate.py on a trained demo checkpoint against the val_top1 its training run logged."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, TensorDataset

import evaluate as evaluate_script
from alexnet.config import DataConfig
from alexnet.engine import Amp, evaluate
from alexnet.errors import UserError, run_main
from alexnet.metrics import topk_counts


# ---------------------------------------------------------------------------------------------------
# top-1 / top-5 on hand-made logits
# ---------------------------------------------------------------------------------------------------

def test_topk_hand_made():
    scores = torch.tensor([
        [9., 1, 2, 3, 4, 5, 6],   # true 0: top-1
        [1., 9, 2, 3, 4, 5, 6],   # true 2: rank 6 of 7 -> neither
        [1., 2, 3, 4, 5, 6, 9],   # true 3: rank 4 -> top-5 only
        [1., 2, 3, 4, 5, 6, 9],   # true 2: rank 5 -> top-5 only
        [1., 2, 3, 4, 5, 6, 9],   # true 1: rank 6 -> neither
    ])
    target = torch.tensor([0, 2, 3, 2, 1])
    assert topk_counts(scores, target, ks=(1, 5)).tolist() == [1, 3]
    assert topk_counts(scores, target, ks=(1, 2, 7)).tolist() == [1, 1, 5]


def test_topk_ties_count_against_the_prediction():
    # true class tied with one other at the top: not top-1, but top-2 and top-5
    tie_top = torch.tensor([[5., 5, 1, 0, 0, 0]])
    assert topk_counts(tie_top, torch.tensor([1]), ks=(1, 2, 5)).tolist() == [0, 1, 1]
    assert topk_counts(tie_top, torch.tensor([0]), ks=(1, 2, 5)).tolist() == [0, 1, 1]
    # a constant output is never correct, whatever the class (6 classes: 5 others tie with the truth)
    const = torch.zeros(4, 6)
    assert topk_counts(const, torch.tensor([0, 1, 2, 5]), ks=(1, 5)).tolist() == [0, 0]
    # true class tied with four others just below the top: 5 classes >= it besides itself -> not top-5
    tie_mid = torch.tensor([[9., 3, 3, 3, 3, 3, 0]])
    assert topk_counts(tie_mid, torch.tensor([3]), ks=(1, 5)).tolist() == [0, 0]
    assert topk_counts(tie_mid, torch.tensor([0]), ks=(1, 5)).tolist() == [1, 1]


class _Passthrough(torch.nn.Module):
    """The 'model' returns its input: (N, K, 1, 1) -> logits (N, K), so the test chooses the logits."""

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_evaluate_batches_not_dividing_the_dataset(batch_size):
    torch.manual_seed(0)
    n, k = 23, 8
    logits = torch.randn(n, k)
    logits[:5] = 0.0                         # constant rows: ties everywhere, never correct
    logits[5:9, 3] = logits[5:9].max(1).values  # tie with the maximum
    target = torch.randint(0, k, (n,))
    target[5:9] = 3
    loader = DataLoader(TensorDataset(logits[:, :, None, None], target), batch_size=batch_size)
    out = evaluate(_Passthrough(), loader, Amp("none", "cpu"))
    c1, c5 = topk_counts(logits, target, ks=(1, 5)).tolist()
    assert out["n"] == n
    assert out["top1"] == pytest.approx(100.0 * c1 / n, abs=1e-9)
    assert out["top5"] == pytest.approx(100.0 * c5 / n, abs=1e-9)
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# 10-crop: the softmax of the ten views averaged (Sec. 4.1)
# ---------------------------------------------------------------------------------------------------

def test_ten_crop_averages_softmax_like_torchvision_tencrop():
    import dataclasses

    from dataloader.augment import EvalAugment

    torch.manual_seed(0)
    n, size, crop, k = 7, 12, 8, 5
    squares = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    images = squares.float() / 255
    target = torch.randint(0, k, (n,))
    # A linear model over the whole crop: its output depends on where the crop is and on the flip.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * crop * crop, k))
    with torch.no_grad():
        model[1].weight.mul_(20)  # spread the logits so the views really disagree

    # the project's ten views, with statistics that change nothing (zero mean image): pixels / 255
    zero = {"mean_image": torch.zeros(3, size, size), "mean": torch.zeros(3), "std": torch.ones(3)}
    data_cfg = dataclasses.replace(DataConfig(), resize=size, crop=crop)
    views = EvalAugment(zero, data_cfg, crops=10)(squares)  # (N, 10, 3, crop, crop)
    assert views.shape == (n, 10, 3, crop, crop)
    loader = DataLoader(TensorDataset(views, target), batch_size=3)  # 3 does not divide 7
    out = evaluate(model, loader, Amp("none", "cpu"))

    with torch.no_grad():  # direct computation with torchvision's TenCrop and a hand-written average
        tv = torch.stack([torch.stack(T.TenCrop(crop)(img)) for img in images])  # (N, 10, 3, crop, crop)
        probs = torch.stack([model(tv[i]).softmax(1).mean(0) for i in range(n)])  # (N, K)
        spread = model(tv[0]).softmax(1).std(0).max().item()  # how much the ten views disagree
    assert spread > 0.05  # otherwise the test could not tell an average from a single view
    assert out["n"] == n
    assert out["loss"] == pytest.approx(-probs[torch.arange(n), target].log().mean().item(), rel=1e-5)
    assert out["top1"] == pytest.approx(100.0 * (probs.argmax(1) == target).sum().item() / n)
    assert out["top5"] == pytest.approx(100.0 * topk_counts(probs, target, ks=(5,)).tolist()[0] / n)


class _Const(torch.nn.Module):
    """Returns the same logits (K,) for every input image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_ensemble_averages_the_members_probabilities_not_their_logits():
    """Sec. 6: "averaging the predictions": member A is sure of class 0, member B prefers class 1. Their
    mean softmax picks class 0; a softmax of the mean logits (-1, 0.5, 0) would pick class 1."""
    from alexnet.engine import SoftmaxEnsemble

    a, b = _Const([4.0, 0.0, 0.0]), _Const([-6.0, 1.0, 0.0])
    x = torch.zeros(2, 3, 8, 8)
    mean_probs = (a(x).softmax(1) + b(x).softmax(1)) / 2
    ensemble = SoftmaxEnsemble([a, b])
    torch.testing.assert_close(ensemble(x).softmax(1), mean_probs, rtol=0, atol=1e-6)
    assert ensemble(x).argmax(1).tolist() == [0, 0]
    out = evaluate(ensemble, [(x, torch.tensor([0, 1]))], Amp("none", "cpu"))
    assert out["top1"] == 50.0
    assert out["loss"] == pytest.approx(-(mean_probs[0, 0].log() + mean_probs[1, 1].log()).item() / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# evaluate.py on a trained demo checkpoint
# ---------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_BATCH = 120  # one step over the 120 tiny training images; the 40 val images are one eval batch


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_root):
    """A one-epoch train.py run on the tiny demo set (64 px crops): (run dir, demo root).

    test_predict.py and test_visualize.py import this fixture; pytest then makes one instance per
    module, so the run is cached in the session's base temp folder and trained only once.
    """
    out = tmp_path_factory.getbasetemp() / "eval_trained_run"
    if not (out / "best.pt").exists():
        cmd = [sys.executable, "train.py", "--config", "configs/demo.yaml", "--data", demo_root, "--epochs", "1",
               "--out", str(out), "--device", "cpu", "--batch-size", str(TRAIN_BATCH), "data.resize=64",
               "data.crop=64", "data.workers=0", "data.demo=false", "train.log_images=false"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return out, demo_root


def test_evaluate_script_matches_the_logged_val_top1(trained_run, tmp_path, capsys):
    run, root = trained_run
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in logged if r["epoch"] == ckpt["epoch"])
    out = tmp_path / "eval.json"
    code = evaluate_script.main(["--checkpoint", str(run / "best.pt"), "--data", root, "--crops", "1",
                                 "--batch-size", str(TRAIN_BATCH), "--device", "cpu", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 40
    assert result["top1"] == row["val_top1"]            # the same function on the same batches: exact
    assert result["top5"] == row["val_top5"]
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-6)
    assert result["top1_error"] == pytest.approx(100 - row["val_top1"])
    printed = capsys.readouterr().out
    assert "40 images" in printed and f"top-1 accuracy {row['val_top1']:.3f} %" in printed
    # --data may also name the split folder itself: the same images, the same result
    split_out = tmp_path / "eval_split.json"
    assert evaluate_script.main(["--checkpoint", str(run / "best.pt"), "--data", os.path.join(root, "val"),
                                 "--crops", "1", "--batch-size", str(TRAIN_BATCH), "--device", "cpu",
                                 "--json", str(split_out)]) == 0
    split_result = json.loads(split_out.read_text())
    assert (split_result["images"], split_result["top1"], split_result["top5"], split_result["loss"]) == \
           (result["images"], result["top1"], result["top5"], result["loss"])
    # ... and the train split folder is read as such (120 images), not as a ROOT
    train_out = tmp_path / "eval_train.json"
    assert evaluate_script.main(["--checkpoint", str(run / "best.pt"), "--data", os.path.join(root, "train"),
                                 "--crops", "1", "--batch-size", str(TRAIN_BATCH), "--device", "cpu",
                                 "--json", str(train_out)]) == 0
    assert json.loads(train_out.read_text())["images"] == 120


def test_evaluate_script_on_a_prepared_store_equals_the_image_folder(trained_run, tmp_path):
    """--data STORE (python -m dataloader.prepare) evaluates the same pixels with the checkpoint's stats."""
    from dataloader.prepare import prepare

    run, root = trained_run
    store = str(tmp_path / "store")
    prepare(root, store, workers=0, size=64, chunk_size=64, progress=False)
    results = []
    for data in (root, store):
        out = tmp_path / "eval.json"
        assert evaluate_script.main(["--checkpoint", str(run / "best.pt"), "--data", data, "--crops", "10",
                                     "--batch-size", "16", "--device", "cpu", "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    folder, stored = results
    assert stored["images"] == folder["images"] == 40
    assert stored["top1"] == folder["top1"] and stored["top5"] == folder["top5"]
    assert stored["loss"] == pytest.approx(folder["loss"], rel=1e-5)


def test_evaluate_script_class_mismatch_lists_the_difference(trained_run, tmp_path):
    run, root = trained_run
    other = tmp_path / "val"
    for name in ("circle", "ring", "hexagon"):
        os.makedirs(other / name)
    with pytest.raises(UserError, match=r"missing from the data: checker.*not in the checkpoint: hexagon"):
        evaluate_script.main(["--checkpoint", str(run / "best.pt"), "--data", str(tmp_path), "--device", "cpu"])


def test_evaluate_script_missing_checkpoint_exits_2_with_one_line(demo_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate_script.main, ["--checkpoint", str(tmp_path / "missing.pt"), "--data", demo_root])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing.pt" in err


def test_torchvision_weights_use_torchvision_preprocessing(demo_root, tmp_path):
    """--torchvision-weights: the same accuracy as torchvision's AlexNet fed by torchvision's own pipeline
    (ImageFolder, Resize(256), CenterCrop(224), ToTensor, Normalize with ImageNet's mean / std)."""
    import torchvision

    torch.manual_seed(0)
    tv_model = torchvision.models.alexnet(num_classes=10).eval()
    weights = tmp_path / "alexnet_tv.pth"
    torch.save(tv_model.state_dict(), weights)
    split = tmp_path / "val"  # 3 classes x 4 images: 224 px passes are the slow part
    for name in ("circle", "ring", "star"):
        shutil.copytree(os.path.join(demo_root, "val", name), split / name)
    out = tmp_path / "eval.json"
    assert evaluate_script.main(["--torchvision-weights", str(weights), "--data", str(split), "--device", "cpu",
                                 "--crops", "1", "--batch-size", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(str(split), tf)
    images, targets = next(iter(DataLoader(ds, batch_size=len(ds))))
    with torch.no_grad():
        logits = tv_model(images)
    c1, c5 = topk_counts(logits, targets).tolist()
    assert result["images"] == len(ds) == 12
    assert result["top1"] == pytest.approx(100.0 * c1 / 12) and result["top5"] == pytest.approx(100.0 * c5 / 12)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-4)
