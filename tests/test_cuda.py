"""The GPU path, proven on a GPU: every test here needs CUDA and is skipped without it.

    python -m pytest -q tests/test_cuda.py            # or: python benchmarks/gpu_report.py --json FILE

LRN on CUDA (float32, bf16 autocast) against the float64 formula; the batched augmentation on CUDA equal to
the CPU for the same draws, and the CUDA generators' draws distributed as the paper asks; nvjpeg decoding of
the JPEG store; the store loader's CUDA path (pinned memory, side stream) equal to its CPU path; training
with bf16 + channels_last + torch.compile close to float32 eager; a one-process NCCL run under torchrun; an
exact resume. Sizes are tiny (the demo set of tests/conftest.py: 120 training images of 48 px, 40 px crops).
"""
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import train
from alexnet import LocalResponseNorm
from alexnet.config import DataConfig, OptimConfig
from alexnet.distributed import resolve_device
from alexnet.engine import Amp, build_optimizer, train_one_epoch
from alexnet.model import AlexNet, build_model
from conftest import DEMO_CLASSES, DEMO_SIZE, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, tiny_data_cfg
from dataloader.augment import EvalAugment, TrainAugment, crop_flip, pca_shift
from dataloader.prepare import prepare
from dataloader.store import JpegDecoder, StoreSplit, build_store_loaders
from test_lrn import direct_lrn, fwd_bwd, post_relu, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEVICE = "cuda"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_VAL = DEMO_CLASSES * DEMO_TRAIN_PER_CLASS, DEMO_CLASSES * DEMO_VAL_PER_CLASS
R, CROP = DEMO_SIZE, 40
# JPEG decoders round differently: libjpeg-turbo's (PIL) and nvjpeg's IDCTs differ by a few grey levels; with
# 4:2:0 chroma (the store's JPEGs, PIL's default) the chroma upsampling may differ too (libjpeg-turbo's
# "fancy" triangle filter): up to about 2 levels on average and 50 at sharp colour edges of the demo shapes,
# estimated with nearest against bilinear upsampling. A wrong image (channels, offsets) is off by tens on average.
JPEG_444 = {"mean": 1.5, "max": 40}                    # no subsampling: the IDCTs only
JPEG_420 = {"mean": 4.0, "p99": 30}                    # measured on an H200 (nvjpeg): mean 3.19, p99 22


# ------------------------------------------------------------------------------------------------ LRN

@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_cuda_float32_matches_the_float64_formula(channels_last):
    x = post_relu(4, 16, 7, 7, scale=30.0)                 # alpha * S comparable to k: the LRN term matters
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = fwd_bwd(direct_lrn, x, grad)             # float64 on the CPU
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xd = x.float().to(DEVICE).contiguous(memory_format=fmt)
    y, g = fwd_bwd(LocalResponseNorm(), xd, grad.float().to(DEVICE).contiguous(memory_format=fmt))
    assert y.device.type == "cuda" and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=fmt)
    assert rel_err(y.double().cpu(), y_ref) < 1e-5 and rel_err(g.double().cpu(), g_ref) < 1e-5


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.float32, True),
                                                 (torch.bfloat16, True)])
def test_lrn_compiled_with_inductor_on_cuda_equals_eager(dtype, channels_last):
    torch._dynamo.reset()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = post_relu(4, 96, 27, 27, scale=20.0).to(DEVICE, dtype).contiguous(memory_format=fmt)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    compiled = torch.compile(LocalResponseNorm(), fullgraph=True)
    y, g = fwd_bwd(compiled, x, grad)
    y_ref, g_ref = fwd_bwd(LocalResponseNorm(), x, grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and rel_err(y.double(), y_ref.double()) < tol
    assert rel_err(g.double(), g_ref.double()) < tol


def test_lrn_cuda_under_bf16_autocast():
    # Under autocast the convolution before the LRN gives bf16; the LRN computes in float32 inside and
    # returns bf16, so only the final rounding differs from the formula on the same bf16 inputs.
    x = post_relu(4, 16, 7, 7, scale=30.0).to(DEVICE, torch.bfloat16)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, torch.bfloat16)
    xr = x.detach().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = LocalResponseNorm()(xr)
    y.backward(grad)
    assert y.dtype == torch.bfloat16 and xr.grad.dtype == torch.bfloat16
    y_ref, g_ref = fwd_bwd(direct_lrn, x.double().cpu(), grad.double().cpu())
    assert rel_err(y.double().cpu(), y_ref) < 1e-2 and rel_err(xr.grad.double().cpu(), g_ref) < 1e-2


# --------------------------------------------------------------------------------------- augmentation

