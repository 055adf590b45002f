"""Local response normalization exactly as in Sec. 3.3 of the paper, with a fast analytic backward.

    b[i] = a[i] / (k + alpha * sum_{j=i-n/2}^{i+n/2} a[j]^2) ^ beta      (sum clipped to 0..C-1)

Unlike ``torch.nn.LocalResponseNorm`` (and Caffe), alpha is NOT divided by n: the paper's
``alpha=1e-4`` equals ``torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``.

Why a custom autograd function: torch's module builds the window sum with pad + avg_pool3d and lets
autograd record about ten element-wise ops; on CPU its forward + backward took ~40% of the paper
model's training step. Here the window sum is n-1 shifted in-place adds of channel slices (each one a
contiguous block in NCHW), D^-beta is computed once and saved, and the backward is the closed form

    dL/da[j] = g[j] * D[j]^-beta  -  2 * alpha * beta * a[j] * sum_{i : j in window(i)} g[i] * b[i] / D[i]

(benchmarks/bench_model.py measures the speed-up; tests/test_lrn.py checks it against the formula).
"""
import torch
from torch import nn


def _window(size, channels):
    """Channel offsets of the window: channel i sums channels i-before .. i+after (clipped to 0..C-1).

    Symmetric for odd sizes (the paper's n/2 each side); for even sizes the extra channel is on the
    lower side, torch's convention, so the two can be compared.
    """
    before, after = size // 2, (size - 1) // 2
    return min(before, channels - 1), min(after, channels - 1)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, size, alpha, beta, k):
        # Half types: compute in float32 (in bf16, k + alpha * S would round the LRN term away).
        x = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        before, after = _window(size, x.shape[1])
        # D = k + alpha * sum_window a^2, built with fused in-place addcmul on channel slices: each
        # shifted slice of an NCHW tensor is one contiguous block, so this is a few streaming passes.
        d = torch.addcmul(torch.full((), k, dtype=x.dtype, device=x.device), x, x, value=alpha)
        for s in range(1, before + 1):
            d[:, s:].addcmul_(x[:, :-s], x[:, :-s], value=alpha)     # channel i gets a[i - s]^2
        for s in range(1, after + 1):
            d[:, :-s].addcmul_(x[:, s:], x[:, s:], value=alpha)      # channel i gets a[i + s]^2
        dpow = d.pow(-beta)                                          # D^-beta, reused by backward
        out = x * dpow                                               # b = a * D^-beta
        ctx.save_for_backward(x, d, dpow)
        ctx.params = (size, alpha, beta)
        return out.to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        # dL/da[j] = g[j] D[j]^-beta - 2 alpha beta a[j] sum_{i: j in window(i)} g[i] b[i] / D[i]
        x, d, dpow = ctx.saved_tensors
        size, alpha, beta = ctx.params
        before, after = _window(size, x.shape[1])
        g = grad_out.to(x.dtype)
        grad = g * dpow                                              # the direct term g D^-beta
        t = (grad * x).div_(d)                                       # g * b / D
        c = -2.0 * alpha * beta
        grad.addcmul_(x, t, value=c)
        # i's window holds j = i - s (s <= before) <=> j's mirrored window holds i = j + s, and so on.
        for s in range(1, before + 1):
            grad[:, :-s].addcmul_(x[:, :-s], t[:, s:], value=c)
        for s in range(1, after + 1):
            grad[:, s:].addcmul_(x[:, s:], t[:, :-s], value=c)
        return grad.to(grad_out.dtype), None, None, None, None


def local_response_norm(a, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Functional form of :class:`LocalResponseNorm`. a: (N, C, *) -> (N, C, *)."""
    if a.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) input, got shape {tuple(a.shape)}")
    return _LRNFunction.apply(a, size, alpha, beta, k)


class LocalResponseNorm(nn.Module):
    """The paper's local response normalization (Sec. 3.3): alpha is NOT divided by ``size``.

    Args:
        size: n, the number of adjacent channels summed over (5 in the paper).
        alpha, beta, k: the paper's 1e-4, 0.75, 2.
    Shape: (N, C, H, W) -> (N, C, H, W); any memory format (channels_last is kept); float16 and
    bfloat16 inputs are computed in float32 and returned in their own dtype.
    Equal to ``torch.nn.LocalResponseNorm(size, alpha * size, beta, k)``, but faster (see module doc).
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        if size < 1:
            raise ValueError(f"LocalResponseNorm size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
