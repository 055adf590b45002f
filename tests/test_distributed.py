"""Two CPU processes under torchrun (gloo): run directory written by rank 0 only, 2 ranks x batch B/2
reach the same weights as 1 rank x batch B (DDP averages gradients) on a deterministic configuration, and
the validation metrics a 2-rank run logs are those of all val images (sums over ranks), with the paper's
augmentation and dropout on."""
import json
import os
import subprocess
import sys

import pytest
import torch

import evaluate as evaluate_script
import train
from alexnet.distributed import per_rank_batch
from alexnet.errors import UserError
from alexnet.model import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deterministic_args(data, out):
    """No dropout, no random crop / flip / PCA: the batches' union is the only thing that matters."""
    return ["--data", data, "--out", str(out), "--epochs", "1", "--batch-size", "40", "--num_classes", "10",
            "--device", "cpu", "model.overlap_pool=false", "model.init=kaiming", "model.dropout=0",
            "data.resize=48", "data.crop=40", "data.workers=0", "data.random_crop=false", "data.flip=false",
            "data.pca_sigma=0", "train.log_images=false"]


def torchrun2(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", ALEXNET_DIST_TIMEOUT_MIN="2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def two_ranks(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, torchrun2(deterministic_args(demo_root, out))


def test_torchrun_two_processes_rank0_writes_the_run_dir(two_ranks):
    out, proc = two_ranks
    names = os.listdir(out)
    assert {"config.yaml", "run_info.json", "metrics.jsonl", "last.pt", "best.pt"} <= set(names)
    assert sum(n.startswith("events.out.tfevents") for n in names) == 1      # one writer: rank 0
    assert proc.stdout.count("epoch 1/1:") == 1                               # one log line: rank 0
    assert "global batch 40 on 2 x cpu" in proc.stdout and "3 steps/epoch" in proc.stdout
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert len(lines) == 1 and 0 <= lines[0]["val_top1"] <= 100
    assert json.load(open(out / "run_info.json"))["world_size"] == 2
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["step"] == 3                      # RNG states of both ranks


def test_two_ranks_half_batch_equal_one_rank_full_batch(two_ranks, demo_root, tmp_path):
    out, _ = two_ranks
    assert train.main(deterministic_args(demo_root, tmp_path)) == 0
    one = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    two = torch.load(out / "last.pt", weights_only=True)["model"]
    gap = max((one[k] - two[k]).abs().max().item() for k in one)
    assert gap <= 1e-5                                   # float rounding of the gradient all-reduce only
    torch.manual_seed(0)                                 # train.py's initial weights
    init = build_model(torch.load(out / "last.pt", weights_only=True)["config"]["model"]).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 20 * max(gap, 1e-6)                   # the 3 steps moved the weights far beyond the gap


def test_two_ranks_log_the_val_metrics_of_every_val_image(demo_root, tmp_path):
    """Random crops, flips, PCA and dropout on: the val loss / top-1 / top-5 a 2-rank run logs equal a
    1-process `evaluate.py --crops 1` of its checkpoint (each rank sees half the val images; the sums are
    all-reduced, not rank 0's half)."""
    out = tmp_path / "run"
    torchrun2(["--data", demo_root, "--out", str(out), "--epochs", "1", "--batch-size", "40", "--num_classes", "10",
               "--device", "cpu", "model.overlap_pool=false", "model.init=kaiming", "data.resize=48", "data.crop=40",
               "data.workers=0", "train.log_images=false"])
    ckpt = torch.load(out / "last.pt", weights_only=True)["config"]
    assert ckpt["model"]["dropout"] == 0.5 and ckpt["data"]["pca_sigma"] == 0.1
    assert ckpt["data"]["random_crop"] and ckpt["data"]["flip"]
    (logged,) = [json.loads(x) for x in open(out / "metrics.jsonl")]
    # One thread and batches of 20, as each rank had: every image's logits bit for bit the same as there
    # (a nearly untrained model has near-ties that other rounding could flip in top-1 / top-5).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert evaluate_script.main(["--checkpoint", str(out / "last.pt"), "--data", demo_root, "--crops", "1",
                                     "--batch-size", "20", "--device", "cpu", "--json", str(tmp_path / "eval.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.load(open(tmp_path / "eval.json"))
    assert result["images"] == 40
    assert (result["top1"], result["top5"]) == (logged["val_top1"], logged["val_top5"])
    assert result["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)


def test_global_batch_must_divide_by_world_size():
    assert per_rank_batch(128, 8) == 16
    with pytest.raises(UserError, match="optim.batch_size=100 is not divisible by the 8 ranks"):
        per_rank_batch(100, 8)