def _stats(seed=0):
    """Random statistics: a random mean image (mirroring matters), an orthonormal PCA basis."""
    g = torch.Generator().manual_seed(seed)
    return {"mean_image": torch.rand(3, R, R, generator=g), "mean": torch.rand(3, generator=g),
            "std": torch.rand(3, generator=g) + 0.5, "eigval": torch.tensor([0.2175, 0.0188, 0.0045]),
            "eigvec": torch.linalg.qr(torch.randn(3, 3, generator=g))[0], "num_images": 1}


def _aug_cfg(**kw):
    return dataclasses.replace(DataConfig(), resize=R, crop=CROP, **kw)


def _u8(n, seed=0):
    """n random uint8 images (n, 3, R, R), channels_last memory, as both loaders deliver them."""
    a = np.random.default_rng(seed).integers(0, 256, (n, R, R, 3), dtype=np.uint8)
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def _pieces(aug, images, draws):
    """TrainAugment's steps with given draws (top, left, flip, alpha) on images' device: (patches, NCHW)."""
    top, left, flip, alpha = (t.to(images.device) for t in draws)
    patches = crop_flip(images, top, left, aug.crop, flip)
    x = aug.norm(patches, top, left, flip, pca_shift(alpha, aug.eigval, aug.eigvec))
    return patches, x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("normalize,pixel_scale", [("mean_image", 1.0), ("mean_image", 255.0), ("channel", 1.0)])
def test_train_augment_cuda_equals_cpu_for_the_same_draws(normalize, pixel_scale):
    cfg, stats, images = _aug_cfg(normalize=normalize, pixel_scale=pixel_scale), _stats(), _u8(32)
    cpu, dev = TrainAugment(stats, cfg, "cpu"), TrainAugment(stats, cfg, DEVICE)
    draws = cpu.draw(32, R, 7, "cpu")                       # CUDA generators draw other numbers: share them
    assert draws[2].any() and not draws[2].all()            # some patches mirrored, some not
    p_cpu, x_cpu = _pieces(cpu, images, draws)
    p_dev, x_dev = _pieces(dev, images.to(DEVICE), draws)
    assert torch.equal(p_dev.cpu(), p_cpu)                  # crops and flips: the same uint8 pixels
    torch.testing.assert_close(x_dev.cpu(), x_cpu, rtol=1e-6, atol=1e-6 * pixel_scale)
    # The whole call on CUDA is these pieces with the device's own draws.
    seed = 11
    want = _pieces(dev, images.to(DEVICE), dev.draw(32, R, seed, DEVICE))[1]
    assert torch.equal(dev(images.to(DEVICE), seed), want.contiguous())


@pytest.mark.parametrize("crops", [1, 10])
def test_eval_augment_cuda_equals_cpu(crops):
    cfg, stats, images = _aug_cfg(), _stats(1), _u8(6, seed=1)
    want = EvalAugment(stats, cfg, "cpu", crops=crops)(images)
    got = EvalAugment(stats, cfg, DEVICE, crops=crops)(images.to(DEVICE))
    assert got.device.type == "cuda" and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)


def test_cuda_draws_have_the_papers_distributions():
    n, sigma = 90_000, 0.1
    aug = TrainAugment(_stats(), _aug_cfg(pca_sigma=sigma), DEVICE)
    top, left, flip, alpha = aug.draw(n, R, 3, DEVICE)
    assert top.device.type == "cuda"
    span = R - CROP + 1                                      # offsets uniform over 0..R-crop
    for offs in (top, left):
        freq = torch.bincount(offs.cpu(), minlength=span).double() / n
        assert len(freq) == span and (freq - 1 / span).abs().max() < 0.01      # 10 standard errors
    assert torch.corrcoef(torch.stack([top.double(), left.double()]))[0, 1].abs() < 0.02
    assert abs(flip.double().mean().item() - 0.5) < 0.01
    assert alpha.shape == (n, 3) and alpha.mean().abs() < 0.003 and abs(alpha.std().item() - sigma) < 0.003
    again = aug.draw(n, R, 3, DEVICE)                        # a pure function of the seed
    assert all(torch.equal(a, b) for a, b in zip((top, left, flip, alpha), again))


# ------------------------------------------------------------------------------------ stores, nvjpeg

