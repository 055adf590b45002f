"""The fast paths, on the CPU: LRN in float16 / bfloat16 (computed in float32, then rounded), bf16 autocast
training (train.amp=bf16), torch.compile (train.compile, with the aot_eager backend: it traces and runs the
same graphs without generating C++), and channels_last through the whole model."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import train
from alexnet.config import ModelConfig, OptimConfig
from alexnet.engine import Amp, build_optimizer, train_one_epoch
from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.model import build_model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lrn_half_types_are_float32_rounded_bit_exact(dtype):
    """Half inputs give exactly the float32 result (on the same, rounded input) rounded to the half type,
    forward and backward: k + alpha * sum a^2 is never formed in the half type."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 16, 5, 5, generator=g) * 20).relu().to(dtype)    # post-ReLU, the LRN term matters
    grad = torch.randn(x.shape, generator=g).to(dtype)
    lrn = LocalResponseNorm()
    xh, xf = x.clone().requires_grad_(), x.float().requires_grad_()
    y, ref = lrn(xh), lrn(xf)
    assert y.dtype == dtype
    assert torch.equal(y, ref.to(dtype))
    y.backward(grad)
    ref.backward(grad.float())
    assert xh.grad.dtype == dtype and torch.equal(xh.grad, xf.grad.to(dtype))


def small_model(dropout=0.0):
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=10, overlap_pool=False, init="kaiming", dropout=dropout))


def batches(n=2, b=8, size=40):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 3, size, size, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def step_losses(model, amp_mode="none"):
    """Two SGD steps through engine.train_one_epoch; the loss of each step and the logits' dtype."""
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    losses, dtypes = [], []
    hook = model.classifier.fc8.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    previous = [0.0]

    def on_step(totals, images):
        losses.append(totals.loss_sum - previous[0])
        previous[0] = totals.loss_sum

    torch.manual_seed(2)
    train_one_epoch(model, batches(), opt, Amp(amp_mode, "cpu"), 0, on_step=on_step)
    hook.remove()
    return [x / 8 for x in losses], dtypes


def test_bf16_autocast_training_on_cpu_is_close_to_float32():
    ref, ref_dtypes = step_losses(small_model(dropout=0.5))
    bf16, dtypes = step_losses(small_model(dropout=0.5), "bf16")         # train.amp=bf16
    assert set(ref_dtypes) == {torch.float32} and set(dtypes) == {torch.bfloat16}   # autocast was on
    assert all(math.isfinite(x) for x in bf16)
    assert bf16 == pytest.approx(ref, rel=0.05)
    assert ref[0] != bf16[0]                                              # and it did compute in bf16
    with pytest.raises(UserError, match="train.amp=fp16 needs CUDA"):
        Amp("fp16", "cpu")


def test_train_compile_true_runs_compiled_and_saves_plain_weights(demo_root, tmp_path, monkeypatch):
    """train.compile=true through train.main (one step of 120 images): the training model is torch.compile'd
    (backend aot_eager here: the default inductor backend took about 45 s to compile one forward + backward
    on this 2-core CPU), its train loss and the val loss after the step are the eager run's, and the
    checkpoint holds the plain module's state dict."""
    real_compile, calls = torch.compile, []

    def compile_aot_eager(model, **kw):
        calls.append(kw)
        return real_compile(model, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    args = ["--data", demo_root, "--epochs", "1", "--batch-size", "120", "--num_classes", "10", "--device", "cpu",
            "model.overlap_pool=false", "model.init=kaiming", "model.dropout=0", "data.resize=48", "data.crop=40",
            "data.workers=0", "train.log_images=false"]
    assert train.main([*args, "--out", str(tmp_path / "compiled"), "train.compile=true"]) == 0
    assert len(calls) == 1
    monkeypatch.undo()
    assert train.main([*args, "--out", str(tmp_path / "eager")]) == 0
    compiled, eager = ([json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")] for name in ("compiled", "eager"))
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-4)
    assert compiled[0]["val_loss"] == pytest.approx(eager[0]["val_loss"], rel=1e-4)
    keys = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)


def test_channels_last_through_the_whole_model_equals_contiguous():
    """The paper's model (LRN, two-group convolutions, overlapping pooling) in channels_last memory: the same
    logits and gradients as in contiguous memory, and the activations stay channels_last."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=10, init="kaiming", dropout=0.0))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(4))

    def run(memory_format):
        model.zero_grad(set_to_none=True)
        model.to(memory_format=memory_format)
        layouts = []
        hooks = [m.register_forward_hook(lambda m, i, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last))) for m in model.features]
        logits = model(x.contiguous(memory_format=memory_format))
        F.cross_entropy(logits, y).backward()
        for h in hooks:
            h.remove()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, layouts

    ref, ref_grads, _ = run(torch.contiguous_format)
    out, grads, layouts = run(torch.channels_last)
    assert all(layouts) and len(layouts) == len(model.features)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    model.to(memory_format=torch.contiguous_format)
