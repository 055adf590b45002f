"""alexnet.LocalResponseNorm: the paper's formula (Sec. 3.3), forward and backward, on tiny tensors."""
import pytest
import torch

from alexnet import LocalResponseNorm
from alexnet.lrn import _lrn_traced


def direct_lrn(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """The paper's formula written out channel by channel: b_i = a_i / (k + alpha sum_j a_j^2)^beta."""
    channels = a.shape[1]
    out = []
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + (n - 1) // 2)   # n // 2 each side for odd n
        s = (a[:, lo:hi + 1] ** 2).sum(dim=1)
        out.append(a[:, i] / (k + alpha * s) ** beta)
    return torch.stack(out, dim=1)


def post_relu(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g, dtype=dtype) * scale)


def fwd_bwd(module, x, grad):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("scale", [1.0, 30.0])   # 30: alpha * S comparable to k, the LRN term matters
def test_matches_paper_formula_forward_and_backward(scale):
    x = post_relu(2, 11, 5, 4, scale=scale)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = fwd_bwd(direct_lrn, x, grad)
    y64, g64 = fwd_bwd(LocalResponseNorm(), x, grad)
    assert rel_err(y64, y_ref) < 1e-12 and rel_err(g64, g_ref) < 1e-12
    y32, g32 = fwd_bwd(LocalResponseNorm(), x.float(), grad.float())
    assert y32.dtype == torch.float32
    assert rel_err(y32.double(), y_ref) < 1e-5 and rel_err(g32.double(), g_ref) < 1e-5
    # The LRN term is not negligible at this scale: the output differs from a / k^beta.
    if scale > 10:
        assert rel_err(y_ref, x / 2.0 ** 0.75) > 0.1


@pytest.mark.parametrize("size,channels", [(5, 16), (1, 4), (2, 6), (3, 7), (4, 9), (7, 3), (5, 1)])
def test_equals_torch_lrn_with_alpha_times_size(size, channels):
    alpha, beta, k = 1e-3, 0.75, 2.0
    x = post_relu(3, channels, 6, 5, scale=10.0).float()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    ref = torch.nn.LocalResponseNorm(size, alpha * size, beta, k)
    ours = LocalResponseNorm(size, alpha, beta, k)
    y_ref, g_ref = fwd_bwd(ref, x, grad)
    y, g = fwd_bwd(ours, x, grad)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(g, g_ref) < 1e-5


@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.5), (3, 1.3)])
def test_gradcheck_float64(size, beta):
    x = (torch.randn(2, 7, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 5)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: LocalResponseNorm(size, 1e-2, beta, 2.0)(t), (x,))


def test_channels_last_and_no_grad():
    x = post_relu(2, 10, 6, 6, scale=20.0).float()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    y_ref, g_ref = fwd_bwd(LocalResponseNorm(), x, grad)
    xc = x.contiguous(memory_format=torch.channels_last)
    y, g = fwd_bwd(LocalResponseNorm(), xc, grad.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=0) and torch.allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert torch.equal(LocalResponseNorm()(x), y_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    x = post_relu(2, 8, 5, 5, scale=20.0).float()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    y_ref, g_ref = fwd_bwd(LocalResponseNorm(), x.to(dtype).float(), grad.to(dtype).float())
    y, g = fwd_bwd(LocalResponseNorm(), x.to(dtype), grad.to(dtype))
    assert y.dtype == dtype and g.dtype == dtype
    # Computed in float32 inside: only the final rounding to the half type differs.
    assert rel_err(y.float(), y_ref) < 1e-2 and rel_err(g.float(), g_ref) < 1e-2


def test_other_ranks_and_empty_batch():
    x3 = post_relu(2, 9, 7, scale=10.0)
    assert rel_err(LocalResponseNorm()(x3), direct_lrn(x3.unsqueeze(-1)).squeeze(-1)) < 1e-12
    x5 = post_relu(1, 6, 2, 3, 2, scale=10.0)
    y5 = LocalResponseNorm()(x5)
    assert rel_err(y5, direct_lrn(x5.flatten(2)).view_as(x5)) < 1e-12
    assert LocalResponseNorm()(torch.empty(0, 4, 3, 3)).shape == (0, 4, 3, 3)
    with pytest.raises(ValueError):
        LocalResponseNorm()(torch.ones(4, 3))
    with pytest.raises(ValueError):
        LocalResponseNorm(size=0)


def test_paper_alpha_is_not_divided_by_size():
    x = torch.full((1, 5, 1, 1), 10.0)                 # centre channel: S = 5 * 100 = 500
    y = LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    assert y[0, 2, 0, 0].item() == pytest.approx(10.0 / (2.0 + 1e-4 * 500) ** 0.75, rel=1e-6)


@pytest.mark.parametrize("size,channels", [(5, 16), (1, 4), (2, 6), (4, 9), (7, 3), (5, 1)])
def test_the_out_of_place_form_used_under_compile_equals_the_eager_function(size, channels):
    x = post_relu(2, channels, 5, 4, scale=30.0)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = LocalResponseNorm(size, 1e-3, 0.75, 2.0)
    y_ref, g_ref = fwd_bwd(ours, x, grad)
    y, g = fwd_bwd(lambda a: _lrn_traced(a, size, 1e-3, 0.75, 2.0), x, grad)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(g, g_ref) < 1e-12
    half = _lrn_traced(x.bfloat16().contiguous(memory_format=torch.channels_last), size, 1e-3, 0.75, 2.0)
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_compile_traces_it_whole_and_matches_eager(channels_last):
    # The custom autograd.Function is traced by Dynamo (forward and the once_differentiable backward):
    # fullgraph=True raises on any graph break. backend="aot_eager" runs the same Dynamo + AOTAutograd
    # capture as inductor without generating C++ (seconds instead of a minute on 2 cores);
    # benchmarks/gpu_report.py compiles it with inductor and times it.
    torch._dynamo.reset()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = post_relu(2, 10, 5, 4, scale=20.0).float().contiguous(memory_format=fmt)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).contiguous(memory_format=fmt)
    explain = torch._dynamo.explain(LocalResponseNorm())(x.clone().requires_grad_())
    assert (explain.graph_count, explain.graph_break_count) == (1, 0)
    compiled = torch.compile(LocalResponseNorm(), fullgraph=True, backend="aot_eager")
    y, g = fwd_bwd(compiled, x, grad)
    y_ref, g_ref = fwd_bwd(LocalResponseNorm(), x, grad)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(g, g_ref) < 1e-5