@pytest.fixture(scope="module")
def stores(demo_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("cuda_stores")
    out = {}
    for fmt in ("raw", "jpeg"):
        out[fmt] = str(base / fmt)
        prepare(demo_root, out[fmt], workers=0, fmt=fmt, size=R, progress=False)
    return out


def _deterministic(demo_root, store):
    """No random crop, flip or colour shift: CPU and CUDA batches must then be the same."""
    return tiny_data_cfg(demo_root, store=store, random_crop=False, flip=False, pca_sigma=0.0, workers=2)


def _assert_jpeg_close(got, want, tol):
    d = (got.double() - want.double()).abs().flatten()
    found = {"mean": d.mean().item(), "max": d.max().item(), "p99": d.quantile(0.99).item()}
    assert all(found[k] < v for k, v in tol.items()), (found, tol)


def test_nvjpeg_decodes_like_the_cpu(stores):
    split = StoreSplit(stores["jpeg"], "val")
    idx = np.arange(len(split))
    raw = StoreSplit(stores["raw"], "val").read(idx)                     # (N, R, R, 3) uint8
    blobs444 = []
    for a in raw:                                                       # the same pixels, 4:4:4 JPEGs
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90, subsampling=0)
        blobs444.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    dec = JpegDecoder(DEVICE)
    assert dec.gpu
    for blobs, tol in ((blobs444, JPEG_444), (split.blobs(idx), JPEG_420)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)         # torchvision 0.29: "use TorchCodec"
            got = dec(blobs)
        assert dec.gpu, "nvjpeg failed and the decoder fell back to the CPU"
        assert got.device.type == "cuda" and got.dtype == torch.uint8 and got.shape == (len(idx), 3, R, R)
        _assert_jpeg_close(got.cpu(), JpegDecoder.decode_cpu(blobs), tol)


def test_raw_store_loader_on_cuda_equals_the_cpu_loader(stores, demo_root):
    cfg = _deterministic(demo_root, stores["raw"])
    cpu = build_store_loaders(cfg, batch_size=16, seed=0, device="cpu", eval_crops=10)
    dev = build_store_loaders(cfg, batch_size=16, seed=0, device=DEVICE, eval_crops=10)
    for loaders in (cpu, dev):
        loaders.train_sampler.set_epoch(1)
    n = 0
    for (a, ya), (b, yb) in zip(cpu.train, dev.train):
        assert b.device.type == "cuda" and torch.equal(yb.cpu(), ya)
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
        n += len(ya)
    assert n == N_TRAIN // 16 * 16
    n = 0
    for (a, ya), (b, yb) in zip(cpu.val, dev.val):                         # the ten views
        assert b.shape == a.shape == (len(ya), 10, 3, CROP, CROP) and torch.equal(yb.cpu(), ya)
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
        n += len(ya)
    assert n == N_VAL


def test_jpeg_store_loader_on_cuda_decodes_on_the_gpu(stores, demo_root):
    cfg = _deterministic(demo_root, stores["jpeg"])
    cpu = build_store_loaders(cfg, batch_size=16, seed=0, device="cpu")
    dev = build_store_loaders(cfg, batch_size=16, seed=0, device=DEVICE)
    assert cpu.train.decoder is None and dev.train.decoder.gpu and dev.val.decoder.gpu
    for loaders in (cpu, dev):
        loaders.train_sampler.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("error", message="GPU JPEG decoding failed")   # a fallback fails the test
        pairs = [(a.cpu(), ya, b.cpu(), yb.cpu()) for (a, ya), (b, yb) in zip(cpu.train, dev.train)]
        pairs += [(a.cpu(), ya, b.cpu(), yb.cpu()) for (a, ya), (b, yb) in zip(cpu.val, dev.val)]
    assert dev.train.decoder.gpu and len(pairs) == N_TRAIN // 16 + -(-N_VAL // 16)
    for a, ya, b, yb in pairs:
        assert torch.equal(ya, yb)
        # pixel_scale 1: the inputs are pixels / 255 minus the mean image, so decoder differences / 255
        _assert_jpeg_close(b * 255, a * 255, JPEG_420)


# ---------------------------------------------------------------------------------- train.py on CUDA

def test_resolve_device_lets_cudnn_pick_its_fastest_kernels_unless_deterministic(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_device("cuda") == torch.device("cuda", 0) and torch.backends.cudnn.benchmark
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    resolve_device("cuda")
    assert not torch.backends.cudnn.benchmark


def test_train_one_epoch_waits_for_the_gpu_only_at_its_read_backs():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10).to(DEVICE, memory_format=torch.channels_last)
    opt, amp = build_optimizer(model, OptimConfig()), Amp("bf16", DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    batches = [(torch.randn(8, 3, 224, 224, device=DEVICE, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (8,), device=DEVICE, generator=g)) for _ in range(8)]
    train_one_epoch(model, batches, opt, amp, 0, lr_at=lambda e: 0.01)     # cuDNN picks its kernels here
    torch.cuda.synchronize()
    reads = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            totals, _ = train_one_epoch(model, batches, opt, amp, 1, lr_at=lambda e: 0.01, sync_every=4,
                                        on_step=lambda t, images: reads.append(t.batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
    assert reads == [4, 8] and totals.n == 64            # global steps 9..16: read back at 12 and 16
    assert len(syncs) == len(reads), syncs                 # nothing else waited for the GPU



def _args(data, out, *extra, epochs=1):
    return ["--data", data, "--out", str(out), "--epochs", str(epochs), "--batch-size", "40", "--num_classes",
            str(DEMO_CLASSES), "--device", DEVICE, "model.overlap_pool=false", "model.init=kaiming",
            f"data.resize={R}", f"data.crop={CROP}", "data.workers=0", "train.log_every_steps=1",
            "train.log_images=false", *extra]


def _metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _weights(path):
    return torch.load(path, weights_only=True, map_location="cpu")["model"]


def test_bf16_channels_last_compiled_training_is_close_to_float32_eager(demo_root, tmp_path):
    # No dropout: the compiled graph draws its dropout masks with other random numbers than eager.
    same = ("model.dropout=0",)
    fp32, fast = tmp_path / "fp32", tmp_path / "fast"
    assert train.main(_args(demo_root, fp32, "train.amp=none", "train.channels_last=false",
                            "train.compile=false", *same, epochs=2)) == 0
    assert train.main(_args(demo_root, fast, "train.amp=bf16", "train.channels_last=true",
                            "train.compile=true", *same, epochs=2)) == 0
    a, b = _metrics(fp32), _metrics(fast)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):                                 # 3 and 6 steps of batch 40
        for key in ("train_loss", "val_loss"):
            assert np.isfinite(rb[key]) and rb[key] == pytest.approx(ra[key], rel=0.03, abs=0.02), (key, ra, rb)
    wa, wb = _weights(fp32 / "last.pt"), _weights(fast / "last.pt")
    assert wa.keys() == wb.keys() and not any(k.startswith("_orig_mod.") for k in wb)
    torch.manual_seed(0)                                     # train.py's initial weights
    init = build_model(torch.load(fp32 / "last.pt", weights_only=True)["config"]["model"]).state_dict()
    for k in wa:
        if wa[k].dim() > 1:                                  # 2e-4 with bf16 on a CPU
            assert rel_err(wb[k].double(), wa[k].double()) < 1e-2, k
        # the 6 updates themselves: bf16 gradients differ by about 15% (CPU), but point the same way
        ma, mb = wa[k].double() - init[k].double(), wb[k].double() - init[k].double()
        assert (ma - mb).norm() < 0.5 * ma.norm(), k


def test_torchrun_one_process_runs_nccl_ddp(demo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", NCCL_DEBUG="INFO", ALEXNET_DIST_TIMEOUT_MIN="3")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py",
           *_args(demo_root, tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "NCCL INFO" in log                                # the process group really is NCCL
    assert "global batch 40 on 1 x cuda" in proc.stdout and "epoch 1/1:" in proc.stdout
    assert json.load(open(tmp_path / "run_info.json"))["world_size"] == 1
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True, map_location="cpu")
    assert ckpt["step"] == 3 and not any(k.startswith("module.") for k in ckpt["model"])


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    # cuDNN may pick atomics-based (run-to-run different) backward kernels; these give bit-equal reruns.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def _stop_after(monkeypatch, steps):
    """Set train.py's StopRequest after `steps` steps of this run, as SIGTERM would (the epoch loop sees it
    after the following step)."""
    original, seen = train.train_one_epoch, [0]

    def wrapped(*args, on_step, stop, **kw):
        def hook(*a, **k):
            on_step(*a, **k)
            seen[0] += 1
            if seen[0] == steps:
                stop.signum = signal.SIGTERM
        return original(*args, on_step=hook, stop=stop, **kw)

    monkeypatch.setattr(train, "train_one_epoch", wrapped)


def test_resume_on_cuda_is_exact(demo_root, tmp_path, deterministic_cudnn):
    # Dropout on: the CUDA generator's state must come back from the checkpoint too.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(_args(demo_root, straight, epochs=2)) == 0
    with pytest.MonkeyPatch.context() as mp:
        _stop_after(mp, 4)               # seen after the next step: stops at step 5 = epoch 2, batch 2 of 3
        assert train.main(_args(demo_root, resumed, epochs=2)) == 143
    assert torch.load(resumed / "last.pt", weights_only=True, map_location="cpu")["step"] == 5
    assert train.main(_args(demo_root, resumed, "--resume", "auto", epochs=2)) == 0
    wa, wb = _weights(straight / "last.pt"), _weights(resumed / "last.pt")
    assert wa.keys() == wb.keys()
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert worst <= 1e-6, worst                              # bit-equal expected with deterministic cuDNN
    assert [r["val_loss"] for r in _metrics(resumed)] == pytest.approx([r["val_loss"] for r in _metrics(straight)],
                                                                        rel=1e-6)
